"""The typed spec model: what a validated spec says, with SymPy expressions inside."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

import sympy

from afgen.errors import Loc
from afgen.spec.shapes import ShapeClass

HYPER_KINDS = ("float", "int", "bool", "optional_float", "schedule", "pair", "tuple")
TUPLE_KINDS = ("pair", "tuple")  # named parts: exactly two, or two to MAX_TUPLE
MAX_TUPLE = 8

# Names every update can read: the gradient, the parameter and the 1-based step.
GRAD, PARAM, STEP = "grad", "param", "t"
# Machine epsilon of the parameter's dtype (torch's default for its eps1).
DTYPE_EPS = "dtype_eps"
FACTORED = "factored"
# Names a layout condition can read besides bool and int hyperparameters: the parameter's
# number of dimensions and the sizes of the axes the factored view makes its rows and cols.
LAYOUT_NDIM, LAYOUT_ROWS, LAYOUT_COLS = "ndim", "rows", "cols"
# Which two axes a factored parameter is factored over: the last two (MLX, torch), or the
# two largest (optax; the largest becomes the col axis, ties go to the later axis).
FACTOR_AXES = ("last", "largest")


@dataclass(frozen=True)
class Hyperparameter:
    """One constructor argument. ``bool`` ones are static (they pick code paths);
    numbers are dynamic (read every step, never baked into kernels); ``optional_float``
    and ``schedule`` may be None, and whether they are is static (``has(name)``)."""

    name: str
    kind: str
    default: object
    doc: str
    loc: Loc
    component_names: tuple[str, ...] = ()
    check: sympy.Basic | None = None
    check_text: str = ""
    example: float | tuple[float, float] | None = None
    required: bool = False

    @property
    def is_static(self) -> bool:
        return self.kind == "bool"

    @property
    def is_optional(self) -> bool:
        """May be None at run time (so ``has(name)`` is a static predicate)."""
        return self.kind in ("optional_float", "schedule") and not self.required

    @property
    def is_tuple(self) -> bool:
        """A pair or tuple: a sequence of numbers, each part named in expressions."""
        return self.kind in TUPLE_KINDS

    @property
    def optional_components(self) -> tuple[str, ...]:
        """Parts of a pair or tuple whose default is None: each may be None at run time."""
        if not self.is_tuple or self.default is None:
            return ()
        return tuple(n for n, v in zip(self.component_names, self.default) if v is None)

    @property
    def value_names(self) -> tuple[str, ...]:
        """Names this hyperparameter contributes to expressions."""
        return self.component_names if self.is_tuple else (self.name,)

    @property
    def has_symbol(self) -> sympy.Symbol:
        return sympy.Symbol(f"has_{self.name}")


@dataclass(frozen=True)
class Requirement:
    """A constructor-time check: on static options (e.g. a schedule is needed without
    relative steps), which also rules configurations out at compile time, or, when it
    reads numeric hyperparameters (``static`` False), on the values given (e.g. Nesterov
    momentum needs a momentum), checked by the constructor only."""

    condition: sympy.Basic
    message: str
    loc: Loc
    static: bool = True


def value_symbols(hypers: tuple[Hyperparameter, ...] | list[Hyperparameter],
                  values: dict[str, object]) -> dict[sympy.Symbol, object]:
    """The expression symbols of bool and numeric hyperparameters bound to ``values`` (by
    hyperparameter name, e.g. defaults or constructor arguments), to evaluate a condition
    on them; a missing or None value, a None part and a schedule stay free."""
    out: dict[sympy.Symbol, object] = {}
    for h in hypers:
        value = values.get(h.name)
        if value is None or h.kind == "schedule":
            continue
        if h.kind == "bool":
            out[sympy.Symbol(h.name)] = sympy.true if value else sympy.false
        elif h.is_tuple:
            out.update({sympy.Symbol(n, real=True): v
                        for n, v in zip(h.component_names, value) if v is not None})
        else:
            out[sympy.Symbol(h.name, real=True)] = value
    return out


@dataclass(frozen=True)
class StateTensor:
    name: str
    shape: ShapeClass
    when: sympy.Basic
    when_text: str
    init: float
    doc: str
    loc: Loc


@dataclass(frozen=True)
class Equation:
    target: str
    value: sympy.Expr
    shape: ShapeClass
    text: str
    loc: Loc


@dataclass(frozen=True)
class Branch:
    condition: sympy.Basic
    condition_text: str
    then: tuple[Statement, ...]
    orelse: tuple[Statement, ...]
    loc: Loc


@dataclass(frozen=True)
class Repeat:
    """``count`` times the ``body`` (inside a matrix block): ``count`` is an int
    hyperparameter's symbol or an integer, read when the block runs."""

    count: sympy.Basic
    count_text: str
    body: tuple[Statement, ...]
    loc: Loc


@dataclass(frozen=True)
class MatrixBlock:
    """Matrix arithmetic on the full value ``name``, seen as the matrix ``(shape[0], -1)``
    of the parameter (as the update sees it): its statements run as whole-array ops
    (MLX, NumPy), never in a kernel, and ``name`` ends up as the block leaves it, in the
    parameter's shape. ``index`` numbers the spec's blocks (their generated functions)."""

    name: str
    body: tuple[Statement, ...]
    loc: Loc
    index: int


Statement = Union[Equation, Branch, MatrixBlock, Repeat]  # noqa: UP007 - runtime alias


@dataclass(frozen=True)
class Spec:
    """A validated optimizer spec."""

    path: str
    stem: str
    class_name: str
    summary: str
    reference: str
    hyperparameters: tuple[Hyperparameter, ...]
    requires: tuple[Requirement, ...]
    factored_when: sympy.Basic
    factored_text: str
    factor_axes: str
    state: tuple[StateTensor, ...]
    update: tuple[Statement, ...]
    text: str
    class_loc: Loc | None = None  # where the spec names the class ('optimizer:')

    def statements(self) -> Iterator[Statement]:
        """Every statement of the update in spec order, branches flattened (a matrix
        block's own statements stay inside it)."""
        pending = list(self.update)
        while pending:
            statement = pending.pop(0)
            if isinstance(statement, Branch):
                pending[:0] = [*statement.then, *statement.orelse]
            else:
                yield statement

    def equations(self) -> Iterator[Equation]:
        """Every equation of the update outside matrix blocks."""
        return (s for s in self.statements() if isinstance(s, Equation))

    def matrix_blocks(self) -> Iterator[MatrixBlock]:
        return (s for s in self.statements() if isinstance(s, MatrixBlock))

    def hyper(self, name: str) -> Hyperparameter:
        return next(h for h in self.hyperparameters if h.name == name)

    @property
    def static_names(self) -> tuple[str, ...]:
        """Every static predicate a configuration fixes, in a stable order."""
        names = [h.name for h in self.hyperparameters if h.is_static]
        names += [f"has_{h.name}" for h in self.hyperparameters if h.is_optional]
        names += [f"has_{c}" for h in self.hyperparameters for c in h.optional_components]
        return tuple(names)

    def optional_names(self) -> dict[str, str]:
        """Expression name -> hyperparameter for every value that may be None."""
        out = {h.name: h.name for h in self.hyperparameters if h.is_optional}
        out.update({c: h.name for h in self.hyperparameters for c in h.optional_components})
        return out

    @property
    def schedule_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hyperparameters if h.kind == "schedule")

    @property
    def layout_hypers(self) -> tuple[str, ...]:
        """Hyperparameters the layout condition reads (the generated code passes them in)."""
        used = {str(s) for s in self.factored_when.free_symbols}
        return tuple(h.name for h in self.hyperparameters if h.name in used)

    @property
    def dynamic_names(self) -> tuple[str, ...]:
        """Expression names of numeric hyperparameters (kernel inputs, never specialised)."""
        return tuple(n for h in self.hyperparameters if not h.is_static for n in h.value_names)
