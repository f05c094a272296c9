"""Arithmetic that SymPy keeps exactly as the spec writes it.

SymPy rewrites ordinary arithmetic the moment it is built: it flattens and reorders sums
and products, merges ``(x**-0.5)**2`` into ``1/x`` and distributes integer powers over
products. Each of those is exact in real numbers and can overflow in float32: the
lowering once turned ``square(grad * rsqrt(row) * rsqrt(col))`` into
``grad**2 * (1/row) * (1/col)``, where ``1/row * 1/col`` is ``1e30 * 1e30 = inf`` for an
all-zero row and column, and ``inf * 0`` is NaN where the spec as written gives 0.

So every operation of an update is one of these opaque nodes, with its operands in the
order written (``a * b * c`` is ``Times(Times(a, b), c)``). SymPy still does what is safe
with them: substitution, shape analysis by free symbols, common-subexpression
elimination (a repeated node is the same value computed once) and moving a sub-tree
that only depends on small values out of the per-element loop (it is evaluated exactly
as written, just elsewhere). ``to_sympy`` gives the algebraic meaning for LaTeX and for
the constant checks.
"""
from __future__ import annotations

import sympy
from sympy.functions.elementary.piecewise import ExprCondPair


class Op(sympy.Function):
    """An operation SymPy must not evaluate, reorder or merge."""

    symbol = ""  # the operator's spelling for binary and unary operators
    meaning = None  # how to_sympy builds the algebraic value from the arguments

    @classmethod
    def eval(cls, *args):  # noqa: D401 - SymPy hook: None means "stay unevaluated"
        return None

    def _eval_is_real(self):
        return True

    def _latex(self, printer) -> str:
        return printer._print(to_sympy(self))

    def _sympystr(self, printer) -> str:
        args = [printer._print(a) for a in self.args]
        if self.symbol and len(args) == 2:
            return f"({args[0]} {self.symbol} {args[1]})"
        if self.symbol:
            return f"({self.symbol}{args[0]})"
        return f"{type(self).__name__.lower()}({', '.join(args)})"


class Plus(Op):
    nargs = 2
    symbol = "+"
    meaning = staticmethod(lambda a, b: a + b)


class Minus(Op):
    nargs = 2
    symbol = "-"
    meaning = staticmethod(lambda a, b: a - b)


class Times(Op):
    nargs = 2
    symbol = "*"
    meaning = staticmethod(lambda a, b: a * b)


class Divide(Op):
    nargs = 2
    symbol = "/"
    meaning = staticmethod(lambda a, b: a / b)


class Power(Op):
    nargs = 2
    symbol = "**"
    meaning = staticmethod(sympy.Pow)


class Negate(Op):
    nargs = 1
    symbol = "-"
    meaning = staticmethod(lambda a: -a)


class Sqrt(Op):
    nargs = 1
    meaning = staticmethod(sympy.sqrt)


class Rsqrt(Op):
    nargs = 1
    meaning = staticmethod(lambda a: 1 / sympy.sqrt(a))


class Fabs(Op):
    nargs = 1
    meaning = staticmethod(sympy.Abs)


class Square(Op):
    nargs = 1
    meaning = staticmethod(lambda a: a ** 2)


class Exp(Op):
    nargs = 1
    meaning = staticmethod(sympy.exp)


class Log(Op):
    nargs = 1
    meaning = staticmethod(sympy.log)


class Sign(Op):
    nargs = 1
    meaning = staticmethod(sympy.sign)


class Minimum(Op):
    nargs = 2
    meaning = staticmethod(sympy.Min)


class Maximum(Op):
    nargs = 2
    meaning = staticmethod(sympy.Max)


class MatMul(Op):
    """The matrix product of two matrices (inside a ``matrix:`` block only)."""

    nargs = 2
    symbol = "@"
    meaning = staticmethod(lambda a, b: sympy.Function("matmul")(a, b))


class Transpose(Op):
    nargs = 1
    meaning = staticmethod(lambda a: sympy.Function("transpose")(a))


class NRows(Op):
    """A matrix's number of rows: a Python int where the block runs (host arithmetic)."""

    nargs = 1
    meaning = staticmethod(lambda a: sympy.Function("nrows")(a))


class NCols(Op):
    nargs = 1
    meaning = staticmethod(lambda a: sympy.Function("ncols")(a))


class Rounded(Op):
    """The value of one equation, rounded to the compute dtype where it is assigned
    (``precision="param"`` rounds every equation's value to the parameter's dtype, as
    MLX's optimizers round by computing in it). Transparent everywhere else."""

    nargs = 1
    meaning = staticmethod(lambda a: a)

    def _sympystr(self, printer) -> str:
        return printer._print(self.args[0])


class Piece(ExprCondPair):
    """One ``(value, condition)`` of a ``Where``: SymPy rebuilds a pair whenever it
    substitutes into one, and its own pair folds choices into the condition."""

    def __new__(cls, value, condition):
        return sympy.Tuple.__new__(cls, sympy.sympify(value), sympy.sympify(condition))


class Where(sympy.Piecewise):
    """A choice, ``Piecewise((a, c), (b, True))``, that SymPy builds as written.

    SymPy's own ``Piecewise`` folds any choice found inside a condition into the
    condition (``piecewise_fold``) and canonicalises it, and that rewrite is not even safe:
    ``where(step_size > 0, ...)`` with ``step_size = lr * (1 if sgd else -1)`` came out as
    ``lr * 1 > 0``. Only the rewrites that are exact are kept: a literal ``True``/``False``
    condition (a resolved static option) ends the choice or drops its piece, and a choice
    between equal values is that value."""

    def __new__(cls, *args, **options):
        pairs = []
        for pair in args:
            value, condition = (sympy.sympify(a) for a in getattr(pair, "args", pair))
            if condition == sympy.false:
                continue
            last = condition == sympy.true
            pairs.append(Piece(value, sympy.true if last else condition))
            if last:
                break
        if not pairs:
            raise ValueError("a choice with no piece whose condition can hold")
        if pairs[-1].cond == sympy.true and all(p.expr == pairs[0].expr for p in pairs):
            return pairs[0].expr
        return sympy.Basic.__new__(cls, *pairs)

    def _latex(self, printer) -> str:
        return printer._print(to_sympy(self))

    def _sympystr(self, printer) -> str:
        *pieces, (last, _) = self.args
        out = printer._print(last)
        for value, condition in reversed(pieces):
            out = f"where({printer._print(condition)}, {printer._print(value)}, {out})"
        return out


UNARY_FUNCTIONS: dict[str, type[Op]] = {
    "sqrt": Sqrt, "rsqrt": Rsqrt, "abs": Fabs, "square": Square, "exp": Exp, "log": Log,
    "sign": Sign,
}
BINARY_OPERATORS: dict[str, type[Op]] = {
    "+": Plus, "-": Minus, "*": Times, "/": Divide, "**": Power,
}


def to_sympy(expr: sympy.Basic) -> sympy.Basic:
    """The algebraic meaning of ``expr`` (SymPy evaluates and folds it as usual): for
    display and for finding constants with no float value; never for code."""
    if isinstance(expr, Op):
        return type(expr).meaning(*[to_sympy(a) for a in expr.args])
    if isinstance(expr, Where):
        return sympy.Piecewise(*[(to_sympy(v), to_sympy(c)) for v, c in expr.args])
    if not expr.args or expr.is_Atom:
        return expr
    return expr.func(*[to_sympy(a) for a in expr.args])

