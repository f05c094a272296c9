"""One process of a sharded run, launched by ``mlx.launch`` (tests/test_sharded.py): every
spec's optimizer updates slices of parameters split along ``--axis`` across the processes,
and each process compares its slices of the parameters and state with the same optimizer
run unsharded on the whole parameters (which every process can afford here). Writes one
JSON line per spec to ``--out``.<rank>: the worst relative error and the state bytes."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import backend_context, generated_class  # noqa: E402

# Parameters whose sharded axis (0 or the last) divides by 2 and 4: 1-D, 2-D, 3-D, and a
# matrix with a zero row and column (the factored estimates' worst case).
SHAPES = {"v": (24,), "m": (24, 20), "t": (4, 12, 20), "z": (8, 12)}


def _slice(array: np.ndarray, axis: int, rank: int, size: int) -> np.ndarray:
    axis %= array.ndim
    step = array.shape[axis] // size
    return np.take(array, range(rank * step, (rank + 1) * step), axis=axis)


def _local(whole: np.ndarray, local_shape: tuple, axis: int, param_shape: tuple,
           rank: int, size: int) -> np.ndarray:
    """The slice of an unsharded state tensor a process holds: split where the state has
    the parameter's sharded axis (its shape differs there), else the whole tensor."""
    if whole.shape == tuple(local_shape):
        return whole
    (split,) = [a for a, (w, o) in enumerate(zip(whole.shape, local_shape)) if w != o]
    return _slice(whole, split, rank, size)


def _data(steps: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(7)

    def tree():
        values = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        values["z"][3, :] = 0.0
        values["z"][:, 5] = 0.0
        return values

    return tree(), [tree() for _ in range(steps)]


def run(stem: str, axis: int, backend: str, steps: int, group, shard: bool = True) -> dict:
    rank, size = group.rank(), group.size()
    module, make = generated_class(stem)
    params, grads = _data(steps)
    with backend_context(module, backend):
        whole = make(backend=backend)
        sharded = make(backend=backend)
        if shard:  # else each process updates its slices as if they were whole
            sharded.set_sharding({k: module.Sharding(axis, group) for k in SHAPES})
        p_whole = {k: mx.array(v) for k, v in params.items()}
        p_local = {k: mx.array(_slice(v, axis, rank, size)) for k, v in params.items()}
        for g in grads:
            p_whole = whole.apply_gradients({k: mx.array(v) for k, v in g.items()}, p_whole)
            p_local = sharded.apply_gradients(
                {k: mx.array(_slice(v, axis, rank, size)) for k, v in g.items()}, p_local)
            mx.eval(p_whole, p_local, whole.state, sharded.state)
    worst, state_bytes, whole_bytes = 0.0, 0, 0
    for k in SHAPES:
        pairs = [(np.array(p_local[k]), _slice(np.array(p_whole[k]), axis, rank, size))]
        for key, value in sharded.state[k].items():
            ours = np.array(value)
            pairs.append((ours, _local(np.array(whole.state[k][key]), ours.shape, axis,
                                       SHAPES[k], rank, size)))
            state_bytes += value.nbytes
            whole_bytes += whole.state[k][key].nbytes
        for ours, theirs in pairs:
            scale = max(float(np.max(np.abs(theirs))), 1e-30) if theirs.size else 1.0
            error = float(np.max(np.abs(ours - theirs))) / scale if theirs.size else 0.0
            worst = max(worst, error if np.isfinite(error) else float("inf"))
    return {"spec": stem, "axis": axis, "backend": backend, "ranks": size, "steps": steps,
            "worst": worst, "state_bytes": state_bytes, "unsharded_state_bytes": whole_bytes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", nargs="+", required=True)
    parser.add_argument("--axis", type=int, required=True)
    parser.add_argument("--optimizer-backend", default="mlx")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    parser.add_argument("--planned", action="store_true",
                        help="MLX ops run the fused plan (the kernels' MLX twins) at any size")
    parser.add_argument("--unsharded", action="store_true",
                        help="do not tell the optimizer about the sharding")
    args = parser.parse_args()
    group = mx.distributed.init()
    if args.planned:
        import generated.afgen_runtime as runtime

        runtime.PLANNED_MIN_ELEMENTS = 0
    with open(f"{args.out}.{group.rank()}", "w") as out:
        for stem in args.specs:
            out.write(json.dumps(run(stem, args.axis, args.optimizer_backend, args.steps, group,
                                          not args.unsharded)) + "\n")


if __name__ == "__main__":
    main()
