"""Verification: every available backend against the float64 oracle.

For each distinct specialisation the generated optimizer (built in memory from the same
spec) takes steps on random parameters; before every step the oracle is loaded with the
optimizer's own parameters and state (in float64) and takes the same step, so each
comparison measures one step's error: tight for float32, one rounding for bf16/fp16.
Hyperparameters use their ``example`` values so paths like weight decay are exercised.

Fused backends run on the device when MLX has it; otherwise their exact kernel text runs
on the CPU executor (g++ under a Metal/CUDA shim, one thread per GPU thread), and CUDA
text is also compiled for the GPU: by NVRTC with MLX's own headers and options when
available, else by nvcc.
"""
from __future__ import annotations

import contextlib
import itertools
import shutil
from dataclasses import dataclass, field

import numpy as np
import sympy

from afgen.build import load_module
from afgen.check.oracle import Oracle
from afgen.check.reference import SpecReference
from afgen.check.verify_adversarial import CONDITIONING
from afgen.lower.compiler import Compiled
from afgen.lower.plan import KernelPlan
from afgen.spec.model import Branch, value_symbols

BACKENDS = ("mlx", "metal", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
# (atol, rtol) of one step against float64; 16-bit outputs allow one rounding.
TOLERANCES = {"float32": (1e-6, 1e-4), "float16": (2e-5, 2 ** -10),
              "bfloat16": (2e-5, 2 ** -7)}
# precision="param" computes every equation in the 16-bit dtype: each rounds once, and
# a step's terms (beta * v + (1 - beta) * x, a 16-bit mean of squares) round several
# times on the way, so one step allows several roundings of the step's larger terms
# (measured worst over the shipped specs, 10 steps: 3.2e-2 bf16, 3.9e-3 fp16).
PARAM_TOLERANCES = {"float32": TOLERANCES["float32"], "float16": (8e-3, 2 ** -7),
                    "bfloat16": (6e-2, 2 ** -5)}
MLX_SHAPES = {True: [(5, 7), (1, 9), (8, 1), (3, 4, 6), (2, 1, 3, 5), (33, 17)],
              False: [(), (1,), (7,), (130,)]}
# Fused kernels. A threadgroup owns a tile of 32 rows x 256 columns (factored) or 1024
# elements (unfactored); see afgen/backends/kernels.py. (2, 127, 511) is 2 matrices of
# 4 row blocks x 2 column chunks whose last block and chunk are one row and one column
# short of full: a row or column range that is shifted or scaled by one then misses an
# element instead of hiding in the slack. The counts 4 and 2 differ (swapping them
# fails) and share a factor (a wrong threadgroup -> tile map that stays one-to-one,
# possible when the counts are coprime, would pass). (1, 767) is one row over 3 column
# chunks, the last one short: a chunk width off by one overlaps its neighbours, and only
# from 3 chunks on does it still leave a column out. (2, 1, 3, 5) is a 4-D batch of
# matrices smaller than a SIMD group's share (SIMD groups and lanes without work).
# Unfactored: 3071 elements are 2 full 1024-element chunks and one of 1023; and 0-D.
# A shape given twice is one stack (afgen_runtime's STACK_MAX_ELEMENTS): its launches
# find each tensor's matrices, chunks and scalars by the tensor's index; (2, 1, 3, 5)
# twice has 2 matrices per tensor, so a tensor index taken per matrix fails, and 1025
# elements twice spill one element into a second chunk of each tensor.
KERNEL_SHAPES = {True: [(2, 127, 511), (1, 767), (2, 1, 3, 5), (2, 1, 3, 5)],
                 False: [(3071,), (), (1025,), (1025,)]}
# 16-bit cases run the same kernel bodies (only the `using T/S` lines differ, the index
# arithmetic is the same text), so they check the loads, stores and roundings on the
# smaller shapes; float32 covers the tiles. The executor spends its time in thread
# switches per threadgroup, so this keeps `afgen build` affordable.
CONVERSION_SHAPES = {True: [(1, 767), (2, 1, 3, 5)], False: [(3071,), ()]}
# Gradient scale per step (cycled). A second step whose gradients are 4x the first's
# leaves the second-moment EMA behind them, so the update is large and data-dependent
# branches such as Adafactor's clip u / max(1, rms(u) / d) take their other side; with
# gradients of one scale rms(u) stays near 1 and the clip (and the kernel pass that sums
# u^2 for it) would not affect the result at all.
GRAD_SCALES = (1.0, 4.0)
# precision="param" keeps 16-bit state (other kernel sources; with MLX ops, the math is
# in 16 bits too); for float32 it is the default precision's program.
KERNEL_CASES = {"float32": ("float32",), "float16": ("float32", "param"),
                "bfloat16": ("float32", "param")}
PARAM_DTYPES = tuple(d for d, precisions in KERNEL_CASES.items() if "param" in precisions)


@dataclass
class CaseResult:
    backend: str
    case: str
    dtype: str
    steps: int
    max_abs: float
    max_rel: float
    passed: bool
    error: str = ""
    precision: str = "float32"
    # Adversarial cases: elements whose finite/non-finite state differs from the float32
    # spec-order reference's (None for the random cases, which have no reference).
    nonfinite: int | None = None
    ratio: float = float("nan")  # the worst error as a multiple of its tolerance


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def table(self) -> str:
        head = (f"{'backend':<8} {'case':<76} {'dtype':<9} {'state':<6} {'steps':>5} "
                f"{'max abs':>10} {'max rel':>10} {'err/tol':>8} {'nonfin':>6}  result")
        lines = [head, "-" * len(head)]
        for r in self.results:
            nonfinite = "-" if r.nonfinite is None else str(r.nonfinite)
            state = "param" if r.precision == "param" else "f32"
            lines.append(f"{r.backend:<8} {r.case:<76} {r.dtype:<9} {state:<6} {r.steps:>5} "
                         f"{r.max_abs:>10.2e} {r.max_rel:>10.2e} {r.ratio:>8.2g} {nonfinite:>6}  "
                         f"{'pass' if r.passed else 'FAIL'}"
                         + (f"  {r.error.splitlines()[0][:200]}" if r.error else ""))
        ok = sum(r.passed for r in self.results)
        lines.append(f"{ok} passed, {len(self.results) - ok} failed")
        return "\n".join(self.notes + lines)


def hyper_for(compiled: Compiled, plan: KernelPlan, dynamic: dict[str, bool] | None = None
              ) -> dict[str, object]:
    """Constructor arguments that select ``plan``'s configuration, using examples; the
    run-time bool options take ``dynamic`` (default: the first of ``dynamic_variants``)."""
    hyper: dict[str, object] = {}
    config = plan.config
    if dynamic is None:
        dynamic = dynamic_variants(compiled, plan)[0]
    for h in compiled.spec.hyperparameters:
        if h.is_static:
            hyper[h.name] = dynamic[h.name] if h.name in dynamic else \
                config.get(h.name) if h.name in compiled.specialising else h.default
        elif h.is_optional:
            enabled = config.get(f"has_{h.name}")
            value = h.example if h.example is not None else (0.01 if h.kind == "schedule" else 0.5)
            hyper[h.name] = value if enabled else None
        elif h.optional_components:
            enabled = [config.get(f"has_{c}") if c in h.optional_components else True
                       for c in h.component_names]
            example = h.example or tuple(1e-30 if v is None else v for v in h.default)
            hyper[h.name] = tuple(e if on else None for e, on in zip(example, enabled))
        elif h.example is not None:
            hyper[h.name] = h.example
    return _meeting_requirements(compiled.spec, hyper)


def _meeting_requirements(spec, hyper: dict[str, object]) -> dict[str, object]:
    """``hyper`` with the fewest examples put back to their defaults for the constructor's
    requirements on values to hold (the examples exercise the code, but SGD's Nesterov
    momentum, say, needs the default dampening of 0)."""
    checks = [r.condition for r in spec.requires if not r.static]
    if not checks:
        return hyper
    swappable = [h for h in spec.hyperparameters if h.name in hyper and not h.is_static
                 and h.default is not None and hyper[h.name] != h.default]

    def meets(values: dict[str, object]) -> bool:
        subs = value_symbols(spec.hyperparameters,
                             {h.name: values.get(h.name, h.default) for h in spec.hyperparameters})
        return all(c.subs(subs) is sympy.true for c in checks)

    for count in range(len(swappable) + 1):
        for back in itertools.combinations(swappable, count):
            candidate = {**hyper, **{h.name: h.default for h in back}}
            if meets(candidate):
                return candidate
    return hyper


# Run-time bool options read by more than this many conditions are tried one flip at a
# time from their defaults instead of in every combination.
MAX_DYNAMIC_COMBINATIONS = 16


def dynamic_variants(compiled: Compiled, plan: KernelPlan) -> list[dict[str, bool]]:
    """Values of the run-time bool options that verification tries for ``plan``: the
    defaults first (when ``requires`` allows them), then every other assignment it allows
    (each takes other arms of the glue's ``if``s). Options the update never reads are
    left at their defaults."""
    spec = compiled.spec
    read = {str(s) for e in spec.equations() for s in e.value.free_symbols}
    read |= {str(s) for b in _branches(spec.update) for s in b.condition.free_symbols}
    names = [n for n in compiled.dynamic if n in read]
    defaults = {n: bool(spec.hyper(n).default) for n in names}
    if 2 ** len(names) <= MAX_DYNAMIC_COMBINATIONS:
        candidates = [dict(zip(names, bits))
                      for bits in itertools.product((True, False), repeat=len(names))]
    else:
        candidates = [defaults, *({**defaults, n: not defaults[n]} for n in names)]
    requires = [r.condition.subs(plan.config.as_subs()) for r in spec.requires if r.static]

    def allowed(values: dict[str, bool]) -> bool:
        subs = {sympy.Symbol(k): sympy.true if v else sympy.false for k, v in values.items()}
        return all(bool(c.subs(subs)) for c in requires)

    variants = [v for v in candidates if allowed(v)]
    variants.sort(key=lambda v: v != defaults)
    return variants or [defaults]


def _branches(statements: tuple) -> list[Branch]:
    out = []
    for statement in statements:
        if isinstance(statement, Branch):
            out += [statement, *_branches(statement.then), *_branches(statement.orelse)]
    return out


def case_label(plan: KernelPlan, dynamic: dict[str, bool]) -> str:
    """The configuration a case ran: specialised options, then run-time ones."""
    flags = [k if v else f"!{k}" for k, v in dynamic.items()]
    return " ".join([plan.config.restricted(plan.program.used_statics).label, *flags])


def _errors(got: np.ndarray, want: np.ndarray, before: np.ndarray | None, atol: float,
            rtol: float, in_dtype: np.ndarray | None = None
            ) -> tuple[float, float, float, bool]:
    """Max abs/rel error, the worst error as a multiple of its tolerance, and pass/fail.
    The tolerance scales with the larger of the new and the old value: a step that nearly
    cancels the parameter (param - u with u ~ param) leaves a small result carrying the
    rounding of its large operands. ``in_dtype`` is the spec evaluated as written in the
    parameter's dtype (precision="param" with MLX ops): where it is NaN/inf (float16
    underflows eps1 = 1e-30 to 0) the spec itself breaks down in 16 bits and the result is
    not compared (the reference rounds hyperparameters to 16 bits, where MLX keeps them
    as Python floats, so it may break down where the program does not), and elsewhere the
    result may be as far from float64 as a few times that evaluation is (the spec's own
    conditioning in 16 bits, as in the adversarial cases)."""
    got = np.asarray(got, np.float64)
    spec_error = 0.0
    if in_dtype is not None:
        in_dtype = np.asarray(in_dtype, np.float64)
        keep = np.isfinite(in_dtype)
        got, want, in_dtype = got[keep], want[keep], in_dtype[keep]
        before = None if before is None else before[keep]
        spec_error = CONDITIONING * np.abs(in_dtype - want)
    diff = np.abs(got - want)
    if diff.size == 0:
        return 0.0, 0.0, 0.0, True
    finite = bool(np.isfinite(got).all() and np.isfinite(want).all())
    rel = diff / np.maximum(np.abs(want), atol)
    scale = np.abs(want) if before is None else np.maximum(np.abs(want), np.abs(before))
    ratio = diff / np.maximum(atol + rtol * scale, spec_error)
    return float(diff.max()), float(rel.max()), float(ratio.max()), finite and bool(
        (ratio <= 1).all())


def _as_f64(array: object) -> np.ndarray:
    import mlx.core as mx

    return np.array(array.astype(mx.float32), dtype=np.float64)


def verify_class(compiled: Compiled, cls: type, plan: KernelPlan, backend: str, dtype: str,
                 shapes: list[tuple[int, ...]], steps: int, seed: int,
                 precision: str = "float32", dynamic: dict[str, bool] | None = None
                 ) -> CaseResult:
    """Step the generated class and compare each step with the oracle's step from the
    same parameters and state (parameters, every state tensor). Stops after the first
    step that fails: later steps would start from state that is already wrong."""
    import mlx.core as mx

    mx_dtype = getattr(mx, dtype)
    if dynamic is None:
        dynamic = dynamic_variants(compiled, plan)[0]
    hyper = hyper_for(compiled, plan, dynamic)
    rng = np.random.default_rng(seed)
    optimizer = cls(**hyper, backend=backend, precision=precision)
    oracle = Oracle(compiled, hyper)
    params = {f"p{i}": mx.array(rng.standard_normal(s).astype(np.float32)).astype(mx_dtype)
              for i, s in enumerate(shapes)}
    atol, rtol = (TOLERANCES if precision == "float32" else PARAM_TOLERANCES)[dtype]
    reference = _spec_program(compiled, hyper, backend, dtype, precision)
    worst_abs = worst_rel = worst_ratio = 0.0
    ok = True
    for step in range(steps):
        scale = GRAD_SCALES[step % len(GRAD_SCALES)]
        grads = {k: mx.array(scale * rng.standard_normal(v.shape).astype(np.float32))
                 .astype(mx_dtype) for k, v in params.items()}
        if optimizer._initialized:
            oracle.state = {k: {s: _as_f64(v) for s, v in optimizer.state[k].items()}
                            for k in params}
        before = {k: _as_f64(v) for k, v in params.items()}
        state_before = {k: dict(slot) for k, slot in oracle.state.items()}
        eps = float(mx.finfo(mx_dtype).eps)
        want = oracle.step(before, {k: _as_f64(v) for k, v in grads.items()}, eps)
        in_dtype = _spec_step(reference, state_before, before, grads, eps)
        params = optimizer.apply_gradients(grads, params)
        pairs = [(_as_f64(params[k]), want[k], before[k], k) for k in want]
        for name, slot in oracle.state.items():
            pairs += [(_as_f64(optimizer.state[name][key]), value,
                       state_before.get(name, {}).get(key), (name, key))
                      for key, value in slot.items()]
        for got, expected, old, where in pairs:
            a, r, q, passed = _errors(got, expected, old, atol, rtol, in_dtype.get(where))
            worst_abs, worst_rel, ok = max(worst_abs, a), max(worst_rel, r), ok and passed
            worst_ratio = max(worst_ratio, q)
        if not ok:
            break
    return CaseResult(backend, case_label(plan, dynamic),
                      dtype, steps, worst_abs, worst_rel, ok, precision=precision,
                      ratio=worst_ratio)


def _spec_program(compiled: Compiled, hyper: dict[str, object], backend: str, dtype: str,
                  precision: str) -> SpecReference | None:
    """With MLX ops, precision="param" runs the spec in the parameter's 16-bit dtype, where
    the spec itself can overflow, divide by an underflowed zero (Adam's eps = 1e-8 is 0
    in float16, as in MLX) or take the other side of a ``where``. The spec-order
    reference in that dtype (float16, or float32 rounded to bfloat16 after every
    operation) says where; None when the program is float32."""
    if backend != "mlx" or precision == "float32" or dtype == "float32":
        return None
    if dtype == "float16":
        return SpecReference(compiled.spec, hyper, np.float16)
    return SpecReference(compiled.spec, hyper, np.float32, bfloat16=True)


def _spec_step(reference: SpecReference | None, state: dict[str, dict],
               params: dict[str, np.ndarray], grads: dict[str, object],
               eps: float) -> dict[object, np.ndarray]:
    """The step of the spec's own program (``_spec_program``): new parameters (by name)
    and state tensors (by (name, key)), from the optimizer's parameters and ``state``
    (its state before the step, in float64)."""
    if reference is None:
        return {}
    import mlx.core as mx

    reference.state = {k: {s: v.astype(reference.dtype) for s, v in slot.items()}
                       for k, slot in state.items()}
    with np.errstate(all="ignore"):
        new = reference.step({k: v.astype(reference.dtype) for k, v in params.items()},
                             {k: np.array(g.astype(mx.float32)) for k, g in grads.items()}, eps)
    out: dict[object, np.ndarray] = dict(new)
    out.update({(k, s): v for k, slot in reference.state.items() for s, v in slot.items()})
    return out


def _checked(compiled: Compiled, cls: type, plan: KernelPlan, backend: str, dtype: str,
             shapes: list[tuple[int, ...]], steps: int, seed: int,
             precision: str = "float32", dynamic: dict[str, bool] | None = None
             ) -> CaseResult:
    """A kernel that fails to compile or faults on the executor is a failed case."""
    from afgen.executor import KernelError

    dynamic = dynamic_variants(compiled, plan)[0] if dynamic is None else dynamic
    try:
        return verify_class(compiled, cls, plan, backend, dtype, shapes, steps, seed,
                            precision, dynamic)
    except KernelError as exc:
        case = case_label(plan, dynamic)
        return CaseResult(backend, case, dtype, steps, float("nan"), float("nan"), False,
                          f"{type(exc).__name__}: {exc}", precision)


def verify_adversarial(compiled: Compiled, cls: type, plan: KernelPlan, backend: str,
                       steps: int = 2) -> CaseResult:
    """The adversarial families (afgen/check/verify_adversarial.py) in float32, one tree per
    step; a kernel that fails to compile or faults is a failed case."""
    from afgen.check.verify_adversarial import run_case
    from afgen.executor import KernelError

    case = "adversarial " + plan.config.restricted(plan.program.used_statics).label
    try:
        tally = run_case(compiled, cls, plan, backend, hyper_for(compiled, plan),
                         *TOLERANCES["float32"], steps=steps)
    except KernelError as exc:
        return CaseResult(backend, case, "float32", steps, float("nan"), float("nan"), False,
                          f"{type(exc).__name__}: {exc}")
    return CaseResult(backend, case, "float32", steps, tally.max_abs, tally.max_rel,
                      tally.passed, "; ".join(tally.problems[:3]), nonfinite=tally.nonfinite,
                      ratio=tally.worst_ratio)


def _adversarial_case(compiled: Compiled, cls: type, plan: KernelPlan, backend: str,
                      runner: object | None) -> CaseResult:
    """On the CPU executor every kernel launch is a process with one thread per GPU
    thread, so there the adversarial tree takes one step under one thread schedule (the
    random cases run the kernels under every schedule); elsewhere two steps."""
    if runner is None:
        return verify_adversarial(compiled, cls, plan, backend)
    with runner.one_schedule():
        return verify_adversarial(compiled, cls, plan, backend, steps=1)


def device_available(backend: str) -> bool:
    from afgen.backends.targets import TARGETS

    return backend not in TARGETS or TARGETS[backend].available()


def fused_cases(plan: KernelPlan, dtypes: list[str] | None = None) -> list[tuple]:
    """(dtype, precision, shapes) of the fused-kernel cases verification runs for ``plan``."""
    return [(d, p, (KERNEL_SHAPES if d == "float32" else CONVERSION_SHAPES)[plan.factored])
            for d in dtypes or DTYPES for p in KERNEL_CASES[d]]


def launched_sources(compiled: Compiled, backend: str) -> list[str]:
    """Every distinct full kernel source that verification launches for ``backend``,
    found in seconds: the same cases, one step each, with a runner that only records."""
    from afgen.check.kernel_runner import SourceRecorder, cpu_kernels

    module = load_module(compiled)
    cls = getattr(module, compiled.spec.class_name)
    with cpu_kernels(module, SourceRecorder()) as recorder:
        for plan in compiled.plans:
            for dtype, precision, shapes in fused_cases(plan):
                verify_class(compiled, cls, plan, backend, dtype, shapes, 1, 0, precision)
    return recorder.sources_for(backend)


def _compile_cuda(sources: list[str], report: Report) -> None:
    """Compile every CUDA source that ran: with NVRTC, MLX's headers and options when
    they are installed (what MLX-CUDA itself runs), else with nvcc (a stand-in header)."""
    from afgen.check.nvcc_batch import nvcc_check_all
    from afgen.executor import KernelError, nvrtc

    compiler = nvrtc.setup()
    if compiler is not None:
        what = (f"NVRTC {compiler.version()} --gpu-architecture={nvrtc.ARCH} with MLX "
                f"{compiler.headers.version}'s headers")
    elif shutil.which("nvcc"):
        what = "nvcc -arch=sm_90"
    else:
        report.notes.append("cuda: kernel sources not compiled for the GPU (missing: "
                            + "; ".join(nvrtc.missing()) + ")")
        return
    try:
        if compiler is not None:
            nvrtc.nvrtc_check_all(compiler, sources)
        else:
            nvcc_check_all(sources)
        report.notes.append(f"cuda: {what} compiled all {len(sources)} kernel sources "
                            "that ran")
    except KernelError as exc:
        report.results.append(CaseResult("cuda", f"{what} (all kernels)", "-", 0,
                                         float("nan"), float("nan"), False, str(exc)))


@contextlib.contextmanager
def _backend_context(module: object, backend: str, report: Report):
    """Real device when MLX has it, else the CPU executor (noted in the report), yielding
    its kernel runner (None on a device); on the executor, every CUDA source that ran is
    also compiled for the GPU, in one batch."""
    from afgen.check.kernel_runner import CpuKernelRunner, cpu_kernels

    if backend == "mlx" or device_available(backend):
        if backend != "mlx":
            report.notes.append(f"{backend}: running the kernels on the {backend} device")
        yield None
        return
    if not shutil.which("g++"):
        raise RuntimeError(f"{backend}: no device and no g++ to execute the kernel text")
    report.notes.append(f"{backend}: no {backend} device here; executing the exact kernel "
                        "text on the CPU executor (g++ shim, one thread per GPU thread)")
    with cpu_kernels(module, CpuKernelRunner()) as runner:
        yield runner
    if backend == "cuda":
        _compile_cuda(runner.sources_for("cuda"), report)


def verify(compiled: Compiled, steps: int = 25, seed: int = 0,
           backends: list[str] | None = None, dtypes: list[str] | None = None,
           adversarial: bool = True) -> Report:
    """Run the requested backends (default: all; fused ones on the executor when there
    is no device) on every specialisation and dtype. MLX ops run ``steps`` steps in
    float32 (the statements, then the plan; see ``MLX_PROGRAMS``) and, with
    precision="param", in each 16-bit dtype; fused kernels run
    ``min(steps, 2)`` steps per case, each dtype, and for 16-bit dtypes also with
    ``precision="param"`` (16-bit state: other kernel sources). With ``adversarial``,
    every specialisation and backend also runs the adversarial families in float32
    against the oracle and the spec-order reference (2 steps; 1 on the CPU executor)."""
    report = Report()
    module = load_module(compiled)
    cls = getattr(module, compiled.spec.class_name)
    for backend in backends or BACKENDS:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        # MLX ops with float32 math run one of two programs by the parameter's size
        # (afgen_runtime.PLANNED_MIN_ELEMENTS): both are verified, at every size.
        programs = MLX_PROGRAMS if backend == "mlx" else ((backend, None),)
        for label, planned in programs:
            with _backend_context(module, backend, report) as runner, \
                    _mlx_program(module, planned):
                start = len(report.results)
                _verify_backend(compiled, cls, backend, steps, seed, dtypes, adversarial,
                                runner, report, planned)
                for result in report.results[start:]:
                    result.backend = label
    return report


MLX_PROGRAMS = (("mlx", False), ("mlx-plan", True))
"""The labels of the two MLX-ops programs in the report: the spec's statements (also
every ``precision="param"`` case) and, with float32 math, the fused plan run with the
kernels' MLX twins."""


@contextlib.contextmanager
def _mlx_program(module: object, planned: bool | None):
    """Make every parameter size take the plan (True) or the statements (False)."""
    if planned is None:
        yield
        return
    runtime = module._rt
    before = runtime.PLANNED_MIN_ELEMENTS
    runtime.PLANNED_MIN_ELEMENTS = 0 if planned else float("inf")
    try:
        yield
    finally:
        runtime.PLANNED_MIN_ELEMENTS = before


def _verify_backend(compiled: Compiled, cls: type, backend: str, steps: int, seed: int,
                    dtypes: list[str] | None, adversarial: bool, runner: object | None,
                    report: Report, planned: bool | None) -> None:
    for index, plan in enumerate(compiled.plans):
        if backend == "mlx":
            cases = [("float32", "float32", MLX_SHAPES[plan.factored], steps)]
            if not planned:  # precision="param" runs the statements at every size
                cases += [(d, "param", MLX_SHAPES[plan.factored], steps)
                          for d in PARAM_DTYPES if d in (dtypes or DTYPES)]
        else:
            cases = [(d, p, shapes, min(steps, 2)) for d, p, shapes in fused_cases(plan, dtypes)]
        for dtype, precision, shapes, n in cases:
            report.results.append(_checked(compiled, cls, plan, backend, dtype, shapes, n,
                                           seed + index, precision))
        # The other arms of the run-time ifs: float32, the first case's shapes.
        dtype, precision, shapes, n = cases[0]
        for dynamic in dynamic_variants(compiled, plan)[1:]:
            report.results.append(_checked(compiled, cls, plan, backend, dtype, shapes, n,
                                           seed + index, precision, dynamic))
        if adversarial:
            report.results.append(_adversarial_case(compiled, cls, plan, backend, runner))
