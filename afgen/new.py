"""``afgen new``: start a spec variant from an existing spec."""
from __future__ import annotations

import re
from pathlib import Path

from afgen.backends.names import class_name_problem
from afgen.errors import Loc, SpecError, one_line
from afgen.spec import parse_spec_text


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def new_variant(name: str, source: str | Path, out: str | Path | None = None) -> Path:
    """Copy ``source`` to ``out`` (default ``<snake_case(name)>.yaml``) as optimizer
    ``name``. A variant is no longer the reference optimizer, so ``reference:`` goes.
    Nothing is written unless the variant is a valid spec."""
    problem = class_name_problem(name)
    if problem:
        raise SpecError(None, f"afgen new: {problem}")
    source = Path(source)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(Loc(str(source), 1, 1), f"cannot read spec: {exc}") from None
    parse_spec_text(text, str(source))
    target = Path(out) if out else Path(f"{snake_case(name)}.yaml")
    if target.exists() or target.is_symlink():  # a dangling symlink would write elsewhere
        raise SpecError(Loc(str(target), 1, 1), "refusing to overwrite an existing file "
                        "or symlink")
    text, count = re.subn(r"(?m)^optimizer:.*$", f"optimizer: {name}", text, count=1)
    if count != 1:
        raise SpecError(Loc(str(source), 1, 1), "the spec has no 'optimizer:' line")
    text = re.sub(r"(?m)^reference:.*\n", "", text)
    origin = one_line(source.as_posix())
    text = f"# {name}: a variant of {origin} (started with afgen new).\n" + text
    try:
        parse_spec_text(text, str(target))
    except SpecError as exc:  # located in a file that does not exist yet
        if exc.loc is None or exc.loc.path != str(target):
            raise
        raise SpecError(None, f"afgen new: cannot write {one_line(str(target))}: "
                        f"{exc.message}") from None
    with target.open("x", encoding="utf-8") as handle:  # never through a symlink made since
        handle.write(text)
    return target
