"""Real model trees: what mlx.optimizers accepts, every generated class accepts.

mlx-lm's models keep non-array attributes (llama's ``self.layer_types``, a list of strings),
for which ``nn.value_and_grad`` gives ``{}``; quantized models hold frozen uint32 weights
that ``opt.init(model.parameters())`` sees; gradients may arrive as NumPy arrays. The fused
backends run their exact kernel text on the CPU executor, so the models are tiny.
"""
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import (
    BACKENDS,
    GENERATED,
    backend_context,
    generated_class,
    run_steps,
    training_step,
    tree_bits,
)
from mlx.utils import tree_flatten, tree_map, tree_unflatten

# The generated classes that are drop-ins for an MLX class, with that class.
MLX_CLASSES = {"adafactor": optim.Adafactor, "adam": optim.Adam, "adamw": optim.AdamW}
RTOL = 2e-5  # default precision against MLX's own classes


class Tagged(nn.Module):
    """Two layers and, with ``tagged``, attributes that are not arrays, as mlx-lm's llama
    keeps ``self.layer_types`` (nn.value_and_grad gives ``{}`` for each string)."""

    def __init__(self, tagged: bool):
        super().__init__()
        self.l1 = nn.Linear(6, 12)
        self.l2 = nn.Linear(12, 3)
        if tagged:
            self.layer_types = ["full_attention", "sliding_attention"]
            self.config = {"name": "tiny", "layers": 2}

    def __call__(self, x):
        return self.l2(nn.relu(self.l1(x)))


class Quantized(nn.Module):
    """A frozen quantized layer (uint32 weights, float scales and biases) under a trainable
    float head, as a QLoRA-style fine-tune has."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(64, 8)
        self.head = nn.Linear(8, 3)

    def __call__(self, x):
        return self.head(self.q(x))


def _tagged(tagged):
    mx.random.seed(0)
    return Tagged(tagged)


def _quantized():
    mx.random.seed(0)
    model = Quantized()
    nn.quantize(model, class_predicate=lambda path, _: path == "q")
    model.freeze()
    model.head.unfreeze()
    return model


def _batches(count, inputs, seed=3):
    rng = np.random.default_rng(seed)
    return [(mx.array(rng.standard_normal((8, inputs)).astype(np.float32)),
             mx.array(rng.standard_normal((8, 3)).astype(np.float32))) for _ in range(count)]


def _train(model, opt, batches, compiled=False):
    step = training_step(model, opt, compiled)
    for x, y in batches:
        step(x, y)
        mx.eval(model.parameters(), opt.state)
    return model


def _close(got, want, rtol):
    want = dict(tree_flatten(want))
    flat = dict(tree_flatten(got))
    assert flat.keys() == want.keys()
    for key, value in flat.items():
        np.testing.assert_allclose(np.array(value), np.array(want[key]), rtol=rtol, atol=1e-7,
                                   err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stem", GENERATED)
def test_non_array_attributes_are_left_alone(stem, backend):
    """``opt.update(model, grads)`` on a model with a list of strings and a dict of plain
    values trains exactly as on the same model without them (it used to raise "gradients
    at 'layer_types.0' are a dict but the parameters are not")."""
    module, make = generated_class(stem)
    batches = _batches(3, 6)
    with backend_context(module, backend):
        tagged, opt = _tagged(True), make(backend=backend)
        plain, plain_opt = _tagged(False), make(backend=backend)
        _train(tagged, opt, batches)
        _train(plain, plain_opt, batches)
    assert tagged.layer_types == ["full_attention", "sliding_attention"]
    assert tagged.config == {"name": "tiny", "layers": 2}
    assert tree_bits(tagged.parameters()) == tree_bits(plain.parameters())
    assert tree_bits(opt.state) == tree_bits(plain_opt.state)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("stem", sorted(MLX_CLASSES))
def test_non_array_attributes_match_mlx(stem, compiled):
    """The same model and steps through mlx.optimizers' own class (default precision, so
    within the parity tolerance), eager and in a compiled training step."""
    _, make = generated_class(stem)
    batches = _batches(3, 6)
    ours = _train(_tagged(True), make(backend="mlx"), batches, compiled)
    theirs = _train(_tagged(True), MLX_CLASSES[stem](**({} if stem == "adafactor" else
                                                        dict(learning_rate=0.01))), batches)
    _close(ours.parameters(), theirs.parameters(), RTOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stem", GENERATED)
def test_frozen_quantized_layer_is_left_alone(stem, backend):
    """``opt.init(model.parameters())`` sees the frozen uint32 weights (it used to raise
    "parameter has dtype uint32" without saying which). As in MLX nothing touches them:
    the quantized layer is bit-identical after training, and the head trains exactly as
    with an optimizer that only ever saw the trainable parameters."""
    module, make = generated_class(stem)
    batches = _batches(2, 64)
    with backend_context(module, backend):
        model, opt = _quantized(), make(backend=backend)
        frozen = tree_bits(model.q.parameters())
        opt.init(model.parameters())
        initial = tree_bits(opt.state["q"])
        _train(model, opt, batches)
        reference, reference_opt = _quantized(), make(backend=backend)
        _train(reference, reference_opt, batches)
    assert tree_bits(model.q.parameters()) == frozen
    assert model.q.weight.dtype == mx.uint32
    assert tree_bits(opt.state["q"]) == initial
    assert not any(key.startswith("weight.") for key in initial)  # no state for uint32
    assert tree_bits(model.head.parameters()) == tree_bits(reference.head.parameters())
    assert tree_bits(opt.state["head"]) == tree_bits(reference_opt.state["head"])


@pytest.mark.parametrize("stem", sorted(MLX_CLASSES))
def test_frozen_quantized_layer_matches_mlx(stem):
    _, make = generated_class(stem)
    batches = _batches(2, 64)
    ours, opt = _quantized(), make(backend="mlx")
    opt.init(ours.parameters())
    theirs = _quantized()
    theirs_opt = MLX_CLASSES[stem](**({} if stem == "adafactor" else dict(learning_rate=0.01)))
    theirs_opt.init(theirs.parameters())
    _train(ours, opt, batches)
    _train(theirs, theirs_opt, batches)
    assert tree_bits(ours.q.parameters()) == tree_bits(theirs.q.parameters())
    _close(ours.head.parameters(), theirs.head.parameters(), RTOL)


def test_mlx_checkpoint_of_a_quantized_model_loads(tmp_path):
    """MLX's state for the frozen layer (uint32 tensors for the uint32 weight) comes along
    in its checkpoint; no gradient reaches it, so it is kept as it is rather than refused
    as integer state."""
    _, make = generated_class("adam")
    batches = _batches(2, 64)
    model, theirs = _quantized(), optim.Adam(learning_rate=0.01)
    theirs.init(model.parameters())
    _train(model, theirs, batches[:1])
    path = str(tmp_path / "opt.safetensors")
    mx.save_safetensors(path, dict(tree_flatten(theirs.state)))
    ours = make(backend="mlx")
    ours.state = tree_unflatten(list(mx.load(path).items()))
    frozen = tree_bits(ours.state["q"])
    assert ours.state["q"]["weight"]["m"].dtype == mx.uint32
    _train(model, ours, batches[1:])
    assert ours.step.item() == 2 and tree_bits(ours.state["q"]) == frozen


def _trees(seed, count):
    rng = np.random.default_rng(seed)
    return [{"w": rng.standard_normal((5, 4)).astype(np.float32),
             "layers": [{"b": rng.standard_normal((4,)).astype(np.float32)}]}
            for _ in range(count)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stem", GENERATED)
def test_numpy_gradients_are_converted(stem, backend):
    """NumPy gradients work as the same values in mx.arrays do (MLX's ops convert them;
    they used to be refused as "not an mx.array")."""
    module, make = generated_class(stem)
    params, *grads = _trees(4, 3)
    params = tree_map(mx.array, params)
    with backend_context(module, backend):
        opt, reference = make(backend=backend), make(backend=backend)
        got = run_steps(opt, params, grads)
        want = run_steps(reference, params, [tree_map(mx.array, g) for g in grads])
    assert tree_bits(got) == tree_bits(want)
    assert tree_bits(opt.state) == tree_bits(reference.state)


def _primed_quantized(stem="adam"):
    _, make = generated_class(stem)
    model, opt = _quantized(), make(backend="mlx")
    opt.init(model.parameters())
    _train(model, opt, _batches(1, 64))
    return model, opt


@pytest.mark.parametrize("grads,message", [
    ({"q": {"weight": mx.ones((8, 8))}}, r"parameter 'q.weight' has dtype uint32"),
    ({"q": {"weight": mx.ones((8, 8), mx.uint32)}},
     r"gradient for parameter 'q.weight' has dtype uint32"),
    ({"head": {"bias": np.ones((3,), np.int64)}},
     r"gradient for parameter 'head.bias' has dtype int64"),
    ({"head": {"bias": "0.5"}}, r"gradient for parameter 'head.bias' is a str, not an array"),
    ({"head": {"bias": [mx.ones((3,))]}}, r"gradient for 'head.bias.0' has no matching "
     r"parameter"),
], ids=["float-for-uint32", "uint32", "numpy-int", "str", "list-for-array"])
def test_gradients_that_cannot_train_are_refused_by_path(grads, message):
    """MLX "updates" a uint32 weight given a gradient into a float32 array (so a quantized
    layer is silently destroyed); the generated classes refuse, name the parameter and
    change nothing."""
    model, opt = _primed_quantized()
    before, params = tree_bits(opt.state), tree_bits(model.parameters())
    with pytest.raises(ValueError, match=message):
        opt.update(model, grads)
    assert tree_bits(opt.state) == before and tree_bits(model.parameters()) == params


def test_gradient_for_a_string_attribute_is_refused_by_path():
    _, make = generated_class("adam")
    model, opt = _tagged(True), make(backend="mlx")
    with pytest.raises(ValueError, match=r"gradient for 'layer_types.1' has no matching "
                       r"parameter \(it is a str\)"):
        opt.update(model, {"layer_types": [{}, mx.ones((2,))]})
    assert opt.step.item() == 0 and set(opt.state) == {"step", "learning_rate"}
