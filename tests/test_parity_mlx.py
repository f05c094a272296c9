"""The generated Adafactor against mlx.optimizers.Adafactor itself."""
import itertools
from functools import partial

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import MLP, training_step

SHAPES = {"scalar": (), "one": (1,), "vec": (7,), "row1": (1, 9), "col1": (8, 1),
          "mat": (6, 10), "cube": (3, 4, 5), "quad": (2, 3, 4, 5)}
STEPS = 26
RTOL = 2e-4


def _tree(rng, scale=1.0):
    return {k: mx.array((rng.standard_normal(s) * scale).astype(np.float32))
            for k, s in SHAPES.items()}


def _max_rel(a, b):
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3))) if a.size else 0.0


def _run_both(cls, kwargs, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    params = _tree(rng)
    ours, theirs = cls(**kwargs), optim.Adafactor(**kwargs)
    p_ours, p_theirs = dict(params), dict(params)
    for _ in range(steps):
        grads = _tree(rng, 0.5)
        p_ours = ours.apply_gradients(grads, p_ours)
        p_theirs = theirs.apply_gradients(grads, p_theirs)
    mx.eval(p_ours, p_theirs)
    return ours, theirs, p_ours, p_theirs


def _option_combos():
    for scale, relative, warmup, beta_1, wd in itertools.product(
            (True, False), (True, False), (True, False), (None, 0.9), (0.0, 0.05)):
        kwargs = dict(scale_parameter=scale, relative_step=relative, warmup_init=warmup,
                      beta_1=beta_1, weight_decay=wd)
        if not relative:
            kwargs["learning_rate"] = 0.02
        yield pytest.param(kwargs, id="-".join(f"{k}={v}" for k, v in kwargs.items()))


@pytest.mark.parametrize("kwargs", list(_option_combos()))
def test_every_option_combination_matches_mlx(module, kwargs):
    ours, theirs, p_ours, p_theirs = _run_both(module.Adafactor, kwargs)
    for name in SHAPES:
        assert _max_rel(p_ours[name], p_theirs[name]) <= RTOL, name
        for key, value in theirs.state[name].items():
            assert _max_rel(ours.state[name][key], value) <= RTOL, (name, key)


@pytest.mark.parametrize("kwargs", [
    dict(eps=(1e-20, 1e-2), clip_threshold=0.5, decay_rate=-0.5),
    dict(relative_step=False, learning_rate=optim.cosine_decay(0.05, 30)),
    dict(relative_step=False, scale_parameter=False, beta_1=0.5,
         learning_rate=optim.join_schedules([optim.linear_schedule(0.0, 0.02, 5),
                                             optim.exponential_decay(0.02, 0.9)], [5])),
], ids=["eps-clip-decay", "cosine-schedule", "joined-schedule"])
def test_hyperparameters_and_schedules_match_mlx(module, kwargs):
    ours, theirs, p_ours, p_theirs = _run_both(module.Adafactor, kwargs, steps=30, seed=1)
    for name in SHAPES:
        assert _max_rel(p_ours[name], p_theirs[name]) <= RTOL, name
    assert ours.state.keys() == theirs.state.keys()
    if "learning_rate" in theirs.state:
        assert float(ours.learning_rate) == pytest.approx(float(theirs.learning_rate))


def test_state_keys_shapes_and_defaults_match_mlx(module):
    import inspect

    ours = module.Adafactor(beta_1=0.9)
    theirs = optim.Adafactor(beta_1=0.9)
    params = _tree(np.random.default_rng(3))
    ours.init(params)
    theirs.init(params)
    for name in SHAPES:
        assert sorted(ours.state[name]) == sorted(theirs.state[name])
        for key, value in theirs.state[name].items():
            assert ours.state[name][key].shape == value.shape
    ours_sig = inspect.signature(module.Adafactor.__init__).parameters
    theirs_sig = inspect.signature(optim.Adafactor.__init__).parameters
    for name, param in theirs_sig.items():
        assert ours_sig[name].default == param.default, name
    assert int(ours.step) == 0


def _train(opt_factory, compiled_step, steps=25):
    mx.random.seed(0)
    model = MLP()
    opt = opt_factory()
    rng = np.random.default_rng(5)
    data = [(mx.array(rng.standard_normal((16, 6)).astype(np.float32)),
             mx.array(rng.standard_normal((16, 3)).astype(np.float32))) for _ in range(steps)]
    step = training_step(model, opt, compiled_step)
    losses = []
    for x, y in data:
        losses.append(float(step(x, y)))
        mx.eval(model.parameters(), opt.state)
    return model, opt, losses


def test_compiled_training_step_matches_eager_and_mlx(module):
    factory = partial(module.Adafactor, beta_1=0.9, weight_decay=0.01)
    eager_model, _, eager_losses = _train(factory, False)
    model, opt, losses = _train(factory, True)
    mlx_model, _, mlx_losses = _train(partial(optim.Adafactor, beta_1=0.9, weight_decay=0.01),
                                      True)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    np.testing.assert_allclose(losses, mlx_losses, rtol=1e-4)
    assert int(opt.step) == 25
    for (name, a), (_, b) in zip(_flat(model), _flat(mlx_model)):
        assert _max_rel(a, b) <= RTOL, name


def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())
