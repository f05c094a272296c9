"""Errors that carry a source location: every spec problem reads ``path:line:col: message``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A 1-based position in a spec file; col 1 is the first character of a line."""

    path: str
    line: int
    col: int

    def shifted(self, line_offset: int, col_offset: int) -> Loc:
        """Position of a character inside a scalar that starts at ``self``."""
        if line_offset == 0:
            return Loc(self.path, self.line, self.col + col_offset)
        return Loc(self.path, self.line + line_offset, col_offset + 1)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x1b``): an error
    quotes spec text (keys, YAML's own messages), and it must stay one line on a terminal
    (no control sequences) for ``path:line:col: message`` to hold."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SpecError(Exception):
    """A problem with a spec, reported at the place in the file that causes it."""

    def __init__(self, loc: Loc | None, message: str):
        self.loc = loc
        self.message = message
        super().__init__(one_line(f"{loc}: {message}" if loc else message))
