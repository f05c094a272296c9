"""Verification passes for every specialisation and fails when a backend is wrong."""
import math
import re

import pytest

from afgen.backends import printers
from afgen.backends.kernels import tile
from afgen.check.verify import KERNEL_CASES, KERNEL_SHAPES, verify


def test_every_specialisation_passes(compiled):
    report = verify(compiled, steps=6, backends=["mlx"], adversarial=False)
    # The statements: float32, and precision="param" in float16 and bfloat16; then
    # float32 for each other arm of the run-time ifs: relative_step x warmup_init, 4 in
    # all. The plan (the kernels' MLX twins): float32 and the other arms.
    statements = [r for r in report.results if r.backend == "mlx"]
    planned = [r for r in report.results if r.backend == "mlx-plan"]
    assert len(statements) == (3 + 3) * len(compiled.plans) == 48
    assert len(planned) == (1 + 3) * len(compiled.plans) == 32
    assert {(r.dtype, r.precision) for r in statements} == {
        ("float32", "float32"), ("float16", "param"), ("bfloat16", "param")}
    assert {(r.dtype, r.precision) for r in planned} == {("float32", "float32")}
    for results in (statements, planned):
        arms = {tuple(w for w in r.case.split() if "relative_step" in w or "warmup_init" in w)
                for r in results}
        assert len(arms) == 4
    assert report.passed, report.table()
    assert "80 passed, 0 failed" in report.table()


@pytest.mark.parametrize("broken", [
    {"rsqrt": "mx.sqrt"},
    {"maximum": "mx.minimum"},
])
def test_a_wrong_mlx_backend_fails_verification(compiled, monkeypatch, broken):
    monkeypatch.setattr(printers.MLXPrinter, "funcs", {**printers.MLXPrinter.funcs, **broken})
    report = verify(compiled, steps=3, backends=["mlx"], adversarial=False)
    assert not report.passed
    assert "FAIL" in report.table()


def test_a_wrong_constant_fails_verification(compiled, monkeypatch):
    original = printers.MLXPrinter.float_literal
    monkeypatch.setattr(printers.MLXPrinter, "float_literal",
                        lambda self, v: original(self, v * 1.001 if v == 0.01 else v))
    report = verify(compiled, steps=3, backends=["mlx"], adversarial=False)
    failed = {r.case for r in report.results if not r.passed}
    assert failed and all("!warmup_init" in case for case in failed)


def test_fused_backends_are_verified_on_the_executor(compiled):
    """Without a GPU the table says how fused kernels were run, and nvcc checked CUDA."""
    from afgen.lower.config import all_configs  # noqa: F401 - the spec compiles

    plans = [p for p in compiled.plans if p.config.get("has_beta_1")][:1]
    small = type(compiled)(compiled.spec, plans)
    report = verify(small, steps=1, backends=["metal", "cuda"], dtypes=["bfloat16"],
                    adversarial=False)
    assert report.passed, report.table()
    text = report.table()
    assert "no metal device here; executing the exact kernel text on the CPU executor" in text
    assert re.search(r"cuda: (NVRTC \S+ --gpu-architecture=sm_90a with MLX \S+'s headers|"
                     r"nvcc -arch=sm_90) compiled all \d+ kernel sources that ran", text), text
    assert {r.precision for r in report.results} == {"float32", "param"}


def _tiles(shape, factored):
    """(matrices, row blocks, rows in the last, column chunks, columns in the last)."""
    rows, cols = tile(factored)
    if factored:
        b, m, n = math.prod(shape[:-2]), shape[-2], shape[-1]
    else:
        b, m, n = 1, 1, math.prod(shape)
    return b, -(-m // rows), m - (-(-m // rows) - 1) * rows, -(-n // cols), \
        n - (-(-n // cols) - 1) * cols


def test_kernel_shapes_cover_the_tiles():
    """Several row blocks and column chunks with ragged last ones, batches, edge cases."""
    rows, cols = tile(True)
    factored = [_tiles(s, True) for s in KERNEL_SHAPES[True]]
    assert any(b >= 2 and nrb >= 3 and 0 < last_m < rows and ncc >= 2 and 0 < last_n < cols
               and nrb != ncc and math.gcd(nrb, ncc) > 1
               for b, nrb, last_m, ncc, last_n in factored)
    assert any(ncc >= 3 and last_n < cols for _, _, _, ncc, last_n in factored)
    assert any(len(s) == 4 for s in KERNEL_SHAPES[True])  # 4-D batch
    assert any(m < 8 and n < 32 for _, _, m, _, n in factored)  # idle SIMD groups and lanes
    flat = [_tiles(s, False) for s in KERNEL_SHAPES[False]]
    assert any(ncc >= 3 and last < tile(False)[1] for _, _, _, ncc, last in flat)
    assert () in KERNEL_SHAPES[False]
    assert KERNEL_CASES["bfloat16"] == KERNEL_CASES["float16"] == ("float32", "param")


def test_unknown_backend_is_rejected(compiled):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        verify(compiled, backends=["tpu"])


def test_bfloat16_rounding_of_the_reference_is_mlx_s():
    """The spec-order reference emulates bfloat16 (NumPy has none) by rounding float32
    results; MLX's cast must give the same bits, ties, infinities and NaN included."""
    import mlx.core as mx
    import numpy as np

    from afgen.check.reference import round_to_bfloat16

    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-40, 38, 10_000),
        np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, -3.4e38, np.inf, 1e-45, 0.0, -0.0],
                 np.float32)])
    want = np.array(mx.array(values).astype(mx.bfloat16).astype(mx.float32))
    np.testing.assert_array_equal(round_to_bfloat16(values), want)
    assert np.isnan(round_to_bfloat16(np.array([np.nan], np.float32))).all()
