"""afgen: a code-generating optimizer compiler for MLX.

A YAML spec of an optimizer update is parsed safely, lowered through SymPy into a
kernel plan, and rendered into a self-contained MLX optimizer module (MLX ops, fused
Metal and CUDA kernels), verified against a NumPy float64 oracle from the same spec.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(spec_path: str) -> type:
    """Build the optimizer class of a spec in memory, without writing files (for trying
    spec variants). Raises SpecError for a bad spec."""
    from afgen.build import load_class

    return load_class(spec_path)


__all__ = ["__version__", "load"]
