"""What every NumPy stepper of a spec shares with mlx.optimizers.Optimizer's bookkeeping.

The float64 oracle (rendered from the lowered plan) and the spec-order reference (which
reads the spec text) must see the same hyperparameter values, schedules and orientation,
or a disagreement between them would say nothing about the lowering: so both take them
from here.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from afgen.lower.config import view_permutation
from afgen.spec.model import Spec


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
        if h.kind == "pair":
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
