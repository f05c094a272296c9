"""Checkpoints and compiled training steps.

Optimizer state saved with ``mx.save_safetensors(path, dict(tree_flatten(opt.state)))``
and loaded with ``mx.load`` + ``tree_unflatten`` into a fresh instance continues exactly as
an uninterrupted run; the same state moves to ``mlx.optimizers.Adafactor`` and back; a
compiled step (state as inputs and outputs, as mlx-lm does) equals the eager one.
"""
import contextlib
import importlib

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import MLP, run_steps, training_step, tree_bits
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from afgen.check.kernel_runner import cpu_kernels
from generated.adafactor import Adafactor

RTOL = 2e-4  # tests/test_parity_mlx.py's tolerance against mlx.optimizers.Adafactor
CONFIGS = {
    "default": dict(),
    "beta_1-wd": dict(beta_1=0.9, weight_decay=0.01),
    "schedule": dict(relative_step=False, beta_1=0.5,
                     learning_rate=optim.cosine_decay(0.05, 30)),
    "skip": dict(beta_1=0.9, nonfinite="skip"),
    "param-bf16": dict(beta_1=0.9, precision="param"),
}


def _tree(rng, scale=1.0, dtype=mx.float32):
    def leaf(shape):
        return mx.array((rng.standard_normal(shape) * scale).astype(np.float32)).astype(dtype)

    return {"embed": leaf((7, 5)), "scale": leaf(()),
            "layers": [{"w": leaf((5, 6)), "b": leaf((6,))}, {"w": leaf((2, 3, 4))}]}


def _save_load(tree, path):
    """A safetensors round trip of a tree, as a training script checkpoints it."""
    mx.save_safetensors(str(path), dict(tree_flatten(tree)))
    return tree_unflatten(list(mx.load(str(path)).items()))


def _data(name, steps=8):
    rng = np.random.default_rng(2)
    dtype = mx.bfloat16 if name == "param-bf16" else mx.float32
    params = _tree(rng, dtype=dtype)
    grads = [_tree(rng, 0.5, dtype) for _ in range(steps)]
    if name == "skip":  # a skipped step before the checkpoint: the count must survive
        flat = dict(tree_flatten(grads[1]))
        flat["embed"] = mx.full((7, 5), float("nan"))
        grads[1] = tree_unflatten(list(flat.items()))
    return params, grads


@contextlib.contextmanager
def _backend(backend, module=None):
    if backend == "mlx":
        yield
        return
    import generated.adafactor as generated_module

    with cpu_kernels(module or generated_module):
        yield


# The fused backends run on the CPU executor here (slow), so they take one configuration.
RESUME_CASES = [(name, "mlx") for name in CONFIGS] + [("beta_1-wd", "metal"), ("skip", "cuda")]


@pytest.mark.parametrize("name,backend", RESUME_CASES)
def test_resume_from_safetensors_is_bit_identical(tmp_path, name, backend):
    params, grads = _data(name)
    kwargs = CONFIGS[name]
    with _backend(backend):
        full = Adafactor(**kwargs, backend=backend)
        want = run_steps(full, params, grads)
        first = Adafactor(**kwargs, backend=backend)
        half = run_steps(first, params, grads[:4])
        resumed = Adafactor(**kwargs, backend=backend)
        resumed.state = _save_load(first.state, tmp_path / "opt.safetensors")
        assert resumed.step.dtype == mx.uint64 and resumed.step.item() == first.step.item()
        got = run_steps(resumed, _save_load(half, tmp_path / "model.safetensors"), grads[4:])
    assert tree_bits(got) == tree_bits(want)
    assert tree_bits(resumed.state) == tree_bits(full.state)
    if name == "skip":
        assert resumed.state["skipped_steps"].item() == 1


def _assert_same_layout(ours, theirs):
    """Same keys, shapes and dtypes, so neither optimizer re-initialises anything."""
    a = {k: (v.shape, v.dtype) for k, v in tree_flatten(ours)}
    b = {k: (v.shape, v.dtype) for k, v in tree_flatten(theirs)}
    assert a == b


def _max_rel(a, b):
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3))) if a.size else 0.0


@pytest.mark.parametrize("name", ["default", "beta_1-wd", "schedule"])
def test_state_moves_to_mlx_adafactor_and_back(tmp_path, name):
    """float32: ours (4 steps) -> mlx.optimizers.Adafactor (2) -> ours (2). Not bit-identical
    to an uninterrupted run of either: the generated update orders its float32 operations
    differently from MLX's graph (about 1 ulp per step), so the parity tolerance applies."""
    params, grads = _data(name)
    kwargs = CONFIGS[name]
    reference = Adafactor(**kwargs, backend="mlx")
    want = run_steps(reference, params, grads)
    theirs_all = optim.Adafactor(**kwargs)
    want_mlx = run_steps(theirs_all, params, grads)
    ours = Adafactor(**kwargs, backend="mlx")
    p = run_steps(ours, params, grads[:4])
    theirs = optim.Adafactor(**kwargs)
    theirs.init(params)
    _assert_same_layout(ours.state, theirs.state)
    theirs.state = _save_load(ours.state, tmp_path / "to_mlx.safetensors")
    p = run_steps(theirs, p, grads[4:6])
    back = Adafactor(**kwargs, backend="mlx")
    back.state = _save_load(theirs.state, tmp_path / "from_mlx.safetensors")
    p = run_steps(back, p, grads[6:])
    assert back.step.item() == 8
    _assert_same_layout(back.state, reference.state)
    flat_p, flat_s = dict(tree_flatten(p)), dict(tree_flatten(back.state))
    for key, value in tree_flatten(want):
        assert _max_rel(flat_p[key], value) <= RTOL, key
    for key, value in tree_flatten(reference.state):
        assert _max_rel(flat_s[key], value) <= RTOL, key
    for key, value in tree_flatten(want_mlx):
        assert _max_rel(flat_p[key], value) <= RTOL, key


@pytest.mark.parametrize("name", ["default", "beta_1-wd", "schedule"])
def test_param_precision_moves_to_mlx_adafactor_and_back_bit_identically(tmp_path, name):
    """float32 with precision="param": ours (3 steps) -> mlx.optimizers.Adafactor (3) ->
    ours (2) equals 8 uninterrupted steps of mlx.optimizers.Adafactor bit for bit."""
    params, grads = _data(name)
    kwargs = CONFIGS[name]
    theirs_all = optim.Adafactor(**kwargs)
    want = run_steps(theirs_all, params, grads)
    ours = Adafactor(**kwargs, backend="mlx", precision="param")
    p = run_steps(ours, params, grads[:3])
    theirs = optim.Adafactor(**kwargs)
    theirs.state = _save_load(ours.state, tmp_path / "to_mlx.safetensors")
    p = run_steps(theirs, p, grads[3:6])
    back = Adafactor(**kwargs, backend="mlx", precision="param")
    back.state = _save_load(theirs.state, tmp_path / "from_mlx.safetensors")
    p = run_steps(back, p, grads[6:])
    assert tree_bits(p) == tree_bits(want)
    assert tree_bits(back.state) == tree_bits(theirs_all.state)


def test_mlx_state_loads_into_ours(tmp_path):
    """mlx.optimizers.Adafactor's own checkpoint continues in the generated class."""
    params, grads = _data("beta_1-wd")
    theirs = optim.Adafactor(beta_1=0.9, weight_decay=0.01)
    want = run_steps(theirs, params, grads)
    first = optim.Adafactor(beta_1=0.9, weight_decay=0.01)
    p = run_steps(first, params, grads[:4])
    ours = Adafactor(beta_1=0.9, weight_decay=0.01, backend="mlx")
    ours.state = _save_load(first.state, tmp_path / "mlx.safetensors")
    p = run_steps(ours, p, grads[4:])
    flat = dict(tree_flatten(p))
    for key, value in tree_flatten(want):
        assert _max_rel(flat[key], value) <= RTOL, key
    _assert_same_layout(ours.state, theirs.state)


def _primed(tmp_path):
    params, grads = _data("beta_1-wd")
    opt = Adafactor(beta_1=0.9, weight_decay=0.01, backend="mlx")
    p = run_steps(opt, params, grads[:2])
    return p, grads, _save_load(opt.state, tmp_path / "opt.safetensors")


def _edited(state, path, value):
    flat = dict(tree_flatten(state))
    if value is None:
        del flat[path]
    else:
        flat[path] = value
    return tree_unflatten(list(flat.items()))


def _snapshot(state):
    """Bits of every array and every other value as it is (a loaded ``step`` may be a
    plain number)."""
    flat = tree_flatten(state)
    return (tree_bits({k: v for k, v in flat if isinstance(v, mx.array)}),
            [(k, type(v), v) for k, v in flat if not isinstance(v, mx.array)])


NOT_A_STEP = (r"optimizer state 'step' must be a non-negative integer \(a 0-D integer array "
              r"or an int\)")


@pytest.mark.parametrize("path,value,message", [
    ("layers.0.w.exp_avg_sq_row", mx.zeros((4,)), r"parameter 'layers.0.w' has shape \(5, 6\) "
     r"but its state 'exp_avg_sq_row' has shape \(4,\)"),
    ("embed.exp_avg", None, r"parameter 'embed' has optimizer state without \['exp_avg'\]"),
    ("step", None, r"optimizer state has no 'step'"),
    ("embed.exp_avg", mx.zeros((7, 5), mx.int32), r"state 'exp_avg' of parameter 'embed' has "
     r"dtype int32"),
    ("layers.1.w.exp_avg", mx.zeros((2, 3, 4), mx.complex64), r"state 'exp_avg' of parameter "
     r"'layers.1.w' has dtype complex64"),
    ("scale.exp_avg_sq", 0.5, r"state 'exp_avg_sq' of parameter 'scale' is a float, not an "
     r"mx.array"),
    ("step", -5, NOT_A_STEP + r"; got -5"),
    ("step", 2.5, NOT_A_STEP + r"; got 2.5"),
    ("step", True, NOT_A_STEP + r"; got True"),
    ("step", mx.array(2.0), NOT_A_STEP + r"; got a float32 array"),
    ("step", mx.array([2, 2], mx.uint64), NOT_A_STEP + r"; got a uint64 array of shape \(2,\)"),
    ("step", mx.array(-1, mx.int32), NOT_A_STEP + r"; got -1"),
], ids=["state-shape", "missing-state", "missing-step", "int-state", "complex-state",
        "number-state", "negative-int-step", "float-step", "bool-step", "float-array-step",
        "vector-step", "negative-array-step"])
def test_bad_loaded_state_raises_before_changing_anything(tmp_path, path, value, message):
    """Checked on the first step after the state is assigned (it used to be checked only
    once the optimizer had initialised itself, so a loaded state failed halfway through
    the step, with the step count already advanced; an int step of -5 became 2**64 - 5)."""
    params, grads, state = _primed(tmp_path)
    opt = Adafactor(beta_1=0.9, weight_decay=0.01, backend="mlx")
    opt.state = _edited(state, path, value)
    before = _snapshot(opt.state)
    with pytest.raises(ValueError, match=message):
        opt.apply_gradients(grads[2], params)
    assert _snapshot(opt.state) == before
    opt.state = state  # still usable once the state is right
    run_steps(opt, params, grads[2:3])
    assert opt.step.item() == 3


@pytest.mark.parametrize("step", [mx.array(2, mx.int32), mx.array(2, mx.int64), np.int64(2)],
                         ids=["int32", "int64", "numpy-int64"])
def test_other_integer_steps_are_accepted(tmp_path, step):
    """A non-negative int32/int64 step (another framework's checkpoint) or a NumPy integer
    becomes MLX's uint64 step and resumes identically."""
    params, grads, state = _primed(tmp_path)
    b = Adafactor(beta_1=0.9, weight_decay=0.01, backend="mlx")
    b.state = dict(_save_load(state, tmp_path / "again.safetensors"), step=step)
    a = Adafactor(beta_1=0.9, weight_decay=0.01, backend="mlx")
    a.state = state
    assert tree_bits(run_steps(a, params, grads[2:])) == tree_bits(run_steps(b, params, grads[2:]))
    assert b.step.dtype == mx.uint64 and tree_bits(b.state) == tree_bits(a.state)


def test_signed_step_inside_mx_compile_says_why():
    """A signed step's sign is read on the host, which a compiled first step cannot do."""
    mx.random.seed(0)
    model, opt = MLP(), Adafactor(backend="mlx")
    opt.state = {"step": mx.array(3, mx.int32)}
    step = training_step(model, opt, compiled=True)
    with pytest.raises(ValueError, match=r"'step' is a signed integer array, whose sign is "
                       r"checked on the host, which mx.compile does not allow"):
        step(*_batches(1)[0])


MLX_CLASSES = {"adafactor": (optim.Adafactor, dict(beta_1=0.9)),
               "adam": (optim.Adam, dict(learning_rate=0.01, bias_correction=True)),
               "adamw": (optim.AdamW, dict(learning_rate=0.01))}


def _per_parameter(state, fn):
    """``fn`` applied to every per-parameter state tensor (not ``step`` or schedules)."""
    return {k: tree_map(fn, v) if isinstance(v, (dict, list)) else v for k, v in state.items()}


@pytest.mark.parametrize("backend", ["mlx", "metal", "cuda"])
@pytest.mark.parametrize("stem", sorted(MLX_CLASSES))
def test_bfloat16_checkpoint_is_promoted_to_float32(tmp_path, stem, backend):
    """mlx.optimizers keeps a bfloat16 model's state in bfloat16. precision="float32" (the
    default) continues from such a checkpoint in float32: the loaded tensors are promoted
    on the next step (exactly; it used to keep writing them in bfloat16), which equals
    loading the state cast by hand. A step that is refused first changes nothing."""
    module = importlib.import_module(f"generated.{stem}")
    theirs_cls, kwargs = MLX_CLASSES[stem]
    ours_cls = getattr(module, theirs_cls.__name__)
    params, grads = _data("param-bf16", steps=4)
    theirs = theirs_cls(**kwargs)
    p = run_steps(theirs, params, grads[:2])
    saved = _save_load(theirs.state, tmp_path / "mlx.safetensors")
    assert {v.dtype for k, v in tree_flatten(saved) if "." in k} == {mx.bfloat16}
    with _backend(backend, module):
        cast = ours_cls(**kwargs, backend=backend)
        cast.state = _per_parameter(saved, lambda v: v.astype(mx.float32))
        loaded = ours_cls(**kwargs, backend=backend)
        loaded.state = saved
        before = tree_bits(loaded.state)
        with pytest.raises(ValueError, match="has shape"):
            loaded.apply_gradients(dict(grads[2], embed=mx.ones((5, 7), mx.bfloat16)), p)
        assert tree_bits(loaded.state) == before
        got = run_steps(loaded, p, grads[2:])
        want = run_steps(cast, p, grads[2:])
    assert {v.dtype for k, v in tree_flatten(loaded.state) if "." in k} == {mx.float32}
    assert tree_bits(got) == tree_bits(want)
    assert tree_bits(loaded.state) == tree_bits(cast.state)


def test_param_precision_refuses_state_of_another_dtype(tmp_path):
    """precision="param" keeps the state in the parameter's dtype; a float32 state (from
    precision="float32") for bfloat16 parameters is refused rather than rounded."""
    params, grads = _data("param-bf16")
    first = Adafactor(beta_1=0.9, backend="mlx")
    p = run_steps(first, params, grads[:2])
    opt = Adafactor(beta_1=0.9, backend="mlx", precision="param")
    opt.state = _save_load(first.state, tmp_path / "opt.safetensors")
    before = tree_bits(opt.state)
    with pytest.raises(ValueError, match=r"parameter 'embed' is bfloat16 but its state "
                       r"'exp_avg_sq_row' is float32; precision='param' keeps"):
        opt.apply_gradients(grads[2], p)
    assert tree_bits(opt.state) == before


def test_plain_int_step_is_accepted(tmp_path):
    """A checkpoint that stores the step as a number (JSON, say) resumes identically."""
    params, grads, state = _primed(tmp_path)
    a = Adafactor(beta_1=0.9, weight_decay=0.01, backend="mlx")
    a.state = state
    b = Adafactor(beta_1=0.9, weight_decay=0.01, backend="mlx")
    again = tree_unflatten(list(mx.load(str(tmp_path / "opt.safetensors")).items()))
    b.state = dict(again, step=int(again["step"].item()))
    assert tree_bits(run_steps(a, params, grads[2:])) == tree_bits(run_steps(b, params, grads[2:]))
    assert b.step.dtype == mx.uint64


def _batches(count):
    rng = np.random.default_rng(5)
    return [(mx.array(rng.standard_normal((16, 6)).astype(np.float32)),
             mx.array(rng.standard_normal((16, 3)).astype(np.float32))) for _ in range(count)]


def _train(kwargs, compiled, batches, model=None, opt=None):
    if model is None:
        mx.random.seed(0)
        model = MLP()
    opt = opt or Adafactor(**kwargs, backend="mlx")
    step = training_step(model, opt, compiled)
    losses = []
    for x, y in batches:
        losses.append(step(x, y))
        mx.eval(model.state, opt.state)
    return model, opt, [loss.item() for loss in losses]


@pytest.mark.parametrize("kwargs", [dict(), dict(beta_1=0.9), dict(beta_1=0.9, weight_decay=0.01,
                                                                    nonfinite="skip")],
                         ids=["default", "beta_1", "beta_1-wd-skip"])
def test_compiled_training_step_equals_eager(kwargs):
    batches = _batches(20)
    model, opt, losses = _train(kwargs, True, batches)
    eager_model, eager_opt, eager_losses = _train(kwargs, False, batches)
    assert losses == eager_losses
    assert tree_bits(model.parameters()) == tree_bits(eager_model.parameters())
    assert tree_bits(opt.state) == tree_bits(eager_opt.state)
    assert opt.step.item() == 20


def test_compiled_training_resumes_from_a_checkpoint(tmp_path):
    """mlx-lm's resume: load model weights and optimizer state, then compiled steps."""
    kwargs = dict(beta_1=0.9, weight_decay=0.01)
    batches = _batches(12)
    model, opt, _ = _train(kwargs, True, batches)
    first, first_opt, _ = _train(kwargs, True, batches[:6])
    first.save_weights(str(tmp_path / "model.safetensors"))
    mx.random.seed(1)
    resumed = MLP()
    resumed.load_weights(str(tmp_path / "model.safetensors"))
    resumed_opt = Adafactor(**kwargs, backend="mlx")
    resumed_opt.state = _save_load(first_opt.state, tmp_path / "opt.safetensors")
    resumed, resumed_opt, _ = _train(kwargs, True, batches[6:], resumed, resumed_opt)
    assert tree_bits(resumed.parameters()) == tree_bits(model.parameters())
    assert tree_bits(resumed_opt.state) == tree_bits(opt.state)
