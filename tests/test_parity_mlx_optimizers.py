"""The specs of the rest of mlx.optimizers (SGD, RMSprop, Adagrad, AdaDelta, Adamax, Lion,
Muon) against the MLX classes themselves: every constructor option, schedules, state keys,
0-D to 4-D parameters (a tall matrix too, which Muon transposes), eager and compiled, MLX
ops and the fused kernels (on the CPU executor), and precision="param", which must be MLX
bit for bit (Muon: see BIT_EXACT)."""

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import (
    backend_context,
    compiled_steps,
    generated_optimizer,
    relative_error,
    tree_bits,
)

SHAPES = {"s": (), "v": (7,), "m": (5, 9), "w": (9, 5), "t": (2, 3, 4), "q": (2, 1, 3, 5)}


def _decay(lr):
    return optim.cosine_decay(lr, 40)


# Per spec: the MLX class and configurations that set every constructor option.
CASES = {
    "sgd": (optim.SGD, [
        dict(learning_rate=0.05),
        dict(learning_rate=0.05, momentum=0.9),
        dict(learning_rate=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        dict(learning_rate=0.05, momentum=0.0, dampening=0.5, weight_decay=0.1),
        dict(learning_rate=_decay(0.05), momentum=0.5),
    ]),
    "rmsprop": (optim.RMSprop, [
        dict(learning_rate=0.01),
        dict(learning_rate=0.01, alpha=0.9, eps=1e-6),
        dict(learning_rate=_decay(0.01)),
    ]),
    "adagrad": (optim.Adagrad, [
        dict(learning_rate=0.05),
        dict(learning_rate=0.05, eps=1e-6),
        dict(learning_rate=_decay(0.05)),
    ]),
    "adadelta": (optim.AdaDelta, [
        dict(learning_rate=0.5),
        dict(learning_rate=0.5, rho=0.8, eps=1e-5),
        dict(learning_rate=_decay(0.5)),
    ]),
    "adamax": (optim.Adamax, [
        dict(learning_rate=0.01),
        dict(learning_rate=0.01, betas=[0.8, 0.99], eps=1e-6),
        dict(learning_rate=_decay(0.01)),
    ]),
    "lion": (optim.Lion, [
        dict(learning_rate=0.001),
        dict(learning_rate=0.001, betas=[0.8, 0.95], weight_decay=0.1),
        dict(learning_rate=_decay(0.001), weight_decay=0.05),
    ]),
    "muon": (optim.Muon, [
        dict(learning_rate=0.02),
        dict(learning_rate=0.02, momentum=0.9, weight_decay=0.0, nesterov=False, ns_steps=3),
        dict(learning_rate=_decay(0.02), weight_decay=0.1, ns_steps=0),
    ]),
}
PARAMS = [(stem, index) for stem, (_, configs) in CASES.items() for index in range(len(configs))]
# Muon's Newton-Schulz iterations run MLX's matmul in both, but MLX computes the norm with
# mx.linalg.norm and fuses each step's sum into mx.addmm, where the spec's block sums
# accurately and adds after the product: the same values to float32 rounding (see
# test_matches_mlx), not the same bits.
BIT_EXACT = [(stem, index) for stem, index in PARAMS if stem != "muon"]


def _trees(seed: int, count: int, dtype=mx.float32) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{k: mx.array(rng.standard_normal(s).astype(np.float32)).astype(dtype)
             for k, s in SHAPES.items()} for _ in range(count)]


def _steps(opt, params: dict, grads: list[dict]) -> dict:
    for g in grads:
        params = opt.apply_gradients(g, params)
    mx.eval(params, opt.state)
    return params


def _assert_close(ours, theirs, p1: dict, p2: dict) -> None:
    """Every parameter and state tensor within 2e-5 relative of MLX's; the same keys."""
    for k in SHAPES:
        assert relative_error(p1[k], p2[k]) <= 2e-5, k
        assert set(ours.state[k]) == set(theirs.state[k]), k
        for key, value in theirs.state[k].items():
            assert relative_error(ours.state[k][key], value) <= 2e-5, (k, key)


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
@pytest.mark.parametrize("stem,index", PARAMS)
def test_matches_mlx(stem, index, backend):
    module, make = generated_optimizer(stem)
    theirs_cls, configs = CASES[stem]
    kwargs = configs[index]
    steps = 25 if backend == "mlx" else 3
    params, *grads = _trees(index, steps + 1)
    with backend_context(module, backend):
        ours = make(**kwargs, backend=backend)
        p1 = _steps(ours, dict(params), grads)
    theirs = theirs_cls(**kwargs)
    p2 = _steps(theirs, dict(params), grads)
    _assert_close(ours, theirs, p1, p2)


@pytest.mark.parametrize("stem", sorted(CASES))
def test_compiled_step_matches_mlx(stem):
    module, make = generated_optimizer(stem)
    theirs_cls, configs = CASES[stem]
    kwargs = configs[-1]  # the schedule: the step count is compiled state too
    params, *grads = _trees(7, 26)
    ours, theirs = make(**kwargs, backend="mlx"), theirs_cls(**kwargs)
    _assert_close(ours, theirs, compiled_steps(ours, params, grads),
                  compiled_steps(theirs, params, grads))


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("stem,index", BIT_EXACT)
def test_param_precision_is_mlx_bit_for_bit(stem, index, dtype):
    _, make = generated_optimizer(stem)
    theirs_cls, configs = CASES[stem]
    params, *grads = _trees(3, 11, dtype)
    ours = make(**configs[index], backend="mlx", precision="param")
    theirs = theirs_cls(**configs[index])
    assert tree_bits(_steps(ours, dict(params), grads)) == \
        tree_bits(_steps(theirs, dict(params), grads))
    assert tree_bits(ours.state) == tree_bits(theirs.state)


@pytest.mark.parametrize("dtype,ulp", [(mx.bfloat16, 2.0 ** -7), (mx.float16, 2.0 ** -10)])
@pytest.mark.parametrize("index", range(len(CASES["muon"][1])))
def test_muon_param_precision_is_within_one_unit_of_mlx(index, dtype, ulp):
    """In the parameter's dtype Muon's products round as MLX's do, its norm and sums do
    not (BIT_EXACT): after 10 steps every parameter is within one unit in the last place
    of MLX's, relative to its largest value."""
    _, make = generated_optimizer("muon")
    kwargs = CASES["muon"][1][index]
    params, *grads = _trees(3, 11, dtype)
    ours = make(**kwargs, backend="mlx", precision="param")
    p1, p2 = _steps(ours, dict(params), grads), _steps(optim.Muon(**kwargs), dict(params), grads)
    for k in SHAPES:
        assert p1[k].dtype == dtype
        assert relative_error(p1[k].astype(mx.float32), p2[k].astype(mx.float32)) <= ulp, k


@pytest.mark.parametrize("stem", sorted(CASES))
def test_learning_rate_is_required(stem):
    _, make = generated_optimizer(stem)
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize("stem,kwargs", [
    ("sgd", dict(nesterov=True)),
    ("sgd", dict(nesterov=True, momentum=0.9, dampening=0.1)),
    ("rmsprop", dict(alpha=-0.5)),
    ("rmsprop", dict(eps=0.0)),
    ("adagrad", dict(eps=0.0)),
    ("adadelta", dict(rho=-0.5)),
    ("adadelta", dict(eps=0.0)),
    ("lion", dict(betas=[1.0, 0.9])),
    ("lion", dict(betas=[0.9, -0.1])),
])
def test_refuses_what_mlx_refuses(stem, kwargs):
    _, ours = generated_optimizer(stem)
    with pytest.raises(ValueError):
        CASES[stem][0](0.1, **kwargs)
    with pytest.raises(ValueError):
        ours(0.1, **kwargs)
