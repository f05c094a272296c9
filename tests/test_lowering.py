"""The lowering's structure: specialisations, shape classes, passes split at reductions."""
from afgen.lower.config import all_configs
from afgen.shapes import ShapeClass


def _plan(compiled, factored, beta_1=True):
    for plan in compiled.plans:
        c = plan.config
        if (c.factored == factored and c.get("has_beta_1") == beta_1 and c.get("relative_step")
                and c.get("scale_parameter") and not c.get("warmup_init")):
            return plan
    raise AssertionError("no such plan")


def test_configs_respect_requirements(compiled):
    configs = all_configs(compiled.spec)
    assert len(configs) == 48  # 2 layouts x 2^5 static predicates minus (no lr and no relative)
    assert not any(not c.get("relative_step") and not c.get("has_learning_rate")
                   for c in configs)
    # has_learning_rate and (without relative_step) warmup_init do not change the code
    assert len(compiled.plans) == 24


def test_factored_plan_has_three_passes(compiled):
    plan = _plan(compiled, factored=True)
    kinds = [[r.kind for r in p.reductions] for p in plan.passes]
    assert kinds == [["all_mean", "rowwise_mean", "colwise_mean"], ["all_mean"], []]
    assert plan.passes[0].reads == ("grad", "param")
    assert plan.passes[1].reads == ("grad",)
    assert set(plan.passes[2].reads) == {"grad", "param", "exp_avg"}
    assert set(plan.passes[2].writes) == {"new_param", "new_exp_avg"}
    small_outputs = {name for g in plan.glue for name, _ in g.results if name.startswith("new_")}
    assert small_outputs == {"new_exp_avg_sq_row", "new_exp_avg_sq_col"}


def test_glue_is_small_and_passes_stream(compiled):
    for plan in compiled.plans:
        for glue in plan.glue:
            for step in glue.steps:
                assert step.shape is not ShapeClass.FULL, (plan.name, step)
        for p in plan.passes:
            for name in p.small_inputs:
                assert plan.program.shapes[next(s for s in plan.program.shapes
                                                 if str(s) == name)] is not ShapeClass.FULL


def test_unfactored_plan_has_two_passes(compiled):
    plan = _plan(compiled, factored=False, beta_1=False)
    kinds = [[r.kind for r in p.reductions] for p in plan.passes]
    assert kinds == [["all_mean", "all_mean"], []]
    assert set(plan.passes[-1].writes) == {"new_param", "new_exp_avg_sq"}


def test_flat_schedule_computes_each_full_product_once(compiled):
    """Small factors are combined before they touch full-size arrays."""
    plan = _plan(compiled, factored=True, beta_1=False)
    full_steps = [s for s in plan.flat.steps if s.shape is ShapeClass.FULL and not s.is_reduction]
    assert len(full_steps) <= 3, [str(s.expr) for s in full_steps]
