"""Safe expression parsing: Python ``ast`` with a whitelist, turned into SymPy.

Spec expressions are data. They are parsed with ``ast.parse`` and only the node types
and names listed here are accepted; everything else (attribute access, subscripts,
lambdas, comprehensions, unknown functions, dunder names) is a SpecError at the exact
column. Nothing is evaluated: no ``eval``, no ``sympify`` on text. While converting,
every value gets a shape class, so a row added to a col is caught here.
"""
from __future__ import annotations

import ast
import math
import sys
from dataclasses import dataclass
from typing import Protocol

import sympy

from afgen.errors import Loc, SpecError
from afgen.spec.ops import (
    BINARY_OPERATORS,
    UNARY_FUNCTIONS,
    MatMul,
    Maximum,
    Minimum,
    NCols,
    Negate,
    NRows,
    Op,
    Power,
    Sqrt,
    Square,
    Transpose,
    Where,
    to_sympy,
)
from afgen.spec.shapes import (
    ReduceAxes,
    ShapeClass,
    ShapeMismatch,
    join_additive,
    join_multiplicative,
)

MAX_EXPRESSION_CHARS = 2000
MAX_NESTING = 60
MAX_CONST_EXPONENT = 64
MAX_INT_LITERAL = 2**53
MAX_CONSTANT = sys.float_info.max

NUM, STATIC_BOOL, DYN_BOOL, STATIC_INT = "number", "static condition", "condition", "static integer"


@dataclass(frozen=True)
class Typed:
    """A converted sub-expression: its SymPy form, what kind of thing it is, its shape class."""

    expr: sympy.Basic
    kind: str
    shape: ShapeClass = ShapeClass.SCALAR


class ForwardReference(Exception):
    """A name that the update assigns only later (equations run in order)."""

    def __init__(self, name: str, line: int):
        super().__init__(name)
        self.name = name
        self.line = line


class Scope(Protocol):
    def lookup(self, name: str) -> Typed | None: ...
    def has_predicate(self, name: str) -> sympy.Symbol | None: ...


# name -> (axes, how): "sum", "mean", or "max"/"min" (the largest/smallest element).
REDUCTIONS: dict[str, tuple[ReduceAxes, str]] = {
    "sum": (ReduceAxes.ALL, "sum"),
    "mean": (ReduceAxes.ALL, "mean"),
    "amax": (ReduceAxes.ALL, "max"),
    "amin": (ReduceAxes.ALL, "min"),
    **{f"{axes.value}_{how}": (axes, how)
       for axes in (ReduceAxes.ROWWISE, ReduceAxes.COLWISE, ReduceAxes.MATRIXWISE)
       for how in ("sum", "mean", "max", "min")},
}
REDUCTION_FUNCS = {name: sympy.Function(name) for name in REDUCTIONS}


def reduction_of(expr: sympy.Basic) -> tuple[ReduceAxes, str] | None:
    """(axes, how) if ``expr`` is an unevaluated reduction call."""
    func = getattr(expr, "func", None)
    name = getattr(func, "__name__", None)
    if isinstance(expr, sympy.core.function.AppliedUndef) and name in REDUCTIONS:
        return REDUCTIONS[name]
    return None


def undefined_constant(expr: sympy.Basic) -> str | None:
    """What makes ``expr`` unusable as generated code, or None. In the algebraic meaning
    of the expression (``to_sympy``) SymPy folds constants: ``1/0`` becomes ``zoo``,
    ``sqrt(-1)`` becomes ``I``, ``1e308*1e308`` a Float that no float holds; computed,
    those are errors or overflows in the generated module."""
    expr = to_sympy(expr)
    if expr.has(sympy.I):
        return "a value that is not real (e.g. the square root or log of a negative constant)"
    for number in expr.atoms(sympy.Number, sympy.core.numbers.ComplexInfinity):
        if not number.is_finite:
            return "an undefined or infinite value (e.g. a division by zero or log(0))"
        if abs(number) > MAX_CONSTANT:
            return "a constant too large for a float"
    for power in expr.atoms(sympy.Pow):
        if power.is_number and power.is_extended_real is False:
            return "a value that is not real (e.g. a root of a negative constant)"
    return None


# What a hyperparameter's ``check`` may use (it runs on Python numbers in the constructor).
CHECK_FORMS = ("comparisons joined by and/or/not, over arithmetic (+ - * / **), "
               "where(c, a, b), sqrt, rsqrt, abs, square, exp, log, sign, "
               "min, max and pow")
# Inside a matrix block only: a matrix's transpose and its sizes (host integers).
MATRIX_FUNCTIONS = {"transpose": Transpose, "nrows": NRows, "ncols": NCols}
FUNCTIONS = sorted([*UNARY_FUNCTIONS, "min", "max", "pow", "where", "rms", "has", *REDUCTIONS,
                    *MATRIX_FUNCTIONS])


def is_size_condition(expr: sympy.Basic) -> bool:
    """A comparison of matrix sizes (``nrows(x) > ncols(x)``): known where a matrix block
    runs, so it chooses like a static condition."""
    if isinstance(expr, (sympy.And, sympy.Or, sympy.Not)):
        return all(is_size_condition(a) for a in expr.args)
    if not isinstance(expr, sympy.core.relational.Relational):
        return False

    def sizes_only(node: sympy.Basic) -> bool:
        if isinstance(node, (NRows, NCols)) or node.is_Number:
            return True
        return isinstance(node, Op) and all(sizes_only(a) for a in node.args)

    return all(sizes_only(side) for side in expr.args)

_FORBIDDEN_NODES = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Starred: "starred arguments",
    ast.NamedExpr: "assignment expressions",
    ast.JoinedStr: "f-strings",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.Await: "await",
    ast.Yield: "yield",
}


def _parse(text: str, loc: Loc, mode: str) -> ast.AST:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise SpecError(loc, f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    if not text.isascii():
        raise SpecError(loc, "expressions must be ASCII")
    for char, what in (("#", "comments"), ("\\", "backslashes")):
        if char in text:
            # ast drops comments, yet the text is quoted into the generated module (a
            # check's error message is an f-string): '# {...}' there would run as code.
            before = text[:text.index(char)]
            where = loc.shifted(before.count("\n"), len(before) - (before.rfind("\n") + 1))
            raise SpecError(where, f"{what} are not allowed in spec expressions")
    try:
        return ast.parse(text, mode=mode)
    except SyntaxError as exc:
        where = loc.shifted((exc.lineno or 1) - 1, (exc.offset or 1) - 1)
        raise SpecError(where, f"syntax error: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise SpecError(loc, "expression nested too deeply") from None


class ExpressionConverter:
    """Converts one whitelisted Python AST to SymPy, checking names, arity and shapes."""

    def __init__(self, scope: Scope, loc: Loc, col_shift: int = 0,
                 reductions: bool = True, matrix: bool = False):
        self.scope = scope
        self.loc = loc
        self.col_shift = col_shift
        self.reductions = reductions
        self.matrix = matrix  # inside a matrix block: '@', transpose(), nrows(), ncols()

    def where(self, node: ast.AST) -> Loc:
        line = getattr(node, "lineno", 1) - 1
        col = getattr(node, "col_offset", 0) + (self.col_shift if line == 0 else 0)
        return self.loc.shifted(line, col)

    def fail(self, node: ast.AST, message: str) -> SpecError:
        return SpecError(self.where(node), message)

    def convert(self, node: ast.AST, depth: int = 0) -> Typed:
        if depth > MAX_NESTING:
            raise self.fail(node, f"expression nested deeper than {MAX_NESTING} levels")
        for forbidden, what in _FORBIDDEN_NODES.items():
            if isinstance(node, forbidden):
                raise self.fail(node, f"{what} are not allowed in spec expressions")
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, f"'{type(node).__name__}' expressions are not allowed in specs")
        result = method(node, depth + 1)
        problem = undefined_constant(result.expr)
        if problem:
            raise self.fail(node, f"this expression has {problem}")
        return result

    # -- leaves -------------------------------------------------------------------------
    def _Constant(self, node: ast.Constant, depth: int) -> Typed:
        value = node.value
        if isinstance(value, bool):
            return Typed(sympy.true if value else sympy.false, STATIC_BOOL)
        if isinstance(value, int):
            if abs(value) > MAX_INT_LITERAL:
                raise self.fail(node, f"integer literal {value} is too large")
            return Typed(sympy.Integer(value), NUM)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(node, "numeric literals must be finite")
            return Typed(sympy.Float(value), NUM)
        raise self.fail(node, f"{type(value).__name__} literals are not allowed in expressions")

    def _Name(self, node: ast.Name, depth: int) -> Typed:
        if node.id.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed: '{node.id}'")
        try:
            found = self.scope.lookup(node.id)
        except ForwardReference as ref:
            raise self.fail(node, f"'{ref.name}' is used before it is defined (it is assigned "
                            f"at line {ref.line}); equations run in order, so a definition "
                            "cannot depend on a later or cyclic one") from None
        if found is None:
            raise self.fail(node, f"unknown name '{node.id}'")
        return found

    # -- operators ----------------------------------------------------------------------
    def _num(self, node: ast.AST, depth: int, what: str) -> Typed:
        value = self.convert(node, depth)
        if value.kind != NUM:
            raise self.fail(node, f"{what} needs a number, got a {value.kind}")
        return value

    def _BinOp(self, node: ast.BinOp, depth: int) -> Typed:
        op = type(node.op)
        if op is ast.MatMult:
            return self._matmul(node, depth)
        if op not in (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow):
            raise self.fail(node, f"operator '{type(node.op).__name__}' is not allowed")
        left = self._num(node.left, depth, "an arithmetic operator")
        right = self._num(node.right, depth, "an arithmetic operator")
        if op is ast.Pow:
            return self._power(node, left, right)
        try:
            if op in (ast.Add, ast.Sub):
                shape = join_additive(left.shape, right.shape)
            else:
                shape = join_multiplicative(left.shape, right.shape)
        except ShapeMismatch as exc:
            raise self.fail(node, f"shape-class mismatch: {left.shape.label} "
                            f"{_OP_WORD[op]} {right.shape.label}: {exc}") from None
        return _wide_integers_as_floats(
            Typed(BINARY_OPERATORS[_OP_WORD[op]](left.expr, right.expr), NUM, shape))

    def _matmul(self, node: ast.BinOp, depth: int) -> Typed:
        if not self.matrix:
            raise self.fail(node, "matrix products ('@') are only allowed inside a "
                            "'matrix:' block")
        left = self._num(node.left, depth, "'@'")
        right = self._num(node.right, depth, "'@'")
        for side, value in ((node.left, left), (node.right, right)):
            if value.shape is not ShapeClass.FULL:
                raise self.fail(side, f"'@' multiplies matrices, not a {value.shape.label} "
                                "value")
        return Typed(MatMul(left.expr, right.expr), NUM, ShapeClass.FULL)

    def _power(self, node: ast.AST, base: Typed, exponent: Typed) -> Typed:
        if exponent.shape is not ShapeClass.SCALAR:
            raise self.fail(node, "exponents must be scalars")
        # Constant operands are checked by value (``9**9**9`` has the constant exponent
        # 9**9); their own powers were checked first, so evaluating them is cheap.
        exp_value, base_value = to_sympy(exponent.expr), to_sympy(base.expr)
        if exp_value.is_Number and abs(float(exp_value)) > MAX_CONST_EXPONENT:
            raise self.fail(node, f"constant exponents are limited to +-{MAX_CONST_EXPONENT}")
        if base_value.is_Number and abs(float(base_value)) > 1e300:
            raise self.fail(node, "constant too large")
        return _wide_integers_as_floats(Typed(Power(base.expr, exponent.expr), NUM, base.shape))

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> Typed:
        if isinstance(node.op, ast.Not):
            operand = self.convert(node.operand, depth)
            if operand.kind not in (STATIC_BOOL, DYN_BOOL):
                raise self.fail(node, "'not' needs a condition")
            return Typed(sympy.Not(operand.expr), operand.kind, operand.shape)
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self._num(node.operand, depth, "a sign")
            expr = operand.expr
            if isinstance(node.op, ast.USub):  # a negative literal is a literal
                expr = -expr if expr.is_Number else Negate(expr)
            return Typed(expr, NUM, operand.shape)
        raise self.fail(node, f"operator '{type(node.op).__name__}' is not allowed")

    def _BoolOp(self, node: ast.BoolOp, depth: int) -> Typed:
        parts = [self.convert(v, depth) for v in node.values]
        kinds = {p.kind for p in parts}
        if not kinds <= {STATIC_BOOL, DYN_BOOL}:
            raise self.fail(node, "'and'/'or' need conditions on both sides")
        kind = DYN_BOOL if DYN_BOOL in kinds else STATIC_BOOL
        shape = self._join(node, [p.shape for p in parts])
        combine = sympy.And if isinstance(node.op, ast.And) else sympy.Or
        return Typed(combine(*[p.expr for p in parts]), kind, shape)

    def _Compare(self, node: ast.Compare, depth: int) -> Typed:
        if len(node.ops) != 1:
            raise self.fail(node, "chained comparisons are not allowed; use 'and'")
        op = type(node.ops[0])
        rel = {ast.Lt: sympy.Lt, ast.LtE: sympy.Le, ast.Gt: sympy.Gt, ast.GtE: sympy.Ge,
               ast.Eq: sympy.Eq, ast.NotEq: sympy.Ne}.get(op)
        if rel is None:
            raise self.fail(node, f"comparison '{op.__name__}' is not allowed")
        left = self.convert(node.left, depth)
        right = self.convert(node.comparators[0], depth)
        kinds = {left.kind, right.kind}
        if kinds <= {STATIC_INT}:
            return Typed(rel(left.expr, right.expr), STATIC_BOOL)
        if STATIC_INT in kinds and kinds <= {STATIC_INT, NUM}:
            if not all(p.expr.is_Number for p in (left, right) if p.kind == NUM):
                raise self.fail(node, "static integers can only be compared with constants")
            return Typed(rel(left.expr, right.expr), STATIC_BOOL)
        if kinds != {NUM}:
            raise self.fail(node, "comparisons need two numbers")
        shape = self._join(node, [left.shape, right.shape])
        return Typed(rel(left.expr, right.expr), DYN_BOOL, shape)

    def _IfExp(self, node: ast.IfExp, depth: int) -> Typed:
        test = self.convert(node.test, depth)
        sizes = self.matrix and test.kind == DYN_BOOL and is_size_condition(test.expr)
        if test.kind != STATIC_BOOL and not sizes:
            sizes_too = (", or, in a matrix block, a comparison of sizes (nrows(x), "
                         "ncols(x)) and constants") if self.matrix else ""
            raise self.fail(node.test, "'a if c else b' needs a static condition (a bool "
                            f"hyperparameter, has(x), factored{sizes_too}); use where(c, a, "
                            "b) for conditions on values")
        body = self._num(node.body, depth, "'if' expression")
        orelse = self._num(node.orelse, depth, "'else' expression")
        shape = self._join(node, [body.shape, orelse.shape])
        return Typed(Where((body.expr, test.expr), (orelse.expr, True)), NUM, shape)

    def _join(self, node: ast.AST, shapes: list[ShapeClass]) -> ShapeClass:
        result = ShapeClass.SCALAR
        try:
            for shape in shapes:
                result = join_additive(result, shape)
        except ShapeMismatch as exc:
            raise self.fail(node, f"shape-class mismatch: {exc}") from None
        return result

    # -- calls --------------------------------------------------------------------------
    def _Call(self, node: ast.Call, depth: int) -> Typed:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only calls of plain function names are allowed")
        name = node.func.id
        if name.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed: '{name}'")
        if node.keywords:
            raise self.fail(node, "keyword arguments are not allowed")
        if name not in FUNCTIONS:
            raise self.fail(node, f"unknown function '{name}' (known: {', '.join(FUNCTIONS)})")
        if name == "has":
            return self._has(node)
        if not self.reductions and (name in REDUCTIONS or name == "rms"):
            raise self.fail(node, f"{name}() reduces a tensor, and a 'check' is about plain "
                            f"numbers: {CHECK_FORMS}")
        args = [self.convert(a, depth) for a in node.args]
        if name == "where":
            return self._where(node, args)
        if name in MATRIX_FUNCTIONS:
            return self._matrix_function(node, name, args)
        if self.matrix and name in REDUCTIONS and REDUCTIONS[name][0] is not ReduceAxes.ALL:
            raise self.fail(node, f"{name}() inside a matrix block: only whole-matrix "
                            "reductions (sum, mean, amax, amin, rms)")
        for arg_node, arg in zip(node.args, args):
            if arg.kind != NUM:
                raise self.fail(arg_node, f"{name}() needs numbers, got a {arg.kind}")
        if name in UNARY_FUNCTIONS or name == "rms" or name in REDUCTIONS:
            self._arity(node, name, args, 1)
            (arg,) = args
            if name in UNARY_FUNCTIONS:
                return Typed(UNARY_FUNCTIONS[name](arg.expr), NUM, arg.shape)
            if name == "rms":
                mean = REDUCTION_FUNCS["mean"](Square(arg.expr))
                return Typed(Sqrt(mean), NUM, ShapeClass.SCALAR)
            axes, _ = REDUCTIONS[name]
            try:
                shape = axes.result(arg.shape)
            except ShapeMismatch as exc:
                raise self.fail(node, f"{name}(): {exc}") from None
            return Typed(REDUCTION_FUNCS[name](arg.expr), NUM, shape)
        if name == "pow":
            self._arity(node, name, args, 2)
            return self._power(node, args[0], args[1])
        if len(args) < 2:
            raise self.fail(node, f"{name}() needs at least 2 arguments")
        # min/max of a row and a col is their outer min/max (SM3's cover estimate).
        shape = ShapeClass.SCALAR
        for arg in args:
            shape = join_multiplicative(shape, arg.shape)
        combine = Minimum if name == "min" else Maximum
        expr = args[0].expr
        for arg in args[1:]:  # min(a, b, c) is min(min(a, b), c), in the order written
            expr = combine(expr, arg.expr)
        return Typed(expr, NUM, shape)

    def _matrix_function(self, node: ast.Call, name: str, args: list[Typed]) -> Typed:
        if not self.matrix:
            raise self.fail(node, f"{name}() is only allowed inside a 'matrix:' block")
        self._arity(node, name, args, 1)
        (arg,) = args
        if arg.kind != NUM or arg.shape is not ShapeClass.FULL:
            raise self.fail(node, f"{name}() needs a matrix")
        shape = ShapeClass.FULL if name == "transpose" else ShapeClass.SCALAR
        return Typed(MATRIX_FUNCTIONS[name](arg.expr), NUM, shape)

    def _arity(self, node: ast.Call, name: str, args: list[Typed], count: int) -> None:
        if len(args) != count:
            raise self.fail(node, f"{name}() takes {count} argument(s), got {len(args)}")

    def _has(self, node: ast.Call) -> Typed:
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Name):
            raise self.fail(node, "has() takes one hyperparameter name")
        predicate = self.scope.has_predicate(node.args[0].id)
        if predicate is None:
            raise self.fail(node.args[0], f"has() needs an optional hyperparameter, "
                            f"'{node.args[0].id}' is not one")
        return Typed(predicate, STATIC_BOOL)

    def _where(self, node: ast.Call, args: list[Typed]) -> Typed:
        self._arity(node, "where", args, 3)
        cond, a, b = args
        if cond.kind not in (DYN_BOOL, STATIC_BOOL):
            raise self.fail(node.args[0], "where() needs a condition first")
        for arg_node, arg in zip(node.args[1:], (a, b)):
            if arg.kind != NUM:
                raise self.fail(arg_node, "where() needs numbers as its 2nd and 3rd arguments")
        shape = self._join(node, [cond.shape, a.shape, b.shape])
        return Typed(Where((a.expr, cond.expr), (b.expr, True)), NUM, shape)


def _wide_integers_as_floats(value: Typed) -> Typed:
    """Integer constants compute as Python ints in the generated code, so ``10**20`` is
    an int that no int64 holds, and MLX fails on it at run time. A constant operation
    whose exact value is an integer beyond ``MAX_INT_LITERAL`` computes in floats instead
    (what the kernels do anyway)."""
    folded = to_sympy(value.expr)
    if not (folded.is_Integer and abs(folded) > MAX_INT_LITERAL):
        return value
    floats = {i: sympy.Float(int(i)) for i in value.expr.atoms(sympy.Integer)}
    return Typed(value.expr.xreplace(floats), value.kind, value.shape)


_OP_WORD = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


def parse_expression(text: str, loc: Loc, scope: Scope, col_shift: int = 0,
                     reductions: bool = True) -> Typed:
    """Parse and convert a single expression; ``reductions=False`` where the names are
    plain numbers (a hyperparameter's ``check``), so ``mean(x)`` has nothing to reduce."""
    tree = _parse(text, loc.shifted(0, col_shift), "eval")
    return ExpressionConverter(scope, loc, col_shift, reductions).convert(tree.body)


def parse_assignment(text: str, loc: Loc, scope: Scope, col_shift: int = 0,
                     matrix: bool = False) -> tuple[str, Loc, Typed]:
    """Parse ``name = expression``; returns the target name, its location and the value
    (``matrix``: inside a matrix block)."""
    tree = _parse(text, loc.shifted(0, col_shift), "exec")
    converter = ExpressionConverter(scope, loc, col_shift, matrix=matrix)
    body = tree.body
    if len(body) != 1 or not isinstance(body[0], ast.Assign):
        raise SpecError(loc.shifted(0, col_shift), "expected one equation 'name = expression'")
    assign = body[0]
    if len(assign.targets) != 1 or not isinstance(assign.targets[0], ast.Name):
        raise converter.fail(assign, "the left side of an equation must be one plain name")
    target = assign.targets[0]
    if target.id.startswith("_"):
        raise converter.fail(target, f"names starting with '_' are not allowed: '{target.id}'")
    value = converter.convert(assign.value)
    if value.kind != NUM:
        raise converter.fail(assign.value, f"an equation needs a number on its right side, "
                             f"got a {value.kind}")
    return target.id, converter.where(target), value
