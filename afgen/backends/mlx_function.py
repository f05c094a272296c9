"""The MLX-ops update: the spec's statements as one readable method per layout.

MLX's own optimizers are a few lines of array code with the hyperparameters read from
``self`` and plain ``if``s on options; this renders a spec the same way. Each equation
becomes one line under the spec's name, in the spec's order (so the float32 program is
the spec's), a branch on static options becomes an ``if`` on ``self``, a branch on the
layout is resolved (one method per layout), reductions are the base class's accurate ones
(``self._mean``; MLX's own under precision="param"), and state is read where first used
and written where assigned. Nothing is specialised here: the fused kernels specialise, where
it buys speed (afgen/lower/).

Small values stay small, in the layout their state has (row ``(*B, M)``, col ``(*B, N)``,
batch ``(*B,)``, scalar ``()``), as in MLX's Adafactor: a row's arithmetic is done once
per row, not once per element of a broadcast ``(*B, M, 1)`` view. Where a small value
meets a larger one it is lifted explicitly (``r[..., None]``, ``c[..., None, :]``,
``_rt.once(s)`` for a scalar array), which is also what keeps ``mx.compile`` from fusing
the small value's arithmetic into the full-size loop and recomputing it per element.
Lifting moves no arithmetic: every operation is the spec's, on the same values, in the
spec's order.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy.core.function import AppliedUndef
from sympy.printing.precedence import PRECEDENCE

from afgen.backends.printers import MLXPrinter, is_host_condition, is_wide, python_code
from afgen.names import SymbolTable
from afgen.spec import ops
from afgen.spec.expressions import reduction_of
from afgen.spec.model import (
    DTYPE_EPS,
    FACTORED,
    GRAD,
    LAYOUT_COLS,
    LAYOUT_ROWS,
    PARAM,
    STEP,
    Branch,
    MatrixBlock,
    Spec,
    Statement,
)
from afgen.spec.ops import Op, Rounded
from afgen.spec.shapes import ReduceAxes, ShapeClass, join_additive, join_multiplicative

SMALL_TO_FULL = {ShapeClass.ROW: "[..., None]", ShapeClass.COL: "[..., None, :]",
                 ShapeClass.BATCH: "[..., None, None]"}


# Sums and means accurate at any size, every reduction whole across a sharded axis
# (afgen/runtime.py).
STATEMENT_REDUCTIONS = {"sum": "self._sum", "mean": "self._mean", "max": "self._max",
                        "min": "self._min"}


def reduction_code(how: str, operand: str, axes: ReduceAxes, operand_class: ShapeClass
                   ) -> str:
    """One reduction in the compact layout: rowwise folds the last axis of a full value,
    colwise the one before it, matrixwise both (or the one axis of a row or col value)."""
    op = STATEMENT_REDUCTIONS[how]
    of = "" if operand_class is ShapeClass.FULL else f", of={operand_class.label!r}"
    if axes is ReduceAxes.ALL:
        return f"{op}({operand}{of})"
    if axes is ReduceAxes.ROWWISE:
        axis = "-1"
    elif axes is ReduceAxes.COLWISE:
        axis = "-2"
    else:
        axis = "(-2, -1)" if operand_class is ShapeClass.FULL else "-1"
    return f"{op}({operand}, axis={axis}{of})"


class Lift(Op):
    """A small value where a larger one is computed: (value, its class, the larger class).
    Printing only: it aligns axes (and keeps the value computed once); no arithmetic."""

    nargs = 3


def _join(expr: sympy.Basic, classes: list[ShapeClass]) -> ShapeClass:
    # a product and a min/max of a row and a col are full (an outer product or extremum)
    outer = (ops.Times, ops.Divide, ops.Minimum, ops.Maximum)
    join = join_multiplicative if isinstance(expr, outer) else join_additive
    out = ShapeClass.SCALAR
    for shape in classes:
        out = join(out, shape)
    return out


class _Layout:
    """The shape class of every sub-expression in the compact layout, and the expression
    with each small operand of a larger operation lifted. ``host`` is whether a scalar
    is a Python number (hyperparameters and literals), which broadcasts for free."""

    def __init__(self, classes: dict[str, ShapeClass], arrays: set[str]):
        self.classes = classes
        self.arrays = arrays
        self.reduced: dict[sympy.Basic, ShapeClass] = {}

    def is_array(self, expr: sympy.Basic) -> bool:
        return (any(s.name in self.arrays for s in expr.free_symbols)
                or any(reduction_of(a) for a in expr.atoms(AppliedUndef)))

    def lift(self, expr: sympy.Basic, to: ShapeClass, shape: ShapeClass) -> sympy.Basic:
        if shape >= to or (shape is ShapeClass.SCALAR and
                           (to is not ShapeClass.FULL or not self.is_array(expr))):
            return expr
        return Lift(expr, sympy.Integer(int(shape)), sympy.Integer(int(to)))

    def walk(self, expr: sympy.Basic) -> tuple[sympy.Basic, ShapeClass]:
        if isinstance(expr, sympy.Symbol):
            return expr, self.classes.get(expr.name, ShapeClass.SCALAR)
        if not expr.args:
            return expr, ShapeClass.SCALAR
        found = reduction_of(expr) if isinstance(expr, AppliedUndef) else None
        if found is not None:
            operand, shape = self.walk(expr.args[0])
            out = expr.func(operand)
            self.reduced[out] = shape
            return out, found[0].result(shape)
        if isinstance(expr, sympy.Piecewise):
            pieces = [(self.walk(v), self.walk(c)) for v, c in expr.args]
            to = max(s for (_, s), _ in pieces)
            # A scalar condition (a Python bool, or a 0-D array such as ``t == 1``)
            # broadcasts as it is.
            return ops.Where(*((self.lift(v, to, s), c if is_host_condition(c)
                                or cs is ShapeClass.SCALAR else self.lift(c, to, cs))
                               for (v, s), (c, cs) in pieces)), to
        walked = [self.walk(a) for a in expr.args]
        if isinstance(expr, Op) and len(walked) == 1:
            return expr.func(walked[0][0]), walked[0][1]
        to = _join(expr, [s for _, s in walked])
        return expr.func(*(self.lift(a, to, s) for a, s in walked)), to


@dataclass(frozen=True)
class LayoutFunction:
    """One rendered method: its name, what it updates, and its body lines."""

    name: str
    factored: bool
    lines: tuple[str, ...]


class _SpecPrinter(MLXPrinter):
    """MLX ops over the spec's names: hyperparameters read from ``self``, reductions in
    the broadcast layout, equation values rounded to the compute dtype."""

    def __init__(self, wide: frozenset[str], rename: dict[str, str], cdt: str,
                 reduced: dict[sympy.Basic, ShapeClass]):
        super().__init__(wide, cdt)
        self.rename = rename
        self.reduced = reduced

    def _print_Symbol(self, expr: sympy.Symbol) -> str:
        return self.rename.get(expr.name, expr.name)

    def host_select(self, pieces: list[tuple[sympy.Basic, sympy.Basic]], last: sympy.Basic
                    ) -> str:
        out = self._print(last)
        for value, condition in reversed(pieces):
            out = f"({self._print(value)} if {host_code(condition, self.rename)} else {out})"
        return out

    def _print_Function(self, expr: sympy.Basic) -> str:
        found = reduction_of(expr) if isinstance(expr, AppliedUndef) else None
        if found is None:
            return super()._print_Function(expr)
        axes, how = found
        return reduction_code(how, self._print(expr.args[0]), axes, self.reduced[expr])

    def _print_Lift(self, expr: Lift) -> str:
        value, shape, to = expr.args
        shape = ShapeClass(int(shape))
        if shape is ShapeClass.SCALAR:
            return f"_rt.once({self._print(value)})"
        text = self.operand(value, PRECEDENCE["Atom"], False)
        return text + (SMALL_TO_FULL[shape] if ShapeClass(int(to)) is ShapeClass.FULL
                       else "[..., None]")


def hyperparameter_reads(spec: Spec, cdt: str) -> dict[str, str]:
    """How each numeric hyperparameter value reads inside a generated optimizer, by its
    expression name: ``self.<name>``, a pair's part ``self.<pair>[i]``, and a schedule's
    value from ``self.state`` (where MLX keeps it) in the compute dtype ``cdt``."""
    reads: dict[str, str] = {}
    for h in spec.hyperparameters:
        if h.kind == "schedule":
            reads[h.name] = f'_rt.cast(self.state["{h.name}"], {cdt})'
        elif h.is_tuple:
            reads.update({c: f"self.{h.name}[{i}]" for i, c in enumerate(h.component_names)})
        elif not h.is_static:
            reads[h.name] = f"self.{h.name}"
    return reads


def host_code(condition: sympy.Basic, code: dict[str, str]) -> str:
    """A condition on static options as Python over ``self``."""
    return python_code(condition.xreplace(
        {s: sympy.Symbol(code[s.name]) for s in condition.free_symbols if s.name in code}))


def _without_outer_parentheses(text: str) -> str:
    if not text.startswith("("):
        return text
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[1:-1] if index == len(text) - 1 else text
    return text


class _Renderer:
    def __init__(self, spec: Spec, factored: bool, static_code: dict[str, str],
                 names: SymbolTable):
        self.spec = spec
        self.factored = factored
        self.static_code = static_code
        self.names = names.child()
        self.gradient, self.parameter, self.state, self.cdt = (
            self.names.fresh(n) for n in ("gradient", "parameter", "state", "cdt"))
        self.state_shapes = {s.name: s.shape for s in spec.state}
        self.rename = self._hyper_code()
        self.lines: list[str] = []
        full = {GRAD: ShapeClass.FULL, PARAM: ShapeClass.FULL}
        self.layout = _Layout({**self.state_shapes, **full}, {
            *full, STEP, *self.state_shapes,
            *(h.name for h in spec.hyperparameters if h.kind == "schedule")})

    def _hyper_code(self) -> dict[str, str]:
        """How each hyperparameter value and static predicate reads inside the method."""
        code = {**self.static_code, **hyperparameter_reads(self.spec, self.cdt)}
        code[FACTORED] = str(self.factored)
        return code

    def render(self) -> list[str]:
        loads = [f"{self.cdt} = mx.float32 if self.precision == \"float32\" "
                 f"else {self.parameter}.dtype",
                 f"{GRAD} = _rt.cast({self.gradient}, {self.cdt})",
                 f"{PARAM} = _rt.cast({self.parameter}, {self.cdt})"]
        used = self._atoms_used()
        if STEP in used:
            loads.append(f"{STEP} = self.step.astype(mx.float32)")
        if DTYPE_EPS in used:
            loads.append(f"{DTYPE_EPS} = mx.finfo({self.parameter}.dtype).eps")
        if self.factored:  # the row and col axes' sizes (the update sees them last)
            loads += [f"{name} = {self.gradient}.shape[{axis}]"
                      for name, axis in ((LAYOUT_ROWS, -2), (LAYOUT_COLS, -1)) if name in used]
        self._block(self.spec.update, 1, set(), {STEP})
        return [*("    " + line for line in loads), *self.lines,
                f"    return self._write_parameter({PARAM}, {self.parameter})"]

    def _atoms_used(self) -> set[str]:
        return {str(s) for e in self.spec.equations() for s in e.value.free_symbols}

    def _condition(self, condition: sympy.Basic) -> sympy.Basic:
        return condition.subs(sympy.Symbol(FACTORED),
                              sympy.true if self.factored else sympy.false)

    def _block(self, statements: tuple[Statement, ...], depth: int, loaded: set[str],
               wide: set[str]) -> None:
        indent = "    " * depth
        for statement in statements:
            if isinstance(statement, MatrixBlock):
                self._matrix_block(statement, indent, loaded)
                continue
            if isinstance(statement, Branch):
                condition = self._condition(statement.condition)
                if condition in (sympy.true, sympy.false):
                    arm = statement.then if condition == sympy.true else statement.orelse
                    self._block(arm, depth, loaded, wide)
                    continue
                text = host_code(condition, self.static_code)
                self.lines.append(f"{indent}if {_without_outer_parentheses(text)}:")
                self._arm(statement.then, depth + 1, loaded, wide)
                if statement.orelse:
                    self.lines.append(f"{indent}else:")
                    self._arm(statement.orelse, depth + 1, loaded, wide)
                continue
            self._equation(statement, indent, loaded, wide)

    def _arm(self, statements: tuple[Statement, ...], depth: int, loaded: set[str],
             wide: set[str]) -> None:
        start = len(self.lines)
        self._block(statements, depth, set(loaded), set(wide))
        if len(self.lines) == start:
            self.lines.append("    " * depth + "pass")

    def _equation(self, eq: Statement, indent: str, loaded: set[str], wide: set[str]) -> None:
        # ``x if factored else y`` reads only the layout's own arm (and its state)
        value = eq.value.xreplace(
            {sympy.Symbol(FACTORED): sympy.true if self.factored else sympy.false})
        for name in sorted(str(s) for s in value.free_symbols):
            if name in self.state_shapes and name not in loaded:
                self.lines.append(f"{indent}{name} = {self._load_state(name)}")
                loaded.add(name)
        value, shape = self.layout.walk(value)
        value = Rounded(value)
        printer = _SpecPrinter(frozenset(wide), self.rename, self.cdt, self.layout.reduced)
        self.lines.append(f"{indent}{eq.target} = {printer.doprint(value)}")
        if is_wide(value, frozenset(wide)):
            wide.add(eq.target)
        else:
            wide.discard(eq.target)
        self.layout.classes[eq.target] = max(shape, eq.shape)
        if self.layout.is_array(value):
            self.layout.arrays.add(eq.target)
        else:
            self.layout.arrays.discard(eq.target)
        if eq.target in self.state_shapes:
            loaded.add(eq.target)
            slot = f'{self.state}["{eq.target}"]'
            self.lines.append(f"{indent}{slot} = _rt.fit({eq.target}, {slot})")

    def _matrix_block(self, block: MatrixBlock, indent: str, loaded: set[str]) -> None:
        """The block's own method (the fused drivers call it too) on its full value."""
        if block.name in self.state_shapes and block.name not in loaded:
            self.lines.append(f"{indent}{block.name} = {self._load_state(block.name)}")
            loaded.add(block.name)
        self.lines.append(f"{indent}{block.name} = self._matrix_{block.index}({block.name})")
        self.layout.classes[block.name] = ShapeClass.FULL
        self.layout.arrays.add(block.name)
        if block.name in self.state_shapes:
            slot = f'{self.state}["{block.name}"]'
            self.lines.append(f"{indent}{slot} = _rt.fit({block.name}, {slot})")

    def _load_state(self, name: str) -> str:
        return f'_rt.cast({self.state}["{name}"], {self.cdt})'


def layout_functions(spec: Spec, layouts: list[bool], static_code: dict[str, str],
                     names: SymbolTable) -> list[LayoutFunction]:
    """One method per layout a parameter can take (factored first)."""
    out = []
    for factored in sorted(set(layouts), reverse=True):
        renderer = _Renderer(spec, factored, static_code, names)
        name = "_update_factored" if factored else "_update_unfactored"
        signature = f"self, {renderer.gradient}, {renderer.parameter}, {renderer.state}"
        out.append(LayoutFunction(f"{name}({signature})", factored,
                                  tuple(renderer.render())))
    return out
