"""The kernel targets, one object each: everything that makes Metal Metal and CUDA CUDA.

A pass kernel's body is the same text for every target (``afgen.backends.kernels``): it
calls ``afg_*`` helpers and spells shared memory ``afg_shared`` and the barrier
``afg_barrier()``. A target supplies the rest: the header that defines those helpers in
its language, the prologue that reads the thread and group indices (MLX's
``metal_kernel`` adds a Metal attribute to the signature only when the *source* names
it, so these reads precede the body in the source, never in the header), the names a
kernel may not take, the MLX factory and device the generated module uses, the CPU
executor's entry, the hardware limits, and the reductions its kernels fold. Everything
that depends on the target iterates :data:`TARGETS`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from afgen.backends.render import render
from afgen.executor import cpu_run, cuda_source, metal_source
from afgen.spec.shapes import ReduceAxes

# C++ keywords and alternative tokens: reserved in every target.
CPP_KEYWORDS = frozenset("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
char16_t char32_t class compl concept const consteval constexpr constinit const_cast
continue co_await co_return co_yield decltype default delete do double dynamic_cast else
enum explicit export extern false float for friend goto if inline int long mutable
namespace new noexcept not not_eq nullptr operator or or_eq private protected public
register reinterpret_cast requires return short signed sizeof static static_assert
static_cast struct switch template this thread_local throw true try typedef typeid typename
union unsigned using virtual void volatile wchar_t while xor xor_eq
""".split())

# What every kernel source meets whatever the target: the standard fixed-width types,
# macros of the C math headers both targets include (a macro would rewrite a local of
# the same name), and the math functions the headers call.
C_COMMON = frozenset("""
NULL main std size_t ptrdiff_t uint8_t uint16_t uint32_t uint64_t int8_t int16_t int32_t
int64_t INFINITY NAN HUGE_VAL HUGE_VALF FLT_MAX FLT_MIN FLT_EPSILON M_PI M_E assert
isnan isinf isfinite signbit sqrt rsqrt exp log pow fabs fmax fmin
""".split())

# Metal: address spaces, attribute qualifiers, the built-in scalar and vector types, the
# SIMD and barrier functions, and the thread-position attributes (MLX scans a source
# for these names to add them to the kernel's signature, so a local of that name would
# be declared twice). MLX adds bfloat16_t and float16_t.
METAL_RESERVED = frozenset("""
metal device constant thread threadgroup threadgroup_imageblock ray_data object_data
kernel vertex fragment visible stitchable half uint ushort uchar ulong bfloat bfloat16_t
float16_t float2 float3 float4 half2 half3 half4 uint2 uint3 uint4 int2 int3 int4
simd_sum simd_shuffle simd_shuffle_down threadgroup_barrier mem_flags as_type
""".split()) | frozenset(cpu_run.METAL_ATTRIBUTES)

# CUDA: qualifiers, built-in index variables and vector types, intrinsics the header
# uses, the half/bfloat16 types, and what MLX's program wraps a kernel in (the
# ``mlx::core::cu`` namespace, the ``cg`` alias of cooperative_groups, ``Shape`` and
# ``Strides`` of its utils header, its MAX_NDIM macro).
CUDA_RESERVED = frozenset("""
__global__ __device__ __host__ __shared__ __constant__ __restrict__ __forceinline__
__grid_constant__ __syncthreads __shfl_down_sync __shfl_xor_sync __float_as_uint
__uint_as_float __half __nv_bfloat16 __half2float __float2half __bfloat162float
__float2bfloat16 blockIdx blockDim threadIdx gridDim warpSize dim3 uint3
sqrtf rsqrtf expf logf powf fabsf fmaxf fminf
mlx core cu cg cooperative_groups Shape Strides MAX_NDIM
""".split())


@dataclass(frozen=True)
class Limits:
    """What the hardware guarantees every device of the target: a kernel is planned
    within them or not at all."""

    threads_per_group: int
    shared_memory_bytes: int
    grid_threads: int  # the largest grid (in threads, as MLX takes it) along x


@dataclass(frozen=True)
class KernelTarget:
    """One kernel target. ``math`` spells each unary ``afg_*`` math function of the body;
    ``group_index``/``lid``/``lane``/``warp`` are the expressions of the prologue."""

    name: str  # the backend name: ``backend="metal"``
    title: str
    header_template: str
    math: Mapping[str, str]
    group_index: str
    lid: str
    lane: str
    warp: str
    reserved_words: frozenset[str]
    mlx_factory: str  # ``mx.fast.<mlx_factory>``
    mlx_device: str  # ``mx.<mlx_device>.is_available()``
    launch_source: Callable[..., str]  # (name, ins, outs, source, header, call) -> text
    run: Callable[..., dict]  # the CPU executor on a full source
    limits: Limits
    reductions: frozenset[ReduceAxes]

    @cached_property
    def header(self) -> str:
        return render(self.header_template, target=self)

    @cached_property
    def prologue(self) -> str:
        """The lines before every body: the thread and group indices as ``afg_*``."""
        return render("kernel_prologue.j2", target=self)

    @cached_property
    def helper_names(self) -> frozenset[str]:
        """Every ``afg_*`` name the header and the prologue define."""
        return frozenset(re.findall(r"\bafg_\w+", self.header + self.prologue))

    @cached_property
    def reserved(self) -> frozenset[str]:
        """Every name a kernel of this target cannot give a local or a buffer."""
        return CPP_KEYWORDS | C_COMMON | self.reserved_words | self.helper_names

    def available(self) -> bool:
        """Whether the installed MLX runs this target on a device here."""
        import mlx.core as mx

        device = getattr(mx, self.mlx_device, None)
        return device is not None and device.is_available()


METAL = KernelTarget(
    name="metal", title="Metal", header_template="kernel_header.metal.j2",
    math={"afg_sqrt": "metal::sqrt", "afg_rsqrt": "metal::rsqrt", "afg_abs": "metal::fabs",
          "afg_exp": "metal::exp", "afg_log": "metal::log", "afg_sign": "metal::sign"},
    group_index="threadgroup_position_in_grid.x", lid="thread_position_in_threadgroup.x",
    lane="thread_index_in_simdgroup", warp="simdgroup_index_in_threadgroup",
    reserved_words=METAL_RESERVED, mlx_factory="metal_kernel", mlx_device="metal",
    launch_source=metal_source.metal_launch_source, run=cpu_run.run_metal,
    limits=Limits(threads_per_group=1024, shared_memory_bytes=32 * 1024,
                  grid_threads=2**32 - 1),
    reductions=frozenset({ReduceAxes.ALL, ReduceAxes.ROWWISE, ReduceAxes.COLWISE,
                          ReduceAxes.MATRIX}))

CUDA = KernelTarget(
    name="cuda", title="CUDA", header_template="kernel_header.cuda.j2",
    math={"afg_sqrt": "sqrtf", "afg_rsqrt": "rsqrtf", "afg_abs": "fabsf",
          "afg_exp": "expf", "afg_log": "logf"},
    group_index="blockIdx.x", lid="threadIdx.x", lane="(threadIdx.x & 31u)",
    warp="(threadIdx.x >> 5)", reserved_words=CUDA_RESERVED, mlx_factory="cuda_kernel",
    mlx_device="cuda", launch_source=cuda_source.cuda_launch_source, run=cpu_run.run_cuda,
    limits=Limits(threads_per_group=1024, shared_memory_bytes=48 * 1024,
                  grid_threads=2**31 - 1),
    reductions=frozenset({ReduceAxes.ALL, ReduceAxes.ROWWISE, ReduceAxes.COLWISE,
                          ReduceAxes.MATRIX}))

TARGETS: dict[str, KernelTarget] = {t.name: t for t in (METAL, CUDA)}


def kernel_reductions() -> frozenset[ReduceAxes]:
    """The reductions a pass kernel may fold: one plan serves every target, so those
    every target supports; the planner leaves the others to the MLX glue."""
    return frozenset.intersection(*(t.reductions for t in TARGETS.values()))


def reserved_in_kernels() -> dict[str, str]:
    """Each name some target's kernels reserve, with the targets that do ("Metal and
    CUDA")."""
    out: dict[str, list[str]] = {}
    for target in TARGETS.values():
        for name in target.reserved:
            out.setdefault(name, []).append(target.title)
    return {name: " and ".join(titles) for name, titles in out.items()}


def smallest_limits() -> Limits:
    """The limits that hold on every target (the plan is shared)."""
    limits = [t.limits for t in TARGETS.values()]
    return Limits(min(x.threads_per_group for x in limits),
                  min(x.shared_memory_bytes for x in limits),
                  min(x.grid_threads for x in limits))
