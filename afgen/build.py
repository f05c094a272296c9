"""Build products: render the generated module, write it (with the runtime beside it), or
load it in memory."""
from __future__ import annotations

import ast
import importlib
import re
import sys
import types
from pathlib import Path

from afgen.backends.module import render_module
from afgen.errors import Loc, SpecError
from afgen.lower.compiler import Compiled, compile_spec
from afgen.spec import Spec, load_spec


def display_path(path: str | Path) -> str:
    """The spec path as written into generated files: relative to the cwd when possible,
    so a build is byte-identical wherever the repository lives."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def compile_path(spec_path: str | Path) -> Compiled:
    return compile_spec(load_spec(display_path(spec_path)))


def module_source(compiled: Compiled) -> str:
    source = render_module(compiled, compiled.spec.path)
    tree = ast.parse(source)
    _check_compiles(compiled.spec, tree)
    _check_class_name_is_free(compiled.spec, tree)
    return source


def _check_compiles(spec: Spec, tree: ast.Module) -> None:
    """Names from the spec meet the template's own in the generated module: a
    hyperparameter named like one of the constructor's keyword-only arguments is a
    duplicate argument, reported at the hyperparameter."""
    try:
        compile(tree, spec.path, "exec")
    except SyntaxError as exc:
        match = re.fullmatch(r"duplicate argument '(\w+)' in function definition", exc.msg)
        hyper = next((h for h in spec.hyperparameters if match and h.name == match[1]), None)
        if hyper is None:
            raise
        raise SpecError(hyper.loc, f"'{hyper.name}' is also an argument of the generated "
                        "constructor; choose another name") from None


def _check_class_name_is_free(spec: Spec, tree: ast.Module) -> None:
    """The optimizer class must be the only top-level binding of its name: a spec naming
    it ``Optional`` or ``BACKENDS`` would shadow what the module itself uses."""
    if _top_level_names(tree).count(spec.class_name) == 1:
        return
    match = re.search(r"(?m)^optimizer:[ \t]*", spec.text)
    line = spec.text.count("\n", 0, match.start()) + 1 if match else 1
    col = match.end() - match.start() + 1 if match else 1
    raise SpecError(Loc(spec.path, line, col), f"'{spec.class_name}' is a name the generated "
                    "module already uses; choose another class name")


def _top_level_names(tree: ast.Module) -> list[str]:
    """Every name a module binds at top level, once per binding."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names += [n.id for n in ast.walk(node)
                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    return names


def output_path(compiled: Compiled, out_dir: str | Path) -> Path:
    """``out_dir/<spec stem>.py`` (the stem is a validated identifier)."""
    return _inside(Path(out_dir), f"{compiled.spec.stem}.py")


def _inside(out_dir: Path, name: str) -> Path:
    """``out_dir/name`` resolved, refused if a symlink (even a dangling one) sends it out
    of ``out_dir``: nothing afgen writes may land outside the chosen directory."""
    try:
        root, target = out_dir.resolve(), (out_dir / name).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ValueError(f"cannot resolve {out_dir / name}: {exc}") from None
    if target.parent != root:
        raise ValueError(f"refusing to write {out_dir / name}: it is a symlink to {target}, "
                         f"outside {out_dir}")
    return target


# The generated modules import the runtime as ``from . import afgen_runtime``.
RUNTIME_MODULE = "afgen_runtime"
# The package an in-memory module lives in: its ``afgen_runtime`` is afgen.runtime itself,
# so every loaded module shares one runtime (and one kernel runner) with afgen's checks.
LOADED_PACKAGE = "afgen_loaded"


def runtime_source() -> str:
    """The exact text of afgen/runtime.py, written beside every generated module."""
    return (Path(__file__).resolve().parent / "runtime.py").read_text()


def write_module(compiled: Compiled, out_dir: str | Path) -> Path:
    """Render first (a spec error must not leave files behind), then write
    ``out_dir/<stem>.py``, the runtime it imports and the package's ``__init__.py`` if it
    has none."""
    source = module_source(compiled)
    target = output_path(compiled, out_dir)
    init = _inside(Path(out_dir), "__init__.py")
    runtime_target = _inside(Path(out_dir), f"{RUNTIME_MODULE}.py")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not init.exists():
        init.write_text('"""Optimizers generated by afgen from specs/."""\n')
    text = runtime_source()
    if not runtime_target.exists() or runtime_target.read_text() != text:
        runtime_target.write_text(text)
    target.write_text(source)
    return target


def _loaded_package() -> types.ModuleType:
    """The package of in-memory modules, registered once in ``sys.modules`` so their
    relative import of the runtime resolves to afgen.runtime."""
    runtime = importlib.import_module("afgen.runtime")  # MLX is imported only when needed
    package = sys.modules.get(LOADED_PACKAGE)
    if package is None:
        package = types.ModuleType(LOADED_PACKAGE)
        package.__path__ = []
        sys.modules[LOADED_PACKAGE] = package
    setattr(package, RUNTIME_MODULE, runtime)
    sys.modules[f"{LOADED_PACKAGE}.{RUNTIME_MODULE}"] = runtime
    return package


def load_module(compiled: Compiled) -> types.ModuleType:
    """Execute the rendered module in memory (our own rendered text, never spec text)."""
    package = _loaded_package()
    module = types.ModuleType(f"{package.__name__}.{compiled.spec.stem}")
    module.__package__ = package.__name__
    module.__file__ = f"<afgen {compiled.spec.path}>"
    exec(compile(module_source(compiled), module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module


def load_class(spec_path: str | Path) -> type:
    compiled = compile_path(spec_path)
    return getattr(load_module(compiled), compiled.spec.class_name)
