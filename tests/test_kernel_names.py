"""Kernel hygiene: spec names are written verbatim into kernel text, the kernel's own
names (indices, accumulators, buffers, template parameters) move out of their way, and a
spec name a target reserves is refused where the spec writes it.

Before the symbol table, a hyperparameter named like a kernel local (``j``) built, passed
the MLX-ops path and was shadowed in the kernels (Metal/CUDA results off by 8e5)."""
import re

import pytest

from afgen.backends.gpu_driver import plan_kernels
from afgen.backends.targets import TARGETS, kernel_reductions
from afgen.check.verify import verify
from afgen.errors import SpecError
from afgen.lower.compiler import compile_spec
from afgen.spec.parse import parse_spec_text
from afgen.spec.shapes import ReduceAxes

# Every value is named like something the kernel itself declares: its tile indices, its
# geometry buffer, an accumulator, a threadgroup total, a buffer.
CLASHING = """\
optimizer: Clash
summary: Names a kernel uses for itself.
hyperparameters:
  j: {type: float, default: 0.1, doc: the step size}
  idx: {type: float, default: 0.9, doc: momentum}
  M: {type: float, default: 0.01, doc: weight decay}
layout:
  factored: ndim >= 2
state:
  scalars: {shape: full, doc: momentum buffer}
  dims: {shape: row, when: factored, doc: mean square per row}
update:
  - lane = grad * grad
  - acc_red0 = sum(grad * param)
  - if: factored
    then:
      - total = {row_sum}
      - dims = 0.5 * dims + 0.5 * total
      - scalars = idx * scalars + grad * rsqrt(dims + 1e-8)
    else:
      - scalars = idx * scalars + grad * rsqrt(lane + 1e-8)
  - param = param - j * scalars - M * param + 0 * acc_red0
"""


def _spec(row_sum: str = "rowwise_mean(lane)"):
    return parse_spec_text(CLASHING.replace("{row_sum}", row_sum), "specs/clash.yaml")


def test_spec_names_stay_and_kernel_names_move():
    compiled = compile_spec(_spec())
    kernels = [k for plan in compiled.plans for k in plan_kernels(plan, "afgen_clash")]
    final = [k for k in kernels if "new_param" in k.output_names and k.factored]
    assert final
    for kernel in final:
        text = kernel.source
        for name in ("j", "idx", "M"):  # hyperparameters, verbatim
            assert re.search(rf"const float {name} = {name}_in\[t\];", text), name
        assert re.search(r"const unsigned int M_1 = dims(_1)?\[1\];", text)
        assert "new_scalars[idx_1] = " in text and "const unsigned int j_1 = " in text
        assert kernel.input_names[-2] == "afg_key_in"
    for kernel in kernels:
        spec_values = {*kernel.scalar_names, *kernel.full_inputs, *kernel.row_inputs,
                       *kernel.col_inputs, *kernel.batch_inputs, *(n for n, _ in kernel.body)}
        own = {*vars(kernel.names).values(), *kernel.input_names, *kernel.output_names,
               *(r.acc for r in kernel.reductions)}
        assert not own & spec_values, own & spec_values
        names = kernel.input_names + kernel.output_names
        assert len(set(names)) == len(names)


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_clashing_names_run_and_match_on_the_executor(backend):
    """The exact kernel text of every specialisation runs on the CPU executor and matches
    the float64 oracle, as the MLX-ops path does."""
    report = verify(compile_spec(_spec()), steps=2, backends=["mlx", backend],
                    dtypes=["float32"], adversarial=False)
    assert report.results and all(r.passed for r in report.results), report.table()
    assert {r.backend for r in report.results} == {"mlx", "mlx-plan", backend}


@pytest.mark.parametrize("name", ["float", "kernel", "device", "half", "threadIdx",
                                  "thread_position_in_grid", "afg_sq", "afg_anything", "NAN"])
def test_a_name_a_target_reserves_is_refused_where_it_is_written(name):
    text = CLASHING.replace("{row_sum}", "rowwise_mean(lane)").replace("lane", name)
    with pytest.raises(SpecError) as caught:
        compile_spec(parse_spec_text(text, "specs/clash.yaml"))
    line = next(i for i, t in enumerate(text.splitlines(), 1) if f"- {name} =" in t)
    assert str(caught.value).startswith(f"specs/clash.yaml:{line}:"), caught.value
    assert f"'{name}'" in str(caught.value)


def test_every_target_reserves_its_header_helpers_and_keywords():
    for target in TARGETS.values():
        assert {"afg_load", "afg_store", "afg_block_sum", "afg_barrier", "afg_shared",
                "afg_lane", "afg_group"} <= target.reserved
        assert {"float", "const", "unsigned"} <= target.reserved
    assert {"threadgroup", "simd_sum"} <= TARGETS["metal"].reserved
    assert {"__shared__", "blockIdx", "cg"} <= TARGETS["cuda"].reserved


def test_one_body_for_every_target():
    """Each target differs only in its header and prologue; the body never names a
    target's own spelling."""
    compiled = compile_spec(_spec())
    spellings = {"threadgroup", "__shared__", "metal::", "threadIdx", "blockIdx",
                 "simd_sum", "__syncthreads", "sqrtf", "thread_index_in_simdgroup"}
    for plan in compiled.plans:
        for kernel in plan_kernels(plan, "afgen_clash"):
            assert not {s for s in spellings if s in kernel.source}, kernel.source
    for target in TARGETS.values():
        assert "afg_warp" in target.prologue and "afg_barrier" in target.header


def test_matrixwise_of_a_full_value_is_planned_into_glue():
    """No target folds a matrixwise reduction in a pass: the planner gives the pass a
    rowwise one and the glue the rest, and the kernels still match the oracle."""
    assert ReduceAxes.MATRIXWISE not in kernel_reductions()
    compiled = compile_spec(_spec("matrixwise_mean(lane) + rowwise_mean(lane)"))
    for plan in compiled.plans:
        for p in plan.passes:
            assert all(s.reduce is not ReduceAxes.MATRIXWISE for s in p.reductions)
        glue = [s for g in plan.glue for s in g.steps if s.reduce is ReduceAxes.MATRIXWISE]
        assert [s.operand_shape.name for s in glue] == (["ROW"] if plan.factored else [])
        plan_kernels(plan, "afgen_clash")  # renders: no reduction left unsupported
    report = verify(compiled, steps=2, backends=["metal"], dtypes=["float32"],
                    adversarial=False)
    assert report.results and all(r.passed for r in report.results), report.table()
