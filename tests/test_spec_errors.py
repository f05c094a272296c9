"""Bad specs: each gives a SpecError at the right file:line:col, and the CLI exits 2."""
import re

import pytest

from afgen.build import compile_path
from afgen.cli import main
from afgen.errors import SpecError
from afgen.lower.compiler import compile_spec
from afgen.spec import parse_spec_text

BASE = """\
optimizer: Tiny
hyperparameters:
  lr: {type: float, default: 0.1}
  beta: {type: optional_float, default: null}
  nesterov: {type: bool, default: false}
layout:
  factored: ndim >= 2
state:
  row: {shape: row, when: factored}
  col: {shape: col, when: factored}
  m: {shape: full, when: has(beta)}
update:
  - g = grad
{extra}
  - param = param - lr * g
"""


def _spec(extra: str = "", base: str = BASE) -> str:
    return base.replace("{extra}", extra)


def _error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        compile_spec(parse_spec_text(text, "bad.yaml"))
    return info.value


def test_base_spec_is_valid():
    compiled = compile_spec(parse_spec_text(_spec(), "ok.yaml"))
    assert compiled.plans


CASES = [
    # (replacement for {extra} or a full text transform, message regex, line, col)
    ("  - g = grad.T", r"attribute access", 14, 9),
    ("  - g = foo(grad)", r"unknown function 'foo'", 14, 9),
    ("  - g = __import__", r"names starting with '_'", 14, 9),
    ("  - g = grad + missing", r"unknown name 'missing'", 14, 16),
    ('  - "g = (lambda: 1)()"', r"only calls of plain function names", 14, 10),
    ("  - g = (lambda: 1)()", r"YAML read this equation as a mapping", 14, 5),
    ("  - g = sum([x for x in grad])", r"comprehensions are not allowed", 14, 13),
    ("  - g = sum([grad])", r"lists are not allowed", 14, 13),
    ("  - g = grad[0]", r"subscripts are not allowed", 14, 9),
    ("  - g = a + 1\n  - a = g", r"'a' is used before it is defined", 14, 9),
    ("  - if: factored\n    then:\n      - w = row + col",
     r"shape-class mismatch: row \+ col", 16, 13),
    ("  - if: factored\n    then:\n      - row = grad", r"state 'row' is row but the right side "
     r"is full", 16, 9),
    ("  - g = grad * 2 ** 1000", r"constant exponents are limited", 14, 16),
    ("  - g = grad if lr > 0 else 0", r"needs a static condition", 14, 17),
    ("  - grad = 1", r"cannot assign to 'grad'", 14, 5),
    ("  - g = rowwise_mean(grad)", r"only exists for factored parameters", 14, 5),
    ("  - g = grad * beta", r"'beta' may be None here", 14, 5),
    ("  - g = sqrt(grad, grad)", r"sqrt\(\) takes 1 argument", 14, 9),
    ("  - g = grad +", r"syntax error", 14, 15),
    ("  - if: lr\n    then: []", r"must be a static condition", 14, 9),
]


@pytest.mark.parametrize("extra,message,line,col", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_update_is_located(extra, message, line, col):
    error = _error(_spec(extra))
    assert re.search(message, error.message), error.message
    assert (error.loc.path, error.loc.line) == ("bad.yaml", line), str(error)
    assert error.loc.col == col, str(error)


DOC_CASES = [
    (lambda t: t.replace("optimizer: Tiny", "optimizer: Tiny\noptimzer: X"),
     r"unknown key 'optimzer' in the spec", 2),
    (lambda t: t.replace("default: 0.1}", "defualt: 0.1}"), r"unknown key 'defualt'", 3),
    (lambda t: t.replace("default: 0.1", "default: fast"), r"must be a number, got str", 3),
    (lambda t: t.replace("type: float", "type: floaty"), r"unknown hyperparameter type", 3),
    (lambda t: t.replace("default: false", "default: 3"), r"must be true or false", 5),
    (lambda t: t.replace("shape: row, when: factored", "shape: row"),
     r"only exists for factored parameters: add 'when: factored'", 9),
    (lambda t: t.replace("shape: col,", "shape: diagonal,"), r"unknown shape class", 10),
    (lambda t: t.replace("  lr:", "  class:"), r"reserved", 3),
    (lambda t: t.replace("ndim >= 2", "ndim >= 1"), r"must be false for 1-D", 7),
    (lambda t: t + "  - nesterov = 1\n", r"cannot assign to 'nesterov'", 16),
    (lambda t: t.replace("  lr: {type: float, default: 0.1}",
                         "  lr: {type: float, default: 0.1}\n  lr: {type: float, default: 1}"),
     r"duplicate key 'lr'", 4),
    (lambda t: t.replace("update:", "update: [\n"), r"invalid YAML", 14),
    (lambda t: t.replace("layout:\n", "layout:\n  axes: diagonal\n"),
     r"'layout.axes' must be one of last, largest", 7),
    (lambda t: t.replace("ndim >= 2", "ndim >= 2 and rows >= lr"), r"unknown name 'lr'", 7),
    (lambda t: t.replace("ndim >= 2", "ndim >= 2 and rows >= n").replace(
        "  lr: {type: float, default: 0.1}",
        "  lr: {type: float, default: 0.1}\n  n: {type: int, default: 2.5}"),
     r"the default of int 'n' must be an integer, got", 4),
    (lambda t: t.replace("  lr:", "  rows:"), r"reserved", 3),
]


@pytest.mark.parametrize("transform,message,line", DOC_CASES, ids=[c[1][:30] for c in DOC_CASES])
def test_bad_structure_is_located(transform, message, line):
    error = _error(transform(_spec()))
    assert re.search(message, error.message), error.message
    assert error.loc.line == line, str(error)


def test_cli_reports_file_line_col_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(_spec("  - g = grad.T"))
    assert main(["build", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"{re.escape(str(bad))}:14:9: attribute access are not allowed.*", err)
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        compile_path(tmp_path / "nope.yaml")


def test_afgen_new_copies_a_spec_under_a_new_name(tmp_path):
    from afgen.spec import load_spec

    out = tmp_path / "variant.yaml"
    assert main(["new", "MyVariant", "--from", "specs/adafactor.yaml", "--out", str(out)]) == 0
    spec = load_spec(out)
    assert spec.class_name == "MyVariant" and spec.reference == ""
    assert main(["new", "MyVariant", "--from", "specs/adafactor.yaml", "--out", str(out)]) == 2
    assert main(["new", "lower_case", "--from", "specs/adafactor.yaml"]) == 2
