"""Symbol tables: every name the generator adds is drawn around the names already taken.

See afgen/backends/names.py for the naming rule of generated code (spec names verbatim,
reserved words refused, generator names fresh)."""
from __future__ import annotations

from collections.abc import Iterable

from afgen.spec.model import Spec


class SymbolTable:
    """The names taken in one scope of generated code (a module, a function, a kernel).

    ``claim`` takes a name exactly (a spec's name, or a name the template spells
    literally) and refuses a second claim; ``fresh`` gives a generator-owned name: the
    hint if free, else the hint with the first free numeric suffix."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken: set[str] = set(taken)

    def claim(self, name: str) -> str:
        if name in self._taken:
            raise ValueError(f"'{name}' is already taken in this scope")
        self._taken.add(name)
        return name

    def fresh(self, hint: str) -> str:
        name, suffix = hint, 1
        while name in self._taken:
            name = f"{hint}_{suffix}"
            suffix += 1
        self._taken.add(name)
        return name

    def child(self) -> SymbolTable:
        """A nested scope: sees every name taken here, adds its own without leaking back."""
        return SymbolTable(self._taken)


def spec_names(spec: Spec) -> dict[str, object]:
    """Every name the spec introduces, mapped to where it first writes it (a Loc)."""
    found: dict[str, object] = {}
    for h in spec.hyperparameters:
        for name in (h.name, *h.component_names):
            found.setdefault(name, h.loc)
    for s in spec.state:
        found.setdefault(s.name, s.loc)
    for equation in spec.equations():
        found.setdefault(equation.target, equation.loc)
    return found


