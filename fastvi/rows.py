"""Where a fit's rows live: in memory, in a file read block by block, or on Dask.

A model never reads its data itself. It hands a *block function* to its ``Rows``, which
calls it on fixed blocks of rows wherever they are and adds up what it returns:

``map_reduce(fn, shared=(), local=None, n_jobs=None, ordered=False)``
    ``fn(block, start, *shared, *local[i])`` for every block ``i``: ``block`` holds the
    rows (float64, C-contiguous, writable; valid only during the call), or
    ``(rows, targets)`` when the source carries targets, and ``start`` is the index
    of its first row. The results are *block statistics*: values that add with ``+``
    (plain tuples element by element). They are summed in a binary tree fixed by the
    block order (:func:`tree_sum`), never in the order blocks happen to finish.
    With ``ordered=True`` ``fn`` returns partial sums stacked on a first axis (an
    array, or a tuple of them) and the result is, bitwise, NumPy's
    ``np.concatenate(partials of every block).sum(axis=0)`` (:func:`fold_in_order`),
    whatever the block size (on Dask too: the blocks run in parallel, and small
    tasks fold their partials into the running total one after another).
``map_rows(fn, args=(), n_columns=None, dtype=float64, n_jobs=None)``
    Per-row results of ``fn(rows, *args)`` (predictions), block by block: an array,
    or a lazy dask array for data on Dask.
``subsample(stride)``
    Every ``stride``-th row (and target) as an in-memory :class:`ArrayRows`.
``unique_targets()``
    The sorted distinct targets (class labels).

Sources: :class:`ArrayRows` (a NumPy array or a SciPy CSR matrix in memory),
:class:`FileRows` (a block source such as :class:`fastvi.batch.io.NpyRows`, a
``.npy`` file read one block at a time into one buffer) and
:class:`fastvi._dask.DaskRows` (the row chunks of a dask array, computed where they
live). Blocks have ``block_rows`` rows (65536 by default, the same in memory and in a
file), and the kernels split every block into chunks of their own fixed size, so a
fit gives the same bits in memory and out of core, for any number of threads. A dask
array's blocks are its row chunks: chunks of ``block_rows`` rows give the bits of the
in-memory fit (and, for sums in order, chunks of whole kernel chunks), other
chunkings agree to rounding.
"""

import math

import numpy as np

__all__ = [
    "BLOCK_ROWS",
    "ArrayRows",
    "FileRows",
    "Max",
    "Rows",
    "fit_rows",
    "fold_in_order",
    "is_block_source",
    "numeric_target",
    "predict_rows",
    "source_rows",
    "tree_sum",
]

# rows per block: 16 chunks of the kernels' 4096 rows (fastvi.batch.io's default too)
BLOCK_ROWS = 16 * 4096


def add(a, b):
    """``a + b`` for block statistics; plain tuples add element by element."""
    if type(a) is tuple:
        return tuple(x + y for x, y in zip(a, b))
    return a + b


def tree_sum(parts, add=add):
    """Sum ``parts`` (any iterable) pairwise in a binary tree fixed by their order.

    Level by level, neighbours ``(0, 1), (2, 3), …`` are added and an odd last part
    moves up unchanged; computed here as parts arrive, holding one partial sum per
    level (a binary counter), so a stream of blocks needs O(log n) statistics. ``add``
    may build the tree lazily instead (Dask).
    """
    stack = []  # (number of parts, their sum), sizes strictly decreasing powers of 2
    for part in parts:
        size = 1
        while stack and stack[-1][0] == size:
            left = stack.pop()[1]
            part, size = add(left, part), 2 * size
        stack.append((size, part))
    if not stack:
        raise ValueError("no rows to reduce")
    total = stack.pop()[1]
    while stack:  # the odd parts, smallest first (they moved up unpaired)
        total = add(stack.pop()[1], total)
    return total


def fold_in_order(parts):
    """``np.concatenate(parts).sum(axis=0)`` of stacked partials fed in order, bitwise.

    ``parts`` yields arrays (or tuples of arrays, summed element by element) whose
    first axis stacks partial sums. NumPy adds rows of more than one value one after
    another, so a running total that restarts each part from the previous total
    gives its bits while holding one row (:func:`fold_step`); parts whose rows hold
    one value (NumPy sums those pairwise) are copied (:func:`one_values`) and summed
    at the end. Parts may be views of a reused buffer; on Dask the steps are tasks.
    """
    acc, ones = None, []
    for part in parts:
        acc = fold_step(acc, part)
        ones.append(one_values(part))
    return fold_total(acc, ones)


def _many(p):  # rows of more than one value (else NumPy sums them pairwise)
    return p.ndim > 1 and math.prod(p.shape[1:]) > 1


def _arrays(part):
    return part if type(part) is tuple else (part,)


def fold_step(acc, part):
    """``acc`` (None at first) with ``part``'s arrays of rows of many values added."""
    old = acc[1] if acc else [None] * len(_arrays(part))
    sums = [
        p if o is None else np.concatenate((o, p)) for o, p in zip(old, _arrays(part))
    ]
    # sums of values too large overflow to inf (or NaN): the models check their
    # statistics and say so, also where this runs in a task (Dask)
    with np.errstate(over="ignore", invalid="ignore"):
        return type(part) is tuple, [
            s.sum(0, keepdims=True) if _many(s) else None for s in sums
        ]


def one_values(part):
    """Copies of ``part``'s arrays of rows of one value (None for the others)."""
    return [None if _many(p) else np.array(p) for p in _arrays(part)]


def fold_total(acc, ones):
    """The total of the parts: ``acc`` of :func:`fold_step`, ``ones`` of every part."""
    if acc is None:
        raise ValueError("no rows to reduce")
    with np.errstate(over="ignore", invalid="ignore"):  # as in fold_step
        out = tuple(
            np.concatenate([o[i] for o in ones]).sum(0) if s is None else s[0]
            for i, s in enumerate(acc[1])
        )
    return out if acc[0] else out[0]


class Max:
    """A block statistic whose ``+`` keeps the larger value (a maximum in a sum tree)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = float(value)

    def __add__(self, other):
        return Max(max(self.value, other.value))


class Rows:
    """The data of one fit, in blocks of rows (see the module documentation).

    Attributes: ``shape`` (n_samples, n_features), ``y`` (targets or None) and
    ``block_rows``. Subclasses yield ``(start, block)`` from ``blocks()``.
    """

    shape = (0, 0)
    y = None
    block_rows = BLOCK_ROWS

    def blocks(self):
        raise NotImplementedError

    def block_sizes(self):
        """The number of rows of every block, in block order."""
        n, size = self.shape[0], self.block_rows
        return [min(size, n - start) for start in range(0, n, size)]

    def map_reduce(self, fn, shared=(), local=None, n_jobs=None, ordered=False):
        """``fn`` on every block, results summed in a fixed tree, or in order
        (``ordered``; module doc).

        Runs in the calling thread, with its thread settings (``n_jobs`` is for
        sources whose blocks run elsewhere). ``local[i]`` is asked for in block
        order, once, as the block is reached.
        """
        mine = (lambda i: ()) if local is None else (lambda i: tuple(local[i]))
        parts = (
            fn(block, start, *shared, *mine(i))
            for i, (start, block) in enumerate(self.blocks())
        )
        return fold_in_order(parts) if ordered else tree_sum(parts)

    def map_rows(self, fn, args=(), n_columns=None, dtype=np.float64, n_jobs=None):
        """``fn(rows, *args)`` of every block, concatenated (per-row results)."""
        out = [np.asarray(fn(_only_rows(block), *args)) for _, block in self.blocks()]
        return np.concatenate(out).astype(dtype, copy=False)

    def subsample(self, stride):
        """Every ``stride``-th row (and target), copied into an :class:`ArrayRows`."""
        rows, targets = [], []
        for start, block in self.blocks():
            first = -start % stride
            rows.append(_only_rows(block)[first::stride].copy())
            if self.y is not None:
                targets.append(np.asarray(block[1][first::stride]))
        return ArrayRows(
            np.concatenate(rows), np.concatenate(targets) if targets else None
        )

    def unique_targets(self):
        """Sorted distinct targets."""
        return np.unique(self.y)

    def check_finite(self, n_jobs=None):
        """Raise if a value is NaN or infinite (in memory: checked on validation;
        a block source checks its blocks as it reads them)."""

    def in_memory(self):
        """The rows as one dense array in memory, or None (a model may run its
        kernels over the whole array at once where that gives the bits of the
        blocks)."""
        return None


def _only_rows(block):
    return block[0] if type(block) is tuple else block


class ArrayRows(Rows):
    """Rows of a validated array in memory: a float64 C-contiguous writable ndarray
    (views of it are the blocks) or a SciPy CSR matrix; ``y`` aligned targets."""

    def __init__(self, X, y=None, block_rows=BLOCK_ROWS):
        self.X, self.y = X, y
        self.shape = tuple(int(s) for s in X.shape)
        self.block_rows = int(block_rows)

    def in_memory(self):
        return None if hasattr(self.X, "tocsr") else self.X

    def blocks(self):
        n = self.shape[0]
        for start in range(0, n, self.block_rows):
            stop = min(n, start + self.block_rows)
            rows = self.X[start:stop]
            yield start, rows if self.y is None else (rows, self.y[start:stop])


class FileRows(Rows):
    """Rows of a block source read one block at a time (out of core).

    ``source`` has ``shape``, ``block_rows`` and ``iter_blocks()`` yielding ``(start,
    stop, view)`` with the rows in ``view[1:]`` (:class:`fastvi.batch.io.NpyRows`,
    which checks every value on its first pass), or in ``view`` itself when the
    source's ``spare_row`` is False (the sparse sources of :mod:`fastvi.batch.io`
    yield CSR blocks). Memory does not grow with the
    number of rows; ``y`` (targets, small beside the rows) may be in memory or a
    memory-mapped array.
    """

    def __init__(self, source, y=None):
        self.source, self.y = source, y
        self.shape = tuple(int(s) for s in source.shape)
        self.block_rows = int(source.block_rows)

    def blocks(self):
        spare = getattr(self.source, "spare_row", True)
        for start, stop, view in self.source.iter_blocks():
            rows = view[1:] if spare else view
            yield start, rows if self.y is None else (rows, self.y[start:stop])


def is_block_source(X):
    """True for an out-of-core row source (``iter_blocks`` and ``block_rows``)."""
    return hasattr(X, "iter_blocks") and hasattr(X, "block_rows")


def source_rows(X, y=None, ensure_2d=True):
    """``Rows`` of data that is not an in-memory array (a dask collection or a block
    source), else None. With ``ensure_2d=False`` a 1-D dask array is one column."""
    from ._dask import DaskRows, is_dask_collection

    if is_dask_collection(X):
        if not ensure_2d and getattr(X, "ndim", 2) == 1:
            X = X[:, None]
        return DaskRows(X, y=y)
    if is_block_source(X):
        return FileRows(X, y)
    return None


def fit_rows(
    estimator, X, y=None, *, y_numeric=False, supervised=True, dtype=np.float64
):
    """Validate ``X`` (and ``y``) as scikit-learn does and wrap them in ``Rows``.

    In memory: ``validate_data`` (``dtype``: float64, or a list of dtypes to keep,
    the first for other input; at least 2 samples). A block source or a
    dask collection stays where it is: its shape, ``y`` and (on Dask) every value
    are checked here, a source's values on its first pass. Sets
    ``n_features_in_`` (and ``feature_names_in_`` for in-memory data with names).
    """
    from sklearn.utils.validation import check_array, column_or_1d, validate_data

    name = type(estimator).__name__
    if supervised and y is None:
        raise ValueError(f"{name} requires y to be passed, but the target y is None.")
    if supervised and y_numeric:
        y = numeric_target(estimator, y)
    if supervised and is_block_source(X):
        y_dtype = np.float64 if y_numeric else None
        y = check_array(y, ensure_2d=False, dtype=y_dtype, input_name="y")
        y = column_or_1d(y, warn=True)
        if y.shape[0] != X.shape[0]:
            raise ValueError(
                f"y has shape {y.shape}; expected ({X.shape[0]},) to match X"
            )
    rows = source_rows(X, y)
    if rows is None:
        if supervised:
            X, y = validate_data(
                estimator, X, y, dtype=dtype, y_numeric=y_numeric, ensure_min_samples=2
            )
        else:
            X = validate_data(estimator, X, dtype=dtype, ensure_min_samples=2)
        return ArrayRows(np.require(X, requirements=["C", "W"]), y)
    n, d = rows.shape
    if n < 2:
        raise ValueError(
            f"Found array with {n} sample(s) (shape={rows.shape}) while a "
            f"minimum of 2 is required by {name}."
        )
    rows.check_finite(getattr(estimator, "n_jobs", None))
    estimator.n_features_in_ = d
    estimator.__dict__.pop("feature_names_in_", None)
    return rows


def numeric_target(estimator, y):
    """A regressor's ``y`` with strings or objects converted to float64, refused
    with a message that names y where they are not numbers (scikit-learn converts
    object arrays only, and says no more than NumPy); other ``y`` as given."""
    from ._dask import is_dask_collection

    if is_dask_collection(y):
        return y
    values = np.asarray(y)
    if values.dtype.kind not in "OUS":
        return y
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        for value in values.ravel():
            try:
                float(value)
            except (TypeError, ValueError):
                break
        if isinstance(value, np.generic):  # shown as the Python value
            value = value.item()
        raise ValueError(
            f"{type(estimator).__name__} is a regressor and needs numbers in y, "
            f"got {value!r} (could not convert it to float)."
        ) from None


def predict_rows(estimator, X):
    """``Rows`` of new data for a fitted estimator (scikit-learn's feature check)."""
    from sklearn.utils.validation import _check_n_features, validate_data

    rows = source_rows(X)
    if rows is None:
        X = validate_data(estimator, X, reset=False, dtype=np.float64)
        return ArrayRows(np.require(X, dtype=np.float64, requirements=["C", "W"]))
    _check_n_features(estimator, rows, reset=False)
    return rows
