"""MLX's own CUDA device headers, taken from MLX's CUDA wheel, for compiling kernels here.

MLX-CUDA compiles every ``mx.fast.cuda_kernel`` with NVRTC, and the program starts with
``#include "mlx/backend/cuda/device/utils.cuh"``. That header is not a file in any wheel:
libmlx.so embeds MLX's device headers as NUL-terminated strings and hands them to
``nvrtcCreateProgram`` together with a table of include names (``g_headers`` and
``g_include_names`` in mlx/backend/cuda/jit_module.cpp). The wheel does ship, as files,
the rest of the include path MLX gives NVRTC: ``mlx/include`` and ``mlx/include/cccl``
(``cuda/std/...``).

:func:`fetch` downloads ``mlx-cuda-13`` of the installed MLX version with pip (about
90 MB, deleted afterwards), pairs each embedded header with its include name by reading
the two pointer tables through libmlx.so's relocations (so the pairing is MLX's own, not
a guess from the text), and keeps those headers plus the CCCL headers and the device
``config.h`` (about 9 MB) in a cache directory. cute/cutlass, which only MLX's own
quantized-matmul headers include, are left out. :func:`load` reads them back.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL = "mlx-cuda-13"
# The headers do not depend on the platform; one fixed wheel keeps the ELF reading simple.
PLATFORM = "manylinux_2_35_x86_64"
DEVICE_PREFIX = "mlx/backend/cuda/device/"
KEEP = ("mlx/include/cccl/", "mlx/include/" + DEVICE_PREFIX)
_R_X86_64_RELATIVE = 8


@dataclass(frozen=True)
class MlxCudaHeaders:
    """What MLX passes to NVRTC besides the source: in-memory headers and include paths."""

    version: str
    names: tuple[str, ...]  # g_include_names, in MLX's order
    texts: tuple[str, ...]  # g_headers, the same order
    include_dir: Path  # MLX's <package>/include; its cccl/ is the second include path


def mlx_version() -> str:
    import mlx.core as mx

    return mx.__version__


def default_dir(version: str | None = None) -> Path:
    """``$AFGEN_MLX_CUDA_HEADERS``, else ``~/.cache/afgen/mlx-cuda-13-<mlx version>``."""
    if os.environ.get("AFGEN_MLX_CUDA_HEADERS"):
        return Path(os.environ["AFGEN_MLX_CUDA_HEADERS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "afgen" / f"{WHEEL}-{version or mlx_version()}"


def load(directory: Path | None = None) -> MlxCudaHeaders | None:
    """The cached headers, or None when :func:`fetch` has not run for this MLX version."""
    directory = directory or default_dir()
    manifest = directory / "manifest.json"
    if not manifest.exists():
        return None
    meta = json.loads(manifest.read_text())
    texts = tuple((directory / "embedded" / n).read_text(encoding="latin-1")
                  for n in meta["names"])
    return MlxCudaHeaders(meta["version"], tuple(meta["names"]), texts, directory / "include")


def fetch(directory: Path | None = None, version: str | None = None) -> MlxCudaHeaders:
    """Download MLX's CUDA wheel once and keep its device headers; return them."""
    version = version or mlx_version()
    directory = directory or default_dir(version)
    cached = load(directory)
    if cached is not None and cached.version == version:
        return cached
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
        wheel = _download(version, Path(tmp) / "dl")
        staging = Path(tmp) / "headers"
        _extract(wheel, staging, version)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    return load(directory)


def _download(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-cache-dir",
           "--only-binary=:all:", "--platform", PLATFORM, f"{WHEEL}=={version}", "-d", str(into)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl")) if into.exists() else []
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"pip could not download {WHEEL}=={version}:\n{proc.stderr.strip()}")
    return wheels[0]


def _extract(wheel: Path, out: Path, version: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(KEEP) and not name.endswith("/"):
                target = out / "include" / name.removeprefix("mlx/include/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
        library = z.read("mlx/lib/libmlx.so")
    pairs = embedded_headers(library)
    for name, text in pairs:
        path = out / "embedded" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    names = [n for n, _ in pairs]
    (out / "manifest.json").write_text(json.dumps({"version": version, "wheel": wheel.name,
                                                   "names": names}, indent=1))


def embedded_headers(library: bytes) -> list[tuple[str, bytes]]:
    """(include name, text) pairs of the headers libmlx.so hands to NVRTC, in its order.

    Both tables are arrays of pointers, so in a shared library every slot carries an
    R_X86_64_RELATIVE relocation whose addend is the address of its string. The names
    table is the one run of consecutive slots pointing at ``mlx/backend/cuda/device/...``
    strings; the headers table is the one run of as many consecutive slots pointing at
    texts that start with MLX's copyright line.
    """
    elf = _Elf(library)
    names = _pointer_run(elf, lambda s: s.startswith(DEVICE_PREFIX.encode()), None)
    texts = _pointer_run(elf, lambda s: s.startswith(b"// Copyright"), len(names))
    pairs = [(n.decode(), t) for n, t in zip(names, texts)]
    if not any(n.endswith("/utils.cuh") for n, _ in pairs):
        raise RuntimeError("libmlx.so: no embedded utils.cuh; has MLX's layout changed?")
    return pairs


def _pointer_run(elf: _Elf, wanted, length: int | None) -> list[bytes]:
    slots = sorted(slot for slot, target in elf.relocations.items()
                   if wanted(elf.c_string(target)))
    runs: list[list[int]] = []
    for slot in slots:
        if runs and slot == runs[-1][-1] + 8:
            runs[-1].append(slot)
        else:
            runs.append([slot])
    runs = [r for r in runs if (len(r) == length if length else len(r) >= 3)]
    if len(runs) != 1:
        raise RuntimeError(f"libmlx.so: expected one header table, found {len(runs)}")
    return [elf.c_string(elf.relocations[slot]) for slot in runs[0]]


class _Elf:
    """Just enough of a little-endian ELF64 shared object: section address ranges and
    relative relocations."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise RuntimeError("libmlx.so is not a little-endian ELF64 file")
        self.data = data
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        self.sections = []
        self.relocations: dict[int, int] = {}
        for i in range(shnum):
            _, kind, _, addr, offset, size = struct.unpack_from("<IIQQQQ", data,
                                                                shoff + i * shentsize)
            if kind == 4:  # SHT_RELA
                for pos in range(offset, offset + size, 24):
                    where, info, addend = struct.unpack_from("<QQq", data, pos)
                    if info & 0xFFFFFFFF == _R_X86_64_RELATIVE:
                        self.relocations[where] = addend
            elif kind != 8 and addr:  # allocated, not NOBITS
                self.sections.append((addr, offset, size))

    def c_string(self, address: int) -> bytes:
        for addr, offset, size in self.sections:
            if addr <= address < addr + size:
                start = address - addr + offset
                return self.data[start:self.data.index(b"\0", start)]
        return b""


def main() -> int:
    headers = fetch()
    size = sum(f.stat().st_size for f in default_dir(headers.version).rglob("*") if f.is_file())
    print(f"MLX {headers.version} CUDA device headers ({len(headers.names)} embedded, "
          f"{size / 2**20:.1f} MiB with CCCL) in {default_dir(headers.version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
