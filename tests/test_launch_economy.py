"""What keeps a fused step's launches few: same-shape tensors updated as one stack
(afgen_runtime's GeneratedOptimizer._update_stacks), whose step must give exactly what
updating each tensor alone gives (the kernels run on the CPU executor here), and step
values computed once per step."""
import mlx.core as mx
import numpy as np
import pytest
from helpers import GENERATED, backend_context, generated_class, generated_optimizer, tree_bits

from afgen.report.mlx_graph import kernel_stand_ins, step_dispatches

# Stacks of two or three (2-D, 1-D, 3-D, 0-D, and a factored shape whose largest axes are
# not the last two), beside tensors of their own shape.
SHAPES = {"a": (5, 7), "b": (5, 7), "c": (5, 7), "d": (6,), "e": (6,), "f": (2, 3, 4),
          "g": (2, 3, 4), "h": (9, 3), "i": (), "j": (), "k": (6, 2, 3), "l": (6, 2, 3)}


def _trees(steps: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)

    def tree() -> dict:
        return {k: mx.array(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}

    return tree(), [tree() for _ in range(steps)]


def _run(module, make, backend: str, stack_max: int, monkeypatch, **options):
    """(parameters, state, names of the kernels launched) after three steps."""
    launched = []
    launch = module._rt.launch
    params, grads = _trees(3)
    with monkeypatch.context() as patch, backend_context(module, backend):
        patch.setattr(module._rt, "STACK_MAX_ELEMENTS", stack_max)
        patch.setattr(module._rt, "launch",
                      lambda *a, **k: launched.append(a[2]) or launch(*a, **k))
        opt = make(backend=backend, **options)
        for g in grads:
            params = opt.apply_gradients(g, params)
        mx.eval(params, opt.state)
    return params, opt.state, launched


@pytest.mark.parametrize("stem", GENERATED)
def test_stacked_step_is_the_per_tensor_step_bit_for_bit(stem, monkeypatch):
    module, make = generated_class(stem)
    stacked = _run(module, make, "metal", 1 << 22, monkeypatch)
    alone = _run(module, make, "metal", 0, monkeypatch)
    assert tree_bits(stacked[0]) == tree_bits(alone[0])
    assert tree_bits(stacked[1]) == tree_bits(alone[1])  # each state in its own shape
    classes = set(generated_optimizer(stem)[1]._STATE_CLASSES.values())
    if module._STACKED and classes <= {"full", "row", "col"}:
        # glue between passes: once per stack and pass
        assert len(stacked[2]) < len(alone[2])
    else:  # one pass, or a scalar state (CAME's RMS): every tensor launches alone
        assert stacked[2] == alone[2]


@pytest.mark.parametrize("stem", ["adafactor", "adafactor_optax"])
def test_stacked_cuda_kernels_agree_with_the_per_tensor_step(stem, monkeypatch):
    module, make = generated_class(stem)
    stacked = _run(module, make, "cuda", 1 << 22, monkeypatch)
    alone = _run(module, make, "cuda", 0, monkeypatch)
    assert tree_bits(stacked[0]) == tree_bits(alone[0])
    assert tree_bits(stacked[1]) == tree_bits(alone[1])


def test_only_same_configuration_shape_and_dtype_share_a_stack(monkeypatch):
    module, make = generated_class("adafactor")
    params, grads = _trees(1)
    params["b"] = params["b"].astype(mx.bfloat16)
    grads[0]["b"] = grads[0]["b"].astype(mx.bfloat16)
    stacked = []
    update_stack = module._rt.GeneratedOptimizer._update_stack

    def record(self, function, axes, members):
        stacked.append(tuple(str(m[0].dtype) + str(tuple(m[0].shape)) for m in members))
        return update_stack(self, function, axes, members)

    monkeypatch.setattr(module._rt.GeneratedOptimizer, "_update_stack", record)
    with backend_context(module, "metal"):
        opt = make(backend="metal")
        mx.eval(opt.apply_gradients(grads[0], params))
    f32 = "mlx.core.float32"
    assert sorted(stacked) == sorted([
        (f32 + "(5, 7)",) * 2,  # "b" is bfloat16: it is not in the stack of "a" and "c"
        (f32 + "(6,)",) * 2,
        (f32 + "(2, 3, 4)",) * 2,
        (f32 + "()",) * 2,
        (f32 + "(6, 2, 3)",) * 2,
    ])


def test_stochastic_rounding_keeps_bfloat16_tensors_alone(monkeypatch):
    module, make = generated_class("adafactor")
    params, grads = _trees(1)
    params = {k: v.astype(mx.bfloat16) for k, v in params.items()}
    grads = [{k: v.astype(mx.bfloat16) for k, v in grads[0].items()}]
    out = []
    for stack_max in (1 << 22, 0):
        monkeypatch.setattr(module._rt, "STACK_MAX_ELEMENTS", stack_max)
        with backend_context(module, "metal"):
            opt = make(backend="metal", stochastic_rounding=True, seed=3)
            out.append(tree_bits(opt.apply_gradients(grads[0], params)))
    assert out[0] == out[1]


def test_a_skipped_step_leaves_stacked_tensors_and_state_as_they_were(monkeypatch):
    module, make = generated_class("adafactor")
    params, grads = _trees(2)
    grads[1]["a"] = grads[1]["a"].at[0, 0].add(mx.nan)
    with backend_context(module, "metal"):
        opt = make(backend="metal", nonfinite="skip")
        params = opt.apply_gradients(grads[0], params)
        mx.eval(params, opt.state)
        before = tree_bits(params), tree_bits(opt.state["b"])
        after = opt.apply_gradients(grads[1], params)
        assert (tree_bits(after), tree_bits(opt.state["b"])) == before


def _dispatches(module, make, tensors: int, compiled: bool):
    shapes = {f"w{i}": (40, 24) for i in range(tensors)}
    params = {k: mx.zeros(s) for k, s in shapes.items()}
    grads = {k: mx.ones(s) for k, s in shapes.items()}
    with kernel_stand_ins(module) as stand_ins:
        return step_dispatches(make(backend="metal"), params, grads, compiled=compiled,
                               stand_ins=stand_ins)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_stack_launches_as_many_kernels_and_glue_ops_however_many_tensors(compiled):
    """Only the stacking copies (one per tensor and array, as MLX's GPU backends run a
    concatenation) grow with the number of tensors of a stack."""
    module, make = generated_class("adafactor")
    small, large = (_dispatches(module, make, n, compiled) for n in (3, 12))
    copies = [dict(d.by_primitive)["Concatenate"] for d in (small, large)]
    assert small.kernels == large.kernels == 3
    assert small.total - copies[0] == large.total - copies[1]
    # Stacked: the gradient, the parameter and both factored states, one copy each.
    assert copies[1] - copies[0] == 4 * (12 - 3)


def test_stacks_hold_no_tensor_above_the_size_limit(monkeypatch):
    module, make = generated_class("adafactor")
    monkeypatch.setattr(module._rt, "STACK_MAX_ELEMENTS", 34)
    params, grads = _trees(1)
    with backend_context(module, "metal"):
        opt = make(backend="metal")
        members = []
        update_stack = module._rt.GeneratedOptimizer._update_stack
        monkeypatch.setattr(module._rt.GeneratedOptimizer, "_update_stack",
                            lambda self, f, a, m: members.extend(x[0].size for x in m)
                            or update_stack(self, f, a, m))
        mx.eval(opt.apply_gradients(grads[0], params))
    assert members and max(members) <= 34 and 35 not in members  # "a" to "c" are 5 x 7


def test_step_values_are_computed_once_per_step_for_the_whole_tree(monkeypatch):
    module, make = generated_class("adam")
    calls = []
    for name, function in vars(module).items():
        if name.startswith("_step_values_"):
            monkeypatch.setattr(module, name, lambda self, f=function, n=name:
                                calls.append(n) or f(self))
    params, grads = _trees(2)
    with backend_context(module, "metal"):
        opt = make(backend="metal")
        for g in grads:
            params = opt.apply_gradients(g, params)
    mx.eval(params)
    assert len(calls) == 2  # one specialisation, two steps
    # Outside a step (an update called directly), a new step still gets new values.
    with backend_context(module, "metal"):
        before = opt._per_step(getattr(module, calls[0]))
        opt.state["step"] = opt.state["step"] + 1
        after = opt._per_step(getattr(module, calls[0]))
    assert len(calls) == 4 and after is not before
