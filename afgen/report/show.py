"""``afgen show``: the lowered plan of every specialisation, in words and LaTeX."""
from __future__ import annotations

import math

import sympy
from sympy.printing.latex import greek_letters_set

from afgen.lower.compiler import Compiled
from afgen.lower.config import state_shape
from afgen.lower.plan import KernelPlan, Schedule
from afgen.spec.model import Branch, MatrixBlock, Repeat, Statement
from afgen.spec.shapes import ReduceAxes


def _latex_name(name: str) -> str:
    """Greek names as Greek (beta_1 -> \\beta_{1}); other names upright and unmangled."""
    base = name.split("_")[0]
    if len(name) == 1:
        return name
    if base in greek_letters_set and name.count("_") <= 1:
        return sympy.latex(sympy.Symbol(name))
    return r"\mathrm{" + name.replace("_", r"\_") + "}"


def _latex(expr: sympy.Basic) -> str:
    names = {s: _latex_name(str(s)) for s in expr.free_symbols}
    return sympy.latex(expr, symbol_names=names)


def equations_latex(statements: tuple[Statement, ...], depth: int = 0) -> list[str]:
    """The update as written in the spec, one LaTeX line per equation."""
    pad = "  " * depth
    lines = []
    for st in statements:
        if isinstance(st, Branch):
            lines.append(f"{pad}if {st.condition_text}:")
            lines += equations_latex(st.then, depth + 1)
            if st.orelse:
                lines.append(f"{pad}else:")
                lines += equations_latex(st.orelse, depth + 1)
        elif isinstance(st, MatrixBlock):
            lines.append(f"{pad}matrix {st.name} (its (shape[0], -1) view; MLX ops between "
                         "passes):")
            lines += equations_latex(st.body, depth + 1)
        elif isinstance(st, Repeat):
            lines.append(f"{pad}repeat {st.count_text} times:")
            lines += equations_latex(st.body, depth + 1)
        else:
            lines.append(f"{pad}{_latex_name(st.target)} \\leftarrow {_latex(st.value)}")
    return lines


def _schedule_lines(sched: Schedule, indent: str) -> list[str]:
    lines = []
    for step in sched.steps:
        what = f"{step.kind}({step.expr})" if step.is_reduction else str(step.expr)
        lines.append(f"{indent}{step.name} [{step.shape.label}] = {what}")
    for name, expr in sched.results:
        lines.append(f"{indent}{name} = {expr}")
    return lines


def plan_text(plan: KernelPlan) -> list[str]:
    configs = sorted({c.restricted(plan.program.used_statics).label for c in plan.configs})
    lines = [f"== {configs[0]}  ({len(plan.configs)} configuration(s))"]
    for index, pass_ in enumerate(plan.passes + (None,)):
        glue = plan.glue[index]
        if pass_ is None:
            if glue.steps or glue.results:
                lines.append(f"  glue {index} (small values after the last pass):")
                lines += _schedule_lines(glue, "    ")
            break
        if glue.steps or glue.results:
            lines.append(f"  glue {index} (small values before pass {index}):")
            lines += _schedule_lines(glue, "    ")
        reds = ", ".join(f"{r.name}={r.kind}" for r in pass_.reductions) or "none"
        lines.append(f"  pass {index}: reads {', '.join(pass_.reads) or 'nothing full-size'}; "
                     f"small inputs {', '.join(pass_.small_inputs) or 'none'}; "
                     f"reduces {reds}; writes {', '.join(pass_.writes) or 'nothing'}")
        lines += _schedule_lines(pass_.schedule, "    ")
    return lines


REPORT_SHAPES = {True: (4096, 4096), False: (4096 * 4096,)}


def traffic_report(compiled: Compiled, param_bytes: int = 4, state_bytes: int = 4) -> list[str]:
    """Per specialisation: launches and bytes per parameter element of every pass, the
    lower bound, and what the reference MLX optimizer's own graph moves."""
    from afgen.check.verify import hyper_for
    from afgen.report.traffic import lower_bound_bytes, plan_traffic, reference_traffic

    dtype = {4: "float32", 2: "bfloat16"}[param_bytes]
    lines = [f"memory traffic per parameter element ({dtype} parameters, "
             f"{'float32' if state_bytes == 4 else dtype} state; fused backends):",
             f"  {'specialisation':<62} {'launches':>8}  {'per pass read/write (B)':<26} "
             f"{'total':>5} {'bound':>5}  reference MLX graph"]
    for plan in compiled.plans:
        passes = plan_traffic(plan, param_bytes, state_bytes)
        total = sum(p.bytes_read + p.bytes_written for p in passes)
        per_pass = " ".join(f"{p.bytes_read}/{p.bytes_written}" for p in passes)
        shape = REPORT_SHAPES[plan.factored]
        ref = reference_traffic(compiled.spec.reference, hyper_for(compiled, plan), shape, dtype)
        ref_text = (f"{ref[1]:.1f} B in {ref[0]} launches at {'x'.join(map(str, shape))}"
                    if ref else "n/a")
        label = plan.config.restricted(plan.program.used_statics).label
        lines.append(f"  {label:<62} {len(passes):>8}  {per_pass:<26} {total:>5} "
                     f"{lower_bound_bytes(plan, param_bytes, state_bytes):>5}  {ref_text}")
    lines.append("  (fused passes also move O(rows + cols) bytes of partial sums and factors; "
                 "small glue between passes runs as MLX ops on those)")
    return lines


MEMORY_SHAPES = {True: [(4096, 4096), (4096, 11008)], False: [(4096,)]}
ADAM_FULL_TENSORS = 2  # Adam/AdamW keep m and v, each the parameter's size


def state_memory_report(compiled: Compiled, state_bytes: int = 4) -> list[str]:
    """Optimizer-state bytes per parameter element for every distinct set of state
    tensors, next to Adam's (the memory a factored second moment saves is the point)."""
    adam = ADAM_FULL_TENSORS * state_bytes
    lines = [f"optimizer state per parameter element ({state_bytes}-byte state; Adam keeps "
             f"{ADAM_FULL_TENSORS} full tensors = {adam} B):"]
    classes = {s.name: s.shape for s in compiled.spec.state}
    seen = set()
    for plan in compiled.plans:
        live = tuple(name for name in classes if name in plan.program.live_state)
        if (plan.factored, live) in seen:
            continue
        seen.add((plan.factored, live))
        layout = "factored" if plan.factored else "unfactored"
        for shape in MEMORY_SHAPES[plan.factored]:
            axes = (len(shape) - 2, len(shape) - 1) if plan.factored else None
            count = sum(math.prod(state_shape(classes[name], shape, axes)) for name in live)
            per = count * state_bytes / math.prod(shape)
            lines.append(f"  {layout + ': ' + (' + '.join(live) or 'no state'):<52} "
                         f"{'x'.join(map(str, shape)):>10}  {per:8.4f} B  "
                         f"({per / adam:.4f}x Adam)")
    lines.append("  (precision=\"param\" keeps bf16/fp16 state for bf16/fp16 parameters, "
                 "which halves each figure; Adam's too)")
    return lines


SHARDED_SHAPES = {True: (4096, 4096), False: (4096 * 4096,)}
BROADCAST_FOLDS = {"rowwise": (-1,), "colwise": (-2,), "matrixwise": (-2, -1), "all": None}


def sharding_report(compiled: Compiled) -> list[str]:
    """Per specialisation and sharded axis, the reductions that become collectives (each
    process reduces its slice, one all-reduce completes it) and the bytes they carry per
    step, for one parameter split across processes."""
    from afgen.runtime import ShardedAxis

    lines = ["sharded parameters (set_sharding): reductions completed across processes, "
             "and their payload per step:"]
    for plan in compiled.plans:
        shape = SHARDED_SHAPES[plan.factored]
        label = plan.config.restricted(plan.program.used_statics).label
        sizes = {"row": shape[0], "col": shape[-1], "batch": 1, "scalar": 1}
        if any(r.axes is ReduceAxes.MATRIX for r in plan.program.reductions):
            lines.append(f"  {label:<56} refused: a matrix block needs the whole matrix")
            continue
        for name, axis in (("axis 0", 0), ("last axis", len(shape) - 1)):
            if not plan.factored and name != "axis 0":  # one axis: the same split
                continue
            shard = ShardedAxis(axis, len(shape), None)
            crossing = [r for r in plan.program.reductions
                        if shard.crosses(r.operand_shape.label, BROADCAST_FOLDS[r.axes.value],
                                         len(shape), compact=False)]
            payload = 4 * sum(sizes[r.shape.label] for r in crossing)
            what = ", ".join(f"{r.kind} -> {r.shape.label}" for r in crossing) or "none"
            lines.append(f"  {label:<56} {'x'.join(map(str, shape))} split along {name}: "
                         f"{len(crossing)} all-reduce(s), {payload} B ({what})")
    lines.append("  (and, with nonfinite=\"skip\" or \"raise\", one flag per parameter of "
                 "the tree; unsharded parameters exchange nothing)")
    return lines


def show(compiled: Compiled) -> str:
    spec = compiled.spec
    out = [f"{spec.class_name} from {spec.path}: {spec.summary}",
           f"static predicates: {', '.join(spec.static_names)}; layout factored when "
           f"{spec.factored_text}",
           f"dynamic inputs: {', '.join(spec.dynamic_names)}, t", "",
           "update (LaTeX):"]
    out += ["  " + line for line in equations_latex(spec.update)]
    out += ["", f"{len(compiled.plans)} distinct specialisation(s):"]
    for plan in compiled.plans:
        out += plan_text(plan)
    out += [""] + state_memory_report(compiled)
    out += [""] + traffic_report(compiled)
    out += [""] + sharding_report(compiled)
    return "\n".join(out)
