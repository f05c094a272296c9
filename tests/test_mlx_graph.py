"""afgen.report.mlx_graph: MLX's own graph (primitives, shapes, dtypes) and the eager traffic of it.

Every expected number here is derived by hand from the primitives MLX 0.32 emits, so a
change in MLX's lowering shows up as a readable diff rather than a silently wrong report.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import pytest

from afgen.report.mlx_graph import (
    GraphNode,
    MlxGraphError,
    Traffic,
    graph_traffic,
    mlx_adafactor_graph,
    mlx_adafactor_traffic,
    mlx_graph,
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
