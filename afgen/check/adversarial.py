"""Adversarial gradient (and parameter) families for verification.

Random normal gradients never have an all-zero row, never underflow when squared and
never overflow: exactly the inputs where a rewritten update (a ratio of means instead of
a mean of ratios, a reciprocal pulled out of a sum) turns a finite result into NaN. Each
member below is one parameter of a tree, so a whole family takes one ``apply_gradients``
call per step (the fused kernels on the CPU executor cost one process per launch, not per
tree, but one call keeps the bookkeeping and the comparison in one place).

Families: structured zeros (a zero row, a zero column, both, a zero slice of a 3-D batch,
zeros in a 4-D batch, a single non-zero element, all zeros, size-1 axes), tiny (1e-20),
subnormal in float32 (1e-40), huge (1e18: squares still fit float32, sums of a few dozen
too; 1e30: squares overflow), mixed scales within one tensor, and parameters of the same
scales (zero, tiny, huge, mixed) under ordinary gradients. Shapes are 0-D to 4-D, with a
3-D one whose largest axes are not the last two (``axes: largest`` moves them). Every
size is small (at most 120 elements, at most 36 in a huge member) so no float32 sum of
squares lands near the edge of the float32 range, where the summation order would decide
whether it overflows. Everything is deterministic (fixed seeds), in float32.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Builder = Callable[[np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Member:
    """One parameter of the adversarial tree: its name, parameter and per-step gradients."""

    name: str
    param: np.ndarray
    grads: tuple[np.ndarray, ...]


def _normal(shape: tuple[int, ...], scale: float = 1.0) -> Builder:
    return lambda rng: (rng.standard_normal(shape) * scale).astype(np.float32)


def _masked(shape: tuple[int, ...], zero: Callable[[np.ndarray], None]) -> Builder:
    """Normal values with the entries ``zero`` selects set to 0."""
    def build(rng: np.random.Generator) -> np.ndarray:
        values = rng.standard_normal(shape).astype(np.float32)
        zero(values)
        return values
    return build


def _mixed(shape: tuple[int, ...], low: float, high: float) -> Builder:
    """Each element its own magnitude, 10**uniform(low, high), random sign, some zeros."""
    def build(rng: np.random.Generator) -> np.ndarray:
        magnitude = 10.0 ** rng.uniform(low, high, shape)
        values = np.where(rng.random(shape) < 0.15, 0.0,
                          magnitude * rng.choice([-1.0, 1.0], shape))
        return values.astype(np.float32)
    return build


def _single(shape: tuple[int, ...], index: tuple[int, ...]) -> Builder:
    def build(rng: np.random.Generator) -> np.ndarray:
        values = np.zeros(shape, np.float32)
        values[index] = np.float32(rng.uniform(0.5, 2.0) * rng.choice([-1.0, 1.0]))
        return values
    return build


def _bug_3x3(rng: np.random.Generator) -> np.ndarray:
    """A zero row and a zero column: the gradient that made mean(h0*h1*grad**2) overflow."""
    sign = np.float32(rng.choice([-1.0, 1.0]))
    return sign * np.array([[1, 0, .5], [0, 0, 0], [.3, 0, 2]], np.float32)


def _set(index: tuple) -> Callable[[np.ndarray], None]:
    def zero(values: np.ndarray) -> None:
        values[index] = 0
    return zero


def _zeros_4d(values: np.ndarray) -> None:
    values[0, 0] = 0  # a whole matrix of the batch
    values[0, 1, 2, :] = 0  # a row
    values[1, 2, :, 3] = 0  # a column


def _zeros_3d_largest(values: np.ndarray) -> None:
    values[1] = 0  # a matrix of the (last-axes) batch; a col of the largest-axes view
    values[:, :, 2] = 0  # a col of the last-axes view; a row of the largest-axes view


# (name, gradient builder, parameter builder); names say what is adversarial.
FAMILIES: tuple[tuple[str, Builder, Builder], ...] = (
    ("zero_row_col_3x3", _bug_3x3, _normal((3, 3))),
    ("zero_row", _masked((4, 6), _set((2,))), _normal((4, 6))),
    ("zero_col", _masked((6, 4), _set((slice(None), 1))), _normal((6, 4))),
    ("zero_row_and_col", _masked((5, 5), lambda v: (_set((0,))(v), _set((slice(None), 3))(v))),
     _normal((5, 5))),
    ("zero_slice_3d", _masked((3, 4, 5), _set((1,))), _normal((3, 4, 5))),
    ("zeros_4d", _masked((2, 3, 4, 5), _zeros_4d), _normal((2, 3, 4, 5))),
    ("zeros_3d_largest_axes", _masked((7, 3, 5), _zeros_3d_largest), _normal((7, 3, 5))),
    ("zero_cols_1x6", _masked((1, 6), _set((slice(None), [1, 4]))), _normal((1, 6))),
    ("zero_rows_6x1", _masked((6, 1), _set(([0, 3],))), _normal((6, 1))),
    ("single_nonzero", _single((4, 6), (1, 2)), _normal((4, 6))),
    ("all_zero", lambda rng: np.zeros((3, 4), np.float32), _normal((3, 4))),
    ("tiny_1e-20", _normal((4, 5), 1e-20), _normal((4, 5))),
    ("subnormal_1e-40", _normal((4, 5), 1e-40), _normal((4, 5))),
    ("huge_1e18", _normal((4, 5), 1e18), _normal((4, 5))),
    ("huge_1e30", _normal((3, 4), 1e30), _normal((3, 4))),
    ("mixed_scales", _mixed((6, 5), -42, 18), _normal((6, 5))),
    ("param_zero", _normal((4, 5)), lambda rng: np.zeros((4, 5), np.float32)),
    ("param_tiny_1e-20", _normal((4, 5)), _normal((4, 5), 1e-20)),
    ("param_huge_1e18", _normal((4, 5)), _normal((4, 5), 1e18)),
    ("param_huge_1e30", _normal((3, 4)), _normal((3, 4), 1e30)),
    ("param_mixed_zero_row", _masked((5, 4), _set((1,))), _mixed((5, 4), -20, 18)),
    # 0-D and 1-D: never factored.
    ("vec_zero", lambda rng: np.zeros((7,), np.float32), _normal((7,))),
    ("vec_single_nonzero", _single((9,), (4,)), _normal((9,))),
    ("scalar_zero", lambda rng: np.zeros((), np.float32), _normal(())),
    ("scalar_huge_1e30", _normal((), 1e30), _normal(())),
    ("vec_tiny_1e-20", _normal((6,), 1e-20), _normal((6,))),
    ("vec_subnormal_1e-40", _normal((6,), 1e-40), _normal((6,))),
    ("vec_huge_1e18", _normal((6,), 1e18), _normal((6,))),
    ("vec_huge_1e30", _normal((5,), 1e30), _normal((5,))),
    ("vec_mixed_scales", _mixed((11,), -42, 18), _normal((11,))),
    ("vec_param_zero", _normal((5,)), lambda rng: np.zeros((5,), np.float32)),
    ("vec_param_tiny_1e-20", _normal((5,)), _normal((5,), 1e-20)),
    ("vec_param_huge_1e18", _normal((5,)), _normal((5,), 1e18)),
    ("vec_param_huge_1e30", _normal((4,)), _normal((4,), 1e30)),
)


def members(steps: int) -> list[Member]:
    """Every family member with ``steps`` gradients each; the same arrays on every call.
    Each step draws new values with the same structure (the zero row stays zero)."""
    out = []
    for index, (name, grad, param) in enumerate(FAMILIES):
        grads = tuple(grad(np.random.default_rng([index, 1 + step])) for step in range(steps))
        out.append(Member(name, param(np.random.default_rng([index, 0])), grads))
    return out


__all__ = ["FAMILIES", "Member", "members"]
