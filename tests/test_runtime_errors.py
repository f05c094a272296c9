"""Run-time misuse: clear ValueErrors that name the parameter, and no state change; a step
that raises midway changes nothing either."""
import importlib

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import BACKENDS, backend_context, run_steps, tree_bits
from mlx.utils import tree_flatten


def _params():
    return {"w": mx.ones((4, 3)), "b": mx.zeros((3,)), "layers": [{"k": mx.ones((2, 2))}]}


def _snapshot(tree):
    return {k: np.array(v) for k, v in tree_flatten(tree)}


@pytest.fixture
def primed(module):
    opt = module.Adafactor(beta_1=0.9)
    params = _params()
    grads = {k: v for k, v in _params().items()}
    params = opt.apply_gradients(grads, params)
    mx.eval(params, opt.state)
    return opt, params


def _assert_untouched(opt, before):
    after = _snapshot(opt.state)
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize("grads,message", [
    ({"w": mx.ones((3, 4)), "b": mx.ones((3,)), "layers": [{"k": mx.ones((2, 2))}]},
     r"gradient for parameter 'w' has shape \(3, 4\) but the parameter has shape \(4, 3\)"),
    ({"w": mx.ones((4, 3)), "b": mx.ones((3,)), "layers": [{"k": mx.ones((2, 3))}]},
     r"'layers.0.k' has shape \(2, 3\)"),
    ({"w": mx.ones((4, 3)), "extra": mx.ones((3,))}, r"gradient for 'extra' has no matching "
     r"parameter"),
    ({"w": mx.ones((4, 3), dtype=mx.int32)}, r"gradient for parameter 'w' has dtype int32"),
])
def test_bad_gradients_raise_and_keep_state(primed, grads, message):
    opt, params = primed
    before = _snapshot(opt.state)
    with pytest.raises(ValueError, match=message):
        opt.apply_gradients(grads, params)
    _assert_untouched(opt, before)


def test_state_shape_mismatch_names_parameter(primed):
    opt, params = primed
    params = dict(params, w=mx.ones((5, 3)))
    before = _snapshot(opt.state)
    with pytest.raises(ValueError, match=r"parameter 'w' has shape \(5, 3\) but its state "
                       r"'exp_avg_sq_row' has shape \(4,\)"):
        opt.apply_gradients({"w": mx.ones((5, 3))}, params)
    _assert_untouched(opt, before)


def _fail_on_second_parameter(monkeypatch, cls):
    """Make ``cls.apply_single`` raise for the second parameter of the next step."""
    calls = []
    original = cls.apply_single

    def flaky(self, gradient, parameter, state):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(self, gradient, parameter, state)

    monkeypatch.setattr(cls, "apply_single", flaky)


def test_failure_midway_commits_nothing(module, monkeypatch):
    """An error inside the update of a later parameter leaves the parameters and the whole
    state, ``step`` included, as they were."""
    opt = module.Adafactor()
    params = _params()
    opt.init(params)
    before, params_before = tree_bits(opt.state), tree_bits(params)
    _fail_on_second_parameter(monkeypatch, module.Adafactor)
    with pytest.raises(RuntimeError, match="boom"):
        opt.apply_gradients(_params(), params)
    monkeypatch.undo()
    assert tree_bits(opt.state) == before and tree_bits(params) == params_before
    assert opt.step.item() == 0


SCHEDULED = {"adafactor": dict(relative_step=False, beta_1=0.9),
             "adam": dict(bias_correction=True), "adamw": dict(bias_correction=True)}


def _scheduled(stem, backend, nonfinite):
    module = importlib.import_module(f"generated.{stem}")
    name = {"adafactor": "Adafactor", "adam": "Adam", "adamw": "AdamW"}[stem]
    kwargs = dict(SCHEDULED[stem], learning_rate=optim.cosine_decay(0.05, 10))

    def make(ours=True):
        if not ours:
            return getattr(optim, name)(**kwargs)
        return getattr(module, name)(**kwargs, backend=backend, nonfinite=nonfinite)
    return module, make


def _grads(count):
    rng = np.random.default_rng(9)
    return [{k: mx.array(rng.standard_normal(v.shape).astype(np.float32))
             for k, v in tree_flatten(_params())} for _ in range(count)]


@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stem", sorted(SCHEDULED))
def test_failure_midway_with_a_schedule_commits_nothing(stem, backend, nonfinite, monkeypatch):
    """``step`` and the scheduled learning rate were written before the update and kept
    when it raised. Now the failed step leaves every bit as it was, and the run continues
    as if it had never been tried, with MLX's schedule values (evaluated at the step
    before the increment)."""
    module, make = _scheduled(stem, backend, nonfinite)
    params = dict(tree_flatten(_params()))
    grads = _grads(4)
    with backend_context(module, backend):
        opt, reference = make(), make()
        p, r = run_steps(opt, params, grads[:2]), run_steps(reference, params, grads[:2])
        before, params_before = tree_bits(opt.state), tree_bits(p)
        _fail_on_second_parameter(monkeypatch, type(opt))
        with pytest.raises(RuntimeError, match="boom"):
            opt.apply_gradients(grads[2], p)
        monkeypatch.undo()
        assert tree_bits(opt.state) == before and tree_bits(p) == params_before
        p, r = run_steps(opt, p, grads[2:]), run_steps(reference, r, grads[2:])
    assert tree_bits(p) == tree_bits(r) and tree_bits(opt.state) == tree_bits(reference.state)
    theirs = make(ours=False)
    run_steps(theirs, params, grads)
    assert opt.step.item() == theirs.step.item() == 4
    assert tree_bits(opt.state["learning_rate"]) == tree_bits(theirs.state["learning_rate"])


@pytest.mark.parametrize("stem", sorted(SCHEDULED))
def test_failure_on_the_first_step_leaves_the_optimizer_fresh(stem, monkeypatch):
    """The first step initialises the state; when it raises, the optimizer is as it was
    built (no state tensors, step 0, the schedule's first value) and starts afresh."""
    _, make = _scheduled(stem, "mlx", "propagate")
    params = dict(tree_flatten(_params()))
    grads = _grads(2)
    opt, reference = make(), make()
    fresh = tree_bits(opt.state)
    _fail_on_second_parameter(monkeypatch, type(opt))
    with pytest.raises(RuntimeError, match="boom"):
        opt.apply_gradients(grads[0], params)
    monkeypatch.undo()
    assert tree_bits(opt.state) == fresh
    assert tree_bits(run_steps(opt, params, grads)) == tree_bits(run_steps(reference, params,
                                                                            grads))
    assert tree_bits(opt.state) == tree_bits(reference.state)


@pytest.mark.parametrize("kwargs,message", [
    (dict(relative_step=False), "learning_rate is required when relative_step=False"),
    (dict(eps=(1e-30,)), "eps must be a pair"),
    (dict(clip_threshold=0.0), "clip_threshold must satisfy clip_threshold > 0"),
    (dict(beta_1=1.5), "beta_1 must satisfy"),
    (dict(backend="tpu"), "backend must be one of"),
    (dict(precision="float8"), "precision must be one of"),
    (dict(scale_parameter="no"), r"scale_parameter must be a bool, got 'no'"),
    (dict(warmup_init=2), r"warmup_init must be a bool, got 2"),
    (dict(stochastic_rounding="yes"), r"stochastic_rounding must be a bool, got 'yes'"),
    (dict(nonfinite="ignore"), "nonfinite must be one of"),
    (dict(seed=-1), r"seed must be an int in \[0, 2\*\*32\)"),
    (dict(stochastic_rounding=True, precision="param"), "stochastic_rounding needs "
     "precision='float32'"),
])
def test_bad_constructor_arguments(module, kwargs, message):
    with pytest.raises(ValueError, match=message):
        module.Adafactor(**kwargs)


def test_keys_with_dots_and_lists(module):
    params = {"l0.qkv": mx.ones((4, 3)), "blocks": [mx.ones((2,)), {"w": mx.ones((2, 2))}]}
    opt = module.Adafactor()
    out = opt.apply_gradients(params, params)
    mx.eval(out)
    assert set(opt.state["l0.qkv"]) == {"exp_avg_sq_row", "exp_avg_sq_col"}
    with pytest.raises(ValueError, match=r"'blocks.1.w' has shape \(3, 2\)"):
        opt.apply_gradients({"blocks": [mx.ones((2,)), {"w": mx.ones((3, 2))}]}, params)


def test_bool_arguments_take_bools_and_zero_or_one(module):
    assert module.Adafactor(scale_parameter=0).scale_parameter is False
    assert module.Adafactor(stochastic_rounding=1).stochastic_rounding is True


@pytest.mark.parametrize("option,value,message", [
    ("nonfinite", "bogus", "nonfinite must be one of"),
    ("nonfinite", None, "nonfinite must be one of"),
    ("precision", "bfloat16", "precision must be one of"),
    ("backend", "tpu", "backend must be one of"),
    ("backend", "metal", r"backend 'metal' is not available in this MLX build"),
    ("stochastic_rounding", "yes", "stochastic_rounding must be a bool"),
    ("seed", 2 ** 32, r"seed must be an int in \[0, 2\*\*32\)"),
])
def test_options_set_mid_run_are_checked(primed, option, value, message):
    """An option set between steps is checked as the constructor checks it; a refused
    value leaves the option, the state and the next step as they were."""
    opt, params = primed
    was, before = getattr(opt, option), _snapshot(opt.state)
    with pytest.raises(ValueError, match=message):
        setattr(opt, option, value)
    assert getattr(opt, option) == was
    _assert_untouched(opt, before)
    mx.eval(opt.apply_gradients(_params(), params))
    assert opt.step.item() == 2


def test_precision_and_stochastic_rounding_stay_compatible_mid_run(module):
    opt = module.Adafactor(stochastic_rounding=True)
    with pytest.raises(ValueError, match="stochastic_rounding needs precision='float32'"):
        opt.precision = "param"
    assert opt.precision == "float32"
    opt.stochastic_rounding = False
    opt.precision = "param"
    with pytest.raises(ValueError, match="stochastic_rounding needs precision='float32'"):
        opt.stochastic_rounding = True
    assert opt.stochastic_rounding is False


def test_nonfinite_switched_to_skip_mid_run_skips(primed):
    opt, params = primed
    opt.nonfinite = "skip"
    bad = dict(_params(), b=mx.array([1.0, float("nan"), 0.0]))
    before = tree_bits(params)
    new = opt.apply_gradients(bad, params)
    mx.eval(new, opt.state)
    assert tree_bits(new) == before
    assert opt.step.item() == 1 and opt.state["skipped_steps"].item() == 1
