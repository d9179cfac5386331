"""Numeric kernels. Pure: arrays and numbers in, arrays out; no files, JSON, gRPC or logging.

Importing this package is cheap: the scalar modules (escape, raymarch, color) import only
numpy; Numba compiles happen in cpu.py / cuda.py, which callers import lazily.
"""
