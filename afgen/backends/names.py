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
  own names (``geo`` becomes ``geo_1``), never the spec's.
"""
from __future__ import annotations

import builtins
import keyword

from afgen.backends.targets import reserved_in_kernels
from afgen.errors import SpecError
from afgen.names import spec_names
from afgen.spec.model import Spec
from afgen.spec.parse import class_name_problem as spec_class_name_problem

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


# What a generated module binds at top level (its imports and constants; the kernel
# tables and the ``_rt`` runtime start with ``_``, which spec names cannot) and ``self``:
# a spec name used as a local or as the class name must not shadow them.
MODULE_NAMES = frozenset({"annotations", "math", "Callable", "Optional", "Tuple", "Union", "mx",
                          "AFGEN_VERSION", "SPEC_SHA256", "BACKENDS", "PRECISIONS",
                          "NONFINITE", "THREADS", "Sharding", "shardings_of",
                          "self"})


# The keys of ``optimizer.state`` besides the schedules and the parameters' slots.
OPTIMIZER_STATE_KEYS = frozenset({"step", "skipped_steps"})


def optimizer_attributes() -> frozenset[str]:
    """The public attributes every generated optimizer has (MLX's Optimizer API and the
    runtime's options); hyperparameters are stored as ``self.<name>`` beside them."""
    from afgen.runtime import GeneratedOptimizer

    return frozenset(n for n in dir(GeneratedOptimizer) if not n.startswith("_"))


def python_name_problem(name: str) -> str | None:
    """Why a spec name cannot be written verbatim into the generated Python, or None."""
    if name in PYTHON_RESERVED:
        return "a Python keyword or built-in name"
    if name in MODULE_NAMES:
        return "a name the generated module already binds"
    return None


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name the generated optimizer class, or None."""
    problem = spec_class_name_problem(name) or python_name_problem(name)
    if problem and not problem.startswith("'"):
        return f"'{name}' is {problem}; it cannot name the optimizer class"
    return problem


def check_spec_names(spec: Spec) -> None:
    """Refuse a spec name the generated code cannot keep verbatim (see the module doc):
    in the kernels, in the generated Python, and as an attribute beside the optimizer's."""
    check_kernel_names(spec)
    for name, loc in spec_names(spec).items():
        problem = python_name_problem(name)
        if problem:
            raise SpecError(loc, f"'{name}' is {problem}; spec names are written verbatim "
                            "into the generated code, so choose another name")
    attributes = optimizer_attributes()
    for h in spec.hyperparameters:
        if h.kind == "schedule":  # kept in self.state[name], as MLX keeps learning_rate
            if h.name in OPTIMIZER_STATE_KEYS:
                raise SpecError(h.loc, f"'{h.name}' is a key the optimizer's state already "
                                "has (schedules are kept in self.state); choose another name")
        elif h.name in attributes:
            raise SpecError(h.loc, f"'{h.name}' is already an attribute of every generated "
                            "optimizer (hyperparameters are stored as self.<name>); choose "
                            "another name")
    problem = class_name_problem(spec.class_name)
    if problem:
        raise SpecError(spec.class_loc, problem)
