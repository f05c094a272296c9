"""specs/adafactor_torch.yaml against torch.optim.Adafactor itself (CPU build of torch)."""
import contextlib

import mlx.core as mx
import numpy as np
import pytest
import torch

from afgen.build import compile_path, load_module
from afgen.check.kernel_runner import cpu_kernels

SHAPES = {"s": (), "v": (9,), "m": (6, 10), "t": (2, 3, 5), "r": (1, 7)}


@pytest.fixture(scope="module")
def module():
    return load_module(compile_path("specs/adafactor_torch.yaml"))


def _run(module, kwargs, backend, steps, seed=0):
    rng = np.random.default_rng(seed)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
             for _ in range(steps)]
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    topt = torch.optim.Adafactor(list(tparams.values()), **kwargs)
    ctx = contextlib.nullcontext() if backend == "mlx" else cpu_kernels(module)
    with ctx:
        opt = module.Adafactor(**kwargs, backend=backend)
        params = {k: mx.array(v) for k, v in init.items()}
        for g in grads:
            for k, p in tparams.items():
                p.grad = torch.tensor(g[k])
            topt.step()
            params = opt.apply_gradients({k: mx.array(v) for k, v in g.items()}, params)
        mx.eval(params)
    return params, tparams, opt, topt


@pytest.mark.parametrize("kwargs", [
    {},
    dict(lr=0.05, weight_decay=0.1),
    dict(eps=(1e-6, 1e-2), d=2.0, beta2_decay=-0.5),
    dict(maximize=True, weight_decay=0.01),
], ids=["defaults", "lr-weight-decay", "eps-d-decay", "maximize"])
@pytest.mark.parametrize("backend", ["mlx", "metal"])
def test_matches_torch(module, kwargs, backend):
    steps = 25 if backend == "mlx" else 3
    params, tparams, opt, topt = _run(module, kwargs, backend, steps)
    for k in SHAPES:
        np.testing.assert_allclose(np.array(params[k]), tparams[k].detach().numpy(),
                                   rtol=2e-5, atol=2e-6)
    state = topt.state[tparams["m"]]
    np.testing.assert_allclose(np.array(opt.state["m"]["row_var"]),
                               state["row_var"].numpy().squeeze(-1), rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(np.array(opt.state["m"]["col_var"]),
                               state["col_var"].numpy().squeeze(-2), rtol=2e-5, atol=1e-9)


def test_constructor_defaults_match_torch(module):
    import inspect

    ours = inspect.signature(module.Adafactor.__init__).parameters
    theirs = inspect.signature(torch.optim.Adafactor.__init__).parameters
    for name in ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize"):
        assert ours[name].default == theirs[name].default, name


@pytest.mark.parametrize("kwargs,message", [(dict(d=0.5), "d must satisfy d >= 1"),
                                            (dict(eps=(-1.0, 1e-3)), "eps must satisfy")])
def test_rejects_what_torch_rejects(module, kwargs, message):
    with pytest.raises(ValueError):
        torch.optim.Adafactor([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match=message):
        module.Adafactor(**kwargs)
