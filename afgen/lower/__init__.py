"""Lowering: Spec -> specialised SymPy programs -> kernel plans (phases split at reductions)."""
