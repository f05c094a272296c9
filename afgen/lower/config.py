"""Static configurations: one assignment of every static predicate plus the layout."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy

from afgen.spec.model import FACTORED, LAYOUT_COLS, LAYOUT_NDIM, LAYOUT_ROWS, Spec
from afgen.spec.shapes import ShapeClass


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


def requirement_holds(spec: Spec, config: StaticConfig) -> bool:
    subs = config.as_subs()
    return all(bool(req.condition.subs(subs)) for req in spec.requires)


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
    """Every assignment of the static predicates that satisfies ``requires``, with every
    layout it allows."""
    out = []
    for bits in itertools.product((True, False), repeat=len(spec.static_names)):
        values = tuple(zip(spec.static_names, bits))
        for factored in _possible_layouts(spec, values):
            config = StaticConfig(values, factored)
            if requirement_holds(spec, config):
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
