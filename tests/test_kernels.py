"""Fused Metal and CUDA kernels: verified by executing their exact text on the CPU."""
import re
import shutil

import mlx.core as mx
import numpy as np
import pytest

from afgen.check.kernel_runner import CpuKernelRunner, cpu_kernels
from afgen.check.verify import KERNEL_SHAPES, verify_class


def _plan(compiled, factored=True, beta_1=True, scale=True):
    for plan in compiled.plans:
        c = plan.config
        if (c.factored == factored and c.get("has_beta_1") == beta_1
                and c.get("scale_parameter") == scale):
            return plan
    raise AssertionError("no such plan")


@pytest.mark.parametrize("backend", ["metal", "cuda"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("factored", [True, False], ids=["factored", "unfactored"])
def test_fused_kernels_match_oracle(compiled, module, backend, dtype, factored):
    """verify's kernel shapes (several row blocks and column chunks, ragged, batches, a
    single row, 0-D), every dtype (the full matrix runs in `afgen build`)."""
    plan = _plan(compiled, factored)
    with cpu_kernels(module):
        result = verify_class(compiled, module.Adafactor, plan, backend, dtype,
                              KERNEL_SHAPES[factored], 2, seed=3)
    assert result.passed, result


def test_at_most_three_launches_per_parameter(compiled, module):
    params = {"w": mx.ones((40, 33)), "b": mx.ones((7,)), "c": mx.ones((2, 3, 5))}
    with cpu_kernels(module) as runner:
        opt = module.Adafactor(beta_1=0.9, backend="metal")
        out = opt.apply_gradients({k: v * 0.5 for k, v in params.items()}, params)
        mx.eval(out)
    launches = sum(runner.launches.values())
    assert launches == 3 + 2 + 3  # factored: 3 passes, unfactored: 2


def test_non_contiguous_inputs(compiled, module):
    rng = np.random.default_rng(0)
    base = mx.array(rng.standard_normal((20, 36)).astype(np.float32))
    grad = mx.array(rng.standard_normal((20, 36)).astype(np.float32))
    params = {"w": base.T, "v": base[::2, 1]}
    grads = {"w": grad.T, "v": grad[::2, 1]}
    with cpu_kernels(module):
        fused = module.Adafactor(backend="metal").apply_gradients(grads, params)
    plain = module.Adafactor(backend="mlx").apply_gradients(grads, params)
    for k in params:
        np.testing.assert_allclose(np.array(fused[k]), np.array(plain[k]), rtol=1e-5, atol=1e-6)


def test_auto_picks_the_device_mlx_has(module, monkeypatch):
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    assert module.Adafactor().backend == "metal"
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    monkeypatch.setattr(mx.cuda, "is_available", lambda: True)
    assert module.Adafactor().backend == "cuda"
    monkeypatch.setattr(mx.cuda, "is_available", lambda: False)
    assert module.Adafactor().backend == "mlx"
    with pytest.raises(ValueError, match="backend 'cuda' is not available"):
        module.Adafactor(backend="cuda")


def test_dynamic_scalars_do_not_change_kernel_source(compiled, module):
    """New hyperparameter values or steps reuse the same kernel text: nothing recompiles."""
    params = {"w": mx.ones((8, 8))}
    with cpu_kernels(module) as runner:
        for beta_1, wd in [(0.9, 0.0), (0.5, 0.1)]:
            opt = module.Adafactor(beta_1=beta_1, weight_decay=wd, backend="metal")
            for _ in range(2):
                params = opt.apply_gradients({"w": mx.ones((8, 8))}, params)
            mx.eval(params)
    assert len(runner.sources) == 3  # one source per pass, reused for 4 steps and 2 configs


# -- mutations: the verifier must catch broken kernels ------------------------------------

MUTATIONS = {
    "dropped barrier": ("header", r"threadgroup_barrier\(mem_flags::mem_threadgroup\);|"
                                  r"__syncthreads\(\);", ""),
    "simd width 16": ("prologue", r"const unsigned int afg_warp = [^;]+;",
                      "const unsigned int afg_warp = afg_lid / 16;"),
    "wrong index": ("body", r"\(b \* M \+ m\) \* N \+ j;", "(b * M + m) * M + j;"),
    "off-by-one bound": ("body", r"m_ok = m < M;", "m_ok = m <= M;"),
    "wrong constant": ("body", r"acc_red0 = 0\.0f;", "acc_red0 = 1.0f;"),
}


@pytest.mark.parametrize("backend", ["metal", "cuda"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutated_kernel_fails_verification(compiled, module, monkeypatch, backend, mutation):
    where, pattern, replacement = MUTATIONS[mutation]
    plan = _plan(compiled, factored=True)
    if where in ("header", "prologue"):
        texts = module._HEADERS if where == "header" else module._PROLOGUES
        text, count = re.subn(pattern, replacement, texts[backend], count=1)
        monkeypatch.setitem(texts, backend, text)
    else:
        count = 0
        for name, (ins, outs, params, source) in list(module._KERNELS.items()):
            if name.startswith("afgen_adafactor_f0"):
                source, n = re.subn(pattern, replacement, source, count=1)
                monkeypatch.setitem(module._KERNELS, name, (ins, outs, params, source))
                count += n
    assert count, f"mutation '{mutation}' did not apply"
    from afgen.executor import KernelError

    with cpu_kernels(module, CpuKernelRunner()):
        try:
            result = verify_class(compiled, module.Adafactor, plan, backend, "float32",
                                  [(2, 33, 40)], 1, seed=5)
        except KernelError:
            return  # the executor itself rejected the kernel (race, out-of-bounds access)
    assert not result.passed, f"{mutation} went unnoticed: {result}"


def test_out_of_bounds_local_array_fails_verification(compiled, module, monkeypatch):
    """``for (c = 0; c <= 8; ...)`` over ``float acc[8]``: undefined behaviour that stays
    inside the thread's own stack frame, so no buffer guard sees it; the sanitizer built
    into the executor stops the run and verification reports the case as failed."""
    import afgen.check.verify
    from afgen.check.verify import verify

    pattern = re.compile(r"(for \((?:uint|unsigned int) c = 0; c )<( \d+; \+\+c\) \{\n"
                         r"\s*acc_\w+\[c\] = 0\.0f;)")
    kernels = {name: (ins, outs, params, pattern.sub(r"\1<=\2", source))
               for name, (ins, outs, params, source) in module._KERNELS.items()}
    assert kernels != module._KERNELS, "no accumulator loop to mutate"
    monkeypatch.setattr(module, "_KERNELS", kernels)
    monkeypatch.setattr(afgen.check.verify, "load_module", lambda _: module)
    small = type(compiled)(compiled.spec, [_plan(compiled, factored=True)])
    report = verify(small, steps=1, backends=["metal", "cuda"], dtypes=["float32"],
                    adversarial=False)
    # each backend, every arm of the run-time ifs (relative_step, warmup_init) it runs
    assert {r.backend for r in report.results} == {"metal", "cuda"}
    assert not any(r.passed for r in report.results), report.table()
    for result in report.results:
        assert result.error.startswith("KernelUndefinedBehaviourError: undefined behaviour: "
                                       f"kernel.{'cu' if result.backend == 'cuda' else 'metal'}")
        assert "index 8 out of bounds for type 'float [8]'" in result.error


def test_every_launched_cuda_source_compiles_with_nvcc(cuda_sources):
    """Every CUDA source verification launches (16-bit outputs and state included)."""
    from afgen.check.nvcc_batch import nvcc_check_all

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed (the NVRTC tests compile the same sources)")
    nvcc_check_all(cuda_sources)


def test_nvcc_rejects_a_broken_kernel(module):
    from afgen.check.nvcc_batch import nvcc_check_all
    from afgen.executor import KernelCompileError
    from afgen.executor.cuda_source import cuda_full_source

    name, (ins, outs, (t, s), body) = next(iter(module._KERNELS.items()))
    inputs = [mx.zeros((9,), mx.uint32 if n == "dims" else mx.float32) for n in ins]
    source = module._PROLOGUES["cuda"] + body.replace("afg_sq(", "afg_square(")
    bad = cuda_full_source(name, ins, outs, source, module._HEADERS["cuda"], inputs,
                           [mx.float32] * len(outs), [(t, mx.float32), (s, mx.float32)])
    with pytest.raises(KernelCompileError, match="afg_square"):
        nvcc_check_all([bad])
