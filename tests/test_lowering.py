"""The lowering's structure: specialisations, shape classes, passes split at reductions,
and arithmetic kept exactly as the spec writes it."""
from pathlib import Path

import numpy as np
import pytest
import sympy

from afgen.backends.printers import kernel_code, mlx_code
from afgen.build import compile_path
from afgen.lower.config import all_configs
from afgen.spec.ops import Op, Times, to_sympy
from afgen.spec.shapes import ShapeClass

SPECS = sorted(Path(__file__).resolve().parent.parent.glob("specs/*.yaml"))


def _plan(compiled, factored, beta_1=True):
    for plan in compiled.plans:
        c = plan.config
        if c.factored == factored and c.get("has_beta_1") == beta_1 and c.get("scale_parameter"):
            return plan
    raise AssertionError("no such plan")


def test_configs_respect_requirements(compiled):
    configs = all_configs(compiled.spec)
    # relative_step and warmup_init only choose the scalar step size: run-time ifs in the
    # glue, not specialisations. Without a learning rate, requires still leaves
    # relative_step=True, so every assignment of the other three is possible.
    assert compiled.dynamic == ("relative_step", "warmup_init")
    assert compiled.specialising == ("scale_parameter", "has_learning_rate", "has_beta_1")
    assert len(configs) == 16
    # has_learning_rate does not change the code (the branch that reads it runs only
    # when requires lets it): 2 layouts x scale_parameter x has_beta_1
    assert len(compiled.plans) == 8


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


def test_flat_schedule_computes_u_once_and_squares_it(compiled):
    """``rms(u)`` squares the value ``u`` the spec computed; it is never rewritten as
    ``grad**2 / row / col`` (which is inf * 0 = NaN for an all-zero row and column)."""
    plan = _plan(compiled, factored=True, beta_1=False)
    full_steps = [s for s in plan.flat.steps if s.shape is ShapeClass.FULL and not s.is_reduction]
    assert len(full_steps) == 2, [str(s.expr) for s in full_steps]  # g2 and u
    u = full_steps[1].name
    squared = [s for s in plan.flat.steps if s.is_reduction and s.expr.has(u)]
    assert [str(s.expr) for s in squared] == [f"square({u})"]


def _arithmetic(expr: sympy.Basic) -> list[sympy.Basic]:
    return [e for e in sympy.preorder_traversal(expr)
            if isinstance(e, (sympy.Add, sympy.Mul, sympy.Pow))]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_no_lowered_expression_holds_sympy_arithmetic(path):
    """Every operation of every specialisation, in the flat schedule, the glue and the
    kernel passes, is one of afgen.spec.ops' opaque nodes: SymPy had no chance to
    regroup, reorder or merge the spec's arithmetic."""
    for plan in compile_path(path).plans:
        schedules = [plan.flat, *plan.glue, *(p.schedule for p in plan.passes)]
        for sched in schedules:
            exprs = [s.expr for s in sched.steps] + [e for _, e in sched.results]
            for expr in exprs:
                assert not _arithmetic(expr), (plan.name, expr)


def test_products_keep_the_order_written():
    a, b, c = sympy.symbols("a b c", real=True)
    left, right = Times(Times(a, b), c), Times(a, Times(b, c))
    assert left != right and to_sympy(left) == to_sympy(right)
    assert mlx_code(left) == "a * b * c" and mlx_code(right) == "a * (b * c)"
    assert kernel_code(right) == "a * (b * c)"
    assert isinstance(left, Op) and left.args == (Times(a, b), c)


STATIC_BASE = """\
optimizer: Flags
hyperparameters:
  lr: {type: float, default: 0.1}
{flags}
state:
  m: {shape: full}
update:
{update}
  - param = param - lr * m
"""


def _flags_spec(flags: list[str], update: list[str], requires: str = "") -> str:
    text = STATIC_BASE.replace("{flags}", "\n".join(
        f"  {f}: {{type: bool, default: false}}" for f in flags))
    text = text.replace("{update}", "\n".join(update))
    return text + requires


def _compiled(text: str):
    from afgen.lower.compiler import compile_spec
    from afgen.spec import parse_spec_text

    return compile_spec(parse_spec_text(text, "flags.yaml"))


def test_unused_and_scalar_only_bools_do_not_specialise():
    """Options that do not change the program never multiply specialisations: 20 unused
    bools and one that only picks a scalar build one plan (this took minutes and GBs when
    every bool specialised)."""
    flags = [f"f{i}" for i in range(20)] + ["pick"]
    compiled = _compiled(_flags_spec(flags, ["  - s = 2 * lr if pick else lr",
                                             "  - m = 0.9 * m + s * grad"]))
    assert compiled.specialising == ()
    assert "pick" in compiled.dynamic and len(compiled.plans) == 1
    assert "if pick else" in mlx_code(compiled.plans[0].program.outputs["m"])


@pytest.mark.parametrize("update", [
    ["  - m = 0.9 * m + (grad if pick else 2 * grad)"],          # a full-size choice
    ["  - s = rms(grad) if pick else lr", "  - m = s * grad"],    # a reduction
    ["  - if: pick", "    then:", "      - m = grad", "    else:", "      - m = 2 * grad"],
])
def test_bools_that_change_full_size_values_specialise(update):
    compiled = _compiled(_flags_spec(["pick"], update))
    assert compiled.specialising == ("pick",) and compiled.dynamic == ()
    assert len(compiled.plans) == 2


def test_too_many_specialising_options_are_refused_at_the_first_past_the_cap():
    from afgen.errors import SpecError
    from afgen.lower.config import MAX_SPECIALISING

    flags = [f"f{i}" for i in range(MAX_SPECIALISING + 1)]
    update = [f"  - m = m + (grad if {f} else 2 * grad)" for f in flags]
    with pytest.raises(SpecError) as info:
        _compiled(_flags_spec(flags, update))
    assert info.value.loc.line == 4 + MAX_SPECIALISING  # the hyperparameter past the cap
    assert "static options change the program" in str(info.value)


@pytest.mark.parametrize("sgd", [False, True])
def test_a_choice_inside_a_condition_is_kept_as_written(sgd):
    """SymPy's Piecewise folds a choice found inside a condition into the condition, and
    once turned ``where(lr * (1 if sgd else -1) > 0, ...)`` into ``lr * 1 > 0``, dropping
    the -1: the float64 oracle then took every step LAMB's rectification skips. Choices
    are afgen.spec.ops.Where, built as written."""
    from afgen.check.oracle import Oracle

    compiled = _compiled(_flags_spec(["sgd"], [
        "  - s = lr * (1 if sgd else -1)", "  - m = where(s > 0, grad, -grad)"]))
    assert compiled.dynamic == ("sgd",)
    oracle = Oracle(compiled, {"lr": 0.1, "sgd": sgd})
    grad = np.array([1.0, -2.0, 3.0])
    oracle.step({"p": np.zeros(3)}, {"p": grad}, 1e-7)
    np.testing.assert_array_equal(oracle.state["p"]["m"], grad if sgd else -grad)


def test_a_layout_choice_reads_only_the_state_of_its_layout():
    """``x if factored else y`` where each arm reads state only its layout has: the
    MLX-ops method of a layout once loaded the other arm's state too (a KeyError)."""
    import mlx.core as mx

    from afgen.check.verify import load_module

    compiled = _compiled("""\
optimizer: Covers
hyperparameters:
  lr: {type: float, default: 0.5}
layout:
  factored: ndim >= 2
state:
  a: {shape: row, when: factored, init: 1.0}
  b: {shape: col, when: factored, init: 2.0}
  c: {shape: full, when: not factored, init: 3.0}
update:
  - nu = min(a, b) if factored else c
  - param = param - lr * nu
""")
    opt = load_module(compiled).Covers(backend="mlx")
    new = opt.apply_gradients({"m": mx.zeros((2, 3)), "v": mx.zeros((4,))},
                              {"m": mx.zeros((2, 3)), "v": mx.zeros((4,))})
    np.testing.assert_array_equal(np.array(new["m"]), np.full((2, 3), -0.5))
    np.testing.assert_array_equal(np.array(new["v"]), np.full((4,), -1.5))
