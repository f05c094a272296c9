"""Generated Adafactor (MLX-ops backend) vs mlx.optimizers.Adafactor, side by side.

Every variant updates the same parameter tree from the same gradients; each timing is
the median of several repetitions of ``steps`` optimizer steps, measured in one run, and
the table prints ratios (higher = generated is faster).

    python benchmarks/bench_cpu.py [--steps 10] [--repeats 5] [--tree small|medium]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from generated.adafactor import Adafactor  # noqa: E402

TREES = {
    "small": {"w1": (512, 512), "w2": (512, 2048), "b": (2048,), "emb": (1000, 256)},
    "medium": {"w1": (2048, 2048), "w2": (2048, 4096), "b": (4096,), "emb": (8000, 512),
               "heads": (4, 512, 512)},
}


def make_tree(shapes: dict, dtype=mx.float32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: mx.array(rng.standard_normal(s).astype(np.float32)).astype(dtype)
            for k, s in shapes.items()}


def time_optimizer(make_opt, params, grads, steps: int, repeats: int, compiled: bool) -> float:
    opt = make_opt()
    state = {"params": dict(params)}
    opt.init(state["params"])

    def step(g):
        state["params"] = opt.apply_gradients(g, state["params"])
        return state["params"]

    if compiled:
        tracked = [state, opt.state]
        step = partial(mx.compile, inputs=tracked, outputs=tracked)(step)
    mx.eval(step(grads))  # warm up (and trace)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            mx.eval(step(grads), opt.state)
        samples.append((time.perf_counter() - start) / steps)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", choices=sorted(TREES), default="small")
    args = parser.parse_args()
    params = make_tree(TREES[args.tree])
    grads = make_tree(TREES[args.tree], seed=1)
    n = sum(v.size for v in params.values())
    print(f"MLX {mx.__version__} on {mx.default_device()}, tree '{args.tree}' ({n / 1e6:.1f}M "
          f"params), median of {args.repeats} x {args.steps} steps")
    print(f"{'options':<26} {'variant':<10} {'mlx ms':>8} {'afgen ms':>9} {'speed-up':>9}")
    for label, kw in [("defaults", {}), ("beta_1=0.9, wd=0.01", {"beta_1": 0.9,
                                                                  "weight_decay": 0.01})]:
        for compiled in (False, True):
            ours = time_optimizer(partial(Adafactor, backend="mlx", **kw), params, grads,
                                  args.steps, args.repeats, compiled)
            theirs = time_optimizer(partial(optim.Adafactor, **kw), params, grads,
                                    args.steps, args.repeats, compiled)
            variant = "compiled" if compiled else "eager"
            print(f"{label:<26} {variant:<10} {theirs * 1e3:>8.2f} {ours * 1e3:>9.2f} "
                  f"{theirs / ours:>8.2f}x")


if __name__ == "__main__":
    main()
