"""Kernels and their autograd Functions. Triton modules are imported lazily (see functional.py)."""
