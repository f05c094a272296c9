import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPEC = ROOT / "specs" / "adafactor.yaml"


@pytest.fixture(scope="session")
def spec_text() -> str:
    return SPEC.read_text()


@pytest.fixture(scope="session")
def compiled():
    from afgen.build import compile_path

    return compile_path(SPEC)


@pytest.fixture(scope="session")
def module(compiled):
    from afgen.build import load_module

    return load_module(compiled)
