"""Specialise a spec for one static configuration.

Walks the live statements of the update (branches on static predicates resolved),
substitutes every name by its current value so the result is a DAG over *atoms*
(inputs, old state, hyperparameters) and *reduction results*, and pulls each reduction
call out into its own node. Reductions are the only places where a value stops being
elementwise, so they are the phase boundaries of the kernel plan.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy
from sympy.core.function import AppliedUndef

from afgen.errors import SpecError
from afgen.lower.config import StaticConfig, dynamic_statics, satisfiable
from afgen.lower.config import shape_class_of as shape_of
from afgen.names import SymbolTable, spec_names
from afgen.spec.expressions import reduction_of, undefined_constant
from afgen.spec.model import (
    DTYPE_EPS,
    GRAD,
    LAYOUT_COLS,
    LAYOUT_ROWS,
    PARAM,
    STEP,
    Branch,
    Equation,
    MatrixBlock,
    Spec,
    Statement,
)
from afgen.spec.ops import Negate, Rounded, Where
from afgen.spec.shapes import ReduceAxes, ShapeClass


@dataclass(frozen=True)
class Reduction:
    """``name = reduce(operand)`` over ``axes``; ``how`` is "sum", "mean" (the sum
    divided by the count folded), "max" or "min"."""

    name: sympy.Symbol
    axes: ReduceAxes
    how: str
    operand: sympy.Expr
    operand_shape: ShapeClass
    shape: ShapeClass
    block: int = -1  # of a matrix block (axes MATRIX): its index in the spec

    @property
    def kind(self) -> str:
        return reduction_kind(self.axes, self.how, self.block)


def reduction_kind(axes: ReduceAxes, how: str, block: int) -> str:
    """A reduction's label in plans and kernel names: ``rowwise_mean``, ``matrix_0``."""
    return f"matrix_{block}" if axes is ReduceAxes.MATRIX else f"{axes.value}_{how}"


@dataclass
class Program:
    """One specialisation: outputs as expressions over atoms and reduction symbols."""

    config: StaticConfig
    shapes: dict[sympy.Symbol, ShapeClass]
    reductions: list[Reduction]
    outputs: dict[str, sympy.Expr]
    live_state: list[str]
    used_statics: frozenset[str] = field(default_factory=frozenset)
    # Each equation's value (its Rounded node) -> the spec name it was assigned to, so a
    # temporary holding exactly that value is named after it.
    value_names: dict[sympy.Basic, str] = field(default_factory=dict)
    # The names of the program's inputs (and reductions): temporaries are drawn around them.
    atom_names: frozenset[str] = field(default_factory=frozenset)

    def shape_of(self, expr: sympy.Basic) -> ShapeClass:
        return shape_of(expr, self.shapes)

    @property
    def key(self) -> str:
        """Structural identity: specialisations with equal keys compile to the same code."""
        parts = [srepr_reduction(r) for r in self.reductions]
        parts += [f"{k}={sympy.srepr(v)}" for k, v in self.outputs.items()]
        parts.append(",".join(self.live_state))
        return "\n".join(parts) + f"\nfactored={self.config.factored}"


def srepr_reduction(r: Reduction) -> str:
    return f"{r.name}={r.kind}({sympy.srepr(r.operand)})"


class _Specialiser:
    def __init__(self, spec: Spec, config: StaticConfig):
        self.spec = spec
        self.config = config
        self.subs = config.as_subs()
        self.static_symbols = set(self.subs)
        self.dynamic = dynamic_statics(spec)
        self.declared_values = _declared_values(spec)
        # Whether the arm being walked can run at all: a run-time branch walks both arms,
        # and an arm that ``requires`` rules out under this configuration may read an
        # optional value that is None here (it is never evaluated: the glue's ``if``).
        self.reachable = True
        self.used_statics: set[str] = set()
        self.reductions: list[Reduction] = []
        self.reduction_keys: dict[tuple, sympy.Symbol] = {}
        self.value_names: dict[sympy.Basic, str] = {}
        self.names = SymbolTable(spec_names(spec))
        self.shapes: dict[sympy.Symbol, ShapeClass] = {}
        self.live_state = [s.name for s in spec.state if self._holds(s.when)]
        self.env: dict[str, sympy.Expr] = {}
        self._declare_atoms()

    def _holds(self, condition: sympy.Basic) -> bool:
        self.used_statics |= {str(s) for s in condition.free_symbols}
        value = condition.subs(self.subs)
        if value not in (sympy.true, sympy.false):
            raise AssertionError(f"static condition {condition} did not resolve")
        return value == sympy.true

    def _declare_atoms(self) -> None:
        def atom(name: str, shape: ShapeClass) -> None:
            symbol = sympy.Symbol(name, real=True)
            self.shapes[symbol] = shape
            self.env[name] = symbol

        atom(GRAD, ShapeClass.FULL)
        atom(PARAM, ShapeClass.FULL)
        atom(STEP, ShapeClass.SCALAR)
        atom(DTYPE_EPS, ShapeClass.SCALAR)
        if self.config.factored:  # the sizes of the row and col axes
            atom(LAYOUT_ROWS, ShapeClass.SCALAR)
            atom(LAYOUT_COLS, ShapeClass.SCALAR)
        for name in self.spec.dynamic_names:
            atom(name, ShapeClass.SCALAR)
        for name in self.dynamic:  # read by run-time conditions, never substituted
            self.env[name] = sympy.Symbol(name)
        for state in self.spec.state:
            if state.name in self.live_state:
                atom(state.name, state.shape)
        self.optional_values = self.spec.optional_names()

    def run(self) -> Program:
        self._walk(self.spec.update)
        outputs = {PARAM: self.env[PARAM]}
        for name in self.live_state:
            outputs[name] = self.env[name]
        return Program(self.config, self.shapes, self.reductions, outputs, self.live_state,
                       frozenset(self.used_statics), self.value_names,
                       frozenset(self._atom_names()))

    def _atom_names(self) -> set[str]:
        locals_ = {e.target for e in self.spec.equations()} - {s.name for s in self.spec.state}
        return (set(spec_names(self.spec)) - locals_) | {GRAD, PARAM, STEP, DTYPE_EPS} | {
            str(r.name) for r in self.reductions}

    def _walk(self, statements: tuple[Statement, ...]) -> None:
        for statement in statements:
            if isinstance(statement, MatrixBlock):
                self._matrix_block(statement)
            elif not isinstance(statement, Branch):
                self._equation(statement)
            elif {str(s) for s in statement.condition.free_symbols} & set(self.dynamic):
                self._run_time_branch(statement)
            else:
                taken = statement.then if self._holds(statement.condition) else statement.orelse
                self._walk(taken)

    def _run_time_branch(self, branch: Branch) -> None:
        """A branch on dynamic statics: both arms are lowered and every name they assign
        becomes ``Piecewise((then, condition), (else, True))``, a small value the glue
        computes with a Python ``if`` (``dynamic_statics`` admits only such branches)."""
        condition = branch.condition.subs(self.subs)
        requires = [r.condition.subs(self.subs) for r in self.spec.requires if r.static]
        before, reachable, arms = dict(self.env), self.reachable, []
        for arm, holds in ((branch.then, condition), (branch.orelse, sympy.Not(condition))):
            self.env = dict(before)
            self.reachable = reachable and satisfiable([*requires, holds], self.dynamic)
            self._walk(arm)
            arms.append(self.env)
        self.env, self.reachable = dict(before), reachable
        then, orelse = arms
        for name in then.keys() | orelse.keys():
            if name in then and name in orelse:
                self.env[name] = then[name] if then[name] == orelse[name] else \
                    Where((then[name], condition), (orelse[name], True))

    def _matrix_block(self, block: MatrixBlock) -> None:
        """The block's value is computed between passes from its operand, which a pass
        writes out: a step of the plan like a reduction, with a full-size result."""
        operand = self.env[block.name]
        symbol = sympy.Symbol(self.names.fresh(f"matrix{block.index}"), real=True)
        self.reductions.append(Reduction(symbol, ReduceAxes.MATRIX, "matrix", operand,
                                         ShapeClass.FULL, ShapeClass.FULL, block.index))
        self.shapes[symbol] = ShapeClass.FULL
        self.env[block.name] = symbol

    def _equation(self, eq: Equation) -> None:
        where = f"(configuration: {self.config.label})"
        sizes = {LAYOUT_ROWS, LAYOUT_COLS} & {str(s) for s in eq.value.free_symbols}
        if sizes and not self.config.factored:
            raise SpecError(eq.loc, f"'{sorted(sizes)[0]}' is the size of a factored "
                            f"parameter's row or col axis; put '{eq.target}' under "
                            f"'if: factored' {where}")
        if eq.shape.needs_factored and not self.config.factored:
            raise SpecError(eq.loc, f"'{eq.target}' is {eq.shape.label}-shaped, which only "
                            f"exists for factored parameters; put it under 'if: factored' {where}")
        self.used_statics |= {str(s) for s in eq.value.free_symbols & self.static_symbols}
        value = eq.value.subs(self.subs)
        missing_state = {str(s) for s in value.free_symbols} - set(self.env)
        state_names = {s.name for s in self.spec.state}
        for name in sorted(missing_state):
            if name in state_names:
                raise SpecError(eq.loc, f"state '{name}' does not exist here {where}; guard "
                                "the equation with the state's 'when' condition")
            raise SpecError(eq.loc, f"'{name}' is used before it is defined {where}")
        if eq.target in state_names and eq.target not in self.live_state:
            raise SpecError(eq.loc, f"state '{eq.target}' does not exist here {where}")
        for name in self.optional_values:
            if not self.reachable:
                break
            if sympy.Symbol(name, real=True) in value.free_symbols and not self.config.get(
                    f"has_{name}"):
                raise SpecError(eq.loc, f"'{name}' may be None here {where}; guard the "
                                f"equation with 'if: has({name})'")
        value = value.xreplace({sympy.Symbol(k, real=True): v for k, v in self.env.items()})
        problem = undefined_constant(value)
        if problem:  # e.g. 'z = 0' then 'm = m / z': only substitution folds it to zoo
            raise SpecError(eq.loc, f"'{eq.target}' has {problem} once earlier equations are "
                            f"substituted {where}")
        self._check_host_value(eq, value)
        self.env[eq.target] = Rounded(self._extract_reductions(value, eq))
        self.value_names[self.env[eq.target]] = eq.target

    def _check_host_value(self, eq: Equation, value: sympy.Expr) -> None:
        """A value of numeric hyperparameters alone is computed on the host with Python
        numbers, where a division by zero or a negative base to a fractional power raises
        instead of giving inf or NaN (as MLX's own optimizers do): refuse one that does so
        with the values the spec declares (defaults and examples, which verification runs)."""
        host = {sympy.Symbol(n, real=True) for n in self.spec.dynamic_names}
        for part, values in itertools.product(_host_parts(value, host),
                                              self.declared_values):
            if not {str(s) for s in part.free_symbols} <= values.keys():
                continue
            problem = undefined_constant(part.xreplace(
                {s: sympy.Rational(values[str(s)]) for s in part.free_symbols}))
            if problem:
                used = ", ".join(f"{s} = {values[str(s)]!r}"
                                 for s in sorted(part.free_symbols, key=str))
                raise SpecError(eq.loc, f"'{eq.target}' has {problem} with {used} (computed "
                                "on the host with Python numbers, which raise); change the "
                                "default or example, or the equation")

    def _extract_reductions(self, expr: sympy.Expr, eq: Equation) -> sympy.Expr:
        """Replace reduction calls (innermost first) by symbols and record them."""
        calls = [a for a in expr.atoms(AppliedUndef) if reduction_of(a)]
        if not calls:
            return expr
        calls.sort(key=lambda c: sympy.count_ops(c))
        replaced = {}
        for call in calls:
            axes, how = reduction_of(call)
            operand = self._extract_reductions(call.args[0], eq)
            if how == "min":  # min(x) is -max(-x), exactly: passes fold sums and maxima
                operand, how, negated = Negate(operand), "max", True
            else:
                negated = False
            operand_shape = shape_of(operand, self.shapes)
            if axes is not ReduceAxes.ALL and not self.config.factored:
                raise SpecError(eq.loc, f"{axes.value} reductions need a factored parameter; "
                                f"put '{eq.target}' under 'if: factored' "
                                f"(configuration: {self.config.label})")
            key = (axes, how, operand)
            if key not in self.reduction_keys:
                symbol = sympy.Symbol(self.names.fresh(f"red{len(self.reductions)}"),
                                      real=True)
                shape = axes.result(operand_shape)
                self.reductions.append(Reduction(symbol, axes, how, operand, operand_shape, shape))
                self.reduction_keys[key] = symbol
                self.shapes[symbol] = shape
            replaced[call] = Negate(self.reduction_keys[key]) if negated \
                else self.reduction_keys[key]
        return expr.xreplace(replaced)


def _host_parts(expr: sympy.Basic, host: set[sympy.Symbol]) -> list[sympy.Basic]:
    """The largest sub-expressions that read numeric hyperparameters and nothing else."""
    if expr.free_symbols and expr.free_symbols <= host:
        return [expr]
    return [part for arg in expr.args for part in _host_parts(arg, host)]


def _declared_values(spec: Spec) -> list[dict[str, float]]:
    """The numeric hyperparameters' defaults, then their examples (each set by expression
    name; a part that is None is left out)."""
    out = []
    for pick in (lambda h: h.default, lambda h: h.example if h.example is not None
                 else h.default):
        values: dict[str, float] = {}
        for h in spec.hyperparameters:
            value = pick(h)
            if h.is_static or value is None or isinstance(value, str):
                continue
            items = zip(h.component_names, value) if h.is_tuple else [(h.name, value)]
            values.update({n: float(v) for n, v in items if isinstance(v, (int, float))})
        out.append(values)
    return out


def specialise(spec: Spec, config: StaticConfig) -> Program:
    """Specialise ``spec`` for ``config`` (a full assignment of its static predicates)."""
    return _Specialiser(spec, config).run()


def distinct_programs(spec: Spec, configs: list[StaticConfig]) -> list[tuple[list[StaticConfig],
                                                                            Program]]:
    """Specialise every config and group configs that compile to the same program."""
    groups: dict[str, tuple[list[StaticConfig], Program]] = {}
    for config in configs:
        program = specialise(spec, config)
        groups.setdefault(program.key, ([], program))[0].append(config)
    return list(groups.values())


__all__ = ["Program", "Reduction", "distinct_programs", "shape_of", "specialise"]
