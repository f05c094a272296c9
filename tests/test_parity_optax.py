"""specs/adafactor_optax.yaml against optax.adafactor itself, through vectors optax wrote
(tests/vectors/make_optax_vectors.py; CI needs no JAX): final parameters and every state
tensor, in optax's own state layout, on every backend."""
import contextlib
import json
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from afgen.build import compile_path, load_module
from afgen.check.kernel_runner import cpu_kernels

VECTORS = Path(__file__).parent / "vectors" / "optax_adafactor.npz"
RENAMED = {"factored": "factored_second_moment"}  # the layout predicate is 'factored'


@pytest.fixture(scope="module")
def vectors():
    data = np.load(VECTORS)
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def module():
    return load_module(compile_path("specs/adafactor_optax.yaml"))


def _hyper(optax_kwargs: dict) -> dict:
    out = {}
    for name, value in optax_kwargs.items():
        if isinstance(value, dict):
            init, rate = value["exponential"]
            value = optim.exponential_decay(init, rate)  # init * rate ** step, as optax's
        out[RENAMED.get(name, name)] = value
    return out


def _cases(data: dict) -> dict:
    return json.loads(str(data["meta"]))["cases"]


def test_vectors_come_from_optax(vectors):
    meta = json.loads(str(vectors["meta"]))
    assert meta["versions"]["optax"] == "0.2.8"
    assert set(meta["cases"]) == {"defaults", "momentum_weight_decay", "schedules_offset",
                                  "unfactored"}


def _run(module, backend: str, name: str, case: dict, data: dict):
    ctx = contextlib.nullcontext() if backend == "mlx" else cpu_kernels(module)
    with ctx:
        opt = module.Adafactor(**_hyper(case["hyper"]), backend=backend)
        params = {p: mx.array(data[f"{name}/{p}/init"]) for p in case["shapes"]}
        opt.init(params)
        opt.state["step"] = mx.array(case["start_count"], dtype=mx.uint64)
        for step in range(case["steps"]):
            grads = {p: mx.array(data[f"{name}/{p}/grad{step}"]) for p in case["shapes"]}
            params = opt.apply_gradients(grads, params)
        mx.eval(params, opt.state)
    return params, opt.state


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
@pytest.mark.parametrize("name", ["defaults", "momentum_weight_decay", "schedules_offset",
                                  "unfactored"])
def test_matches_optax(module, vectors, backend, name):
    case = _cases(vectors)[name]
    params, state = _run(module, backend, name, case, vectors)
    for p in case["shapes"]:
        want = vectors[f"{name}/{p}/final"]
        # float32 reductions in another order (MLX's CPU sums vs XLA's pairwise ones)
        # differ by ~1e-6 of the values summed, so the bound scales with the tensor.
        np.testing.assert_allclose(np.array(params[p]), want, rtol=2e-5,
                                   atol=2e-5 * max(1.0, float(np.abs(want).max())),
                                   err_msg=f"{name}/{p}")
        for key, value in state[p].items():
            want = vectors[f"{name}/{p}/state/{key}"]
            assert tuple(value.shape) == want.shape, f"{name}/{p}/{key}"
            np.testing.assert_allclose(np.array(value), want, rtol=2e-5,
                                       atol=2e-5 * float(np.abs(want).max()),
                                       err_msg=f"{name}/{p}/{key}")


def _factored(shape: list[int], min_size: int, factored: bool = True) -> bool:
    """optax's rule, restated: the second largest dimension must reach min_size."""
    return factored and len(shape) >= 2 and sorted(shape)[-2] >= min_size


@pytest.mark.parametrize("name", ["defaults", "momentum_weight_decay", "unfactored"])
def test_factors_what_optax_factors(module, vectors, name):
    """Which parameters get v_row/v_col (and which a full v) follows optax, including the
    dimension-size threshold and parameters factored over non-trailing axes."""
    case = _cases(vectors)[name]
    _, state = _run(module, "mlx", name, case, vectors)
    hyper = case["hyper"]
    for p, shape in case["shapes"].items():
        factored = _factored(shape, hyper.get("min_dim_size_to_factor", 128),
                             hyper.get("factored", True))
        keys = {"v_row", "v_col"} if factored else {"v"}
        if hyper.get("momentum") is not None:
            keys.add("ema")
        assert set(state[p]) == keys, (name, p, shape)


def test_default_threshold_is_128(module):
    opt = module.Adafactor()
    params = {"below": mx.zeros((127, 300)), "at": mx.zeros((300, 128))}
    opt.init(params)
    assert set(opt.state["below"]) == {"v"}
    assert tuple(opt.state["at"]["v_row"].shape) == (128,)   # mean over the largest axis
    assert tuple(opt.state["at"]["v_col"].shape) == (300,)


def test_min_dim_size_must_be_an_int(module):
    with pytest.raises(ValueError, match="min_dim_size_to_factor must be an int"):
        module.Adafactor(min_dim_size_to_factor=12.5)
