"""Backends: a SymPy printer per dialect plus the templates that lay the code out."""
