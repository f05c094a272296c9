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
    except (yaml.YAMLError, RecursionError) as exc:
        raise SpecError(Loc(path, 1, 1), f"invalid YAML: {exc}") from None
    if root is None:
        raise SpecError(Loc(path, 1, 1), "the spec is empty")
    constructor = yaml.SafeLoader("")
    return _convert(root, path, constructor, 0)


def _convert(node: yaml.Node, path: str, constructor: yaml.SafeLoader, depth: int) -> Node:
    loc = _loc(path, node.start_mark)
    if depth > MAX_DEPTH:
        raise SpecError(loc, f"YAML nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, yaml.ScalarNode):
        try:
            value = constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise SpecError(loc, f"invalid YAML scalar: {exc}") from None
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise SpecError(loc, f"unsupported YAML value of type {type(value).__name__}")
        return Node(value, loc, quoted=node.style in ("'", '"'))
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(item, path, constructor, depth + 1) for item in node.value], loc)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        key_locs: dict[str, Loc] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(path, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(key_loc, "mapping keys must be plain names")
            key = str(constructor.construct_object(key_node))
            if key in out:
                raise SpecError(key_loc, f"duplicate key '{key}' "
                                f"(first at line {key_locs[key].line})")
            key_locs[key] = key_loc
            out[key] = _convert(value_node, path, constructor, depth + 1)
        return Node(out, loc, key_locs=key_locs)
    raise SpecError(loc, "unsupported YAML construct (anchors, tags and aliases are not allowed)")
