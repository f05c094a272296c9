"""generated/ is exactly what afgen builds from specs/, and depends only on MLX."""
import ast
import sys
from pathlib import Path

import pytest

from afgen.build import compile_path, module_source

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
STDLIB = set(sys.stdlib_module_names)


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_generated_equals_fresh_build(spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    committed = ROOT / "generated" / f"{spec.stem}.py"
    assert committed.exists(), f"run: afgen build specs/{spec.name}"
    fresh = module_source(compile_path(Path("specs") / spec.name))
    assert committed.read_text() == fresh, f"generated/{spec.stem}.py is stale: run afgen build"


def _imported_roots(path: Path) -> list[str]:
    """The top-level names a file imports; a relative import is ``.`` plus its module."""
    roots = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            roots += ["." + (node.module or alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots.append((node.module or "").split(".")[0])
    return roots


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_generated_imports_only_mlx_stdlib_and_the_runtime(spec):
    for root in _imported_roots(ROOT / "generated" / f"{spec.stem}.py"):
        assert root in ("mlx", ".afgen_runtime", ".afgen_targets") or root in STDLIB, \
            f"generated module imports {root}"


def test_runtime_imports_only_mlx_and_stdlib():
    for root in _imported_roots(ROOT / "afgen" / "runtime.py"):
        assert root == "mlx" or root in STDLIB, f"the runtime imports {root}"


def test_generated_runtime_equals_afgen_runtime():
    committed = ROOT / "generated" / "afgen_runtime.py"
    assert committed.exists(), "run: afgen build (it writes generated/afgen_runtime.py)"
    assert committed.read_text() == (ROOT / "afgen" / "runtime.py").read_text(), \
        "generated/afgen_runtime.py is stale: run afgen build"


def test_generated_targets_equal_a_fresh_render():
    """generated/afgen_targets.py (kernel text every module shares) is what afgen writes,
    plain data: no imports at all."""
    from afgen.backends.module import render_targets

    committed = ROOT / "generated" / "afgen_targets.py"
    assert committed.read_text() == render_targets(), "stale: run afgen build"
    assert _imported_roots(committed) == []


def test_runtime_backends_are_the_kernel_targets():
    from afgen import runtime
    from afgen.backends.kernels import THREADS
    from afgen.backends.targets import TARGETS
    from generated import adam

    assert runtime.BACKENDS == ("auto", "mlx", *TARGETS)
    assert adam.THREADS == THREADS
    assert set(adam._FACTORIES) == set(TARGETS) == set(adam._PROLOGUES) == set(adam._HEADERS)


def test_generated_module_names_its_spec_and_version():
    import afgen
    from generated import adafactor

    assert "specs/adafactor.yaml" in adafactor.__doc__
    assert adafactor.AFGEN_VERSION == afgen.__version__
    assert f"afgen {afgen.__version__}" in adafactor.__doc__


def test_build_writes_the_module(tmp_path, monkeypatch):
    from afgen.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["build", "specs/adafactor.yaml", "--out", str(tmp_path), "--no-verify"]) == 0
    assert (tmp_path / "adafactor.py").read_text() == (ROOT / "generated/adafactor.py").read_text()
    assert (tmp_path / "__init__.py").exists()
    assert (tmp_path / "afgen_runtime.py").read_text() == (ROOT / "afgen/runtime.py").read_text()
    assert (tmp_path / "afgen_targets.py").read_text() == \
        (ROOT / "generated/afgen_targets.py").read_text()


def test_built_package_imports_and_steps(tmp_path, monkeypatch):
    """A build directory is a package that needs nothing of afgen: its module imports the
    runtime written beside it, whose kernel runner is its own."""
    import importlib

    import mlx.core as mx

    import afgen.runtime
    from afgen.check.kernel_runner import cpu_kernels, runtime_of
    from afgen.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "built_opts"
    assert main(["build", "specs/adam.yaml", "--out", str(out), "--no-verify"]) == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("built_opts.adam")
    runtime = runtime_of(module)
    assert runtime.__name__ == "built_opts.afgen_runtime" and runtime is not afgen.runtime
    assert issubclass(module.Adam, runtime.GeneratedOptimizer)
    params = {"w": mx.ones((2, 3))}
    opt = module.Adam(learning_rate=0.5, backend="mlx")
    new = opt.apply_gradients({"w": mx.ones((2, 3))}, params)
    assert mx.all(new["w"] < 1).item() and opt.step.item() == 1
    with cpu_kernels(module) as runner:
        assert runtime.kernel_runner() is runner and afgen.runtime.kernel_runner() is None
        module.Adam(learning_rate=0.5, backend="metal").apply_gradients(
            {"w": mx.ones((2, 3))}, params)
    assert runtime.kernel_runner() is None and sum(runner.launches.values()) == 1
    for name in [m for m in sys.modules if m.startswith("built_opts")]:
        monkeypatch.delitem(sys.modules, name)



@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_help_of_every_generated_class_renders_cleanly(spec):
    """``help(Cls)`` as a reader sees it: every constructor argument documented once under
    Args (one entry, wrapped, never one long line), a summary first, and each update
    method documented."""
    import importlib
    import inspect
    import pydoc

    module = importlib.import_module(f"generated.{spec.stem}")
    cls = next(v for v in vars(module).values()
               if isinstance(v, type) and v.__module__ == module.__name__)
    text = pydoc.plain(pydoc.render_doc(cls))
    doc = inspect.getdoc(cls)
    summary, _, rest = doc.partition("\n\nArgs:\n")
    assert summary and "\n" not in summary.strip() and summary in text
    assert max(len(line) for line in doc.splitlines()) <= 92
    entries = [line.split(" (")[0].strip() for line in rest.splitlines()
               if line.startswith("    ") and not line.startswith("        ")]
    arguments = [p for p in inspect.signature(cls).parameters]
    assert entries == arguments
    for name in ("_update_factored", "_update_unfactored"):
        if hasattr(cls, name):
            assert "with MLX ops" in inspect.getdoc(getattr(cls, name))


def test_the_adafactor_module_is_a_third_of_its_old_size():
    """3,571 lines when every static option specialised every function and each module
    carried its own runtime and kernel headers; the target was a third of that."""
    lines = (ROOT / "generated" / "adafactor.py").read_text().count("\n")
    assert lines <= 3571 // 3, lines
