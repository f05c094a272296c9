"""Tests for the CPU executor of generated Metal / CUDA kernels.

Besides checking correct kernels against numpy, the mutation tests inject
typical kernel bugs (dropped barrier, wrong SIMD lane, off-by-one bound,
wrong constant) and require the executor to catch each one the same way on
every repetition, so verification built on it is not flaky.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np
import pytest

from afgen.executor import (
    KernelCompileError,
    KernelMemoryError,
    KernelRaceError,
    KernelRuntimeError,
    cuda_full_source,
    from_bf16_bits,
    metal_full_source,
    nvcc_check,
    run_cuda,
    run_cuda_kernel,
    run_metal,
    run_metal_kernel,
    to_bf16_bits,
)

REPEATS = 3

# --------------------------------------------------------------------------
# Kernels

METAL_ROWSUM = """
uint row = threadgroup_position_in_grid.y;
uint tid = thread_index_in_threadgroup;
uint lane = thread_index_in_simdgroup;
uint sg = simdgroup_index_in_threadgroup;
threadgroup float partial[32];
float acc = 0.0f;
for (uint i = tid; i < N; i += TG) {
  acc += static_cast<float>(x[row * N + i]);
}
acc = simd_sum(acc);
if (lane == 0) {
  partial[sg] = acc;
}
threadgroup_barrier(mem_flags::mem_threadgroup);
if (sg == 0) {
  float v = lane < simdgroups_per_threadgroup ? partial[lane] : 0.0f;
  for (ushort s = 16; s > 0; s /= 2) {
    v += simd_shuffle_down(v, s);
  }
  if (lane == 0) { out[row] = v; }
}
"""

CUDA_ROWSUM = """
  const int row = blockIdx.y;
  const int tid = threadIdx.x;
  const int lane = tid % WARP_SIZE;
  const int warp = tid / WARP_SIZE;
  __shared__ float partial[32];
  float acc = 0.0f;
  for (int i = tid; i < N; i += TG) {
    acc += static_cast<float>(x[row * N + i]);
  }
  for (int d = 16; d > 0; d /= 2) {
    acc += __shfl_xor_sync(0xffffffff, acc, d);
  }
  if (lane == 0) { partial[warp] = acc; }
  __syncthreads();
  if (warp == 0) {
    float v = lane < TG / WARP_SIZE ? partial[lane] : 0.0f;
    for (int s = 16; s > 0; s /= 2) {
      v += __shfl_down_sync(0xffffffff, v, s);
    }
    if (lane == 0) { out[row] = v; }
  }
"""

METAL_SCALE = """
uint i = thread_position_in_grid.x;
if (i < n) {
  out[i] = static_cast<float>(x[i]) * 3.0f + 1.0f;
}
"""

CUDA_SCALE = """
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n[0]) {
    out[i] = static_cast<float>(x[i]) * 3.0f + 1.0f;
  }
"""

METAL_MUTATIONS = {
    "dropped barrier": ("threadgroup_barrier(mem_flags::mem_threadgroup);", ""),
    "wrong simd lane": ("if (lane == 0) { out[row] = v; }", "if (lane == 1) { out[row] = v; }"),
    "off-by-one bound": ("i < N;", "i <= N;"),
    "wrong constant": ("partial[lane] : 0.0f;", "partial[lane] : 1.0f;"),
}

CUDA_MUTATIONS = {
    "dropped barrier": ("__syncthreads();", ""),
    "wrong warp lane": ("if (lane == 0) { out[row] = v; }", "if (lane == 1) { out[row] = v; }"),
    "off-by-one bound": ("i < N;", "i <= N;"),
    "wrong constant": ("partial[lane] : 0.0f;", "partial[lane] : 1.0f;"),
}


def _mutate(source: str, mutation: tuple[str, str]) -> str:
    old, new = mutation
    assert source.count(old) == 1, old
    return source.replace(old, new)


def _bf16_input(rows: int, cols: int, seed: int) -> tuple[mx.array, np.ndarray]:
    """bf16 data as an mlx array plus its exact float32 values."""
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    bits = to_bf16_bits(values)
    return mx.array(values).astype(mx.bfloat16), from_bf16_bits(bits)


def _metal_rowsum_source(x: mx.array, rows: int, cols: int, tg: int, body: str) -> str:
    return metal_full_source(
        "rowsum", ["x"], ["out"], body, "", [x], [(rows,)], [mx.float32],
        (tg, rows, 1), (tg, 1, 1), template=[("N", cols), ("TG", tg)],
    )  # fmt: skip


def _cuda_rowsum_source(x: mx.array, cols: int, tg: int, body: str) -> str:
    return cuda_full_source(
        "rowsum", ["x"], ["out"], body, "", [x], [mx.float32],
        template=[("N", cols), ("TG", tg)],
    )  # fmt: skip


Run = Callable[[], dict[str, np.ndarray]]


def _outcome(run: Run) -> tuple[str, object]:
    """What a run produced: the outputs, or the kind of error it raised."""
    try:
        return ("values", run()["out"])
    except (KernelRaceError, KernelMemoryError, KernelRuntimeError) as exc:
        return ("error", type(exc).__name__)


def _assert_caught_deterministically(run: Run, reference: np.ndarray) -> str:
    outcomes = [_outcome(run) for _ in range(REPEATS)]
    kind, first = outcomes[0]
    for other_kind, other in outcomes[1:]:
        assert other_kind == kind
        if kind == "values":
            assert np.array_equal(other, first, equal_nan=True)
        else:
            assert other == first
    if kind == "values":
        assert not np.allclose(first, reference, rtol=1e-4, atol=1e-4)
        return "wrong values"
    return str(first)


# --------------------------------------------------------------------------
# Source generation


def test_metal_source_matches_mlx_signature_rules():
    src = metal_full_source(
        "sig", ["x", "s", "c"], ["out"],
        "uint i = thread_position_in_grid.x; out[i] = x[i] * s + c[0] + x_shape[0] + s_shape[0];",
        "", [np.zeros((4, 4), np.float16), mx.array(2.0), np.zeros(3, np.int32)],
        [(16,)], [mx.bfloat16], (16, 1, 1), (8, 1, 1), template=[("K", 3), ("B", True)],
    )  # fmt: skip
    name = "custom_kernel_sig__3_1_float16_t_floats_int32_tc_bfloat16_t"
    assert src.startswith(f"template <int K, bool B>\n[[kernel]] void {name}(\n")
    assert "  const device float16_t* x [[buffer(0)]],\n" in src
    assert "  const constant int* x_shape [[buffer(1)]],\n" in src
    assert "  const constant float& s [[buffer(2)]],\n" in src  # 0-d: no s_shape
    assert "s_shape [[" not in src
    assert "  const constant int32_t* c [[buffer(3)]],\n" in src  # size < 8
    assert "  device bfloat16_t* out [[buffer(4)]],\n" in src
    assert "  uint3 thread_position_in_grid [[thread_position_in_grid]]) {\n" in src
    assert src.endswith(f"decltype({name}<3, 1>) {name}<3, 1>;\n")


def test_cuda_source_reproduces_mlx_layout():
    src = cuda_full_source(
        "lay", ["x", "s"], ["out", "o2"],
        "out[0] = x_shape[0] + x_strides[1] + x_ndim + s[0] + s_shape[0];",
        "// header\n", [np.zeros((2, 3), np.float16), 1.5], [mx.bfloat16, mx.float32],
        template=[("N", 4), ("B", False), ("T", mx.float16)],
    )  # fmt: skip
    expected = (
        '\n#include "mlx/backend/cuda/device/utils.cuh"\n\n#include <cooperative_groups.h>\n\n'
        "// header\nnamespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
        "__global__ void custom_kernel_lay_4_f_float16_t(\n"
        "    const __half* x,\n"
        "    const __grid_constant__ Shape x_shape,\n"
        "    const __grid_constant__ Strides x_strides,\n"
        "    const __grid_constant__ int x_ndim,\n"
        "    const float* s,\n"
        "    __nv_bfloat16* out,\n"
        "    float* o2) {\n"
        "  constexpr int N = 4;\n  constexpr bool B = false;\n  using T = __half;\n\n"
        "out[0] = x_shape[0] + x_strides[1] + x_ndim + s[0] + s_shape[0];"
        "\n}\n\n} // namespace mlx::core::cu\n"
    )
    assert src == expected


# --------------------------------------------------------------------------
# Metal: correct kernels


def test_metal_elementwise_with_bounds_and_partial_threadgroup():
    n = 1000
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    out = run_metal_kernel(
        "scale", ["x", "n"], ["out"], METAL_SCALE, [x, mx.array(n, dtype=mx.uint32)],
        [(n,)], [mx.float32], (1024, 1, 1), (256, 1, 1),
    )["out"]  # fmt: skip
    np.testing.assert_allclose(out, x * 3 + 1, rtol=1e-6)


@pytest.mark.parametrize(
    ("rows", "cols", "tg", "dtype"),
    [(3, 3001, 1024, "bfloat16"), (4, 1000, 256, "float16")],
)
def test_metal_rowsum_reduction(rows, cols, tg, dtype):
    x, exact = _bf16_input(rows, cols, seed=2)
    if dtype == "float16":
        exact = exact.astype(np.float16).astype(np.float32)
        x = mx.array(exact).astype(mx.float16)
    out = run_metal_kernel(
        "rowsum", ["x"], ["out"], METAL_ROWSUM, [x], [(rows,)], [mx.float32],
        (tg, rows, 1), (tg, 1, 1), template=[("N", cols), ("TG", tg)],
    )["out"]  # fmt: skip
    np.testing.assert_allclose(out, exact.sum(axis=1, dtype=np.float64), rtol=1e-5, atol=1e-4)


def test_metal_threadgroup_storage_through_a_header_macro():
    """A header may name threadgroup memory with a macro (``#define afg_shared
    threadgroup``): the array is still one copy per threadgroup, so SIMD group 0 reads
    the partials the other groups wrote."""
    rows, cols, tg = 2, 700, 256
    x, exact = _bf16_input(rows, cols, seed=4)
    body = METAL_ROWSUM.replace("threadgroup float partial", "tg_shared float partial")
    out = run_metal_kernel(
        "rowsum", ["x"], ["out"], body, [x], [(rows,)], [mx.float32],
        (tg, rows, 1), (tg, 1, 1), template=[("N", cols), ("TG", tg)],
        header="#define tg_shared threadgroup\n",
    )["out"]  # fmt: skip
    np.testing.assert_allclose(out, exact.sum(axis=1, dtype=np.float64), rtol=1e-5, atol=1e-4)


def test_metal_scalar_small_and_strided_inputs():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    xt = base[:, ::2].T  # (3, 4), non-contiguous
    body = (
        "uint i = thread_position_in_grid.x;\n"
        "out[i] = x[elem_to_loc(i, x_shape, x_strides, x_ndim)] * s + w[i % 2];"
    )
    w = np.array([10, 20], np.float32)
    src = metal_full_source(
        "strided", ["x", "s", "w"], ["out"], body, "", [xt, 2.0, w],
        [(12,)], [mx.float32], (12, 1, 1), (5, 1, 1), ensure_row_contiguous=False,
    )  # fmt: skip
    out = run_metal(src, {"x": xt, "s": 2.0, "w": w}, {"out": ((12,), np.float32)},
                    (12, 1, 1), (5, 1, 1))["out"]  # fmt: skip
    np.testing.assert_array_equal(out, xt.reshape(-1) * 2 + np.tile(w, 6))


def test_metal_2d_grid_and_thread_attributes():
    body = (
        "uint2 p = uint2(thread_position_in_grid.xy);\n"
        "out[p.y * 5 + p.x] = threads_per_threadgroup.x * 100 + simdgroup_index_in_threadgroup"
        " * 10 + thread_index_in_threadgroup;"
    )
    out = run_metal_kernel(
        "attrs", [], ["out"], body, [], [(3, 5)], [mx.uint32], (5, 3, 1), (4, 2, 1)
    )["out"]
    y, x = np.mgrid[0:3, 0:5]
    width = np.where(x < 4, 4, 1)  # edge threadgroups are smaller (dispatchThreads)
    expect = width * 100 + (x % 4) + (y % 2) * width
    np.testing.assert_array_equal(out, expect)


def test_metal_half_and_bfloat_conversions_round_to_nearest_even():
    special = [65520.0, 65519.0, 1e-8, 6e-8, -2.5e-5, 1 + 2**-11, 1 + 3 * 2**-11, 1e5]
    x = np.concatenate([np.random.default_rng(3).standard_normal(200) * 100, special])
    x = x.astype(np.float32)
    n = x.size
    body = (
        "uint i = thread_position_in_grid.x;\n"
        "h[i] = static_cast<half>(x[i]);\nb[i] = bfloat16_t(x[i]);"
    )
    res = run_metal_kernel(
        "conv", ["x"], ["h", "b"], body, [x], [(n,), (n,)], [mx.float16, mx.bfloat16],
        (n, 1, 1), (64, 1, 1),
    )  # fmt: skip
    with np.errstate(over="ignore"):
        expect_half = x.astype(np.float16)
    np.testing.assert_array_equal(res["h"].view(np.uint16), expect_half.view(np.uint16))
    np.testing.assert_array_equal(res["b"], to_bf16_bits(x))


def test_bf16_helpers_match_mlx():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(1000), [0.0, -0.0, np.inf, -np.inf, 3e38]])
    x = x.astype(np.float32)
    ties = (np.arange(64, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    x = np.concatenate([x, ties])
    mlx_bits = np.array(mx.array(x).astype(mx.bfloat16).view(mx.uint16))
    np.testing.assert_array_equal(to_bf16_bits(x), mlx_bits)
    np.testing.assert_array_equal(from_bf16_bits(mlx_bits), np.array(
        mx.array(x).astype(mx.bfloat16).astype(mx.float32)))  # fmt: skip
    assert np.isnan(from_bf16_bits(to_bf16_bits(np.array([np.nan], np.float32))))[0]


# --------------------------------------------------------------------------
# Metal: mutation detection


@pytest.mark.parametrize("mutation", sorted(METAL_MUTATIONS))
def test_metal_mutations_are_caught_deterministically(mutation):
    rows, cols, tg = 2, 1000, 256
    x, exact = _bf16_input(rows, cols, seed=5)
    reference = exact.sum(axis=1)
    src = _metal_rowsum_source(x, rows, cols, tg, _mutate(METAL_ROWSUM, METAL_MUTATIONS[mutation]))
    inputs = {"x": np.array(x.view(mx.uint16))}

    def run(schedules: tuple[str, ...] = ("ascending", "descending")) -> dict[str, np.ndarray]:
        outs = {"out": ((rows,), np.float32)}
        return run_metal(src, inputs, outs, (tg, rows, 1), (tg, 1, 1), schedules=schedules)

    caught = _assert_caught_deterministically(run, reference)
    if mutation == "dropped barrier":
        assert caught == "KernelRaceError"
        # Even a single schedule gives wrong numbers, not a lucky pass.
        _assert_caught_deterministically(lambda: run(("ascending",)), reference)
    else:
        assert caught == "wrong values"


def test_metal_original_rowsum_passes_the_same_harness():
    rows, cols, tg = 2, 1000, 256
    x, exact = _bf16_input(rows, cols, seed=5)
    src = _metal_rowsum_source(x, rows, cols, tg, METAL_ROWSUM)
    out = run_metal(src, {"x": np.array(x.view(mx.uint16))}, {"out": ((rows,), np.float32)},
                    (tg, rows, 1), (tg, 1, 1))["out"]  # fmt: skip
    np.testing.assert_allclose(out, exact.sum(axis=1), rtol=1e-5, atol=1e-4)


def test_metal_out_of_bounds_write_is_reported():
    n = 1000
    x = np.ones(n, np.float32)
    body = METAL_SCALE.replace("i < n", "i <= n")
    src = metal_full_source("oob", ["x", "n"], ["out"], body, "", [x, mx.array(n, mx.uint32)],
                            [(n,)], [mx.float32], (1024, 1, 1), (256, 1, 1))  # fmt: skip
    for _ in range(REPEATS):
        with pytest.raises(KernelMemoryError, match="element 1000"):
            run_metal(src, {"x": x, "n": np.uint32(n)}, {"out": ((n,), np.float32)},
                      (1024, 1, 1), (256, 1, 1))  # fmt: skip


def test_metal_barrier_after_early_return_is_reported():
    body = (
        "uint i = thread_position_in_grid.x;\nif (i >= 100) return;\n"
        "threadgroup_barrier(mem_flags::mem_threadgroup);\nout[i] = x[i];"
    )
    x = np.ones(128, np.float32)
    with pytest.raises(KernelRuntimeError, match="divergent control flow"):
        run_metal_kernel("div", ["x"], ["out"], body, [x], [(128,)], [mx.float32],
                         (128, 1, 1), (64, 1, 1))  # fmt: skip


def test_metal_atomic_outputs_and_threadgroup_memory_limit():
    body = (
        "uint i = thread_position_in_grid.x;\n"
        "atomic_fetch_add_explicit(&out[i % 4], x[i], memory_order_relaxed);"
    )
    x = np.arange(64, dtype=np.int32)
    src = metal_full_source("atom", ["x"], ["out"], body, "", [x], [(4,)], [mx.int32],
                            (64, 1, 1), (32, 1, 1), atomic_outputs=True)  # fmt: skip
    assert "device atomic<int32_t>* out" in src
    out = run_metal(src, {"x": x}, {"out": ((4,), np.int32)}, (64, 1, 1), (32, 1, 1), 0.0)
    np.testing.assert_array_equal(out["out"], x.reshape(-1, 4).sum(axis=0))
    big = (
        "threadgroup float big[9000];\nuint i = thread_position_in_grid.x;\n"
        "big[i] = 1.0f;\nthreadgroup_barrier(mem_flags::mem_threadgroup);\nout[i] = big[8999 - i];"
    )
    with pytest.raises(KernelRuntimeError, match="36000 bytes of threadgroup"):
        run_metal_kernel("big", ["x"], ["out"], big, [x.astype(np.float32)], [(1,)],
                         [mx.float32], (1, 1, 1), (1, 1, 1))  # fmt: skip


# --------------------------------------------------------------------------
# Metal: the shim is a strict MSL subset


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("std::vector<float> v(4);", "std"),
        ('printf("%f", x[i]);', "printf"),
        ("out[i] = frobnicate(x[i]);", "frobnicate"),
        ("bfloat16_t b = x[i];", "bfloat"),  # no implicit float -> bfloat
        ("double d = x[i];", "double"),
    ],
)
def test_metal_code_outside_msl_subset_fails_to_compile(statement, message):
    body = f"uint i = thread_position_in_grid.x;\n{statement}\nout[i] = x[i];"
    x = np.ones(8, np.float32)
    with pytest.raises(KernelCompileError, match=message) as info:
        run_metal_kernel("bad", ["x"], ["out"], body, [x], [(8,)], [mx.float32],
                         (8, 1, 1), (8, 1, 1))  # fmt: skip
    assert f"line 6: {statement}" in str(info.value)  # the offending kernel line


def test_mlx_two_output_signature_bug_fails_to_compile():
    src = metal_full_source(
        "bug", ["x"], ["a", "b"], "a[0] = x_shape[0]; b[0] = 1;", "",
        [np.ones(8, np.float32)], [(1,), (1,)], [mx.float32, mx.float32], (1, 1, 1), (1, 1, 1),
    )  # fmt: skip
    assert "device float* a [[buffer(2)]]) {\n  device float* b" in src
    with pytest.raises(KernelCompileError):
        outs = {"a": ((1,), np.float32), "b": ((1,), np.float32)}
        run_metal(src, {"x": np.ones(8, np.float32)}, outs, (1, 1, 1), (1, 1, 1))


# --------------------------------------------------------------------------
# CUDA


def test_cuda_elementwise_extra_threads_run_and_need_bounds():
    n = 1000
    x = np.random.default_rng(6).standard_normal(n).astype(np.float32)
    args = (["x", "n"], ["out"])
    launch = ([x, np.int32(n)], [(n,)], [mx.float32], (n, 1, 1), (256, 1, 1))
    out = run_cuda_kernel("scale", *args, CUDA_SCALE, *launch)["out"]
    np.testing.assert_allclose(out, x * 3 + 1, rtol=1e-6)
    # MLX launches ceil(1000 / 256) = 4 full blocks: without the bound check
    # threads 1000..1023 write past the output.
    unbounded = CUDA_SCALE.replace("if (i < n[0])", "if (true)")
    with pytest.raises(KernelMemoryError):
        run_cuda_kernel("scale", *args, unbounded, *launch)


@pytest.mark.parametrize(("rows", "cols", "tg"), [(3, 3001, 1024), (4, 1000, 256)])
def test_cuda_rowsum_reduction(rows, cols, tg):
    x, exact = _bf16_input(rows, cols, seed=7)
    out = run_cuda_kernel(
        "rowsum", ["x"], ["out"], CUDA_ROWSUM, [x], [(rows,)], [mx.float32],
        (tg, rows, 1), (tg, 1, 1), template=[("N", cols), ("TG", tg)],
    )["out"]  # fmt: skip
    np.testing.assert_allclose(out, exact.sum(axis=1, dtype=np.float64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mutation", sorted(CUDA_MUTATIONS))
def test_cuda_mutations_are_caught_deterministically(mutation):
    rows, cols, tg = 2, 1000, 256
    x, exact = _bf16_input(rows, cols, seed=8)
    src = _cuda_rowsum_source(x, cols, tg, _mutate(CUDA_ROWSUM, CUDA_MUTATIONS[mutation]))
    inputs = {"x": np.array(x.view(mx.uint16))}

    def run() -> dict[str, np.ndarray]:
        return run_cuda(src, inputs, {"out": ((rows,), np.float32)}, (tg, rows, 1), (tg, 1, 1))

    caught = _assert_caught_deterministically(run, exact.sum(axis=1))
    assert caught == ("KernelRaceError" if mutation == "dropped barrier" else "wrong values")


def test_cuda_shim_rejects_mixed_half_float_like_nvcc():
    body = "__half h = x[0];\nout[0] = h * 2.0f;"
    with pytest.raises(KernelCompileError, match="ambiguous"):
        run_cuda_kernel("amb", ["x"], ["out"], body, [np.ones(4, np.float16)], [(1,)],
                        [mx.float32], (1, 1, 1), (1, 1, 1))  # fmt: skip


def test_nvcc_accepts_valid_and_rejects_invalid_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("AFGEN_EXECUTOR_CACHE", str(tmp_path))  # really run nvcc
    x, _ = _bf16_input(2, 1000, seed=9)
    src = _cuda_rowsum_source(x, 1000, 256, CUDA_ROWSUM)
    nvcc_check(src)
    bad = cuda_full_source("amb", ["x"], ["out"], "__half h = x[0];\nout[0] = h * 2.0f;", "",
                           [np.ones(4, np.float16)], [mx.float32])  # fmt: skip
    with pytest.raises(KernelCompileError, match=r"line \d+: out\[0\] = h \* 2\.0f;"):
        nvcc_check(bad)
