"""The naming rule of generated code: spec names verbatim, the generator's names fresh.

Every name a spec introduces (hyperparameters and their components, state tensors, the
values its update assigns) is written unchanged into the generated Python and kernel text,
so a reader finds ``beta2t`` where the spec says ``beta2t``. Two things make that safe:

* a spec name that a target language or the generated module itself cannot give up is
  refused where the spec writes it (:func:`check_spec_names`): keywords and builtins of
  Python, the names each kernel target reserves (``afgen.backends.targets``: keywords
  and built-in names of C++/Metal/CUDA, and the ``afg_*`` names of the generator's
  headers; :func:`check_kernel_names`), the names the generated module
  binds at top level, and (for hyperparameters, stored as ``self.<name>``) every attribute
  a generated optimizer already has;
* every other name (temporaries, kernel locals, buffers, loop indices) is drawn from a
  :class:`SymbolTable` that already holds the spec's names, so the generator renames its
  own names (``size`` becomes ``size_1``), never the spec's.
"""
from __future__ import annotations

import builtins
import keyword
from collections.abc import Iterable

from afgen.backends.targets import reserved_in_kernels
from afgen.errors import SpecError
from afgen.names import SymbolTable, spec_names
from afgen.spec.model import Spec

__all__ = ["PYTHON_RESERVED", "SymbolTable", "check_kernel_names", "check_spec_names",
           "spec_names"]

# Python: keywords (soft ones too: ``match``/``case``/``type`` are legal names, but a
# reader should not meet them as values) and every builtin.
PYTHON_RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(
    name for name in dir(builtins) if not name.startswith("_"))

# Every generator name of kernel text that a header or prologue defines starts with this.
GENERATOR_PREFIX = "afg_"


def check_kernel_names(spec: Spec) -> None:
    """Refuse a spec name that a kernel target reserves (its keywords, the built-in names
    its kernels meet, the ``afg_*`` names of the generator's headers): spec names are
    written verbatim into every kernel."""
    reserved = reserved_in_kernels()
    for name, loc in spec_names(spec).items():
        if name.startswith(GENERATOR_PREFIX):
            why = f"in the generator's own namespace ('{GENERATOR_PREFIX}*')"
        elif name in reserved:
            why = f"a keyword or built-in name of {reserved[name]} kernels"
        else:
            continue
        raise SpecError(loc, f"'{name}' is {why}; spec names are written verbatim into the "
                        "generated code, so choose another name")


def check_spec_names(spec: Spec, module_names: Iterable[str],
                     optimizer_attributes: Iterable[str]) -> None:
    """Refuse a spec name the generated code cannot keep verbatim (see the module doc)."""
    module_names = frozenset(module_names)
    attributes = frozenset(optimizer_attributes)
    check_kernel_names(spec)
    for name, loc in spec_names(spec).items():
        if name in PYTHON_RESERVED:
            why = "a Python keyword or builtin"
        elif name in module_names:
            why = "a name the generated module already binds"
        else:
            continue
        raise SpecError(loc, f"'{name}' is {why}; spec names are written verbatim into the "
                        "generated code, so choose another name")
    for h in spec.hyperparameters:
        if h.name in attributes:
            raise SpecError(h.loc, f"'{h.name}' is already an attribute of every generated "
                            "optimizer (hyperparameters are stored as self.<name>); choose "
                            "another name")
