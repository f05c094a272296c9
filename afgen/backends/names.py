"""The naming rule of generated code: spec names verbatim, the generator's names fresh.

Every name a spec introduces (hyperparameters and their components, state tensors, the
values its update assigns) is written unchanged into the generated Python and kernel text,
so a reader finds ``beta2t`` where the spec says ``beta2t``. Two things make that safe:

* a spec name that a target language or the generated module itself cannot give up is
  refused where the spec writes it (:func:`check_spec_names`): keywords and builtins of
  Python, keywords and built-in names of C++/Metal/CUDA, the names the generated module
  binds at top level, and (for hyperparameters, stored as ``self.<name>``) every attribute
  a generated optimizer already has;
* every other name (temporaries, kernel locals, buffers, loop indices) is drawn from a
  :class:`SymbolTable` that already holds the spec's names, so the generator renames its
  own names (``size`` becomes ``size_1``), never the spec's.
"""
from __future__ import annotations

import builtins
import keyword
from collections.abc import Iterable

from afgen.errors import SpecError
from afgen.names import SymbolTable, spec_names
from afgen.spec.model import Spec

__all__ = ["C_FAMILY_RESERVED", "PYTHON_RESERVED", "SymbolTable", "check_spec_names",
           "spec_names"]

# Python: keywords (soft ones too: ``match``/``case``/``type`` are legal names, but a
# reader should not meet them as values) and every builtin.
PYTHON_RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(
    name for name in dir(builtins) if not name.startswith("_"))

# C++ keywords and alternative tokens, plus what Metal and CUDA add: address spaces,
# attribute and built-in type names, and the kernel-function qualifiers.
C_FAMILY_RESERVED = frozenset("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
char16_t char32_t class compl concept const consteval constexpr constinit const_cast
continue co_await co_return co_yield decltype default delete do double dynamic_cast else
enum explicit export extern false float for friend goto if inline int long mutable
namespace new noexcept not not_eq nullptr operator or or_eq private protected public
register reinterpret_cast requires return short signed sizeof static static_assert
static_cast struct switch template this thread_local throw true try typedef typeid typename
union unsigned using virtual void volatile wchar_t while xor xor_eq
NULL main std metal
device constant thread threadgroup threadgroup_imageblock ray_data object_data kernel
vertex fragment visible stitchable half uint ushort uchar ulong size_t ptrdiff_t
bfloat bfloat16_t float2 float3 float4 half2 half3 half4 uint2 uint3 uint4 int2 int3 int4
simd_sum simd_shuffle simd_shuffle_down threadgroup_barrier mem_flags
__global__ __device__ __host__ __shared__ __constant__ __restrict__ __syncthreads
__shfl_down_sync __shfl_xor_sync __float_as_uint __uint_as_float __half __nv_bfloat16
blockIdx blockDim threadIdx gridDim warpSize dim3 uint32_t int32_t uint64_t int64_t
uint16_t int16_t uint8_t int8_t
""".split())


def check_spec_names(spec: Spec, module_names: Iterable[str],
                     optimizer_attributes: Iterable[str]) -> None:
    """Refuse a spec name the generated code cannot keep verbatim (see the module doc)."""
    module_names = frozenset(module_names)
    attributes = frozenset(optimizer_attributes)
    for name, loc in spec_names(spec).items():
        if name in PYTHON_RESERVED:
            why = "a Python keyword or builtin"
        elif name in C_FAMILY_RESERVED:
            why = "a C++/Metal/CUDA keyword or built-in name"
        elif name in module_names:
            why = "a name the generated module already binds"
        else:
            continue
        raise SpecError(loc, f"'{name}' is {why}; spec names are written verbatim into the "
                        "generated code, so choose another name")
    for h in spec.hyperparameters:
        if h.name in attributes:
            raise SpecError(h.loc, f"'{h.name}' is already an attribute of every generated "
                            "optimizer (hyperparameters are stored as self.<name>); choose "
                            "another name")
