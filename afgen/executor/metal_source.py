"""Get the full Metal source MLX generates for a ``mx.fast.metal_kernel`` call.

MLX builds the kernel signature (buffers, shape/stride/ndim parameters, thread
attributes, template instantiation) in C++ and only exposes it through
``verbose=True``, which prints it to the process's stdout. On machines without
Metal a kernel call is still allowed while tracing for ``mx.export_function``,
so we trace one call into a throw-away file and capture file descriptor 1 to
read the text MLX would compile. The result is exact for the installed MLX,
whatever version it is.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from afgen.executor.cpu_run import (
    KernelLaunchError,
    as_numpy_input,
    canonical_dtype,
    run_metal,
)

_FENCE = "```"


def _to_mx(value: Any) -> Any:
    """MLX array with the dtype/shape MLX would see (bf16 must be mx already)."""
    import mlx.core as mx

    if isinstance(value, mx.array):
        return value
    return mx.array(value)


def _mx_dtype(dtype: Any) -> Any:
    import mlx.core as mx

    if isinstance(dtype, mx.Dtype):
        return dtype
    name = canonical_dtype(dtype)
    return getattr(mx, "bool_" if name == "bool" else name)


def _capture_fd1(action: Callable[[], None]) -> str:
    """Run `action` with fd 1 redirected to a file; C++ prints bypass sys.stdout."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            action()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode()


def _extract_source(printed: str) -> str:
    """Cut the kernel text out of MLX's 'Generated source code' block."""
    head = printed.find("Generated source code for")
    start = printed.find(_FENCE + "\n", head) + len(_FENCE) + 1
    end = printed.find("\n" + _FENCE + "\n", start - 1)
    if head < 0 or start <= len(_FENCE) or end < start - 1:
        raise KernelLaunchError(f"MLX printed no kernel source; got {printed[:200]!r}")
    return printed[start:end]


def metal_full_source(
    name: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    source: str,
    header: str,
    inputs: Sequence[Any],
    output_shapes: Sequence[Sequence[int]],
    output_dtypes: Sequence[Any],
    grid: tuple[int, int, int],
    threadgroup: tuple[int, int, int],
    template: Sequence[tuple[str, Any]] | None = None,
    ensure_row_contiguous: bool = True,
    atomic_outputs: bool = False,
) -> str:
    """Return the exact Metal text (signature included, preamble excluded).

    Inputs may be numpy arrays, mlx arrays or Python scalars; only their dtype,
    shape and size matter (size < 8 puts a buffer in ``constant`` space,
    0-d makes it a reference). bfloat16 inputs must be given as mlx arrays.
    """
    import mlx.core as mx

    kernel = mx.fast.metal_kernel(
        name=name,
        input_names=list(input_names),
        output_names=list(output_names),
        source=source,
        header=header,
        ensure_row_contiguous=ensure_row_contiguous,
        atomic_outputs=atomic_outputs,
    )
    extra = {"template": list(template)} if template else {}

    def traced(*arrays: Any) -> list[Any]:
        return kernel(
            inputs=list(arrays),
            output_shapes=[tuple(s) for s in output_shapes],
            output_dtypes=[_mx_dtype(d) for d in output_dtypes],
            grid=tuple(grid),
            threadgroup=tuple(threadgroup),
            verbose=True,
            **extra,
        )

    arrays = [_to_mx(v) for v in inputs]
    with tempfile.TemporaryDirectory(prefix="afgen-export-") as tmp:
        path = os.path.join(tmp, "kernel.mlxfn")
        printed = _capture_fd1(lambda: mx.export_function(path, traced, *arrays))
    return _extract_source(printed)


def metal_launch_source(
    name: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    source: str,
    header: str,
    call: Mapping[str, Any],
) -> str:
    """:func:`metal_full_source` of one launch: ``call`` holds the keyword arguments of
    the MLX kernel call (inputs, output shapes and dtypes, grid, threadgroup, template)."""
    return metal_full_source(
        name, input_names, output_names, source, header, call["inputs"],
        call["output_shapes"], call["output_dtypes"], call["grid"], call["threadgroup"],
        call.get("template"),
    )  # fmt: skip


def run_metal_kernel(
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
    """Build the source exactly as MLX would, then run it on the CPU.

    Takes the same arguments as ``mx.fast.metal_kernel(...)(...)``; inputs
    may be a list (in ``input_names`` order) or a dict by name.
    """
    values = [inputs[n] for n in input_names] if isinstance(inputs, Mapping) else list(inputs)
    if len(values) != len(input_names):
        raise KernelLaunchError(f"expected {len(input_names)} inputs, got {len(values)}")
    full = metal_full_source(
        name, input_names, output_names, source, header, values,
        output_shapes, output_dtypes, grid, threadgroup, template,
    )  # fmt: skip
    outputs = {
        n: (tuple(s), canonical_dtype(d))
        for n, s, d in zip(output_names, output_shapes, output_dtypes)
    }
    bound = {n: as_numpy_input(v) for n, v in zip(input_names, values)}
    return run_metal(full, bound, outputs, grid, threadgroup, init_value, **run_options)
