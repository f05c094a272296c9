"""Memory traffic of a kernel plan: per pass, per element, against a computed lower bound.

A fused pass reads each full-size array it needs once and writes each full-size output
once; everything else it touches (rows, cols, partial sums) is O(rows + cols). The lower
bound asks, for every full-size array, in how few passes it *must* be read: a reduction
over it can run in any pass from the one where its inputs exist to the one before its
result is first needed, so the minimum is an interval point cover (greedy is optimal).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from afgen.lower.plan import KernelPlan, _level, reduction_levels
from afgen.spec.model import GRAD, PARAM
from afgen.spec.shapes import ReduceAxes, ShapeClass


@dataclass(frozen=True)
class PassTraffic:
    index: int
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    bytes_read: int  # per element of the parameter
    bytes_written: int


def _bytes(name: str, param_bytes: int, state_bytes: int) -> int:
    return param_bytes if name.removeprefix("new_") in (GRAD, PARAM) else state_bytes


MATRIX_OPERAND_BYTES = 4  # a matrix block's operand, written out in float32


def plan_traffic(plan: KernelPlan, param_bytes: int = 4, state_bytes: int = 4
                 ) -> list[PassTraffic]:
    out = []
    for p in plan.passes:
        operands = tuple(str(s.name) for s in p.reductions if s.reduce is ReduceAxes.MATRIX)
        written = sum(_bytes(n, param_bytes, state_bytes) for n in p.writes)
        out.append(PassTraffic(p.index, p.reads, p.writes + operands,
                               sum(_bytes(n, param_bytes, state_bytes) for n in p.reads),
                               written + MATRIX_OPERAND_BYTES * len(operands)))
    return out


def _depends(plan: KernelPlan) -> dict[str, set[sympy.Symbol]]:
    """Reduction symbols each glue value depends on (transitively)."""
    reductions = {r.name: r for r in plan.program.reductions}
    definitions: dict[str, sympy.Basic] = {}
    for glue in plan.glue:
        definitions.update({str(s.name): s.expr for s in glue.steps})
        definitions.update({name: expr for name, expr in glue.results})
    memo: dict[str, set[sympy.Symbol]] = {}

    def resolve(name: str) -> set[sympy.Symbol]:
        if name not in memo:
            memo[name] = set()
            symbol = sympy.Symbol(name, real=True)
            deps: set[sympy.Symbol] = set()
            if symbol in reductions:
                deps.add(symbol)
                free = reductions[symbol].operand.free_symbols
            else:
                free = definitions.get(name, sympy.S.Zero).free_symbols
            for s in free:
                deps |= resolve(str(s))
            memo[name] = deps
        return memo[name]

    return {name: resolve(name) for name in definitions}


def _first_consumer(plan: KernelPlan) -> dict[sympy.Symbol, int]:
    deps = _depends(plan)
    consumer: dict[sympy.Symbol, int] = {}
    for p in plan.passes:
        needed: set[sympy.Symbol] = set()
        for name in p.small_inputs:
            needed |= deps.get(name, set())
        for step in p.schedule.steps:
            needed |= {s for s in step.expr.free_symbols if s in plan.program.shapes}
        for symbol in needed:
            consumer.setdefault(symbol, p.index)
    return consumer


def lower_bound_bytes(plan: KernelPlan, param_bytes: int = 4, state_bytes: int = 4) -> int:
    """Fewest bytes per element any pass schedule of this update can move."""
    levels = reduction_levels(plan.program)
    consumer = _first_consumer(plan)
    last = len(plan.passes) - 1
    intervals: dict[str, list[tuple[int, int]]] = {}
    for r in plan.program.reductions:
        if r.operand_shape is not ShapeClass.FULL:
            continue
        start = _level(r.operand, levels)
        end = consumer.get(r.name, last + 1) - 1
        end = max(start, min(end, last))
        for symbol in r.operand.free_symbols:
            if plan.program.shapes.get(symbol) is ShapeClass.FULL:
                intervals.setdefault(str(symbol), []).append((start, end))
    for name in plan.passes[-1].writes:
        for symbol in plan.program.outputs[name.removeprefix("new_")].free_symbols:
            if plan.program.shapes.get(symbol) is ShapeClass.FULL:
                intervals.setdefault(str(symbol), []).append((last, last))
    total = sum(_bytes(n, param_bytes, state_bytes) for n in plan.passes[-1].writes)
    # a matrix block's operand is written out whole (its result is a full read above)
    total += MATRIX_OPERAND_BYTES * sum(r.axes is ReduceAxes.MATRIX
                                        for r in plan.program.reductions)
    for name, spans in intervals.items():
        total += _point_cover(spans) * _bytes(name, param_bytes, state_bytes)
    return total


def _point_cover(spans: list[tuple[int, int]]) -> int:
    """Fewest points hitting every interval (sort by end, greedy)."""
    count, point = 0, None
    for start, end in sorted(spans, key=lambda s: s[1]):
        if point is None or point < start:
            point = end
            count += 1
    return count


def reference_traffic(reference: str, hyper: dict, shape: tuple[int, ...], dtype: str
                      ) -> tuple[int, float] | None:
    """(launches, bytes per element) of the reference MLX optimizer's own graph, or None
    when the spec names no ``mlx.optimizers`` class."""
    import mlx.optimizers as optim

    from afgen.report.mlx_graph import graph_traffic, optimizer_graph

    if not reference.startswith("mlx.optimizers."):
        return None
    cls = getattr(optim, reference.rsplit(".", 1)[1], None)
    if cls is None:
        return None
    traffic = graph_traffic(optimizer_graph(cls(**hyper), shape, dtype))
    size = max(1, int(__import__("math").prod(shape)))
    return traffic.launches, traffic.bytes_total / size


__all__ = ["PassTraffic", "lower_bound_bytes", "plan_traffic", "reference_traffic"]
