"""Spec front end: YAML with locations -> validated, typed model (no code is ever executed)."""
from afgen.spec.model import Spec
from afgen.spec.parse import load_spec, parse_spec_text

__all__ = ["Spec", "load_spec", "parse_spec_text"]
