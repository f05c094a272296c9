"""Compile CUDA kernel text the way MLX-CUDA does: NVRTC, MLX's headers and options.

``mx.fast.cuda_kernel`` (mlx/backend/cuda/jit_module.cpp, MLX 0.32) creates an NVRTC
program from the full source (:func:`afgen.executor.cuda_source.cuda_full_source`) with
MLX's embedded device headers as in-memory headers, registers the kernel's name
expression ``mlx::core::cu::<kernel>``, and compiles with

    --device-as-default-execution-space --gpu-architecture=sm_90a (on Hopper)
    --include-path=<mlx>/include --include-path=<mlx>/include/cccl
    --include-path=<site-packages>/nvidia/cu13/include   (else $CUDA_HOME/include)

This module does the same through ``libnvrtc`` (the ``nvidia-cuda-nvrtc`` wheel, loaded
with ctypes) and the headers of :mod:`afgen.executor.mlx_cuda_headers`. One difference,
for speed: NVRTC spends about 4 s parsing MLX's headers (libcu++) per program, so
:func:`nvrtc_check_all` compiles every kernel in one program, MLX's preamble and the
shared kernel header once followed by each source's own part verbatim (as the nvcc
batch does), and looks every kernel up by its name expression as MLX does.
:func:`nvrtc_compile` compiles one full source exactly as MLX would.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from afgen.check.nvcc_batch import combined_unit
from afgen.executor.cpu_run import KernelCompileError, cache_dir
from afgen.executor.mlx_cuda_headers import MlxCudaHeaders, load

ARCH = "sm_90a"  # MLX: sm_<major><minor> plus "a" from compute capability 9 (H100/H200)
OPTIONS = ("--device-as-default-execution-space", f"--gpu-architecture={ARCH}")
CUDA_DIR = "cu13"  # MLX's cudart_dirname() for CUDA 13


@dataclass(frozen=True)
class Nvrtc:
    """A loaded libnvrtc and everything MLX passes it."""

    library: ctypes.CDLL
    library_path: Path
    headers: MlxCudaHeaders
    cuda_include: Path

    @property
    def options(self) -> tuple[str, ...]:
        inc = self.headers.include_dir
        return (*OPTIONS, f"--include-path={inc}", f"--include-path={inc / 'cccl'}",
                f"--include-path={self.cuda_include}")

    def version(self) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.library.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return f"{major.value}.{minor.value}"


def _nvidia_dirs() -> list[Path]:
    """``site-packages/nvidia/<cuda>`` directories of the installed NVIDIA wheels."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / CUDA_DIR for p in spec.submodule_search_locations]


def find_library() -> Path | None:
    """``$AFGEN_NVRTC``, else libnvrtc from the nvidia-cuda-nvrtc wheel, else CUDA_HOME's."""
    if os.environ.get("AFGEN_NVRTC"):
        return Path(os.environ["AFGEN_NVRTC"])
    candidates = [d / "lib" / "libnvrtc.so.13" for d in _nvidia_dirs()]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates += [Path(home) / "lib64" / "libnvrtc.so"]
    return next((c for c in candidates if c.exists()), None)


def find_cuda_include() -> Path | None:
    """The CUDA headers MLX puts on the include path: the nvidia-cuda-runtime wheel's
    ``nvidia/cu13/include`` first, then ``$CUDA_HOME``, ``$CUDA_PATH``, /usr/local/cuda.
    (MLX takes the wheel's directory as soon as it exists; here it must also hold the
    headers, since the nvrtc wheel alone creates it with only nvrtc.h.)"""
    candidates = [d / "include" for d in _nvidia_dirs()]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(Path(home) / "include")
    return next((c for c in candidates if (c / "cuda_fp16.h").exists()), None)


def missing() -> list[str]:
    """What is missing for NVRTC checks (empty when :func:`setup` will work)."""
    out = []
    if find_library() is None:
        out.append("libnvrtc (pip install nvidia-cuda-nvrtc==13.*)")
    if find_cuda_include() is None:
        out.append("CUDA runtime headers (pip install nvidia-cuda-runtime==13.*)")
    if load() is None:
        out.append("MLX's CUDA device headers (run: afgen cuda-headers)")
    return out


_LOADED: dict[Path, Nvrtc] = {}


def setup() -> Nvrtc | None:
    """Load libnvrtc with MLX's headers, or None when something is missing."""
    library, include, headers = find_library(), find_cuda_include(), load()
    if library is None or include is None or headers is None:
        return None
    if library not in _LOADED:
        _LOADED[library] = Nvrtc(ctypes.CDLL(str(library)), library, headers, include)
    return _LOADED[library]


def kernel_names(full_source: str) -> list[str]:
    """Name expressions MLX registers: ``mlx::core::cu::<kernel>`` for each kernel."""
    return [f"mlx::core::cu::{n}" for n in re.findall(r"__global__ void (\w+)\(", full_source)]


def nvrtc_compile(nvrtc: Nvrtc, source: str, names: list[str], program: str = "kernel") -> None:
    """Compile ``source`` as MLX does; raise KernelCompileError with NVRTC's log (and the
    offending line) if it fails or a kernel name does not resolve."""
    lib = nvrtc.library
    headers = nvrtc.headers
    count = len(headers.names)
    texts = (ctypes.c_char_p * count)(*(t.encode("latin-1") for t in headers.texts))
    includes = (ctypes.c_char_p * count)(*(n.encode() for n in headers.names))
    options = [o.encode() for o in nvrtc.options]
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                       f"{program}.cu".encode(), count, texts, includes))
    try:
        for name in names:
            _check(lib, lib.nvrtcAddNameExpression(prog, name.encode()))
        result = lib.nvrtcCompileProgram(prog, len(options),
                                         (ctypes.c_char_p * len(options))(*options))
        if result != 0:
            raise KernelCompileError(_message(_log(lib, prog), source, program))
        for name in names:
            lowered = ctypes.c_char_p()
            if lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered)) != 0:
                raise KernelCompileError(f"NVRTC: no kernel {name} in the compiled program")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def nvrtc_check_all(nvrtc: Nvrtc, full_sources: list[str]) -> None:
    """Compile every full source (one program, see the module docstring); successes are
    cached by content so unchanged kernels are not compiled again."""
    unit = combined_unit(full_sources)
    names = [n for s in dict.fromkeys(full_sources) for n in kernel_names(s)]
    key = hashlib.sha256("\0".join([unit, *names, *nvrtc.options, nvrtc.version(),
                                    *nvrtc.headers.texts]).encode()).hexdigest()
    marker = cache_dir() / f"nvrtc-ok-{key[:24]}"
    if marker.exists():
        return
    nvrtc_compile(nvrtc, unit, names, "afgen_kernels")
    marker.touch()


def _check(lib: ctypes.CDLL, result: int) -> None:
    if result != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise KernelCompileError(f"NVRTC: {lib.nvrtcGetErrorString(result).decode()}")


def _log(lib: ctypes.CDLL, prog: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buffer = ctypes.create_string_buffer(size.value + 1)
    lib.nvrtcGetProgramLog(prog, buffer)
    return buffer.value.decode(errors="replace")


def _message(log: str, source: str, program: str) -> str:
    lines = source.splitlines()
    where = re.search(rf"{re.escape(program)}\.cu\((\d+)\): (?:catastrophic )?error", log)
    first = next((ln for ln in log.splitlines() if "error" in ln), log.strip()[:200])
    msg = f"NVRTC rejected the kernel: {first.strip()}"
    if where and 0 < int(where.group(1)) <= len(lines):
        msg += f"\n  line {where.group(1)}: {lines[int(where.group(1)) - 1].strip()}"
    return f"{msg}\n--- NVRTC log ---\n{log.strip()}"
