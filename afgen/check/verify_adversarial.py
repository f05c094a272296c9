"""Adversarial verification: the generated class against two references at once.

For one specialisation and backend, every adversarial family member (afgen/check/adversarial.py)
whose layout selects that specialisation goes into one parameter tree, and each step is
taken three ways from the same parameters and state: by the generated class, by the
float64 oracle (rendered from the lowered plan) and by the float32 spec-order reference
(afgen/check/reference.py, which reads the spec text). Per element of the parameter and of
every state tensor, a case fails when

(a) the backend is finite where the float32 spec-order reference is not, or the other way
    round. The float64 oracle cannot judge this: float64 does not overflow where float32
    does, and the oracle computes the lowered expressions, not the spec's. The reference
    is what a plain float32 implementation of the spec gives; a backend that turns its
    finite result into NaN (or hides its overflow) computes something else.
(b) both are finite and the backend is further from the oracle than
    ``max(atol * min(1, m) + rtol * s, tiny, K * |ref32 - oracle|)``: ``s`` is the larger of
    the new and old magnitude (as in the random cases), ``m`` the tensor's largest
    magnitude, so a tensor of 1e-20-scale values is compared relatively instead of passing
    anything below ``atol``; ``tiny`` is float32's smallest normal number, the resolution
    float32 has left in the subnormal range. The last term is the spec's own float32
    conditioning: where evaluating the spec as written in float32 is already far from
    float64 (a squared 1e18 gradient times another overflows to inf, 1e-40 loses its
    digits), no float32 backend can be held closer than that, but it may be held to a
    small multiple of it (K = 8 covers a different but equally valid rounding order).
    Where the oracle itself is not finite, the backend is compared with the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from afgen.check.adversarial import Member, members
from afgen.check.oracle import Oracle
from afgen.check.reference import SpecReference
from afgen.lower.compiler import Compiled
from afgen.lower.config import factor_axes
from afgen.lower.plan import KernelPlan

STEPS = 2
CONDITIONING = 8.0  # K: how many times the spec's own float32 error a backend may have
TINY = float(np.finfo(np.float32).smallest_normal)


@dataclass
class Tally:
    """Worst errors and finite/non-finite disagreements over a case."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_ratio: float = 0.0  # error / allowed, over elements both sides compute finitely
    lost: int = 0  # elements NaN/inf where the float32 spec-order reference is finite
    hidden: int = 0  # elements finite where the reference is NaN/inf
    problems: list[str] = field(default_factory=list)

    @property
    def nonfinite(self) -> int:
        return self.lost + self.hidden

    @property
    def passed(self) -> bool:
        return self.nonfinite == 0 and self.worst_ratio <= 1.0


def members_for(compiled: Compiled, plan: KernelPlan, hyper: dict[str, object],
                steps: int = STEPS) -> list[Member]:
    """The family members whose layout (factored or not, under ``hyper``) is ``plan``'s."""
    return [m for m in members(steps)
            if (factor_axes(compiled.spec, m.param.shape, hyper) is not None) == plan.factored]


def compare(tally: Tally, where: str, got: np.ndarray, want64: np.ndarray, ref32: np.ndarray,
            before: np.ndarray | None, atol: float, rtol: float) -> None:
    """Add one tensor's comparison (see the module docstring) to ``tally``."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref32, np.float64)
    finite_got, finite_ref = np.isfinite(got), np.isfinite(ref)
    differ = finite_got != finite_ref
    if differ.any():
        lost, hidden = int((finite_ref & ~finite_got).sum()), int((finite_got & ~finite_ref).sum())
        tally.lost, tally.hidden = tally.lost + lost, tally.hidden + hidden
        parts = [f"{lost} NaN/inf where the float32 spec-order reference is finite"] * bool(
            lost) + [f"{hidden} finite where the reference is NaN/inf"] * bool(hidden)
        tally.problems.append(f"{where}: {', '.join(parts)}")
    both = finite_got & finite_ref
    if not both.any():
        return
    oracle_ok = np.isfinite(want64)
    want = np.where(oracle_ok, want64, ref)
    scale = np.abs(want) if before is None else np.maximum(
        np.abs(want), np.abs(np.where(np.isfinite(before), before, 0.0)))
    magnitude = float(scale[both].max())
    spec_error = np.where(oracle_ok, np.abs(ref - want64), 0.0)
    floor = atol * min(1.0, magnitude)
    allowed = np.maximum.reduce([floor + rtol * scale, np.full(scale.shape, TINY),
                                 CONDITIONING * spec_error])
    diff = np.abs(got - want)[both]
    rel = diff / np.maximum(np.abs(want[both]), max(floor, TINY))
    ratio = float((diff / allowed[both]).max())
    tally.max_abs = max(tally.max_abs, float(diff.max()))
    tally.max_rel = max(tally.max_rel, float(rel.max()))
    if ratio > 1.0 and ratio > tally.worst_ratio:
        tally.problems.insert(0, f"{where}: error {ratio:.3g}x its tolerance")
    tally.worst_ratio = max(tally.worst_ratio, ratio)


def run_case(compiled: Compiled, cls: type, plan: KernelPlan, backend: str,
             hyper: dict[str, object], atol: float, rtol: float,
             steps: int = STEPS) -> Tally:
    """Step the adversarial tree ``steps`` times; before each step the oracle and the
    reference take the optimizer's own parameters and state."""
    import mlx.core as mx

    tally = Tally()
    tree = members_for(compiled, plan, hyper, steps)
    if not tree:
        return tally
    optimizer = cls(**hyper, backend=backend)
    oracle = Oracle(compiled, hyper)
    reference = SpecReference(compiled.spec, hyper, np.float32)
    params = {m.name: mx.array(m.param) for m in tree}
    with np.errstate(all="ignore"):  # overflow and NaN are what these inputs are for
        for step in range(steps):
            params = _step(tally, tree, step, optimizer, oracle, reference, params, atol, rtol)
    return tally


def _step(tally: Tally, tree: list[Member], step: int, optimizer: object, oracle: Oracle,
          reference: SpecReference, params: dict, atol: float, rtol: float) -> dict:
    """One step three ways, every tensor compared; returns the optimizer's parameters."""
    import mlx.core as mx

    if optimizer._initialized:
        current = {k: {s: np.array(v) for s, v in optimizer.state[k].items()} for k in params}
        oracle.state = {k: {s: v.astype(np.float64) for s, v in slot.items()}
                        for k, slot in current.items()}
        reference.state = {k: {s: v.astype(np.float32) for s, v in slot.items()}
                           for k, slot in current.items()}
    before = {k: np.array(v) for k, v in params.items()}
    old_state = {k: {s: v.astype(np.float64) for s, v in slot.items()}
                 for k, slot in oracle.state.items()}
    grads = {m.name: m.grads[step] for m in tree}
    eps = float(np.finfo(np.float32).eps)
    want = oracle.step({k: v.astype(np.float64) for k, v in before.items()},
                       {k: v.astype(np.float64) for k, v in grads.items()}, eps)
    ref = reference.step(before, grads, eps)
    params = optimizer.apply_gradients({k: mx.array(v) for k, v in grads.items()}, params)
    mx.eval(params, optimizer.state)
    for name in want:
        label = f"{name} step {step + 1}"
        compare(tally, f"{label} param", np.array(params[name]), want[name], ref[name],
                before[name], atol, rtol)
        for key, value in oracle.state[name].items():
            compare(tally, f"{label} {key}", np.array(optimizer.state[name][key]), value,
                    reference.state[name][key], old_state.get(name, {}).get(key), atol, rtol)
    return params


__all__ = ["CONDITIONING", "STEPS", "Tally", "compare", "members_for", "run_case"]
