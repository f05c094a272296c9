"""specs/adafactor_paper.yaml against Algorithms 4 and 5 of Shazeer & Stern (2018),
implemented here in NumPy from the paper (not generated from the spec)."""
import contextlib

import mlx.core as mx
import numpy as np
import pytest

from afgen.build import compile_path, load_module
from afgen.check.kernel_runner import cpu_kernels

EPS1, EPS2, D = 1e-30, 1e-3, 1.0


def rms(x):
    return np.sqrt(np.mean(np.square(x)))


def paper_step(x, g, t, state):
    """One step of Algorithm 4 (matrices, batched over leading dims) or 5 (vectors)."""
    rho = min(1e-2, 1 / np.sqrt(t))
    alpha = max(EPS2, rms(x)) * rho
    beta2 = 1 - t ** -0.8
    g2 = g * g + EPS1
    if x.ndim >= 2:
        r = beta2 * state.get("R", 0) + (1 - beta2) * g2.sum(axis=-1)       # (G^2+eps1) 1_m
        c = beta2 * state.get("C", 0) + (1 - beta2) * g2.sum(axis=-2)       # 1_n^T (G^2+eps1)
        state["R"], state["C"] = r, c
        v = r[..., :, None] * c[..., None, :] / r.sum(axis=-1)[..., None, None]  # R C / 1^T R
    else:
        v = beta2 * state.get("V", 0) + (1 - beta2) * g2
        state["V"] = v
    u = g / np.sqrt(v)
    u_hat = u / max(1.0, rms(u) / D)
    return x - alpha * u_hat


@pytest.fixture(scope="module")
def module():
    return load_module(compile_path("specs/adafactor_paper.yaml"))


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
@pytest.mark.parametrize("shape", [(6, 9), (2, 5, 3), (1, 40), (17,), ()])
def test_matches_the_paper(module, backend, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    steps = 30 if backend == "mlx" else 3
    ctx = contextlib.nullcontext() if backend == "mlx" else cpu_kernels(module)
    want, state = x.astype(np.float64), {}
    with ctx:
        opt = module.Adafactor(backend=backend)
        params = {"x": mx.array(x)}
        for t in range(1, steps + 1):
            g = rng.standard_normal(shape).astype(np.float32)
            params = opt.apply_gradients({"x": mx.array(g)}, params)
            want = paper_step(want, g.astype(np.float64), t, state)
    np.testing.assert_allclose(np.array(params["x"]), want, rtol=1e-5, atol=1e-6)
    if len(shape) >= 2:
        np.testing.assert_allclose(np.array(opt.state["x"]["row_sums"]), state["R"], rtol=1e-5)
        np.testing.assert_allclose(np.array(opt.state["x"]["col_sums"]), state["C"], rtol=1e-5)


def test_sums_differ_from_means_by_the_right_factor(module):
    """The paper's R uses row sums; MLX's Adafactor keeps row means: R = N * mean."""
    opt = module.Adafactor()
    g = mx.ones((4, 6)) * 0.5
    opt.apply_gradients({"x": g}, {"x": mx.ones((4, 6))})
    beta = 1 - 1 ** -0.8  # 0 at t = 1: the state is exactly the first sums
    expected = (1 - beta) * (0.25 + EPS1) * 6
    np.testing.assert_allclose(np.array(opt.state["x"]["row_sums"]), expected, rtol=1e-6)
