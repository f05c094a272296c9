"""afgen.report.mlx_graph: MLX's own graph (primitives, shapes, dtypes) and the eager traffic of it.

Every expected number here is derived by hand from the primitives MLX 0.32 emits, so a
change in MLX's lowering shows up as a readable diff rather than a silently wrong report.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import pytest

from afgen.report.mlx_graph import (
    Dispatches,
    GraphNode,
    KernelStandIns,
    LazyNode,
    MlxGraphError,
    Traffic,
    count_dispatches,
    graph_traffic,
    kernel_stand_ins,
    lazy_graph,
    mlx_adafactor_graph,
    mlx_adafactor_traffic,
    mlx_graph,
    parse_dot,
    step_dispatches,
)

F32 = "float32"
M = (64, 32)
N = 64 * 32


def _full(dtype=None):
    return mx.ones(M, dtype=dtype or mx.float32)


def test_elementwise_nodes_and_traffic():
    nodes = mlx_graph(lambda a, b: a * b + a, _full(), _full())
    full = (M, F32)
    assert nodes == [
        GraphNode("Multiply", (full, full), (full,)),
        GraphNode("Add", (full, full), (full,)),
    ]
    # The Add reads the product and `a` again; the names show the data flow.
    assert nodes[1].input_names == (nodes[0].output_names[0], nodes[0].input_names[0])
    # Two kernels, each reading two 8 KiB arrays and writing one.
    assert graph_traffic(nodes) == Traffic(launches=2, bytes_read=4 * 4 * N,
                                           bytes_written=2 * 4 * N)


def test_reduction():
    nodes = mlx_graph(lambda a: mx.sum(a, axis=-1), _full())
    assert nodes == [
        GraphNode("Reduce", ((M, F32),), (((64, 1), F32),)),
        GraphNode("Squeeze", (((64, 1), F32),), (((64,), F32),)),
    ]
    assert nodes[0].arguments[1] == (1,)  # reduced axes; arguments[0] is the reduce kind
    # One kernel: read the matrix, write 64 sums. The squeeze is a view.
    assert graph_traffic(nodes) == Traffic(launches=1, bytes_read=4 * N, bytes_written=4 * 64)


def test_float16_sizes():
    h = "float16"
    nodes = mlx_graph(lambda a, b: a * b + a, _full(mx.float16), _full(mx.float16))
    assert [n.outputs for n in nodes] == [((M, h),), ((M, h),)]
    assert graph_traffic(nodes) == Traffic(2, 4 * 2 * N, 2 * 2 * N)
    red = mlx_graph(lambda a: mx.sum(a, axis=-1), _full(mx.float16))
    assert graph_traffic(red) == Traffic(1, 2 * N, 2 * 64)
    # Mixing dtypes promotes through an AsType kernel: read 2 B, write 4 B per element.
    mixed = mlx_graph(lambda a, b: a * b, _full(mx.float16), _full())
    assert [n.primitive for n in mixed] == ["AsType", "Multiply"]
    assert graph_traffic(mixed) == Traffic(2, 2 * N + 2 * 4 * N, 4 * N + 4 * N)


def test_broadcast_inputs_are_read_at_source_size():
    row = mx.ones((64,))
    nodes = mlx_graph(lambda a, r: a * r[:, None] + 2.0, _full(), row)
    assert [n.primitive for n in nodes] == [
        "ExpandDims", "Broadcast", "Multiply", "Broadcast", "Add",
    ]
    # Multiply reads the matrix and the 64-float row once; Add reads the product and the
    # 4-byte scalar constant. Broadcast and ExpandDims are views.
    assert graph_traffic(nodes) == Traffic(
        launches=2,
        bytes_read=(4 * N + 4 * 64) + (4 * N + 4),
        bytes_written=2 * 4 * N,
    )


def test_reshape_copies_only_non_contiguous_views():
    x = mx.ones((8, 6, 4))
    free = mlx_graph(lambda a: a.reshape(48, 4) * 2.0, x)
    assert graph_traffic(free) == Traffic(1, 768 + 4, 768)
    # Reshaping a transpose needs a copy kernel (read 768, write 768) before the multiply.
    copied = mlx_graph(lambda a: a.transpose(1, 0, 2).reshape(-1) * 2.0, x)
    assert graph_traffic(copied) == Traffic(2, 768 + (768 + 4), 768 + 768)
    # A leading-axis slice is contiguous; its reshape is free and reads only the slice.
    sliced = mlx_graph(lambda a: a[2:4].reshape(-1) * 2.0, x)
    assert graph_traffic(sliced) == Traffic(1, 192 + 4, 192)


def test_unnamed_nodes_count_every_input_materialized():
    full, small = (M, F32), ((64, 1), F32)
    nodes = [
        GraphNode("Broadcast", (small,), (full,)),
        GraphNode("Multiply", (full, full), (full,)),
    ]
    # Without names the broadcast output cannot be tied to the Multiply's input.
    assert graph_traffic(nodes) == Traffic(1, 2 * 4 * N, 4 * N)


def test_errors_are_loud():
    with pytest.raises(TypeError, match="not mx.array"):
        mlx_graph(lambda a: a, 1.0)
    with pytest.raises(MlxGraphError, match="unknown MLX dtype"):
        graph_traffic([GraphNode("Abs", (((4,), "float128"),), (((4,), "float128"),))])


def _adafactor_fn(opt):
    def step(g, p, row, col, s):
        opt.state["step"] = s
        state = {"exp_avg_sq_row": row, "exp_avg_sq_col": col}
        new_p = opt.apply_single(g, p, state)
        return new_p, state["exp_avg_sq_row"], state["exp_avg_sq_col"]

    return step


def test_mlx_adafactor_traffic():
    g, p = mx.random.normal(M), mx.random.normal(M)
    row, col = mx.zeros((64,)), mx.zeros((32,))
    step = mx.array(1, mx.uint64)
    nodes = mlx_graph(_adafactor_fn(optim.Adafactor()), g, p, row, col, step)
    t = graph_traffic(nodes)
    per_element = t.per_element(N)
    print(f"\nmlx Adafactor {M} float32: {t.launches} launches, "
          f"{t.bytes_read} B read, {t.bytes_written} B written, {per_element:.2f} B/element")

    # At least read g and p and write p (12 B); an unfused update is far above that,
    # and far below 40 full-size passes.
    assert 12 < per_element < 160
    assert 20 <= t.launches <= 80
    # The full-size passes, from Adafactor.apply_single: reads square(p), sum, square(g),
    # +eps1, row mean, col mean, (r*c)*g [2], square, sum, /clip, lr*, p-update [2]
    # = 14; writes square(p), square(g), +eps1, r*c, *g, square, /clip, lr*, p-update = 9.
    assert t.bytes_read // (4 * N) == 14
    assert t.bytes_written // (4 * N) == 9

    # The library helper builds the same graph from the optimizer's own init_single.
    assert mlx_adafactor_graph(M) == nodes
    assert mlx_adafactor_traffic(M) == t

    # beta_1 adds beta1*m, (1-beta1)*u and their sum: 4 full reads, 3 full writes, plus the
    # two 4-byte scalar constants.
    t1 = mlx_adafactor_traffic(M, beta_1=0.9)
    print(f"mlx Adafactor {M} float32 beta_1=0.9: {t1.launches} launches, "
          f"{t1.per_element(N):.2f} B/element")
    assert t1.launches == t.launches + 3
    assert t1.bytes_total - t.bytes_total == 7 * 4 * N + 8


# ---------------------------------------------------------------------------------------
# Dispatches of a whole step, counted on MLX's lazy graph


def _one_tensor():
    return {"w": mx.zeros((8, 4))}, {"w": mx.ones((8, 4))}


def test_mlx_adam_dispatches_counted_by_hand():
    # mlx.optimizers.Adam.apply_single (bias_correction off): m = b1*m + (1-b1)*g is two
    # Multiply and an Add; v = b2*v + (1-b2)*square(g) adds a Square; the update
    # p - lr*m / (sqrt(v) + eps) is Sqrt, Add, Multiply, Divide, Subtract. Python scalars
    # enter as Broadcast views of constants. apply_gradients adds step + 1 (an Add).
    params, grads = _one_tensor()
    eager = step_dispatches(optim.Adam(1e-3), params, grads, compiled=False)
    assert dict(eager.by_primitive) == {"Multiply": 5, "Add": 3 + 1, "Square": 1, "Sqrt": 1,
                                        "Divide": 1, "Subtract": 1}
    assert eager == Dispatches(total=13, fused=0, kernels=0)
    # Compiled: every elementwise op of the tensor fuses into one group with three outputs
    # (p, m, v); the uint64 step increment is not connected to it and stays an Add.
    compiled = step_dispatches(optim.Adam(1e-3), params, grads, compiled=True)
    assert dict(compiled.by_primitive) == {"Compiled": 1, "Add": 1}
    assert compiled == Dispatches(total=2, fused=1, kernels=0)
    # The caller's tree is left as it was (mx.compile swaps the arrays it tracks).
    assert mx.array_equal(params["w"], mx.zeros((8, 4)))


def test_dispatches_grow_by_the_same_count_per_tensor():
    def count(n):
        shapes = {f"w{i}": mx.zeros((8, 4)) for i in range(n)}
        return step_dispatches(optim.Adam(1e-3), shapes, dict(shapes), compiled=False).total

    assert count(3) - count(2) == count(2) - count(1) == 12  # the step increment is shared


def test_views_launch_nothing_and_reshape_of_a_view_copies():
    x = mx.ones((8, 6, 4))
    mx.eval(x)
    # Reshaping an input is a view: only the Multiply launches (the 2.0 is a Broadcast).
    free = lazy_graph(x.reshape(48, 4) * 2.0)
    assert [n.primitive for n in free] == ["Reshape", "Broadcast", "Multiply"]
    assert count_dispatches(free) == Dispatches(total=1, fused=0, kernels=0)
    # A reshape of a transpose copies. Without shapes a slice is not known to be
    # contiguous, so its reshape is counted as a copy too (the count errs upwards).
    for view in (x.transpose(1, 0, 2), x[2:4]):
        nodes = lazy_graph(view.reshape(-1) * 2.0)
        assert count_dispatches(nodes) == Dispatches(total=2, fused=0, kernels=0)
        assert dict(count_dispatches(nodes).by_primitive) == {"Reshape": 1, "Multiply": 1}
    # Squeeze and ExpandDims keep the layout: no copy for the reshape after them.
    kept = lazy_graph(mx.expand_dims(x, 0).squeeze(0).reshape(-1) + 1.0)
    assert count_dispatches(kept).total == 1


def test_lazy_graph_keeps_what_the_exported_trace_merges():
    a, b = mx.ones((4, 4)), mx.ones((4, 4))
    mx.eval(a, b)
    # Eager MLX computes a*b twice; mx.export_function's trace merges the duplicate.
    assert count_dispatches(lazy_graph(a * b + a * b)).total == 3
    assert graph_traffic(mlx_graph(lambda a, b: a * b + a * b, a, b)).launches == 2


def test_compiled_groups_count_once():
    a = mx.ones((4, 4))
    mx.eval(a)
    # exp(a) + 1, * 2: three elementwise ops fuse into one group; the sum stays a kernel.
    out = mx.compile(lambda a: (mx.exp(a) + 1) * 2)(a)
    nodes = lazy_graph(mx.sum(out))
    assert [n.primitive for n in nodes][0].startswith("Compiled")
    assert count_dispatches(nodes) == Dispatches(total=2, fused=1, kernels=0)


def test_fused_step_counts_stand_in_launches():
    import generated.adam as afgen_adam

    params, grads = _one_tensor()
    with kernel_stand_ins(afgen_adam) as stand_ins:
        opt = afgen_adam.Adam(1e-3, backend="metal")
        d = step_dispatches(opt, params, grads, compiled=False, stand_ins=stand_ins)
    # One kernel updates p, m and v, its scalars each a buffer of its own (no copies);
    # the step increment is the shared Add. The bias corrections are MLX ops.
    assert stand_ins.launches == 1 and d.kernels == 1
    by = dict(d.by_primitive)
    assert by["Depends"] == 1 and by["Add"] == 1 and "Concatenate" not in by
    assert d.total == sum(by.values()) == d.kernels + d.ops
    # Read without the stand-in's name, the Depends node is a view and the launch is lost.
    runner = KernelStandIns()
    a = mx.ones((4,))
    mx.eval(a)
    out = runner("metal", "k", ["a"], ["o"], "", "", {
        "inputs": [a * 3], "output_shapes": [(4,)], "output_dtypes": [mx.float32]})
    nodes = lazy_graph(out[0] + 1)  # Multiply, the launch, Add
    assert count_dispatches(nodes, stand_in=runner.primitive).total == 3
    assert count_dispatches(nodes).total == 2


def test_parse_dot_refuses_unknown_lines():
    text = 'digraph {\n{ 1 [label ="Add", shape=rectangle]; }\n"A" -> 1\n1 -> "B"\n}\n'
    assert parse_dot(text) == [LazyNode("Add", ("A",), ("B",))]
    with pytest.raises(MlxGraphError, match="unexpected line 3"):
        parse_dot(text.replace('"A" -> 1', 'A -- 1'))


def test_calls_of_one_compiled_function_count_once_each():
    """MLX's DOT export names a node by its primitive, which every call of a compiled
    function shares: each call is still its own dispatch."""
    twice = mx.compile(lambda x: x * 2 + 1)
    a, b = mx.ones((3,)), mx.ones((5,))
    mx.eval(a, b)
    d = count_dispatches(lazy_graph(twice(a), twice(a + 0), twice(b)))
    assert d.fused == 3 and d.total == 4  # three calls and the Add
