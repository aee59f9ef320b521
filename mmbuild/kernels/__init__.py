"""Kernels: ``cpu`` holds the numba-jitted kernels every step of a built plan runs."""

from mmbuild.kernels import compile_notice as compile_notice  # says when kernels compile
