"""The plan report: per-pass traffic, its lower bound, and MLX's own graph for comparison."""
from afgen.check.verify import hyper_for
from afgen.report.show import sharding_report, show, traffic_report
from afgen.report.traffic import lower_bound_bytes, plan_traffic, reference_traffic


def _plan(compiled, factored, beta_1):
    return next(p for p in compiled.plans if p.factored == factored
                and p.config.get("has_beta_1") == beta_1 and p.config.get("scale_parameter"))


def test_factored_fp32_moves_six_words_per_element(compiled):
    plan = _plan(compiled, True, False)
    passes = plan_traffic(plan)
    assert [(p.bytes_read, p.bytes_written) for p in passes] == [(8, 0), (4, 0), (8, 4)]
    assert sum(p.bytes_read + p.bytes_written for p in passes) == 24 == 6 * 4
    assert lower_bound_bytes(plan) == 24


def test_first_moment_adds_a_read_and_a_write(compiled):
    plan = _plan(compiled, True, True)
    assert sum(p.bytes_read + p.bytes_written for p in plan_traffic(plan)) == 32
    assert lower_bound_bytes(plan) == 32


def test_bf16_parameters_with_float32_state(compiled):
    plan = _plan(compiled, True, True)
    passes = plan_traffic(plan, param_bytes=2, state_bytes=4)
    # pass 2 reads g, p (bf16) and the first moment (f32); writes p (bf16) and moment (f32)
    assert (passes[2].bytes_read, passes[2].bytes_written) == (8, 6)


def test_unfactored_plan_is_at_its_bound(compiled):
    plan = _plan(compiled, False, False)
    total = sum(p.bytes_read + p.bytes_written for p in plan_traffic(plan))
    assert total == lower_bound_bytes(plan) == 32


def test_reference_graph_moves_far_more(compiled):
    plan = _plan(compiled, True, False)
    launches, per_element = reference_traffic(compiled.spec.reference, hyper_for(compiled, plan),
                                              (512, 512), "float32")
    assert launches > 3 * len(plan.passes)
    assert per_element > 3 * 24


def test_show_prints_plan_and_report(compiled):
    text = show(compiled)
    assert "\\leftarrow" in text and "pass 2: reads" in text
    report = "\n".join(traffic_report(compiled))
    assert "factored scale_parameter !has_beta_1" in report
    assert "8/0 4/0 8/4" in report


def test_show_reports_state_bytes_per_parameter_against_adam(compiled):
    """Row + col state of a 4096x4096 matrix is (4096 + 4096) float32 values: 8192 * 4 /
    4096**2 B per element; a first moment adds a full tensor (4 B); Adam keeps 8 B."""
    from afgen.report.show import state_memory_report

    lines = state_memory_report(compiled)
    assert "Adam keeps 2 full tensors = 8 B" in lines[0]
    factored = [ln for ln in lines if ln.strip().startswith("factored:") and "4096x4096" in ln]
    second_moment = (4096 + 4096) * 4 / 4096 ** 2
    assert any("+ exp_avg " not in ln and f"{second_moment:8.4f} B" in ln for ln in factored)
    assert any("+ exp_avg " in ln and f"{4 + second_moment:8.4f} B" in ln for ln in factored)
    unfactored = [ln for ln in lines if "unfactored: exp_avg_sq + exp_avg" in ln]
    assert unfactored and "8.0000 B  (1.0000x Adam)" in unfactored[0]
    assert "optimizer state per parameter element" in show(compiled)


def test_sharding_report_lists_the_collectives_and_their_bytes(compiled):
    """Factored Adafactor split by rows completes its col means (4096 floats), the mean
    of the row state, rms(param) and rms(u): O(rows + cols) bytes, never O(rows x cols);
    split by cols, its row means instead; an unfactored parameter, its two RMS terms."""
    lines = sharding_report(compiled)
    label = "factored scale_parameter has_beta_1 "
    by_rows = next(line for line in lines if label in line and "along axis 0" in line)
    by_cols = next(line for line in lines if label in line and "along last axis" in line)
    assert "4 all-reduce(s), 16396 B" in by_rows and "colwise_mean -> col" in by_rows
    assert "3 all-reduce(s), 16392 B" in by_cols and "rowwise_mean -> row" in by_cols
    assert "colwise" not in by_cols
    flat = next(line for line in lines if "unfactored scale_parameter has_beta_1 " in line)
    assert "2 all-reduce(s), 8 B" in flat
    assert not any("unfactored" in line and "last axis" in line for line in lines)
    assert "sharded parameters" in show(compiled)
