"""Sharded Adafactor steps on 1, 2 and 4 local processes (``mlx.launch --backend ring``,
loopback): step time and the bytes the optimizer's collectives carry per step.

    python benchmarks/bench_sharded.py [--smoke]

The tree is a stack of Llama-like matrices (four 2048 x 2048, two 2048 x 5632, and the
1-D norms), split along axis 0 across the processes, as ``nn.fully_shard`` splits them.
Each process updates its slices; the optimizer completes the reductions that cross the
split (Adafactor's column means, the mean of the row state, ``rms(param)``, ``rms(u)``) with
one all-reduce each. ``bytes/step`` is what those all-reduces carry (their results'
size, per process); ``full bytes`` is what an all-gather of the parameters' updates would
move instead. The processes share this machine's cores, so the step time shows the cost
of the collectives and of splitting, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHAPES = [(2048, 2048)] * 4 + [(2048, 5632)] * 2 + [(2048,)] * 2
SMOKE_SHAPES = [(64, 64)] * 2 + [(64,)]


def worker(smoke: bool, steps: int) -> None:
    """One process: time the sharded steps, count the collectives' bytes."""
    import generated.afgen_runtime as runtime
    from generated.adafactor import Adafactor, Sharding

    group = mx.distributed.init()
    size, rank = group.size(), group.rank()
    carried = [0]
    complete = runtime.completed

    def counting(local, shard, crossing, how):
        if shard is not None and crossing:
            carried[0] += local.nbytes
        return complete(local, shard, crossing, how)

    runtime.completed = counting
    shapes = SMOKE_SHAPES if smoke else SHAPES
    local = [(s[0] // size,) + s[1:] for s in shapes]
    params = {f"p{i}": mx.random.normal(s) for i, s in enumerate(local)}
    grads = {k: mx.random.normal(v.shape) * 1e-2 for k, v in params.items()}
    optimizer = Adafactor(backend="mlx")
    optimizer.set_sharding({k: Sharding(0, group) for k in params})
    params = optimizer.apply_gradients(grads, params)  # warm-up, initialisation
    mx.eval(params, optimizer.state)
    carried[0] = 0
    start = time.perf_counter()
    for _ in range(steps):
        params = optimizer.apply_gradients(grads, params)
        mx.eval(params, optimizer.state)
    elapsed = (time.perf_counter() - start) / steps
    if rank == 0:
        total = sum(4 * math.prod(s) for s in shapes)
        print(json.dumps({"processes": size, "step_ms": 1e3 * elapsed,
                          "bytes_per_step": carried[0] // steps, "parameter_bytes": total}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    steps = 2 if args.smoke else args.steps
    if args.worker:
        worker(args.smoke, steps)
        return
    launch = str(Path(sys.executable).with_name("mlx.launch"))
    print(f"{'processes':>9} {'step (ms)':>10} {'bytes/step':>11} {'full bytes':>12}")
    for processes in (1, 2, 4):
        command = [sys.executable, __file__, "--worker", "--steps", str(steps)]
        command += ["--smoke"] * args.smoke
        if processes > 1:  # (mlx.launch's ring backend needs two or more)
            command = [launch, "--backend", "ring", "-n", str(processes), *command]
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        row = json.loads(next(line for line in done.stdout.splitlines()
                              if line.startswith("{")))
        print(f"{row['processes']:>9} {row['step_ms']:>10.1f} {row['bytes_per_step']:>11} "
              f"{row['parameter_bytes']:>12}")


if __name__ == "__main__":
    main()
