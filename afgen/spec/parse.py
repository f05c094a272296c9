"""Spec file -> validated Spec. Every problem is a SpecError at its file:line:col."""
from __future__ import annotations

import dataclasses
import keyword
import math
import re
from pathlib import Path

import sympy
from sympy.logic.inference import satisfiable

from afgen.errors import Loc, SpecError
from afgen.spec.expressions import (
    CHECK_FORMS,
    DYN_BOOL,
    FUNCTIONS,
    MAX_INT_LITERAL,
    NUM,
    STATIC_BOOL,
    STATIC_INT,
    ForwardReference,
    Typed,
    parse_assignment,
    parse_expression,
)
from afgen.spec.model import (
    DTYPE_EPS,
    FACTOR_AXES,
    FACTORED,
    GRAD,
    HYPER_KINDS,
    LAYOUT_COLS,
    LAYOUT_NDIM,
    LAYOUT_ROWS,
    MAX_TUPLE,
    PARAM,
    STEP,
    TUPLE_KINDS,
    Branch,
    Equation,
    Hyperparameter,
    MatrixBlock,
    Repeat,
    Requirement,
    Spec,
    Statement,
    StateTensor,
    value_symbols,
)
from afgen.spec.ops import to_sympy
from afgen.spec.shapes import ShapeClass
from afgen.spec.yamlnodes import Node, parse_yaml

TOP_KEYS = {"optimizer": True, "summary": False, "reference": False, "hyperparameters": True,
            "requires": False, "layout": False, "state": True, "update": True}
HYPER_KEYS = {"type", "default", "doc", "names", "check", "example"}
STATE_KEYS = {"shape", "when", "init", "doc"}
# Names are matched with ``fullmatch``: ``$`` also matches before a final newline, so
# ``re.match(r"^x$", "x\n")`` accepts a name that breaks the generated module.
IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")
# The language's own words; what a target language reserves is the backends' rule
# (afgen/backends/names.py), checked when a spec is compiled.
RESERVED = {GRAD, PARAM, STEP, DTYPE_EPS, FACTORED, LAYOUT_NDIM, LAYOUT_ROWS, LAYOUT_COLS, "has"}
MAX_STATEMENTS = 500
MAX_REPEAT = 64  # a literal repeat count
DEFAULT_PATH = "<spec>"
# Nodes in one value once earlier names are substituted (every binary operation is one:
# shipped specs reach about 240), and their nesting (about 30). SymPy's time grows fast
# with both.
MAX_INLINED_NODES = 10000
MAX_INLINED_DEPTH = 48


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(Loc(str(path), 1, 1), f"cannot read spec: {exc}") from None
    return parse_spec_text(text, str(path))


def parse_spec_text(text: str, path: str = DEFAULT_PATH) -> Spec:
    """Validate spec text (the whole pipeline's entry point for in-memory variants)."""
    root = parse_yaml(text, path)
    return _SpecBuilder(root, text, path).build()


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name the generated optimizer class, or None."""
    if not CLASS_NAME.fullmatch(name):
        return (f"'{name}' is not a class name (an uppercase ASCII letter, then letters, "
                "digits or '_', like 'Adafactor')")
    return None


def _module_stem(path: str) -> str:
    """The file name without ``.yaml``: it names the generated module and prefixes its
    kernels, so it must be an identifier (which also keeps ``out/<stem>.py`` inside
    ``out``). In-memory text without a path is the module ``spec``. The path itself is
    quoted in the module's docstring, so it cannot hold what would end or escape it."""
    stem = "spec" if path == DEFAULT_PATH else Path(path).stem
    if not (stem.isascii() and stem.isidentifier()) or keyword.iskeyword(stem):
        raise SpecError(Loc(path, 1, 1), f"the spec's file name '{stem}' must be a Python "
                        "identifier (it names the generated module), e.g. my_optimizer.yaml")
    if '"' in path or "\\" in path or not path.isprintable():
        raise SpecError(Loc(path, 1, 1), "the spec's path cannot contain quotes, backslashes "
                        "or control characters (the generated module quotes it)")
    return stem


def _expect_map(node: Node, what: str) -> dict[str, Node]:
    if not node.is_map():
        raise SpecError(node.loc, f"{what} must be a mapping")
    return node.value


def _expect_list(node: Node, what: str) -> list[Node]:
    if not node.is_list():
        raise SpecError(node.loc, f"{what} must be a list")
    return node.value


def _expect_str(node: Node, what: str) -> str:
    if not isinstance(node.value, str):
        raise SpecError(node.loc, f"{what} must be a string, got {_type_word(node.value)}")
    return node.value


def _doc_text(node: Node, what: str) -> str:
    """Free text that the generated module quotes in docstrings (summary, reference,
    docs): text that could close a docstring or start an escape would break the module
    or, worse, turn spec text into code that runs when it is imported."""
    text = _expect_str(node, what)
    if '"""' in text or "\\" in text or text.endswith('"'):
        raise SpecError(node.loc, f"{what} cannot contain '\"\"\"' or a backslash, or end "
                        "with '\"' (it is written into the generated module's docstrings)")
    if not all(c.isprintable() or c == "\n" for c in text):
        raise SpecError(node.loc, f"{what} must be printable text")
    return text


def _type_word(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _check_keys(node: Node, allowed: set[str], what: str, required: set[str] = frozenset()
                ) -> None:
    for key in node.value:
        if key not in allowed:
            raise SpecError(node.key_locs[key], f"unknown key '{key}' in {what} "
                            f"(expected one of: {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in node.value:
            raise SpecError(node.loc, f"{what} is missing the required key '{key}'")


def _number(node: Node, what: str) -> float:
    """A finite float from YAML; accepts '1e-30' (which YAML 1.1 reads as a string).
    Infinities and NaN are refused: they would be rendered as the bare names ``inf`` and
    ``nan`` in the generated module."""
    value = node.value
    if isinstance(value, bool):
        raise SpecError(node.loc, f"{what} must be a number, got {_type_word(value)}")
    number = None
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise SpecError(node.loc, f"{what} must be a number, got {_type_word(value)}")
    try:
        number = float(number)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SpecError(node.loc, f"{what} must be a finite number that fits a float")
    return number


def _integer(node: Node, what: str) -> int:
    """An int from YAML (an int hyperparameter sizes things, so 128.0 is not accepted)."""
    if isinstance(node.value, int) and not isinstance(node.value, bool):
        if abs(node.value) > MAX_INT_LITERAL:  # MLX has no int64 beyond +-2**63
            raise SpecError(node.loc, f"{what} must be at most 2**53 in magnitude")
        return node.value
    raise SpecError(node.loc, f"{what} must be an integer, got {_type_word(node.value)}")


def _expr_col_shift(node: Node) -> int:
    return 1 if node.quoted else 0


class _Scope:
    """Names visible to an expression, with their kinds and shape classes."""

    def __init__(self, names: dict[str, Typed], optional: dict[str, sympy.Symbol],
                 later: dict[str, int] | None = None):
        self.names = names
        self.optional = optional
        self.later = later or {}

    def lookup(self, name: str) -> Typed | None:
        found = self.names.get(name)
        if found is None and name in self.later:
            raise ForwardReference(name, self.later[name])
        return found

    def has_predicate(self, name: str) -> sympy.Symbol | None:
        return self.optional.get(name)

    def child(self, extra: dict[str, Typed]) -> _Scope:
        return _Scope({**self.names, **extra}, self.optional, self.later)


ASSIGNED = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=[^=]")


def _assigned_lines(node: Node, out: dict[str, int]) -> dict[str, int]:
    """Every name assigned anywhere in an update block, with its first line."""
    if node.is_list():
        for item in node.value:
            _assigned_lines(item, out)
    elif node.is_map():
        if "matrix" in node.value and isinstance(node.value["matrix"].value, str):
            out.setdefault(node.value["matrix"].value, node.loc.line)
        for key in ("then", "else"):
            if key in node.value:
                _assigned_lines(node.value[key], out)
    elif isinstance(node.value, str):
        match = ASSIGNED.match(node.value)
        if match:
            out.setdefault(match.group(1), node.loc.line)
    return out


def _never_none(h: Hyperparameter) -> bool:
    """Whether every value of ``h`` is a number (none may be None)."""
    return not h.is_optional and not h.optional_components


def _check_defaults_meet(condition: sympy.Basic, hypers: list[Hyperparameter],
                         loc: Loc) -> None:
    """A requirement on values that the defaults break would make the constructor raise
    whenever those options are left out."""
    values = value_symbols(hypers, {h.name: h.default for h in hypers})
    if condition.free_symbols <= set(values) and condition.subs(values) is sympy.false:
        raise SpecError(loc, "the defaults do not meet this requirement, so every "
                        "constructor call that leaves these options out would raise")


class _SpecBuilder:
    def __init__(self, root: Node, text: str, path: str):
        self.root = root
        self.text = text
        self.path = path
        # name -> (size, depth) of its value once earlier names are substituted
        self.inlined: dict[str, tuple[int, int]] = {}

    def build(self) -> Spec:
        stem = _module_stem(self.path)
        top = _expect_map(self.root, "the spec")
        _check_keys(self.root, set(TOP_KEYS), "the spec",
                    {k for k, required in TOP_KEYS.items() if required})
        class_name = _expect_str(top["optimizer"], "'optimizer'")
        problem = class_name_problem(class_name)
        if problem:
            raise SpecError(top["optimizer"].loc, problem)
        hypers = self._hyperparameters(top["hyperparameters"])
        optional = {h.name: h.has_symbol for h in hypers if h.is_optional}
        optional.update({c: sympy.Symbol(f"has_{c}") for h in hypers
                         for c in h.optional_components})
        static = {h.name: Typed(sympy.Symbol(h.name), STATIC_BOOL) for h in hypers if h.is_static}
        static[FACTORED] = Typed(sympy.Symbol(FACTORED), STATIC_BOOL)
        numbers = {n: Typed(sympy.Symbol(n, real=True), NUM)
                   for h in hypers if not h.is_static for n in h.value_names}
        hypers = self._attach_checks(top["hyperparameters"], hypers, numbers, optional)
        static_scope = _Scope(static, optional)
        # A requirement may also read the values of numeric hyperparameters that are
        # never None (checked by the constructor on the values given).
        valued = {n: numbers[n] for h in hypers if h.kind in ("float", "int", *TUPLE_KINDS)
                  and _never_none(h) for n in h.value_names}
        requires = self._requires(top.get("requires"), _Scope({**static, **valued}, optional),
                                  hypers)
        factored_when, factored_text, factor_axes = (
            self._layout(top["layout"], hypers) if "layout" in top
            else (sympy.false, "never", "last"))
        state = self._state(top["state"], static_scope, {h.name for h in hypers} |
                            {n for h in hypers for n in h.value_names})
        names: dict[str, Typed] = {**static, **numbers,
                                   GRAD: Typed(sympy.Symbol(GRAD, real=True), NUM, ShapeClass.FULL),
                                   PARAM: Typed(sympy.Symbol(PARAM, real=True), NUM,
                                                ShapeClass.FULL),
                                   STEP: Typed(sympy.Symbol(STEP, real=True), NUM),
                                   DTYPE_EPS: Typed(sympy.Symbol(DTYPE_EPS, real=True), NUM),
                                   LAYOUT_ROWS: Typed(sympy.Symbol(LAYOUT_ROWS, real=True), NUM),
                                   LAYOUT_COLS: Typed(sympy.Symbol(LAYOUT_COLS, real=True), NUM)}
        for s in state:
            names[s.name] = Typed(sympy.Symbol(s.name, real=True), NUM, s.shape)
        protected = set(static) | set(numbers) | {GRAD, STEP, DTYPE_EPS, LAYOUT_ROWS,
                                                  LAYOUT_COLS}
        self.numbers = numbers
        self.int_hypers = {h.name for h in hypers if h.kind == "int"}
        self.matrix_count = 0
        update_node = top["update"]
        scope = _Scope(names, optional, _assigned_lines(update_node, {}))
        statements, _ = self._statements(update_node, scope, protected,
                                         {s.name: s.shape for s in state}, [0])
        if not statements:
            raise SpecError(update_node.loc, "'update' needs at least one equation")
        if not _assigns(statements, PARAM):
            raise SpecError(self.root.key_locs["update"], f"'update' never assigns '{PARAM}', "
                            f"so it would change nothing: end it with '{PARAM} = ...'")
        return Spec(
            path=self.path, stem=stem, class_name=class_name,
            class_loc=top["optimizer"].loc,
            summary=_doc_text(top["summary"], "'summary'") if "summary" in top else class_name,
            reference=_doc_text(top["reference"], "'reference'") if "reference" in top else "",
            hyperparameters=tuple(hypers), requires=tuple(requires), factored_when=factored_when,
            factored_text=factored_text, factor_axes=factor_axes, state=tuple(state),
            update=tuple(statements), text=self.text)

    # -- hyperparameters ---------------------------------------------------------------
    def _hyperparameters(self, node: Node) -> list[Hyperparameter]:
        items = _expect_map(node, "'hyperparameters'")
        hypers: list[Hyperparameter] = []
        seen: set[str] = set()
        for name, spec in items.items():
            key_loc = node.key_locs[name]
            self._identifier(name, key_loc, "hyperparameter")
            _expect_map(spec, f"hyperparameter '{name}'")
            _check_keys(spec, HYPER_KEYS, f"hyperparameter '{name}'", {"type"})
            kind = _expect_str(spec.value["type"], f"the type of '{name}'")
            if kind not in HYPER_KINDS:
                raise SpecError(spec.value["type"].loc, f"unknown hyperparameter type '{kind}' "
                                f"(expected one of: {', '.join(HYPER_KINDS)})")
            components: tuple[str, ...] = ()
            if kind in TUPLE_KINDS:
                components = self._part_names(spec, name, kind)
            elif "names" in spec.value:
                raise SpecError(spec.key_locs["names"], "'names' is only for types 'pair' and "
                                "'tuple'")
            required = "default" not in spec.value
            if required and kind in ("bool", "optional_float"):
                raise SpecError(spec.loc, f"hyperparameter '{name}' needs a 'default'")
            if required and hypers and not hypers[-1].required:
                raise SpecError(spec.loc, f"required hyperparameter '{name}' (no 'default') "
                                "must come before those with defaults")
            default = None if required else self._default(spec, name, kind, len(components))
            doc = _doc_text(spec.value["doc"], "'doc'") if "doc" in spec.value else ""
            example = self._example(spec, name, kind, len(components))
            for n in (name, *components):
                if n in seen:
                    raise SpecError(key_loc, f"name '{n}' is defined twice")
                seen.add(n)
            hypers.append(Hyperparameter(name, kind, default, doc, key_loc, components,
                                         example=example, required=required))
        return hypers

    def _example(self, spec: Node, name: str, kind: str, parts: int) -> object:
        """A value verification uses to exercise the hyperparameter (defaults can be 0 or
        None, which would leave code paths untested)."""
        if "example" not in spec.value:
            return None
        node = spec.value["example"]
        if kind == "bool":
            raise SpecError(node.loc, "'example' is for numeric hyperparameters, not bool")
        if kind in TUPLE_KINDS:
            items = _expect_list(node, f"the example of {kind} '{name}'")
            if len(items) != parts:
                raise SpecError(node.loc, f"the example of {kind} '{name}' needs {parts} "
                                "numbers, one per name")
            return tuple(_number(i, f"the example of '{name}'") for i in items)
        if kind == "int":
            return _integer(node, f"the example of int '{name}'")
        return _number(node, f"the example of '{name}'")

    def _identifier(self, name: str, loc: Loc, what: str) -> None:
        if not IDENT.fullmatch(name):
            raise SpecError(loc, f"{what} name '{name}' must be a plain identifier "
                            "(letters, digits, '_', not starting with '_')")
        if name in RESERVED or name in FUNCTIONS or keyword.iskeyword(name):
            raise SpecError(loc, f"'{name}' is reserved and cannot name a {what}")

    def _part_names(self, spec: Node, name: str, kind: str) -> tuple[str, ...]:
        if "names" not in spec.value:
            raise SpecError(spec.loc, f"{kind} hyperparameter '{name}' needs 'names: [a, b"
                            f"{', ...' if kind == 'tuple' else ''}]'")
        names_node = spec.value["names"]
        items = _expect_list(names_node, "'names'")
        if kind == "pair" and len(items) != 2:
            raise SpecError(names_node.loc, "'names' of a pair must list exactly 2 names")
        if not 2 <= len(items) <= MAX_TUPLE:
            raise SpecError(names_node.loc, f"'names' of a tuple must list 2 to {MAX_TUPLE} "
                            "names")
        out = []
        for item in items:
            component = _expect_str(item, f"a {kind} component name")
            self._identifier(component, item.loc, f"{kind} component")
            out.append(component)
        return tuple(out)

    def _default(self, spec: Node, name: str, kind: str, parts: int) -> object:
        node = spec.value["default"]
        if kind == "bool":
            if not isinstance(node.value, bool):
                raise SpecError(node.loc, f"the default of bool '{name}' must be true or "
                                f"false, got {_type_word(node.value)}")
            return node.value
        if kind in ("optional_float", "schedule") and node.value is None:
            return None
        if kind in TUPLE_KINDS:
            items = _expect_list(node, f"the default of {kind} '{name}'")
            if len(items) != parts:
                raise SpecError(node.loc, f"the default of {kind} '{name}' needs {parts} "
                                "numbers, one per name")
            return tuple(None if i.value is None else _number(i, f"the default of '{name}'")
                         for i in items)
        if kind == "int":
            return _integer(node, f"the default of int '{name}'")
        return _number(node, f"the default of '{name}'")

    def _attach_checks(self, node: Node, hypers: list[Hyperparameter],
                       numbers: dict[str, Typed], optional: dict[str, sympy.Symbol]
                       ) -> list[Hyperparameter]:
        out = []
        for h in hypers:
            spec = node.value[h.name]
            if "check" not in spec.value:
                out.append(h)
                continue
            check_node = spec.value["check"]
            text = _expect_str(check_node, "'check'")
            if h.is_static or h.kind == "schedule":
                raise SpecError(check_node.loc, f"'check' is for numeric hyperparameters, "
                                f"not {h.kind} '{h.name}'")
            scope = _Scope({n: numbers[n] for n in h.value_names}, {})
            typed = parse_expression(text, check_node.loc, scope, _expr_col_shift(check_node),
                                     reductions=False)
            if typed.kind != DYN_BOOL:
                raise SpecError(check_node.loc, "'check' must be a condition on the value "
                                f"such as 'x > 0': {CHECK_FORMS}")
            for what in ("default", "example"):
                _check_holds(h, typed.expr, text, spec.value.get(what), what)
            # One line: the text is quoted into a one-line string of the generated module.
            out.append(dataclasses.replace(h, check=typed.expr, check_text=" ".join(text.split())))
        return out

    def _requires(self, node: Node | None, scope: _Scope, hypers: list[Hyperparameter]
                  ) -> list[Requirement]:
        if node is None:
            return []
        out = []
        together: sympy.Basic = sympy.true
        for item in _expect_list(node, "'requires'"):
            _expect_map(item, "a requirement")
            _check_keys(item, {"check", "message"}, "a requirement", {"check", "message"})
            check = item.value["check"]
            message = _expect_str(item.value["message"], "'message'")
            if not isinstance(check.value, bool):
                text = _expect_str(check, "a condition")
                typed = parse_expression(text, check.loc, scope, _expr_col_shift(check),
                                         reductions=False)
                if typed.kind not in (DYN_BOOL, STATIC_BOOL):
                    raise SpecError(check.loc, f"'{text}' must be a condition on static "
                                    "options (bool hyperparameters, has(x)) or on the values "
                                    "of numeric hyperparameters, e.g. 'not nesterov or "
                                    "momentum > 0'")
                if typed.kind == DYN_BOOL:
                    if sympy.Symbol(FACTORED) in typed.expr.free_symbols:
                        raise SpecError(check.loc, "'requires' is checked when the optimizer "
                                        "is constructed, before it sees a parameter: it "
                                        "cannot use 'factored'")
                    _check_defaults_meet(typed.expr, hypers, check.loc)
                    out.append(Requirement(typed.expr, message, check.loc, static=False))
                    continue
            cond = self._static_condition(check, scope)
            if sympy.Symbol(FACTORED) in cond.free_symbols:
                raise SpecError(item.value["check"].loc, "'requires' is checked when the "
                                "optimizer is constructed, before it sees a parameter: it "
                                "cannot use 'factored'")
            # A requirement nothing satisfies makes every constructor call raise.
            if not satisfiable(cond):
                raise SpecError(item.value["check"].loc, "no configuration satisfies this "
                                "requirement: it is false for every value of the options")
            together = sympy.And(together, cond)
            if not satisfiable(together):
                raise SpecError(item.value["check"].loc, "no configuration satisfies this "
                                "requirement together with the ones before it")
            out.append(Requirement(cond, message, check.loc))
        return out

    def _static_condition(self, node: Node, scope: _Scope) -> sympy.Basic:
        if isinstance(node.value, bool):
            return sympy.true if node.value else sympy.false
        text = _expect_str(node, "a condition")
        typed = parse_expression(text, node.loc, scope, _expr_col_shift(node))
        if typed.kind != STATIC_BOOL:
            raise SpecError(node.loc, f"'{text}' must be a static condition (bool "
                            "hyperparameters, has(x), factored, and/or/not)")
        return typed.expr

    def _layout(self, node: Node, hypers: list[Hyperparameter]
                ) -> tuple[sympy.Basic, str, str]:
        """``factored``: when a parameter is factored (a condition on ndim, the sizes
        ``rows``/``cols`` of the axes it would be factored over, and bool/int
        hyperparameters); ``axes``: which two axes those are."""
        _expect_map(node, "'layout'")
        _check_keys(node, {FACTORED, "axes"}, "'layout'", {FACTORED})
        axes = "last"
        if "axes" in node.value:
            axes = _expect_str(node.value["axes"], "'layout.axes'")
            if axes not in FACTOR_AXES:
                raise SpecError(node.value["axes"].loc, f"'layout.axes' must be one of "
                                f"{', '.join(FACTOR_AXES)}, got '{axes}'")
        cond_node = node.value[FACTORED]
        text = _expect_str(cond_node, "'layout.factored'")
        names = {n: Typed(sympy.Symbol(n, integer=True), STATIC_INT)
                 for n in (LAYOUT_NDIM, LAYOUT_ROWS, LAYOUT_COLS)}
        names.update({h.name: Typed(sympy.Symbol(h.name), STATIC_BOOL)
                      for h in hypers if h.kind == "bool"})
        names.update({h.name: Typed(sympy.Symbol(h.name, integer=True), STATIC_INT)
                      for h in hypers if h.kind == "int"})
        typed = parse_expression(text, cond_node.loc, _Scope(names, {}),
                                 _expr_col_shift(cond_node))
        if typed.kind != STATIC_BOOL:
            raise SpecError(cond_node.loc, "'layout.factored' must be a condition on ndim, rows, "
                            "cols and bool/int hyperparameters, e.g. 'ndim >= 2'")
        for ndim in (0, 1):
            if typed.expr.subs(sympy.Symbol(LAYOUT_NDIM, integer=True), ndim) == sympy.true:
                raise SpecError(cond_node.loc, f"'layout.factored' must be false for {ndim}-D "
                                "parameters: they have no rows and cols")
        return typed.expr, text, axes

    # -- state ---------------------------------------------------------------------------
    def _state(self, node: Node, scope: _Scope, hyper_names: set[str]) -> list[StateTensor]:
        items = _expect_map(node, "'state'")
        out = []
        for name, spec in items.items():
            key_loc = node.key_locs[name]
            self._identifier(name, key_loc, "state tensor")
            if name in hyper_names:
                raise SpecError(key_loc, f"state '{name}' has the name of a hyperparameter")
            _expect_map(spec, f"state '{name}'")
            _check_keys(spec, STATE_KEYS, f"state '{name}'", {"shape"})
            label = _expect_str(spec.value["shape"], f"the shape of '{name}'")
            if label not in ("full", "row", "col", "scalar"):
                raise SpecError(spec.value["shape"].loc, f"unknown shape class '{label}' "
                                "(expected one of: full, row, col, scalar)")
            shape = ShapeClass.from_label(label)
            when = sympy.true
            when_text = "always"
            if "when" in spec.value:
                when = self._static_condition(spec.value["when"], scope)
                when_text = str(spec.value["when"].value)
            if shape.needs_factored and not _implies(when, sympy.Symbol(FACTORED)):
                raise SpecError(spec.value["shape"].loc, f"{label}-shaped state '{name}' only "
                                "exists for factored parameters: add 'when: factored'")
            init = _number(spec.value["init"], "'init'") if "init" in spec.value else 0.0
            doc = _doc_text(spec.value["doc"], "'doc'") if "doc" in spec.value else ""
            out.append(StateTensor(name, shape, when, when_text, init, doc, key_loc))
        return out

    # -- update ----------------------------------------------------------------------------
    def _statements(self, node: Node, scope: _Scope, protected: set[str],
                    state_shapes: dict[str, ShapeClass], counter: list[int]
                    ) -> tuple[list[Statement], dict[str, Typed]]:
        """Parse a statement list; returns the statements and the names they (re)define."""
        items = _expect_list(node, "an equation list")
        out: list[Statement] = []
        defined: dict[str, Typed] = {}
        for item in items:
            counter[0] += 1
            if counter[0] > MAX_STATEMENTS:
                raise SpecError(item.loc, f"more than {MAX_STATEMENTS} equations")
            if item.is_map() and "if" not in item.value and any("=" in k for k in item.value):
                raise SpecError(item.loc, "YAML read this equation as a mapping because it "
                                "contains ': '; put the equation in quotes")
            if item.is_map() and "matrix" in item.value:
                block = self._matrix_block(item, scope, counter)
                out.append(block)
                names = {block.name: scope.names[block.name]}
            elif item.is_map():
                branch, names = self._branch(item, scope, protected, state_shapes, counter)
                out.append(branch)
            else:
                equation = self._equation(item, scope, protected, state_shapes)
                out.append(equation)
                names = {equation.target: Typed(sympy.Symbol(equation.target, real=True), NUM,
                                                equation.shape)}
            defined.update(names)
            scope = scope.child(names)
        return out, defined

    def _matrix_block(self, item: Node, scope: _Scope, counter: list[int]) -> MatrixBlock:
        """``matrix: name`` with ``do:`` statements: matrix arithmetic on the full value
        ``name`` (see MatrixBlock). Inside, names are the block's own, ``name``, numeric
        hyperparameters and ``rows``/``cols``; the block gives ``name`` a new value."""
        _check_keys(item, {"matrix", "do"}, "a matrix block", {"matrix", "do"})
        name_node = item.value["matrix"]
        name = _expect_str(name_node, "the name a matrix block works on")
        found = scope.names.get(name)
        if found is None or found.kind != NUM or found.shape is not ShapeClass.FULL:
            raise SpecError(name_node.loc, f"a matrix block works on a full-size value "
                            f"assigned before it; '{name}' is not one")
        inner = _Scope({**self.numbers, name: found}, {})
        body = self._matrix_statements(item.value["do"], inner, name, counter)
        if not _assigns(body, name):
            raise SpecError(item.loc, f"the matrix block never assigns '{name}', so it would "
                            "change nothing")
        self.matrix_count += 1
        return MatrixBlock(name, tuple(body), item.loc, self.matrix_count - 1)

    def _matrix_statements(self, node: Node, scope: _Scope, name: str, counter: list[int],
                           before_loop: _Scope | None = None) -> list[Statement]:
        """A block's statements; ``before_loop``: the names a ``repeat`` body starts from,
        whose shape classes its assignments must keep (the loop may run any number of
        times)."""
        out: list[Statement] = []
        for item in _expect_list(node, "a matrix block's statements"):
            counter[0] += 1
            if counter[0] > MAX_STATEMENTS:
                raise SpecError(item.loc, f"more than {MAX_STATEMENTS} equations")
            if item.is_map():
                _check_keys(item, {"repeat", "do"}, "a repeat block", {"repeat", "do"})
                count_node = item.value["repeat"]
                count = count_node.value
                if isinstance(count, bool) or not (
                        (isinstance(count, int) and 0 <= count <= MAX_REPEAT)
                        or count in self.int_hypers):
                    raise SpecError(count_node.loc, f"'repeat' takes an int hyperparameter or "
                                    f"a count from 0 to {MAX_REPEAT}, got {count!r}")
                body = self._matrix_statements(item.value["do"], scope, name, counter, scope)
                symbol = sympy.Integer(count) if isinstance(count, int) else \
                    sympy.Symbol(count, real=True)
                out.append(Repeat(symbol, str(count), tuple(body), item.loc))
                continue  # a name first assigned in the loop need not exist after it
            text = _expect_str(item, "an equation")
            target, target_loc, value = parse_assignment(text, item.loc, scope,
                                                         _expr_col_shift(item), matrix=True)
            if target in RESERVED or target in self.numbers:
                raise SpecError(target_loc, f"cannot assign to '{target}' in a matrix block")
            if target == name and value.shape is not ShapeClass.FULL:
                raise SpecError(target_loc, f"'{name}' must stay a matrix")
            earlier = before_loop.names.get(target) if before_loop else None
            if earlier is not None and earlier.shape is not value.shape:
                raise SpecError(target_loc, f"'{target}' is {earlier.shape.label} before the "
                                f"repeat but {value.shape.label} in it")
            out.append(Equation(target, value.expr, value.shape, text, item.loc))
            scope = scope.child({target: Typed(sympy.Symbol(target, real=True), NUM,
                                               value.shape)})
        return out

    def _equation(self, item: Node, scope: _Scope, protected: set[str],
                  state_shapes: dict[str, ShapeClass]) -> Equation:
        text = _expect_str(item, "an equation")
        target, target_loc, value = parse_assignment(text, item.loc, scope, _expr_col_shift(item))
        if target in protected:
            raise SpecError(target_loc, f"cannot assign to '{target}': it is an input or a "
                            "hyperparameter")
        if target in RESERVED - {PARAM}:
            raise SpecError(target_loc, f"'{target}' is reserved")
        expected = state_shapes.get(target, ShapeClass.FULL if target == PARAM else None)
        if expected is not None and value.shape is not expected:
            what = "the parameter" if target == PARAM else f"state '{target}'"
            raise SpecError(target_loc, f"shape-class mismatch: {what} is {expected.label} "
                            f"but the right side is {value.shape.label}")
        previous = scope.names.get(target)
        if previous is not None and previous.kind != NUM:
            raise SpecError(target_loc, f"cannot assign to '{target}'")
        self._check_inlined_size(target, target_loc, value.expr)
        return Equation(target, value.expr, value.shape, text, item.loc)

    def _check_inlined_size(self, target: str, loc: Loc, expr: sympy.Basic) -> None:
        """The lowering substitutes every name by its value, so ``a = a*a + a`` repeated
        grows exponentially and ``a = abs(a) + g`` repeated nests deeper than SymPy can
        recurse: bound the substituted size and depth here. A name keeps the largest size
        and depth any of its assignments had (branches may take either)."""
        size, depth = _inlined_size(expr, self.inlined)
        if size > MAX_INLINED_NODES:
            raise SpecError(loc, f"'{target}' is too large once earlier equations are "
                            f"substituted (more than {MAX_INLINED_NODES} operations)")
        if depth > MAX_INLINED_DEPTH:
            raise SpecError(loc, f"'{target}' is too large once earlier equations are "
                            f"substituted (nested more than {MAX_INLINED_DEPTH} deep)")
        old_size, old_depth = self.inlined.get(target, (0, 0))
        self.inlined[target] = (max(size, old_size), max(depth, old_depth))

    def _branch(self, item: Node, scope: _Scope, protected: set[str],
                state_shapes: dict[str, ShapeClass], counter: list[int]
                ) -> tuple[Branch, dict[str, Typed]]:
        _check_keys(item, {"if", "then", "else"}, "a branch", {"if", "then"})
        cond = self._static_condition(item.value["if"], scope)
        then, then_names = self._statements(item.value["then"], scope, protected, state_shapes,
                                            counter)
        orelse: list[Statement] = []
        else_names: dict[str, Typed] = {}
        if "else" in item.value:
            orelse, else_names = self._statements(item.value["else"], scope, protected,
                                                  state_shapes, counter)
        for name in then_names.keys() & else_names.keys():
            if then_names[name].shape is not else_names[name].shape:
                raise SpecError(item.loc, f"'{name}' is {then_names[name].shape.label} in "
                                f"'then' but {else_names[name].shape.label} in 'else'")
        merged = {**else_names, **then_names}
        for name, typed in merged.items():
            before = scope.names.get(name)
            if before is not None and before.shape is not typed.shape:
                raise SpecError(item.loc, f"'{name}' changes shape class in a branch "
                                f"({before.shape.label} -> {typed.shape.label})")
        text = str(item.value["if"].value)
        return Branch(cond, text, tuple(then), tuple(orelse), item.loc), merged


def _inlined_size(expr: sympy.Basic, known: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(tree size, depth) of ``expr`` with each name counted as its value (the size capped
    just above the limit); shared sub-expressions are walked once."""
    memo: dict[int, tuple[int, int]] = {}

    def walk(node: sympy.Basic) -> tuple[int, int]:
        key = id(node)
        if key not in memo:
            if isinstance(node, sympy.Symbol):
                memo[key] = known.get(node.name, (1, 1))
            else:
                args = [walk(arg) for arg in node.args]
                memo[key] = (min(1 + sum(s for s, _ in args), MAX_INLINED_NODES + 1),
                             1 + max((d for _, d in args), default=0))
        return memo[key]

    return walk(expr)


def _check_holds(h: Hyperparameter, check: sympy.Basic, text: str, node: Node | None,
                 what: str) -> None:
    """A default (or example) that fails the hyperparameter's own check would make the
    constructor refuse its own defaults (or verification refuse its example)."""
    value = getattr(h, what)
    if node is None or value is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    if any(v is None for v in values):
        return
    subs = {sympy.Symbol(n, real=True): sympy.Float(v) if isinstance(v, float) else
            sympy.Integer(v) for n, v in zip(h.value_names, values)}
    try:
        holds = bool(to_sympy(check).subs(subs)) is True
    except (TypeError, ValueError, ArithmeticError):  # undefined there (1 / 0)
        holds = False
    if not holds:
        shown = list(value) if isinstance(value, tuple) else value
        raise SpecError(node.loc, f"the {what} {shown} of '{h.name}' fails its own check "
                        f"'{' '.join(text.split())}'")


def _assigns(statements: tuple[Statement, ...] | list[Statement], name: str) -> bool:
    """Whether any equation, in any branch, assigns ``name``."""
    for statement in statements:
        if isinstance(statement, Equation) and statement.target == name:
            return True
        if isinstance(statement, Branch) and (_assigns(statement.then, name)
                                              or _assigns(statement.orelse, name)):
            return True
        if isinstance(statement, Repeat) and _assigns(statement.body, name):
            return True
    return False


def _implies(a: sympy.Basic, b: sympy.Basic) -> bool:
    """Whether static condition ``a`` implies ``b`` (tiny truth-table check)."""
    symbols = sorted((a.free_symbols | b.free_symbols), key=str)
    if len(symbols) > 12:
        return False
    for bits in range(2 ** len(symbols)):
        values = {s: bool(bits >> i & 1) for i, s in enumerate(symbols)}
        if bool(a.subs(values)) and not bool(b.subs(values)):
            return False
    return True
