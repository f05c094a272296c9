"""Reductions accurate to float32 at real sizes.

MLX's CPU reduction adds an output's elements one after another, so a float32 mean of
16M squares is off by about 3e-2 and a default Adafactor step on a 4096 x 4096 matrix is
about 1.4% too small. The runtime's blocked sums (``total``/``mean``), which every
reduction of the generated code goes through, are checked here against float64: on
their own at 1M and 16M elements and odd shapes, folding kernel partial sums, and as
one whole Adafactor step at 4096 x 4096 and 8192 x 8192 against the float64 oracle."""
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from afgen import runtime as rt
from afgen.check.oracle import Oracle
from generated.adafactor import Adafactor

RTOL = 2e-6  # a few float32 roundings: blocks of 64 keep every chain of additions short


def _squares(rng, shape) -> np.ndarray:
    """Positive float32 data whose running sum loses the most in a long chain."""
    return np.square(rng.standard_normal(shape, dtype=np.float32))


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / np.abs(want)))


@pytest.mark.parametrize("size", [1 << 20, (1 << 24) + 37])
def test_total_and_mean_of_long_arrays_match_float64(size):
    x = _squares(np.random.default_rng(size), size)
    want = x.sum(dtype=np.float64)
    a = mx.array(x)
    assert _rel(rt.total(a), want) <= RTOL
    assert _rel(rt.mean(a), want / size) <= RTOL
    if size > 1 << 20:  # the data is hard: MLX's own sum is far off
        assert _rel(mx.sum(a), want) > 1e-3


@pytest.mark.parametrize("shape,axis", [
    ((4099, 65), -1), ((4099, 65), -2), ((4099, 65), None), ((4099, 65), (-2, -1)),
    ((3, 1001, 257), -1), ((3, 1001, 257), -2), ((3, 1001, 257), (0, 2)),
    ((3, 1001, 257), 0), ((130, 1, 4097), (-2, -1)), ((70000,), 0), ((129,), None)])
@pytest.mark.parametrize("keepdims", [True, False])
def test_axis_reductions_of_odd_shapes_match_float64(shape, axis, keepdims):
    x = _squares(np.random.default_rng(len(shape)), shape)
    a = mx.array(x)
    want = x.astype(np.float64).sum(axis=axis, keepdims=keepdims)
    count = x.size // max(want.size, 1)
    got_total, got_mean = rt.total(a, axis, keepdims), rt.mean(a, axis, keepdims)
    for got, expect in ((got_total, want), (got_mean, want / count)):
        assert got.shape == mx.sum(a, axis=axis, keepdims=keepdims).shape == expect.shape
        assert got.dtype == mx.float32
        assert _rel(got, expect) <= RTOL


@pytest.mark.parametrize("shape,axis", [((0, 300), -1), ((300, 0), -2), ((0, 300), None),
                                        ((200, 0), None), ((), None), ((5, 7), -1)])
def test_empty_scalar_and_short_reductions_are_mlx_own(shape, axis):
    """Nothing to block: the same arrays (bits, shapes and NaNs) as MLX's reductions."""
    a = mx.array(np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 0.1)
    for ours, theirs in ((rt.total, mx.sum), (rt.mean, mx.mean)):
        for keepdims in (True, False):
            got, want = ours(a, axis, keepdims), theirs(a, axis=axis, keepdims=keepdims)
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_array_equal(np.array(got), np.array(want))


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=str)
def test_16_bit_inputs_keep_mlx_reduction(dtype):
    """MLX accumulates 16-bit inputs in float32 and rounds once; blocks would round each
    partial sum to 16 bits, so those stay MLX's."""
    a = mx.array(_squares(np.random.default_rng(0), (300, 500))).astype(dtype)
    for axis in (-1, -2, None):
        for ours, theirs in ((rt.total, mx.sum), (rt.mean, mx.mean)):
            got, want = ours(a, axis, True), theirs(a, axis=axis, keepdims=True)
            assert got.dtype == dtype
            np.testing.assert_array_equal(np.array(got.astype(mx.float32)),
                                          np.array(want.astype(mx.float32)))


def test_blocked_sum_copies_nothing_full_size():
    """A split axis is a view, remainders included: the extra memory is the partials."""
    a = mx.array(_squares(np.random.default_rng(1), (2049, 4099)))
    mx.eval(a)
    for axis in (-1, -2, None):
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        mx.eval(rt.total(a, axis))
        assert mx.get_peak_memory() - before < a.nbytes // 8, axis


def test_kernel_partials_fold_accurately():
    """The drivers fold per-threadgroup partial sums: 8192 per 8192 x 8192 matrix,
    65536 for a flat 64M-element parameter. The fold is as accurate as the partials."""
    rng = np.random.default_rng(2)
    geo = rt.geometry((2, 8192, 8192), True, 32, 256, 256)
    parts = _squares(rng, geo.B * geo.nrb * geo.ncc) * 8192
    assert _rel(rt.total(mx.array(parts)), parts.sum(dtype=np.float64)) <= RTOL
    rows = _squares(rng, geo.B * geo.M * geo.ncc)
    want = rows.reshape(geo.B, geo.M, geo.ncc).sum(-1, dtype=np.float64)[..., None]
    assert _rel(rt.row_total(mx.array(rows), geo), want) <= RTOL
    cols = _squares(rng, geo.B * geo.nrb * geo.N)
    want = cols.reshape(geo.B, geo.nrb, geo.N).sum(1, dtype=np.float64)[:, None, :]
    assert _rel(rt.col_total(mx.array(cols), geo), want) <= RTOL
    flat = rt.geometry((1 << 26,), False, 1, 1024, 256)
    parts = _squares(rng, flat.nrb * flat.ncc)
    assert flat.ncc == 65536
    assert _rel(rt.total(mx.array(parts)), parts.sum(dtype=np.float64)) <= RTOL


def test_param_precision_reduces_as_mlx_does():
    """precision="param" stays MLX's optimizer bit for bit at sizes where blocked sums
    would round differently; precision="float32" uses them."""
    rng = np.random.default_rng(3)
    for dtype in (mx.float32, mx.bfloat16):
        p = mx.array(rng.standard_normal((192, 320), dtype=np.float32)).astype(dtype)
        g = mx.array(rng.standard_normal((192, 320), dtype=np.float32)).astype(dtype)
        ours = Adafactor(precision="param", backend="mlx").apply_gradients({"w": g}, {"w": p})
        theirs = optim.Adafactor().apply_gradients({"w": g}, {"w": p})
        np.testing.assert_array_equal(np.array(ours["w"].astype(mx.float32)),
                                      np.array(theirs["w"].astype(mx.float32)))
    x = mx.array(_squares(rng, (192, 320)))
    opt = Adafactor(backend="mlx")
    np.testing.assert_array_equal(np.array(opt._mean(x)), np.array(rt.mean(x)))
    assert not np.array_equal(np.array(opt._mean(x)), np.array(mx.mean(x)))
    opt.precision = "param"
    np.testing.assert_array_equal(np.array(opt._mean(x)), np.array(mx.mean(x)))


def _scale_error(step: np.ndarray, want: np.ndarray) -> float:
    """How much too large (positive) or small the step is, by least squares."""
    return float(np.vdot(step, want) / np.vdot(want, want) - 1.0)


def _one_step(cls, hyper, p, g):
    new = cls(**hyper).apply_gradients({"w": mx.array(g)}, {"w": mx.array(p)})["w"]
    return np.array(new)


@pytest.mark.parametrize("n,hyper", [(4096, {}), (8192, {"beta_1": 0.9})],
                         ids=["4096", "8192-beta_1"])
def test_adafactor_step_matches_float64_at_real_sizes(compiled, n, hyper):
    rng = np.random.default_rng(n)
    p = rng.standard_normal((n, n), dtype=np.float32)
    g = rng.standard_normal((n, n), dtype=np.float32)
    oracle = Oracle(compiled, hyper)
    want = oracle.step({"w": p}, {"w": g})["w"]
    step = want - p
    new = _one_step(lambda **h: Adafactor(backend="mlx", **h), hyper, p, g)
    # Within 1e-5 of the float64 step, beyond rounding the new parameter to float32.
    assert (np.abs(new - want) <= 1e-5 * np.abs(step) + 2.0**-23 * np.abs(want)).all()
    assert abs(_scale_error(new - p, step)) <= 1e-6
    if n == 4096:  # MLX's own optimizer on the same step: its means are ~1e-2 off
        theirs = _one_step(optim.Adafactor, hyper, p, g)
        assert _scale_error(theirs - p, step) < -5e-3


def test_accuracy_benchmark_runs():
    """benchmarks/bench_accuracy.py on small sizes: every table prints."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "benchmarks/bench_accuracy.py", "--quick",
                             "--repeats", "1"], cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "blocked/mlx" in result.stdout and "_rt.total" in result.stdout
    assert result.stdout.count("beta_1=0.9") == 2
