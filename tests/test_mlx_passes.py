"""The float32 MLX-ops update runs the fused plan with MLX twins of the pass kernels.

What is checked here, beyond the parity and verification suites that every backend goes
through (and that run the twins for every float32 case): which program each precision
runs, what the twins take and return, and that under ``mx.compile`` the glue's small
values reach the twins' loops as computed, not fused into them."""
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

import generated.adafactor as adafactor_module
import generated.adam as adam_module
from afgen import runtime as rt
from afgen.report.mlx_graph import lazy_graph
from generated.adafactor import Adafactor


@pytest.fixture(autouse=True)
def every_size_takes_the_plan(monkeypatch):
    """The plan is for large parameters (``PLANNED_MIN_ELEMENTS``); these small ones
    take it too, as in verification."""
    monkeypatch.setattr(adafactor_module._rt, "PLANNED_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("module", [adafactor_module, adam_module], ids=["adafactor", "adam"])
def test_every_kernel_has_a_twin_with_its_layout(module):
    assert module._MLX_PASSES.keys() == module._KERNELS.keys()
    for name, (function, factored, inputs, results, key_index) in module._MLX_PASSES.items():
        input_names, output_names, _, _ = module._KERNELS[name]
        assert factored == name.rsplit("_", 2)[-2].startswith("f")  # ..._f0_<digest>
        # the kernel's inputs: the arrays, a buffer per scalar, the rounding key's, the
        # geometry
        assert set(inputs) <= set("fbrc") and input_names[-1].startswith("dims")
        scalars = input_names[len(inputs):-1]
        assert all(s.endswith("_in") for s in scalars)
        if key_index is not None:
            assert len(scalars) == key_index + 1 and scalars[-1] == "afg_key_in"
        assert len(results) == len(output_names) and set(results) <= set("fparc")
        assert (key_index is not None) == ("p" in results) and results.count("p") <= 1
        assert function.__name__ == f"_mlx_{name}"


def _step(optimizer, shapes, compiled):
    params = {k: mx.zeros(s) for k, s in shapes.items()}
    grads = {k: mx.ones(s) for k, s in shapes.items()}
    mx.eval(params, grads)
    optimizer.init(params)
    mx.eval(optimizer.state)
    state = [optimizer.state]
    step = lambda g, p: optimizer.apply_gradients(g, p)  # noqa: E731
    if compiled:
        step = mx.compile(step, inputs=state, outputs=state)
    return step(grads, params)


def test_compiled_step_computes_small_values_once():
    """Under ``mx.compile`` the glue's scalars reach the twins as computed, so the loop
    that writes the parameter (a ``Subtract`` of broadcast values) does not recompute
    the clipping factor or the step size (each a ``Maximum`` of a square root) for
    every element."""
    optimizer = Adafactor()
    updated = _step(optimizer, {"w": (96, 80), "b": (80,)}, compiled=True)
    fused = [n.primitive for n in lazy_graph(updated, optimizer.state)
             if n.primitive.startswith("Compiled")]
    updates = [name for name in fused if "Subtract" in name and "Broadcast" in name]
    assert len(updates) == 2  # one loop per parameter writes it
    assert not any("Maximum" in name or "Sqrt" in name for name in updates), updates


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_adam_step_is_one_fused_loop_per_tensor(compiled):
    shapes = {"w": (24, 16), "b": (16,), "s": ()}
    optimizer = adam_module.Adam(1e-3)
    updated = _step(optimizer, shapes, compiled)
    nodes = lazy_graph(updated, optimizer.state)
    assert sum(n.primitive.startswith("Compiled") for n in nodes) == len(shapes)


def test_param_precision_runs_mlx_program_bit_for_bit():
    rng = np.random.default_rng(0)
    params = {"w": mx.array(rng.standard_normal((12, 9)).astype(np.float32))}
    grads = {"w": mx.array(rng.standard_normal((12, 9)).astype(np.float32))}
    ours, theirs = Adafactor(precision="param"), optim.Adafactor()
    a, b = ours.apply_gradients(grads, params), theirs.apply_gradients(grads, params)
    assert np.array_equal(np.array(a["w"]), np.array(b["w"]))


@pytest.mark.parametrize("precision,twins", [("float32", True), ("param", False)])
def test_which_program_each_precision_runs(monkeypatch, precision, twins):
    launched = []
    real = rt.launch_mlx_pass

    def spy(twin, *args, **kwargs):
        launched.append(twin[0].__name__)
        return real(twin, *args, **kwargs)

    monkeypatch.setattr(adafactor_module._rt, "launch_mlx_pass", spy)
    opt = Adafactor(backend="mlx", precision=precision)
    mx.eval(opt.apply_gradients({"w": mx.ones((8, 6)), "b": mx.ones((6,))},
                                {"w": mx.ones((8, 6)), "b": mx.ones((6,))}))
    assert bool(launched) == twins
    assert all(name.startswith("_mlx_afgen_adafactor_") for name in launched)
    # factored: three passes, unfactored: two
    assert len(launched) == (5 if twins else 0)


def _one_step(module_rt, chunk, shape, **options):
    rng = np.random.default_rng(len(shape))
    params = {"p": mx.array(rng.standard_normal(shape).astype(np.float32))}
    grads = {"p": mx.array(rng.standard_normal(shape).astype(np.float32))}
    previous, module_rt.CHUNK_ELEMENTS = module_rt.CHUNK_ELEMENTS, chunk
    try:
        opt = Adafactor(**options)
        opt.init(params)
        for _ in range(3):
            params = opt.apply_gradients(grads, params)
        mx.eval(params, opt.state)
    finally:
        module_rt.CHUNK_ELEMENTS = previous
    return params["p"], opt.state["p"]


@pytest.mark.parametrize("shape", [(3, 37, 29), (70, 33), (1001,), (5, 7, 11, 3)])
@pytest.mark.parametrize("options", [{}, {"beta_1": 0.9, "weight_decay": 0.01}],
                         ids=["defaults", "beta_1-wd"])
def test_passes_that_only_reduce_give_the_same_update_in_chunks(monkeypatch, shape, options):
    """A reduction-only pass of a large parameter runs in chunks (so its operands stay in
    MLX's buffer cache); the update is the unchunked one up to the order of additions."""
    module_rt = adafactor_module._rt
    chunked = []
    real = module_rt._reduce_in_chunks
    monkeypatch.setattr(module_rt, "_reduce_in_chunks",
                        lambda *a: chunked.append(1) or real(*a))
    whole, whole_state = _one_step(module_rt, 1 << 30, shape, **options)
    assert not chunked
    parts, parts_state = _one_step(module_rt, 64, shape, **options)
    assert chunked
    np.testing.assert_allclose(np.array(parts), np.array(whole), rtol=2e-6, atol=1e-7)
    assert parts_state.keys() == whole_state.keys()
    for key in whole_state:
        np.testing.assert_allclose(np.array(parts_state[key]), np.array(whole_state[key]),
                                   rtol=2e-6)


def test_parameter_size_chooses_the_program(monkeypatch):
    """By default a small parameter runs the statements (the plan's glue costs more
    than it saves there) and a large one the plan; MLX's size is the boundary."""
    monkeypatch.setattr(adafactor_module._rt, "PLANNED_MIN_ELEMENTS", 1 << 17)
    launched = []
    real = rt.launch_mlx_pass
    monkeypatch.setattr(adafactor_module._rt, "launch_mlx_pass",
                        lambda *a: launched.append(1) or real(*a))
    small, large = (256, 511), (256, 512)  # 2**17 elements is the first planned size
    mx.eval(Adafactor().apply_gradients({"w": mx.ones(small)}, {"w": mx.ones(small)}))
    assert not launched
    mx.eval(Adafactor().apply_gradients({"w": mx.ones(large)}, {"w": mx.ones(large)}))
    assert len(launched) == 3
