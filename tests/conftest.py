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


@pytest.fixture(scope="session")
def cuda_sources(compiled):
    """Every distinct full CUDA source that verification launches (found without running)."""
    from afgen.check.verify import launched_sources

    return launched_sources(compiled, "cuda")


@pytest.fixture(scope="session")
def nvrtc_compiler():
    """libnvrtc with MLX's CUDA device headers. Skips where they are not installed, except
    in CI (CI=true), which installs them (pyproject's test extra, `afgen cuda-headers`):
    there a missing piece fails instead of passing by skipping."""
    import os

    from afgen.executor import nvrtc

    compiler = nvrtc.setup()
    if compiler is None:
        message = "NVRTC checks need " + "; ".join(nvrtc.missing())
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return compiler
