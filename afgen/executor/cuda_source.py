"""Reproduce the CUDA source MLX's ``mx.fast.cuda_kernel`` hands to NVRTC.

The CPU build of MLX refuses to construct a cuda_kernel, so the text is
rebuilt here following ``build_kernel`` in mlx/backend/cuda/custom_kernel.cpp
(MLX 0.32): the default header, the user header, ``namespace mlx::core::cu``,
a ``__global__ void custom_kernel_<name><template hash>(...)`` signature with
``const T*`` inputs, ``Shape``/``Strides``/``int`` metadata for inputs whose
``<name>_shape``/``_strides``/``_ndim`` appears in the body (never for 0-d
inputs), ``T*`` outputs, then ``constexpr``/``using`` lines for the template
arguments and the body.

:func:`nvcc_check` compiles that exact text with the real CUDA compiler, with
a minimal stand-in for MLX's device ``utils.cuh``, to catch code the g++ shim
would accept but CUDA would not.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afgen.executor.cpu_run import (
    KernelCompileError,
    KernelLaunchError,
    as_numpy_input,
    cache_dir,
    canonical_dtype,
    run_cuda,
)

DEFAULT_HEADER = (
    '\n#include "mlx/backend/cuda/device/utils.cuh"\n\n#include <cooperative_groups.h>\n\n'
)

NVCC_FLAGS = ["-arch=sm_90", "-std=c++17", "-c"]

_CUDA_TYPE = {
    "bool": "bool",
    "int8": "int8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "uint16": "uint16_t",
    "uint32": "uint32_t",
    "uint64": "uint64_t",
    "float16": "__half",
    "bfloat16": "__nv_bfloat16",
    "float32": "float",
    "float64": "double",
}

# mlx::core::get_type_string, used for the template part of the kernel name.
_TYPE_STRING = {
    "float32": "float",
    "float16": "float16_t",
    "bfloat16": "bfloat16_t",
    "float64": "double",
    "bool": "bool",
    "int8": "int8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "uint16": "uint16_t",
    "uint32": "uint32_t",
    "uint64": "uint64_t",
}

# Minimal stand-in for mlx/backend/cuda/device/utils.cuh under nvcc: the
# headers it includes and the names custom kernels use from it.
UTILS_STANDIN = """#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
#include <cuda/std/limits>
#include <cuda/std/tuple>

#define MAX_NDIM 10
#define WARP_SIZE 32

namespace mlx::core::cu {
using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;

template <typename T>
struct Limits {
  static constexpr __host__ __device__ T max() {
    return cuda::std::numeric_limits<T>::max();
  }
  static constexpr __host__ __device__ T min() {
    return cuda::std::numeric_limits<T>::min();
  }
};

template <typename IdxT = int64_t>
inline __host__ __device__ IdxT
elem_to_loc(IdxT elem, const int* shape, const int64_t* strides, int ndim) {
  IdxT loc = 0;
  for (int i = ndim - 1; i >= 0 && elem > 0; --i) {
    loc += (elem % shape[i]) * IdxT(strides[i]);
    elem /= shape[i];
  }
  return loc;
}
}  // namespace mlx::core::cu
"""


def _dtype_and_ndim(value: Any) -> tuple[str, int]:
    """dtype name and ndim of an input (numpy, mlx or Python scalar)."""
    if isinstance(value, bool):
        return "bool", 0
    if isinstance(value, int):
        return "int32", 0
    if isinstance(value, float):
        return "float32", 0
    return canonical_dtype(value.dtype), len(value.shape)


def _template_hash(template: Sequence[tuple[str, Any]]) -> str:
    out = ""
    for _, arg in template:
        if isinstance(arg, bool):
            out += "_t" if arg else "_f"
        elif isinstance(arg, int):
            out += f"_{arg}"
        else:
            out += "_" + _TYPE_STRING[canonical_dtype(arg)]
    return out


def _template_lines(template: Sequence[tuple[str, Any]]) -> str:
    lines = ""
    for name, arg in template:
        if isinstance(arg, bool):
            lines += f"  constexpr bool {name} = {'true' if arg else 'false'};\n"
        elif isinstance(arg, int):
            lines += f"  constexpr int {name} = {arg};\n"
        else:
            lines += f"  using {name} = {_CUDA_TYPE[canonical_dtype(arg)]};\n"
    return lines + "\n" if lines else ""


def _input_params(name: str, value: Any, source: str) -> str:
    dtype, ndim = _dtype_and_ndim(value)
    text = f"    const {_CUDA_TYPE[dtype]}* {name},\n"
    if ndim > 0:
        if f"{name}_shape" in source:
            text += f"    const __grid_constant__ Shape {name}_shape,\n"
        if f"{name}_strides" in source:
            text += f"    const __grid_constant__ Strides {name}_strides,\n"
        if f"{name}_ndim" in source:
            text += f"    const __grid_constant__ int {name}_ndim,\n"
    return text


def cuda_kernel_name(name: str, template: Sequence[tuple[str, Any]] | None = None) -> str:
    """Kernel name MLX uses: custom_kernel_<name> plus the template hash."""
    return "custom_kernel_" + name + _template_hash(template or [])


def cuda_full_source(
    name: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    source: str,
    header: str,
    inputs: Sequence[Any],
    output_dtypes: Sequence[Any],
    template: Sequence[tuple[str, Any]] | None = None,
) -> str:
    """Return the full CUDA text MLX's cuda_kernel would compile.

    Only the dtype and ndim of each input matter.
    """
    if not output_names:
        raise KernelLaunchError("[custom_kernel] Must specify at least one output.")
    if len(inputs) != len(input_names) or len(output_dtypes) != len(output_names):
        raise KernelLaunchError("inputs/outputs do not match their names")
    text = DEFAULT_HEADER + header
    text += "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
    text += f"__global__ void {cuda_kernel_name(name, template)}(\n"
    for n, value in zip(input_names, inputs):
        text += _input_params(n, value, source)
    outs = [
        f"    {_CUDA_TYPE[canonical_dtype(d)]}* {n}" for n, d in zip(output_names, output_dtypes)
    ]
    text += ",\n".join(outs) + ") {\n"
    text += _template_lines(template or [])
    return text + source + "\n}\n\n} // namespace mlx::core::cu\n"


def cuda_launch_source(
    name: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    source: str,
    header: str,
    call: Mapping[str, Any],
) -> str:
    """:func:`cuda_full_source` of one launch: ``call`` holds the keyword arguments of
    the MLX kernel call (only the inputs, output dtypes and template matter)."""
    return cuda_full_source(
        name, input_names, output_names, source, header, call["inputs"],
        call["output_dtypes"], call.get("template"),
    )  # fmt: skip

def _nvcc() -> str:
    path = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )
    if path is None:
        raise KernelCompileError("nvcc not found: install the CUDA toolkit to check CUDA kernels")
    return path


def _standin_include_dir() -> Path:
    root = cache_dir() / "nvcc-include"
    path = root / "mlx/backend/cuda/device/utils.cuh"
    if not path.exists() or path.read_text() != UTILS_STANDIN:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".utils.{os.getpid()}.tmp")
        tmp.write_text(UTILS_STANDIN)
        os.replace(tmp, path)
    return root


def _nvcc_message(stderr: str, source: str) -> str:
    lines = source.splitlines()
    where = re.search(r"kernel\.cu\((\d+)\): error", stderr)
    first = next((ln for ln in stderr.splitlines() if "error" in ln), stderr.strip()[:200])
    msg = f"nvcc rejected the kernel: {first.strip()}"
    if where and 0 < int(where.group(1)) <= len(lines):
        n = int(where.group(1))
        msg += f"\n  line {n}: {lines[n - 1].strip()}"
    return f"{msg}\n--- nvcc output ---\n{stderr.strip()}"


def nvcc_check(source: str) -> None:
    """Compile the exact CUDA text with ``nvcc -arch=sm_90 -c``; raise if rejected.

    NVRTC (what MLX uses) is invoked with --device-as-default-execution-space,
    which nvcc lacks: helper functions in the header must be ``__device__``.
    Successful checks are cached by source hash.
    """
    include = _standin_include_dir()
    key = hashlib.sha256((source + UTILS_STANDIN + " ".join(NVCC_FLAGS)).encode()).hexdigest()
    marker = cache_dir() / f"nvcc-ok-{key[:24]}"
    if marker.exists():
        return
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(source)
        cmd = [_nvcc(), *NVCC_FLAGS, f"-I{include}", "kernel.cu", "-o", "kernel.o"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    if proc.returncode != 0:
        raise KernelCompileError(_nvcc_message(proc.stderr + proc.stdout, source))
    marker.touch()


def run_cuda_kernel(
    name: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    source: str,
    inputs: Sequence[Any] | Mapping[str, Any],
    output_shapes: Sequence[Sequence[int]],
    output_dtypes: Sequence[Any],
    grid: tuple[int, int, int],
    threadgroup: tuple[int, int, int],
    template: Sequence[tuple[str, Any]] | None = None,
    init_value: float | None = None,
    header: str = "",
    **run_options: Any,
) -> dict[str, np.ndarray]:
    """Build the source as MLX's cuda_kernel would, then run it on the CPU.

    Inputs are numpy arrays, mlx arrays or Python scalars; bfloat16 inputs
    must be mlx arrays (numpy has no bfloat16), bfloat16 outputs come back as
    uint16 bit patterns.
    """
    values = [inputs[n] for n in input_names] if isinstance(inputs, Mapping) else list(inputs)
    full = cuda_full_source(
        name, input_names, output_names, source, header, values, output_dtypes, template
    )
    outputs = {
        n: (tuple(s), canonical_dtype(d))
        for n, s, d in zip(output_names, output_shapes, output_dtypes)
    }
    bound = {n: as_numpy_input(v) for n, v in zip(input_names, values)}
    return run_cuda(full, bound, outputs, grid, threadgroup, init_value, **run_options)
