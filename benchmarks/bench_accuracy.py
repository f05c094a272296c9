"""Float32 reductions at real sizes: MLX's own vs the runtime's blocked sums, against
float64, with their timings side by side; then one Adafactor step, generated (MLX-ops
backend) vs mlx.optimizers.Adafactor, against the float64 oracle.

    python benchmarks/bench_accuracy.py [--repeats 5] [--quick]

Errors are relative to float64 (NumPy). Each timing is the median of ``repeats``
evaluations measured in one run, alternating the two; ``blocked/mlx`` is their ratio
(below 1: the blocked sum is faster). ``--quick`` uses small sizes (a smoke run).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from afgen import runtime as rt  # noqa: E402
from afgen.build import compile_path  # noqa: E402
from afgen.check.oracle import Oracle  # noqa: E402
from generated.adafactor import Adafactor  # noqa: E402


def rel_error(got: mx.array, want: np.ndarray) -> float:
    got = np.array(got, np.float64)
    return float(np.max(np.abs(got - want) / np.abs(want)))


def side_by_side(plain, blocked, repeats: int) -> tuple[float, float]:
    """Median seconds of each, timed alternately so load on the machine hits both."""
    times: tuple[list[float], list[float]] = ([], [])
    mx.eval(plain(), blocked())
    for _ in range(repeats):
        for out, fn in zip(times, (plain, blocked)):
            start = time.perf_counter()
            mx.eval(fn())
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def reductions(sizes: list[int], sides: list[int], repeats: int) -> None:
    rng = np.random.default_rng(0)
    print("Reductions of squares of normal samples (float32), relative error vs float64")
    print(f"{'what':<28}{'mlx error':>12}{'blocked error':>15}{'mlx ms':>10}"
          f"{'blocked ms':>12}{'blocked/mlx':>13}")
    cases = []
    for size in sizes:
        cases.append((f"sum of {size:,}", (size,), None))
    for n in sides:
        cases += [(f"row sums of {n}x{n}", (n, n), -1), (f"col sums of {n}x{n}", (n, n), -2),
                  (f"sum of {n}x{n}", (n, n), None)]
    for label, shape, axis in cases:
        x = np.square(rng.standard_normal(shape, dtype=np.float32))
        want = x.sum(axis=axis, dtype=np.float64, keepdims=True)
        a = mx.array(x)
        mx.eval(a)
        plain = mx.sum(a, axis=axis, keepdims=True)
        blocked = rt.total(a, axis, keepdims=True)
        t_plain, t_blocked = side_by_side(lambda a=a, axis=axis: mx.sum(a, axis=axis),
                                          lambda a=a, axis=axis: rt.total(a, axis), repeats)
        print(f"{label:<28}{rel_error(plain, want):>12.1e}{rel_error(blocked, want):>15.1e}"
              f"{t_plain * 1e3:>10.1f}{t_blocked * 1e3:>12.1f}{t_blocked / t_plain:>12.2f}x")
        del x, a


def kernel_folds(sides: list[int]) -> None:
    """The fused drivers fold one partial sum per threadgroup (32 x 256 elements of a
    matrix, 1024 of a flat parameter); the partials are exact to float32 here."""
    rng = np.random.default_rng(1)
    print("\nFused drivers: folding the kernels' partial sums, relative error vs float64")
    print(f"{'parameter':<28}{'partials':>10}{'mx.sum':>12}{'_rt.total':>12}")
    geos = [(f"{n}x{n}", rt.geometry((n, n), True, 32, 256, 256)) for n in sides]
    geos += [(f"flat {n * n:,}", rt.geometry((n * n,), False, 1, 1024, 256)) for n in sides]
    for label, geo in geos:
        parts = np.square(rng.standard_normal(geo.B * geo.nrb * geo.ncc, dtype=np.float32))
        want = parts.sum(dtype=np.float64)
        a = mx.array(parts)
        print(f"{label:<28}{parts.size:>10,}{rel_error(mx.sum(a), want):>12.1e}"
              f"{rel_error(rt.total(a), want):>12.1e}")


def scale_error(step: np.ndarray, want: np.ndarray) -> float:
    """How much too large (positive) or small the step is, by least squares."""
    return float(np.vdot(step, want) / np.vdot(want, want) - 1.0)


def adafactor_steps(sides: list[int]) -> None:
    compiled = compile_path(ROOT / "specs" / "adafactor.yaml")
    print("\nOne Adafactor step vs the float64 oracle: the step's scale error (least "
          "squares) and\nits largest element error beyond rounding the parameter to "
          "float32, relative to the step")
    print(f"{'matrix':<12}{'options':<14}{'mlx scale':>12}{'ours scale':>12}"
          f"{'mlx element':>13}{'ours element':>14}")
    for n in sides:
        rng = np.random.default_rng(n)
        p = rng.standard_normal((n, n), dtype=np.float32)
        g = rng.standard_normal((n, n), dtype=np.float32)
        for label, hyper in (("default", {}), ("beta_1=0.9", {"beta_1": 0.9})):
            want = Oracle(compiled, hyper).step({"w": p}, {"w": g})["w"]
            step, rounding = want - p, 2.0**-23 * np.abs(want)
            row = f"{f'{n}x{n}':<12}{label:<14}"
            errors = []
            for cls in (optim.Adafactor, lambda **h: Adafactor(backend="mlx", **h)):
                new = cls(**hyper).apply_gradients({"w": mx.array(g)}, {"w": mx.array(p)})
                new = np.array(new["w"])
                excess = np.maximum(np.abs(new - want) - rounding, 0.0)
                errors.append((scale_error(new - p, step),
                               float(np.max(excess / np.maximum(np.abs(step), 1e-30)))))
            (mlx_scale, mlx_element), (ours_scale, ours_element) = errors
            print(f"{row}{mlx_scale:>12.1e}{ours_scale:>12.1e}{mlx_element:>13.1e}"
                  f"{ours_element:>14.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args()
    sizes = [1 << 14, 1 << 16] if args.quick else [1 << 20, 1 << 24, 1 << 26]
    sides = [128, 256] if args.quick else [4096, 8192]
    reductions(sizes, sides, args.repeats)
    kernel_folds(sides)
    adafactor_steps(sides)


if __name__ == "__main__":
    main()
