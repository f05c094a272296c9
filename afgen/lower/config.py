"""Static configurations: one assignment of every static predicate plus the layout."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy
from sympy.core.function import AppliedUndef

from afgen.errors import SpecError
from afgen.spec.expressions import reduction_of
from afgen.spec.model import (
    FACTORED,
    GRAD,
    LAYOUT_COLS,
    LAYOUT_NDIM,
    LAYOUT_ROWS,
    PARAM,
    Branch,
    MatrixBlock,
    Spec,
    Statement,
)
from afgen.spec.shapes import ShapeClass, join_multiplicative


@dataclass(frozen=True)
class StaticConfig:
    """Values of the static predicates (bool hyperparameters, ``has_x``) and the layout.

    Hashable and ordered so it can key specialisations and kernel caches."""

    values: tuple[tuple[str, bool], ...]
    factored: bool

    def as_subs(self) -> dict[sympy.Symbol, sympy.Basic]:
        subs = {sympy.Symbol(k): sympy.true if v else sympy.false for k, v in self.values}
        subs[sympy.Symbol(FACTORED)] = sympy.true if self.factored else sympy.false
        return subs

    def get(self, name: str) -> bool:
        return dict(self.values)[name]

    def restricted(self, names: frozenset[str]) -> StaticConfig:
        return StaticConfig(tuple((k, v) for k, v in self.values if k in names), self.factored)

    @property
    def label(self) -> str:
        layout = "factored" if self.factored else "unfactored"
        flags = [k if v else f"!{k}" for k, v in self.values]
        return " ".join([layout, *flags])

    @property
    def ident(self) -> str:
        """A Python identifier naming this configuration."""
        layout = "factored" if self.factored else "flat"
        flags = [k for k, v in self.values if v]
        off = [k for k, v in self.values if not v]
        parts = [layout] + flags + (["no_" + "_no_".join(off)] if off else [])
        return "__".join(parts)


# More static options that change the program than this would make 2**n specialisations of
# the fused kernels (and of verification); a spec past it is refused at the option.
MAX_SPECIALISING = 8


def dynamic_statics(spec: Spec) -> tuple[str, ...]:
    """Bool hyperparameters that only choose between small values (scalars computed from
    hyperparameters and the step, no reduction, no state): these stay run-time ``if``s in
    the glue and never specialise, since specialising them buys nothing measurable. A bool
    that any layout, state, reduction or full-size value depends on specialises."""
    candidates = {h.name for h in spec.hyperparameters if h.kind == "bool"}
    for condition in (spec.factored_when, *(s.when for s in spec.state)):
        candidates -= {str(s) for s in condition.free_symbols}
    shapes = _value_shapes(spec)
    state_names = {s.name for s in spec.state}

    def small(expr: sympy.Basic) -> bool:
        return (shape_class_of(expr, shapes) is ShapeClass.SCALAR
                and not any(reduction_of(a) for a in expr.atoms(AppliedUndef)))

    def visit(statements: tuple[Statement, ...]) -> None:
        nonlocal candidates
        for statement in statements:
            if isinstance(statement, Branch):
                named = {str(s) for s in statement.condition.free_symbols} & candidates
                then, orelse = _assigned(statement.then), _assigned(statement.orelse)
                values = [v for arm in (then, orelse) for vs in arm.values() for v in vs]
                if named and (then.keys() != orelse.keys() or then.keys() & state_names
                              or not all(small(v) for v in values)):
                    candidates -= named
                visit(statement.then)
                visit(statement.orelse)
                continue
            if isinstance(statement, MatrixBlock):  # full-size: never a small choice
                continue
            for piecewise in statement.value.atoms(sympy.Piecewise):
                named = {str(s) for _, c in piecewise.args for s in c.free_symbols} & candidates
                if named and not all(small(value) for value, _ in piecewise.args):
                    candidates -= named

    visit(spec.update)
    return tuple(n for n in spec.static_names if n in candidates)


def specialising_statics(spec: Spec) -> tuple[str, ...]:
    """The static predicates that key specialisations (every other one is dynamic)."""
    dynamic = set(dynamic_statics(spec))
    names = tuple(n for n in spec.static_names if n not in dynamic)
    if len(names) > MAX_SPECIALISING:
        name = names[MAX_SPECIALISING].removeprefix("has_")
        hyper = next(h for h in spec.hyperparameters if name in (h.name, *h.component_names))
        raise SpecError(hyper.loc, f"{len(names)} static options change the program "
                        f"({', '.join(names)}): that is 2**{len(names)} specialisations, "
                        f"more than the 2**{MAX_SPECIALISING} afgen builds; make some of "
                        "them numeric hyperparameters")
    return names


def _assigned(statements: tuple[Statement, ...]) -> dict[str, list[sympy.Basic]]:
    """Name -> every value assigned to it anywhere in ``statements`` (nested branches
    too)."""
    out: dict[str, list[sympy.Basic]] = {}
    for statement in statements:
        if isinstance(statement, Branch):
            for arm in (statement.then, statement.orelse):
                for name, values in _assigned(arm).items():
                    out.setdefault(name, []).extend(values)
        elif isinstance(statement, MatrixBlock):  # its value: the (full) name, transformed
            out.setdefault(statement.name, []).append(sympy.Symbol(statement.name, real=True))
        else:
            out.setdefault(statement.target, []).append(statement.value)
    return out


def _value_shapes(spec: Spec) -> dict[sympy.Symbol, ShapeClass]:
    """The widest shape class each name of the spec takes anywhere (a conservative view
    for deciding what is small before specialising)."""
    shapes: dict[sympy.Symbol, ShapeClass] = {sympy.Symbol(GRAD, real=True): ShapeClass.FULL,
                                              sympy.Symbol(PARAM, real=True): ShapeClass.FULL}
    for s in spec.state:
        shapes[sympy.Symbol(s.name, real=True)] = s.shape
    for equation in spec.equations():
        symbol = sympy.Symbol(equation.target, real=True)
        if shapes.get(symbol, ShapeClass.SCALAR) is ShapeClass.SCALAR:
            shapes[symbol] = equation.shape
    return shapes


def satisfiable(conditions: list[sympy.Basic], dynamic: tuple[str, ...]) -> bool:
    """Whether some values of the ``dynamic`` statics make every condition true (the
    conditions' other statics already substituted)."""
    return any(all(bool(c.subs(values)) for c in conditions)
               for values in dynamic_assignments(conditions, dynamic))


def requirement_holds(spec: Spec, config: StaticConfig, dynamic: tuple[str, ...]) -> bool:
    return satisfiable([req.condition.subs(config.as_subs()) for req in spec.requires
                        if req.static],
                       dynamic)


def dynamic_assignments(conditions: list[sympy.Basic], dynamic: tuple[str, ...]
                        ) -> list[dict[sympy.Symbol, sympy.Basic]]:
    """Every assignment of the ``dynamic`` statics that ``conditions`` read."""
    read = {s for c in conditions for s in c.free_symbols if str(s) in dynamic}
    symbols = sorted(read, key=str)
    return [dict(zip(symbols, (sympy.true if b else sympy.false for b in bits)))
            for bits in itertools.product((True, False), repeat=len(symbols))]


def _possible_layouts(spec: Spec, values: tuple[tuple[str, bool], ...]) -> list[bool]:
    """Layouts some parameter can get under these static values: a condition on ndim alone
    is tried for ndim 0..8; one that also reads sizes or int hyperparameters can go
    either way unless it simplifies to a constant."""
    condition = spec.factored_when.subs({sympy.Symbol(k): sympy.true if v else sympy.false
                                         for k, v in values})
    ndim = sympy.Symbol(LAYOUT_NDIM, integer=True)
    if condition.free_symbols <= {ndim}:
        seen = {bool(condition.subs(ndim, n)) for n in range(9)}
        return [f for f in (True, False) if f in seen]
    return [True, False]


def all_configs(spec: Spec) -> list[StaticConfig]:
    """Every assignment of the specialising statics that some values of the dynamic ones
    let satisfy ``requires``, with every layout it allows."""
    names, dynamic = specialising_statics(spec), dynamic_statics(spec)
    out = []
    for bits in itertools.product((True, False), repeat=len(names)):
        values = tuple(zip(names, bits))
        for factored in _possible_layouts(spec, values):
            config = StaticConfig(values, factored)
            if requirement_holds(spec, config, dynamic):
                out.append(config)
    return sorted(out, key=lambda c: not c.factored)


def factor_axes(spec: Spec, shape: tuple[int, ...], hyper: dict[str, object]
                ) -> tuple[int, int] | None:
    """The (row, col) axes a parameter of ``shape`` is factored over under the spec's
    layout with these hyperparameter values, or None (the oracle's reading of the layout;
    the generated module renders the same rule as Python)."""
    ndim = len(shape)
    if ndim < 2:
        return None
    if spec.factor_axes == "largest":
        order = sorted(range(ndim), key=lambda axis: shape[axis])
        row, col = order[-2], order[-1]
    else:
        row, col = ndim - 2, ndim - 1
    subs: dict[sympy.Symbol, sympy.Basic] = {
        sympy.Symbol(LAYOUT_NDIM, integer=True): sympy.Integer(ndim),
        sympy.Symbol(LAYOUT_ROWS, integer=True): sympy.Integer(shape[row]),
        sympy.Symbol(LAYOUT_COLS, integer=True): sympy.Integer(shape[col])}
    for name in spec.layout_hypers:
        value = hyper[name]
        if isinstance(value, bool):
            subs[sympy.Symbol(name)] = sympy.true if value else sympy.false
        else:
            subs[sympy.Symbol(name, integer=True)] = sympy.Integer(int(value))
    return (row, col) if bool(spec.factored_when.subs(subs)) else None


def view_permutation(axes: tuple[int, int], ndim: int, shape_class: str) -> list[int]:
    """Axis order that moves the factored axes last in a tensor of this shape class (the
    update is written for rows and cols last); a row state lacks the col axis, a col state
    the row axis, a batch state both."""
    row, col = axes
    kept = {"full": (row, col), "row": (row,), "col": (col,)}.get(shape_class, ())
    dropped = {"row": (col,), "col": (row,), "batch": (row, col)}.get(shape_class, ())
    own = [a for a in range(ndim) if a not in dropped]
    return [own.index(a) for a in own if a not in kept] + [own.index(a) for a in kept]


def state_shape(shape_class: ShapeClass, shape: tuple[int, ...],
                axes: tuple[int, int] | None) -> tuple[int, ...]:
    """A state tensor is the parameter's shape without the axes it reduces."""
    dropped = {ShapeClass.FULL: (), ShapeClass.SCALAR: tuple(range(len(shape)))}.get(
        shape_class)
    if dropped is None:
        row, col = axes  # row/col/batch state exists only for factored parameters
        dropped = {ShapeClass.ROW: (col,), ShapeClass.COL: (row,),
                   ShapeClass.BATCH: (row, col)}[shape_class]
    return tuple(size for axis, size in enumerate(shape) if axis not in dropped)


def shape_class_of(expr: sympy.Basic, shapes: dict[sympy.Symbol, ShapeClass]) -> ShapeClass:
    """Shape class of an expression from its atoms (row times col is full)."""
    result = ShapeClass.SCALAR
    for symbol in expr.free_symbols:
        result = join_multiplicative(result, shapes.get(symbol, ShapeClass.SCALAR))
    return result
