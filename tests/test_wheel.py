"""afgen installs: a wheel built from the repository, installed into a fresh virtual
environment, builds a spec in an empty directory and the result trains a model.

The wheel is built from a copy of the sources (a build inside the repository would leave
``build/`` there, whose stale files a later wheel could pick up) without build isolation,
so no network is needed. The new environment sees the current one's dependencies through a
``.pth`` file (installing MLX, SymPy and NumPy again would download 100+ MB); its own
site-packages comes first, and the test checks that the afgen it runs is the wheel's.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the wheel is built from: the project file, the README it names, the package and the
# templates it maps in as package data.
SOURCES = ("pyproject.toml", "README.md", "afgen", "templates")
SPEC = ROOT / "specs" / "adam.yaml"

# Run by the new environment's python in the build directory: import the generated module
# (from ./generated, where `afgen build` wrote it), take one step on a small model with it
# and with mlx.optimizers.Adam from the same start, and report where afgen came from.
STEP = """
import json, sys
import afgen, afgen.backends.render as render
import mlx.core as mx, mlx.nn as nn, mlx.optimizers as optim
from mlx.utils import tree_flatten
from generated.adam import Adam

def step(opt):
    mx.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = mx.random.normal((16, 4)), mx.random.normal((16, 2))
    loss = lambda m: nn.losses.mse_loss(m(x), y)
    before = dict(tree_flatten(model.parameters()))
    _, grads = nn.value_and_grad(model, loss)(model)
    opt.update(model, grads)
    mx.eval(model.parameters())
    after = dict(tree_flatten(model.parameters()))
    return before, after

before, ours = step(Adam(learning_rate=1e-2))
_, mlx_adam = step(optim.Adam(learning_rate=1e-2))
print(json.dumps({
    "afgen": afgen.__file__,
    "templates": str(render.template_dir()),
    "executable": sys.executable,
    "moved": min(float(mx.abs(ours[k] - before[k]).max()) for k in ours),
    "vs_mlx": max(float(mx.abs(ours[k] - mlx_adam[k]).max()) for k in ours),
}))
"""


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: the repository must not be importable from the new environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INDEX"] = "1"
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(out), str(src)], cwd=tmp)
    (wheel,) = out.glob("afgen-*.whl")
    return wheel


def _shipped_files() -> set[str]:
    """Every file afgen reads or runs: the package's modules and data, and the templates
    (installed as afgen/templates/)."""
    package = {f"afgen/{p.relative_to(ROOT / 'afgen').as_posix()}"
               for p in (ROOT / "afgen").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    templates = {f"afgen/templates/{p.name}" for p in (ROOT / "templates").iterdir()
                 if p.is_file()}
    return package | templates


def _dependency_dirs() -> list[str]:
    """The current environment's site-packages, where MLX, Jinja2, SymPy... live."""
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def test_wheel_installs_builds_a_spec_and_trains(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        missing = _shipped_files() - set(archive.namelist())
    assert not missing, f"the wheel lacks {sorted(missing)}: list them in pyproject.toml"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own_site = Path(_run([str(python), "-c", "import sysconfig; "
                          "print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (own_site / "afgen_test_dependencies.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--no-index", str(wheel)], cwd=tmp_path)

    work = (tmp_path / "work").resolve()
    work.mkdir()
    shutil.copy2(SPEC, work / SPEC.name)
    printed = _run([str(env_dir / "bin" / "afgen"), "build", SPEC.name, "--no-verify"], cwd=work)
    # The default output directory is ./generated, a package: the README says so.
    assert f"wrote {work / 'generated' / 'adam.py'}" in printed.splitlines(), printed
    assert (work / "generated" / "adam.py").is_file()
    assert (work / "generated" / "__init__.py").is_file()

    result = json.loads(_run([str(python), "-c", STEP], cwd=work).strip().splitlines()[-1])
    installed = (own_site / "afgen").resolve()
    assert Path(result["afgen"]).resolve().parent == installed, result
    assert Path(result["templates"]).resolve() == installed / "templates", result
    assert Path(result["executable"]).parent.resolve() == (env_dir / "bin").resolve(), result
    assert result["moved"] > 0, "the optimizer step left a parameter unchanged"
    assert result["vs_mlx"] < 1e-6, "one step differs from mlx.optimizers.Adam"
