"""The NumPy float64 oracle: the same spec, rendered for NumPy and run in float64.

It mirrors mlx.optimizers.Optimizer's bookkeeping (state init, schedules evaluated at
the step count *before* the increment, 1-based ``t``) so a generated optimizer and the
oracle can be stepped side by side from the same inputs.
"""
from __future__ import annotations

import types

import numpy as np

from afgen.backends.functions import NUMPY, function_model
from afgen.backends.render import render
from afgen.bookkeeping import dynamic_values, reoriented, static_values
from afgen.compiler import Compiled
from afgen.lower.config import StaticConfig, factor_axes, state_shape


def render_oracle(compiled: Compiled) -> str:
    functions = [function_model(compiled.spec, plan, NUMPY, "_np_") for plan in compiled.plans]
    return render("oracle.py.j2", spec=compiled.spec, spec_path=compiled.spec.path,
                  functions=functions)


def _exec_module(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"<afgen {name}>", "exec"), module.__dict__)  # noqa: S102 - our own render
    return module


class Oracle:
    """Steps a dict of float64 parameters the way the generated optimizer steps its tree."""

    def __init__(self, compiled: Compiled, hyper: dict[str, object]):
        self.compiled = compiled
        self.spec = compiled.spec
        self.module = _exec_module(render_oracle(compiled), f"{self.spec.stem}_oracle")
        self.hyper = {h.name: h.default for h in self.spec.hyperparameters}
        unknown = set(hyper) - set(self.hyper)
        if unknown:
            raise ValueError(f"unknown hyperparameters: {sorted(unknown)}")
        self.hyper.update(hyper)
        self.step_count = 0
        self._classes = {s.name: s.shape.label for s in self.spec.state}
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def _static_values(self) -> dict[str, bool]:
        return static_values(self.spec, self.hyper)

    def layout(self, shape: tuple[int, ...]) -> tuple[StaticConfig, tuple[int, int] | None]:
        """The configuration for a parameter of ``shape`` and the axes it is factored over."""
        axes = factor_axes(self.spec, shape, self.hyper)
        values = self._static_values()
        config = StaticConfig(tuple((n, values[n]) for n in self.spec.static_names),
                              axes is not None)
        return config, axes

    def _dynamic(self) -> dict[str, float]:
        return dynamic_values(self.spec, self.hyper, self.step_count)

    def init_state(self, name: str, param: np.ndarray) -> None:
        config, axes = self.layout(tuple(param.shape))
        plan = self.compiled.plan_for[config]
        self.state[name] = {s.name: np.full(state_shape(s.shape, param.shape, axes), s.init,
                                            np.float64)
                            for s in self.spec.state if s.name in plan.program.live_state}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
             dtype_eps: float = float(np.finfo(np.float32).eps)) -> dict[str, np.ndarray]:
        """One optimizer step over every parameter; returns the new parameters.
        ``dtype_eps`` is the machine epsilon of the parameters' own dtype."""
        hp = self._dynamic()  # schedules read the count before the increment, as MLX does
        hp["dtype_eps"] = dtype_eps
        self.step_count += 1
        out = {}
        for name, grad in grads.items():
            param = np.asarray(params[name], np.float64)
            if name not in self.state:
                self.init_state(name, param)
            if param.size == 0:  # the generated optimizer keeps empty parameters as they are
                out[name] = param
                continue
            config, axes = self.layout(tuple(param.shape))
            function = self.module.FUNCTIONS[f"_np_{self.compiled.plan_for[config].name}"]
            out[name] = reoriented(
                lambda g, p, s, f=function: f(g, p, float(self.step_count), hp, s),
                axes, np.asarray(grad, np.float64), param, self.state[name], self._classes)
        return out


__all__ = ["Oracle", "render_oracle"]
