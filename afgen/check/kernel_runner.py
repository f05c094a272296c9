"""Run a generated module's fused kernels without a GPU.

The runtime a generated module uses (``afgen_runtime``) calls its kernel runner (when one
is set with ``use_kernel_runner``) instead of building an
``mx.fast.metal_kernel``/``cuda_kernel``. This runner hands the exact kernel body, header
and launch arguments to the CPU executor, which rebuilds the source MLX would compile,
runs every threadgroup with real threads under a shim, and returns MLX arrays. Everything
else (the MLX glue between passes, dispatch, state handling) is the module's own code.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import numpy as np


def _to_mx(array: np.ndarray, dtype: object) -> object:
    import mlx.core as mx

    if dtype == mx.bfloat16:
        return mx.array(np.asarray(array, np.uint16)).view(mx.bfloat16)
    return mx.array(array).astype(dtype)


class CpuKernelRunner:
    """Callable installed as a runtime's kernel runner; counts launches per kernel."""

    def __init__(self) -> None:
        self.launches: dict[str, int] = {}
        self.sources: dict[tuple, str] = {}
        self.schedules: tuple[str, ...] | None = None  # None: the executor's default (all)

    @contextlib.contextmanager
    def one_schedule(self) -> Iterator[None]:
        """Within the block, each launch runs once (ascending threads) instead of once per
        schedule, which halves the executor's processes: for inputs that test values, not
        races (finding races is the random cases' job, on the same kernels)."""
        from afgen.executor import SCHEDULES

        previous, self.schedules = self.schedules, SCHEDULES[:1]
        try:
            yield
        finally:
            self.schedules = previous

    def sources_for(self, backend: str) -> list[str]:
        """Every distinct full source this runner has executed for ``backend``."""
        return list(dict.fromkeys(text for key, text in self.sources.items()
                                  if key[0] == backend))

    def full_source(self, backend: str, name: str, input_names: list[str],
                    output_names: list[str], source: str, header: str, call: dict) -> str:
        """The text MLX would compile; it depends only on dtypes, ranks and which inputs
        are small enough for constant memory, so it is cached on those."""
        from afgen.backends.targets import TARGETS

        inputs = call["inputs"]
        key = (backend, name, source, tuple((str(a.dtype), a.ndim, a.size < 8) for a in inputs),
               tuple(str(d) for d in call["output_dtypes"]),
               tuple((k, str(v)) for k, v in call["template"]))
        if key not in self.sources:
            self.sources[key] = TARGETS[backend].launch_source(
                name, input_names, output_names, source, header, call)
        return self.sources[key]

    def __call__(self, backend: str, name: str, input_names: list[str],
                 output_names: list[str], source: str, header: str, call: dict) -> list:
        from afgen.backends.targets import TARGETS
        from afgen.executor.cpu_run import as_numpy_input, canonical_dtype

        self.launches[name] = self.launches.get(name, 0) + 1
        full = self.full_source(backend, name, input_names, output_names, source, header, call)
        outputs = {n: (tuple(s), canonical_dtype(d)) for n, s, d in
                   zip(output_names, call["output_shapes"], call["output_dtypes"])}
        bound = {n: as_numpy_input(v) for n, v in zip(input_names, call["inputs"])}
        options = {} if self.schedules is None else {"schedules": self.schedules}
        result = TARGETS[backend].run(full, bound, outputs, call["grid"], call["threadgroup"],
                                      **options)
        return [_to_mx(result[n], d) for n, d in zip(output_names, call["output_dtypes"])]


class SourceRecorder(CpuKernelRunner):
    """A runner that only records: it builds each launch's full source as the executor
    would and returns zero outputs without running anything. Lists the sources a run
    launches (for compilers) in a fraction of the executor's time."""

    def __call__(self, backend: str, name: str, input_names: list[str],
                 output_names: list[str], source: str, header: str, call: dict) -> list:
        from afgen.executor.cpu_run import numpy_dtype

        self.launches[name] = self.launches.get(name, 0) + 1
        self.full_source(backend, name, input_names, output_names, source, header, call)
        return [_to_mx(np.zeros(tuple(s), numpy_dtype(d)), d)
                for s, d in zip(call["output_shapes"], call["output_dtypes"])]


def runtime_of(module: types.ModuleType) -> types.ModuleType:
    """The runtime a generated module imported (``from . import afgen_runtime as _rt``):
    afgen.runtime for a module loaded in memory, ``<package>.afgen_runtime`` for one
    imported from a build directory."""
    runtime = getattr(module, "_rt", None)
    if not isinstance(runtime, types.ModuleType) or not hasattr(runtime, "use_kernel_runner"):
        raise TypeError(f"{module.__name__} is not a module generated by afgen (it has no "
                        "afgen_runtime)")
    return runtime


@contextlib.contextmanager
def cpu_kernels(module: types.ModuleType, runner: CpuKernelRunner | None = None
                ) -> Iterator[CpuKernelRunner]:
    """Within the block, ``module``'s kernels run on the CPU executor (so do those of every
    module sharing its runtime)."""
    runner = runner or CpuKernelRunner()
    runtime = runtime_of(module)
    previous = runtime.use_kernel_runner(runner)
    try:
        yield runner
    finally:
        runtime.use_kernel_runner(previous)
