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
    # matrix blocks
    ("  - g = grad @ grad", r"matrix products \('@'\) are only allowed inside", 14, 9),
    ("  - g = transpose(grad)", r"transpose\(\) is only allowed inside a 'matrix:'", 14, 9),
    ("  - matrix: lr\n    do: []", r"works on a full-size value assigned before it; 'lr'",
     14, 13),
    ("  - matrix: g\n    do:\n      - X = g @ g", r"never assigns 'g'", 14, 5),
    ("  - matrix: g\n    do:\n      - g = g @ lr", r"'@' multiplies matrices, not a scalar",
     16, 17),
    ("  - matrix: g\n    do:\n      - g = rowwise_sum(g)", r"only whole-matrix reductions",
     16, 13),
    ("  - matrix: g\n    do:\n      - repeat: lr\n        do: []",
     r"'repeat' takes an int hyperparameter or a count", 16, 17),
    ("  - matrix: g\n    do:\n      - g = grad", r"unknown name 'grad'", 16, 13),
    ("  - matrix: g\n    do:\n      - g = g if nrows(g) > lr else g",
     r"needs a static condition .* or, in a matrix block, a comparison of sizes", 16, 18),
    ("  - g = grad * rows", r"'rows' is the size of a factored parameter's row", 14, 5),
    ("  - matrix: g\n    do:\n      - s = 1\n      - repeat: 2\n        do:\n"
     "          - s = g\n      - g = g * s", r"'s' is scalar before the repeat but full in it",
     19, 13),
    ("  - matrix: g\n    do:\n      - repeat: 2\n        do:\n          - s = sum(g)\n"
     "      - g = g * s", r"unknown name 's'", 19, 17),
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


# -- bad input that once built a broken module or raised a traceback ----------------------

def _module(text: str, path: str = "ok.yaml"):
    from afgen.build import load_module

    spec = parse_spec_text(text, path)
    return getattr(load_module(compile_spec(spec)), spec.class_name)


def _with_check(check: str, default: float = 0.1) -> str:
    return _spec().replace("lr: {type: float, default: 0.1}",
                           f"lr: {{type: float, default: {default}, check: '{check}'}}")


CHECKS = [  # check, values it accepts, values it refuses (undefined there: refused)
    ("lr ** 2 < 4", [1.0, -1.0], [3.0, 1e300]),
    ("pow(lr, 0.5) < 2", [1.0, 0.0], [9.0, -1.0]),
    ("sqrt(lr) > 0.5", [1.0], [0.1, -1.0]),
    ("log(lr) < 0", [0.5], [2.0, 0.0, -1.0]),
    ("rsqrt(lr) > 1", [0.5], [4.0, 0.0]),
    ("exp(lr) < 10 and square(lr) > 0", [1.0], [3.0, 1000.0, 0.0]),
    ("where(lr > 1, lr, 1 / lr) >= 1", [0.5, 2.0], [0.0]),
    ("sign(lr) * abs(lr) == lr and max(lr, 1) < 2 and min(lr, -1) < 0", [1.5], [3.0]),
    ("1 / lr > 1", [0.5], [0.0, 2.0]),
]


@pytest.mark.parametrize("check,good,bad", CHECKS, ids=[c[0] for c in CHECKS])
def test_check_functions_run_in_the_constructor(check, good, bad):
    optimizer = _module(_with_check(check, good[0]))
    for value in good:
        assert optimizer(lr=value).lr == value
    for value in bad:
        with pytest.raises(ValueError, match=rf"lr must satisfy {re.escape(check)}, got"):
            optimizer(lr=value)


@pytest.mark.parametrize("check,col", [("mean(lr) > 0", 43), ("rms(lr) > 0", 43),
                                       ("lr", 42)])
def test_check_says_what_it_allows(check, col):
    error = _error(_with_check(check))
    assert "sqrt, rsqrt, abs" in error.message, error.message
    assert (error.loc.line, error.loc.col) == (3, col), str(error)


@pytest.mark.parametrize("where,text", [
    ("class", lambda t: t.replace("optimizer: Tiny", 'optimizer: "Tiny\\n"')),
    ("hyperparameter", lambda t: t.replace("  lr: {", '  "lr\\n": {')),
    ("state", lambda t: t.replace("  m: {", '  "m\\n": {')),
])
def test_names_ending_in_a_newline_are_refused(where, text):
    error = _error(text(_spec()))
    assert re.search(r"class name|plain identifier", error.message), error.message


@pytest.mark.parametrize("constant", ["10**20", "10**10 * 10**10", "(-3)**41",
                                      "9007199254740992 * 9007199254740992 - 1"])
def test_integer_constants_beyond_int64_compute_as_floats(constant):
    import mlx.core as mx

    optimizer = _module(_spec().replace("param - lr * g", f"param - g / ({constant})"))
    params = optimizer(backend="mlx").apply_gradients({"w": mx.ones((3,))}, {"w": mx.ones((3,))})
    expected = 1 - 1 / float(eval(constant))  # noqa: S307 - a literal of this test
    assert mx.allclose(params["w"], mx.full((3,), expected)).item()


def test_zero_as_a_divisor_gives_float_results_in_the_oracle():
    """The declared values are checked when the spec is compiled (a zero default used as a
    divisor is refused there); a zero passed later still gives inf/NaN in the oracle, as
    in MLX, not ZeroDivisionError."""
    import numpy as np

    from afgen.check.oracle import Oracle

    text = _spec().replace("  nesterov:", "  d: {type: float, default: 1.0}\n  nesterov:")
    text = text.replace("  - param = param - lr * g", "  - c = lr / d\n  - param = param - c * g")
    compiled = compile_spec(parse_spec_text(text, "ok.yaml"))
    out = Oracle(compiled, {"d": 0.0}).step({"w": np.ones(3)},
                                            {"w": np.array([1.0, -1.0, 0.0])})
    assert np.isneginf(out["w"][0]) and np.isposinf(out["w"][1]) and np.isnan(out["w"][2])


def test_requires_message_with_an_emoji_is_raised_as_written():
    text = _spec().replace("layout:", "requires:\n  - check: not nesterov\n"
                           "    message: \"no nesterov \U0001F680 'yet' \\\"{x}\\\" \\\\\"\n"
                           "layout:")
    with pytest.raises(ValueError) as info:
        _module(text)(nesterov=True)
    assert str(info.value) == "no nesterov \U0001F680 'yet' \"{x}\" \\"
    str(info.value).encode("utf-8")  # no lone surrogates


def test_update_that_never_assigns_param_is_refused_at_update():
    error = _error(_spec().replace("  - param = param - lr * g", "  - p = param - lr * g"))
    assert re.search(r"never assigns 'param'", error.message), error.message
    assert (error.loc.line, error.loc.col) == (12, 1), str(error)


@pytest.mark.parametrize("checks,line,message", [
    (["nesterov and not nesterov"], 7, r"false for every value"),
    (["false"], 7, r"false for every value"),
    (["nesterov or has(beta)", "not nesterov", "not has(beta)"], 11, r"together with"),
])
def test_requires_that_nothing_satisfies_is_refused_at_it(checks, line, message):
    block = "".join(f"  - check: {c}\n    message: m\n" for c in checks)
    error = _error(_spec().replace("layout:", f"requires:\n{block}layout:"))
    assert re.search(message, error.message), error.message
    assert (error.loc.line, error.loc.col) == (line, 12), str(error)


def test_a_requirement_on_values_is_checked_by_the_constructor_only():
    """The constructor refuses the values that break a requirement on values."""
    text = _spec().replace("layout:", "requires:\n  - check: not nesterov or lr < 1\n"
                           "    message: Nesterov needs a small step.\nlayout:")
    cls = _module(text)
    cls(nesterov=True, lr=0.5)
    cls(nesterov=False, lr=5.0)
    with pytest.raises(ValueError, match="Nesterov needs a small step."):
        cls(nesterov=True, lr=5.0)


@pytest.mark.parametrize("check,message,col", [
    ("lr", r"must be a condition on static options .* or on the values", 12),
    ("factored or lr > 0", r"cannot use 'factored'", 12),
    ("not nesterov or beta > 0", r"unknown name 'beta'", 28),  # may be None: not readable
    ("lr > 1", r"the defaults do not meet this requirement", 12),
])
def test_bad_requirements_on_values_are_refused_at_them(check, message, col):
    error = _error(_spec().replace("layout:", f"requires:\n  - check: {check}\n"
                                   "    message: m\nlayout:"))
    assert re.search(message, error.message), error.message
    assert (error.loc.line, error.loc.col) == (7, col), str(error)


@pytest.mark.parametrize("transform,message,line", [
    (lambda t: t.replace("default: 0.1}", "default: 0.1, check: 'lr > 1'}"),
     r"the default 0.1 of 'lr' fails its own check 'lr > 1'", 3),
    (lambda t: t.replace("default: 0.1}", "default: 0.1, example: 0, check: '1 / lr > 0'}"),
     r"the example 0.0 of 'lr' fails its own check", 3),
    (lambda t: t.replace("  lr: {type: float, default: 0.1}", "  lr: {type: float, default: 0.1}"
                         "\n  n: {type: int, default: 10000000000000000000000}"),
     r"at most 2\*\*53", 4),
])
def test_defaults_that_could_never_run_are_refused(transform, message, line):
    error = _error(transform(_spec()))
    assert re.search(message, error.message), error.message
    assert error.loc.line == line, str(error)


@pytest.mark.parametrize("update", [
    "  - c = lr / d\n  - param = param - c * grad",     # a host-only equation
    "  - param = param - grad * (lr / d)",              # a host-only part of one
    "  - param = param - grad * pow(0 - lr, 0.5 + d)",  # a root of a negative
])
def test_host_arithmetic_that_would_raise_is_refused_at_the_equation(update):
    """Hyperparameter-only arithmetic runs on Python numbers (as in MLX's optimizers), where
    1/0 raises ZeroDivisionError: with the declared values (default 0 here) that is a spec
    error at the equation, not a traceback from the first step."""
    text = BASE.replace("  beta: {type: optional_float, default: null}",
                        "  beta: {type: optional_float, default: null}\n"
                        "  d: {type: float, default: 0.0}")
    text = text.replace("  - param = param - lr * g\n", update + "\n")
    text = _spec(base=text)
    error = _error(text)
    line = text.splitlines().index(update.splitlines()[0]) + 1
    assert (error.loc.line, error.loc.col) == (line, 5) and "with d = 0.0" in str(error)


def test_host_arithmetic_is_checked_with_the_example_too():
    text = BASE.replace("  lr: {type: float, default: 0.1}",
                        "  lr: {type: float, default: 0.1, example: 0.0}")
    text = text.replace("  - param = param - lr * g\n", "  - param = param - grad * (1 / lr)\n")
    assert "with lr = 0.0" in str(_error(_spec(base=text)))


@pytest.mark.parametrize("entry,message,col", [
    ("{type: tuple, names: [a, b, c], default: [0.9, 0.99]}",
     r"the default of tuple 'betas' needs 3 numbers", 51),
    ("{type: tuple, names: [a], default: [0.9]}", r"must list 2 to 8 names", 31),
    ("{type: tuple, names: [a, b, c, d, e, f, g, h, i], default: [1, 1, 1, 1, 1, 1, 1, 1, 1]}",
     r"must list 2 to 8 names", 31),
    ("{type: pair, names: [a, b, c], default: [1, 1, 1]}", r"exactly 2 names", 30),
    ("{type: tuple, default: [1, 1, 1]}", r"needs 'names: \[a, b, \.\.\.\]'", 10),
])
def test_bad_tuples_are_refused_at_them(entry, message, col):
    text = _spec().replace("  nesterov: {type: bool, default: false}",
                           f"  nesterov: {{type: bool, default: false}}\n  betas: {entry}")
    error = _error(text)
    assert re.search(message, error.message), error.message
    assert (error.loc.line, error.loc.col) == (6, col), str(error)


def test_a_tuple_of_three_reaches_the_update_by_name():
    text = _spec("  - g = g * b3 / (b1 + b2)").replace(
        "  nesterov: {type: bool, default: false}",
        "  nesterov: {type: bool, default: false}\n"
        "  betas: {type: tuple, names: [b1, b2, b3], default: [1.0, 3.0, 2.0]}")
    cls = _module(text)
    with pytest.raises(ValueError, match="betas must be 3 floats"):
        cls(betas=(1.0, 2.0))
    import mlx.core as mx
    opt = cls(lr=1.0, betas=(1.0, 1.0, 4.0))
    new = opt.apply_gradients({"w": mx.array([1.0])}, {"w": mx.array([0.0])})
    assert new["w"].item() == -2.0  # g * 4 / (1 + 1)
