"""Checking a build: the NumPy oracle, the spec-order reference, verification of every
backend (MLX ops, and the kernels on the CPU executor and NVRTC) on random and adversarial
cases."""
