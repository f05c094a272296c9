"""CUDA kernel text compiled as MLX-CUDA compiles it: NVRTC, MLX's own device headers
(from MLX's CUDA wheel), MLX's options (sm_90a), with no GPU.

The ``nvrtc_compiler`` fixture skips where NVRTC or the headers are missing, but fails
under CI=true, which installs them."""
import re

import pytest

from afgen.executor import KernelCompileError
from afgen.executor.nvrtc import kernel_names, nvrtc_check_all, nvrtc_compile


def test_headers_are_mlxs_own(nvrtc_compiler):
    """The embedded headers paired with their include names through libmlx.so's own
    tables: utils.cuh defines the Shape/Strides types custom kernels use."""
    headers = dict(zip(nvrtc_compiler.headers.names, nvrtc_compiler.headers.texts))
    utils = headers["mlx/backend/cuda/device/utils.cuh"]
    assert "using Shape = cuda::std::array<int32_t, MAX_NDIM>;" in utils
    assert '#include "mlx/backend/cuda/device/config.h"' in utils
    assert "#define MAX_NDIM" in headers["mlx/backend/cuda/device/config.h"]
    assert "--device-as-default-execution-space" in nvrtc_compiler.options
    assert "--gpu-architecture=sm_90a" in nvrtc_compiler.options


def test_every_source_verification_launches_compiles(module, cuda_sources, nvrtc_compiler):
    """All of them: every kernel for float32, float16 and bfloat16 parameters, with float32
    state and (precision="param") 16-bit state and outputs."""
    combos = {re.search(r"using T = (\w+);\n  using S = (\w+);", s).groups() for s in cuda_sources}
    assert combos == {("float", "float"), ("__half", "float"), ("__half", "__half"),
                      ("__nv_bfloat16", "float"), ("__nv_bfloat16", "__nv_bfloat16")}
    assert len(cuda_sources) == len(combos) * len(module._KERNELS)
    assert any("__nv_bfloat16* new_exp_avg" in s for s in cuda_sources)
    nvrtc_check_all(nvrtc_compiler, cuda_sources)


def test_one_source_alone_exactly_as_mlx_builds_it(cuda_sources, nvrtc_compiler):
    """One full program, as MLX hands it to NVRTC (the batch above shares the preamble)."""
    source = next(s for s in cuda_sources if "__nv_bfloat16* new_param" in s)
    nvrtc_compile(nvrtc_compiler, source, kernel_names(source))


def test_nvrtc_rejects_a_broken_kernel(module, cuda_sources, nvrtc_compiler):
    """The kernel's own line in the message; nothing is cached for a failed batch."""
    body = next(iter(module._KERNELS.values()))[3]
    source = next(s for s in cuda_sources if body in s)
    broken = [s for s in cuda_sources if s != source][:1]
    broken.append(source.replace(body, body.replace("afg_load(", "afg_lod(", 1)))
    with pytest.raises(KernelCompileError, match=r"afg_lod(.|\n)*line \d+: .*afg_lod\("):
        nvrtc_check_all(nvrtc_compiler, broken)
