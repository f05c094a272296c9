"""Matrix blocks as whole-array code: MLX ops for the generated class, NumPy in float64 for
the oracle. A block never reaches a kernel: a pass writes its operand out, the function
here computes the block on the matrix view ``(shape[0], -1)`` of it, and the next pass
reads the result (``afgen.lower.specialise``, ``MatrixBlock`` in ``afgen.spec.model``).
Its statements are rendered as written, a ``repeat`` as a Python loop (the count is read
when the block runs, as MLX's Muon reads ``ns_steps``; under ``mx.compile`` the loop is
traced once)."""
from __future__ import annotations

import sympy
from sympy.core.function import AppliedUndef

from afgen.backends.printers import MLXPrinter, NumPyPrinter, python_code
from afgen.names import SymbolTable
from afgen.spec import ops
from afgen.spec.expressions import reduction_of
from afgen.spec.model import Equation, MatrixBlock, Repeat, Statement

# Whole-matrix reductions: accurate float32 sums in MLX (afgen/runtime.py).
MLX_REDUCTIONS = {"sum": "_rt.total", "mean": "_rt.mean", "max": "mx.max", "min": "mx.min"}
NUMPY_REDUCTIONS = {"sum": "np.sum", "mean": "np.mean", "max": "np.max", "min": "np.min"}


class _BlockCode:
    """Printing for one dialect: array functions, and how names read."""

    def __init__(self, printer: type, module: str, reductions: dict[str, str],
                 rename: dict[str, str]):
        class Printer(printer):
            def _print_Symbol(self, expr: sympy.Symbol) -> str:
                return rename.get(expr.name, expr.name)

            def _print_MatMul(self, expr: ops.MatMul) -> str:
                a, b = (self._print(x) for x in expr.args)
                return f"{module}.matmul({a}, {b})"

            def _print_Transpose(self, expr: ops.Transpose) -> str:
                return f"{module}.swapaxes({self._print(expr.args[0])}, -1, -2)"

            def _print_NRows(self, expr: ops.NRows) -> str:
                return f"{self._print(expr.args[0])}.shape[-2]"

            def _print_NCols(self, expr: ops.NCols) -> str:
                return f"{self._print(expr.args[0])}.shape[-1]"

            def host_select(self, pieces, last) -> str:
                out = self._print(last)
                for value, condition in reversed(pieces):
                    out = f"({self._print(value)} if {self._print(condition)} else {out})"
                return out

            def _print_Function(self, expr: sympy.Basic) -> str:
                found = reduction_of(expr) if isinstance(expr, AppliedUndef) else None
                if found is None:
                    return super()._print_Function(expr)
                return f"{reductions[found[1]]}({self._print(expr.args[0])})"

        self.printer = Printer()

    def code(self, expr: sympy.Basic) -> str:
        return self.printer.doprint(expr)


def _body(statements: tuple[Statement, ...], code: _BlockCode, names: SymbolTable,
          rename: dict[str, str], indent: str) -> list[str]:
    lines = []
    for statement in statements:
        if isinstance(statement, Repeat):
            count = python_code(statement.count.xreplace(
                {s: sympy.Symbol(rename.get(s.name, s.name))
                 for s in statement.count.free_symbols}))
            lines.append(f"{indent}for {names.fresh('_')} in range(int({count})):")
            lines += _body(statement.body, code, names, rename, indent + "    ")
        elif isinstance(statement, Equation):
            lines.append(f"{indent}{statement.target} = {code.code(statement.value)}")
    return lines


def _block_names(block: MatrixBlock, reserved: set[str]) -> SymbolTable:
    """The block's names (the spec's, verbatim) and ``reserved``; the generator's own
    names (``shape``, the loop variable) are drawn fresh around them."""
    taken = set(reserved) | {block.name}
    pending = list(block.body)
    while pending:
        statement = pending.pop()
        if isinstance(statement, Repeat):
            pending += statement.body
        elif isinstance(statement, Equation):
            taken.add(statement.target)
    return SymbolTable(taken)


def mlx_block_lines(block: MatrixBlock, hyper_reads: dict[str, str]) -> list[str]:
    """The body of the generated class's ``_matrix_<index>(self, <name>)``."""
    names = _block_names(block, {"self", "mx", "_rt"})
    shape = names.fresh("shape")
    code = _BlockCode(MLXPrinter, "mx", MLX_REDUCTIONS, hyper_reads)
    lines = ["self._whole_matrix()",
             f"{shape} = {block.name}.shape",
             f"{block.name} = {block.name}.reshape({shape}[0] if {shape} else 1, -1)"]
    lines += _body(block.body, code, names, hyper_reads, "")
    lines.append(f"return {block.name}.reshape({shape})")
    return lines


def numpy_block_lines(block: MatrixBlock, hyper_names: set[str]) -> list[str]:
    """The body of the oracle's ``_np_matrix_<index>(<name>, hp)``, in float64."""
    names = _block_names(block, {"np", "hp"})
    shape = names.fresh("shape")
    rename = {name: f'hp["{name}"]' for name in hyper_names}
    code = _BlockCode(NumPyPrinter, "np", NUMPY_REDUCTIONS, rename)
    lines = [f"{shape} = {block.name}.shape",
             f"{block.name} = {block.name}.reshape({shape}[0] if {shape} else 1, -1)"]
    lines += _body(block.body, code, names, rename, "")
    lines.append(f"return {block.name}.reshape({shape})")
    return lines


__all__ = ["mlx_block_lines", "numpy_block_lines"]
