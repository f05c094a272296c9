"""Jinja2 environment over the repository's ``templates/`` directory."""
from __future__ import annotations

from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent.parent.parent / "templates"


def environment() -> jinja2.Environment:
    if not TEMPLATE_DIR.is_dir():
        raise FileNotFoundError(f"afgen templates not found at {TEMPLATE_DIR}; install afgen "
                                "from its repository (pip install -e .)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
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
