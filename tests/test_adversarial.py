"""Adversarial gradients: structured zeros and extreme scales must not turn an update that
the spec, evaluated as written in float32, keeps finite into NaN; and verification must
say so when a backend does."""
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import BACKENDS, backend_context, generated_class
from mlx.utils import tree_flatten

from afgen.build import compile_path, load_class, load_module
from afgen.check.adversarial import members
from afgen.check.oracle import Oracle
from afgen.check.reference import SpecReference
from afgen.check.verify import hyper_for, verify
from afgen.check.verify_adversarial import Tally, compare

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p.name for p in (ROOT / "specs").glob("*.yaml"))
# One all-zero row and one all-zero column: the lowering's mean(h0 * h1 * grad**2), with
# h0 ~ 1/row and h1 ~ 1/col, computes 1e30 * 1e30 = inf and then inf * 0 = NaN.
BUG_GRAD = np.array([[1, 0, .5], [0, 0, 0], [.3, 0, 2]], np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stem", ["adafactor", "adafactor_paper", "adafactor_optax",
                                  "adafactor_torch"])
def test_zero_row_and_column_stay_finite(stem, backend):
    module, cls = generated_class(stem)
    spec = ROOT / "specs" / f"{stem}.yaml"
    hyper = {"min_dim_size_to_factor": 2} if stem == "adafactor_optax" else {}
    with backend_context(module, backend):
        new = cls(**hyper, backend=backend).apply_gradients(
            {"w": mx.array(BUG_GRAD)}, {"w": mx.ones((3, 3))})["w"]
        nonfinite = int(mx.sum(~mx.isfinite(new)).item())
    assert nonfinite == 0, f"{nonfinite} of 9 elements are NaN/inf: {np.array(new)}"
    reference = SpecReference(compile_path(spec).spec, hyper)
    want = reference.step({"w": np.ones((3, 3), np.float32)}, {"w": BUG_GRAD})["w"]
    np.testing.assert_allclose(np.array(new), want, rtol=1e-5)


BATCH = 8  # small enough that some ReLU units are dead on every sample


def _data() -> tuple[mx.array, mx.array]:
    x = mx.random.normal((BATCH, 32), key=mx.random.key(1))
    x = mx.concatenate([mx.zeros((BATCH, 5)), x[:, 5:]], axis=1)  # first 5 features are 0
    return x, mx.random.randint(0, 10, (BATCH,), key=mx.random.key(2))


def _loss(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
    return nn.losses.cross_entropy(model(x), y, reduction="mean")


def _mlp() -> nn.Module:
    """Zero input features give the first weight's gradient all-zero columns, ReLU units
    dead on the whole batch all-zero rows."""
    mx.random.seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def _train(optimizer, model: nn.Module, steps: int = 20) -> list[float]:
    step = nn.value_and_grad(model, _loss)
    x, y = _data()
    losses = []
    for _ in range(steps):
        loss, grads = step(model, x, y)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
        losses.append(loss.item())
    return losses


def test_mlp_with_zero_features_trains_as_mlx_does():
    _, grads = nn.value_and_grad(_mlp(), _loss)(_mlp(), *_data())
    first = np.array(grads["layers"][0]["weight"])
    assert (first == 0).all(axis=0).any() and (first == 0).all(axis=1).any()
    ours_model, theirs_model = _mlp(), _mlp()
    theirs = _train(optim.Adafactor(), theirs_model)
    ours = _train(load_class(ROOT / "specs" / "adafactor.yaml")(backend="mlx"), ours_model)
    assert np.isfinite(theirs).all() and theirs[-1] < theirs[0]
    bad = [k for k, v in tree_flatten(ours_model.parameters()) if not mx.isfinite(v).all()]
    assert not bad and np.isfinite(ours).all(), f"NaN/inf in {bad}; losses {ours}"
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)


@pytest.mark.parametrize("spec", SPECS)
def test_spec_order_reference_matches_the_oracle_in_float64(spec):
    """Two independent readings of the spec (the lowered plan rendered for NumPy, and the
    spec text walked as written) agree in float64 on every specialisation."""
    compiled = compile_path(ROOT / "specs" / spec)
    shapes = {True: [(5, 7), (1, 9), (3, 4, 6), (2, 1, 3, 5), (7, 3, 5)],
              False: [(), (1,), (7,)]}
    for index, plan in enumerate(compiled.plans):
        hyper = hyper_for(compiled, plan)
        rng = np.random.default_rng(index)
        oracle, reference = Oracle(compiled, hyper), SpecReference(compiled.spec, hyper,
                                                                   np.float64)
        params = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(shapes[plan.factored])}
        for _ in range(3):
            grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
            want, got = oracle.step(params, grads), reference.step(params, grads)
            for name, value in want.items():
                scale = np.maximum(np.abs(value), np.abs(params[name]))
                assert (np.abs(got[name] - value) <= 1e-11 * np.maximum(scale, 1e-3)).all()
                for key, state in oracle.state[name].items():
                    np.testing.assert_allclose(reference.state[name][key], state, rtol=1e-11)
            params = want


# Every construct of the language the shipped specs do not use: scalar and col state,
# where, comparisons, and/or/not, pow, exp, log, sign, 3-argument min/max, sums of every
# kind, has() of a pair component, dtype_eps, a schedule.
EVERY_CONSTRUCT = """
optimizer: Every
hyperparameters:
  lr: {type: schedule, example: 0.01}
  beta: {type: optional_float, default: null, example: 0.5}
  pair: {type: pair, names: [p1, p2], default: [0.1, null], example: [0.1, 0.2]}
  flip: {type: bool, default: false}
layout:
  factored: ndim >= 2
state:
  s: {shape: scalar, init: 1.0}
  r: {shape: row, when: factored}
  c: {shape: col, when: factored}
  m: {shape: full, when: has(beta)}
update:
  - g = -grad if flip else grad
  - s = s * 0.5 + sum(abs(g)) / (1 + mean(square(g)))
  - k = exp(-abs(g)) * sign(g) + log(1 + abs(g)) + pow(abs(g), 1.5) - sqrt(abs(param))
  - if: factored and not flip
    then:
      - r = rowwise_sum(square(g)) + rowwise_mean(g) * 0
      - c = colwise_mean(abs(g)) + 1
      - k = k * r / matrixwise_sum(r) * rsqrt(c) + matrixwise_mean(c) * 0
  - if: factored and flip
    then:
      - r = rowwise_mean(abs(k))
      - c = colwise_sum(abs(k)) + t
  - if: has(beta)
    then:
      - m = where(flip or k < 0, beta * m + (1 - beta) * k, m * 0.5)
      - k = m
  - u = min(k, 2, max(k, -2, p1 * 0)) + (p2 if has(p2) else dtype_eps)
  - param = param - lr * u / max(1, rms(u)) - s * 1e-3 * t ** -0.5
"""


def test_spec_order_reference_matches_the_oracle_on_every_construct():
    from afgen.lower.compiler import compile_spec
    from afgen.spec import parse_spec_text

    compiled = compile_spec(parse_spec_text(EVERY_CONSTRUCT, "every.yaml"))
    assert len(compiled.plans) == 16
    for index, plan in enumerate(compiled.plans):
        hyper = hyper_for(compiled, plan)
        rng = np.random.default_rng(index)
        oracle, reference = Oracle(compiled, hyper), SpecReference(compiled.spec, hyper,
                                                                   np.float64)
        params = {f"p{i}": rng.standard_normal(s) for i, s in enumerate([(4, 5), (2, 3, 4),
                                                                          (6,), ()])}
        for _ in range(3):
            grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
            want, got = oracle.step(params, grads), reference.step(params, grads)
            for name, value in want.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-14)
                for key, state in oracle.state[name].items():
                    np.testing.assert_allclose(reference.state[name][key], state, rtol=1e-12)
            params = want


def test_reference_is_float32_throughout():
    compiled = compile_path(ROOT / "specs" / "adafactor.yaml")
    reference = SpecReference(compiled.spec, {"beta_1": 0.9})
    out = reference.step({"w": np.ones((3, 4), np.float32)},
                         {"w": np.full((3, 4), 1e30, np.float32)})
    assert out["w"].dtype == np.float32
    assert all(v.dtype == np.float32 for v in reference.state["w"].values())
    assert np.isinf(reference.state["w"]["exp_avg_sq_row"]).all()  # 1e30**2 overflows


def test_families_are_deterministic_and_cover_ranks_and_scales():
    first, second = members(2), members(2)
    assert [m.name for m in first] == [m.name for m in second]
    for a, b in zip(first, second):
        assert np.array_equal(a.param, b.param) and all(
            np.array_equal(x, y) for x, y in zip(a.grads, b.grads))
        assert a.param.dtype == np.float32 and all(g.dtype == np.float32 for g in a.grads)
    assert {m.param.ndim for m in first} == {0, 1, 2, 3, 4}
    grads = np.concatenate([g.ravel() for m in first for g in m.grads])
    assert np.abs(grads).max() > 1e29 and 0 < np.abs(grads[grads != 0]).min() < 1e-38


def test_compare_counts_both_directions_and_allows_the_specs_own_error():
    tally = Tally()
    want = np.array([1.0, 2.0, 3.0, 4.0])
    ref = np.array([1.0, np.inf, 3.0, 4.5], np.float32)
    got = np.array([np.nan, 5.0, 3.0, 4.5], np.float32)
    compare(tally, "p", got, want, ref, None, 1e-6, 1e-4)
    assert tally.nonfinite == 2 and not tally.passed
    assert "1 NaN/inf where the float32 spec-order reference is finite" in tally.problems[0]
    assert "1 finite where the reference is NaN/inf" in tally.problems[0]
    # 4.5 vs 4.0 is far outside rtol, but the spec's own float32 result is just as far.
    assert tally.worst_ratio < 1


def test_verification_flags_a_nonfinite_disagreement(monkeypatch):
    """A backend that puts one inf where the spec-order reference is finite fails its
    adversarial case, with the count in the table."""
    import afgen.check.verify as verify_module

    compiled = compile_path(ROOT / "specs" / "adam.yaml")

    def patched_module(c):
        module = load_module(c)
        cls = getattr(module, c.spec.class_name)
        original = cls.apply_gradients

        def apply_gradients(self, gradients, parameters):
            out = original(self, gradients, parameters)
            if "vec_zero" in out and int(self.step.item()) == 1:
                out["vec_zero"] = out["vec_zero"].at[3].add(mx.array(np.inf))
            return out

        cls.apply_gradients = apply_gradients
        return module

    monkeypatch.setattr(verify_module, "load_module", patched_module)
    report = verify(compiled, steps=1, backends=["mlx"])
    adversarial = [r for r in report.results if r.case.startswith("adversarial")]
    assert all(r.passed for r in report.results if r not in adversarial)
    assert adversarial and all(not r.passed and r.nonfinite == 1 for r in adversarial)
    assert "vec_zero step 1 param: 1 NaN/inf where the float32 spec-order reference is " \
           "finite" in report.table()


def test_adversarial_cases_run_on_the_executor():
    """On the CPU executor the adversarial tree takes one step under one schedule; Adam's
    fused kernels keep every finite/non-finite pattern the spec has."""
    compiled = compile_path(ROOT / "specs" / "adam.yaml")
    small = type(compiled)(compiled.spec, compiled.plans[:1])
    report = verify(small, steps=1, backends=["metal"], dtypes=["float32"])
    adversarial = [r for r in report.results if r.case.startswith("adversarial")]
    assert len(adversarial) == 1 and adversarial[0].steps == 1
    assert adversarial[0].nonfinite == 0 and report.passed, report.table()


PLANS_PER_LAYOUT = 4  # every specialisation of each spec but optax (64)


@pytest.mark.parametrize("backend", ["metal", "cuda"])
@pytest.mark.parametrize("spec", [s for s in SPECS if s != "adafactor.yaml"])
def test_every_spec_s_fused_kernels_pass_the_adversarial_families(spec, backend):
    """``afgen build`` in CI runs the adversarial families on the executor for
    specs/adafactor.yaml only (the others on MLX ops); here every other spec's fused
    kernels run them too: every specialisation, but for the optax spec's 64 the first
    four of each layout. (The torch spec's kernels were finite on 1e30 gradients where
    the spec is NaN, in its ``!has_eps1`` specialisations only, until max/min propagated
    NaN as mx.maximum does.)"""
    from afgen.check.kernel_runner import CpuKernelRunner, cpu_kernels
    from afgen.check.verify import _adversarial_case

    compiled = compile_path(ROOT / "specs" / spec)
    plans = [p for layout in (True, False)
             for p in [p for p in compiled.plans if p.factored == layout][:PLANS_PER_LAYOUT]]
    module = load_module(compiled)
    cls = getattr(module, compiled.spec.class_name)
    with cpu_kernels(module, CpuKernelRunner()) as runner:
        results = [_adversarial_case(compiled, cls, plan, backend, runner) for plan in plans]
    for result in results:
        assert result.passed and result.nonfinite == 0, (result.case, result.error)
