"""Verification passes for every specialisation and fails when a backend is wrong."""
import pytest

from afgen.backends import printers
from afgen.verify import verify


def test_every_specialisation_passes(compiled):
    report = verify(compiled, steps=6)
    assert len(report.results) == len(compiled.plans) == 24
    assert report.passed, report.table()
    assert "24 passed, 0 failed" in report.table()


@pytest.mark.parametrize("broken", [
    {"rsqrt": "mx.sqrt"},
    {"maximum": "mx.minimum"},
])
def test_a_wrong_mlx_backend_fails_verification(compiled, monkeypatch, broken):
    monkeypatch.setattr(printers.MLXPrinter, "funcs", {**printers.MLXPrinter.funcs, **broken})
    report = verify(compiled, steps=3)
    assert not report.passed
    assert "FAIL" in report.table()


def test_a_wrong_constant_fails_verification(compiled, monkeypatch):
    original = printers.MLXPrinter.float_literal
    monkeypatch.setattr(printers.MLXPrinter, "float_literal",
                        lambda self, v: original(self, v * 1.001 if v == 0.01 else v))
    report = verify(compiled, steps=3)
    failed = {r.case for r in report.results if not r.passed}
    assert failed and all("!warmup_init" in case for case in failed)
