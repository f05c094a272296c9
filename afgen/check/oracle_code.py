"""The oracle's functions: a plan's flat schedule as straight-line NumPy in float64.

Values live in the *broadcast layout* (row ``(*B, M, 1)``, col ``(*B, 1, N)``, batch
``(*B, 1, 1)``, scalar ``()``), so plain broadcasting implements every shape-class rule;
state is converted on load and store (``_expand``/``_collapse`` in templates/oracle.py.j2).
This is the lowered plan, the same program the fused kernels run, evaluated in float64:
the MLX-ops path is rendered from the spec's statements instead (afgen/backends/
mlx_function.py), so the two share only the spec.
"""
from __future__ import annotations

from dataclasses import dataclass

from afgen.backends.printers import broadcast_reduction, numpy_code
from afgen.lower.plan import KernelPlan
from afgen.spec.model import DTYPE_EPS, GRAD, LAYOUT_COLS, LAYOUT_ROWS, PARAM, STEP, Spec
from afgen.spec.shapes import ReduceAxes

# How each input of the plan is read: the function's arguments and ``hp`` (hyperparameter
# values by expression name, the run-time bool options and ``dtype_eps``).
NUMPY_REDUCTIONS = {"sum": "np.sum", "mean": "np.mean", "max": "np.max"}
FIXED_LOADS = {GRAD: "grad_in", PARAM: "param_in", STEP: "np.float64(step)",
               DTYPE_EPS: 'hp["dtype_eps"]', LAYOUT_ROWS: "grad_in.shape[-2]",
               LAYOUT_COLS: "grad_in.shape[-1]"}


@dataclass(frozen=True)
class FunctionModel:
    """What the template needs to write one specialised function."""

    name: str
    doc: str
    loads: tuple[tuple[str, str], ...]
    body: tuple[tuple[str, str], ...]
    stores: tuple[tuple[str, str], ...]
    result: str


def _load(plan: KernelPlan, name: str) -> str:
    if name in FIXED_LOADS:
        return FIXED_LOADS[name]
    if name in plan.program.live_state:
        label = next(v for k, v in plan.program.shapes.items() if str(k) == name).label
        return f'_expand(state["{name}"], "{label}")'
    return f'hp.get("{name}")'  # None for an optional value that is not given


def function_model(spec: Spec, plan: KernelPlan) -> FunctionModel:
    """Lay out ``plan.flat`` as the body of ``_np_<plan name>``."""
    flat = plan.flat
    used: set[str] = {PARAM}  # the parameter is returned as it is if the plan keeps it
    for step in flat.steps:
        used |= {str(s) for s in step.expr.free_symbols}
    for _, expr in flat.results:
        used |= {str(s) for s in expr.free_symbols}
    used -= {str(s.name) for s in flat.steps}
    loads = tuple((name, _load(plan, name)) for name in sorted(used))
    body = []
    for step in flat.steps:
        code = numpy_code(step.expr)
        if step.reduce is ReduceAxes.MATRIX:
            code = f"_np_matrix_{step.block}({code}, hp)"
        elif step.is_reduction:
            code = broadcast_reduction(NUMPY_REDUCTIONS, step.how, step.reduce, code)
        body.append((str(step.name), code))
    stores, result = [], PARAM
    state_shapes = {s.name: s.shape for s in spec.state}
    for name, expr in flat.results:
        key = name.removeprefix("new_")
        if key == PARAM:
            result = numpy_code(expr)
        else:
            stores.append((key, f'_collapse({numpy_code(expr)}, state["{key}"], '
                                f'"{state_shapes[key].label}")'))
    configs = "\n    ".join(c.label for c in plan.configs)
    return FunctionModel(f"_np_{plan.name}", f"Specialised for:\n    {configs}", loads,
                         tuple(body), tuple(stores), f'_collapse({result}, param_in, "full")')
