"""A pass kernel's MLX twin: the same pass as one compiled MLX function.

``backend="mlx"`` runs the fused drivers with these in place of the kernels for a
float32-math update of a large parameter (``afgen_runtime.PLANNED_MIN_ELEMENTS``), so
the MLX-ops update has the plan's shape: each pass computes its per-element values in
one ``mx.compile``d function (MLX fuses the elementwise chain into one loop, so only the
operands of the pass's reductions and its outputs are written to memory, and what a
later pass needs is recomputed from the inputs, as in a kernel), the reductions are the
runtime's accurate ones, and the small glue between passes is the driver's. Every value
is float32 inside, as in the kernels, and the arithmetic is the pass's as written. The
launcher (``afgen_runtime.launch_mlx_pass``) reduces, casts and rounds the results into
what the kernel would have written, so one driver serves every backend.
"""
from __future__ import annotations

from dataclasses import dataclass

from afgen.backends.kernels import PassKernel
from afgen.backends.printers import mlx_code
from afgen.lower.plan import Pass
from afgen.spec.model import PARAM
from afgen.spec.shapes import ReduceAxes, ShapeClass

# A reduction's result kind: its axes, upper case for a maximum (else partial sums).
# A matrix block's operand (``m``) is returned whole.
REDUCTION_KINDS = {ReduceAxes.ALL: "a", ReduceAxes.ROWWISE: "r", ReduceAxes.COLWISE: "c",
                   ReduceAxes.MATRIX: "m"}


@dataclass(frozen=True)
class MLXPass:
    """The twin of kernel ``kernel`` (of the ``factored`` layout or not): ``function``
    is its Python name, ``signature`` its parameters (full-size inputs, then batch, row
    and col values, then the kernel's scalars as 0-D float32 arrays), ``lines`` its
    body. ``inputs`` gives each array parameter's class (``f``ull, ``b``atch, ``r``ow,
    ``c``ol); ``results`` each returned value's, in the kernel's output order (``f`` a
    full-size output, ``p`` the new parameter, ``a``/``r``/``c`` the operand of a
    reduction over all, rows or cols). ``key_index`` is where the parameter's rounding
    key follows the kernel's scalars in the launch (the launcher rounds)."""

    kernel: str
    factored: bool
    function: str
    signature: str
    lines: tuple[str, ...]
    inputs: str
    results: str
    key_index: int | None


def mlx_pass(pass_: Pass, kernel: PassKernel) -> MLXPass:
    arrays = (*kernel.full_inputs, *kernel.batch_inputs, *kernel.row_inputs,
              *kernel.col_inputs)
    lines = [f"{name} = _rt.cast({name}, mx.float32)" for name in kernel.full_inputs]
    operands = {}
    for step in pass_.schedule.steps:
        if step.is_reduction:
            operands[str(step.name)] = mlx_code(step.expr)
        else:
            lines.append(f"{step.name} = {mlx_code(step.expr)}")
    returned = [mlx_code(expr) for _, expr in pass_.schedule.results]
    returned += [operands[r.name] for r in kernel.reductions]
    lines.append(f"return {', '.join(returned)}" + ("," if len(returned) == 1 else ""))
    classes = {ShapeClass.FULL: kernel.full_inputs, ShapeClass.BATCH: kernel.batch_inputs,
               ShapeClass.ROW: kernel.row_inputs, ShapeClass.COL: kernel.col_inputs}
    inputs = "".join(cls.label[0] * len(names) for cls, names in classes.items())
    results = "".join("p" if name == f"new_{PARAM}" else "f"
                      for name, _ in pass_.schedule.results)
    results += "".join(REDUCTION_KINDS[r.axes].upper() if r.largest else REDUCTION_KINDS[r.axes]
                       for r in kernel.reductions)
    return MLXPass(kernel.name, kernel.factored, f"_mlx_{kernel.name}",
                   ", ".join((*arrays, *kernel.scalar_names)), tuple(lines), inputs,
                   results, kernel.rounding_key_index)
