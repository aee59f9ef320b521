"""Kernels: ``cpu`` holds the numba-jitted kernels every step of a built plan runs."""
