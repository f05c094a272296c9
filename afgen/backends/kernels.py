"""Fused GPU pass kernels from a kernel plan: one body text for every target.

One template (``templates/pass_kernel.j2``) lays out every pass. The body calls only
``afg_*`` helpers, so it is the same for Metal and CUDA; each target
(``afgen.backends.targets``) puts its header before it and its prologue (the thread and
group indices) in front of it. The IR is legalised before printing: every value is
float32 inside the kernel, loads and stores convert from/to the array's dtype through
``afg_load``/``afg_store``.

Names follow the naming rule (``afgen.backends.names``): the pass's values keep their
names, and every name of the kernel's own (indices, accumulators, buffers, the template
parameters) is drawn from one symbol table per kernel that already holds them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import sympy

from afgen.backends.printers import kernel_code
from afgen.backends.render import render
from afgen.backends.targets import Limits, kernel_reductions, reserved_in_kernels
from afgen.lower.plan import KernelPlan, Pass
from afgen.names import SymbolTable
from afgen.spec.model import PARAM
from afgen.spec.shapes import ReduceAxes, ShapeClass

THREADS = 256  # 8 SIMD groups / warps of 32
WARPS = THREADS // 32
# Factored tile: 32 rows x 256 columns (each SIMD group 4 rows, each lane 8 columns).
FACTORED_TILE = (32, THREADS)
# Unfactored tile: one row of 1024 elements (4 per thread).
FLAT_TILE = (1, 4 * THREADS)
# MLX looks for ``<input>_shape``, ``<input>_strides`` and ``<input>_ndim`` anywhere in
# a source to add them to the signature: no name of a kernel may contain one of those.
MLX_INPUT_SUFFIXES = ("_shape", "_strides", "_ndim")
# The kernel's own names, by the hint each is drawn with.
LOCALS = ("M", "N", "nrb", "ncc", "cc", "rb", "b", "t", "r", "c", "m", "m_ok", "j", "idx",
          "total", "w")


def tile(factored: bool) -> tuple[int, int]:
    """(rows, cols) one threadgroup owns."""
    return FACTORED_TILE if factored else FLAT_TILE


@dataclass(frozen=True)
class KernelNames:
    """The kernel's own names (see ``LOCALS``), its scratch array, rounding key and its
    buffer, the ``dims`` buffer and the template parameters of the parameter's and the
    state's dtypes."""

    M: str
    N: str
    nrb: str
    ncc: str
    cc: str
    rb: str
    b: str
    t: str
    r: str
    c: str
    m: str
    m_ok: str
    j: str
    idx: str
    total: str
    w: str
    scratch: str
    key: str
    key_in: str
    dims: str
    T: str
    S: str


@dataclass(frozen=True)
class KernelReduction:
    """A reduction the pass folds: ``acc`` accumulates it per thread, ``buffer`` takes
    the partials, ``shared`` (colwise only) is the threadgroup exchange array. ``how``
    is "sum" or "mean" (partial sums; the driver divides) or "max"."""

    name: str
    axes: ReduceAxes
    how: str
    code: str
    acc: str = ""
    buffer: str = ""
    shared: str = ""
    block: int = -1  # a matrix block's operand, written whole (``buffer``: its array)

    @property
    def largest(self) -> bool:
        return self.how == "max"

    @property
    def identity(self) -> str:
        """The accumulator's start: nothing folded yet."""
        return "-afg_inf()" if self.largest else "0.0f"

    def fold(self, acc: str, value: str) -> str:
        """``acc`` with ``value`` folded in (an assignment)."""
        return f"{acc} = afg_max({acc}, {value})" if self.largest else f"{acc} += {value}"


@dataclass(frozen=True)
class KernelOutput:
    """A full-size result, written to the buffer of its own name. ``ctype`` is ``T``
    for the parameter's dtype, ``S`` for the state's."""

    name: str
    ctype: str
    code: str


@dataclass(frozen=True)
class PassKernel:
    """One pass kernel: its body text (the same for every target) and everything its
    launcher needs to know."""

    name: str
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
    matrix_operands: tuple[KernelReduction, ...]  # written out whole for a matrix block
    full_outputs: tuple[KernelOutput, ...]
    names: KernelNames | None = None
    buffers: dict[str, str] = field(default_factory=dict)  # input value -> its buffer
    source: str = ""

    @property
    def reductions(self) -> tuple[KernelReduction, ...]:
        return (*self.all_reductions, *self.row_reductions, *self.col_reductions,
                *self.matrix_operands)

    @property
    def rounding_key_index(self) -> int | None:
        """Where the parameter's rounding key sits among the launch's scalars (after the
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
    def shared_memory_bytes(self) -> int:
        floats = len(self.col_reductions) * self.warps * self.cols_per_group
        return 4 * (floats + (self.warps if self.all_reductions else 0))

    @property
    def input_names(self) -> tuple[str, ...]:
        """The kernel's input buffers, in the order the launch passes them."""
        small = (*self.batch_inputs, *self.row_inputs, *self.col_inputs, *self.scalar_names)
        key = (self.names.key_in,) if self.rounding_key_index is not None else ()
        return (*[self.buffers[n] for n in (*self.full_inputs, *small)], *key,
                self.names.dims)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The kernel's output buffers: full-size results, then partial sums."""
        return (*[o.name for o in self.full_outputs], *[r.buffer for r in self.reductions])

    @property
    def template_names(self) -> tuple[str, str]:
        """The template parameters bound to the parameter's and the state's dtypes."""
        return self.names.T, self.names.S

    def template_name(self, output: KernelOutput) -> str:
        return self.names.T if output.ctype == "T" else self.names.S


def _classify(names: list[str], shapes: dict[str, ShapeClass]) -> dict[ShapeClass, list[str]]:
    out: dict[ShapeClass, list[str]] = {c: [] for c in ShapeClass}
    for name in names:
        out[shapes[name]].append(name)
    return out


def _fresh_buffer(table: SymbolTable, hint: str, values: set[str]) -> str:
    """A fresh buffer name no value of the kernel extends into one MLX would read as
    this buffer's shape, strides or ndim."""
    while True:
        name = table.fresh(hint)
        if not any(name + suffix in value for value in values
                   for suffix in MLX_INPUT_SUFFIXES):
            return name


def name_kernel(kernel: PassKernel) -> PassKernel:
    """Give the kernel its own names: one table per kernel holds every reserved word of
    every target and every value of the pass first, so only the kernel's names move."""
    values = {*kernel.scalar_names, *kernel.batch_inputs, *kernel.row_inputs,
              *kernel.col_inputs, *kernel.full_inputs, *(n for n, _ in kernel.body),
              *(r.name for r in kernel.reductions), *(o.name for o in kernel.full_outputs)}
    table = SymbolTable(reserved_in_kernels())
    for value in sorted(values):
        table.claim(value)
    own = {hint: table.fresh(hint) for hint in LOCALS}
    own.update(scratch=table.fresh("afg_scratch"), key=table.fresh("afg_key"),
               T=table.fresh("T"), S=table.fresh("S"))
    small = (*kernel.batch_inputs, *kernel.row_inputs, *kernel.col_inputs,
             *kernel.scalar_names)
    buffers = {n: _fresh_buffer(table, f"{n}_in", values)
               for n in (*kernel.full_inputs, *small)}
    own.update(key_in=_fresh_buffer(table, "afg_key_in", values),
               dims=_fresh_buffer(table, "dims", values))

    def named(red: KernelReduction) -> KernelReduction:
        return replace(red, acc=table.fresh(f"acc_{red.name}"),
                       buffer=table.fresh(f"{red.name}_part"),
                       shared=table.fresh(f"afg_cols_{red.name}")
                       if red.axes is ReduceAxes.COLWISE else "")

    return replace(kernel, names=KernelNames(**own), buffers=buffers,
                   all_reductions=tuple(map(named, kernel.all_reductions)),
                   row_reductions=tuple(map(named, kernel.row_reductions)),
                   col_reductions=tuple(map(named, kernel.col_reductions)),
                   matrix_operands=tuple(map(named, kernel.matrix_operands)))


def check_fits(kernel: PassKernel, limits: Limits) -> None:
    """A plan whose pass needs more than a target guarantees is refused while planning."""
    if kernel.threads > limits.threads_per_group:
        raise ValueError(f"{kernel.name}: {kernel.threads} threads per group; every target "
                         f"guarantees {limits.threads_per_group}")
    if kernel.shared_memory_bytes > limits.shared_memory_bytes:
        raise ValueError(f"{kernel.name}: {kernel.shared_memory_bytes} bytes of threadgroup "
                         f"memory ({len(kernel.col_reductions)} colwise reductions in one "
                         f"pass); every target guarantees {limits.shared_memory_bytes}")


def pass_kernel(plan: KernelPlan, pass_: Pass, full_dtypes: dict[str, str],
                prefix: str) -> PassKernel:
    """Lay out one pass. ``full_dtypes`` maps each full-size array (and output) to ``T``
    if it has the parameter's dtype, ``S`` if the state's."""
    shapes = {str(k): v for k, v in plan.program.shapes.items()}
    classes = _classify(list(pass_.small_inputs), shapes)
    body = []
    reductions: dict[ReduceAxes, list[KernelReduction]] = {a: [] for a in ReduceAxes}
    for step in pass_.schedule.steps:
        code = kernel_code(step.expr)
        if step.is_reduction:
            reductions[step.reduce].append(KernelReduction(str(step.name), step.reduce,
                                                           step.how, code, block=step.block))
        else:
            body.append((str(step.name), code))
    supported = kernel_reductions()
    unsupported = {axes for axes, found in reductions.items() if found and axes not in supported}
    if unsupported:
        raise ValueError(f"pass {pass_.index} folds {sorted(a.value for a in unsupported)} "
                         "reductions, which not every kernel target supports; the planner "
                         "should have left them to the glue")
    outputs = tuple(KernelOutput(name, full_dtypes[name], kernel_code(expr))
                    for name, expr in pass_.schedule.results)
    kernel = PassKernel(
        name=f"{prefix}_{'f' if plan.factored else 'u'}{pass_.index}_"
             f"{pass_digest(plan, pass_)}",
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
        matrix_operands=tuple(reductions[ReduceAxes.MATRIX]),
        full_outputs=outputs)
    kernel = name_kernel(kernel)
    return replace(kernel, source=render("pass_kernel.j2", k=kernel))


def pass_digest(plan: KernelPlan, pass_: Pass) -> str:
    """Names follow the pass's content: identical passes of different specialisations
    share one kernel."""
    parts = [str(plan.factored), *pass_.reads, *pass_.small_inputs]
    parts += [f"{s.name}:{s.kind}:{sympy.srepr(s.expr)}" for s in pass_.schedule.steps]
    parts += [f"{n}={sympy.srepr(e)}" for n, e in pass_.schedule.results]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]
