"""Fused GPU pass kernels from a kernel plan, in the Metal and CUDA dialects.

One template (``templates/pass_kernel.j2``) lays out every pass; a dialect is a small
table (thread indices, shared memory, index type) plus a SymPy printer and a helper
header. The IR is legalised before printing: every value is float32 inside the kernel,
loads and stores convert from/to the array's dtype through ``afg_load``/``afg_store``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import sympy

from afgen.backends.printers import cuda_code, metal_code
from afgen.backends.render import render
from afgen.lower.plan import KernelPlan, Pass
from afgen.spec.model import PARAM
from afgen.spec.shapes import ReduceAxes, ShapeClass

THREADS = 256  # 8 SIMD groups / warps of 32
WARPS = THREADS // 32
# Factored tile: 32 rows x 256 columns (each SIMD group 4 rows, each lane 8 columns).
FACTORED_TILE = (32, THREADS)
# Unfactored tile: one row of 1024 elements (4 per thread).
FLAT_TILE = (1, 4 * THREADS)


def tile(factored: bool) -> tuple[int, int]:
    """(rows, cols) one threadgroup owns."""
    return FACTORED_TILE if factored else FLAT_TILE


@dataclass(frozen=True)
class KernelDialect:
    name: str
    printer: Callable[[sympy.Basic], str]
    index: str
    group_index: str
    lid: str
    lane: str
    simd_group: str
    shared: str
    barrier: str
    header_template: str


METAL = KernelDialect(
    name="metal", printer=metal_code, index="uint",
    group_index="threadgroup_position_in_grid.x", lid="thread_position_in_threadgroup.x",
    lane="thread_index_in_simdgroup", simd_group="simdgroup_index_in_threadgroup",
    shared="threadgroup float", barrier="threadgroup_barrier(mem_flags::mem_threadgroup);",
    header_template="kernel_header.metal.j2")

CUDA = KernelDialect(
    name="cuda", printer=cuda_code, index="unsigned int",
    group_index="blockIdx.x", lid="threadIdx.x",
    lane="(threadIdx.x & 31u)", simd_group="(threadIdx.x >> 5)", shared="__shared__ float",
    barrier="__syncthreads();", header_template="kernel_header.cuda.j2")

DIALECTS = {"metal": METAL, "cuda": CUDA}


@dataclass(frozen=True)
class KernelReduction:
    name: str
    axes: ReduceAxes
    mean: bool
    code: str


@dataclass(frozen=True)
class KernelOutput:
    name: str
    ctype: str
    code: str


@dataclass(frozen=True)
class PassKernel:
    """One rendered pass kernel and everything its launcher needs to know."""

    name: str
    dialect: str
    summary: str
    factored: bool
    rows_per_group: int
    cols_per_group: int
    threads: int
    scalar_names: tuple[str, ...]
    batch_inputs: tuple[str, ...]
    row_inputs: tuple[str, ...]
    col_inputs: tuple[str, ...]
    full_inputs: tuple[str, ...]
    body: tuple[tuple[str, str], ...]
    all_reductions: tuple[KernelReduction, ...]
    row_reductions: tuple[KernelReduction, ...]
    col_reductions: tuple[KernelReduction, ...]
    full_outputs: tuple[KernelOutput, ...]
    source: str = ""

    @property
    def rounding_key_index(self) -> int | None:
        """Where the parameter's rounding key sits in the packed scalars (after the
        spec's own), if this pass writes the parameter."""
        if any(o.name == f"new_{PARAM}" for o in self.full_outputs):
            return len(self.scalar_names)
        return None

    @property
    def warps(self) -> int:
        return self.threads // 32

    @property
    def rows_per_warp(self) -> int:
        return self.rows_per_group // self.warps

    @property
    def cols_per_lane(self) -> int:
        return self.cols_per_group // 32

    @property
    def input_names(self) -> tuple[str, ...]:
        small = [f"{n}_in" for n in (*self.batch_inputs, *self.row_inputs, *self.col_inputs)]
        return (*[f"{n}_in" for n in self.full_inputs], *small, "scalars", "dims")

    @property
    def output_names(self) -> tuple[str, ...]:
        parts = [f"{r.name}_part" for r in (*self.all_reductions, *self.row_reductions,
                                              *self.col_reductions)]
        return (*[o.name for o in self.full_outputs], *parts)


def _classify(names: list[str], shapes: dict[str, ShapeClass]) -> dict[ShapeClass, list[str]]:
    out: dict[ShapeClass, list[str]] = {c: [] for c in ShapeClass}
    for name in names:
        out[shapes[name]].append(name)
    return out


def pass_kernel(plan: KernelPlan, pass_: Pass, dialect: KernelDialect, full_dtypes: dict[str, str],
                prefix: str) -> PassKernel:
    """Lay out one pass for ``dialect``. ``full_dtypes`` maps each full-size array (and
    output) to its C type name: ``T`` for parameter-typed, ``S`` for state-typed."""
    shapes = {str(k): v for k, v in plan.program.shapes.items()}
    classes = _classify(list(pass_.small_inputs), shapes)
    body = []
    reductions: dict[ReduceAxes, list[KernelReduction]] = {a: [] for a in ReduceAxes}
    for step in pass_.schedule.steps:
        code = dialect.printer(step.expr)
        if step.is_reduction:
            reductions[step.reduce].append(KernelReduction(str(step.name), step.reduce,
                                                           step.mean, code))
        else:
            body.append((str(step.name), code))
    outputs = tuple(KernelOutput(name, full_dtypes[name], dialect.printer(expr))
                    for name, expr in pass_.schedule.results)
    if reductions[ReduceAxes.MATRIXWISE]:
        raise NotImplementedError("matrixwise reductions of full values are not fused yet")
    kernel = PassKernel(
        name="", dialect=dialect.name,
        summary=f"pass {pass_.index}, {'factored' if plan.factored else 'unfactored'} layout",
        factored=plan.factored,
        rows_per_group=tile(plan.factored)[0], cols_per_group=tile(plan.factored)[1],
        threads=THREADS,
        scalar_names=tuple(classes[ShapeClass.SCALAR]),
        batch_inputs=tuple(classes[ShapeClass.BATCH]),
        row_inputs=tuple(classes[ShapeClass.ROW]),
        col_inputs=tuple(classes[ShapeClass.COL]),
        full_inputs=tuple(pass_.reads),
        body=tuple(body),
        all_reductions=tuple(reductions[ReduceAxes.ALL]),
        row_reductions=tuple(reductions[ReduceAxes.ROWWISE]),
        col_reductions=tuple(reductions[ReduceAxes.COLWISE]),
        full_outputs=outputs)
    kernel = replace(kernel, name=f"{prefix}_{'f' if plan.factored else 'u'}{pass_.index}_"
                     f"{pass_digest(plan, pass_)}")
    return replace(kernel, source=render("pass_kernel.j2", k=kernel, d=dialect))


def pass_digest(plan: KernelPlan, pass_: Pass) -> str:
    """Names follow the pass's content, the same in every dialect: identical passes of
    different specialisations share one kernel."""
    parts = [str(plan.factored), *pass_.reads, *pass_.small_inputs]
    parts += [f"{s.name}:{s.kind}:{sympy.srepr(s.expr)}" for s in pass_.schedule.steps]
    parts += [f"{n}={sympy.srepr(e)}" for n, e in pass_.schedule.results]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]


def kernel_header(dialect: KernelDialect) -> str:
    return render(dialect.header_template)
