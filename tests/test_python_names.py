"""Python hygiene: spec names are written verbatim into the generated module (the MLX-ops
update methods, the fused drivers), the generator's own locals move out of their way, and
a spec name Python or the module cannot give up is refused where the spec writes it.

Before the symbol table, a value named ``cdt`` or ``size`` built and then shadowed the
generator's local of that name, and names such as ``super`` or ``int`` built and crashed
at construction."""
import ast
import re
from pathlib import Path

import pytest

from afgen.build import load_module, module_source
from afgen.check.verify import verify
from afgen.errors import SpecError
from afgen.lower.compiler import compile_spec
from afgen.spec.parse import parse_spec_text

ROOT = Path(__file__).resolve().parent.parent

# Every value is named like a local of the generated Python: the MLX-ops methods'
# arguments and compute dtype, the drivers' geometry, element count and state dtype.
CLASHING = """\
optimizer: Clash
summary: Names the generated Python uses for itself.
hyperparameters:
  cdt: {type: float, default: 0.1, doc: the step size}
  geo: {type: float, default: 0.9, doc: momentum}
  {extra}
layout:
  factored: ndim >= 2
state:
  gradient: {shape: full, doc: momentum buffer}
  parameter: {shape: row, when: factored, doc: mean square per row}
update:
  - size = grad * grad
  - sdt = mean(grad * param)
  - if: factored
    then:
      - parameter = 0.5 * parameter + 0.5 * rowwise_mean(size)
      - gradient = geo * gradient + grad * rsqrt(parameter + 1e-8)
    else:
      - gradient = geo * gradient + grad * rsqrt(size + 1e-8)
  - state = cdt * gradient
  - param = param - state + 0 * sdt
"""


def _spec(extra: str = "backend_name: {type: float, default: 0.0}"):
    return parse_spec_text(CLASHING.replace("{extra}", extra), "specs/clash.yaml")


def test_spec_names_stay_and_the_generators_move():
    source = module_source(compile_spec(_spec()))
    spec_names = {"cdt", "geo", "gradient", "parameter", "size", "sdt", "state"}
    # the MLX-ops update's own compute dtype and arguments
    assert "cdt_1 = mx.float32 if self.precision" in source
    arguments = re.findall(r"def _update_\w+\(self, (\w+), (\w+), (\w+)\)", source)
    assert len(arguments) == 2 and not spec_names & {a for args in arguments for a in args}
    # the drivers: every name is bound once (SSA), so no generator local shadows a value
    for function in _functions(source, "_gpu_"):
        assert not _rebound(function), (function.name, _rebound(function))
    for name in ("size", "sdt", "state"):  # the spec's values, verbatim
        assert re.search(rf"^        {name} = ", source, re.M), name


def _functions(source: str, prefix: str) -> list[ast.FunctionDef]:
    return [node for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef) and node.name.startswith(prefix)]


def _rebound(function: ast.FunctionDef) -> set[str]:
    """Names bound twice in a function, other than ``x = x.reshape(...)``."""
    seen: set[str] = {a.arg for a in function.args.args}
    twice: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            reads = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and isinstance(name.ctx, ast.Store):
                        if name.id in seen and name.id not in reads:
                            twice.add(name.id)
                        seen.add(name.id)
    return twice


def launch_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func) == "self._launch"


def _recomputed(function: ast.FunctionDef) -> list[str]:
    """Right-hand sides computed twice in a function, and values a launch passes twice
    among its scalars (``x`` twice, or both ``x`` and ``-x``)."""
    seen: set[str] = set()
    twice = []
    defined: dict[str, str] = {}  # name -> what it holds, aliases resolved
    for node in ast.walk(function):
        launch = isinstance(node, ast.Assign) and "self._launch(" in ast.unparse(node.value)
        if isinstance(node, ast.Assign) and not launch:
            for part in ast.walk(node.value):
                if isinstance(part, (ast.BinOp, ast.Call)):
                    text = ast.unparse(part)
                    if text in seen:
                        twice.append(text)
                    seen.add(text)
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            text = ast.unparse(node.value)
            defined[node.targets[0].id] = defined.get(text, text)
        scalar_lists = [arg for arg in (node.args[3].elts if launch_call(node) else [])
                        if isinstance(arg, ast.List)]
        for scalars in scalar_lists:
            packed = []
            for element in scalars.elts:
                text = defined.get(ast.unparse(element), ast.unparse(element))
                packed.append(defined.get(text.removeprefix("-"), text.removeprefix("-")))
            twice += sorted({p for p in packed if packed.count(p) > 1})
    return twice


def test_every_generated_driver_computes_each_value_once():
    """In every shipped module's drivers each value is computed once, under one name (no
    generator local shadows a value of the spec), and no launch is passed a value twice:
    CSE spans the glue between passes."""
    for path in sorted(ROOT.glob("generated/*.py")):
        for function in _functions(path.read_text(), "_gpu_"):
            assert not _rebound(function), (path.name, function.name, _rebound(function))
            assert not _recomputed(function), (path.name, function.name,
                                               _recomputed(function))


def test_clashing_names_verify_on_every_backend():
    report = verify(compile_spec(_spec()), steps=2, dtypes=["float32"], adversarial=False)
    assert {r.backend for r in report.results} == {"mlx", "mlx-plan", "metal", "cuda"}
    assert report.passed, report.table()


@pytest.mark.parametrize("extra, name, why", [
    ("super: {type: float, default: 0.0}", "super", "a Python keyword or built-in name"),
    ("int: {type: float, default: 0.0}", "int", "keyword or built-in name of Metal and CUDA"),
    ("len: {type: float, default: 0.0}", "len", "a Python keyword or built-in name"),
    ("mx: {type: float, default: 0.0}", "mx", "a name the generated module already binds"),
    ("self: {type: float, default: 0.0}", "self", "a name the generated module already binds"),
    ("backend: {type: float, default: 0.0}", "backend", "already an attribute"),
    ("step: {type: float, default: 0.0}", "step", "already an attribute"),
    ("step: {type: schedule, default: 0.1}", "step", "a key the optimizer's state"),
])
def test_names_python_cannot_give_up_are_refused_where_written(extra, name, why):
    with pytest.raises(SpecError) as info:
        compile_spec(_spec(extra))
    assert (info.value.loc.line, info.value.loc.col) == (6, 3)
    assert f"'{name}' is" in str(info.value) and why in str(info.value)


def test_a_class_named_like_a_module_name_is_refused_at_optimizer():
    text = CLASHING.replace("optimizer: Clash", "optimizer: THREADS").replace("{extra}", "")
    with pytest.raises(SpecError) as info:
        compile_spec(parse_spec_text(text, "specs/clash.yaml"))
    assert (info.value.loc.line, info.value.loc.col) == (1, 12)


def test_help_of_the_clashing_class_renders():
    cls = load_module(compile_spec(_spec())).Clash
    text = cls.__doc__
    assert "cdt (float): the step size. Default: ``0.1``." in text


def test_the_once_check_sees_a_recomputed_value_and_a_value_packed_twice():
    """The check above, on the two shapes of waste it guards against."""
    source = '''
def _gpu_twice(self, t, d, backend):
    g1 = 1 - t ** d
    g2 = 2 * (1 - t ** d)
    s4 = -g1
    s6 = g1
    return self._launch(backend, "k", None, [parameter, [s4, s6]], [], None, None)
'''
    (function,) = _functions(source, "_gpu_")
    found = _recomputed(function)
    assert found.count("1 - t ** d") == 2  # computed twice; passed as x and -x
