"""The NumPy float64 oracle: the same spec, rendered for NumPy and run in float64.

It mirrors mlx.optimizers.Optimizer's bookkeeping (state init, schedules evaluated at
the step count *before* the increment, 1-based ``t``) so a generated optimizer and the
oracle can be stepped side by side from the same inputs.
"""
from __future__ import annotations

import types

import numpy as np

from afgen.backends.matrix_blocks import numpy_block_lines
from afgen.backends.render import render
from afgen.check.bookkeeping import Stepper, static_values
from afgen.check.oracle_code import function_model
from afgen.lower.compiler import Compiled
from afgen.lower.plan import KernelPlan


def render_oracle(compiled: Compiled) -> str:
    spec = compiled.spec
    functions = [function_model(spec, plan) for plan in compiled.plans]
    blocks = [{"index": b.index, "name": b.name, "line": b.loc.line,
               "lines": numpy_block_lines(b, set(spec.dynamic_names))}
              for b in spec.matrix_blocks()]
    return render("oracle.py.j2", spec=spec, spec_path=spec.path, functions=functions,
                  matrix_blocks=blocks)


def _exec_module(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"<afgen {name}>", "exec"), module.__dict__)  # noqa: S102 - our own render
    return module


class Oracle(Stepper):
    """Steps a dict of float64 parameters the way the generated optimizer steps its tree,
    with the spec's lowered plan rendered for NumPy."""

    def __init__(self, compiled: Compiled, hyper: dict[str, object]):
        super().__init__(compiled.spec, hyper)
        self.compiled = compiled
        self.module = _exec_module(render_oracle(compiled), f"{self.spec.stem}_oracle")

    def _plan(self, factored: bool) -> KernelPlan:
        values = static_values(self.spec, self.hyper)
        return self.compiled.plan_for[self.compiled.config_for(values, factored)]

    def live_state(self, shape: tuple[int, ...], axes: tuple[int, int] | None) -> set[str]:
        return set(self._plan(axes is not None).program.live_state)

    def update(self, grad: np.ndarray, param: np.ndarray, state: dict[str, np.ndarray],
               scalars: dict[str, float], axes: tuple[int, int] | None) -> np.ndarray:
        """Scalars are NumPy float64, not Python floats: a hyperparameter of 0 as a
        divisor gives inf (as MLX and the kernels do), not ZeroDivisionError, and a
        negative base to a fractional power NaN, not a complex number."""
        function = self.module.FUNCTIONS[f"_np_{self._plan(axes is not None).name}"]
        statics = static_values(self.spec, self.hyper)
        values = {name: np.float64(value) for name, value in scalars.items()}
        values.update({name: statics[name] for name in self.compiled.dynamic})
        with np.errstate(all="ignore"):
            return function(grad, param, np.float64(self.step_count), values, state)


__all__ = ["Oracle", "render_oracle"]
