"""YAML -> plain data that remembers where each value came from.

PyYAML's safe composer gives nodes with marks; we walk them ourselves so that every
value (and every mapping key) keeps its line and column for error messages, and so
duplicate keys are an error instead of a silent override.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from afgen.errors import Loc, SpecError

MAX_DEPTH = 32
_CORE = "tag:yaml.org,2002:"
SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
COLLECTION_TAGS = {_CORE + "seq", _CORE + "map"}
# What constructing a core scalar raises for a bad explicit tag ("!!int abc", "!!bool x")
# or a number too long for int() (Python limits int(str) to 4300 digits).
_SCALAR_ERRORS = (yaml.YAMLError, ValueError, KeyError, TypeError, AttributeError)


@dataclass
class Node:
    """A YAML value with its location. ``value`` is a scalar, a list of Nodes or a dict
    of str -> Node; ``key_locs`` gives the location of each mapping key."""

    value: Any
    loc: Loc
    quoted: bool = False
    key_locs: dict[str, Loc] = field(default_factory=dict)

    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    def is_list(self) -> bool:
        return isinstance(self.value, list)


def _loc(path: str, mark: yaml.Mark) -> Loc:
    return Loc(path, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, path: str) -> Node:
    """Parse one YAML document into located Nodes; YAML syntax errors become SpecErrors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _loc(path, mark) if mark else Loc(path, 1, 1)
        raise SpecError(loc, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, path) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise SpecError(Loc(path, 1, 1), f"invalid YAML: {exc}") from None
    if root is None:
        raise SpecError(Loc(path, 1, 1), "the spec is empty")
    return _Converter(path).convert(root, 0)


def _reader_error(exc: yaml.reader.ReaderError, text: str, path: str) -> SpecError:
    """A character YAML refuses (NUL, control characters): located from its offset,
    which is all ReaderError gives (its str() spans two lines)."""
    line = text.count("\n", 0, exc.position) + 1
    col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "?")
    return SpecError(Loc(path, line, col), f"invalid YAML: unacceptable character #x{char:04x} "
                     f"({exc.reason})")


def _short(tag: str) -> str:
    """``tag:yaml.org,2002:python/name:x`` as it was written: ``!!python/name:x``."""
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class _Converter:
    """Walks composed YAML nodes once each. PyYAML's composer resolves an alias to the
    very node object of its anchor, so a node met twice is an alias: refusing it keeps
    alias bombs (billion laughs) from expanding exponentially here."""

    def __init__(self, path: str):
        self.path = path
        self.constructor = yaml.SafeLoader("")
        self.seen: set[int] = set()

    def convert(self, node: yaml.Node, depth: int) -> Node:
        loc = _loc(self.path, node.start_mark)
        if depth > MAX_DEPTH:
            raise SpecError(loc, f"YAML nested deeper than {MAX_DEPTH} levels")
        if id(node) in self.seen:
            raise SpecError(loc, "YAML anchors and aliases are not allowed")
        self.seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc)
        if node.tag not in COLLECTION_TAGS:
            raise SpecError(loc, f"YAML tags are not allowed (found '{_short(node.tag)}')")
        if isinstance(node, yaml.SequenceNode):
            return Node([self.convert(item, depth + 1) for item in node.value], loc)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, depth)
        raise SpecError(loc, "unsupported YAML construct")

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Node:
        if node.tag not in SCALAR_TAGS:
            raise SpecError(loc, f"YAML tags are not allowed (found '{_short(node.tag)}')")
        try:
            value = self.constructor.construct_object(node, deep=True)
        except _SCALAR_ERRORS as exc:
            raise SpecError(loc, f"invalid YAML scalar: {exc}") from None
        return Node(value, loc, quoted=node.style in ("'", '"'))

    def _mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> Node:
        out: dict[str, Node] = {}
        key_locs: dict[str, Loc] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(self.path, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(key_loc, "mapping keys must be plain names")
            key = str(self._scalar(key_node, key_loc).value)
            if key in out:
                raise SpecError(key_loc, f"duplicate key '{key}' "
                                f"(first at line {key_locs[key].line})")
            key_locs[key] = key_loc
            out[key] = self.convert(value_node, depth + 1)
        return Node(out, loc, key_locs=key_locs)
