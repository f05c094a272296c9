"""Shape classes: how a value is laid out relative to its parameter.

For a parameter of shape ``(*B, M, N)`` (the factored layout) a value is one of
``scalar`` (one number per parameter), ``batch`` (one per leading index, ``B``),
``row`` (``(*B, M)``, one per row), ``col`` (``(*B, N)``) or ``full`` (like the parameter).
Unfactored parameters (0-D, 1-D) only have ``scalar`` and ``full``.

The classes decide where a value lives in a fused kernel: scalars and batch values are
computed once and broadcast, rows/cols are small vectors read per element, full values
are streamed. Rows and cols only meet through multiplication (an outer product, as in
the factored second moment); adding them is a spec error because it has no meaning
for a factored estimate and would silently materialise a full tensor.
"""
from __future__ import annotations

import enum


class ShapeClass(enum.IntEnum):
    SCALAR = 0
    BATCH = 1
    ROW = 2
    COL = 3
    FULL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> ShapeClass:
        return cls[label.upper()]

    @property
    def is_small(self) -> bool:
        """Not streamed: computed between passes, not per element."""
        return self is not ShapeClass.FULL

    @property
    def needs_factored(self) -> bool:
        return self in (ShapeClass.BATCH, ShapeClass.ROW, ShapeClass.COL)


class ShapeMismatch(Exception):
    """Two shape classes that cannot be combined by the operation at hand."""


def join_additive(a: ShapeClass, b: ShapeClass) -> ShapeClass:
    """Class of ``a + b`` (and of min, max, where, comparisons): broadcasting where a
    row and a col never meet."""
    if {a, b} == {ShapeClass.ROW, ShapeClass.COL}:
        raise ShapeMismatch("a row-shaped and a col-shaped value only combine by "
                            "multiplication (an outer product)")
    return max(a, b)


def join_multiplicative(a: ShapeClass, b: ShapeClass) -> ShapeClass:
    """Class of ``a * b`` and ``a / b``: a row times a col is their outer product."""
    if {a, b} == {ShapeClass.ROW, ShapeClass.COL}:
        return ShapeClass.FULL
    return max(a, b)


class ReduceAxes(enum.Enum):
    """Which axes a reduction folds, named by what is left (``rowwise``: one per row)."""

    ROWWISE = "rowwise"  # over the last axis: full -> row
    COLWISE = "colwise"  # over axis -2: full -> col
    MATRIXWISE = "matrixwise"  # over the last two axes: full/row/col -> batch
    ALL = "all"  # over everything: -> scalar
    MATRIX = "matrix"  # not a reduction: a matrix block, whole arrays in, full value out

    def result(self, operand: ShapeClass) -> ShapeClass:
        """Shape class of the reduction's result; raises ShapeMismatch for bad operands."""
        if self is ReduceAxes.ALL:
            return ShapeClass.SCALAR
        if self is ReduceAxes.MATRIX:
            return ShapeClass.FULL
        if self is ReduceAxes.MATRIXWISE:
            if operand in (ShapeClass.FULL, ShapeClass.ROW, ShapeClass.COL):
                return ShapeClass.BATCH
            raise ShapeMismatch(f"matrixwise reductions need a full, row or col value, "
                                f"not a {operand.label} one")
        if operand is not ShapeClass.FULL:
            raise ShapeMismatch(f"{self.value} reductions need a full value, not a "
                                f"{operand.label} one")
        return ShapeClass.ROW if self is ReduceAxes.ROWWISE else ShapeClass.COL
