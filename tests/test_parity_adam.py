"""Generated Adam/AdamW against mlx.optimizers.Adam/AdamW."""
import contextlib

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import compiled_steps

from afgen.build import compile_path, load_module
from afgen.check.kernel_runner import cpu_kernels

SHAPES = {"s": (), "v": (7,), "m": (5, 9), "t": (2, 3, 4)}


@pytest.fixture(scope="module", params=["adam", "adamw"])
def pair(request):
    compiled = compile_path(f"specs/{request.param}.yaml")
    module = load_module(compiled)
    name = compiled.spec.class_name
    return module, getattr(module, name), getattr(optim, name)


def _trees(seed, count):
    rng = np.random.default_rng(seed)
    return [{k: mx.array(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}
            for _ in range(count)]


@pytest.mark.parametrize("kwargs", [
    dict(learning_rate=0.01),
    dict(learning_rate=0.01, bias_correction=True, betas=[0.8, 0.99], eps=1e-6),
    dict(learning_rate=optim.cosine_decay(0.02, 40), bias_correction=True),
], ids=["plain", "bias-correction", "schedule"])
@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
def test_matches_mlx(pair, kwargs, backend):
    module, ours_cls, theirs_cls = pair
    steps = 30 if backend == "mlx" else 3
    params, *grads = _trees(0, steps + 1)
    ctx = contextlib.nullcontext() if backend == "mlx" else cpu_kernels(module)
    with ctx:
        ours, theirs = ours_cls(**kwargs, backend=backend), theirs_cls(**kwargs)
        p1, p2 = dict(params), dict(params)
        for g in grads:
            p1 = ours.apply_gradients(g, p1)
            p2 = theirs.apply_gradients(g, p2)
        mx.eval(p1, p2)
    for k in SHAPES:
        np.testing.assert_allclose(np.array(p1[k]), np.array(p2[k]), rtol=2e-5, atol=2e-6)
        for key in ("m", "v"):
            np.testing.assert_allclose(np.array(ours.state[k][key]),
                                       np.array(theirs.state[k][key]), rtol=2e-5, atol=1e-7)


def test_learning_rate_is_required(pair):
    _, ours_cls, _ = pair
    with pytest.raises(TypeError):
        ours_cls()


def test_compiled_step_matches_mlx(pair):
    _, ours_cls, theirs_cls = pair
    params, *grads = _trees(1, 11)
    results = [compiled_steps(cls(learning_rate=0.01, bias_correction=True), params, grads)
               for cls in (ours_cls, theirs_cls)]
    for k in SHAPES:
        np.testing.assert_allclose(np.array(results[0][k]), np.array(results[1][k]),
                                   rtol=1e-5, atol=1e-6)
