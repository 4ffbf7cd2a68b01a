"""Numba kernels. Contiguous float64 arrays and scalars in, arrays out.

Nothing here imports the Python layer, does validation or draws random numbers.
Kernels compile lazily on first call and are cached on disk.

``_config`` owns the numba options and the cache, ``_math`` every elementary function
(polynomial exp and log), ``tiles`` the transposed tiles of rows and the Gram and
Mahalanobis microkernels; ``gmm``, ``lda``, ``conjugate`` and ``sgvi`` are the models'
passes and import only those three, never each other.
"""
