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


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_generated_imports_only_mlx_and_stdlib(spec):
    tree = ast.parse((ROOT / "generated" / f"{spec.stem}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root == "mlx" or root in STDLIB, f"generated module imports {root}"


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
