"""Mutants of rendered kernel text, for mutation-testing the kernel verification.

Generic over the text: a small C tokenizer (comments blanked first, so comments are never
mutated) finds the places to mutate, whatever arithmetic the lowering prints.

- ``operator``: a binary ``+ - * / %`` becomes each other of ``+ - * /``; a compound
  ``+= -= *= /=`` each other compound.
- ``relation``: ``< <= > >= == !=`` becomes each other relation (template brackets such
  as ``afg_store<T>(`` are not relations).
- ``int``: an integer literal ``n`` becomes ``n + 1`` and ``n - 1``.
- ``float``: a float literal ``v`` becomes ``v + 1`` and ``2 v`` (``-1`` for zero).
- ``index``: a subscript ``[e]`` becomes ``[e + 1]`` and ``[e - 1]``; inside subscripts
  and index definitions (``const uint m = ...;``) a tile variable becomes the one it is
  easiest to confuse with (M/N, m/j, rb/cc, nrb/ncc, r/c, lane/warp, b/rb, lid/lane).
  The same edits apply to a target's prologue (the thread and group indices).
- ``delete``: a statement that is not a declaration (assignment, call, ``continue``) is
  removed (deleting a declaration only makes a compile error).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

TOKEN = re.compile(r"""
    (?P<float>\d+\.\d*(?:[eE][-+]?\d+)?f?|\d+[eE][-+]?\d+f?)
  | (?P<int>\d+u?)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<op><<=|>>=|<=|>=|==|!=|&&|\|\||\+\+|--|\+=|-=|\*=|/=|->|::|<<|>>
         |[-+*/%<>=!&|^~?:;,.()\[\]{}])
  | (?P<space>\s+)
""", re.X)

ARITHMETIC = ("+", "-", "*", "/")
COMPOUND = ("+=", "-=", "*=", "/=")
RELATIONS = ("<", "<=", ">", ">=", "==", "!=")
CONFUSABLE = {"M": "N", "N": "M", "m": "j", "j": "m", "rb": "cc", "cc": "rb", "nrb": "ncc",
              "ncc": "nrb", "r": "c", "c": "r", "afg_lane": "afg_warp", "afg_warp": "afg_lane",
              "b": "rb", "afg_lid": "afg_lane"}
TYPES = {"float", "uint", "int", "unsigned", "bool", "half", "bfloat16_t", "T", "S", "const",
         "__shared__", "threadgroup", "afg_shared"}
DECLARATION = re.compile(r"^\s*(?:const\s+)?(?:__shared__\s+|threadgroup\s+|afg_shared\s+)?"
                         r"(?:float|uint|int|unsigned int|unsigned|bool|T|S)\s+\w+\s*[\[=;]")


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class Mutant:
    """One textual change of a kernel body: ``source`` is the whole mutated body."""

    kernel: str
    dialect: str
    kind: str
    line: int  # 1-based, in the body
    before: str  # the original line, stripped
    after: str  # the mutated line, stripped
    source: str

    @property
    def label(self) -> str:
        return f"{self.dialect}:{self.kernel}:{self.line} [{self.kind}] {self.after}"


def blank_comments(text: str) -> str:
    """Comments as spaces, offsets unchanged."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text,
                  flags=re.S)


def tokens(text: str) -> list[Token]:
    code = blank_comments(text)
    out, pos = [], 0
    while pos < len(code):
        m = TOKEN.match(code, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {code[pos:pos + 20]!r}")
        if m.lastgroup != "space":
            out.append(Token(m.lastgroup, m.group(0), pos))
        pos = m.end()
    return out


def _template_brackets(toks: list[Token]) -> set[int]:
    """Indices of ``<`` and ``>`` that enclose a template argument: ``name<Arg>(``."""
    out = set()
    for i in range(1, len(toks) - 3):
        if (toks[i].text == "<" and toks[i - 1].kind == "ident" and toks[i + 1].kind == "ident"
                and toks[i + 2].text == ">" and toks[i + 3].text == "("):
            out |= {i, i + 2}
    return out


def _is_binary(toks: list[Token], i: int) -> bool:
    prev = toks[i - 1] if i else None
    if prev is None:
        return False
    if prev.kind in ("int", "float"):
        return True
    if prev.kind == "ident":
        return prev.text not in TYPES and prev.text != "return"
    return prev.text in (")", "]")


def _subscripts(toks: list[Token]) -> list[tuple[int, int]]:
    """(open, close) token indices of ``[...]`` subscripts (not array declarations)."""
    out, stack = [], []
    for i, t in enumerate(toks):
        if t.text == "[":
            stack.append(i)
        elif t.text == "]" and stack:
            j = stack.pop()
            declared = j >= 2 and toks[j - 2].kind == "ident" and toks[j - 2].text in TYPES
            if not declared:
                out.append((j, i))
    return out


def _index_definitions(text: str, toks: list[Token]) -> list[tuple[int, int]]:
    """Token ranges of right-hand sides of ``const uint name = ...;`` definitions."""
    out = []
    for m in re.finditer(r"const (?:uint|unsigned int) \w+ = ([^;]*);", blank_comments(text)):
        inside = [i for i, t in enumerate(toks) if m.start(1) <= t.start < m.end(1)]
        if inside:
            out.append((inside[0] - 1, inside[-1] + 1))
    return out


def _float_text(value: float) -> str:
    text = repr(float(value))
    return f"{text}f"


def edits(text: str) -> list[tuple[str, int, int, str]]:
    """Every (kind, start, end, replacement) edit of ``text``, in a stable order."""
    toks = tokens(text)
    templates = _template_brackets(toks)
    out: list[tuple[str, int, int, str]] = []
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text in (*ARITHMETIC, "%") and _is_binary(toks, i):
            out += [("operator", t.start, t.end, o) for o in ARITHMETIC if o != t.text]
        elif t.kind == "op" and t.text in COMPOUND:
            out += [("operator", t.start, t.end, o) for o in COMPOUND if o != t.text]
        elif t.kind == "op" and t.text in RELATIONS and i not in templates:
            out += [("relation", t.start, t.end, o) for o in RELATIONS if o != t.text]
        elif t.kind == "int":
            value, suffix = int(t.text.rstrip("u")), "u" if t.text.endswith("u") else ""
            out += [("int", t.start, t.end, f"{v}{suffix}") for v in (value + 1, value - 1)
                    if v >= 0]
        elif t.kind == "float":
            value = float(t.text.rstrip("f"))
            for v in (value + 1, 2 * value if value else -1.0):
                out.append(("float", t.start, t.end, _float_text(v)))
    for open_, close in _subscripts(toks):
        a, b = toks[open_].end, toks[close].start
        out += [("index", a, b, f"{text[a:b]} + 1"), ("index", a, b, f"{text[a:b]} - 1")]
    ranges = _subscripts(toks) + _index_definitions(text, toks)
    seen = set()
    for open_, close in ranges:
        for t in toks[open_ + 1:close]:
            if t.kind == "ident" and t.text in CONFUSABLE and t.start not in seen:
                seen.add(t.start)
                out.append(("index", t.start, t.end, CONFUSABLE[t.text]))
    out += _deletions(text)
    return out


def _deletions(text: str) -> list[tuple[str, int, int, str]]:
    out, pos = [], 0
    code = blank_comments(text)
    for line in code.splitlines(keepends=True):
        body = line.strip()
        if (body.endswith(";") and not DECLARATION.match(line)
                and not body.startswith(("for ", "for(", "if ", "if(", "return", "}"))):
            out.append(("delete", pos + line.index(body), pos + line.index(body) + len(body), ""))
        pos += len(line)
    return out


def mutants(kernel: str, dialect: str, body: str) -> list[Mutant]:
    """Every mutant of one kernel body."""
    lines = body.splitlines()
    out = []
    for kind, start, end, new in edits(body):
        source = body[:start] + new + body[end:]
        line = body.count("\n", 0, start) + 1
        after = source.splitlines()[line - 1].strip() if new or kind != "delete" else ""
        out.append(Mutant(kernel, dialect, kind, line, lines[line - 1].strip(), after, source))
    return out


def sample(all_mutants: list[Mutant], per_kind: int, seed: int) -> list[Mutant]:
    """At most ``per_kind`` mutants of each (dialect, kernel, kind), drawn with a fixed
    seed, in a stable order: every kernel and every kind of mutation is represented."""
    groups: dict[tuple[str, str, str], list[Mutant]] = {}
    for m in all_mutants:
        groups.setdefault((m.dialect, m.kernel, m.kind), []).append(m)
    rng = random.Random(seed)
    picked = []
    for key in sorted(groups):
        group = groups[key]
        picked += group if len(group) <= per_kind else rng.sample(group, per_kind)
    return picked
