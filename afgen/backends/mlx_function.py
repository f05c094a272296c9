"""The MLX-ops update: the spec's statements as one readable method per layout.

MLX's own optimizers are a few lines of array code with the hyperparameters read from
``self`` and plain ``if``s on options; this renders a spec the same way. Each equation
becomes one line under the spec's name, in the spec's order (so the float32 program is
the spec's), a branch on static options becomes an ``if`` on ``self``, a branch on the
layout is resolved (one method per layout), reductions are the base class's accurate
ones (``self._mean``; MLX's own under precision="param") in the broadcast layout (row
``(*B, M, 1)``, col ``(*B, 1, N)``, batch ``(*B, 1, 1)``), and state is read where first
used and written where assigned. Nothing is specialised here: the
fused kernels specialise, where it buys speed (afgen/lower/).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy.core.function import AppliedUndef

from afgen.backends.printers import MLXPrinter, is_wide, python_code
from afgen.names import SymbolTable
from afgen.spec.expressions import reduction_of
from afgen.spec.model import DTYPE_EPS, FACTORED, GRAD, PARAM, STEP, Branch, Spec, Statement
from afgen.spec.ops import Rounded
from afgen.spec.shapes import ReduceAxes

AXES = {ReduceAxes.ROWWISE: "-1", ReduceAxes.COLWISE: "-2", ReduceAxes.MATRIXWISE: "(-2, -1)"}


@dataclass(frozen=True)
class LayoutFunction:
    """One rendered method: its name, what it updates, and its body lines."""

    name: str
    factored: bool
    lines: tuple[str, ...]


class _SpecPrinter(MLXPrinter):
    """MLX ops over the spec's names: hyperparameters read from ``self``, reductions in
    the broadcast layout, equation values rounded to the compute dtype."""

    def __init__(self, wide: frozenset[str], rename: dict[str, str], cdt: str):
        super().__init__(wide, cdt)
        self.rename = rename

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
        axes, mean = found
        op, operand = "self._mean" if mean else "self._sum", self._print(expr.args[0])
        if axes is ReduceAxes.ALL:
            return f"{op}({operand})"
        return f"{op}({operand}, axis={AXES[axes]}, keepdims=True)"


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

    def _hyper_code(self) -> dict[str, str]:
        """How each hyperparameter value and static predicate reads inside the method."""
        code = dict(self.static_code)
        for h in self.spec.hyperparameters:
            if h.kind == "schedule":
                code[h.name] = f'_rt.cast(self.state["{h.name}"], {self.cdt})'
            elif h.kind == "pair":
                code.update({c: f"self.{h.name}[{i}]" for i, c in enumerate(h.component_names)})
            elif not h.is_static:
                code[h.name] = f"self.{h.name}"
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
        for name in sorted(str(s) for s in eq.value.free_symbols):
            if name in self.state_shapes and name not in loaded:
                self.lines.append(f"{indent}{name} = {self._load_state(name)}")
                loaded.add(name)
        value = Rounded(eq.value.xreplace(
            {sympy.Symbol(FACTORED): sympy.true if self.factored else sympy.false}))
        printer = _SpecPrinter(frozenset(wide), self.rename, self.cdt)
        self.lines.append(f"{indent}{eq.target} = {printer.doprint(value)}")
        if is_wide(value, frozenset(wide)):
            wide.add(eq.target)
        else:
            wide.discard(eq.target)
        if eq.target in self.state_shapes:
            loaded.add(eq.target)
            label = self.state_shapes[eq.target].label
            slot = f'{self.state}["{eq.target}"]'
            self.lines.append(f'{indent}{slot} = _rt.collapse({eq.target}, {slot}, "{label}")')

    def _load_state(self, name: str) -> str:
        label = self.state_shapes[name].label
        slot = f'{self.state}["{name}"]'
        if label == "full":
            return f"_rt.cast({slot}, {self.cdt})"
        return f'_rt.cast(_rt.expand({slot}, "{label}"), {self.cdt})'


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
