"""CPU executor for generated MLX kernels.

Verifies Metal (``mx.fast.metal_kernel``) and CUDA (``mx.fast.cuda_kernel``)
kernels without a GPU: the exact source MLX would compile is obtained
(:func:`metal_full_source`, :func:`cuda_full_source`), compiled with g++
against a strict shim of the GPU language, and run with one real thread per
GPU thread under a deterministic, adversarial scheduler (:func:`run_metal`,
:func:`run_cuda`). :mod:`afgen.executor.nvrtc` compiles CUDA text as MLX-CUDA
does (NVRTC, MLX's own headers from :mod:`afgen.executor.mlx_cuda_headers`);
:func:`nvcc_check` compiles it with nvcc where NVRTC is not installed.
"""

from afgen.executor.cpu_run import (
    BFLOAT16,
    SCHEDULES,
    KernelCompileError,
    KernelError,
    KernelLaunchError,
    KernelMemoryError,
    KernelRaceError,
    KernelRuntimeError,
    KernelUndefinedBehaviourError,
    Param,
    Signature,
    compile_kernel,
    from_bf16_bits,
    parse_cuda_signature,
    parse_metal_signature,
    run_cuda,
    run_metal,
    to_bf16_bits,
)
from afgen.executor.cuda_source import (
    cuda_full_source,
    cuda_kernel_name,
    cuda_launch_source,
    nvcc_check,
    run_cuda_kernel,
)
from afgen.executor.metal_source import (
    metal_full_source,
    metal_launch_source,
    run_metal_kernel,
)

__all__ = [
    "BFLOAT16",
    "SCHEDULES",
    "KernelCompileError",
    "KernelError",
    "KernelLaunchError",
    "KernelMemoryError",
    "KernelRaceError",
    "KernelRuntimeError",
    "KernelUndefinedBehaviourError",
    "Param",
    "Signature",
    "compile_kernel",
    "cuda_full_source",
    "cuda_kernel_name",
    "cuda_launch_source",
    "from_bf16_bits",
    "metal_full_source",
    "metal_launch_source",
    "nvcc_check",
    "parse_cuda_signature",
    "parse_metal_signature",
    "run_cuda",
    "run_cuda_kernel",
    "run_metal",
    "run_metal_kernel",
    "to_bf16_bits",
]
