"""Run the exact Metal / CUDA kernel text MLX would compile, on the CPU.

The kernel text is compiled by g++ against a strict shim header (see
``shims/``) and linked with a small runtime that executes every GPU thread of
a threadgroup as a real thread under a deterministic scheduler. Each call
runs the grid twice, once letting the lowest-numbered runnable thread go first
and once the highest; a kernel whose outputs depend on that order has a data
race (typically a missing barrier) and raises :class:`KernelRaceError`.

Memory is poisoned so that bugs show up as wrong numbers or errors instead of
passing by luck: threadgroup memory and (without ``init_value``) outputs start
as 0xFF bytes (NaN for float types), inputs are surrounded by NaN guard bytes,
and outputs by 0xA5 guard bytes that are checked after the run. The kernel unit
is built with UBSan, which stops a run that indexes a thread-local or
threadgroup array out of bounds (the guards only see the buffers) or does
other undefined arithmetic (:class:`KernelUndefinedBehaviourError`), and
uninitialised locals start as a fixed pattern. AddressSanitizer is not used:
its shadow memory costs every one of up to 1024 threads per group, and the
buffers it would watch live in the mapped launch file, which the guards
already cover.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHIM_DIR = Path(__file__).resolve().parent / "shims"

GUARD_BYTES = 4096
INPUT_GUARD = 0xFF
OUTPUT_GUARD = 0xA5
POISON = 0xFF
MAX_GROUP_THREADS = 1024
CUDA_MAX_NDIM = 10
SCHEDULES = ("ascending", "descending")

CXX = os.environ.get("AFGEN_CXX", "g++")
OBJCOPY = os.environ.get("AFGEN_OBJCOPY", "objcopy")
COMMON_FLAGS = ["-std=c++17", "-O1", "-pthread", "-fno-strict-aliasing"]
KERNEL_FLAGS = [
    "-nostdinc",
    "-nostdinc++",
    "-Wno-attributes",
    "-Wno-literal-suffix",
    "-Wno-unknown-pragmas",
    "-Werror=return-type",
    "-ftrack-macro-expansion=0",
    "-fno-zero-initialized-in-bss",
]
# Undefined behaviour in the kernel unit stops the run: an out-of-bounds index into a
# thread-local or threadgroup array (``for (c = 0; c <= 8; ...)`` over ``float acc[8]``),
# a shift past the width, an integer division by zero, signed overflow. A GPU would read or
# write whatever lies next to the array; the guards around buffers cannot see that, UBSan
# can. Uninitialised locals start as a 0xFE pattern (about -1.7e38 as a float) instead of
# whatever the stack held, so a skipped initialisation shows up as wrong numbers.
SANITIZE_FLAGS = [
    "-fsanitize=undefined,bounds-strict",
    "-fno-sanitize=vptr",
    "-fno-sanitize-recover=all",
    "-ftrivial-auto-var-init=pattern",
]
# What UBSan's runtime does on the first error: no stack trace, a distinctive exit code.
UBSAN_OPTIONS = "print_stacktrace=0:exitcode=86:halt_on_error=1"
UBSAN_EXIT = 86

METAL_ATTRIBUTES = (
    "dispatch_quadgroups_per_threadgroup",
    "dispatch_simdgroups_per_threadgroup",
    "dispatch_threads_per_threadgroup",
    "grid_origin",
    "grid_size",
    "quadgroup_index_in_threadgroup",
    "quadgroups_per_threadgroup",
    "simdgroup_index_in_threadgroup",
    "simdgroups_per_threadgroup",
    "thread_execution_width",
    "thread_index_in_quadgroup",
    "thread_index_in_simdgroup",
    "thread_index_in_threadgroup",
    "thread_position_in_grid",
    "thread_position_in_threadgroup",
    "threadgroup_position_in_grid",
    "threadgroups_per_grid",
    "threads_per_grid",
    "threads_per_simdgroup",
    "threads_per_threadgroup",
)


# --------------------------------------------------------------------------
# Errors


class KernelError(RuntimeError):
    """Base class of every error the executor raises about a kernel."""


class KernelCompileError(KernelError):
    """The kernel text does not compile (under the shim or under nvcc)."""


class KernelLaunchError(KernelError):
    """Arguments, launch geometry or signature do not fit together."""


class KernelRuntimeError(KernelError):
    """The kernel crashed, deadlocked, timed out or misused an intrinsic."""


class KernelMemoryError(KernelRuntimeError):
    """The kernel wrote outside an output buffer."""


class KernelUndefinedBehaviourError(KernelRuntimeError):
    """The kernel did something C++ (and CUDA/MSL) leaves undefined, e.g. indexed a local
    or threadgroup array out of bounds; reported by the sanitizer built into the run."""


class KernelRaceError(KernelRuntimeError):
    """Outputs depend on thread scheduling: the kernel has a data race."""


# --------------------------------------------------------------------------
# Dtypes. bfloat16 has no numpy type: it travels as uint16 bit patterns.

BFLOAT16 = "bfloat16"

_NUMPY_OF = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "int16": np.int16,
    "uint16": np.uint16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}

_DTYPE_OF_CTYPE = {
    "float": "float32",
    "float32_t": "float32",
    "half": "float16",
    "float16_t": "float16",
    "__half": "float16",
    "bfloat": "bfloat16",
    "bfloat16_t": "bfloat16",
    "__nv_bfloat16": "bfloat16",
    "int": "int32",
    "int32_t": "int32",
    "uint": "uint32",
    "uint32_t": "uint32",
    "unsigned": "uint32",
    "unsigned int": "uint32",
    "long": "int64",
    "int64_t": "int64",
    "ulong": "uint64",
    "uint64_t": "uint64",
    "short": "int16",
    "int16_t": "int16",
    "ushort": "uint16",
    "uint16_t": "uint16",
    "char": "int8",
    "int8_t": "int8",
    "uchar": "uint8",
    "uint8_t": "uint8",
    "bool": "bool",
}


def canonical_dtype(dtype: Any) -> str:
    """Name a dtype given as numpy dtype, mlx Dtype or string ("bfloat16")."""
    text = str(dtype).rsplit(".", 1)[-1]
    if text in _NUMPY_OF:
        return text
    try:
        return np.dtype(dtype).name
    except TypeError as exc:
        raise KernelLaunchError(f"unsupported dtype {dtype!r}") from exc


def numpy_dtype(dtype: Any) -> np.dtype:
    """numpy storage dtype for a dtype (uint16 for bfloat16)."""
    return np.dtype(_NUMPY_OF[canonical_dtype(dtype)])


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest-even); return uint16 bits."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FC0), rounded).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """Expand bfloat16 bit patterns (uint16) to float32 exactly."""
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def as_numpy_input(value: Any) -> Any:
    """numpy form of a kernel input (mlx bfloat16 becomes uint16 bit patterns, numpy has no
    bfloat16); Python scalars pass through unchanged."""
    if isinstance(value, (bool, int, float)):
        return value
    import mlx.core as mx

    if isinstance(value, mx.array):
        if value.dtype == mx.bfloat16:
            value = value.view(mx.uint16)
        return np.array(value)
    return np.asarray(value)


def _cast_value(value: float, dtype: str) -> np.ndarray:
    if dtype == BFLOAT16:
        return to_bf16_bits(np.float32(value))
    return np.asarray(value).astype(_NUMPY_OF[dtype])


# --------------------------------------------------------------------------
# Kernel signatures


@dataclass(frozen=True)
class Param:
    """One kernel parameter as written in the generated signature."""

    name: str
    ctype: str  # type text, qualifiers included
    base: str  # element / value type, qualifiers stripped
    pointer: bool
    reference: bool
    attribute: str | None  # Metal [[...]] attribute, e.g. "buffer(0)"


@dataclass(frozen=True)
class Signature:
    """Parsed kernel: name, how to call it and its parameters."""

    api: str  # "metal" or "cuda"
    name: str
    call: str  # qualified name with template arguments
    params: tuple[Param, ...]
    uses_atomics: bool


_QUALIFIERS = re.compile(
    r"\b(const|volatile|device|constant|thread|threadgroup|__grid_constant__|"
    r"__restrict__|__restrict|restrict|struct)\b"
)


def _strip_comments(text: str) -> str:
    """Blank out comments and string literals, keeping offsets unchanged."""

    def blank(m: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))

    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"', blank, text, flags=re.S)


def _matching_paren(text: str, open_pos: int) -> int:
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise KernelLaunchError("unbalanced parentheses in kernel signature")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_param(text: str) -> Param:
    attribute = None
    m = re.search(r"\[\[\s*(.*?)\s*\]\]\s*$", text, flags=re.S)
    if m:
        attribute = m.group(1)
        text = text[: m.start()]
    m = re.search(r"(\w+)\s*$", text)
    if not m:
        raise KernelLaunchError(f"cannot parse kernel parameter {text!r}")
    ctype = " ".join(text[: m.start()].split())
    base = _QUALIFIERS.sub(" ", ctype).replace("*", " ").replace("&", " ")
    base = " ".join(base.split())
    return Param(m.group(1), ctype, base, "*" in ctype, "&" in ctype, attribute)


def _namespaces_at(code: str, pos: int) -> list[str]:
    """Names of the namespaces enclosing offset `pos` of comment-free code."""
    stack: list[tuple[str | None, int]] = []
    depth = 0
    for m in re.finditer(r"namespace\s+([\w:]+)\s*\{|\{|\}", code[:pos]):
        if m.group(0) == "}":
            depth -= 1
            while stack and stack[-1][1] > depth:
                stack.pop()
        else:
            depth += 1
            stack.append((m.group(1), depth))
    return [name for name, _ in stack if name]


def _parse_signature(api: str, source: str, pattern: str) -> Signature:
    code = _strip_comments(source)
    m = re.search(pattern, code)
    if not m:
        raise KernelLaunchError(f"no {api} kernel function found in the source")
    name = m.group(1)
    close = _matching_paren(code, m.end() - 1)
    params = tuple(_parse_param(p) for p in _split_top_level(code[m.end() : close]))
    qualified = "::".join([*_namespaces_at(code, m.start()), name])
    call = qualified + _template_arguments(code, name, m.start())
    return Signature(api, name, call, params, "atomic" in code)


def _template_arguments(code: str, name: str, kernel_pos: int) -> str:
    inst = re.search(rf"decltype\(\s*{re.escape(name)}\s*(<.*?>)\s*\)", code)
    if inst:
        return inst.group(1)
    if re.search(r"template\s*<[^;{]*>\s*(\[\[[^\]]*\]\]\s*)*$", code[:kernel_pos]):
        raise KernelLaunchError(f"templated kernel {name} has no explicit instantiation")
    return ""


def parse_metal_signature(source_full: str) -> Signature:
    """Find the ``[[kernel]]`` function of a full Metal source."""
    pattern = r"(?:\[\[\s*kernel\s*\]\]|\bkernel)\s*void\s+(\w+)\s*\("
    return _parse_signature("metal", source_full, pattern)


def parse_cuda_signature(source_full: str) -> Signature:
    """Find the ``__global__`` function of a full CUDA source."""
    return _parse_signature("cuda", source_full, r"__global__\s+void\s+(\w+)\s*\(")


# --------------------------------------------------------------------------
# Argument binding and the launch file


@dataclass
class _Arg:
    """One launch argument: a buffer (kind 0) or a by-value blob (kind 1)."""

    kind: int
    data: np.ndarray  # uint8 payload
    guard: int = INPUT_GUARD
    lead: int = 0  # bytes between payload start and the pointed-to element
    output: str | None = None
    offset: int = 0
    shape: tuple[int, ...] = ()
    dtype: str = ""


def _declared_dtype(param: Param) -> str:
    base = re.sub(r"^(metal::)?atomic\s*<\s*(.*?)\s*>$", r"\2", param.base)
    base = {"atomic_int": "int", "atomic_uint": "uint", "atomic_float": "float"}.get(base, base)
    if base not in _DTYPE_OF_CTYPE:
        raise KernelLaunchError(f"parameter {param.name}: unsupported type {param.ctype!r}")
    return _DTYPE_OF_CTYPE[base]


def _as_input_array(value: Any, dtype: str, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        if isinstance(value, (bool, int, float)):
            return _cast_value(value, dtype)
        value = np.asarray(value)
    want = np.dtype(_NUMPY_OF[dtype])
    if value.dtype != want:
        hint = " (pass bfloat16 as uint16 bits, see to_bf16_bits)" if dtype == BFLOAT16 else ""
        raise KernelLaunchError(
            f"input {name}: kernel declares {dtype} but got numpy {value.dtype}{hint}"
        )
    return value


def _strided_payload(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Copy the memory span a strided view covers; holes read as NaN guard."""
    item = arr.itemsize
    if any(s % item for s in arr.strides):
        raise KernelLaunchError("input strides are not a multiple of the item size")
    lo = sum((n - 1) * s for n, s in zip(arr.shape, arr.strides) if s < 0 and n > 0)
    hi = sum((n - 1) * s for n, s in zip(arr.shape, arr.strides) if s > 0 and n > 0)
    span = np.full(hi - lo + item if arr.size else 0, INPUT_GUARD, np.uint8)
    if arr.size:
        view = np.lib.stride_tricks.as_strided(
            span[-lo:].view(arr.dtype), arr.shape, arr.strides, writeable=True
        )
        view[...] = arr
    return span, -lo


def _element_strides(arr: np.ndarray, strided: bool) -> list[int]:
    if strided:
        return [s // arr.itemsize for s in arr.strides]
    out, acc = [], 1
    for n in reversed(arr.shape):
        out.append(acc)
        acc *= n
    return out[::-1]


def _bytes(values: Sequence[int], dtype: Any, pad_to: int = 0) -> np.ndarray:
    arr = np.zeros(max(len(values), pad_to), dtype)
    arr[: len(values)] = values
    return arr.view(np.uint8)


def _input_arg(param: Param, arr: np.ndarray, strided: bool) -> _Arg:
    if strided and not arr.flags.c_contiguous:
        payload, lead = _strided_payload(arr)
        return _Arg(0 if param.pointer else 1, payload, lead=lead)
    data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return _Arg(0 if param.pointer else 1, data)


def _meta_arg(param: Param, kind: str, arr: np.ndarray, strided: bool, api: str) -> _Arg:
    pad = CUDA_MAX_NDIM if api == "cuda" else 0
    if kind == "_ndim":
        return _Arg(1, _bytes([arr.ndim], np.int32))
    if kind == "_shape":
        values, dtype = list(arr.shape), np.int32
    else:
        values, dtype = _element_strides(arr, strided), np.int64
    return _Arg(0 if param.pointer else 1, _bytes(values, dtype, pad))


def _output_arg(param: Param, spec: tuple[Any, Any], init_value: float | None) -> _Arg:
    shape, dtype = tuple(int(n) for n in spec[0]), canonical_dtype(spec[1])
    declared = _declared_dtype(param)
    if dtype != declared and not (declared == BFLOAT16 and dtype == "uint16"):
        raise KernelLaunchError(f"output {param.name}: kernel declares {declared}, asked {dtype}")
    count = int(np.prod(shape, dtype=np.int64))
    itemsize = np.dtype(_NUMPY_OF[declared]).itemsize
    if init_value is None:
        data = np.full(count * itemsize, POISON, np.uint8)
    else:
        data = np.repeat(_cast_value(init_value, declared).reshape(1), count).view(np.uint8)
    return _Arg(0, data.copy(), OUTPUT_GUARD, output=param.name, shape=shape, dtype=declared)


def _meta_target(name: str, inputs: Mapping[str, Any]) -> tuple[str, str] | None:
    for suffix in ("_shape", "_strides", "_ndim"):
        if name.endswith(suffix) and name[: -len(suffix)] in inputs:
            return name[: -len(suffix)], suffix
    return None


def _bind(
    sig: Signature,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, tuple[Any, Any]],
    init_value: float | None,
) -> list[_Arg]:
    names = {p.name for p in sig.params}
    strided = {n for n in inputs if f"{n}_strides" in names}
    arrays = {}
    for p in sig.params:
        if p.name in inputs:
            arrays[p.name] = _as_input_array(inputs[p.name], _declared_dtype(p), p.name)
    args = []
    for p in sig.params:
        if p.attribute in METAL_ATTRIBUTES:
            continue
        args.append(_bind_param(sig, p, inputs, arrays, outputs, strided, init_value))
    missing = (set(inputs) | set(outputs)) - names
    if missing:
        raise KernelLaunchError(f"kernel {sig.name} has no parameter named {sorted(missing)}")
    return args


def _bind_param(
    sig: Signature,
    p: Param,
    inputs: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    outputs: Mapping[str, tuple[Any, Any]],
    strided: set[str],
    init_value: float | None,
) -> _Arg:
    if p.name in arrays:
        return _input_arg(p, arrays[p.name], p.name in strided)
    if p.name in outputs:
        return _output_arg(p, outputs[p.name], init_value)
    target = _meta_target(p.name, inputs)
    if target is not None:
        owner, kind = target
        return _meta_arg(p, kind, np.asarray(arrays[owner]), owner in strided, sig.api)
    if p.attribute and not p.attribute.startswith("buffer"):
        raise KernelLaunchError(f"unsupported Metal attribute [[{p.attribute}]] on {p.name}")
    raise KernelLaunchError(f"no input or output supplied for kernel parameter {p.name!r}")


_HEADER = struct.Struct("<QIIII3I3I3I3I4x4x")  # sizeof(afgen_launch_header) == 80
_ARG = struct.Struct("<IIQQ")
_MAGIC = 0x4E55524E45474641


@dataclass(frozen=True)
class _Geometry:
    groups: tuple[int, int, int]
    group: tuple[int, int, int]
    limit: tuple[int, int, int]
    grid_size: tuple[int, int, int]


def _geometry(api: str, grid: Sequence[int], threadgroup: Sequence[int]) -> _Geometry:
    """Launch shape exactly as MLX computes it for each back-end."""
    g = tuple(int(v) for v in grid)
    t = tuple(int(v) for v in threadgroup)
    if len(g) != 3 or len(t) != 3 or min(t) < 1 or min(g) < 0:
        raise KernelLaunchError(f"bad grid {grid} / threadgroup {threadgroup}")
    if t[0] * t[1] * t[2] > MAX_GROUP_THREADS:
        raise KernelLaunchError(
            f"threadgroup size {t[0] * t[1] * t[2]} exceeds {MAX_GROUP_THREADS}"
        )
    group = tuple(max(1, min(a, b)) for a, b in zip(t, g))
    groups = tuple(-(-a // b) for a, b in zip(g, t))
    if api == "metal":  # dispatchThreads: only threads inside the grid run
        return _Geometry(groups, group, g, g)
    limit = tuple(n * b for n, b in zip(groups, group))  # whole blocks run
    return _Geometry(groups, group, limit, limit)


def _layout(args: list[_Arg], header_size: int) -> int:
    offset = header_size
    for a in args:
        if a.kind == 0:
            offset = _align(offset + GUARD_BYTES, 64)
            a.offset = offset
            offset += a.data.size + GUARD_BYTES
        else:
            offset = _align(offset, 16)
            a.offset = offset
            offset += max(a.data.size, 1)
    return _align(offset, 64)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _launch_blob(api: str, schedule: int, geo: _Geometry, args: list[_Arg]) -> np.ndarray:
    header_size = _HEADER.size + _ARG.size * len(args)
    blob = np.zeros(_layout(args, header_size), np.uint8)
    fields = [_MAGIC, 1, int(api == "cuda"), schedule, len(args)]
    fields += [*geo.groups, *geo.group, *geo.limit, *geo.grid_size]
    blob[: _HEADER.size] = np.frombuffer(_HEADER.pack(*fields), np.uint8)
    for i, a in enumerate(args):
        pos = _HEADER.size + i * _ARG.size
        rec = _ARG.pack(a.kind, 0, a.offset + a.lead, a.data.size)
        blob[pos : pos + _ARG.size] = np.frombuffer(rec, np.uint8)
        if a.kind == 0:
            blob[a.offset - GUARD_BYTES : a.offset] = a.guard
            blob[a.offset + a.data.size : a.offset + a.data.size + GUARD_BYTES] = a.guard
        blob[a.offset : a.offset + a.data.size] = a.data
    return blob


# --------------------------------------------------------------------------
# Compilation


def cache_dir() -> Path:
    """Where compiled kernels are cached (AFGEN_EXECUTOR_CACHE overrides)."""
    default = Path(tempfile.gettempdir()) / f"afgen-executor-{os.getuid()}"
    path = Path(os.environ.get("AFGEN_EXECUTOR_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


_STUB_HEADERS = {
    "metal": [
        "metal_stdlib",
        "metal_math",
        "metal_common",
        "metal_simdgroup",
        "metal_atomic",
        "metal_compute",
        "metal_integer",
        "metal_relational",
    ],
    "cuda": [
        "mlx/backend/cuda/device/utils.cuh",
        "cooperative_groups.h",
        "cuda_fp16.h",
        "cuda_bf16.h",
        "cuda/std/array",
        "cuda/std/limits",
        "cuda/std/tuple",
    ],
}


def _stub_include_dir(api: str) -> Path:
    """Headers the kernel text may #include; the shim already defines them."""
    root = cache_dir() / f"include-{api}"
    for rel in _STUB_HEADERS[api]:
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, f"// {rel}: provided by the afgen {api} shim\n#pragma once\n")
    return root


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _shim_text() -> str:
    return "".join(p.read_text() for p in sorted(SHIM_DIR.glob("*.h")))


def _runtime_object() -> Path:
    """Compile the scheduler/launcher once per runtime.h version."""
    runtime = (SHIM_DIR / "runtime.h").read_text()
    obj = cache_dir() / f"runtime-{_digest(runtime, CXX, *COMMON_FLAGS)}.o"
    if obj.exists():
        return obj
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        src = Path(tmp) / "runtime.cpp"
        src.write_text('#define AFGEN_RUNTIME_IMPL\n#include "runtime.h"\n')
        out = Path(tmp) / "runtime.o"
        cmd = [CXX, *COMMON_FLAGS, f"-I{SHIM_DIR}", "-c", str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelCompileError(f"runtime failed to compile:\n{proc.stderr}")
        os.replace(out, obj)
    return obj


def _compile_unit(api: str, unit: str, kernel_file: str, source: str) -> Path:
    """Compile and link one kernel unit; cached by a hash of everything used."""
    runtime = _runtime_object()
    key = _digest(api, unit, _shim_text(), CXX, *COMMON_FLAGS, *KERNEL_FLAGS, *SANITIZE_FLAGS)
    exe = cache_dir() / f"kernel-{key}"
    if exe.exists():
        return exe
    includes = _stub_include_dir(api)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        src, obj, out = Path(tmp) / "unit.cpp", Path(tmp) / "unit.o", Path(tmp) / "kernel"
        src.write_text(unit)
        cmd = [CXX, *COMMON_FLAGS, *KERNEL_FLAGS, *SANITIZE_FLAGS, f"-I{SHIM_DIR}",
               f"-I{includes}"]
        proc = subprocess.run(
            [*cmd, "-c", str(src), "-o", str(obj)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise KernelCompileError(_compile_message(proc.stderr, kernel_file, source))
        _move_bss_to_threadgroup_section(obj)
        link = [CXX, "-pthread", *SANITIZE_FLAGS, str(obj), str(runtime), "-o", str(out), "-lm"]
        proc = subprocess.run(link, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelCompileError(f"kernel failed to link:\n{proc.stderr}")
        os.replace(out, exe)
    return exe


def _move_bss_to_threadgroup_section(obj: Path) -> None:
    """Rename the unit's .bss sections to the one the runtime poisons.

    GCC ignores section attributes on statics of templates and inline
    functions (they live in COMDAT .bss.<name> sections), so threadgroup and
    __shared__ variables are found by section instead: with
    -fno-zero-initialized-in-bss the unit's .bss holds only them.
    """
    listing = subprocess.run(
        ["readelf", "-S", "--wide", str(obj)], capture_output=True, text=True, check=True
    ).stdout
    names = set(re.findall(r"\]\s+(\.bss(?:\.\S+)?)\s+NOBITS", listing))
    if not names:
        return
    renames = [arg for n in sorted(names) for arg in ("--rename-section", f"{n}=afgen_tg")]
    subprocess.run([OBJCOPY, *renames, str(obj)], capture_output=True, text=True, check=True)


def _compile_message(stderr: str, kernel_file: str, source: str) -> str:
    lines = source.splitlines()
    where = re.search(rf"{re.escape(kernel_file)}:(\d+):(\d+):", stderr)
    first = next((ln for ln in stderr.splitlines() if "error" in ln), "")
    msg = f"kernel failed to compile: {first.strip()}"
    if where and 0 < int(where.group(1)) <= len(lines):
        n = int(where.group(1))
        msg += f"\n  line {n}: {lines[n - 1].strip()}"
    return f"{msg}\n--- compiler output ---\n{stderr.strip()}"


def _mark_threadgroup_storage(source: str) -> str:
    """Spell `threadgroup` as a storage class where it declares a variable.

    In MSL the keyword both declares threadgroup variables
    (``threadgroup float buf[32];``) and qualifies pointees
    (``threadgroup float* p``). Only the first needs shared static storage;
    the qualifier use stays an empty macro. A macro that stands for the
    keyword alone (``#define afg_shared threadgroup``) spells the storage
    class too: a header gives kernels a name for threadgroup memory that way.
    Lines and text are otherwise unchanged.
    """
    code = _strip_comments(source)
    out, last = [], 0
    for m in re.finditer(r"\bthreadgroup\b", code):
        line_start = code.rfind("\n", 0, m.start()) + 1
        line_end = code.find("\n", m.end())
        line = code[line_start : len(code) if line_end < 0 else line_end]
        alias = re.fullmatch(r"\s*#\s*define\s+\w+\s+threadgroup\s*", line)
        rest = re.match(r"[^;\[=(){},]*", code[m.end() :]).group(0)
        if not alias and ("*" in rest or "&" in rest or not rest.strip()):
            continue
        out.append(source[last : m.start()] + "afgen_threadgroup_storage")
        last = m.end()
    return "".join(out) + source[last:]


def _entry_point(sig: Signature) -> str:
    """C entry the runtime calls per GPU thread; binds argv slots by position."""
    args, slot = [], 0
    for p in sig.params:
        if p.attribute in METAL_ATTRIBUTES:
            args.append(f"afgen::attr(afgen::attr_{p.attribute})")
        else:
            args.append(f"afgen::arg{{argv[{slot}]}}")
            slot += 1
    joined = ",\n      ".join(args)
    return (
        'extern "C" void afgen_kernel_entry(void* const* argv) {\n'
        f"  (void)argv;\n  {sig.call}(\n      {joined});\n}}\n"
    )


def _unit(sig: Signature, source_full: str) -> tuple[str, str]:
    """The translation unit g++ compiles: shim, exact kernel text, entry point.

    ``#line`` keeps compiler messages in the kernel's own line numbers.
    """
    if sig.api == "metal":
        shim, kernel_file = "metal_shim.h", "kernel.metal"
        body = _mark_threadgroup_storage(source_full)
    else:
        shim, kernel_file, body = "cuda_shim.h", "kernel.cu", source_full
    unit = (
        f'#include "{shim}"\n#line 1 "{kernel_file}"\n{body}\n'
        f'#line 1 "afgen_launch.cpp"\n{_entry_point(sig)}'
    )
    return unit, kernel_file


def compile_kernel(api: str, source_full: str) -> tuple[Signature, Path]:
    """Compile a full Metal or CUDA source under its shim; return the binary."""
    sig = (
        parse_metal_signature(source_full) if api == "metal" else parse_cuda_signature(source_full)
    )
    unit, kernel_file = _unit(sig, source_full)
    return sig, _compile_unit(api, unit, kernel_file, source_full)


# --------------------------------------------------------------------------
# Running


def _start(exe: Path, blob: np.ndarray, workdir: Path, schedule: str) -> tuple:
    """Start one run; each schedule gets its own CPU to stay on."""
    path = workdir / f"launch-{schedule}.bin"
    blob.tofile(path)
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[SCHEDULES.index(schedule) % len(cpus)]
    proc = subprocess.Popen(
        [str(exe), str(path), str(cpu)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "UBSAN_OPTIONS": UBSAN_OPTIONS},
    )
    return proc, path


def _finish(proc: subprocess.Popen, schedule: str, timeout: float) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise KernelRuntimeError(
            f"kernel did not finish within {timeout:.0f} s ({schedule} schedule): "
            "infinite loop or a spin-wait on another thread?"
        ) from None
    if proc.returncode == 0:
        return
    found = re.search(r"AFGEN_ERROR: (.*)", err or "")
    if found:
        raise KernelRuntimeError(f"{found.group(1)} ({schedule} schedule)")
    found = re.search(r"(\S+:\d+:\d+: runtime error: .*)", err or "")
    if found or proc.returncode == UBSAN_EXIT:
        what = found.group(1) if found else (err or "").strip()
        raise KernelUndefinedBehaviourError(f"undefined behaviour: {what} ({schedule} schedule)")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise KernelRuntimeError(
            f"kernel crashed with {name} ({schedule} schedule): out-of-bounds access?"
        )
    raise KernelRuntimeError(f"kernel exited with status {proc.returncode}: {err}")


def _with_kernel_line(message: str, source: str) -> str:
    """Append the kernel line a sanitizer message points at (``kernel.cu:42:5: ...``)."""
    where = re.search(r"kernel\.(?:cu|metal):(\d+):", message)
    lines = source.splitlines()
    if where and 0 < int(where.group(1)) <= len(lines):
        return f"{message}\n  line {where.group(1)}: {lines[int(where.group(1)) - 1].strip()}"
    return message


def _read_outputs(path: Path, args: list[_Arg]) -> dict[str, np.ndarray]:
    blob = np.fromfile(path, np.uint8)
    results = {}
    for a in args:
        if a.output is None:
            continue
        _check_guards(blob, a)
        raw = blob[a.offset : a.offset + a.data.size]
        results[a.output] = raw.view(_NUMPY_OF[a.dtype]).reshape(a.shape).copy()
    return results


def _check_guards(blob: np.ndarray, a: _Arg) -> None:
    before = blob[a.offset - GUARD_BYTES : a.offset]
    after = blob[a.offset + a.data.size : a.offset + a.data.size + GUARD_BYTES]
    itemsize = np.dtype(_NUMPY_OF[a.dtype]).itemsize
    for region, sign in ((before, -1), (after, 1)):
        bad = np.flatnonzero(region != a.guard)
        if bad.size:
            pos = bad[-1] - GUARD_BYTES if sign < 0 else bad[0] + a.data.size
            raise KernelMemoryError(
                f"out-of-bounds write to output {a.output!r} at element "
                f"{pos // itemsize} (buffer has {a.data.size // itemsize} elements)"
            )


def _compare_schedules(
    sig: Signature, first: dict[str, np.ndarray], second: dict[str, np.ndarray]
) -> None:
    for name, a in first.items():
        b = second[name]
        if np.array_equal(a.view(np.uint8), b.view(np.uint8)):
            continue
        if sig.uses_atomics and a.dtype.kind == "f" and np.allclose(a, b, 1e-4, 1e-6, True):
            continue
        idx = int(np.flatnonzero(a.reshape(-1).view(np.uint8) != b.reshape(-1).view(np.uint8))[0])
        idx //= a.itemsize
        raise KernelRaceError(
            f"output {name!r} depends on thread scheduling: element {idx} is "
            f"{a.reshape(-1)[idx]!r} when low-numbered threads run first and "
            f"{b.reshape(-1)[idx]!r} when high-numbered threads run first "
            "(missing barrier or conflicting writes)"
        )


def _run_schedules(
    exe: Path,
    api: str,
    geo: _Geometry,
    args: list[_Arg],
    schedules: Sequence[str],
    workdir: Path,
    timeout: float,
) -> list[dict[str, np.ndarray]]:
    """Run one process per schedule in parallel; never leave one behind."""
    running = []
    try:
        for schedule in schedules:
            blob = _launch_blob(api, SCHEDULES.index(schedule), geo, args)
            running.append((schedule, *_start(exe, blob, workdir, schedule)))
        for schedule, proc, _ in running:
            _finish(proc, schedule, timeout)
    finally:
        for _, proc, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [_read_outputs(path, args) for _, _, path in running]


def _run(
    api: str,
    source_full: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, tuple[Any, Any]],
    grid: Sequence[int],
    threadgroup: Sequence[int],
    init_value: float | None,
    schedules: Sequence[str],
    timeout: float,
) -> dict[str, np.ndarray]:
    sig, exe = compile_kernel(api, source_full)
    args = _bind(sig, inputs, outputs, init_value)
    geo = _geometry(api, grid, threadgroup)
    with tempfile.TemporaryDirectory(prefix="afgen-run-") as tmp:
        try:
            results = _run_schedules(exe, api, geo, args, schedules, Path(tmp), timeout)
        except KernelUndefinedBehaviourError as exc:
            raise KernelUndefinedBehaviourError(_with_kernel_line(str(exc), source_full)) from None
    for other in results[1:]:
        _compare_schedules(sig, results[0], other)
    return results[0]


def run_metal(
    source_full: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, tuple[tuple[int, ...], Any]],
    grid: tuple[int, int, int],
    threadgroup: tuple[int, int, int],
    init_value: float | None = None,
    *,
    schedules: Sequence[str] = SCHEDULES,
    timeout: float = 120.0,
) -> dict[str, np.ndarray]:
    """Run a full Metal source (as printed by MLX) on the CPU.

    ``grid`` counts threads (MLX uses dispatchThreads, so only threads inside
    the grid run and edge threadgroups are smaller). Inputs and outputs are
    bound to kernel parameters by name; bfloat16 data is uint16 bit patterns.
    """
    return _run(
        "metal", source_full, inputs, outputs, grid, threadgroup, init_value, schedules, timeout
    )


def run_cuda(
    source_full: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, tuple[tuple[int, ...], Any]],
    grid: tuple[int, int, int],
    threadgroup: tuple[int, int, int],
    init_value: float | None = None,
    *,
    schedules: Sequence[str] = SCHEDULES,
    timeout: float = 120.0,
) -> dict[str, np.ndarray]:
    """Run a full CUDA source (as MLX's cuda_kernel builds it) on the CPU.

    MLX launches ``ceil(grid / threadgroup)`` blocks of
    ``min(threadgroup, grid)`` threads, so threads past the grid do run and
    the kernel must bounds-check them.
    """
    return _run(
        "cuda", source_full, inputs, outputs, grid, threadgroup, init_value, schedules, timeout
    )
