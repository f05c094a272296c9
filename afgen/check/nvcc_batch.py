"""Compile many CUDA kernels with one nvcc run.

Each full CUDA source MLX would hand to NVRTC is MLX's preamble + our header + one
kernel in ``namespace mlx::core::cu``. The preamble and header are the same for every
kernel, so one translation unit holds them once followed by every kernel: one nvcc start
(several seconds) instead of one per kernel and dtype. The NVRTC check
(:mod:`afgen.executor.nvrtc`) batches the same way.
"""
from __future__ import annotations

import os


def combined_unit(full_sources: list[str]) -> str:
    """One translation unit: the shared prefix once, then each kernel's own part."""
    if not full_sources:
        raise ValueError("no kernels to combine")
    prefix = os.path.commonprefix(full_sources)
    marker = "namespace mlx::core::cu {"
    cut = prefix.rfind(marker)
    if cut < 0:
        raise ValueError("CUDA sources do not share MLX's preamble")
    return full_sources[0][:cut] + "".join(s[cut:] for s in dict.fromkeys(full_sources))


def nvcc_check_all(full_sources: list[str]) -> None:
    """Raise KernelCompileError (with nvcc's message) unless every kernel compiles."""
    from afgen.executor.cuda_source import nvcc_check

    nvcc_check(combined_unit(full_sources))
