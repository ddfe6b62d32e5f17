"""Numba kernels only: plain functions over arrays, outputs first, no validation.

The public wrappers in :mod:`numbadlrm.layers` validate and allocate, then call these.
"""
