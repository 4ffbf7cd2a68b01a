"""Numba kernels. Contiguous float64 arrays and scalars in, arrays out.

Nothing here imports the Python layer, does validation or draws random numbers.
Kernels compile lazily on first call and are cached on disk.
"""
