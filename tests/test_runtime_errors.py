"""Run-time misuse: clear ValueErrors that name the parameter, and no state change."""
import mlx.core as mx
import numpy as np
import pytest


def _params():
    return {"w": mx.ones((4, 3)), "b": mx.zeros((3,)), "layers": [{"k": mx.ones((2, 2))}]}


def _snapshot(tree):
    from mlx.utils import tree_flatten

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


def test_failure_midway_commits_nothing(module, monkeypatch):
    """An error inside the update of a later parameter leaves earlier ones unchanged."""
    opt = module.Adafactor()
    params = _params()
    opt.init(params)
    before = _snapshot(opt.state)
    calls = []
    original = module.Adafactor.apply_single

    def flaky(self, gradient, parameter, state):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(self, gradient, parameter, state)

    monkeypatch.setattr(module.Adafactor, "apply_single", flaky)
    with pytest.raises(RuntimeError):
        opt.apply_gradients(_params(), params)
    monkeypatch.undo()
    after = _snapshot(opt.state)
    for key in before:
        if key != "step":
            np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize("kwargs,message", [
    (dict(relative_step=False), "learning_rate is required when relative_step=False"),
    (dict(eps=(1e-30,)), "eps must be a pair"),
    (dict(clip_threshold=0.0), "clip_threshold must satisfy clip_threshold > 0"),
    (dict(beta_1=1.5), "beta_1 must satisfy"),
    (dict(backend="tpu"), "backend must be one of"),
    (dict(precision="float8"), "precision must be one of"),
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
