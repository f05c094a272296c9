"""One process of the agreement checks, launched by ``mlx.launch`` (tests/test_sharded.py):
with a parameter split across the processes, (1) a NaN in one process's slice makes every
process skip the step (nonfinite="skip"); (2) stochastic rounding draws different noise
for each slice, so identical slices round differently; (3) a compiled step equals the
eager one; (4) Muon, whose update multiplies whole matrices, refuses a sharded matrix and
changes nothing. Writes a JSON line of findings to ``--out``.<rank>."""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import generated_class  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    group = mx.distributed.init()
    rank = group.rank()
    module, make = generated_class("adafactor")
    sharding = {"w": module.Sharding(0, group)}
    found = {}

    # (1) one process's slice has a NaN: everyone skips.
    opt = make(nonfinite="skip")
    opt.set_sharding(sharding)
    params = {"w": mx.ones((4, 6))}
    grad = np.full((4, 6), 0.5, np.float32)
    if rank == 1:
        grad[2, 3] = np.nan
    new = opt.apply_gradients({"w": mx.array(grad)}, params)
    found["skipped"] = bool(mx.array_equal(new["w"], params["w"]).item())
    found["skipped_steps"] = int(opt.state["skipped_steps"].item())

    # (2) identical bfloat16 slices, stochastically rounded: different noise per slice.
    opt = make(stochastic_rounding=True, relative_step=False, learning_rate=1e-3,
               scale_parameter=False)
    opt.set_sharding(sharding)
    params = {"w": mx.full((64, 64), 1.0, dtype=mx.bfloat16)}
    grads = {"w": mx.full((64, 64), 1.0, dtype=mx.bfloat16)}
    new = opt.apply_gradients(grads, params)["w"].astype(mx.float32)
    everyone = mx.distributed.all_gather(new.reshape(1, -1), group=group)
    found["slices_differ"] = not bool(mx.array_equal(everyone[0], everyone[1]).item())

    # (3) a compiled step, sharded, equals the eager one.
    eager, compiled = make(), make()
    for opt in (eager, compiled):
        opt.set_sharding(sharding)
    rng = np.random.default_rng(rank)
    start = {"w": mx.array(rng.standard_normal((4, 6)).astype(np.float32))}
    grads = [{"w": mx.array(rng.standard_normal((4, 6)).astype(np.float32))}
             for _ in range(5)]
    p_eager, p_compiled = dict(start), dict(start)
    state = [compiled.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(g, p):
        return compiled.apply_gradients(g, p)

    compiled.init(start)
    for g in grads:
        p_eager = eager.apply_gradients(g, p_eager)
        p_compiled = step(g, p_compiled)
    mx.eval(p_eager, p_compiled)
    found["compiled_difference"] = float(mx.max(mx.abs(p_eager["w"] - p_compiled["w"])))

    # (4) Muon needs each matrix whole.
    muon_module, make_muon = generated_class("muon")
    muon = make_muon()
    muon.set_sharding({"w": muon_module.Sharding(0, group)})
    try:
        muon.apply_gradients({"w": mx.ones((4, 6))}, {"w": mx.ones((4, 6))})
        found["muon_refused"] = False
    except ValueError as exc:
        found["muon_refused"] = "sharded" in str(exc) and not muon.state.get("w")
    with open(f"{args.out}.{rank}", "w") as out:
        out.write(json.dumps(found) + "\n")


if __name__ == "__main__":
    main()
