"""One process of a data-parallel run, launched by ``mlx.launch`` (tests/test_sharded.py):
whole parameters in every process, each process's part of the batch, gradients averaged
with ``nn.average_gradients``, a generated optimizer per spec. Each process compares the
parameters with one process training on whole batches and writes the worst relative
difference per spec to ``--out``.<rank> (JSON lines)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import generated_class  # noqa: E402


def make_model() -> nn.Module:
    mx.random.seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 4))


def loss_fn(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
    return mx.mean(mx.square(model(x) - y))


def run(stem: str, steps: int, group) -> dict:
    rank, size = group.rank(), group.size()
    _, make = generated_class(stem)
    models = {"parallel": make_model(), "whole": make_model()}
    optimizers = {name: make() for name in models}
    rng = np.random.default_rng(3)
    for _ in range(steps):
        x = mx.array(rng.standard_normal((4 * size, 12)).astype(np.float32))
        y = mx.array(rng.standard_normal((4 * size, 4)).astype(np.float32))
        mine = slice(4 * rank, 4 * (rank + 1))
        _, grads = nn.value_and_grad(models["parallel"], loss_fn)(
            models["parallel"], x[mine], y[mine])
        optimizers["parallel"].update(models["parallel"], nn.average_gradients(grads, group))
        _, grads = nn.value_and_grad(models["whole"], loss_fn)(models["whole"], x, y)
        optimizers["whole"].update(models["whole"], grads)
        mx.eval([m.parameters() for m in models.values()])
    worst = 0.0
    for (_, ours), (_, theirs) in zip(tree_flatten(models["parallel"].parameters()),
                                      tree_flatten(models["whole"].parameters())):
        theirs = np.array(theirs)
        worst = max(worst, float(np.max(np.abs(np.array(ours) - theirs)))
                    / max(float(np.max(np.abs(theirs))), 1e-30))
    return {"spec": stem, "ranks": size, "steps": steps, "worst": worst}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    group = mx.distributed.init()
    with open(f"{args.out}.{group.rank()}", "w") as out:
        for stem in args.specs:
            out.write(json.dumps(run(stem, args.steps, group)) + "\n")


if __name__ == "__main__":
    main()
