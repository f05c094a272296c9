"""Render the generated optimizer module: the class's spec-dependent hooks, the update
functions and kernel tables. What every module shares is afgen/runtime.py, which the module
imports from beside it (``from . import afgen_runtime as _rt``)."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import sympy

from afgen import __version__
from afgen.backends.gpu_driver import driver_model, plan_kernels, share_step_values
from afgen.backends.kernels import THREADS
from afgen.backends.matrix_blocks import mlx_block_lines
from afgen.backends.mlx_function import hyperparameter_reads, layout_functions
from afgen.backends.mlx_passes import mlx_pass
from afgen.backends.names import MODULE_NAMES, PYTHON_RESERVED
from afgen.backends.printers import python_code
from afgen.backends.render import render
from afgen.backends.targets import TARGETS
from afgen.lower.compiler import Compiled
from afgen.names import SymbolTable, spec_names
from afgen.spec import ops
from afgen.spec.model import FACTORED, Hyperparameter, Spec
from afgen.spec.shapes import ShapeClass

ANNOTATIONS = {
    "float": "float",
    "int": "int",
    "bool": "bool",
    "optional_float": "Optional[float]",
    "schedule": "Union[float, Callable[[mx.array], mx.array], None]",
    "pair": "Tuple[float, float]",
    "tuple": "Tuple[float, ...]",
}
# Docstring lines of a hyperparameter, after the class body's 8-space indent.
DOC_WIDTH = 84
TYPE_DOCS = {"float": "float", "int": "int", "bool": "bool", "optional_float": "float, optional",
             "schedule": "float or callable, optional", "pair": "tuple(float, float)",
             "tuple": "tuple(float, ...)"}
SHAPE_CODE = {ShapeClass.FULL: "shape", ShapeClass.ROW: "shape[:-1]",
              ShapeClass.COL: "shape[:-2] + shape[-1:]", ShapeClass.BATCH: "shape[:-2]",
              ShapeClass.SCALAR: "()"}
# The same shapes when the factored axes may be any two (``layout.axes: largest``): a row
# state drops the col axis, a col state the row axis, wherever they are.
SHAPE_CODE_ANY_AXES = {ShapeClass.FULL: "shape", ShapeClass.ROW: "_rt.without(shape, axes[1])",
                       ShapeClass.COL: "_rt.without(shape, axes[0])",
                       ShapeClass.BATCH: "_rt.without(shape, *axes)", ShapeClass.SCALAR: "()"}
AXES_CODE = {"last": "len(shape) - 2, len(shape) - 1", "largest": "_rt.largest_two(shape)"}


@dataclass(frozen=True)
class HyperView:
    name: str
    annotation: str
    default_repr: str
    doc_lines: tuple[str, ...]  # its entry under "Args:", wrapped as MLX's docstrings are
    init_lines: tuple[str, ...]


def _static_code(spec: Spec) -> dict[sympy.Symbol, sympy.Symbol]:
    """How each static predicate reads at run time inside the optimizer."""
    out = {}
    for h in spec.hyperparameters:
        if h.is_static:
            out[sympy.Symbol(h.name)] = sympy.Symbol(f"self.{h.name}")
        elif h.kind == "schedule":
            out[h.has_symbol] = sympy.Symbol(f'"{h.name}" in self.state')
        elif h.is_optional:
            out[h.has_symbol] = sympy.Symbol(f"self.{h.name} is not None")
        for component in h.optional_components:
            index = h.component_names.index(component)
            out[sympy.Symbol(f"has_{component}")] = sympy.Symbol(
                f"self.{h.name}[{index}] is not None")
    out[sympy.Symbol(FACTORED)] = sympy.Symbol("factored")
    return out


def _condition_code(condition: sympy.Basic, spec: Spec) -> str:
    """A condition as Python on the optimizer's attributes (static options, and numeric
    hyperparameters for a requirement on values)."""
    values = {sympy.Symbol(n, real=True): sympy.Symbol(code)
              for n, code in hyperparameter_reads(spec, "mx.float32").items()}
    return python_code(condition.xreplace({**_static_code(spec), **values}))


# Operations that raise on some Python numbers (ZeroDivisionError, a math domain error,
# OverflowError) where MLX would give inf or NaN.
_RAISING_OPS = (ops.Divide, ops.Power, ops.Sqrt, ops.Rsqrt, ops.Exp, ops.Log, ops.Square)


def _may_raise(check: sympy.Basic) -> bool:
    return any(isinstance(node, _RAISING_OPS) for node in sympy.preorder_traversal(check))


def _hyper_view(h: Hyperparameter) -> HyperView:
    lines: list[str] = []
    if h.kind == "schedule" and h.required:
        lines.append(f'self._maybe_schedule("{h.name}", {h.name})')
    elif h.kind == "schedule":
        lines += [f"if {h.name} is not None:",
                  f'    self._maybe_schedule("{h.name}", {h.name})']
    else:
        if h.is_tuple:
            count = len(h.component_names)
            what = "a pair of floats" if h.kind == "pair" else f"{count} floats"
            lines += [f"if len(tuple({h.name})) != {count}:",
                      f'    raise ValueError(f"{h.name} must be {what}, got {{{h.name}!r}}")']
        if h.kind == "int":
            lines += [f"if not isinstance({h.name}, int) or isinstance({h.name}, bool):",
                      f'    raise ValueError(f"{h.name} must be an int, got {{{h.name}!r}}")']
        if h.check is not None:
            test = f"not ({python_code(h.check)})"
            if h.is_tuple:
                lines.append(f"{', '.join(h.component_names)} = {h.name}")
            if h.kind == "optional_float":
                test = f"{h.name} is not None and {test}"
            checked = {str(s) for s in h.check.free_symbols}
            for component in h.optional_components:
                if component in checked:
                    test = f"{component} is not None and {test}"
            if _may_raise(h.check):  # undefined there (1 / 0, sqrt(-1)): the check fails
                lines += ["try:", f"    _failed = {test}",
                          "except (ArithmeticError, ValueError):", "    _failed = True"]
                test = "_failed"
            lines += [f"if {test}:",
                      f'    raise ValueError(f"{h.name} must satisfy {h.check_text}, got '
                      f'{{{h.name}!r}}")']
        if h.kind == "bool":  # Python would take "no" as true: only bools are flags
            lines.append(f'self.{h.name} = _rt.check_bool("{h.name}", {h.name})')
        else:
            lines.append(f"self.{h.name} = {h.name}")
    default = h.default
    default_repr = repr(tuple(default)) if isinstance(default, tuple) else repr(default)
    if h.required:
        default_repr = ""
    doc = h.doc if h.doc.endswith(".") or not h.doc else h.doc + "."
    entry = f"{h.name} ({TYPE_DOCS[h.kind]}): {doc}"
    if default_repr:
        entry += f" Default: ``{default_repr}``."
    doc_lines = textwrap.wrap(entry, width=DOC_WIDTH, subsequent_indent="    ",
                              break_long_words=False, break_on_hyphens=False)
    return HyperView(h.name, ANNOTATIONS[h.kind], default_repr, tuple(doc_lines),
                     tuple(lines))


def _key_lines(compiled: Compiled) -> list[str]:
    static = _static_code(compiled.spec)
    lines = []
    for name in compiled.specialising:
        code = str(static[sympy.Symbol(name)])
        lines.append(f"bool({code})" if code.startswith("self.") and " " not in code else code)
    lines.append("factored")
    return lines


def _string_literal(text: str) -> str:
    """``text`` as a Python string literal, in double quotes where it has none. (JSON
    would escape an emoji as a surrogate pair, which Python reads as two lone surrogates
    that no encoding can print.)"""
    literal = repr(text)
    if literal.startswith("'") and '"' not in text:  # then it has no "'" either
        literal = f'"{literal[1:-1]}"'
    return literal


def _factored_code(spec: Spec) -> str:
    """The layout condition as Python over ``ndim``, ``rows``, ``cols`` and ``self.<h>``."""
    hypers = set(spec.layout_hypers)
    return python_code(spec.factored_when.xreplace(
        {s: sympy.Symbol(f"self.{s.name}") for s in spec.factored_when.free_symbols
         if s.name in hypers}))


def python_names(spec: Spec) -> SymbolTable:
    """The module's symbol table: what Python and the module reserve, then every spec
    name, so the generator's own names are drawn around them."""
    return SymbolTable(PYTHON_RESERVED | MODULE_NAMES | set(spec_names(spec)))


def module_context(compiled: Compiled, spec_path: str) -> dict:
    spec = compiled.spec
    static_code = {str(k): str(v) for k, v in _static_code(spec).items()}
    functions = layout_functions(spec, [plan.factored for plan in compiled.plans], static_code,
                                 python_names(spec))
    layouts = {fn.factored: fn.name.split("(")[0] for fn in functions}
    mlx_dispatch = " if factored else ".join(
        f"self.{layouts[f]}" for f in (True, False) if f in layouts)
    shape_code = SHAPE_CODE if spec.factor_axes == "last" else SHAPE_CODE_ANY_AXES
    states = []
    for s in spec.state:
        states.append({
            "name": s.name,
            "shape_class": s.shape.label,
            "when_code": _condition_code(s.when, spec),
            "shape_code": shape_code[s.shape] if not s.shape.needs_factored
            else f"({shape_code[s.shape]} if factored else None)",
            "init": repr(s.init),
        })
    requires = [{"code": _condition_code(r.condition, spec),
                 "message_code": _string_literal(r.message)}
                for r in spec.requires]
    prefix = f"afgen_{spec.stem}"
    kernel_table, mlx_passes, drivers, gpu_dispatch = {}, {}, [], []
    for plan in compiled.plans:
        kernels = plan_kernels(plan, prefix)
        kernel_table.update({k.name: k for k in kernels})
        mlx_passes.update({k.name: mlx_pass(p, k) for p, k in zip(plan.passes, kernels)})
        drivers.append(driver_model(spec, plan, kernels))
    drivers = share_step_values(drivers)
    for plan, drv in zip(compiled.plans, drivers):
        for config in plan.configs:
            key = tuple(v for _, v in config.values) + (config.factored,)
            gpu_dispatch.append((repr(key), drv.name))
    # (a matrix block's function takes one parameter's matrix: never a stack)
    blocks = {drv.name for plan, drv in zip(compiled.plans, drivers)
              if any(r.block >= 0 for r in plan.program.reductions)}
    stacked = ", ".join(drv.name for drv in drivers
                        if len(drv.kernels) > 1 and drv.name not in blocks)
    stacked_lines = textwrap.wrap(stacked + ("," if stacked else ""), 92,
                                  break_long_words=False, break_on_hyphens=False)
    return {
        "spec": spec, "spec_path": spec_path, "spec_sha": compiled.spec_sha256,
        "version": __version__, "threads": THREADS,
        "drivers": drivers, "gpu_dispatch": gpu_dispatch, "stacked_lines": stacked_lines,
        "kernels": sorted(kernel_table.values(), key=lambda k: k.name),
        "mlx_passes": [mlx_passes[name] for name in sorted(mlx_passes)],
        "hypers": [_hyper_view(h) for h in spec.hyperparameters],
        "requires": requires, "key_lines": _key_lines(compiled), "states": states,
        "factored_code": _factored_code(spec), "axes_code": AXES_CODE[spec.factor_axes],
        "any_axes": spec.factor_axes != "last", "layout_functions": functions,
        "mlx_dispatch": mlx_dispatch,
        "matrix_blocks": [{"index": b.index, "name": b.name, "line": b.loc.line,
                           "lines": mlx_block_lines(
                               b, hyperparameter_reads(spec, f"{b.name}.dtype"))}
                          for b in spec.matrix_blocks()],
    }


def render_targets() -> str:
    """The text of ``afgen_targets.py``: what every kernel target adds to the bodies."""
    return render("targets.py.j2", version=__version__, targets=list(TARGETS.values()))


def render_module(compiled: Compiled, spec_path: str) -> str:
    """The text of ``generated/<stem>.py``."""
    return render("module.py.j2", **module_context(compiled, spec_path))
