"""Jinja2 environment over afgen's templates.

The templates live in ``templates/`` at the top of the repository; a wheel installs them as
the package data ``afgen/templates/`` (see pyproject.toml), so an installed afgen finds them
through its own package and a source checkout (or an editable install) next to it.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

# A file every template directory has: a directory named ``templates`` without it (another
# project's, next to an installed afgen) is not ours.
MARKER = "module.py.j2"


def template_dir() -> Path:
    """The installed package data, else the repository's ``templates/`` beside ``afgen/``."""
    package = Path(str(resources.files("afgen")))
    candidates = (package / "templates", package.parent / "templates")
    for candidate in candidates:
        if (candidate / MARKER).is_file():
            return candidate
    raise FileNotFoundError("afgen templates not found (looked in "
                            f"{' and '.join(str(c) for c in candidates)}); reinstall afgen "
                            "from its repository or a wheel built from it")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["pyliteral"] = python_string_literal
    env.filters["dedent2"] = lambda text: "\n".join(
        line[2:] if line.startswith("  ") else line for line in str(text).split("\n"))
    return env


def python_string_literal(text: str) -> str:
    """Kernel text as a readable triple-quoted Python literal (repr when it cannot be)."""
    if '"""' in text or "\\" in text or text.endswith('"'):
        return repr(text)
    return '"""\\\n' + text + '"""'



def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
