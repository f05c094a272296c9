"""Max and min reductions (rowwise, colwise, matrixwise, over the tensor) and the outer
min/max of a row and a col, on every backend: SM3 uses only some of them, so a spec here
uses them all, and verification runs it against the float64 oracle and the spec-order
reference, with fused kernels on the CPU executor."""
import math

import mlx.core as mx
import numpy as np
import pytest

from afgen.check.verify import load_module, verify
from afgen.lower.compiler import compile_spec
from afgen.spec import parse_spec_text

EXTREMES = """\
optimizer: Extremes
hyperparameters:
  lr: {type: float, default: 0.01}
layout:
  factored: ndim >= 2
state:
  row_max: {shape: row, when: factored}
  col_min: {shape: col, when: factored}
  top: {shape: scalar}
update:
  - a = abs(grad)
  - top = max(amax(a), -amin(grad))
  - if: factored
    then:
      - row_max = rowwise_max(a)
      - col_min = colwise_min(grad)
      - batch_max = matrixwise_max(a)
      - cover = min(row_max, col_min + 10)
      - param = param - lr * grad * cover / (matrixwise_min(a) + batch_max + top)
    else:
      - param = param - lr * grad / (top + 1)
"""


@pytest.fixture(scope="module")
def extremes():
    return compile_spec(parse_spec_text(EXTREMES, "extremes.yaml"))


def test_min_reductions_are_negated_max_reductions(extremes):
    """Passes fold sums and maxima only: min(x) is lowered as -max(-x), which is exact."""
    for plan in extremes.plans:
        assert {r.how for r in plan.program.reductions} == {"max"}
        assert len(plan.program.reductions) == (6 if plan.factored else 2)


def test_every_backend_matches_the_oracle(extremes):
    report = verify(extremes, steps=3, backends=["mlx", "metal", "cuda"], dtypes=["float32"])
    assert report.passed, report.table()
    assert {r.backend for r in report.results} == {"mlx", "mlx-plan", "metal", "cuda"}


@pytest.mark.parametrize("backend", ["mlx", "metal"])
def test_a_nan_reaches_the_maxima_as_in_mlx(extremes, backend):
    """One NaN gradient element makes its row's maximum, its column's minimum and the
    tensor's extremes NaN (mx.max propagates NaN; Metal's simd_max would skip it), and
    no other row's or column's."""
    from helpers import backend_context

    module = load_module(extremes)
    grad = np.random.default_rng(0).standard_normal((3, 70, 40)).astype(np.float32)
    grad[1, 5, 7] = math.nan
    with backend_context(module, backend):
        opt = module.Extremes(backend=backend)
        opt.apply_gradients({"w": mx.array(grad)}, {"w": mx.zeros((3, 70, 40))})
        state = {k: np.array(v) for k, v in opt.state["w"].items()}
    assert np.isnan(state["top"])
    assert np.isnan(state["row_max"][1, 5]) and np.isnan(state["col_min"][1, 7])
    assert np.isnan(state["row_max"]).sum() == 1 and np.isnan(state["col_min"]).sum() == 1
