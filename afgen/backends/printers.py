"""SymPy printers, one per target dialect.

One base class handles products, quotients, powers and parenthesisation once; a dialect
is a function table plus a handful of hooks (literal syntax, casts), in the spirit of
pystencils' and tinygrad's C-style renderers. Unsupported SymPy nodes raise with the
node's name instead of printing something the target cannot compile.
"""
from __future__ import annotations

import re

import sympy
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from afgen.spec import ops
from afgen.spec.expressions import is_size_condition
from afgen.spec.shapes import ReduceAxes

HALF = sympy.Float(0.5)
# Unary minus binds tighter than * and / and looser than ** (as in Python).
NEGATION = PRECEDENCE["Mul"] + 5


class UnsupportedNode(TypeError):
    """The expression contains something this dialect has no spelling for."""


class BasePrinter(StrPrinter):
    """Shared expression layout; subclasses fill in ``funcs`` and literal hooks."""

    printmethod = "_afgen"
    funcs: dict[str, str] = {}

    # -- hooks ---------------------------------------------------------------------
    def float_literal(self, value: float) -> str:
        return repr(value)

    def int_literal(self, value: int) -> str:
        return str(value)

    def call(self, name: str, *args: str) -> str:
        if name not in self.funcs:
            raise UnsupportedNode(f"{type(self).__name__} has no function '{name}'")
        return f"{self.funcs[name]}({', '.join(args)})"

    def reciprocal(self, text: str) -> str:
        return f"1 / {text}"

    def select(self, cond: str, a: str, b: str) -> str:
        return self.call("where", cond, a, b)

    # -- leaves ----------------------------------------------------------------------
    def _print_Symbol(self, expr: sympy.Symbol) -> str:
        return expr.name

    def _print_Integer(self, expr: sympy.Integer) -> str:
        return self.int_literal(int(expr))

    def _print_Rational(self, expr: sympy.Rational) -> str:
        return self.float_literal(float(expr))

    def _print_Float(self, expr: sympy.Float) -> str:
        return self.float_literal(float(expr))

    def _print_NegativeOne(self, expr: sympy.Basic) -> str:
        return self.int_literal(-1)

    def _print_One(self, expr: sympy.Basic) -> str:
        return self.int_literal(1)

    def _print_Zero(self, expr: sympy.Basic) -> str:
        return self.int_literal(0)

    def _print_Half(self, expr: sympy.Basic) -> str:
        return self.float_literal(0.5)

    def emptyPrinter(self, expr: sympy.Basic) -> str:
        raise UnsupportedNode(f"{type(self).__name__} cannot print {type(expr).__name__}: {expr}")

    def _print_not_supported(self, expr: sympy.Basic) -> str:
        return self.emptyPrinter(expr)

    # -- arithmetic, exactly as written (afgen.spec.ops) --------------------------------
    def op_precedence(self, expr: sympy.Basic) -> int:
        if isinstance(expr, (ops.Plus, ops.Minus)):
            return PRECEDENCE["Add"]
        if isinstance(expr, (ops.Times, ops.Divide)):
            return PRECEDENCE["Mul"]
        if isinstance(expr, ops.Negate) or (expr.is_Number and expr < 0):
            return NEGATION
        if isinstance(expr, ops.Power):
            return PRECEDENCE["Pow"]
        if isinstance(expr, ops.Rounded):
            return self.op_precedence(expr.args[0])
        return PRECEDENCE["Atom"]

    def operand(self, expr: sympy.Basic, level: int, strict: bool) -> str:
        """Parenthesised when it binds looser than ``level`` (or as loose, ``strict``):
        the printed text groups exactly as the tree does."""
        inner = self.op_precedence(expr)
        text = self._print(expr)
        return f"({text})" if inner < level or (strict and inner == level) else text

    def binary(self, expr: sympy.Basic) -> str:
        left, right = expr.args
        level = self.op_precedence(expr)
        return (f"{self.operand(left, level, False)} {expr.symbol} "
                f"{self.operand(right, level, True)}")

    _print_Plus = _print_Minus = _print_Times = _print_Divide = binary

    def _print_Negate(self, expr: ops.Negate) -> str:
        return "-" + self.operand(expr.args[0], NEGATION, True)

    def _print_Rounded(self, expr: ops.Rounded) -> str:
        return self._print(expr.args[0])

    def _print_Power(self, expr: ops.Power) -> str:
        base, exp = expr.args
        if exp == HALF:
            return self.call("sqrt", self._print(base))
        if exp == -HALF:
            return self.call("rsqrt", self._print(base))
        if exp == 2:
            return self.square(base)
        if exp == -1:
            return self.reciprocal(self.operand(base, PRECEDENCE["Mul"], True))
        return self.power(base, exp)

    def square(self, base: sympy.Expr) -> str:
        return self.call("square", self._print(base))

    def power(self, base: sympy.Expr, exp: sympy.Expr) -> str:
        return (self.operand(base, PRECEDENCE["Pow"], True) + " ** "
                + self.operand(exp, PRECEDENCE["Pow"], False))

    # -- functions -------------------------------------------------------------------
    def _nary(self, name: str, args: tuple) -> str:
        printed = [self._print(a) for a in args]
        out = printed[0]
        for arg in printed[1:]:
            out = self.call(name, out, arg)
        return out

    def _print_Maximum(self, expr: ops.Maximum) -> str:
        return self._nary("maximum", expr.args)

    def _print_Minimum(self, expr: ops.Minimum) -> str:
        return self._nary("minimum", expr.args)

    def _print_Sqrt(self, expr: ops.Sqrt) -> str:
        return self.call("sqrt", self._print(expr.args[0]))

    def _print_Rsqrt(self, expr: ops.Rsqrt) -> str:
        return self.call("rsqrt", self._print(expr.args[0]))

    def _print_Fabs(self, expr: ops.Fabs) -> str:
        return self.call("abs", self._print(expr.args[0]))

    def _print_Square(self, expr: ops.Square) -> str:
        return self.square(expr.args[0])

    def _print_Exp(self, expr: ops.Exp) -> str:
        return self.call("exp", self._print(expr.args[0]))

    def _print_Log(self, expr: ops.Log) -> str:
        return self.call("log", self._print(expr.args[0]))

    def _print_Sign(self, expr: ops.Sign) -> str:
        return self.call("sign", self._print(expr.args[0]))

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        *pieces, (last, cond) = expr.args
        if cond != sympy.true:
            raise UnsupportedNode("a Piecewise without an 'otherwise' branch")
        if all(is_host_condition(c) for _, c in pieces):
            return self.host_select(pieces, last)
        out = self._print(last)
        for value, condition in reversed(pieces):
            out = self.select(self._print(condition), self._print(value), out)
        return out

    # SymPy dispatches a subclass of a Function (Where is a Piecewise) by its own name.
    _print_Where = _print_Piecewise

    def _print_ITE(self, expr: sympy.logic.boolalg.ITE) -> str:
        # SymPy's spelling of a comparison of a value chosen by a static option, e.g.
        # ``step_size > 0`` where ``step_size`` depends on a run-time bool.
        condition, then, orelse = expr.args
        if is_host_condition(condition):
            return self.host_select([(then, condition)], orelse)
        return self.select(self._print(condition), self._print(then), self._print(orelse))

    def _print_Relational(self, expr: sympy.core.relational.Relational) -> str:
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return (f"({self.parenthesize(expr.lhs, PRECEDENCE['Relational'])} {op} "
                f"{self.parenthesize(expr.rhs, PRECEDENCE['Relational'])})")

    def _print_And(self, expr: sympy.And) -> str:
        return self._nary("logical_and", expr.args)

    def _print_Or(self, expr: sympy.Or) -> str:
        return self._nary("logical_or", expr.args)

    def _print_Not(self, expr: sympy.Not) -> str:
        return self.call("logical_not", self._print(expr.args[0]))

    def host_select(self, pieces: list[tuple[sympy.Basic, sympy.Basic]], last: sympy.Basic
                    ) -> str:
        """A choice on dynamic static options, made on the host: a Python conditional
        expression (only the chosen value is computed). Kernels never see one: such a
        choice is small, so it is computed in the glue and passed in."""
        out = self._print(last)
        for value, condition in reversed(pieces):
            out = f"({self._print(value)} if {python_code(condition)} else {out})"
        return out

    def parenthesize(self, item: sympy.Basic, level: int, strict: bool = False) -> str:
        if precedence(item) < level or (strict and precedence(item) == level):
            return f"({self._print(item)})"
        text = self._print(item)
        if text.startswith("-") and level >= PRECEDENCE["Mul"]:
            return f"({text})"
        return text


PLAIN_READ = re.compile(r"self\.\w+(\[\d+\])?")
"""A hyperparameter read that runs no MLX op (an attribute, or an entry of a tuple)."""


class MLXPrinter(BasePrinter):
    """MLX ops; Python floats stay Python floats (MLX scalars are weakly typed).

    ``wide`` names the values that may be wider than the compute dtype ``cdt`` (the step
    ``t`` is float32, as MLX's ``step`` promotes to): a ``Rounded`` equation value built
    from one is cast to ``cdt``, which is how MLX's optimizers round such values."""

    def __init__(self, wide: frozenset[str] = frozenset(), cdt: str = "cdt"):
        super().__init__()
        self.wide = wide
        self.cdt = cdt

    def _print_Rounded(self, expr: ops.Rounded) -> str:
        text = self._print(expr.args[0])
        return f"_rt.cast({text}, {self.cdt})" if is_wide(expr.args[0], self.wide) else text

    def is_host(self, expr: sympy.Basic) -> bool:
        """Whether ``expr`` reads only Python numbers: hyperparameters read as
        ``self.<name>`` (or a part of a tuple), and constants."""
        return all(PLAIN_READ.fullmatch(self._print(s)) for s in expr.free_symbols)

    # exp and log of hyperparameters alone are computed on the host in double precision,
    # like the rest of their arithmetic (MLX's optimizers compute with Python floats):
    # log(0.9999) in float32 is 1e-4 off in relative terms, from rounding 0.9999 itself.
    def _print_Exp(self, expr: ops.Exp) -> str:
        name = "_rt.host_exp" if self.is_host(expr.args[0]) else "mx.exp"
        return f"{name}({self._print(expr.args[0])})"

    def _print_Log(self, expr: ops.Log) -> str:
        name = "_rt.host_log" if self.is_host(expr.args[0]) else "mx.log"
        return f"{name}({self._print(expr.args[0])})"

    funcs = {name: f"mx.{name}" for name in (
        "sqrt", "rsqrt", "abs", "exp", "log", "sign", "maximum", "minimum", "where", "square",
        "logical_and", "logical_or", "logical_not")}


class NumPyPrinter(BasePrinter):
    """NumPy in float64 for the oracle."""

    funcs = {**{name: f"np.{name}" for name in (
        "sqrt", "abs", "exp", "log", "sign", "maximum", "minimum", "where", "square",
        "logical_and", "logical_or", "logical_not")}, "rsqrt": "_rsqrt"}


class PythonPrinter(BasePrinter):
    """Plain Python for constructor checks on Python numbers and static conditions.

    Functions are the ``math`` module's, and a general power is ``math.pow``: Python's
    ``**`` makes a complex number of ``(-8.0) ** 0.5`` where ``math.pow`` raises. Where a
    check is undefined (``1 / 0``, ``sqrt(-1)``, an overflow) evaluating it raises
    ArithmeticError or ValueError, which the constructor reads as the check failing."""

    funcs = {"maximum": "max", "minimum": "min", "abs": "abs", "sqrt": "math.sqrt",
             "exp": "math.exp", "log": "math.log", "pow": "math.pow"}

    def square(self, base: sympy.Expr) -> str:
        return self.operand(base, PRECEDENCE["Pow"], True) + " ** 2"

    def power(self, base: sympy.Expr, exp: sympy.Expr) -> str:
        return self.call("pow", self._print(base), self._print(exp))

    def call(self, name: str, *args: str) -> str:
        if name == "rsqrt":
            return self.reciprocal(super().call("sqrt", *args))
        return super().call(name, *args)

    def _print_Sign(self, expr: ops.Sign) -> str:
        text = self.operand(expr.args[0], PRECEDENCE["Relational"], True)
        return f"(({text} > 0) - ({text} < 0))"

    def select(self, cond: str, a: str, b: str) -> str:
        return f"({a} if {cond} else {b})"

    def _print_And(self, expr: sympy.And) -> str:
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr: sympy.Or) -> str:
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr: sympy.Not) -> str:
        return f"(not {self._print(expr.args[0])})"

    def _print_BooleanTrue(self, expr: sympy.Basic) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: sympy.Basic) -> str:
        return "False"


def is_host_condition(condition: sympy.Basic) -> bool:
    """A condition on static options alone (plain symbols, no data), or on a matrix's
    sizes inside a matrix block: values on the host."""
    if is_size_condition(condition):
        return True
    if isinstance(condition, sympy.Symbol):
        return not condition.is_real
    if isinstance(condition, (sympy.And, sympy.Or, sympy.Not)):
        return all(is_host_condition(a) for a in condition.args)
    return isinstance(condition, sympy.logic.boolalg.BooleanAtom)


def is_wide(expr: sympy.Basic, wide: frozenset[str]) -> bool:
    """Whether ``expr`` may be wider than the compute dtype: it reads a ``wide`` value
    other than through a ``Rounded`` one."""
    if isinstance(expr, ops.Rounded):
        return False
    if isinstance(expr, sympy.Symbol):
        return expr.name in wide
    return any(is_wide(a, wide) for a in expr.args)


# The axes a reduction folds in the broadcast layout (row (*B, M, 1), col (*B, 1, N),
# batch (*B, 1, 1)), which the drivers' glue and the oracle share.
BROADCAST_AXES = {ReduceAxes.ROWWISE: "-1", ReduceAxes.COLWISE: "-2",
                  ReduceAxes.MATRIXWISE: "(-2, -1)"}


def broadcast_reduction(functions: dict[str, str], how: str, axes: ReduceAxes,
                        operand: str) -> str:
    """A reduction call in the broadcast layout; ``functions`` spell each ``how``."""
    call = functions[how]
    if axes is ReduceAxes.ALL:
        return f"{call}({operand})"
    return f"{call}({operand}, axis={BROADCAST_AXES[axes]}, keepdims=True)"


def mlx_code(expr: sympy.Basic) -> str:
    """MLX ops in float32 glue (nothing is wider than the compute dtype there)."""
    return MLXPrinter().doprint(expr)


def numpy_code(expr: sympy.Basic) -> str:
    return NumPyPrinter().doprint(expr)


def python_code(expr: sympy.Basic) -> str:
    return PythonPrinter().doprint(expr)


class CStylePrinter(BasePrinter):
    """Float32 C-like kernels: every literal is a float with an ``f`` suffix and enough
    digits to round-trip, so ``1e-30`` never prints as ``0``."""

    def float_literal(self, value: float) -> str:
        text = f"{value:.9g}"
        if not any(c in text for c in ".en"):
            text += ".0"
        return text + "f"

    def int_literal(self, value: int) -> str:
        return self.float_literal(float(value))

    def reciprocal(self, text: str) -> str:
        return f"1.0f / {text}"

    def select(self, cond: str, a: str, b: str) -> str:
        return f"({cond} ? {a} : {b})"

    def power(self, base: sympy.Expr, exp: sympy.Expr) -> str:
        return self.call("pow", self._print(base), self._print(exp))

    def operand(self, expr: sympy.Basic, level: int, strict: bool) -> str:
        """C has no ``**``, and ``a - -b`` is fine, but a negated operand is bracketed
        anyway so no two minus signs ever touch (``--`` is a decrement)."""
        text = super().operand(expr, level, strict)
        return f"({text})" if text.startswith("-") else text

    def host_select(self, pieces: list[tuple[sympy.Basic, sympy.Basic]], last: sympy.Basic
                    ) -> str:
        raise UnsupportedNode("a choice on static options inside a kernel (the planner "
                              "computes it in the glue)")

    def _print_And(self, expr: sympy.And) -> str:
        return "(" + " && ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr: sympy.Or) -> str:
        return "(" + " || ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr: sympy.Not) -> str:
        return f"(!{self._print(expr.args[0])})"


class KernelPrinter(CStylePrinter):
    """The kernel body text, the same for every target: each function is an ``afg_*``
    helper that the target's header spells (``afg_sqrt`` is ``metal::sqrt`` on Metal,
    ``sqrtf`` on CUDA), so one body serves Metal and CUDA."""

    funcs = {name: f"afg_{name}" for name in
             ("sqrt", "rsqrt", "abs", "exp", "log", "sign", "maximum", "minimum", "pow")}
    funcs["maximum"], funcs["minimum"], funcs["square"] = "afg_max", "afg_min", "afg_sq"


def kernel_code(expr: sympy.Basic) -> str:
    return KernelPrinter().doprint(expr)
