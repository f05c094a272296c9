"""Verification: every available backend against the float64 oracle, step by step.

For each distinct specialisation the generated optimizer (built in memory from the same
spec) and the oracle are stepped side by side on random parameter trees whose shapes
cover the layout (odd sizes, size-1 dims, batched 3-D/4-D), with hyperparameters set to
their ``example`` values so that paths like weight decay are exercised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from afgen.build import load_module
from afgen.compiler import Compiled
from afgen.lower.plan import KernelPlan
from afgen.oracle import Oracle

FACTORED_SHAPES = [(5, 7), (1, 9), (8, 1), (3, 4, 6), (2, 1, 3, 5), (33, 17)]
FLAT_SHAPES = [(), (1,), (7,), (130,)]
TOLERANCES = {"float32": (2e-5, 2e-4)}  # (atol, rtol) against float64


@dataclass
class CaseResult:
    backend: str
    case: str
    dtype: str
    steps: int
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def table(self) -> str:
        head = f"{'backend':<12} {'case':<64} {'dtype':<9} {'steps':>5} {'max abs':>10} " \
               f"{'max rel':>10}  result"
        lines = [head, "-" * len(head)]
        for r in self.results:
            lines.append(f"{r.backend:<12} {r.case:<64} {r.dtype:<9} {r.steps:>5} "
                         f"{r.max_abs:>10.2e} {r.max_rel:>10.2e}  "
                         f"{'pass' if r.passed else 'FAIL'}{'  ' + r.note if r.note else ''}")
        ok = sum(r.passed for r in self.results)
        lines.append(f"{ok} passed, {len(self.results) - ok} failed")
        return "\n".join(self.notes + lines)


def hyper_for(compiled: Compiled, plan: KernelPlan) -> dict[str, object]:
    """Constructor arguments that select ``plan``'s configuration, using examples."""
    hyper: dict[str, object] = {}
    config = plan.config
    for h in compiled.spec.hyperparameters:
        if h.is_static:
            hyper[h.name] = config.get(h.name)
        elif h.is_optional:
            enabled = config.get(f"has_{h.name}")
            value = h.example if h.example is not None else (0.01 if h.kind == "schedule" else 0.5)
            hyper[h.name] = value if enabled else None
        elif h.example is not None:
            hyper[h.name] = h.example
    return hyper


def shapes_for(plan: KernelPlan) -> list[tuple[int, ...]]:
    return FACTORED_SHAPES if plan.factored else FLAT_SHAPES


def random_tree(rng: np.random.Generator, shapes: list[tuple[int, ...]], scale: float = 1.0
                ) -> dict[str, np.ndarray]:
    return {f"p{i}": (rng.standard_normal(s) * scale).astype(np.float32) for i, s in
            enumerate(shapes)}


def _errors(got: np.ndarray, want: np.ndarray, atol: float, rtol: float
            ) -> tuple[float, float, bool]:
    got = np.asarray(got, np.float64)
    diff = np.abs(got - want)
    if diff.size == 0:
        return 0.0, 0.0, True
    finite = np.isfinite(got).all() and np.isfinite(want).all()
    rel = diff / np.maximum(np.abs(want), atol)
    return float(diff.max()), float(rel.max()), bool(finite and (diff <= atol + rtol * np.abs(
        want)).all())


def verify_class(compiled: Compiled, cls: type, plan: KernelPlan, backend: str, steps: int,
                 seed: int) -> CaseResult:
    """Step the generated class (``backend``) and the oracle together; compare params and
    every state tensor after each step."""
    import mlx.core as mx

    hyper = hyper_for(compiled, plan)
    rng = np.random.default_rng(seed)
    params_np = random_tree(rng, shapes_for(plan))
    optimizer = cls(**hyper, backend=backend)
    oracle = Oracle(compiled, hyper)
    params = {k: mx.array(v) for k, v in params_np.items()}
    want = {k: v.astype(np.float64) for k, v in params_np.items()}
    atol, rtol = TOLERANCES["float32"]
    worst_abs = worst_rel = 0.0
    ok = True
    for _ in range(steps):
        grads_np = random_tree(rng, shapes_for(plan))
        params = optimizer.apply_gradients({k: mx.array(v) for k, v in grads_np.items()}, params)
        want = oracle.step(want, grads_np)
        pairs = [(np.array(params[k]), want[k]) for k in want]
        for name, slot in oracle.state.items():
            pairs += [(np.array(optimizer.state[name][key]), value) for key, value in slot.items()]
        for got, expected in pairs:
            a, r, passed = _errors(got, expected, atol, rtol)
            worst_abs, worst_rel, ok = max(worst_abs, a), max(worst_rel, r), ok and passed
    return CaseResult(backend, plan.config.restricted(plan.program.used_statics).label,
                      "float32", steps, worst_abs, worst_rel, ok)


def available_backends() -> list[str]:
    return ["mlx"]


def verify(compiled: Compiled, steps: int = 25, seed: int = 0,
           backends: list[str] | None = None) -> Report:
    """Run every requested (default: every available) backend on every specialisation."""
    report = Report()
    cls = getattr(load_module(compiled), compiled.spec.class_name)
    for backend in backends or available_backends():
        for index, plan in enumerate(compiled.plans):
            report.results.append(verify_class(compiled, cls, plan, backend, steps, seed + index))
    return report
