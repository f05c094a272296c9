"""The command line on misuse: one clear line, exit 2, nothing written; a closed pipe is
not an error."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from afgen.backends.names import MODULE_NAMES, check_spec_names
from afgen.build import load_module, module_source
from afgen.cli import main
from afgen.lower.compiler import compile_spec
from afgen.spec import parse_spec_text

ROOT = Path(__file__).resolve().parent.parent
SOURCE = str(ROOT / "specs" / "adam.yaml")


@pytest.mark.parametrize("name", ["Callable", "Tuple", "THREADS", "None", "ValueError",
                                  "lower", "Foo\n", "Ädam", "My-Adam", ""])
def test_new_refuses_a_name_that_cannot_build(tmp_path, capsys, name):
    out = tmp_path / "variant.yaml"
    assert main(["new", name, "--from", SOURCE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("afgen new: ") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("out", ["my-adam.yaml", "import.yaml"])
def test_new_refuses_an_output_name_that_cannot_name_a_module(tmp_path, capsys, out):
    assert main(["new", "MyAdam", "--from", SOURCE, "--out", str(tmp_path / out)]) == 2
    assert "must be a Python identifier" in capsys.readouterr().err
    assert not (tmp_path / out).exists()


@pytest.mark.parametrize("name", ["MyAdam", "Optimizer"])
def test_new_variant_builds(tmp_path, name):
    """``Optimizer`` too: the generated module subclasses the runtime's class and binds no
    name ``Optimizer`` of its own, so a variant may take it."""
    out = tmp_path / "my_adam.yaml"
    assert main(["new", name, "--from", SOURCE, "--out", str(out)]) == 0
    compiled = compile_spec(parse_spec_text(out.read_text(), str(out)))
    cls = getattr(load_module(compiled), name)
    params = {"w": mx.ones((3,))}
    assert not mx.array_equal(cls(learning_rate=0.1).apply_gradients(params, params)["w"],
                              params["w"])


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names |= {n.id for n in ast.walk(node)
                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


@pytest.mark.parametrize("stem", ["adam", "adafactor_optax"])
def test_module_names_cover_what_the_generated_module_binds(stem):
    """A spec name (a local of the update, or the class name) that the generated module
    also binds at top level is refused when the spec is compiled, and ``afgen new``
    refuses such a class name, only if MODULE_NAMES knows every name the module binds
    (those starting with '_' no spec name can take)."""
    source = ROOT / "specs" / f"{stem}.yaml"
    spec = parse_spec_text(source.read_text(), f"{stem}.yaml")
    names = _top_level_names(ast.parse(module_source(compile_spec(spec))))
    public = {n for n in names - {spec.class_name} if not n.startswith("_")}
    assert public <= MODULE_NAMES, sorted(public - MODULE_NAMES)
    check_spec_names(spec)


@pytest.mark.parametrize("steps", ["0", "-3", "x"])
def test_verify_needs_at_least_one_step(capsys, steps):
    with pytest.raises(SystemExit) as info:
        main(["verify", SOURCE, "--steps", steps])
    assert info.value.code == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.parametrize("lines", [3, 0])
def test_show_into_a_pipe_closed_early_exits_quietly(lines):
    """``afgen show spec | head -3``: the reader leaves after three lines (the output
    may still fit the pipe's buffer); ``head -n 0`` leaves before afgen writes anything,
    so the pipe is surely broken when it does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    show = subprocess.Popen([sys.executable, "-m", "afgen.cli", "show",
                             str(ROOT / "specs" / "adafactor.yaml")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-n", str(lines)], stdin=show.stdout, capture_output=True,
                          text=True)
    show.stdout.close()  # only head read it: the pipe breaks when head exits
    err = show.stderr.read().decode()
    assert show.wait(timeout=120) in (0, 141), err
    assert err == ""
    assert head.stdout.count("\n") == lines
    assert head.stdout.startswith("Adafactor from " if lines else "")
