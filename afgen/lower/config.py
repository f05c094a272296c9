"""Static configurations: one assignment of every static predicate plus the layout."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy

from afgen.spec.model import FACTORED, Spec


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


def all_configs(spec: Spec) -> list[StaticConfig]:
    """Every assignment of the static predicates that satisfies ``requires``, both layouts."""
    names = spec.static_names
    ndim = sympy.Symbol("ndim", integer=True)
    layouts = [f for f in (True, False)
               if any(bool(spec.factored_when.subs(ndim, n)) == f for n in range(9))]
    out = []
    for factored in layouts:
        for bits in itertools.product((True, False), repeat=len(names)):
            config = StaticConfig(tuple(zip(names, bits)), factored)
            if requirement_holds(spec, config):
                out.append(config)
    return out


def config_from_values(spec: Spec, values: dict[str, bool], factored: bool) -> StaticConfig:
    return StaticConfig(tuple((n, bool(values[n])) for n in spec.static_names), factored)
