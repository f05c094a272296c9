"""The Python side of the fused GPU backends: glue on small arrays between kernel passes.

For each specialisation one driver function (shared by Metal and CUDA, which take the
same launch arguments) computes glue ``k`` with MLX ops on rows/cols/scalars, launches
pass kernel ``k``, folds that pass's deterministic partial sums into reduction results,
and finally writes the state. Full-size arrays are touched only by the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from afgen.backends.kernels import PassKernel, check_fits, pass_kernel, tile
from afgen.backends.mlx_function import hyperparameter_reads
from afgen.backends.names import MODULE_NAMES, PYTHON_RESERVED
from afgen.backends.printers import BROADCAST_AXES, PLAIN_READ, mlx_code
from afgen.backends.targets import smallest_limits
from afgen.lower.config import dynamic_statics
from afgen.lower.plan import KernelPlan, Schedule
from afgen.names import SymbolTable
from afgen.spec.model import DTYPE_EPS, GRAD, LAYOUT_COLS, LAYOUT_ROWS, PARAM, STEP, Spec
from afgen.spec.shapes import ReduceAxes, ShapeClass

SMALL_PACKERS = {ShapeClass.ROW: "_rt.rows", ShapeClass.COL: "_rt.cols",
                 ShapeClass.BATCH: "_rt.batches"}


@dataclass(frozen=True)
class DriverModel:
    """A driver function, and the function of its step values (``step_lines``, computed
    once per step through ``self._per_step``; empty if it has none)."""

    name: str
    signature: str
    doc: str
    lines: tuple[str, ...]
    kernels: tuple[str, ...]
    step_function: str = ""
    step_lines: tuple[str, ...] = ()


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


# The driver's own locals, drawn fresh around every name of the plan and its kernels.
DRIVER_LOCALS = ("gradient", "parameter", "state", "backend", "tensors", "geo", "sdt",
                 "cdt")


def _glue_lines(sched: Schedule, geo: str, hoisted: set[str]) -> list[str]:
    lines = []
    for step in sched.steps:
        if str(step.name) in hoisted:
            continue
        code = mlx_code(step.expr)
        if step.is_reduction:
            # per tensor of a stack, whole across a sharded axis, accurate at any size
            # (afgen/runtime.py)
            of = step.operand_shape.label
            if step.reduce is ReduceAxes.ALL:
                code = f"_rt.tensor_reduce({code}, {geo}, {step.how!r}, {of!r})"
            else:
                axis = BROADCAST_AXES[step.reduce]
                code = f"_rt.small_reduce({code}, {geo}, {step.how!r}, {axis}, {of!r})"
        lines.append(f"{step.name} = {code}")
    lines += [f"{name} = {mlx_code(expr)}" for name, expr in sched.results
              if name not in hoisted]
    return lines


def _finish_reduction(name: str, part: str, axes: ReduceAxes, how: str,
                      v: dict[str, str]) -> str:
    """The reduction from a pass's partials (one per threadgroup, row or col chunk)."""
    fold = {ReduceAxes.ALL: "tensor_total", ReduceAxes.ROWWISE: "row_total",
            ReduceAxes.COLWISE: "col_total"}[axes]
    extra = "" if how == "sum" else f", {how!r}"
    return f"{name} = _rt.{fold}({part}, {v['geo']}{extra})"


def _plan_names(plan: KernelPlan, kernels: list[PassKernel]) -> set[str]:
    """Every name the plan's glue and the kernels' buffers bind in the driver."""
    names = {str(s) for s in plan.program.shapes} | set(plan.program.atom_names)
    for sched in (*plan.glue, plan.flat):
        names |= {str(step.name) for step in sched.steps}
        names |= {name for name, _ in sched.results}
    for kernel in kernels:
        names |= set(kernel.output_names)
    return names


def _small_load(spec: Spec, plan: KernelPlan, name: str, v: dict[str, str]) -> str:
    """How the driver reads a small atom: the step, a hyperparameter, a small state."""
    cdt = v["cdt"]
    if name == STEP:
        return "self.step.astype(mx.float32)"
    if name == DTYPE_EPS:
        return f"mx.finfo({v['parameter']}.dtype).eps"
    if name in (LAYOUT_ROWS, LAYOUT_COLS):  # the factored view's sizes
        return f"{v['geo']}.{'M' if name == LAYOUT_ROWS else 'N'}"
    if name in plan.program.live_state:
        label = plan.program.shapes[sympy.Symbol(name, real=True)].label
        return f'_rt.cast(_rt.expand({v["state"]}["{name}"], "{label}"), {cdt})'
    read = hyperparameter_reads(spec, cdt).get(name, f"self.{name}")  # else a run-time bool
    if name in spec.schedule_names and not spec.hyper(name).required:
        # An optional schedule is absent when not given; only a run-time branch that
        # ``requires`` rules out then reads it, so None never reaches an op.
        return f'({read} if "{name}" in self.state else None)'
    return read


def driver_model(spec: Spec, plan: KernelPlan, kernels: list[PassKernel]) -> DriverModel:
    names = SymbolTable(PYTHON_RESERVED | MODULE_NAMES | _plan_names(plan, kernels))
    v = {local: names.fresh(local) for local in DRIVER_LOCALS}
    gradient, parameter, state, geo = v["gradient"], v["parameter"], v["state"], v["geo"]
    shapes = {str(k): s for k, s in plan.program.shapes.items()}
    glue_atoms: set[str] = set()
    for sched in plan.glue:
        for step in sched.steps:
            glue_atoms |= {str(s) for s in step.expr.free_symbols}
        for _, expr in sched.results:
            glue_atoms |= {str(s) for s in expr.free_symbols}
    rows, cols = tile(plan.factored)
    lines = [f"{geo} = self._geometry({parameter}.shape, {plan.factored}, {rows}, {cols}, "
             f"{v['backend']}, {v['tensors']})",
             f'{v["sdt"]} = mx.float32 if self.precision == "float32" else {parameter}.dtype',
             f"{v['cdt']} = mx.float32"]
    # Small atoms the glue and the kernels' small inputs need; full ones go to kernels.
    needed = glue_atoms | {n for k in kernels for n in (*k.scalar_names, *k.batch_inputs,
                                                        *k.row_inputs, *k.col_inputs)}
    defined = {str(step.name) for sched in plan.glue for step in sched.steps}
    defined |= {name for sched in plan.glue for name, _ in sched.results}
    defined |= {str(r.name) for r in plan.program.reductions}
    order = [STEP, DTYPE_EPS, LAYOUT_ROWS, LAYOUT_COLS, *spec.dynamic_names,
             *dynamic_statics(spec), *plan.program.live_state]
    loads = [(name, _small_load(spec, plan, name, v)) for name in order
             if name in needed - defined and shapes.get(name) is not ShapeClass.FULL]
    in_float32 = {name: _small_load(spec, plan, name, {**v, "cdt": "mx.float32"})
                  for name, _ in loads}
    step_lines, hoisted, returned, later = _step_values(spec, plan, kernels, loads,
                                                       in_float32)
    lines += [f"{name} = {code}" for name, code in loads
              if name not in hoisted or (name not in returned and name in later)]
    step_function = ""
    if returned:
        step_function = f"_step_values_{plan.name}"
        lines.append(f"{', '.join(returned)}{',' if len(returned) == 1 else ''} = "
                     f"self._per_step({step_function})")
        step_lines.append(f"return {', '.join(returned)}{',' if len(returned) == 1 else ''}")
    # Full-size arrays travel flat: a 0-D array would otherwise become a reference in
    # MLX's kernel signature, not a buffer.
    full_sources = {GRAD: f"{gradient}.reshape(-1)", PARAM: f"{parameter}.reshape(-1)"}
    full_sources.update({n: f'{state}["{n}"].reshape(-1)' for n in plan.program.live_state})
    for index, kernel in enumerate(kernels):
        lines += _glue_lines(plan.glue[index], geo, hoisted)
        inputs = [full_sources[n] for n in kernel.full_inputs]
        for cls, small in ((ShapeClass.BATCH, kernel.batch_inputs),
                           (ShapeClass.ROW, kernel.row_inputs),
                           (ShapeClass.COL, kernel.col_inputs)):
            inputs += [f"{SMALL_PACKERS[cls]}({n}, {geo})" for n in small]
        scalars = list(kernel.scalar_names)
        if kernel.rounding_key_index is not None:
            scalars.append(f"self._kernel_rounding_key({parameter})")
        inputs += [f"[{', '.join(scalars)}]", f"{geo}.dims"]
        outputs = []
        for out in kernel.full_outputs:
            dtype = f"{parameter}.dtype" if out.ctype == "T" else v["sdt"]
            outputs.append(f"(({_like(out.name, v)}.size,), {dtype})")
        outputs += [f"(({geo}.B * {geo}.nrb * {geo}.ncc,), mx.float32)"] * len(
            kernel.all_reductions)
        outputs += [f"(({geo}.B * {geo}.M * {geo}.ncc,), mx.float32)"] * len(
            kernel.row_reductions)
        outputs += [f"(({geo}.B * {geo}.nrb * {geo}.N,), mx.float32)"] * len(
            kernel.col_reductions)
        outputs += [f"(({geo}.B * {geo}.M * {geo}.N,), mx.float32)"] * len(
            kernel.matrix_operands)
        if not kernel.output_names:  # an update that changes nothing here: no launch
            continue
        targets = ", ".join(kernel.output_names) + ("," if len(kernel.output_names) == 1 else "")
        lines.append(f'{targets} = self._launch({v["backend"]}, "{kernel.name}", {geo}, '
                     f"[{', '.join(inputs)}], [{', '.join(outputs)}], {parameter}.dtype, "
                     f"{v['sdt']})")
        for out in kernel.full_outputs:
            lines.append(f"{out.name} = {out.name}.reshape({_like(out.name, v)}.shape)")
        for red in kernel.reductions:
            if red.axes is ReduceAxes.MATRIX:  # read whole by a later pass
                lines.append(f"{red.name} = self._matrix_{red.block}("
                             f"{red.buffer}.reshape({geo}.shape))")
                full_sources[red.name] = f"{red.name}.reshape(-1)"
                continue
            lines.append(_finish_reduction(red.name, red.buffer, red.axes, red.how, v))
    lines += _glue_lines(plan.glue[len(kernels)], geo, hoisted)
    state_shapes = {s.name: s.shape for s in spec.state}
    result = parameter
    full_written = {o.name for k in kernels for o in k.full_outputs}
    for name, _ in plan.flat.results:
        key = name.removeprefix("new_")
        if key == PARAM:
            result = name if name in full_written else \
                f"self._write_parameter({name}, {parameter})"
        elif name in full_written:
            lines.append(f'{state}["{key}"] = {name}')
        else:
            lines.append(f'{state}["{key}"] = _rt.collapse({name}, {state}["{key}"], '
                         f'"{state_shapes[key].label}")')
    lines.append(f"return {result}")
    configs = "\n    ".join(c.label for c in plan.configs)
    signature = f"self, {gradient}, {parameter}, {state}, {v['backend']}, {v['tensors']}=1"
    return DriverModel(f"_gpu_{plan.name}", signature,
                       f"Fused-kernel update for:\n    {configs}", tuple(lines),
                       tuple(k.name for k in kernels), step_function, tuple(step_lines))


def share_step_values(drivers: list[DriverModel]) -> list[DriverModel]:
    """Drivers whose step values are the same lines call one function for them (one
    computation per step for all of their parameters)."""
    first: dict[tuple[str, ...], str] = {}
    shared = []
    for drv in drivers:
        name = first.setdefault(drv.step_lines, drv.step_function)
        if not drv.step_function or name == drv.step_function:
            shared.append(drv)
            continue
        call = f"self._per_step({drv.step_function})"
        lines = tuple(line.replace(call, f"self._per_step({name})") for line in drv.lines)
        shared.append(replace(drv, lines=lines, step_function="", step_lines=()))
    return shared


def _read_later(plan: KernelPlan, kernels: list[PassKernel], hoisted: set[str]) -> set[str]:
    """The names the driver reads outside its step values: in its own glue, as the
    kernels' small inputs, and as the results it writes."""
    read = {n for k in kernels for n in (*k.scalar_names, *k.batch_inputs, *k.row_inputs,
                                         *k.col_inputs)}
    read |= {name for name, _ in plan.flat.results}
    for sched in plan.glue:
        for name, expr in (*((str(s.name), s.expr) for s in sched.steps), *sched.results):
            if name not in hoisted:
                read |= {str(s) for s in expr.free_symbols}
    return read


def _step_values(spec: Spec, plan: KernelPlan, kernels: list[PassKernel],
                 loads: list[tuple[str, str]], in_float32: dict[str, str]
                 ) -> tuple[list[str], set[str], list[str], set[str]]:
    """What depends on the step and the hyperparameters alone is the same for every
    parameter: the driver gets it once per step (eagerly, every MLX op is a dispatch).
    Returns the lines that compute it (with the loads ``in_float32``), every name they
    define, the names the driver takes from them (a plain hyperparameter read it makes
    itself, and the lines use in place), and what the driver reads (``_read_later``)."""
    per_step = {STEP, *spec.dynamic_names, *dynamic_statics(spec)}
    hoisted = {name for name, _ in loads if name in per_step}
    glue = []
    for sched in plan.glue:
        values = [(str(step.name), step.expr) for step in sched.steps if not step.is_reduction]
        for name, expr in (*values, *sched.results):
            if {str(s) for s in expr.free_symbols} <= hoisted:
                glue.append((name, expr))
                hoisted.add(name)
    plain = {name: code for name, code in loads if PLAIN_READ.fullmatch(code)}
    later = _read_later(plan, kernels, hoisted)
    returned = [name for name, _ in loads if name in hoisted and name not in plain
                and name in later] + [name for name, _ in glue if name in later]
    used = {str(s) for _, expr in glue for s in expr.free_symbols}
    lines = [f"{name} = {in_float32[name]}" for name, _ in loads
             if name in hoisted and name not in plain and (name in used or name in returned)]
    for name, expr in glue:
        inline = {s: sympy.Symbol(plain[str(s)]) for s in expr.free_symbols if str(s) in plain}
        lines.append(f"{name} = {mlx_code(expr.xreplace(inline))}")
    return lines, hoisted, returned, later


def _like(output: str, v: dict[str, str]) -> str:
    """The array a full-size kernel output replaces (its size, shape and dtype)."""
    if output == f"new_{PARAM}":
        return v["parameter"]
    return f'{v["state"]}["{output.removeprefix("new_")}"]'
