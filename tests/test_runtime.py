"""afgen/runtime.py on its own: tree walking, checks, staging, non-finite policies,
rounding, layouts and kernel launches, with a small hand-written optimizer on the base
class where a whole step is needed."""
import math

import mlx.core as mx
import numpy as np
import pytest
from helpers import tree_bits

from afgen import runtime as rt

# ---------------------------------------------------------------------------------------
# A minimal optimizer on the base class: p -= 0.5 * (m = m + g); the second parameter's
# update can be made to fail.
# ---------------------------------------------------------------------------------------


def _update(self, gradient, parameter, state):
    self.calls += 1
    if self.calls == self.fail_on:
        raise RuntimeError("boom")
    m = rt.cast(state["m"], mx.float32) + rt.cast(gradient, mx.float32)
    state["m"] = rt.collapse(m, state["m"], "full")
    return self._write_parameter(rt.cast(parameter, mx.float32) - 0.5 * m, parameter)


class Accumulate(rt.GeneratedOptimizer):
    _STATE_CLASSES = {"m": "full"}

    def __init__(self, fail_on=None, **options):
        super().__init__(**options)
        self.fail_on, self.calls = fail_on, 0

    def _factor_axes(self, shape):
        return None

    def _static_key(self, factored):
        return (factored,)

    def _state_shapes(self, shape, axes):
        return {"m": shape}

    def _initial_state(self, shape, axes):
        return {"m": (shape, 0.0)}

    def _mlx_update(self, factored):
        return lambda g, p, s: _update(self, g, p, s)

    def _fused_update(self, key):
        return None


def _tree(value=1.0):
    return {"a": mx.full((2, 3), value), "l": [mx.full((4,), value), {"x.y": mx.full((), value)}]}


# ---------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------
def test_leaves_walk_odd_trees_and_name_paths():
    grads = {"a.b": mx.ones((2,)), "l": [mx.ones((1,)), {"k": mx.ones((3,))}], "e": {},
             "t": (mx.ones((1,)),)}
    params = {"a.b": mx.zeros((2,)), "l": [mx.zeros((1,))], "e": ["not", "arrays"],
              "t": mx.zeros((1,))}
    state = {"a.b": {"m": 1}, "l": "not a container"}
    found = {name: (g, p, s) for name, g, p, s in rt.leaves(grads, params, state)}
    assert list(found) == ["a.b", "l.0", "l.1.k", "t.0"]  # "e" is empty: nothing looked at
    assert found["a.b"][1] is params["a.b"] and found["a.b"][2] == {"m": 1}
    assert found["l.1.k"][1] is None  # the parameter list is shorter
    assert found["l.0"][2] is None  # the state is not a container there
    assert found["t.0"][1] is None  # a tuple gradient where the parameter is an array
    (root,) = rt.leaves(mx.ones((2,)), mx.zeros((2,)), {})
    assert root[0] == "<root>"


def test_beside_gives_none_for_what_the_tree_lacks():
    beside = rt.Beside([1, 2])
    assert beside[1].tree == 2 and beside[2].tree is None and beside[-1].tree is None
    assert beside["k"].tree is None and rt.Beside(None)[0][1].tree is None
    assert rt.Beside({"k": {"j": 3}})["k"]["j"].tree == 3


def test_as_array_converts_what_mlx_takes():
    assert isinstance(rt.as_array(np.ones((2,), np.float32)), mx.array)
    assert rt.as_array(1.5).item() == 1.5
    kept = object()
    assert rt.as_array(kept) is kept and rt.as_array("text") == "text"


def test_copy_containers_copies_containers_not_leaves():
    tree = _tree()
    copy = rt.copy_containers(tree)
    assert copy is not tree and copy["l"] is not tree["l"] and copy["l"][1] is not tree["l"][1]
    assert copy["a"] is tree["a"] and copy["l"][1]["x.y"] is tree["l"][1]["x.y"]
    copy["l"].append(mx.ones(1))
    copy["a"] = None
    assert len(tree["l"]) == 2 and tree["a"] is not None


def test_merge_into_writes_in_place_and_grows_lists():
    inner, items = {"m": 1}, [{"v": 1}]
    live = {"p": inner, "list": items, "step": 0}
    staged = {"p": {"m": 2, "n": 3}, "list": [{"v": 4}, {"v": 5}], "step": 1, "new": 6}
    rt.merge_into(live, staged)
    assert live["p"] is inner and inner == {"m": 2, "n": 3}
    assert live["list"] is items and items == [{"v": 4}, {"v": 5}]
    assert live["step"] == 1 and live["new"] == 6
    replaced = {"p": [1]}
    rt.merge_into(replaced, {"p": {"now": "a dict"}})
    assert replaced["p"] == {"now": "a dict"}


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient,parameter,message", [
    ("text", mx.ones((2,)), r"gradient for parameter 'w' is a str, not an array"),
    (mx.ones((2,)), None, r"gradient for 'w' has no matching parameter$"),
    (mx.ones((2,)), [1], r"gradient for 'w' has no matching parameter \(it is a list\)"),
    (mx.ones((2,)), mx.ones((3,)), r"has shape \(2,\) but the parameter has shape \(3,\)"),
    (mx.ones((2,), mx.int32), mx.ones((2,)), r"'w' has dtype int32; Opt supports"),
    (mx.ones((2,)), mx.ones((2,), mx.uint32), r"parameter 'w' has dtype uint32"),
])
def test_check_leaf(gradient, parameter, message):
    with pytest.raises(ValueError, match=message):
        rt.check_leaf("w", gradient, parameter, "Opt")
    rt.check_leaf("w", mx.ones((2,), mx.bfloat16), mx.ones((2,), mx.bfloat16), "Opt")


def test_check_slot_promotes_or_refuses_16_bit_state():
    parameter = mx.ones((2, 3), mx.bfloat16)
    slot = {"row": mx.ones((2,), mx.bfloat16), "any": mx.ones((7,), mx.float16)}
    rt.check_slot("w", parameter, slot, {"row": (2,), "any": None, "absent": (1,)},
                  "float32", "Opt")
    assert slot["row"].dtype == mx.float32 and slot["any"].dtype == mx.float32
    with pytest.raises(ValueError, match=r"'w' is bfloat16 but its state 'row' is float32; "
                       r"precision='param'"):
        rt.check_slot("w", parameter, {"row": mx.ones((2,))}, {"row": (2,)}, "param", "Opt")
    with pytest.raises(ValueError, match=r"'w' has shape \(2, 3\) but its state 'row' has "
                       r"shape \(3,\) \(expected \(2,\)\)"):
        rt.check_slot("w", parameter, {"row": mx.ones((3,))}, {"row": (2,)}, "float32", "Opt")
    with pytest.raises(ValueError, match=r"state 'row' of parameter 'w' is a list"):
        rt.check_slot("w", parameter, {"row": [1]}, {"row": (2,)}, "float32", "Opt")
    with pytest.raises(ValueError, match=r"optimizer state of parameter 'w' is a list"):
        rt.check_slot("w", parameter, [], {}, "float32", "Opt")


@pytest.mark.parametrize("value,expected", [(3, 3), (mx.array(5, mx.int32), 5),
                                            (mx.array(7, mx.uint64), 7), (0, 0)])
def test_counter_accepts_non_negative_integers(value, expected):
    out = rt.counter("step", value)
    assert out.dtype == mx.uint64 and out.ndim == 0 and out.item() == expected


@pytest.mark.parametrize("value,got", [
    (-1, "-1"), (True, "True"), (2 ** 64, str(2 ** 64)), (mx.array(-2, mx.int32), "-2"),
    (mx.array(1.0), "a float32 array"), (mx.array([1, 2]), r"int32 array of shape \(2,\)"),
])
def test_counter_refuses_the_rest(value, got):
    with pytest.raises(ValueError, match=rf"'step' must be a non-negative integer .*; "
                       rf"got (a )?{got}$"):
        rt.counter("step", value)


def test_check_assigned_state():
    found = [("w", mx.ones((2,)), mx.ones((2,)), {"m": mx.zeros((2,))})]

    def init_single(parameter, state):
        state.update(m=mx.zeros(parameter.shape), v=mx.zeros(parameter.shape))

    with pytest.raises(ValueError, match="optimizer state has no 'step'"):
        rt.check_assigned_state({}, found, init_single)
    state = {"step": 4}
    with pytest.raises(ValueError, match=r"parameter 'w' has optimizer state without \['v'\] "
                       r"\(it has \['m'\]\)"):
        rt.check_assigned_state(state, found, init_single)
    assert state["step"].dtype == mx.uint64  # the counter was converted first
    rt.check_assigned_state({"step": 0, "skipped_steps": 2}, [("w", None, None, {})],
                            init_single)  # an empty slot is left for init()


def test_option_checks():
    assert rt.check_bool("f", True) is True and rt.check_bool("f", 0) is False
    for bad in ("no", "", 2, 1.0, None):
        with pytest.raises(ValueError, match="f must be a bool"):
            rt.check_bool("f", bad)
    assert rt.check_seed(2 ** 32 - 1) == 2 ** 32 - 1
    for bad in (-1, 2 ** 32, True, 1.0, "1"):
        with pytest.raises(ValueError, match="seed must be an int"):
            rt.check_seed(bad)
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got \['a'\]"):
        rt.check_choice("mode", ["a"], ("a", "b"))


# ---------------------------------------------------------------------------------------
# Non-finite policies
# ---------------------------------------------------------------------------------------
def _found(*gradients):
    return [(f"g{i}", g, None, None) for i, g in enumerate(gradients)]


def test_finite_flag_for_each_policy():
    good, nan, inf = mx.ones((3,)), mx.array([1.0, math.nan]), mx.array([-math.inf, 1.0])
    assert rt.finite_flag(_found(nan), "propagate") is None
    assert rt.finite_flag([], "skip") is None
    assert rt.finite_flag(_found(good, good), "skip").item() is True
    assert rt.finite_flag(_found(good, inf), "skip").item() is False
    assert rt.finite_flag(_found(good, good), "raise") is None
    with pytest.raises(ValueError, match=r"'g1' is not finite \(it contains NaN\)"):
        rt.finite_flag(_found(good, nan, inf), "raise")
    with pytest.raises(ValueError, match=r"'g0' is not finite \(it contains Inf\)"):
        rt.finite_flag(_found(inf, nan), "raise")


def test_raise_inside_compile_says_what_to_use():
    @mx.compile
    def step(g):
        rt.finite_flag(_found(g), "raise")
        return g

    with pytest.raises(ValueError, match="use nonfinite='skip' inside compiled steps"):
        step(mx.ones((2,)))


def test_select_and_keep_unless_finite():
    old = {"a": mx.array([1.0]), "same": mx.array([2.0]), "gone": mx.array([3.0])}
    new = {"a": mx.array([9.0]), "same": old["same"], "added": mx.array([4.0]), "n": 5}
    picked = rt.select(mx.array(False), new, old)
    assert picked["a"].item() == 1.0 and picked["same"] is old["same"]
    assert picked["added"] is new["added"] and picked["n"] == 5 and "gone" not in picked
    assert rt.select(mx.array(True), new, old)["a"].item() == 9.0
    before = {"step": mx.array(1, mx.uint64), "skipped_steps": mx.array(2, mx.uint64)}
    staged = {"step": mx.array(2, mx.uint64)}
    kept, out = rt.keep_unless_finite(mx.array(False), {"p": mx.array(8.0)},
                                      {"p": mx.array(7.0)}, staged, before)
    assert kept["p"].item() == 7.0 and out["step"].item() == 1
    assert out["skipped_steps"].item() == 3
    _, out = rt.keep_unless_finite(mx.array(True), {}, {}, dict(staged), {"step": 1})
    assert out["step"].item() == 2 and out["skipped_steps"].item() == 0


# ---------------------------------------------------------------------------------------
# Rounding
# ---------------------------------------------------------------------------------------
def _lowbias32(x):
    mask = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & mask
    x ^= x >> 15
    x = (x * 0x846CA68B) & mask
    return x ^ (x >> 16)


def test_mix32_is_lowbias32():
    inputs = [0, 1, 2, 12345, 0xDEADBEEF, 0xFFFFFFFF]
    got = rt.mix32(mx.array(inputs, dtype=mx.uint32)).tolist()
    assert got == [_lowbias32(x) for x in inputs]


def test_rounding_key_is_deterministic_odd_and_distinct():
    keys = {(seed, salt, step): rt.rounding_key(seed, salt, mx.array(step, mx.uint64)).item()
            for seed in (0, 1) for salt in (1, 2) for step in (1, 2)}
    assert len(set(keys.values())) == len(keys)  # seed, salt and step each change it
    assert all(k % 2 == 1 for k in keys.values())  # never 0: 0 means round to nearest
    assert rt.rounding_key(1, 2, mx.array(2, mx.uint64)).item() == keys[(1, 2, 2)]
    assert rt.rounding_key(1, 2, mx.array(2, mx.uint64)).dtype == mx.uint32


def test_stochastic_bfloat16_rounds_to_a_neighbour_without_bias():
    exact = mx.array([1.0, -2.5, 0.0, math.inf], mx.float32)
    assert rt.stochastic_bfloat16(exact, mx.array(7, mx.uint32)).tolist() == exact.tolist()
    assert math.isnan(rt.stochastic_bfloat16(mx.array([math.nan]), mx.array(7, mx.uint32))
                      .astype(mx.float32).item())
    value = 1.0 + 2 ** -9  # a quarter of the way from 1.0 to the next bfloat16, 1 + 2**-7
    out = rt.stochastic_bfloat16(mx.full((20000,), value), mx.array(12345, mx.uint32))
    out = np.array(out.astype(mx.float32))
    assert set(np.unique(out)) == {1.0, 1.0 + 2 ** -7}
    assert abs(out.mean() - value) < 2e-4  # nearest rounding would give exactly 1.0
    again = rt.stochastic_bfloat16(mx.full((20000,), value), mx.array(12345, mx.uint32))
    assert np.array_equal(np.array(again.astype(mx.float32)), out)


# ---------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------
STATE_SHAPES = {"full": (2, 3, 4), "row": (2, 3), "col": (2, 4), "batch": (2,)}
BROADCAST = {"full": (2, 3, 4), "row": (2, 3, 1), "col": (2, 1, 4), "batch": (2, 1, 1)}


@pytest.mark.parametrize("shape_class", sorted(STATE_SHAPES))
def test_expand_collapse_round_trip(shape_class):
    shape = STATE_SHAPES[shape_class]
    state = mx.arange(math.prod(shape), dtype=mx.float32).reshape(shape)
    wide = rt.expand(state, shape_class)
    assert tuple(wide.shape) == BROADCAST[shape_class]
    like = state.astype(mx.bfloat16)
    back = rt.collapse(wide, like, shape_class)
    assert back.dtype == mx.bfloat16 and tuple(back.shape) == shape
    assert np.array_equal(np.array(back.astype(mx.float32)), np.array(state))
    constant = rt.collapse(2.0, like, shape_class)  # a value the update left scalar
    assert tuple(constant.shape) == shape and np.all(np.array(constant.astype(mx.float32)) == 2)


def test_cast_copies_only_when_needed():
    x = mx.ones((2,))
    assert rt.cast(x, mx.float32) is x and rt.cast(x, mx.float16).dtype == mx.float16


def test_largest_two_and_without():
    assert rt.largest_two((3, 7, 5)) == (2, 1)
    assert rt.largest_two((4, 4)) == (0, 1) and rt.largest_two((5, 2, 5)) == (0, 2)
    assert rt.without((3, 7, 5), 1) == (3, 5) and rt.without((3, 7, 5), 0, 2) == (7,)


def test_reoriented_moves_the_factored_axes_last_and_back():
    """Factored over axes 0 (rows) and 2 (cols) of a (4, 2, 5) parameter: the update sees
    (2, 4, 5) with its row state (4, 2) as (2, 4) and its col state (2, 5) as it is;
    everything comes back in place."""
    rng = np.random.default_rng(0)
    gradient = rng.standard_normal((4, 2, 5)).astype(np.float32)
    state = {"r": mx.zeros((4, 2)), "c": mx.zeros((2, 5)), "b": mx.zeros((2,)),
             "count": mx.array(3)}
    seen = {}

    def update(g, p, s):
        seen.update(g=g.shape, r=s["r"].shape, c=s["c"].shape)
        s["r"], s["c"] = g.sum(-1), g.sum(-2)
        s["b"], s["count"] = g.sum((-2, -1)), s["count"] + 1
        return g * 2

    out = rt.reoriented(update, (0, 2), mx.array(gradient), mx.zeros((4, 2, 5)), state,
                        {"r": "row", "c": "col", "b": "batch", "count": "scalar"})
    assert seen == {"g": (2, 4, 5), "r": (2, 4), "c": (2, 5)}
    np.testing.assert_allclose(np.array(out), gradient * 2)
    np.testing.assert_allclose(np.array(state["r"]), gradient.sum(2), rtol=1e-6)
    np.testing.assert_allclose(np.array(state["c"]), gradient.sum(0), rtol=1e-6)
    np.testing.assert_allclose(np.array(state["b"]), gradient.sum((0, 2)), rtol=1e-5)
    assert state["count"].item() == 4


def test_reoriented_runs_last_axes_and_unfactored_updates_directly():
    calls = []

    def update(g, p, s):
        calls.append(g)
        return g

    g = mx.ones((2, 3))
    assert rt.reoriented(update, (0, 1), g, g, {}, {}) is g
    assert rt.reoriented(update, None, g, g, {}, {}) is g and calls == [g, g]


# ---------------------------------------------------------------------------------------
# Kernel geometry and launches
# ---------------------------------------------------------------------------------------
def test_geometry_of_factored_and_flat_parameters():
    geo = rt.geometry((3, 5, 7), True, 2, 4, 8)
    assert (geo.B, geo.M, geo.N, geo.nrb, geo.ncc) == (3, 5, 7, 3, 2)
    assert geo.grid == (3 * 3 * 2 * 8, 1, 1) and geo.threads == 8
    assert geo.dims.tolist() == [3, 5, 7, 3, 2, 3] and geo.dims.dtype == mx.uint32
    flat = rt.geometry((3, 5, 7), False, 1, 64, 8)
    assert (flat.B, flat.M, flat.N, flat.nrb, flat.ncc) == (1, 1, 105, 1, 2)


def test_geometry_of_stacked_tensors():
    """Four (3, 5, 7) tensors stacked: 12 matrices, 3 to a tensor; unfactored, a row
    each."""
    geo = rt.geometry((4, 3, 5, 7), True, 2, 4, 8, tensors=4)
    assert (geo.B, geo.M, geo.N, geo.tensors) == (12, 5, 7, 4)
    assert geo.dims.tolist() == [12, 5, 7, 3, 2, 3]
    flat = rt.geometry((4, 3, 5, 7), False, 1, 64, 8, tensors=4)
    assert (flat.B, flat.M, flat.N, flat.nrb, flat.ncc) == (4, 1, 105, 1, 2)
    assert flat.dims.tolist()[-1] == 1 and flat.grid == (4 * 2 * 8, 1, 1)


def test_totals_over_whole_tensors_of_a_stack():
    geo = rt.geometry((3, 2, 4), True, 1, 4, 1, tensors=3)
    part = mx.arange(3 * 2 * 1, dtype=mx.float32)  # per matrix (3) and row block (2)
    assert rt.tensor_total(part, geo).tolist() == [[[1.0]], [[5.0]], [[9.0]]]
    rows = mx.arange(6, dtype=mx.float32).reshape(3, 2, 1)
    assert rt.tensor_reduce(rows, geo, "mean").tolist() == [[[0.5]], [[2.5]], [[4.5]]]
    assert rt.tensor_reduce(rows, geo, "sum").shape == (3, 1, 1)
    # A value every tensor shares (no leading stack axis) is reduced once for all.
    assert rt.tensor_reduce(mx.array(2.0), geo, "mean").item() == 2.0
    single = rt.geometry((2, 4), True, 1, 4, 1)
    assert rt.tensor_total(mx.array([1.0, 2.0]), single).item() == 3.0


def test_small_inputs_and_totals():
    geo = rt.geometry((2, 3, 4), True, 2, 2, 1)
    row = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    col = np.arange(8, dtype=np.float32).reshape(2, 1, 4)
    assert rt.rows(mx.array(row), geo).tolist() == row.reshape(-1).tolist()
    assert rt.cols(mx.array(col), geo).tolist() == col.reshape(-1).tolist()
    assert rt.batches(mx.array([[[1.0]], [[2.0]]]), geo).tolist() == [1.0, 2.0]
    assert rt.rows(0.5, geo).tolist() == [0.5] * 6  # a scalar is broadcast
    row_part = np.arange(2 * 3 * geo.ncc, dtype=np.float32)
    np.testing.assert_array_equal(np.array(rt.row_total(mx.array(row_part), geo)),
                                  row_part.reshape(2, 3, geo.ncc).sum(-1)[..., None])
    col_part = np.arange(2 * geo.nrb * 4, dtype=np.float32)
    np.testing.assert_array_equal(np.array(rt.col_total(mx.array(col_part), geo)),
                                  col_part.reshape(2, geo.nrb, 4).sum(1)[:, None, :])


def test_scalar_buffers():
    """Each scalar a float32 buffer of its own, made without a copy."""
    geo = rt.geometry((4,), False, 1, 2, 32)
    assert rt.scalar_buffers([], geo) == []
    value = mx.array(2.5)
    buffers = rt.scalar_buffers([1, value, mx.array([3.0], mx.float16)], geo)
    assert [b.tolist() for b in buffers] == [[1.0], [2.5], [3.0]]
    assert all(b.dtype == mx.float32 and b.shape == (1,) for b in buffers)


def test_scalar_buffers_give_each_stacked_tensor_its_value():
    geo = rt.geometry((3, 4), False, 1, 2, 32, tensors=3)
    per_tensor = mx.array([10.0, 20.0, 30.0]).reshape(3, 1)
    shared, own = rt.scalar_buffers([1, per_tensor], geo)
    assert shared.tolist() == [1, 1, 1] and own.tolist() == [10, 20, 30]


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, backend, name, input_names, output_names, source, header, call):
        self.calls.append((backend, name, input_names, output_names, source, header, call))
        return [mx.zeros(shape, dtype) for shape, dtype in
                zip(call["output_shapes"], call["output_dtypes"])]


@pytest.fixture
def recorder():
    recorder = Recorder()
    previous = rt.use_kernel_runner(recorder)
    yield recorder
    assert rt.use_kernel_runner(previous) is recorder


def test_launch_hands_the_runner_everything(recorder):
    tables = rt.KernelTables({"k": (["a", "dims"], ["out"], ["T1", "S"], "BODY")},
                             {"cuda": "PROLOGUE "}, {"cuda": "HEADER"},
                             {"cuda": "cuda_kernel"}, 32)
    geo = rt.geometry((4,), False, 1, 2, 32)
    (out,) = rt.launch(tables, "cuda", "k", geo, [mx.ones((4,)), geo.dims],
                       [((4,), mx.float16)], mx.float16, mx.float32)
    assert out.shape == (4,) and out.dtype == mx.float16
    ((backend, name, ins, outs, source, header, call),) = recorder.calls
    assert (backend, name, ins, outs, source, header) == ("cuda", "k", ["a", "dims"], ["out"],
                                                          "PROLOGUE BODY", "HEADER")
    assert call["grid"] == (2 * 32, 1, 1) and call["threadgroup"] == (32, 1, 1)
    assert call["template"] == [("T1", mx.float16), ("S", mx.float32)]


def test_a_generated_class_launches_its_modules_current_tables(module, recorder, monkeypatch):
    """Tables replaced on the module after the class was built are the ones launched."""
    kernels = {n: (i, o, t, f"// changed\n{s}") for n, (i, o, t, s) in module._KERNELS.items()}
    monkeypatch.setattr(module, "_KERNELS", kernels)
    opt = module.Adafactor(backend="cuda")
    opt.apply_gradients({"w": mx.ones((4, 3))}, {"w": mx.ones((4, 3))})
    prologue = module._PROLOGUES["cuda"]
    assert recorder.calls and all(c[4].startswith(prologue + "// changed") for c in recorder.calls)
    assert all(c[5] == module._HEADERS["cuda"] for c in recorder.calls)


def test_resolve_backend():
    assert rt.kernel_runner() is None
    assert rt.resolve_backend("mlx") == "mlx"
    for bad in ("tpu", None, "MLX"):
        with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'mlx', "
                           r"'metal', 'cuda'\)"):
            rt.resolve_backend(bad)
    if not mx.metal.is_available():
        with pytest.raises(ValueError, match="backend 'metal' is not available"):
            rt.resolve_backend("metal")
    if not (mx.metal.is_available() or mx.cuda.is_available()):
        assert rt.resolve_backend("auto") == "mlx"


def test_resolve_backend_with_a_runner(recorder):
    assert rt.resolve_backend("metal") == "metal" and rt.resolve_backend("cuda") == "cuda"
    assert rt.resolve_backend("auto") == "mlx"  # the runner is for checks, never picked


# ---------------------------------------------------------------------------------------
# The base class
# ---------------------------------------------------------------------------------------
def test_base_class_steps_and_initialises_state():
    opt = Accumulate()
    params = opt.apply_gradients(_tree(1.0), _tree(0.0))
    params = opt.apply_gradients(_tree(1.0), params)
    mx.eval(params, opt.state)
    assert opt.step.item() == 2
    assert np.all(np.array(params["a"]) == -1.5)  # -0.5 * 1, then -0.5 * 2
    assert np.all(np.array(opt.state["l"][1]["x.y"]["m"]) == 2)


def test_a_failed_step_commits_nothing():
    opt = Accumulate()
    params = opt.apply_gradients(_tree(), _tree(0.0))
    mx.eval(params, opt.state)
    live, before = opt.state, tree_bits(opt.state)
    opt.fail_on, opt.calls = 2, 0
    with pytest.raises(RuntimeError, match="boom"):
        opt.apply_gradients(_tree(), params)
    assert opt.state is live and tree_bits(opt.state) == before


def test_a_failed_first_step_leaves_the_optimizer_uninitialised():
    opt = Accumulate(fail_on=2)
    with pytest.raises(RuntimeError, match="boom"):
        opt.apply_gradients(_tree(), _tree(0.0))
    assert list(opt.state) == ["step"] and not opt._initialized
    opt.fail_on = None
    mx.eval(opt.apply_gradients(_tree(), _tree(0.0)))
    assert opt.step.item() == 1


@pytest.mark.parametrize("mode", ["skip", "raise", "propagate"])
def test_each_nonfinite_policy_on_a_whole_step(mode):
    opt = Accumulate(nonfinite=mode)
    params = opt.apply_gradients(_tree(), _tree(0.0))
    mx.eval(params, opt.state)
    state_before, params_before = tree_bits(opt.state), tree_bits(params)
    bad = _tree()
    bad["l"][0] = mx.array([1.0, math.inf, 1.0, 1.0])
    if mode == "raise":
        with pytest.raises(ValueError, match=r"gradient for parameter 'l.0' is not finite"):
            opt.apply_gradients(bad, params)
        assert tree_bits(opt.state) == state_before
        return
    new = opt.apply_gradients(bad, params)
    mx.eval(new, opt.state)
    if mode == "skip":
        skipped = {k: v for k, v in tree_bits(opt.state).items() if k != "skipped_steps"}
        assert skipped == {k: v for k, v in state_before.items() if k != "skipped_steps"}
        assert tree_bits(new) == params_before and opt.state["skipped_steps"].item() == 1
    else:
        assert opt.step.item() == 2 and np.isinf(np.array(new["l"][0])[1])


def test_zero_size_parameters_are_kept():
    opt = Accumulate()
    empty = mx.zeros((0, 3))
    out = opt.apply_gradients({"e": empty}, {"e": empty})
    assert out["e"] is empty and opt.state["e"]["m"].shape == (0, 3)


def test_an_unknown_fused_configuration_is_named(recorder):
    opt = Accumulate(backend="cuda")
    opt._static_key = lambda factored: ("odd",)
    with pytest.raises(ValueError, match=r"no specialisation for static configuration "
                       r"\('odd',\)"):
        opt.apply_gradients({"w": mx.ones((2,))}, {"w": mx.ones((2,))})


def test_untrainable_leaves_get_no_state():
    opt = Accumulate()
    opt.init({"q": mx.zeros((2,), mx.uint32), "w": mx.zeros((2,))})
    assert opt.state["q"] == {} and set(opt.state["w"]) == {"m"}


def test_stochastic_rounding_writes_bfloat16_parameters_by_key():
    def run(seed):
        opt = Accumulate(stochastic_rounding=True, seed=seed)
        params = {"w": mx.full((4096,), 1.0, mx.bfloat16)}
        return np.array(opt.apply_gradients({"w": mx.full((4096,), -2 ** -9, mx.bfloat16)},
                                            params)["w"].astype(mx.float32))

    first, again, other = run(1), run(1), run(2)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert set(np.unique(first)) == {1.0, 1.0 + 2 ** -7}  # 1 + 2**-10 rounded both ways


def test_host_functions_give_what_mlx_gives_where_math_raises():
    assert rt.host_log(1.0) == 0.0 and rt.host_log(0.0) == -math.inf
    assert math.isnan(rt.host_log(-1.0)) and math.isnan(rt.host_log(math.nan))
    assert rt.host_exp(0.0) == 1.0 and rt.host_exp(1000.0) == math.inf
    # double precision: float32 would round 0.9999 first (1e-4 relative off)
    assert rt.host_log(0.9999) == math.log(0.9999)


def test_shardings_are_read_from_mlx_sharded_modules():
    """What set_sharding(model) reads: every parameter of a FullyShardedModule along axis
    0, an AllToShardedLinear's weight and bias along axis 0, a ShardedToAllLinear's weight
    along its last axis and not its bias (a group of one process builds them all)."""
    import mlx.nn as nn
    from mlx.nn.layers.distributed import FullyShardedModule

    group = mx.distributed.init()
    model = nn.Sequential(nn.AllToShardedLinear.from_linear(nn.Linear(4, 8), group=group),
                          nn.ShardedToAllLinear.from_linear(nn.Linear(8, 2), group=group),
                          FullyShardedModule(nn.Linear(2, 2), group=group))
    found = rt.shardings_of(model)
    assert {path: s.axis for path, s in found.items()} == {
        "layers.0.weight": 0, "layers.0.bias": 0, "layers.1.weight": -1,
        "layers.2.module.weight": 0, "layers.2.module.bias": 0}
    assert all(s.group is group for path, s in found.items() if "layers.2" not in path)
    opt = rt.GeneratedOptimizer.__new__(rt.GeneratedOptimizer)
    opt._shardings = {}
    rt.GeneratedOptimizer.set_sharding(opt, model)
    assert {p: s.axis for p, s in opt._shardings.items()} == \
        {p: s.axis for p, s in found.items()}
    with pytest.raises(ValueError, match="must be a Sharding"):
        rt.GeneratedOptimizer.set_sharding(opt, {"w": (0, group)})
