"""Non-finite gradients: ``nonfinite="propagate" | "skip" | "raise"`` on every backend.

The fused Metal and CUDA kernels run their exact text on the CPU executor (this machine
has no GPU), so the trees are small. Each bad value goes into a different tensor of a
tree of several: NaN into a factored matrix, +Inf into a vector inside a list, -Inf into
a 0-D parameter.
"""
import re

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from helpers import (
    BACKENDS,
    GENERATED,
    MLP,
    backend_context,
    generated_class,
    run_steps,
    training_step,
    tree_bits,
)
from mlx.utils import tree_flatten, tree_unflatten

BAD = {"nan": (float("nan"), "w", "NaN"), "+inf": (float("inf"), "blocks.1.v", "Inf"),
       "-inf": (float("-inf"), "s", "Inf")}
KWARGS = dict(beta_1=0.9, weight_decay=0.01)
RTOL = 2e-4  # tests/test_parity_mlx.py's tolerance against mlx.optimizers.Adafactor


def _tree(rng, scale=1.0):
    def leaf(shape):
        return mx.array((rng.standard_normal(shape) * scale).astype(np.float32))

    return {"w": leaf((5, 4)), "b": leaf((4,)), "s": leaf(()),
            "blocks": [{"k": leaf((2, 3, 4))}, {"v": leaf((6,))}]}


def _with_bad_value(grads, path, value):
    """The same tree with one element of one gradient replaced by ``value``."""
    flat = dict(tree_flatten(grads))
    array = np.array(flat[path])
    array.reshape(-1)[min(1, array.size - 1)] = value
    flat[path] = mx.array(array)
    return tree_unflatten(list(flat.items()))


def _without(bits, key):
    return {k: v for k, v in bits.items() if k != key}


@pytest.fixture
def trees():
    rng = np.random.default_rng(7)
    return _tree(rng), [_tree(rng, 0.5) for _ in range(3)]


def test_default_is_propagate_and_bad_values_are_rejected(module):
    opt = module.Adafactor()
    assert opt.nonfinite == "propagate" and "skipped_steps" not in opt.state
    assert module.Adafactor(nonfinite="skip").state["skipped_steps"].item() == 0
    with pytest.raises(ValueError, match=r"nonfinite must be one of \('propagate', 'skip', "
                       r"'raise'\), got 'ignore'"):
        module.Adafactor(nonfinite="ignore")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", list(BAD))
def test_skip_leaves_parameters_and_state_bit_identical(module, trees, backend, bad):
    """A skipped step changes nothing but the count; the next finite step is the one the
    optimizer would have taken had the bad step never happened."""
    value, path, _ = BAD[bad]
    params, grads = trees
    with backend_context(module, backend):
        opt = module.Adafactor(**KWARGS, backend=backend, nonfinite="skip")
        ref = module.Adafactor(**KWARGS, backend=backend, nonfinite="skip")
        p = run_steps(opt, params, grads[:2])
        r = run_steps(ref, params, grads[:2])
        params_before, state_before = tree_bits(p), tree_bits(opt.state)
        p = run_steps(opt, p, [_with_bad_value(grads[2], path, value)])
        assert tree_bits(p) == params_before
        assert _without(tree_bits(opt.state), "skipped_steps") == _without(state_before,
                                                                        "skipped_steps")
        assert opt.state["skipped_steps"].item() == 1 and opt.step.item() == 2
        p = run_steps(opt, p, grads[2:])
        r = run_steps(ref, r, grads[2:])
    assert tree_bits(p) == tree_bits(r)
    assert _without(tree_bits(opt.state), "skipped_steps") == _without(tree_bits(ref.state),
                                                                    "skipped_steps")
    assert opt.state["skipped_steps"].item() == 1 and ref.state["skipped_steps"].item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", list(BAD))
def test_raise_names_the_parameter_and_keeps_state(module, trees, backend, bad):
    value, path, kind = BAD[bad]
    params, grads = trees
    with backend_context(module, backend):
        opt = module.Adafactor(**KWARGS, backend=backend, nonfinite="raise")
        p = run_steps(opt, params, grads[:2])
        params_before, state_before = tree_bits(p), tree_bits(opt.state)
        with pytest.raises(ValueError, match=rf"gradient for parameter '{re.escape(path)}' is "
                           rf"not finite \(it contains {kind}\)"):
            opt.apply_gradients(_with_bad_value(grads[2], path, value), p)
        assert tree_bits(opt.state) == state_before and tree_bits(p) == params_before
        run_steps(opt, p, grads[2:])  # still usable
    assert opt.step.item() == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", list(BAD))
def test_propagate_matches_mlx(module, trees, backend, bad):
    """As mlx.optimizers.Adafactor: the bad value reaches the parameters and state, in the
    same places (finite entries agree within the parity tolerance)."""
    value, path, _ = BAD[bad]
    params, grads = trees
    sequence = [grads[0], _with_bad_value(grads[1], path, value), grads[2]]
    with backend_context(module, backend):
        ours = module.Adafactor(**KWARGS, backend=backend)
        p_ours = run_steps(ours, params, sequence)
    theirs = optim.Adafactor(**KWARGS)
    p_theirs = run_steps(theirs, params, sequence)
    assert not np.isfinite(np.array(dict(tree_flatten(p_ours))[path])).all()
    for got_tree, want_tree in ((p_ours, p_theirs), (ours.state, theirs.state)):
        want = dict(tree_flatten(want_tree))
        for key, got in tree_flatten(got_tree):
            got, expected = np.array(got, np.float64), np.array(want[key], np.float64)
            mask = np.isfinite(expected)
            np.testing.assert_array_equal(np.isfinite(got), mask, err_msg=key)
            np.testing.assert_allclose(got[mask], expected[mask], rtol=RTOL, atol=1e-7,
                                       err_msg=key)


def test_first_step_skipped_or_raised(module, trees):
    """A bad first step: "skip" keeps the freshly initialised (zero) state at step 0;
    "raise" leaves the optimizer uninitialised."""
    params, grads = trees
    bad = _with_bad_value(grads[0], "w", float("nan"))
    opt = module.Adafactor(**KWARGS, backend="mlx", nonfinite="skip")
    p = run_steps(opt, params, [bad])
    assert tree_bits(p) == tree_bits(params)
    assert opt.step.item() == 0 and opt.state["skipped_steps"].item() == 1
    assert all(not np.array(v).any() for k, v in tree_flatten(opt.state) if "exp_avg" in k)
    opt = module.Adafactor(**KWARGS, backend="mlx", nonfinite="raise")
    with pytest.raises(ValueError, match="gradient for parameter 'w' is not finite"):
        opt.apply_gradients(bad, params)
    assert set(opt.state) == {"step"} and opt.step.item() == 0


@pytest.mark.parametrize("stem", GENERATED)
def test_every_generated_class_skips_and_raises(stem, trees):
    """The option comes from the shared template: every committed module has it."""
    _, cls = generated_class(stem)
    params, grads = trees
    bad = _with_bad_value(grads[1], "blocks.0.k", float("nan"))
    opt = cls(backend="mlx", nonfinite="skip")
    p = run_steps(opt, params, grads[:1])
    params_before, state_before = tree_bits(p), tree_bits(opt.state)
    p = run_steps(opt, p, [bad])
    assert tree_bits(p) == params_before
    assert _without(tree_bits(opt.state), "skipped_steps") == _without(state_before,
                                                                    "skipped_steps")
    assert opt.state["skipped_steps"].item() == 1
    opt = cls(backend="mlx", nonfinite="raise")
    p = run_steps(opt, params, grads[:1])
    state_before = tree_bits(opt.state)
    with pytest.raises(ValueError, match="gradient for parameter 'blocks.0.k' is not finite"):
        opt.apply_gradients(bad, p)
    assert tree_bits(opt.state) == state_before


def _train(module, batches, compiled, nonfinite):
    mx.random.seed(0)
    model = MLP()
    opt = module.Adafactor(**KWARGS, backend="mlx", nonfinite=nonfinite)
    step = training_step(model, opt, compiled)
    history = []
    for x, y in batches:
        step(x, y)
        mx.eval(model.state, opt.state)
        history.append(tree_bits(model.parameters()))
    return model, opt, history


def _batches(bad_at=None, count=8):
    rng = np.random.default_rng(11)
    out = []
    for index in range(count):
        x = rng.standard_normal((16, 6)).astype(np.float32)
        y = rng.standard_normal((16, 3)).astype(np.float32)
        if index == bad_at:
            y[3, 1] = np.nan  # the loss, and so every gradient, is NaN
        out.append((mx.array(x), mx.array(y)))
    return out


def test_skip_inside_mx_compile(module):
    """The skip decision is an mx.where on a device flag, so a compiled training step
    (state as inputs and outputs, as mlx-lm does) skips exactly like eager, bit for bit,
    and equals a run that never saw the bad batch."""
    batches = _batches(bad_at=3)
    _, opt, compiled = _train(module, batches, True, "skip")
    _, eager_opt, eager = _train(module, batches, False, "skip")
    _, _, clean = _train(module, batches[:3] + batches[4:], True, "skip")
    assert compiled == eager
    assert compiled[3] == compiled[2]
    assert compiled[:3] + compiled[4:] == clean
    assert opt.step.item() == eager_opt.step.item() == 7
    assert opt.state["skipped_steps"].item() == 1


def test_raise_inside_mx_compile_says_why(module):
    with pytest.raises(ValueError, match="nonfinite='raise' .* mx.compile .* use "
                       "nonfinite='skip'"):
        _train(module, _batches(count=1), True, "raise")
