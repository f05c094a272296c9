"""SymPy printers, one per target dialect.

One base class handles products, quotients, powers and parenthesisation once; a dialect
is a function table plus a handful of hooks (literal syntax, casts), in the spirit of
pystencils' and tinygrad's C-style renderers. Unsupported SymPy nodes raise with the
node's name instead of printing something the target cannot compile.
"""
from __future__ import annotations

import sympy
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

HALF = sympy.Rational(1, 2)


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

    # -- arithmetic ------------------------------------------------------------------
    def _print_Add(self, expr: sympy.Add, order: str | None = None) -> str:
        terms = list(expr.as_ordered_terms())
        terms.sort(key=lambda term: term.could_extract_minus_sign())
        out = self.parenthesize(terms[0], PRECEDENCE["Add"])
        for term in terms[1:]:
            if term.could_extract_minus_sign():
                out += " - " + self.parenthesize(-term, PRECEDENCE["Add"] + 1)
            else:
                out += " + " + self.parenthesize(term, PRECEDENCE["Add"])
        return out

    def _print_Mul(self, expr: sympy.Mul) -> str:
        if expr.could_extract_minus_sign():
            return "-" + self.parenthesize(-expr, PRECEDENCE["Mul"] + 1)
        numer, denom = [], []
        for factor in expr.as_ordered_factors():
            base, exp = factor.as_base_exp()
            if factor.is_Pow and exp.is_Number and exp.is_negative and exp != -HALF:
                denom.append(sympy.Pow(base, -exp, evaluate=False) if exp != -1 else base)
            elif factor.is_Rational and not factor.is_Integer:
                numer.append(sympy.Integer(factor.p))
                denom.append(sympy.Integer(factor.q))
            else:
                numer.append(factor)
        num = " * ".join(self.parenthesize(f, PRECEDENCE["Mul"]) for f in numer) or "1"
        if not denom:
            return num
        if len(denom) == 1:
            den = self.parenthesize(denom[0], PRECEDENCE["Mul"] + 1)
        else:
            den = "(" + " * ".join(self.parenthesize(f, PRECEDENCE["Mul"]) for f in denom) + ")"
        return f"{num} / {den}"

    def _print_Pow(self, expr: sympy.Pow) -> str:
        base, exp = expr.args
        if exp == HALF:
            return self.call("sqrt", self._print(base))
        if exp == -HALF:
            return self.call("rsqrt", self._print(base))
        if exp == 2:
            return self.square(base)
        if exp == -1:
            return self.reciprocal(self.parenthesize(base, PRECEDENCE["Mul"] + 1))
        if exp.is_Integer and exp < 0:
            return self.reciprocal(self.parenthesize(sympy.Pow(base, -exp, evaluate=False),
                                                     PRECEDENCE["Mul"] + 1))
        return self.power(base, exp)

    def square(self, base: sympy.Expr) -> str:
        return self.call("square", self._print(base))

    def power(self, base: sympy.Expr, exp: sympy.Expr) -> str:
        return (self.parenthesize(base, PRECEDENCE["Pow"] + 1) + " ** "
                + self.parenthesize(exp, PRECEDENCE["Pow"]))

    # -- functions -------------------------------------------------------------------
    def _nary(self, name: str, args: tuple) -> str:
        printed = [self._print(a) for a in args]
        out = printed[0]
        for arg in printed[1:]:
            out = self.call(name, out, arg)
        return out

    def _print_Max(self, expr: sympy.Max) -> str:
        return self._nary("maximum", expr.args)

    def _print_Min(self, expr: sympy.Min) -> str:
        return self._nary("minimum", expr.args)

    def _print_Abs(self, expr: sympy.Abs) -> str:
        return self.call("abs", self._print(expr.args[0]))

    def _print_exp(self, expr: sympy.exp) -> str:
        return self.call("exp", self._print(expr.args[0]))

    def _print_log(self, expr: sympy.log) -> str:
        return self.call("log", self._print(expr.args[0]))

    def _print_sign(self, expr: sympy.sign) -> str:
        return self.call("sign", self._print(expr.args[0]))

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        *pieces, (last, cond) = expr.args
        if cond != sympy.true:
            raise UnsupportedNode("a Piecewise without an 'otherwise' branch")
        out = self._print(last)
        for value, condition in reversed(pieces):
            out = self.select(self._print(condition), self._print(value), out)
        return out

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

    def parenthesize(self, item: sympy.Basic, level: int, strict: bool = False) -> str:
        if precedence(item) < level or (strict and precedence(item) == level):
            return f"({self._print(item)})"
        text = self._print(item)
        if text.startswith("-") and level >= PRECEDENCE["Mul"]:
            return f"({text})"
        return text


class MLXPrinter(BasePrinter):
    """MLX ops; Python floats stay Python floats (MLX scalars are weakly typed)."""

    funcs = {name: f"mx.{name}" for name in (
        "sqrt", "rsqrt", "abs", "exp", "log", "sign", "maximum", "minimum", "where", "square",
        "logical_and", "logical_or", "logical_not")}


class NumPyPrinter(BasePrinter):
    """NumPy in float64 for the oracle."""

    funcs = {**{name: f"np.{name}" for name in (
        "sqrt", "abs", "exp", "log", "sign", "maximum", "minimum", "where", "square",
        "logical_and", "logical_or", "logical_not")}, "rsqrt": "_rsqrt"}


class PythonPrinter(BasePrinter):
    """Plain Python for constructor checks on Python numbers and static conditions."""

    funcs = {"maximum": "max", "minimum": "min", "abs": "abs"}

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


def mlx_code(expr: sympy.Basic) -> str:
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

    def _print_And(self, expr: sympy.And) -> str:
        return "(" + " && ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr: sympy.Or) -> str:
        return "(" + " || ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr: sympy.Not) -> str:
        return f"(!{self._print(expr.args[0])})"


class MetalPrinter(CStylePrinter):
    """Metal Shading Language: ``metal::`` math on float (safe math mode)."""

    funcs = {"sqrt": "metal::sqrt", "rsqrt": "metal::rsqrt", "abs": "metal::fabs",
             "exp": "metal::exp", "log": "metal::log", "sign": "metal::sign",
             "maximum": "metal::fmax", "minimum": "metal::fmin", "pow": "metal::pow",
             "square": "afg_sq"}


class CudaPrinter(CStylePrinter):
    """CUDA C++: the float (``f``-suffixed) math library."""

    funcs = {"sqrt": "sqrtf", "rsqrt": "rsqrtf", "abs": "fabsf", "exp": "expf", "log": "logf",
             "sign": "afg_sign", "maximum": "fmaxf", "minimum": "fminf", "pow": "powf",
             "square": "afg_sq"}


def metal_code(expr: sympy.Basic) -> str:
    return MetalPrinter().doprint(expr)


def cuda_code(expr: sympy.Basic) -> str:
    return CudaPrinter().doprint(expr)
