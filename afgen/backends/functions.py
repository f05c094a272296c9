"""Straight-line Python functions from a plan's flat schedule (MLX ops and the NumPy oracle).

Both array backends share one layout: values live in a *broadcast layout* where a row
is ``(*B, M, 1)``, a col ``(*B, 1, N)``, a batch value ``(*B, 1, 1)`` and a scalar ``()``,
so plain broadcasting implements every shape-class rule; state is converted on load and
store. The dialect only decides how atoms are read, how reductions and stores are
spelled, and which printer prints expressions.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy

from afgen.backends.printers import is_wide, mlx_code, numpy_code
from afgen.lower.config import dynamic_statics
from afgen.lower.plan import KernelPlan, Step
from afgen.spec.model import DTYPE_EPS, GRAD, PARAM, STEP, Spec
from afgen.spec.shapes import ReduceAxes, ShapeClass


@dataclass(frozen=True)
class FunctionModel:
    """What a template needs to write one specialised function."""

    name: str
    doc: str
    loads: tuple[tuple[str, str], ...]
    body: tuple[tuple[str, str], ...]
    stores: tuple[tuple[str, str], ...]
    result: str


@dataclass(frozen=True)
class Dialect:
    printer: Callable[[sympy.Basic, frozenset[str]], str]
    load_grad: str
    load_param: str
    load_step: str
    load_state: Callable[[str, ShapeClass], str]
    load_hyper: Callable[[Spec, str], str]
    reduce: Callable[[Step, str], str]
    store_state: Callable[[str, str, ShapeClass], str]
    result: Callable[[str], str]
    load_dtype_eps: str
    wide_atoms: frozenset[str] = frozenset()  # atoms wider than the compute dtype


def _axes_text(axes: ReduceAxes) -> str:
    return {ReduceAxes.ROWWISE: "-1", ReduceAxes.COLWISE: "-2",
            ReduceAxes.MATRIXWISE: "(-2, -1)"}[axes]


def _reduce(module: str) -> Callable[[Step, str], str]:
    def spell(step: Step, operand: str) -> str:
        op = "mean" if step.mean else "sum"
        if step.reduce is ReduceAxes.ALL:
            return f"{module}.{op}({operand})"
        return f"{module}.{op}({operand}, axis={_axes_text(step.reduce)}, keepdims=True)"
    return spell


def _hyper_source(spec: Spec, name: str, owner: str) -> str:
    for h in spec.hyperparameters:
        if h.kind == "pair" and name in h.component_names:
            return f"{owner}.{h.name}[{h.component_names.index(name)}]"
        if h.name == name:
            return f"{owner}.{name}"
    raise KeyError(name)


def _schedule_load(spec: Spec, name: str) -> str:
    """An optional schedule is absent from the state when not given; only a run-time
    branch that ``requires`` rules out then reads it, so None never reaches an op."""
    load = f'_rt.cast(self.state["{name}"], cdt)'
    if spec.hyper(name).required:
        return load
    return f'({load} if "{name}" in self.state else None)'


MLX = Dialect(
    printer=mlx_code,
    load_grad="_rt.cast(gradient, cdt)",
    load_param="_rt.cast(parameter, cdt)",
    load_step="self.step.astype(mx.float32)",
    load_state=lambda key, shape: f'_rt.cast(_rt.expand(state["{key}"], "{shape.label}"), cdt)',
    load_hyper=lambda spec, name: (  # MLX keeps schedule values in the state, as arrays
        _schedule_load(spec, name) if name in spec.schedule_names
        else _hyper_source(spec, name, "self")),
    reduce=_reduce("mx"),
    store_state=lambda key, code, shape: f'_rt.collapse({code}, state["{key}"], "{shape.label}")',
    result=lambda code: f"self._write_parameter({code}, parameter)",
    load_dtype_eps="mx.finfo(parameter.dtype).eps",
    wide_atoms=frozenset({STEP}),  # MLX's step promotes to float32
)

NUMPY = Dialect(
    printer=numpy_code,
    load_grad="grad_in",
    load_param="param_in",
    load_step="np.float64(step)",
    load_state=lambda key, shape: f'_expand(state["{key}"], "{shape.label}")',
    load_hyper=lambda spec, name: f'hp.get("{name}")',
    reduce=_reduce("np"),
    store_state=lambda key, code, shape: f'_collapse({code}, state["{key}"], "{shape.label}")',
    result=lambda code: f'_collapse({code}, param_in, "full")',
    load_dtype_eps='hp["dtype_eps"]',
)


def atom_loads(spec: Spec, plan: KernelPlan, dialect: Dialect, needed: set[str]
               ) -> list[tuple[str, str]]:
    """``(name, code)`` reading each needed atom (inputs, step, hyperparameters, state)
    into the form the function body expects, in a stable order."""
    shapes = {str(k): v for k, v in plan.program.shapes.items()}
    fixed = {GRAD: dialect.load_grad, PARAM: dialect.load_param, STEP: dialect.load_step,
             DTYPE_EPS: dialect.load_dtype_eps}
    loads = []
    for name in [*fixed, *spec.dynamic_names, *dynamic_statics(spec), *plan.program.live_state]:
        if name not in needed:
            continue
        if name in fixed:
            code = fixed[name]
        elif name in plan.program.live_state:
            code = dialect.load_state(name, shapes[name])
        else:
            code = dialect.load_hyper(spec, name)
        loads.append((name, code))
    return loads


def function_model(spec: Spec, plan: KernelPlan, dialect: Dialect, prefix: str) -> FunctionModel:
    """Lay out ``plan.flat`` as a function body in ``dialect``."""
    flat = plan.flat
    used: set[str] = set()
    for step in flat.steps:
        used |= {str(s) for s in step.expr.free_symbols}
    for _, expr in flat.results:
        used |= {str(s) for s in expr.free_symbols}
    if not any(name == f"new_{PARAM}" for name, _ in flat.results):
        used.add(PARAM)  # the parameter is returned as it is, so it must be loaded
    defined = {str(s.name) for s in flat.steps}
    loads = atom_loads(spec, plan, dialect, used - defined)
    body = []
    wide = set(dialect.wide_atoms)
    for step in flat.steps:
        code = dialect.printer(step.expr, frozenset(wide))
        if step.is_reduction:
            code = dialect.reduce(step, code)
        if is_wide(step.expr, frozenset(wide)):
            wide.add(str(step.name))
        body.append((str(step.name), code))
    stores, result = [], "param"
    state_shapes = {s.name: s.shape for s in spec.state}
    for name, expr in flat.results:
        key = name.removeprefix("new_")
        code = dialect.printer(expr, frozenset(wide))
        if key == PARAM:
            result = dialect.result(code)
        else:
            stores.append((key, dialect.store_state(key, code, state_shapes[key])))
    if not any(name == f"new_{PARAM}" for name, _ in flat.results):
        result = dialect.result(PARAM)
    configs = "\n    ".join(c.label for c in plan.configs)
    return FunctionModel(f"{prefix}{plan.name}", f"Specialised for:\n    {configs}",
                         tuple(loads), tuple(body), tuple(stores), result)
