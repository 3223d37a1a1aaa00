"""Cython + OpenMP CPU kernels and the CPU backend built on them."""
