"""Precision: float32 state and math by default for 16-bit parameters (MLX's bf16 second
moment freezes), precision="param" bit-identical to MLX, stochastic rounding of bf16
parameter writes."""
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from generated.adafactor import Adafactor
from generated.adam import Adam
from generated.adamw import AdamW

STEPS_TO_FREEZE = 5000


def _tree(rng, shapes, dtype):
    return {f"p{i}": mx.array(rng.standard_normal(s).astype(np.float32)).astype(dtype)
            for i, s in enumerate(shapes)}


def _bits(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16) if a.dtype in (mx.bfloat16, mx.float16)
                    else a.view(mx.uint32))


PAIRS = [
    (Adafactor, optim.Adafactor, {}),
    (Adafactor, optim.Adafactor, {"beta_1": 0.9, "weight_decay": 0.01}),
    (Adafactor, optim.Adafactor, {"relative_step": False, "scale_parameter": False,
                                  "learning_rate": optim.cosine_decay(1e-2, 30)}),
    (Adafactor, optim.Adafactor, {"warmup_init": True, "clip_threshold": 0.5}),
    (Adafactor, optim.Adafactor, {"scale_parameter": False, "decay_rate": -0.5,
                                  "eps": (1e-20, 1e-2)}),
    (Adafactor, optim.Adafactor, {"relative_step": False, "learning_rate": 3e-3,
                                  "beta_1": 0.5, "weight_decay": 0.1}),
    (Adam, optim.Adam, {"learning_rate": 1e-3, "bias_correction": True}),
    (Adam, optim.Adam, {"learning_rate": 1e-3, "betas": (0.8, 0.99)}),
    (AdamW, optim.AdamW, {"learning_rate": optim.linear_schedule(0, 1e-3, 10)}),
    (AdamW, optim.AdamW, {"learning_rate": 1e-3, "bias_correction": True,
                          "weight_decay": 0.1}),
]


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=str)
@pytest.mark.parametrize("ours,theirs,hyper", PAIRS,
                         ids=[f"{p[1].__name__}-{i}" for i, p in enumerate(PAIRS)])
def test_param_precision_is_bit_identical_to_mlx(ours, theirs, hyper, dtype):
    rng = np.random.default_rng(0)
    params = _tree(rng, [(8, 16), (33,), (2, 3, 5), ()], dtype)
    a, b = ours(**hyper, precision="param", backend="mlx"), theirs(**hyper)
    pa, pb = dict(params), dict(params)
    for _ in range(20):
        grads = _tree(rng, [v.shape for v in params.values()], dtype)
        pa, pb = a.apply_gradients(grads, pa), b.apply_gradients(grads, pb)
    for key in params:
        assert pa[key].dtype == dtype
        np.testing.assert_array_equal(_bits(pa[key]), _bits(pb[key]), err_msg=key)
        for name, value in b.state[key].items():
            assert a.state[key][name].dtype == value.dtype
            np.testing.assert_array_equal(_bits(a.state[key][name]), _bits(value))


def test_param_precision_does_not_call_mlx(monkeypatch):
    """precision="param" runs the spec's own program: with mlx.optimizers' updates
    replaced by something that fails, ours gives the same bits as before."""
    rng = np.random.default_rng(1)
    params = _tree(rng, [(8, 16), (5,)], mx.bfloat16)
    grads = [_tree(rng, [v.shape for v in params.values()], mx.bfloat16) for _ in range(3)]

    def run(cls, hyper):
        opt, p = cls(**hyper, precision="param", backend="mlx"), dict(params)
        for g in grads:
            p = opt.apply_gradients(g, p)
        return {k: _bits(v) for k, v in p.items()}

    cases = [(Adafactor, {"beta_1": 0.9}), (Adam, {"learning_rate": 1e-3}),
             (AdamW, {"learning_rate": 1e-3})]
    before = [run(cls, hyper) for cls, hyper in cases]

    def refuse(*args, **kwargs):
        raise AssertionError("mlx.optimizers was called")

    for cls in (optim.Adafactor, optim.Adam, optim.AdamW):
        monkeypatch.setattr(cls, "apply_single", refuse)
    after = [run(cls, hyper) for cls, hyper in cases]
    for old, new in zip(before, after):
        for key in old:
            np.testing.assert_array_equal(old[key], new[key])


def test_param_precision_of_a_variant_runs_the_variant(tmp_path):
    """A copy of the drop-in spec with another constant keeps ``reference:``; under
    precision="param" it computes its own update (not MLX's) and verifies against its own
    oracle in every dtype."""
    import afgen
    from afgen.build import compile_path
    from afgen.check.verify import verify

    text = (Path(__file__).resolve().parent.parent / "specs" / "adafactor.yaml").read_text()
    assert "else 1e-2, rsqrt(t))" in text
    variant = tmp_path / "adafactor_variant.yaml"
    variant.write_text(text.replace("else 1e-2, rsqrt(t))", "else 2e-2, rsqrt(t))"))
    cls = afgen.load(str(variant))
    rng = np.random.default_rng(2)
    params = _tree(rng, [(8, 16)], mx.bfloat16)
    grads = _tree(rng, [(8, 16)], mx.bfloat16)
    ours = cls(precision="param", backend="mlx").apply_gradients(grads, dict(params))
    theirs = optim.Adafactor().apply_gradients(grads, dict(params))
    moved = lambda p: np.abs(np.array(p["p0"].astype(mx.float32) -  # noqa: E731
                                      params["p0"].astype(mx.float32))).mean()
    assert moved(ours) == pytest.approx(2 * moved(theirs), rel=0.05)
    report = verify(compile_path(variant), steps=3, backends=["mlx"])
    assert report.passed, report.table()
    assert {(r.dtype, r.precision) for r in report.results} == {
        ("float32", "float32"), ("float16", "param"), ("bfloat16", "param")}


def _train(optimizer, params, rng, steps):
    step = mx.compile(lambda g, p: optimizer.apply_gradients(g, p),
                      inputs=optimizer.state, outputs=optimizer.state)
    for _ in range(steps):
        grads = _tree(rng, [v.shape for v in params.values()], mx.bfloat16)
        params = step(grads, params)
        mx.eval(params, optimizer.state)
    return params


def test_bf16_second_moment_still_moves_after_5000_steps_where_mlx_freezes():
    """beta2_t = 1 - t^-0.8 rounds to exactly 1.0 in bf16 long before step 5000, so MLX's
    second moment stops following the gradients; ours (float32 state and math) does not."""
    t = STEPS_TO_FREEZE + 1
    assert mx.array(1 - t ** -0.8).astype(mx.bfloat16).item() == 1.0  # the premise
    rng = np.random.default_rng(0)
    shapes = [(4, 8), (16,)]
    params = _tree(rng, shapes, mx.bfloat16)
    runs = {"mlx": optim.Adafactor(), "param": Adafactor(precision="param", backend="mlx"),
            "float32": Adafactor(backend="mlx")}
    before = {}
    for name, optimizer in runs.items():
        p = _train(optimizer, dict(params), np.random.default_rng(1), STEPS_TO_FREEZE)
        before[name] = {k: {s: np.array(v.astype(mx.float32)) for s, v in slot.items()}
                        for k, slot in optimizer.state.items() if isinstance(slot, dict)}
        big = {k: (mx.ones(v.shape) * 4).astype(mx.bfloat16) for k, v in p.items()}
        optimizer.apply_gradients(big, p)
        mx.eval(optimizer.state)
        runs[name] = optimizer
    for name, optimizer in runs.items():
        for key in ("p0", "p1"):
            for s, old in before[name][key].items():
                if s == "exp_avg":
                    continue
                new = np.array(optimizer.state[key][s].astype(mx.float32))
                moved = np.abs(new - old).max() / np.abs(old).max()
                if name == "float32":
                    assert optimizer.state[key][s].dtype == mx.float32
                    assert moved > 1e-3, (name, key, s, moved)
                else:
                    assert moved == 0.0, (name, key, s, moved)


def _adam_run(dtype, steps, backend="mlx", **options):
    """Adam from 1.0 with a constant gradient: each step moves every element by
    lr * m / sqrt(v) ~ 3e-4, far below half a bfloat16 step at 1.0 (2**-9)."""
    n = 50_000
    opt = Adam(learning_rate=1e-4, backend=backend, **options)
    params = {"w": mx.ones((n,), dtype=dtype), "b": mx.ones((n,), dtype=dtype)}
    grads = {k: mx.ones((n,), dtype=dtype) for k in params}
    for _ in range(steps):
        params = opt.apply_gradients(grads, params)
    mx.eval(params)
    return {k: np.array(v.astype(mx.float32), dtype=np.float64) for k, v in params.items()}


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
def test_stochastic_rounding_keeps_small_updates_on_average(backend):
    import contextlib

    import generated.adam as adam_module
    from afgen.check.kernel_runner import cpu_kernels

    ctx = contextlib.nullcontext() if backend == "mlx" else cpu_kernels(adam_module)
    with ctx:
        for steps in (1, 5):
            exact = _adam_run(mx.float32, steps, backend)["w"].mean()
            nearest = _adam_run(mx.bfloat16, steps, backend)["w"]
            stochastic = _adam_run(mx.bfloat16, steps, backend, stochastic_rounding=True)
            assert np.all(nearest == 1.0)          # round-to-nearest loses every update
            assert exact < 1.0 - 2.5e-4 * steps
            gap = 2.0 ** -8                        # bfloat16 spacing just below 1.0
            for values in stochastic.values():
                assert set(np.unique(values)) <= {1.0 - gap * i for i in range(steps + 1)}
                p = (1.0 - exact) / gap / steps
                sigma = gap * np.sqrt(steps * p * (1 - p) / values.size)
                assert abs(values.mean() - exact) < 5 * sigma, (values.mean(), exact, sigma)


def test_stochastic_rounding_is_seeded_and_differs_per_parameter():
    a = _adam_run(mx.bfloat16, 1, stochastic_rounding=True, seed=7)
    b = _adam_run(mx.bfloat16, 1, stochastic_rounding=True, seed=7)
    c = _adam_run(mx.bfloat16, 1, stochastic_rounding=True, seed=8)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])
    assert not np.array_equal(a["w"], a["b"])  # each parameter draws its own noise


def test_stochastic_rounding_leaves_other_dtypes_alone():
    plain = _adam_run(mx.float16, 3)
    rounded = _adam_run(mx.float16, 3, stochastic_rounding=True)
    np.testing.assert_array_equal(plain["w"], rounded["w"])


def test_stochastic_rounding_needs_float32_precision():
    with pytest.raises(ValueError, match="stochastic_rounding needs precision='float32'"):
        Adafactor(stochastic_rounding=True, precision="param")
    with pytest.raises(ValueError, match="seed must be an int"):
        Adafactor(stochastic_rounding=True, seed=-1)
