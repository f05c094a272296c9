"""The Python side of the fused GPU backends: glue on small arrays between kernel passes.

For each specialisation one driver function (shared by Metal and CUDA, which take the
same launch arguments) computes glue ``k`` with MLX ops on rows/cols/scalars, launches
pass kernel ``k``, folds that pass's deterministic partial sums into reduction results,
and finally writes the state. Full-size arrays are touched only by the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from afgen.backends.functions import MLX, atom_loads
from afgen.backends.kernels import PassKernel, check_fits, pass_kernel, tile
from afgen.backends.printers import mlx_code
from afgen.backends.targets import TARGETS, smallest_limits
from afgen.lower.plan import KernelPlan, Schedule
from afgen.spec.model import GRAD, PARAM, Spec
from afgen.spec.shapes import ReduceAxes, ShapeClass

SMALL_PACKERS = {ShapeClass.ROW: "_rt.rows", ShapeClass.COL: "_rt.cols",
                 ShapeClass.BATCH: "_rt.batches"}


@dataclass(frozen=True)
class DriverModel:
    name: str
    doc: str
    lines: tuple[str, ...]
    kernels: tuple[str, ...]


def _full_dtypes(plan: KernelPlan) -> dict[str, str]:
    types = {GRAD: "T", PARAM: "T", f"new_{PARAM}": "T"}
    for name in plan.program.live_state:
        types[name] = types[f"new_{name}"] = "S"
    return types


def plan_kernels(plan: KernelPlan, prefix: str) -> list[PassKernel]:
    """One kernel per pass, its body the same text for every target; each must fit the
    limits every target guarantees."""
    kernels = [pass_kernel(plan, p, _full_dtypes(plan), prefix) for p in plan.passes]
    for kernel in kernels:
        check_fits(kernel, smallest_limits())
    return kernels


def _glue_lines(sched: Schedule) -> list[str]:
    lines = []
    for step in sched.steps:
        code = mlx_code(step.expr)
        if step.is_reduction:
            code = MLX.reduce(step, code)
        lines.append(f"{step.name} = {code}")
    lines += [f"{name} = {mlx_code(expr)}" for name, expr in sched.results
              if expr != sympy.Symbol(name, real=True)]
    return lines


def _finish_reduction(name: str, part: str, axes: ReduceAxes, mean: bool) -> str:
    if axes is ReduceAxes.ALL:
        total, count = f"mx.sum({part})", "size"
    elif axes is ReduceAxes.ROWWISE:
        total, count = f"_rt.row_total({part}, geo)", "geo.N"
    else:
        total, count = f"_rt.col_total({part}, geo)", "geo.M"
    return f"{name} = {total} / {count}" if mean else f"{name} = {total}"


def driver_model(spec: Spec, plan: KernelPlan, kernels: list[PassKernel]) -> DriverModel:
    shapes = {str(k): v for k, v in plan.program.shapes.items()}
    glue_atoms: set[str] = set()
    for sched in plan.glue:
        for step in sched.steps:
            glue_atoms |= {str(s) for s in step.expr.free_symbols}
        for _, expr in sched.results:
            glue_atoms |= {str(s) for s in expr.free_symbols}
    rows, cols = tile(plan.factored)
    lines = [f"geo = self._geometry(parameter.shape, {plan.factored}, {rows}, {cols})",
             "size = max(parameter.size, 1)",
             'sdt = mx.float32 if self.precision == "float32" else parameter.dtype',
             "cdt = mx.float32"]
    # Small atoms the glue and the kernels' small inputs need; full ones go to kernels.
    needed = glue_atoms | {n for k in kernels for n in (*k.scalar_names, *k.batch_inputs,
                                                        *k.row_inputs, *k.col_inputs)}
    needed = {n for n in needed if shapes.get(n) is not ShapeClass.FULL}
    lines += [f"{name} = {code}" for name, code in atom_loads(spec, plan, MLX, needed)]
    # Full-size arrays travel flat: a 0-D array would otherwise become a reference in
    # MLX's kernel signature, not a buffer.
    full_sources = {GRAD: "gradient.reshape(-1)", PARAM: "parameter.reshape(-1)"}
    full_sources.update({n: f'state["{n}"].reshape(-1)' for n in plan.program.live_state})
    for index, kernel in enumerate(kernels):
        lines += _glue_lines(plan.glue[index])
        inputs = [full_sources[n] for n in kernel.full_inputs]
        for cls, names in ((ShapeClass.BATCH, kernel.batch_inputs),
                           (ShapeClass.ROW, kernel.row_inputs),
                           (ShapeClass.COL, kernel.col_inputs)):
            inputs += [f"{SMALL_PACKERS[cls]}({n}, geo)" for n in names]
        scalars = list(kernel.scalar_names)
        if kernel.rounding_key_index is not None:
            scalars.append("self._kernel_rounding_key(parameter)")
        inputs += [f"_rt.pack([{', '.join(scalars)}])", "geo.dims"]
        outputs = []
        for out in kernel.full_outputs:
            like = "parameter" if out.name == f"new_{PARAM}" else \
                f'state["{out.name.removeprefix("new_")}"]'
            dtype = "parameter.dtype" if out.ctype == "T" else "sdt"
            outputs.append(f"(({like}.size,), {dtype})")
        outputs += ["((geo.B * geo.nrb * geo.ncc,), mx.float32)"] * len(kernel.all_reductions)
        outputs += ["((geo.B * geo.M * geo.ncc,), mx.float32)"] * len(kernel.row_reductions)
        outputs += ["((geo.B * geo.nrb * geo.N,), mx.float32)"] * len(kernel.col_reductions)
        if not kernel.output_names:  # an update that changes nothing here: no launch
            continue
        targets = ", ".join(kernel.output_names) + ("," if len(kernel.output_names) == 1 else "")
        lines.append(f'{targets} = self._launch(backend, "{kernel.name}", geo, '
                     f"[{', '.join(inputs)}], [{', '.join(outputs)}], parameter.dtype, sdt)")
        for out in kernel.full_outputs:
            like = "parameter" if out.name == f"new_{PARAM}" else \
                f'state["{out.name.removeprefix("new_")}"]'
            lines.append(f"{out.name} = {out.name}.reshape({like}.shape)")
        for red in kernel.reductions:
            lines.append(_finish_reduction(red.name, red.buffer, red.axes, red.mean))
    lines += _glue_lines(plan.glue[len(kernels)])
    state_shapes = {s.name: s.shape for s in spec.state}
    result = "parameter"
    full_written = {o.name for k in kernels for o in k.full_outputs}
    for name, _ in plan.flat.results:
        key = name.removeprefix("new_")
        if key == PARAM:
            result = name if name in full_written else \
                f"self._write_parameter({name}, parameter)"
        elif name in full_written:
            lines.append(f'state["{key}"] = {name}')
        else:
            lines.append(f'state["{key}"] = _rt.collapse({name}, state["{key}"], '
                         f'"{state_shapes[key].label}")')
    lines.append(f"return {result}")
    configs = "\n    ".join(c.label for c in plan.configs)
    return DriverModel(f"_gpu_{plan.name}", f"Fused-kernel update for:\n    {configs}",
                       tuple(lines), tuple(k.name for k in kernels))


def headers() -> dict[str, str]:
    return {name: target.header for name, target in TARGETS.items()}


def prologues() -> dict[str, str]:
    return {name: target.prologue for name, target in TARGETS.items()}
