"""The spec-order reference: a spec's update evaluated exactly as written, in one dtype.

The float64 oracle is rendered from the *lowered* plan, so it would inherit any rewrite
the lowering made (``rms(u)**2`` as a mean of factor products, as it once did) and, in
float64, cannot see where such a rewrite overflows float32. This module shares nothing
with the lowering (no SymPy, no plan, no printers): it re-parses each equation's source
text with ``ast`` (the text already passed the whitelist of afgen/spec/expressions.py)
and walks the tree left to right with NumPy, statement by statement, so that in float32
every operation rounds to float32 as a straightforward implementation of the spec would.
Where that evaluation is finite, a correct backend must be finite too, and where it
overflows the spec itself overflows.

Numerics, in the given dtype (float32 or float64; constants and hyperparameters are
converted to it first, so nothing is promoted to float64 behind the scenes):

* ``rsqrt(x)`` is ``1 / sqrt(x)`` (two roundings), ``rms(x)`` is
  ``sqrt(mean(square(x)))``, ``min``/``max`` fold left with ``np.minimum``/``np.maximum``
  (NaN-propagating), ``a if c else b`` evaluates only the taken side.
* ``sum`` is ``np.sum`` in the dtype: pairwise summation along a contiguous axis, in
  order along others; ``mean`` is that sum divided by the element count (converted to
  the dtype). NumPy's float32 sum is accurate to a few ulps for the sizes verification
  uses; which order is used matters only for sums within rounding of the float32 range,
  which the adversarial families stay clear of.
* Values are kept in the broadcast layout of the generated code: row ``(*B, M, 1)``,
  col ``(*B, 1, N)``, batch ``(*B, 1, 1)``; factored axes are moved last first.
"""
from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np

from afgen.check.bookkeeping import Stepper, static_values
from afgen.spec.expressions import REDUCTIONS
from afgen.spec.model import (
    FACTORED,
    GRAD,
    LAYOUT_COLS,
    LAYOUT_ROWS,
    PARAM,
    STEP,
    Branch,
    MatrixBlock,
    Repeat,
    Spec,
)
from afgen.spec.shapes import ReduceAxes

_BINARY: dict[type, Callable] = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                                 ast.Div: np.divide, ast.Pow: np.power,
                                 ast.MatMult: np.matmul}
_COMPARE: dict[type, Callable] = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater,
                                  ast.GtE: np.greater_equal, ast.Eq: np.equal,
                                  ast.NotEq: np.not_equal}
_UNARY: dict[str, Callable] = {"sqrt": np.sqrt, "abs": np.abs, "square": np.square,
                               "exp": np.exp, "log": np.log, "sign": np.sign}
# Axes each reduction folds in the broadcast layout (None: every axis).
_AXES: dict[ReduceAxes, tuple[int, ...] | None] = {
    ReduceAxes.ALL: None, ReduceAxes.ROWWISE: (-1,), ReduceAxes.COLWISE: (-2,),
    ReduceAxes.MATRIXWISE: (-2, -1)}


def round_to_bfloat16(value: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32:
    NumPy has no bfloat16, and MLX computes a bfloat16 operation in float32 and rounds
    the result the same way."""
    bits = np.asarray(value, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
        & np.uint32(0xFFFF0000)
    out = np.where(np.isnan(value), value, rounded.view(np.float32))
    return out.astype(np.float32) if out.ndim else np.float32(out)


def _expand(value: np.ndarray, shape_class: str) -> np.ndarray:
    """Stored state -> broadcast layout."""
    index = {"row": (..., None), "col": (..., None, slice(None)),
             "batch": (..., None, None)}.get(shape_class)
    return value if index is None else value[index]


def _collapse(value: np.ndarray, stored: np.ndarray, shape_class: str) -> np.ndarray:
    """Broadcast layout -> the stored state's shape."""
    shape = stored.shape
    layout = {"row": shape + (1,), "col": shape[:-1] + (1,) + shape[-1:],
              "batch": shape + (1, 1)}.get(shape_class, shape)
    return np.broadcast_to(value, layout).reshape(shape).astype(stored.dtype, copy=True)


class _Evaluator:
    """Evaluates whitelisted expression trees in one dtype. Static conditions come out as
    Python bools, elementwise ones as NumPy bool arrays, numbers as ``dtype`` values."""

    def __init__(self, dtype: type, env: dict[str, object], statics: dict[str, bool],
                 bfloat16: bool = False):
        self.dtype = dtype
        self.env = env
        self.statics = statics
        self.bfloat16 = bfloat16

    def __call__(self, node: ast.AST) -> object:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:  # the spec parser's whitelist admits nothing else
            raise ValueError(f"unexpected {type(node).__name__} in a validated spec")
        value = method(node)
        if self.bfloat16 and getattr(value, "dtype", None) == np.float32:
            return round_to_bfloat16(value)
        return value

    def _Constant(self, node: ast.Constant) -> object:
        if isinstance(node.value, bool):
            return node.value
        return self.dtype(node.value)

    def _Name(self, node: ast.Name) -> object:
        if node.id in self.env:
            return self.env[node.id]
        if node.id in self.statics:
            return self.statics[node.id]
        raise KeyError(f"'{node.id}' has no value here")

    def _BinOp(self, node: ast.BinOp) -> object:
        left = self(node.left)
        return _BINARY[type(node.op)](left, self(node.right))

    def _UnaryOp(self, node: ast.UnaryOp) -> object:
        value = self(node.operand)
        if isinstance(node.op, ast.Not):
            return not value if isinstance(value, bool) else np.logical_not(value)
        return np.negative(value) if isinstance(node.op, ast.USub) else value

    def _BoolOp(self, node: ast.BoolOp) -> object:
        values = [self(v) for v in node.values]
        if all(isinstance(v, bool) for v in values):
            return all(values) if isinstance(node.op, ast.And) else any(values)
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        out = values[0]
        for value in values[1:]:
            out = combine(out, value)
        return out

    def _Compare(self, node: ast.Compare) -> object:
        left = self(node.left)
        return _COMPARE[type(node.ops[0])](left, self(node.comparators[0]))

    def _IfExp(self, node: ast.IfExp) -> object:
        return self(node.body) if self(node.test) else self(node.orelse)

    def _Call(self, node: ast.Call) -> object:
        name = node.func.id
        if name == "has":
            return self.statics[f"has_{node.args[0].id}"]
        args = [self(a) for a in node.args]
        if name in _UNARY:
            return _UNARY[name](args[0])
        if name == "rsqrt":
            return np.divide(self.dtype(1), np.sqrt(args[0]))
        if name == "rms":
            return np.sqrt(self.reduce(np.square(args[0]), None, "mean"))
        if name in ("min", "max"):
            fold = np.minimum if name == "min" else np.maximum
            out = args[0]
            for value in args[1:]:
                out = fold(out, value)
            return out
        if name == "pow":
            return np.power(args[0], args[1])
        if name == "where":
            return np.where(args[0], args[1], args[2])
        if name == "transpose":
            return np.swapaxes(args[0], -1, -2)
        if name in ("nrows", "ncols"):
            return args[0].shape[-2 if name == "nrows" else -1]
        axes, how = REDUCTIONS[name]
        return self.reduce(args[0], _AXES[axes], how)

    def reduce(self, value: object, axes: tuple[int, ...] | None, how: str) -> object:
        """Sum, mean, max or min in the dtype, keeping dims so the result broadcasts."""
        array = np.asarray(value, self.dtype)
        if how in ("max", "min"):
            extreme = np.max if how == "max" else np.min
            return extreme(array, axis=axes, keepdims=axes is not None)
        total = np.sum(array, axis=axes, keepdims=axes is not None, dtype=self.dtype)
        if how == "sum":
            return total
        folded = array.size if axes is None else int(np.prod([array.shape[a] for a in axes]))
        return np.divide(total, self.dtype(folded))


class SpecReference(Stepper):
    """Steps a dict of parameters by the spec's text, in ``dtype``, the way the oracle
    (and the generated optimizer) step a tree: same state keys and shapes, schedules read
    before the step's increment, 1-based ``t``."""

    def __init__(self, spec: Spec, hyper: dict[str, object], dtype: type = np.float32,
                 bfloat16: bool = False):
        super().__init__(spec, hyper)
        self.dtype = np.dtype(dtype).type
        self.bfloat16 = bfloat16  # float32 values, every operation rounded to bfloat16
        self._trees: dict[str, ast.AST] = {}
        self._statics = static_values(spec, self.hyper)

    def _tree(self, text: str, mode: str) -> ast.AST:
        key = f"{mode}:{text}"
        if key not in self._trees:
            tree = ast.parse(text, mode=mode)
            self._trees[key] = tree.body if mode == "eval" else tree.body[0]
        return self._trees[key]

    def _holds(self, text: str, factored: bool) -> bool:
        """A static condition (``when``, ``if:``) under these hyperparameters."""
        if text == "always":
            return True
        value = _Evaluator(self.dtype, {}, {**self._statics, FACTORED: factored})(
            self._tree(text, "eval"))
        return bool(value)

    def live_state(self, shape: tuple[int, ...], axes: tuple[int, int] | None) -> set[str]:
        return {s.name for s in self.spec.state if self._holds(s.when_text, axes is not None)}

    def update(self, grad: np.ndarray, param: np.ndarray, state: dict[str, np.ndarray],
               scalars: dict[str, float], axes: tuple[int, int] | None) -> np.ndarray:
        factored = axes is not None
        env: dict[str, object] = {k: self.dtype(v) for k, v in scalars.items()}
        env.update({STEP: self.dtype(self.step_count), GRAD: grad, PARAM: param})
        if factored:  # the row and col axes' sizes (the update sees them last)
            env.update({LAYOUT_ROWS: self.dtype(grad.shape[-2]),
                        LAYOUT_COLS: self.dtype(grad.shape[-1])})
        env.update({k: _expand(v, self._classes[k]) for k, v in state.items()})
        statics = {**self._statics, FACTORED: factored}
        evaluate = _Evaluator(self.dtype, env, statics, self.bfloat16)
        with np.errstate(all="ignore"):
            self._run(self.spec.update, evaluate, factored)
        for key, stored in state.items():
            state[key] = _collapse(env[key], stored, self._classes[key])
        return np.broadcast_to(env[PARAM], param.shape).astype(self.dtype, copy=True)

    def _run(self, statements: tuple, evaluate: _Evaluator, factored: bool) -> None:
        for statement in statements:
            if isinstance(statement, Branch):
                taken = (statement.then if self._holds(statement.condition_text, factored)
                         else statement.orelse)
                self._run(taken, evaluate, factored)
                continue
            if isinstance(statement, MatrixBlock):  # on the matrix (shape[0], -1)
                value = np.asarray(evaluate.env[statement.name], self.dtype)
                shape = value.shape
                numbers = {n: evaluate.env[n] for n in self.spec.dynamic_names
                           if n in evaluate.env}
                inner = _Evaluator(self.dtype, {**numbers, statement.name: value.reshape(
                    shape[0] if shape else 1, -1)}, evaluate.statics, self.bfloat16)
                self._run(statement.body, inner, factored)
                evaluate.env[statement.name] = inner.env[statement.name].reshape(shape)
                continue
            if isinstance(statement, Repeat):
                for _ in range(int(evaluate(ast.parse(statement.count_text, mode="eval")
                                            .body))):
                    self._run(statement.body, evaluate, factored)
                continue
            assign = self._tree(statement.text, "exec")
            evaluate.env[statement.target] = evaluate(assign.value)


__all__ = ["SpecReference"]
