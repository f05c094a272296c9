"""The spec loader, fuzzed through the real CLI (``afgen build SPEC --out DIR``).

Contract, for every input: exit 0 (and the only files written are DIR/<stem>.py and
DIR/__init__.py, a module that compiles and uses no undefined name) or exit 2 with exactly
one line ``path:line:col: message`` on stderr and nothing written at all. No traceback,
no hang, no file anywhere else, no spec text ever run as code. Inputs: random YAML trees,
random expressions (attacks included) in every place a spec takes one, and mutated copies
of the shipped specs. Runs are derandomized, so CI sees the same examples every time.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import io
import json
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import afgen.runtime
from afgen.cli import main
from afgen.spec.expressions import FUNCTIONS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))
SPEC = "specs/fuzzed.yaml"  # relative to the workspace, which is the cwd during a run
MARKER = "PWNED"  # what the attacks try to create, in the workspace (the cwd)
HANG_SECONDS = 60.0  # a build takes seconds; far beyond this is a hang
# No hypothesis deadline: a mutated spec that still builds legitimately takes seconds (the
# Adafactor specs), so hangs are bounded by time_limit() instead, per CLI run.
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# A small spec that exercises every slot (check, requires, layout, when, branches) and
# builds in a fraction of a second; {slot} markers are where the fuzzers write.
TINY = """\
optimizer: Tiny
summary: A tiny optimizer.
hyperparameters:
  lr: {type: float, default: 0.1, check: {check}}
  beta: {type: optional_float, default: null, example: 0.5}
  nesterov: {type: bool, default: false}
requires:
  - {check: {requires}, message: beta needs nesterov}
layout:
  factored: {layout}
state:
  row: {shape: row, when: factored}
  m: {shape: full, when: {when}}
update:
  - {equation}
  - if: {condition}
    then:
      - m = 0.5 * m + g
      - g = m
  - param = param - lr * g
"""
SLOTS = {"check": "lr > 0", "requires": "not has(beta) or nesterov or True",
         "layout": "ndim >= 2", "when": "has(beta)", "equation": "g = grad",
         "condition": "has(beta)"}


def tiny(**fills: str) -> str:
    """TINY with each slot quoted as a YAML string (defaults for the others)."""
    text = TINY
    for slot, default in SLOTS.items():
        text = text.replace("{" + slot + "}", json.dumps(fills.get(slot, default)))
    return text


# -- running the CLI -----------------------------------------------------------------------
class Hang(Exception):
    """The build did not answer within HANG_SECONDS."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds``, and again every second after that (in case
    some library swallowed the first interrupt)."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (symlinks not followed) with its content or target."""
    seen: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                seen[key] = ("link", os.readlink(path))
            elif path.is_file():
                seen[key] = path.read_bytes()
            else:
                seen[key] = "dir"
    return seen


@dataclass
class Outcome:
    rc: int
    err: str
    changed: dict[str, object]  # workspace paths that appeared or changed (new content)
    seconds: float


def run_cli(workspace: Path, argv: list[str], limit: float = HANG_SECONDS) -> Outcome:
    """``afgen argv`` in-process with ``workspace`` as the cwd; what changed there."""
    before = snapshot(workspace)
    err, out = io.StringIO(), io.StringIO()
    cwd = Path.cwd()
    start = time.perf_counter()
    os.chdir(workspace)
    try:
        with time_limit(limit), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    after = snapshot(workspace)
    changed = {k: v for k, v in after.items() if before.get(k) != v}
    changed.update({k: "removed" for k in before.keys() - after.keys()})
    return Outcome(rc, err.getvalue(), changed, seconds)


def build(text: str) -> Outcome:
    """``afgen build specs/fuzzed.yaml --out out --no-verify`` in a fresh workspace."""
    with tempfile.TemporaryDirectory(prefix="afgen-fuzz-") as name:
        workspace = Path(name)
        (workspace / "specs").mkdir()
        (workspace / SPEC).write_text(text, encoding="utf-8")
        return run_cli(workspace, ["build", SPEC, "--out", "out", "--no-verify"])


# -- the contract ----------------------------------------------------------------------------
LOCATED = re.compile(rf"{re.escape(SPEC)}:[1-9]\d*:[1-9]\d*: \S.*\n")
# What a spec string broken out of its quotes would call; the templates never do.
DANGEROUS_CALLS = {"__import__", "eval", "exec", "compile", "open", "breakpoint", "input"}


def assert_contract(outcome: Outcome) -> None:
    """Exit 0 with a sound module in out/, or exit 2 with one located line and no files."""
    assert outcome.rc in (0, 2), outcome
    assert "Traceback" not in outcome.err, outcome.err
    assert MARKER not in outcome.changed, "spec text was executed"
    if outcome.rc == 2:
        assert LOCATED.fullmatch(outcome.err), repr(outcome.err)
        assert outcome.changed == {}, sorted(outcome.changed)
        return
    assert outcome.err == "", outcome.err
    assert set(outcome.changed) <= {"out", "out/fuzzed.py", "out/__init__.py",
                                    "out/afgen_runtime.py", "out/afgen_targets.py"}, \
        outcome.changed
    assert_sound_module(outcome.changed["out/fuzzed.py"].decode())
    runtime = Path(afgen.runtime.__file__).read_bytes()
    assert outcome.changed.get("out/afgen_runtime.py", runtime) == runtime


def assert_sound_module(source: str) -> None:
    """The generated module compiles, each function reads only names it or the module binds
    (SymPy's ``zoo``, ``nan`` or ``I`` printed as code would not be), nothing calls what
    runs arbitrary code, and no statement at module or class level is a bare expression
    besides docstrings (what a string breaking out of its quotes would leave)."""
    compile(source, "generated.py", "exec")  # beyond parsing: duplicate arguments and such
    tree = ast.parse(source)
    module_names = set(dir(builtins)) | {"__file__", "__name__"} | bound_names(tree.body)
    methods = [n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body]
    for function in [*tree.body, *methods]:
        if isinstance(function, ast.FunctionDef):
            loaded = {n.id for n in ast.walk(function)
                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            unbound = loaded - module_names - bound_names([function], inside=True)
            assert not unbound, f"{function.name} reads unbound names {unbound}"
    called = {n.func.id for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & DANGEROUS_CALLS, called & DANGEROUS_CALLS
    bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    for body in bodies:
        for statement in body[1:]:
            assert not isinstance(statement, ast.Expr), ast.unparse(statement)


def bound_names(statements: list[ast.stmt], inside: bool = False) -> set[str]:
    """Names the statements bind: at top level only (``inside=False``), or anywhere in
    them, nested scopes included (a deliberately loose reading of Python's scopes)."""
    nodes = [n for s in statements for n in (ast.walk(s) if inside else [s])]
    names = set()
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            names |= {n.id for n in ast.walk(node)
                      if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        elif inside and isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif inside and isinstance(node, ast.arg):
            names.add(node.arg)
        elif inside and isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def test_the_tiny_spec_builds():
    """The fuzzers start from TINY: it must build, or they only ever test rejections."""
    outcome = build(tiny())
    assert outcome.rc == 0, outcome.err
    assert_contract(outcome)


# -- random YAML trees ---------------------------------------------------------------------
KEYS = ["optimizer", "summary", "reference", "hyperparameters", "requires", "layout", "state",
        "update", "type", "default", "doc", "names", "check", "example", "shape", "when",
        "init", "factored", "axes", "if", "then", "else", "message", "lr", "m", "row"]
WORDS = ["float", "bool", "int", "optional_float", "schedule", "pair", "full", "row", "col",
         "scalar", "batch", "factored", "ndim >= 2", "has(lr)", "g = grad", "param = param - g",
         "Tiny", "lr > 0", "__import__('os')", "1.0e-30", "1e-30", ".inf", ".nan", "~", ""]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS),
                    st.text(max_size=12))
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=20)


@FUZZ
@given(TREES)
def test_random_yaml_trees(tree):
    """Any YAML document at all: most fail at the top, none may crash."""
    assert_contract(build(yaml.safe_dump(tree, sort_keys=False)))


def replace_at(tree: object, path: list[int], new: object) -> object:
    """``tree`` with the node that ``path`` picks (child index modulo the count) replaced."""
    if not path or not isinstance(tree, (dict, list)) or not tree:
        return new
    if isinstance(tree, dict):
        key = list(tree)[path[0] % len(tree)]
        return {**tree, key: replace_at(tree[key], path[1:], new)}
    index = path[0] % len(tree)
    return [*tree[:index], replace_at(tree[index], path[1:], new), *tree[index + 1:]]


@FUZZ
@given(st.lists(st.integers(0, 20), max_size=4), st.one_of(SCALARS, SCALARS, TREES))
def test_spec_trees_with_a_random_subtree(path, subtree):
    """Spec-shaped documents, so that the fuzz reaches past the top-level checks."""
    assert_contract(build(yaml.safe_dump(replace_at(yaml.safe_load(tiny()), path, subtree),
                                         sort_keys=False)))


# -- random expressions, attacks included ----------------------------------------------------
NUMBER_ATOMS = ["0.5", "2", "1.0e-8", "3", "1"]
VALID_ATOMS = {  # per slot: the names its scope has
    "equation": ["grad", "param", "t", "lr", "dtype_eps", "nesterov", "factored", "has(beta)",
                 *NUMBER_ATOMS],
    "check": ["lr", *NUMBER_ATOMS],
    "layout": ["ndim", "rows", "cols", "nesterov", "2", "1", "True"],
    "static": ["nesterov", "factored", "has(beta)", "True", "False"]}
ODD_ATOMS = ["rows", "cols", "False", "None", "unknown", "_x", "x0", "self", "__import__",
             "__builtins__", "os", "new_m", "1e308", "1e-320", "2**53", "9007199254740993",
             "9**9**9", "10**10**10", "1e999", "0x10", "1_000", "1j", "-0.0", "0"]
ARITHMETIC = ["+", "-", "*", "/", "**"]
COMPARISONS = ["<", "<=", ">", ">=", "==", "!="]
ODD_OPERATORS = ["%", "//", "@", "&", "|", "^", "<<", "is", "in", "not in"]
ATTACKS = ["{a}.__class__.__bases__", "().__class__", "{a}[0]", "(lambda: {a})", "lambda: 0",
           "[x for x in {a}]", "{{x: 1 for x in {a}}}", "(x for x in {a})", "f'{{{a}}}'",
           "(y := {a})", "max(*{a})", "sqrt(**{a})", "'{a}'", "b'x'", "...", "{{{a}}}",
           "({a}, {b})", "[{a}]", "await {a}", "(yield {a})", "{a} # {{__import__('os')}}",
           "{a} \\\n + {b}", "{a}; {b}", "{a}\n{b}", "{a}.real", "sqrt(x={a})",
           "__import__('os').system('touch " + MARKER + "')", "eval('1')", "{a} if {b}",
           "exec('import os')", "open('" + MARKER + "', 'w')", "{a} {b}", "{a} < {b} < {a}"]
VALID_FORMS = ["arithmetic", "arithmetic", "call", "condition", "if", "where"]
HOSTILE_FORMS = VALID_FORMS + ["unary", "odd", "chain", "attack", "attack", "deep"]


@st.composite
def expressions(draw, inner, forms: list[str]):
    """One operator, call, condition or attack around sub-expressions."""
    a, b, c = draw(inner), draw(inner), draw(inner)
    form = draw(st.sampled_from(forms))
    if form == "arithmetic":
        return f"({a} {draw(st.sampled_from(ARITHMETIC))} {b})"
    if form == "call" and forms is VALID_FORMS:
        name = draw(st.sampled_from(FUNCTIONS))
        return f"{name}({', '.join([a, b, c][:1 + (name in ('min', 'max', 'pow'))])})"
    if form == "call":
        name = draw(st.sampled_from([*FUNCTIONS, "eval", "getattr", "type", "print"]))
        return f"{name}({', '.join([a, b, c][:draw(st.integers(0, 3))])})"
    if form == "condition":
        return draw(st.sampled_from([f"({a} {draw(st.sampled_from(COMPARISONS))} {b})",
                                     f"({a} and {b})", f"({a} or {b})", f"not {a}"]))
    if form == "unary":
        return f"{draw(st.sampled_from(['-', '+', '~']))}{a}"
    if form == "if":
        return f"({a} if {c} else {b})"
    if form == "where":
        return f"where({c}, {a}, {b})"
    if form == "odd":
        return f"({a} {draw(st.sampled_from(ODD_OPERATORS))} {b})"
    if form == "chain":
        return f" {draw(st.sampled_from(['*', '+', '**']))} ".join([a] * draw(st.integers(2, 40)))
    if form == "deep":
        depth = draw(st.integers(50, 300))
        return draw(st.sampled_from(["(" * depth + a + ")" * depth, "-" * depth + a,
                                     "sqrt(" * depth + a + ")" * depth, "not " * depth + a]))
    return draw(st.sampled_from(ATTACKS)).format(a=a, b=b)


def expressions_in(scope: str) -> st.SearchStrategy[str]:
    """Random expressions over the names of ``scope`` (and some that are not there)."""
    valid = st.sampled_from(VALID_ATOMS[scope])
    odd = st.sampled_from(ODD_ATOMS) | st.integers(-2**70, 2**70).map(str)
    plausible = st.recursive(valid, lambda inner: expressions(inner, VALID_FORMS), max_leaves=5)
    hostile = st.recursive(valid | odd, lambda inner: expressions(inner, HOSTILE_FORMS),
                           max_leaves=6)
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
    return st.one_of(plausible, plausible, hostile, hostile, ascii_text, st.text(max_size=10))


# slot of TINY -> (the scope of its names, how the expression is written there)
EXPRESSION_SLOTS = {
    "equation": ("equation", "g = {}"), "check": ("check", "{}"), "layout": ("layout", "{}"),
    "requires": ("static", "{}"), "when": ("static", "{}"), "condition": ("static", "{}")}


@FUZZ
@given(st.data())
def test_random_expressions_in_every_slot(data):
    """Each place that takes an expression, with the names its scope has (and others)."""
    slot = data.draw(st.sampled_from(sorted(EXPRESSION_SLOTS)), label="slot")
    scope, form = EXPRESSION_SLOTS[slot]
    expression = data.draw(expressions_in(scope), label="expression")
    assert_contract(build(tiny(**{slot: form.format(expression)})))


@FUZZ
@given(st.text(max_size=40), st.sampled_from(["  - {}\n", "  - if: {}\n    then: []\n",
                                                "{}\n", "  {}: 1\n"]))
def test_raw_text_in_the_update_block(raw, line):
    """Unquoted text, so that it is YAML that has to cope first."""
    assert_contract(build(tiny() + line.format(raw)))


# -- mutated copies of the shipped specs ------------------------------------------------------
TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\S")
REPLACEMENTS = st.sampled_from(
    VALID_ATOMS["equation"] + ODD_ATOMS + FUNCTIONS + [
        "", " ", ":", "-", "[", "]", "{", "}", "&a", "*a", "!!int", "'", '"', "#", "|", ">",
        "!!python/object/apply:os.system", "\t", "\n", "float", "full", "row", "col"])
MUTATIONS = ["token"] * 4 + ["delete"] * 2 + ["duplicate", "swap", "indent", "insert", "truncate"]


@st.composite
def mutated(draw, text: str) -> str:
    """``text`` after 1-3 random line or token edits."""
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(MUTATIONS))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(j, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "token" and TOKEN.search(lines[i]):
            tokens = list(TOKEN.finditer(lines[i]))
            tok = tokens[draw(st.integers(0, len(tokens) - 1))]
            own = st.sampled_from([t.group() for t in TOKEN.finditer(text)])
            new = draw(st.one_of(own, own, REPLACEMENTS, st.text(max_size=5)))
            lines[i] = lines[i][:tok.start()] + new + lines[i][tok.end():]
        elif op == "indent":
            line = lines[i]
            lines[i] = draw(st.sampled_from(["  " + line, " " + line, line[1:], "\t" + line]))
        elif op == "insert":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(max_size=4)) + lines[i][at:]
        elif op == "truncate":
            joined = "".join(lines)
            lines = [joined[:draw(st.integers(0, len(joined)))]]
    return "".join(lines)


# Examples per spec: a mutation that still builds costs a full build (seconds for the
# Adafactor specs), so the bigger specs get fewer examples.
MUTATION_EXAMPLES = {"adam": 30, "adamw": 20, "adafactor_paper": 12, "adafactor_torch": 5,
                     "adafactor": 4}


@pytest.mark.parametrize("spec", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_mutated_shipped_specs(spec):
    @settings(FUZZ, max_examples=MUTATION_EXAMPLES.get(spec.stem, 3))
    @given(mutated(spec.read_text(encoding="utf-8")))
    def check(text):
        """Edited real specs: some still build, most fail somewhere deep inside."""
        assert_contract(build(text))

    check()


# -- attacks and hangs, one by one ------------------------------------------------------------
def equation(text: str) -> str:
    return tiny(equation=text)


BOMB = "".join(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 9))
REJECTED = {
    "__import__": (equation(f"g = __import__('os').system('touch {MARKER}')"),
                   r"only calls of plain function names"),
    "attribute chain": (equation("g = ().__class__.__bases__"), r"attribute access"),
    "dunder name": (equation("g = __builtins__"), r"names starting with '_'"),
    "lambda": (equation("g = (lambda: 0)"), r"lambdas"),
    "comprehension": (equation("g = sum([x for x in grad])"), r"comprehensions"),
    "generator": (equation("g = sum(x for x in grad)"), r"comprehensions"),
    "f-string": (equation("g = f'{grad}'"), r"f-strings"),
    "walrus": (equation("g = (y := grad)"), r"assignment expressions"),
    "starred": (equation("g = max(*grad)"), r"starred"),
    "keyword argument": (equation("g = sqrt(x=grad)"), r"keyword arguments"),
    "eval": (equation("g = eval('grad')"), r"unknown function 'eval'"),
    "two statements": (equation("g = grad; import os"), r"expected one equation"),
    "comment in a check": (tiny(check=f"lr > 0 # {{__import__('os').system('touch {MARKER}')}}"),
                           r"comments are not allowed"),
    "line continuation": (equation("g = grad \\\n + 1"), r"backslashes are not allowed"),
    "9**9**9": (equation("g = grad * 9**9**9"), r"constant exponents are limited"),
    "10**10**10": (equation("g = grad * 10**10**10"), r"constant exponents are limited"),
    "power tower": (equation("g = grad * ((2**64)**64)**64"), r"too large for a float"),
    "float overflow": (equation("g = grad * 1e308 * 1e308"), r"too large for a float"),
    "huge literal": (equation("g = grad * " + "9" * 1000), r"too large"),
    "division by zero": (equation("g = grad / 0"), r"undefined or infinite"),
    "log(0)": (equation("g = grad + log(0)"), r"undefined or infinite"),
    "sqrt(-1)": (equation("g = grad * sqrt(-1)"), r"not real"),
    "zero after substitution": (tiny(equation="z = 0").replace(
        '  - "z = 0"\n', '  - "z = 0"\n  - g = grad / z\n'),
        r"undefined or infinite value .* once earlier equations are substituted"),
    "500 parentheses": (equation("g = " + "(" * 500 + "grad" + ")" * 500), r"nested|syntax"),
    "500 minus signs": (equation("g = " + "-" * 500 + "grad"), r"nested deeper"),
    "long product": (equation("g = " + "*".join(["grad"] * 390)), r"nested deeper"),
    "nested calls": (equation("g = " + "sqrt(" * 150 + "grad" + ")" * 150), r"nested deeper"),
    "400 nots": (tiny(when="not " * 400 + "True"), r"nested deeper"),
    "exponential inlining": (tiny(equation="g = grad").replace(
        "  - if:", "  - g = g * g + sqrt(g)\n" * 40 + "  - if:"), r"too large once earlier"),
    "deep inlining": (tiny(equation="g = grad").replace(
        "  - if:", "  - g = abs(g) + grad\n" * 300 + "  - if:"), r"nested more than 48 deep"),
    "YAML python tag": (TINY.replace("summary: A tiny optimizer.",
                                     f"summary: !!python/object/apply:os.system [touch {MARKER}]"),
                        r"YAML tags are not allowed"),
    "YAML python tag on a key": (tiny().replace("summary:", "!!python/name:os.system : 1\n"
                                                "summary:"), r"YAML tags are not allowed"),
    "YAML bad int": (tiny().replace("default: 0.1", "default: !!int zero"), r"invalid YAML"),
    "YAML bool tag": (tiny().replace("default: false", "default: !!bool maybe"),
                      r"invalid YAML scalar"),
    "billion laughs": (tiny().replace("summary: A tiny optimizer.\n", "summary:\n  l0: &l0 [x]\n"
                                      + BOMB), r"anchors and aliases are not allowed"),
    "deep YAML": (tiny().replace("summary: A tiny optimizer.", "summary: " + "[" * 5000),
                  r"invalid YAML|nested deeper"),
    "NUL byte": (tiny().replace("A tiny", "A\0tiny"), r"unacceptable character #x0000"),
    "docstring break-out": (tiny().replace("summary: A tiny optimizer.", "summary: 'x\"\"\"; "
                            f"__import__(\"os\").system(\"touch {MARKER}\"); \"\"\"'"),
                            r"cannot contain"),
    "backslash in a doc": (tiny().replace("default: 0.1,", "default: 0.1, doc: 'C:\\Users',"),
                           r"cannot contain"),
    "escape sequence in a key": (tiny().replace("summary:", '"a\\nb\\e[2J": 1\nsummary:'),
                                 r"unknown key 'a\\nb\\x1b\[2J'"),
    "class None": (tiny().replace("optimizer: Tiny", "optimizer: None"), r"keyword or built-in"),
    "class ValueError": (tiny().replace("optimizer: Tiny", "optimizer: ValueError"),
                         r"keyword or built-in"),
    "class Optional": (tiny().replace("optimizer: Tiny", "optimizer: Optional"),
                       r"generated module already binds"),
    "hyperparameter 'backend'": (tiny().replace("lr", "backend"),
                                 r"'backend' is already an attribute"),
    "hyperparameter 'update'": (tiny().replace("lr", "update"),
                                r"'update' is already an attribute"),
    "factored in requires": (tiny(requires="factored or nesterov"), r"cannot use 'factored'"),
    "non-finite default": (tiny().replace("default: 0.1", "default: .inf"), r"finite"),
    "huge integer default": (tiny().replace("default: 0.1", "default: 1" + "0" * 400),
                             r"finite number that fits a float"),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_attacks_and_broken_specs_are_rejected_quickly_at_a_location(name):
    """What the issue names and what the fuzzers found, one by one."""
    text, message = REJECTED[name]
    outcome = build(text)
    assert_contract(outcome)
    assert outcome.rc == 2, f"{name} was accepted"
    assert re.search(message, outcome.err), outcome.err
    assert outcome.seconds < 10, f"{name} took {outcome.seconds:.1f} s"


@pytest.mark.parametrize("expression", ["((grad + 1)**64 + 1)**64", "(grad + param + t + lr)**64"])
def test_big_powers_of_sums_build_quickly(expression):
    """SymPy's expand would multiply these out for hours; the lowering must not."""
    outcome = build(tiny(equation=f"g = grad + {expression}"))
    assert_contract(outcome)
    assert outcome.rc == 0, outcome.err
    assert outcome.seconds < 30, f"took {outcome.seconds:.1f} s"


def test_an_update_that_changes_nothing_builds_a_sound_module():
    """Without beta, ``g = grad - grad`` leaves everything as it is: the fused driver has a
    pass with no outputs and the MLX function returns the parameter it never loaded."""
    outcome = build(tiny(equation="g = grad - grad"))
    assert outcome.rc == 0, outcome.err
    assert_contract(outcome)


def test_spec_text_stays_data_in_the_generated_module(tmp_path, monkeypatch):
    """Quotes, braces and format fields in every free-text field (and a failing check and
    requirement) end up as text: importing the module and tripping both runs none of it."""
    payload = f'{{__import__("os").system("touch {MARKER}")}}'
    summary, doc, message = f"say '{payload}' %s {{0}}", f"{payload} '''", f'"{payload}'
    text = (tiny(check="lr > 0", requires="nesterov or not has(beta)")
            .replace("summary: A tiny optimizer.", f"summary: {json.dumps(summary)}")
            .replace("default: 0.1,", f"default: 0.1, doc: {json.dumps(doc)},")
            .replace("message: beta needs nesterov", f"message: {json.dumps(message)}"))
    outcome = build(text)
    assert_contract(outcome)
    assert outcome.rc == 0, outcome.err
    package = tmp_path / "fuzzed_build"  # the module imports the runtime beside it
    package.mkdir()
    for name, content in outcome.changed.items():
        if name.startswith("out/"):
            (package / name.removeprefix("out/")).write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module("fuzzed_build.fuzzed")
    with pytest.raises(ValueError, match="lr must satisfy"):
        module.Tiny(lr=-1.0)
    with pytest.raises(ValueError) as info:
        module.Tiny(beta=0.5)
    assert str(info.value) == message
    assert payload in module.__doc__ and not (tmp_path / MARKER).exists()


# -- output paths ------------------------------------------------------------------------------
def spec_workspace(root: Path, name: str = "fuzzed.yaml") -> Path:
    """``root/specs/<name>`` holding the tiny spec; returns its path relative to ``root``."""
    (root / "specs").mkdir(exist_ok=True)
    (root / "specs" / name).write_text(tiny())
    return Path("specs", name)


def assert_one_error_line(outcome: Outcome, pattern: str) -> None:
    assert outcome.rc == 2, outcome
    assert re.fullmatch(pattern + r".*\n", outcome.err), repr(outcome.err)
    assert outcome.err.count("\n") == 1 and "Traceback" not in outcome.err


@pytest.mark.parametrize("name", ["my-spec.yaml", "class.yaml", "..yaml", "9lives.yaml",
                                  "a b.yaml", "über.yaml"])
def test_a_spec_file_name_must_be_an_identifier(tmp_path, name):
    spec = spec_workspace(tmp_path, name)
    outcome = run_cli(tmp_path, ["build", str(spec), "--out", "out", "--no-verify"])
    assert_one_error_line(outcome, re.escape(str(spec)) + r":1:1: the spec's file name")
    assert outcome.changed == {}


def test_a_spec_path_that_would_break_the_module_docstring_is_an_error(tmp_path):
    (tmp_path / 'x"""').mkdir()
    (tmp_path / 'x"""' / "tiny.yaml").write_text(tiny())
    outcome = run_cli(tmp_path, ["build", 'x"""/tiny.yaml', "--out", "out", "--no-verify"])
    assert_one_error_line(outcome, re.escape('x"""/tiny.yaml') + r":1:1: the spec's path")
    assert outcome.changed == {}


def test_build_writes_only_into_the_chosen_directory(tmp_path):
    spec = spec_workspace(tmp_path)
    (tmp_path / "sub").mkdir()
    outcome = run_cli(tmp_path, ["build", str(spec), "--out", "sub/../chosen", "--no-verify"])
    assert outcome.rc == 0, outcome.err
    assert set(outcome.changed) == {"chosen", "chosen/fuzzed.py", "chosen/__init__.py",
                                    "chosen/afgen_runtime.py", "chosen/afgen_targets.py"}


@pytest.mark.parametrize("name", ["fuzzed.py", "__init__.py", "afgen_runtime.py",
                                  "afgen_targets.py"])
@pytest.mark.parametrize("dangling", [False, True], ids=["existing", "dangling"])
def test_build_refuses_a_symlink_out_of_the_output_directory(tmp_path, name, dangling):
    spec = spec_workspace(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    victim = tmp_path / "elsewhere" / "victim.py"
    if not dangling:
        victim.write_text("original\n")
    (tmp_path / "out" / name).symlink_to(victim)
    outcome = run_cli(tmp_path, ["build", str(spec), "--out", "out", "--no-verify"])
    assert_one_error_line(outcome, r"afgen: refusing to write out/" + re.escape(name))
    assert outcome.changed == {}
    assert victim.exists() != dangling and (dangling or victim.read_text() == "original\n")


def test_build_into_a_file_is_an_error_not_a_traceback(tmp_path):
    spec = spec_workspace(tmp_path)
    (tmp_path / "out").write_text("a file\n")
    outcome = run_cli(tmp_path, ["build", str(spec), "--out", "out", "--no-verify"])
    assert_one_error_line(outcome, r"afgen: ")
    assert outcome.changed == {}


def test_afgen_new_writes_only_its_output_file(tmp_path):
    spec = spec_workspace(tmp_path)
    outcome = run_cli(tmp_path, ["new", "MyTiny", "--from", str(spec), "--out", "my_tiny.yaml"])
    assert outcome.rc == 0, outcome.err
    assert set(outcome.changed) == {"my_tiny.yaml"}


@pytest.mark.parametrize("dangling", [False, True], ids=["existing", "dangling"])
def test_afgen_new_refuses_to_write_through_a_symlink(tmp_path, dangling):
    spec = spec_workspace(tmp_path)
    victim = tmp_path / "victim.yaml"
    if not dangling:
        victim.write_text("original\n")
    (tmp_path / "my_tiny.yaml").symlink_to(victim)
    outcome = run_cli(tmp_path, ["new", "MyTiny", "--from", str(spec), "--out", "my_tiny.yaml"])
    assert_one_error_line(outcome, r"my_tiny\.yaml:1:1: refusing to overwrite")
    assert outcome.changed == {}


@pytest.mark.parametrize("argv,pattern", [
    (["new", "MyTiny", "--from", "specs/missing.yaml"], r"specs/missing\.yaml:1:1: cannot read"),
    (["new", "MyTiny", "--from", "specs/fuzzed.yaml", "--out", "my-tiny.yaml"],
     r"afgen new: cannot write my-tiny\.yaml: the spec's file name"),
    (["new", "MyTiny", "--from", "specs/fuzzed.yaml", "--out", "no/such/dir/my_tiny.yaml"],
     r"afgen: "),
    (["new", "None", "--from", "specs/fuzzed.yaml", "--out", "none.yaml"],
     r"afgen new: 'None' is a Python keyword"),
])
def test_afgen_new_errors_are_one_line(tmp_path, argv, pattern):
    spec_workspace(tmp_path)
    outcome = run_cli(tmp_path, argv)
    assert_one_error_line(outcome, pattern)
    assert outcome.changed == {}


# -- identifiers named like what the generated code uses itself ------------------------------
# Kernel locals, buffers, template parameters and temporaries, the Python update's and
# drivers' locals (the generator must move out of their way), and C++/Metal/CUDA keywords,
# built-ins and afg_* helpers, Python builtins and what the module binds, attributes of
# every optimizer (refused).
GENERATED_NAMES = ["j", "idx", "M", "N", "b", "c", "r", "m_ok", "w", "cc", "rb", "nrb",
                   "ncc", "lane", "warp", "total", "t", "eps_in", "afg_key_in", "dims",
                   "acc_red0", "red0_part", "grad_in", "T", "S", "x0_0", "s0", "float", "half",
                   "kernel", "device",
                   "threadgroup", "__shared__", "blockIdx", "afg_sq", "afg_key", "NAN", "uint",
                   "simd_sum", "thread_position_in_grid", "exp", "sum", "max", "geo", "size",
                   "sdt", "cdt", "backend", "gradient", "parameter", "state", "self", "mx",
                   "math", "int", "super", "len", "initial", "shape", "axes", "key", "step",
                   "init", "red0", "g1_0", "h0", "new_param"]


def rename(text: str, names: dict[str, str]) -> str:
    """``text`` with each whole-word old name replaced by its new one."""
    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b",
                  lambda m: names[m.group(0)], text)


@settings(FUZZ, max_examples=6)
@given(st.lists(st.sampled_from(GENERATED_NAMES), min_size=3, max_size=3, unique=True))
def test_generated_names_as_spec_names_build_and_verify_or_are_refused(names):
    """A hyperparameter, a state and a value of TINY renamed: the build is refused at a
    location, or it succeeds and the MLX-ops update and every fused kernel (on the CPU
    executor) match the oracle on every specialisation."""
    from afgen.check.verify import verify
    from afgen.lower.compiler import compile_spec
    from afgen.spec.parse import parse_spec_text

    text = rename(tiny(), dict(zip(["lr", "m", "g"], names)))
    outcome = build(text)
    assert_contract(outcome)
    if outcome.rc != 0:
        return
    report = verify(compile_spec(parse_spec_text(text, SPEC)), steps=1,
                    backends=["mlx", "metal", "cuda"], dtypes=["float32"], adversarial=False)
    assert report.results and all(r.passed for r in report.results), report.table()
