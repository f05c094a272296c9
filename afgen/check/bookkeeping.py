"""What every NumPy stepper of a spec shares with mlx.optimizers.Optimizer's bookkeeping.

The float64 oracle (rendered from the lowered plan) and the spec-order reference (which
reads the spec text) must see the same hyperparameter values, schedules and orientation,
or a disagreement between them would say nothing about the lowering: so both take them
from here.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from afgen.lower.config import factor_axes, state_shape, view_permutation
from afgen.spec.model import DTYPE_EPS, Spec


def static_values(spec: Spec, hyper: dict[str, object]) -> dict[str, bool]:
    """Every static predicate: bool hyperparameters and ``has_x`` for optional values."""
    values = {}
    for h in spec.hyperparameters:
        if h.is_static:
            values[h.name] = bool(hyper[h.name])
        elif h.is_optional:
            values[f"has_{h.name}"] = hyper[h.name] is not None
        for component in h.optional_components:
            index = h.component_names.index(component)
            values[f"has_{component}"] = hyper[h.name][index] is not None
    return values


def dynamic_values(spec: Spec, hyper: dict[str, object], step_count: int) -> dict[str, float]:
    """Numeric hyperparameters by expression name; schedules are evaluated at
    ``step_count``, the count *before* the step's increment, as MLX does."""
    out: dict[str, float] = {}
    for h in spec.hyperparameters:
        value = hyper[h.name]
        if h.is_static or value is None:
            continue
        if h.is_tuple:
            out.update({n: float(v) for n, v in zip(h.component_names, value)
                        if v is not None})
        elif callable(value):
            out[h.name] = float(np.asarray(value(step_count)))
        else:
            out[h.name] = float(value)
    return out


def reoriented(update: Callable, axes: tuple[int, int] | None, grad: np.ndarray,
               param: np.ndarray, state: dict[str, np.ndarray],
               classes: dict[str, str]) -> np.ndarray:
    """Run the update (written for the factored axes last) on transposed views, then
    transpose the parameter and state back; ``update`` writes new state into the dict."""
    ndim = grad.ndim
    if axes is None or tuple(axes) == (ndim - 2, ndim - 1):
        return update(grad, param, state)
    full = view_permutation(axes, ndim, "full")
    view = {k: v if classes[k] == "scalar" else
            np.transpose(v, view_permutation(axes, ndim, classes[k])) for k, v in state.items()}
    new = update(np.transpose(grad, full), np.transpose(param, full), view)
    for key, value in view.items():
        state[key] = value if classes[key] == "scalar" else np.transpose(
            value, np.argsort(view_permutation(axes, ndim, classes[key])))
    return np.transpose(new, np.argsort(full))


class Stepper:
    """Steps a dict of NumPy parameters the way the generated optimizer steps its tree:
    defaults under the given hyperparameters, state created on a parameter's first step,
    schedules read at the count before the increment, empty parameters kept as they are,
    the update run with the factored axes last. Subclasses say which state exists and
    how one parameter is updated, in their ``dtype``."""

    dtype: type = np.float64

    def __init__(self, spec: Spec, hyper: dict[str, object]):
        self.spec = spec
        self.hyper = {h.name: h.default for h in spec.hyperparameters}
        unknown = set(hyper) - set(self.hyper)
        if unknown:
            raise ValueError(f"unknown hyperparameters: {sorted(unknown)}")
        self.hyper.update(hyper)
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self._classes = {s.name: s.shape.label for s in spec.state}

    def live_state(self, shape: tuple[int, ...], axes: tuple[int, int] | None) -> set[str]:
        """The state keys a parameter of this shape has."""
        raise NotImplementedError

    def update(self, grad: np.ndarray, param: np.ndarray, state: dict[str, np.ndarray],
               scalars: dict[str, float], axes: tuple[int, int] | None) -> np.ndarray:
        """One parameter's update in the factored-axes-last view; writes ``state``.
        ``scalars`` holds the numeric hyperparameters and ``dtype_eps``."""
        raise NotImplementedError

    def init_state(self, name: str, param: np.ndarray) -> None:
        axes = factor_axes(self.spec, tuple(param.shape), self.hyper)
        live = self.live_state(tuple(param.shape), axes)
        self.state[name] = {s.name: np.full(state_shape(s.shape, param.shape, axes), s.init,
                                            self.dtype)
                            for s in self.spec.state if s.name in live}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
             dtype_eps: float = float(np.finfo(np.float32).eps)) -> dict[str, np.ndarray]:
        """One step over every parameter; returns the new parameters (in ``dtype``).
        ``dtype_eps`` is the machine epsilon of the parameters' own dtype."""
        scalars = dynamic_values(self.spec, self.hyper, self.step_count)
        scalars[DTYPE_EPS] = dtype_eps
        self.step_count += 1
        out = {}
        for name, grad in grads.items():
            param = np.asarray(params[name], self.dtype)
            if name not in self.state:
                self.init_state(name, param)
            if param.size == 0:  # the generated optimizer keeps empty parameters as they are
                out[name] = param
                continue
            axes = factor_axes(self.spec, tuple(param.shape), self.hyper)
            out[name] = reoriented(
                lambda g, p, s, a=axes: self.update(g, p, s, scalars, a), axes,
                np.asarray(grad, self.dtype), param, self.state[name], self._classes)
        return out
