"""The kernel-plan IR and its construction from a specialised Program.

Two views of the same specialisation:

* ``flat``: one straight-line schedule with CSE over the whole update. Eager array
  backends (MLX ops, the NumPy oracle) want every shared value computed once.
* ``glue`` + ``passes``: what a fused GPU backend launches. A *pass* streams the
  full-size arrays once, computing per-element values (recomputed, never stored) and
  the reductions whose operands are ready; *glue* computes the small values (scalars,
  batch, rows, cols) that the next pass needs, from the reductions of earlier passes.
  Pass ``k`` may use glue ``0..k``; full-size outputs are written by the last pass, and
  a final glue after it finishes small values that depend on the last pass's reductions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from afgen.lower.config import StaticConfig
from afgen.lower.specialise import Program, Reduction, reduction_kind, shape_of
from afgen.names import SymbolTable
from afgen.spec.ops import Negate, Where
from afgen.spec.shapes import ReduceAxes, ShapeClass


@dataclass(frozen=True)
class Step:
    """``name = expr`` or, with ``reduce`` set, ``name = reduce(expr)``."""

    name: sympy.Symbol
    expr: sympy.Expr
    shape: ShapeClass
    reduce: ReduceAxes | None = None
    how: str = "sum"  # of a reduction: "sum", "mean", "max" or "min"
    operand_shape: ShapeClass | None = None
    block: int = -1  # of a matrix block's step (reduce is MATRIX)

    @property
    def is_reduction(self) -> bool:
        return self.reduce is not None

    @property
    def kind(self) -> str:
        return "assign" if self.reduce is None else reduction_kind(self.reduce, self.how,
                                                                   self.block)


@dataclass(frozen=True)
class Schedule:
    """Straight-line code: steps in dependency order, then named results."""

    steps: tuple[Step, ...]
    results: tuple[tuple[str, sympy.Expr], ...]


@dataclass(frozen=True)
class Pass:
    """One streaming pass over the full-size arrays."""

    index: int
    reads: tuple[str, ...]
    small_inputs: tuple[str, ...]
    schedule: Schedule

    @property
    def reductions(self) -> tuple[Step, ...]:
        return tuple(s for s in self.schedule.steps if s.is_reduction)

    @property
    def writes(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.schedule.results)


@dataclass(frozen=True)
class KernelPlan:
    """Everything a backend needs to render one specialisation."""

    configs: tuple[StaticConfig, ...]
    program: Program
    flat: Schedule
    glue: tuple[Schedule, ...]
    passes: tuple[Pass, ...]

    @property
    def config(self) -> StaticConfig:
        return self.configs[0]

    @property
    def factored(self) -> bool:
        return self.config.factored

    @property
    def name(self) -> str:
        used = frozenset(self.program.used_statics)
        return self.config.restricted(used).ident

    def shape_of(self, expr: sympy.Basic) -> ShapeClass:
        return self.program.shape_of(expr)


class _Namer:
    """Temporaries: ``<prefix><n>``, or the spec's name for a value an equation assigned
    (``beta2t``, ``u_1`` for a second ``u``), always fresh in the plan's symbol table."""

    def __init__(self, prefix: str, names: SymbolTable, value_names: dict[sympy.Basic, str]):
        self.prefix = prefix
        self.count = 0
        self.names = names
        self.value_names = value_names

    def __iter__(self):
        return self

    def __next__(self) -> sympy.Symbol:
        symbol = sympy.Symbol(self.names.fresh(f"{self.prefix}{self.count}"), real=True)
        self.count += 1
        return symbol

    def for_value(self, expr: sympy.Basic) -> sympy.Symbol:
        if expr in self.value_names:
            return sympy.Symbol(self.names.fresh(self.value_names[expr]), real=True)
        return next(self)

    def rename_values(self, replacements: list[tuple[sympy.Symbol, sympy.Expr]],
                      exprs: list[sympy.Expr]) -> tuple[list, list]:
        """Rename CSE temporaries that hold exactly an equation's value."""
        expanded: dict[sympy.Symbol, sympy.Expr] = {}
        renames: dict[sympy.Symbol, sympy.Symbol] = {}
        for symbol, expr in replacements:
            expanded[symbol] = expr.xreplace(expanded)
            if expanded[symbol] in self.value_names:
                renames[symbol] = self.for_value(expanded[symbol])
        if not renames:
            return replacements, exprs
        return ([(renames.get(s, s), e.xreplace(renames)) for s, e in replacements],
                [e.xreplace(renames) for e in exprs])


def schedule(results: dict[str, sympy.Expr], reductions: list[Reduction],
             shapes: dict[sympy.Symbol, ShapeClass], namer: _Namer,
             defs: list[tuple[sympy.Symbol, sympy.Expr]] = ()) -> Schedule:
    """CSE ``results``, named ``defs`` and the reduction operands together, then order
    everything so each step follows what it reads. ``shapes`` gains the temporaries'
    classes."""
    defs = list(defs)
    exprs = [r.operand for r in reductions] + [e for _, e in defs] + list(results.values())
    replacements, reduced = sympy.cse(exprs, symbols=namer, order="none")
    replacements, reduced = namer.rename_values(replacements, reduced)
    nodes: dict[sympy.Symbol, Step] = {}
    aliases: dict[sympy.Symbol, sympy.Symbol] = {}
    for symbol, expr in replacements:
        shapes[symbol] = shape_of(expr, shapes)
        nodes[symbol] = Step(symbol, expr, shapes[symbol])
    for reduction, operand in zip(reductions, reduced):
        nodes[reduction.name] = Step(reduction.name, operand, reduction.shape, reduction.axes,
                                     reduction.how, shape_of(operand, shapes), reduction.block)
    def_exprs = reduced[len(reductions):len(reductions) + len(defs)]
    for (symbol, _), expr in zip(defs, def_exprs):
        if expr in nodes and not nodes[expr].is_reduction:  # CSE named the whole value:
            nodes[symbol] = replace(nodes.pop(expr), name=symbol)  # one name, no alias
            aliases[expr] = symbol
            continue
        nodes[symbol] = Step(symbol, expr, shapes[symbol])
    for name, expr in zip(results, reduced[len(reductions) + len(defs):]):
        if not name.startswith("new_") and expr in nodes and not nodes[expr].is_reduction:
            symbol = sympy.Symbol(name, real=True)  # a named small value: keep its name
            nodes[symbol] = replace(nodes.pop(expr), name=symbol)
            aliases[expr] = symbol
    if aliases:
        nodes = {s: replace(n, expr=n.expr.xreplace(aliases)) for s, n in nodes.items()}
        reduced = [e.xreplace(aliases) for e in reduced]
    ordered: list[Step] = []
    done: set[sympy.Symbol] = set()

    def visit(symbol: sympy.Symbol) -> None:
        if symbol in done or symbol not in nodes:
            return
        done.add(symbol)
        for dep in sorted(nodes[symbol].expr.free_symbols, key=str):
            visit(dep)
        ordered.append(nodes[symbol])

    for reduction in reductions:
        visit(reduction.name)
    out_exprs = reduced[len(reductions) + len(defs):]
    for expr in out_exprs:
        for dep in sorted(expr.free_symbols, key=str):
            visit(dep)
    # A result that a step already computes under its own name is that step.
    return Schedule(tuple(ordered), tuple((name, expr) for name, expr in zip(results, out_exprs)
                                          if expr != sympy.Symbol(name, real=True)))


def reduction_levels(program: Program) -> dict[sympy.Symbol, int]:
    """Level of a reduction = number of streaming passes needed before its value exists."""
    return _reduction_levels(program.reductions)


def _reduction_levels(reductions: list[Reduction]) -> dict[sympy.Symbol, int]:
    levels: dict[sympy.Symbol, int] = {}
    for r in reductions:
        below = _level(r.operand, levels)
        levels[r.name] = below + 1 if r.operand_shape is ShapeClass.FULL else below
    return levels


def _level(expr: sympy.Basic, levels: dict[sympy.Symbol, int]) -> int:
    return max((levels[s] for s in expr.free_symbols if s in levels), default=0)


class _Hoister:
    """Pulls maximal small (non-full) subexpressions out of per-element expressions so
    they are computed once in glue, not per element."""

    def __init__(self, shapes: dict[sympy.Symbol, ShapeClass], levels: dict[sympy.Symbol, int],
                 namer: _Namer):
        self.shapes = shapes
        self.levels = levels
        self.defs: dict[sympy.Expr, sympy.Symbol] = {}
        self.namer = namer

    def small_defs(self) -> list[tuple[sympy.Symbol, sympy.Expr]]:
        return [(symbol, expr) for expr, symbol in self.defs.items()]

    def hoist(self, expr: sympy.Expr) -> sympy.Expr:
        """Name every maximal small sub-tree; the tree itself is kept as written (no
        regrouping: see ``afgen.spec.ops``)."""
        shape = shape_of(expr, self.shapes)
        if shape.is_small:
            return self._name(expr)
        if expr.is_Atom or not expr.args:
            return expr
        if isinstance(expr, sympy.Piecewise):  # its arguments are (value, condition) pairs
            return Where(*[(self.hoist(value), self.hoist(cond))
                                     for value, cond in expr.args])
        return expr.func(*[self.hoist(a) for a in expr.args])

    def _name(self, expr: sympy.Expr) -> sympy.Expr:
        if expr.is_Atom or (expr.is_Number):
            return expr
        if isinstance(expr, Negate):  # pass x, not both x and -x: negating is free
            return Negate(self._name(expr.args[0]))
        if expr not in self.defs:
            symbol = self.namer.for_value(expr)
            self.defs[expr] = symbol
            self.shapes[symbol] = shape_of(expr, self.shapes)
            self.levels[symbol] = _level(expr, self.levels)
        return self.defs[expr]


def _flat_schedule(program: Program, changed: dict[str, sympy.Expr],
                   shapes: dict[sympy.Symbol, ShapeClass], levels: dict[sympy.Symbol, int]
                   ) -> Schedule:
    """Whole-update schedule for eager backends: small sub-trees are computed once as
    small arrays, before the full-size operations that use them."""
    names = SymbolTable(program.atom_names)
    hoister = _Hoister(shapes, levels, _Namer("h", names, program.value_names))
    reductions = [replace(r, operand=hoister.hoist(r.operand))
                  if r.operand_shape is ShapeClass.FULL else r for r in program.reductions]
    results = {f"new_{k}": hoister.hoist(v) if shape_of(v, shapes) is ShapeClass.FULL else v
               for k, v in changed.items()}
    return schedule(results, reductions, shapes, _Namer("x", names, program.value_names),
                    hoister.small_defs())


def pass_reductions(reductions: list[Reduction], foldable: frozenset[ReduceAxes],
                    shapes: dict[sympy.Symbol, ShapeClass]) -> list[Reduction]:
    """The reductions as passes and glue compute them, when a pass kernel folds only the
    axes in ``foldable``: a matrixwise reduction of a full value becomes a rowwise one in
    the pass and a matrixwise one of its (small) result in the glue (every row has the
    same length, so a mean of row means is the mean, and a max of row maxima the max).
    ``shapes`` gains the row values."""
    out = []
    taken = {str(s) for s in shapes}
    for r in reductions:
        if r.operand_shape is not ShapeClass.FULL or r.axes in foldable:
            out.append(r)
            continue
        if r.axes is not ReduceAxes.MATRIXWISE or ReduceAxes.ROWWISE not in foldable:
            raise ValueError(f"{r.kind} of a full value: no pass kernel can fold it")
        name, suffix = f"{r.name}_rows", 1
        while name in taken:
            name, suffix = f"{r.name}_rows_{suffix}", suffix + 1
        taken.add(name)
        rows = sympy.Symbol(name, real=True)
        shapes[rows] = ShapeClass.ROW
        out.append(Reduction(rows, ReduceAxes.ROWWISE, r.how, r.operand, ShapeClass.FULL,
                             ShapeClass.ROW))
        out.append(Reduction(r.name, r.axes, r.how, rows, ShapeClass.ROW, r.shape))
    return out


def build_plan(program: Program, configs: list[StaticConfig],
               foldable: frozenset[ReduceAxes] = frozenset(ReduceAxes)) -> KernelPlan:
    """Lower a specialised program to the flat schedule and the pass/glue plan, whose
    passes fold only the reductions in ``foldable`` (the rest go to the glue)."""
    shapes = dict(program.shapes)
    changed = {k: v for k, v in program.outputs.items() if v != sympy.Symbol(k, real=True)}
    flat = _flat_schedule(program, changed, shapes, dict(reduction_levels(program)))

    planned = pass_reductions(program.reductions, foldable, shapes)
    levels = _reduction_levels(planned)
    full_reductions = [r for r in planned if r.operand_shape is ShapeClass.FULL]
    full_outputs = {k: v for k, v in changed.items() if shape_of(v, shapes) is ShapeClass.FULL}
    small_outputs = {k: v for k, v in changed.items() if k not in full_outputs}
    last = max([_level(r.operand, levels) for r in full_reductions]
               + [_level(v, levels) for v in full_outputs.values()] + [0])

    names = SymbolTable(program.atom_names)
    hoister = _Hoister(shapes, levels, _Namer("s", names, program.value_names))
    passes = []
    for index in range(last + 1):
        reductions = [replace(r, operand=hoister.hoist(r.operand))
                      for r in full_reductions if _level(r.operand, levels) == index]
        outputs = ({f"new_{k}": hoister.hoist(v) for k, v in full_outputs.items()}
                   if index == last else {})
        sched = schedule(outputs, reductions, shapes,
                         _Namer(f"x{index}_", names, program.value_names))
        used = set().union(*[s.expr.free_symbols for s in sched.steps],
                           *[e.free_symbols for _, e in sched.results])
        defined = {s.name for s in sched.steps}
        reads = sorted(str(s) for s in used - defined if shapes.get(s) is ShapeClass.FULL)
        small = sorted(str(s) for s in used - defined
                       if s in shapes and shapes[s] is not ShapeClass.FULL)
        passes.append(Pass(index, tuple(reads), tuple(small), sched))

    small_reductions = [r for r in planned if r.operand_shape is not ShapeClass.FULL]
    glue = []
    for index in range(last + 2):  # glue k runs before pass k; the last one after all passes
        values = {str(sym): expr for sym, expr in hoister.small_defs()
                  if levels[sym] == index}
        values.update({f"new_{k}": v for k, v in small_outputs.items()
                       if _level(v, levels) == index})
        reductions = [r for r in small_reductions if levels[r.name] == index]
        glue.append(schedule(values, reductions, shapes,
                             _Namer(f"g{index}_", names, program.value_names)))
    program.shapes.update(shapes)
    return KernelPlan(tuple(configs), program, flat, tuple(glue), tuple(passes))
