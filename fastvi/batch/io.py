"""Reading data files for batch jobs: one clear error per problem, naming the file.

Formats (chosen by the file name, or explicitly with ``fmt``):

``.npy``
    A 2-D numeric array. A float64 or float32, C-order file can be read in fixed
    row blocks (:class:`NpyRows`) for out-of-core fits; otherwise it is
    memory-mapped.
``.npz``
    A NumPy archive holding one 2-D array (or one named ``X``), or a SciPy sparse
    CSR, CSC or COO matrix saved by ``scipy.sparse.save_npz`` (document-word counts
    for LDA; its indices are checked). Opened with ``allow_pickle=False``.
``.csv`` / ``.tsv``
    Numbers separated by commas (tabs), no header unless ``header=True``.
``.parquet``
    Every column numeric; needs pyarrow (not a fastvi dependency).
``docword`` (``docword.*.txt``, optionally ``.gz``)
    The UCI bag-of-words format: three lines D, W, NNZ, then NNZ lines
    ``docID wordID count`` (1-based ids). Read as a D x W CSR count matrix.

Rows holding NaN or infinity are refused with the file, row and column.

Row and column numbers in messages count from 1, as a spreadsheet or a text editor
does: "row 1" is the first data row (a CSV header line is not counted), "column 1"
the first column, and "rows 1..65536" a range that includes both ends. A docword
file's problems name the line of the file (the three header lines count).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import mmap
import os
import queue
import re
import struct
import sys
import threading
import tokenize
import zipfile
import zlib

import numpy as np

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "DataDigest",
    "DataError",
    "DocwordRows",
    "NpyRows",
    "SparseNpzRows",
    "check_finite",
    "dask_rows",
    "data_format",
    "fingerprint",
    "read_data",
    "sparse_rows",
]

# 16 chunks of 4096 rows: a multiple of the mixture kernel's chunk, so a block pass
# has the in-memory chunk boundaries. 8 MiB per block at 16 float64 features.
DEFAULT_BLOCK_ROWS = 16 * 4096

# madvise(2) option: map a range's pages from the page cache, reading those not
# there; fails (EFAULT) past the end of the file rather than raising SIGBUS later
_POPULATE_READ = 22 if sys.platform.startswith("linux") else None

_SPARSE_KEYS = {"format", "shape", "indptr", "indices", "data"}


# what reading a damaged or foreign file can raise besides OSError
_DAMAGED = (
    ValueError,
    KeyError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    UnicodeDecodeError,
    SyntaxError,  # a mangled .npy header (numpy parses it as a Python literal)
    tokenize.TokenError,
    struct.error,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
)


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


def data_format(path, fmt="auto"):
    """The format name of ``path`` ('npy', 'npz', 'csv', 'tsv', 'parquet', 'docword')."""
    if fmt != "auto":
        return fmt
    name = os.path.basename(os.fspath(path)).lower()
    if name.startswith("docword.") or name.endswith((".docword", ".docword.gz")):
        return "docword"
    for suffix in ("npy", "npz", "csv", "tsv", "parquet"):
        if name.endswith("." + suffix):
            return suffix
    raise DataError(
        f"{path}: unknown data format (expected .npy, .npz, .csv, .tsv, .parquet or "
        "a docword.*.txt file; or pass --format)"
    )


def _first_bad(values):
    """Index tuple of the first non-finite entry of ``values``, or None."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(values)):  # a quick look (one that overflows looks on)
            return None
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    return np.unravel_index(int(np.argmax(bad.ravel())), values.shape)


def check_finite(X, path, row_offset=0):
    """Raise DataError naming the first NaN/infinite entry of X (dense or CSR)."""
    import scipy.sparse as sp

    if sp.issparse(X):
        X = X.tocsr()
        where = _first_bad(X.data)
        if where is not None:
            entry = where[0]
            row = int(np.searchsorted(X.indptr, entry, side="right") - 1)
            _not_finite(path, row + row_offset, int(X.indices[entry]), X.data[entry])
        return
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected numbers, got an array of dtype {X.dtype}")
    if X.dtype.kind != "f":
        return
    step = 1 << 16  # look at a memory-mapped file a slice at a time
    for start in range(0, X.shape[0], step):
        block = np.asarray(X[start : start + step])
        where = _first_bad(block)
        if where is not None:
            column = int(where[1]) if block.ndim > 1 else 0
            _not_finite(path, int(where[0]) + start + row_offset, column, block[where])


def _not_finite(path, row, column, value):
    """Refuse ``value`` at 0-based ``row``, ``column`` of the file ``path``."""
    raise DataError(
        f"{path}: row {row + 1}, column {column + 1}: value {value} is not finite"
    )


def _check_2d(X, path):
    if X.ndim != 2:
        raise DataError(
            f"{path}: expected a 2-D array (rows x columns), got shape {X.shape}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: the array is empty (shape {X.shape})")


def _refuse_model_file(path):
    from ..persist import is_model_file

    if is_model_file(path):
        raise DataError(f"{path}: is a fastvi model file, not data")


def _read_npy(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        text = str(exc)
        if "mmap length is greater than file size" in text:  # numpy's words
            text = "truncated: the file is shorter than its header's shape needs"
        raise DataError(f"{path}: cannot read as .npy ({text})") from None


def _read_npz(path):
    import scipy.sparse as sp

    _refuse_model_file(path)
    try:
        # numpy leaves its own file handle open when the archive is damaged: own it
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as archive:
            names = set(archive.files)
            if {"format", "shape", "data"} <= names:
                fmt = archive["format"].item()
                fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                shape = tuple(int(v) for v in archive["shape"])
                data = archive["data"]
                if fmt in ("csr", "csc") and _SPARSE_KEYS <= names:
                    cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
                    X = cls((data, archive["indices"], archive["indptr"]), shape)
                    # scipy's constructor does not check the indices: a column
                    # beyond the width would reach the kernels
                    X.check_format(full_check=True)
                elif fmt == "coo" and {"row", "col"} <= names:
                    X = sp.coo_matrix((data, (archive["row"], archive["col"])), shape)
                elif fmt == "coo" and "coords" in names:
                    X = sp.coo_matrix((data, tuple(archive["coords"])), shape)
                else:
                    raise DataError(
                        f"{path}: unsupported sparse format {fmt!r} (save X.tocsr())"
                    )
                return X.tocsr()
            if len(names) == 1:
                (name,) = names
            elif "X" in names:
                name = "X"
            else:
                raise DataError(
                    f"{path}: holds arrays {sorted(names)}; expected one array or one "
                    "named 'X'"
                )
            return archive[name]
    except DataError:
        raise
    except (ValueError, TypeError, OSError, EOFError, KeyError) as exc:
        text = str(exc)
        if "allow_pickle" in text or "Object arrays" in text:
            text = "holds a pickled (object) array, which is refused"
        raise DataError(f"{path}: cannot read as .npz ({text})") from None


def _read_text(path, delimiter, header):
    try:
        skip = 1 if header else 0
        return np.loadtxt(
            path, delimiter=delimiter, skiprows=skip, ndmin=2, dtype=np.float64
        )
    except ValueError as exc:
        hint = ""
        if not header and _has_header(path, delimiter):
            hint = "; the first line looks like a header: pass --header to skip it"
        raise DataError(f"{path}: {_text_problem(exc)}{hint}") from None


def _text_problem(exc):
    """numpy.loadtxt's error in this module's convention (rows, columns from 1).

    numpy counts the row of a value it cannot convert from 0 and its column from 1,
    and the row whose number of columns changed from 1.
    """
    text = str(exc)
    found = re.search(
        r"could not convert string (.*) to \w+ at row (\d+), column (\d+)", text
    )
    if found:
        value, row, column = found.group(1), int(found.group(2)), int(found.group(3))
        return f"row {row + 1}, column {column}: {value} is not a number"
    found = re.search(
        r"number of columns changed from (\d+) to (\d+) at row (\d+)", text
    )
    if found:
        before, now, row = (int(v) for v in found.groups())
        return f"row {row}: has {now} columns, the rows before it have {before}"
    return f"cannot read as numbers ({text})"


def _has_header(path, delimiter):
    """Whether the first line of a text file is not numbers but the second is."""

    def numbers(line):
        try:
            [float(v) for v in line.strip().split(delimiter)]
        except ValueError:
            return False
        return bool(line.strip())

    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first, second = fh.readline(), fh.readline()
    except OSError:
        return False
    return not numbers(first) and numbers(second)


def _read_parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow, which is not installed "
            "(pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(path)
        return np.column_stack(
            [np.asarray(col.to_numpy(), dtype=np.float64) for col in table.columns]
        )
    except Exception as exc:  # pyarrow raises its own error types
        raise DataError(f"{path}: cannot read as Parquet ({exc})") from None


def _read_docword(path):
    import scipy.sparse as sp

    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            n_docs, n_words, nnz = _docword_header(path, fh)
            try:
                entries = np.loadtxt(fh, dtype=np.int64, ndmin=2)
            except ValueError as exc:
                raise DataError(f"{path}: bad docword entry ({exc})") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if entries.size == 0:
        entries = entries.reshape(0, 3)
    if entries.shape[1] != 3:
        raise DataError(f"{path}: docword entries must be 'docID wordID count'")
    if entries.shape[0] != nnz:
        raise DataError(
            f"{path}: the header says {nnz} entries, the file holds {entries.shape[0]}"
        )
    _check_entries(path, entries, 3, (n_docs, n_words))
    docs, words, counts = entries.T
    return sp.csr_matrix(
        (counts.astype(np.float64), (docs - 1, words - 1)), shape=(n_docs, n_words)
    )


def _docword_header(path, fh):
    """D, W and NNZ: the first three lines of a docword file (text or bytes)."""
    try:
        return tuple(int(fh.readline()) for _ in range(3))
    except ValueError:
        raise DataError(
            f"{path}: not a docword file (the first three lines must be the "
            "numbers of documents, words and entries)"
        ) from None


def _check_entries(path, entries, line, shape):
    """Refuse docword ``entries`` (the lines after line ``line``) that hold an id
    outside ``shape`` or a negative count, naming the line."""
    for column, name, top in ((0, "docID", shape[0]), (1, "wordID", shape[1])):
        ids = entries[:, column]
        bad = np.flatnonzero((ids < 1) | (ids > top))
        if bad.size:
            raise DataError(
                f"{path}: line {line + int(bad[0]) + 1}: {name} {int(ids[bad[0]])} is "
                f"outside 1..{top}"
            )
    bad = np.flatnonzero(entries[:, 2] < 0)
    if bad.size:
        raise DataError(f"{path}: line {line + int(bad[0]) + 1}: negative count")


@contextlib.contextmanager
def _reading(path, what, opening=False):
    """A problem reading ``path`` raised as a DataError: "{path}: {what} (...)"
    (``opening``: a missing file is "no such file")."""
    try:
        yield
    except DataError:
        raise
    except (OSError, *_DAMAGED) as exc:
        if opening and isinstance(exc, FileNotFoundError):
            raise DataError(f"{path}: no such file") from None
        raise DataError(f"{path}: {what} ({exc})") from None


def read_data(path, fmt="auto", header=False, check=True):
    """Read a data file as a 2-D array (maybe memory-mapped) or a CSR matrix.

    Parameters
    ----------
    path : str or path-like
    fmt : str, default='auto'
        'auto' (from the name), 'npy', 'npz', 'csv', 'tsv', 'parquet' or 'docword'.
    header : bool, default=False
        Skip the first line of a CSV/TSV file.
    check : bool, default=True
        Refuse NaN and infinite values (naming the file, row and column, counted
        from 1).

    Returns
    -------
    X : ndarray or scipy.sparse.csr_matrix

    Raises
    ------
    DataError
    """
    path = os.fspath(path)
    fmt = data_format(path, fmt)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permission denied)")
    readers = {
        "npy": _read_npy,
        "npz": _read_npz,
        "csv": lambda p: _read_text(p, ",", header),
        "tsv": lambda p: _read_text(p, "\t", header),
        "parquet": _read_parquet,
        "docword": _read_docword,
    }
    if fmt not in readers:
        raise DataError(f"{path}: unknown format {fmt!r}")
    try:
        X = readers[fmt](path)
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise DataError(
            f"{path}: does not fit in memory; a float64 .npy file is read block by "
            "block instead (fastvi fit gmm)"
        ) from None
    except _DAMAGED as exc:
        # a truncated, corrupted or foreign file: numpy's, zipfile's and zlib's own
        # errors do not name the file
        raise DataError(
            f"{path}: cannot be read as {fmt} (damaged or not a {fmt} file: "
            f"{type(exc).__name__}: {exc})"
        ) from None
    if isinstance(X, np.ndarray):  # not a sparse matrix
        _check_2d(X, path)
    if check:
        check_finite(X, path)
    return X


class _BlockSource:
    """``path`` and ``block_rows`` of a source read block by block, and its repr."""

    def _init_blocks(self, path, block_rows):
        self.path = os.fspath(path)
        if int(block_rows) < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.block_rows = int(block_rows)

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.path!r}, shape={self.shape}, "
            f"block_rows={self.block_rows})"
        )


def _npy_header(fh):
    """(shape, fortran_order, dtype) of the .npy stream ``fh``, left after it."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


class NpyRows(_BlockSource):
    """Fixed row blocks of a float64 (or float32) C-order ``.npy`` file, as float64.

    An out-of-core data source for ``BayesianGaussianMixture.fit``: each pass goes
    through the file block by block and the process holds a few blocks of it at a
    time, so the memory used does not depend on the number of rows (the operating
    system's page cache may keep the file, but that is not the process's memory).
    The first pass checks every value for NaN/infinity.

    Parameters
    ----------
    path : str or path-like
    block_rows : int, default=65536
        Rows per block; a multiple of 4096 keeps the mixture fit bitwise equal to the
        in-memory fit.
    prefetch : int, default=2
        Blocks loaded ahead on a reader thread while the caller computes on the
        current one (``prefetch + 1`` blocks held in all); 0 loads each block in
        the calling thread when it is asked for.

    Notes
    -----
    How a block is loaded. A float64 file on Linux is mapped, private and
    copy-on-write, and a block is a view of the mapping: its pages are mapped from
    the page cache (read from the disk first where they are not there) before the
    block is handed out, and unmapped once the consumer is done with it. Nothing is
    copied, and a warm pass costs page-table work only (measured about a quarter of
    the CPU time of copying the bytes out of the page cache). Elsewhere, and for a
    float32 file (``file_dtype``), a block is read with ``readinto`` into one of
    ``prefetch + 1`` buffers allocated once; a float32 block is widened to float64
    there, exactly: the blocks hold the same values as for a float64 file of the
    same numbers (the mixture's ``compute_dtype='float32'`` narrows them back, also
    exactly).

    ``iter_blocks()`` yields ``(start, stop, view)`` where ``view`` has shape
    ``(1 + stop - start, n_features)``, float64, C-contiguous and writable: rows
    ``start:stop`` are ``view[1:]`` and ``view[0]`` is a spare row the consumer may
    write (writing a mapped block never changes the file). The view is valid until
    the consumer asks for the next block; then its buffer may be filled again, or
    its pages unmapped.

    With ``prefetch > 0`` a reader thread loads the next blocks, in file order,
    while the caller computes; it waits on the disk and in system calls. Those of a
    copied block (``readinto``) release the GIL; the page loads of a mapped one
    (``madvise``) hold it in CPython, so on a cold file the caller's Python code
    waits while a block is read from the disk (its kernels, which run without the
    GIL, do not). The blocks, their order and their values are those of ``prefetch=0``.
    A problem met by the reader (a file cut short since it was opened, NaN or
    infinity on the first pass, an operating-system error) is raised in the
    caller, with the same message, when it asks for the block that has it.
    Closing the iterator, or dropping it (an exception or ``KeyboardInterrupt`` in
    the loop that consumes it), stops the reader thread and waits for it before
    the file is closed; the buffers go back to the source for its next pass. A
    mapped file cut short *while* a block of it is in use ends the process with
    SIGBUS, as for any memory-mapped file (``numpy.load(mmap_mode=...)``).
    """

    def __init__(self, path, block_rows=DEFAULT_BLOCK_ROWS, prefetch=2):
        self._init_blocks(path, block_rows)
        if int(prefetch) < 0:
            raise ValueError(f"prefetch must be 0 or more, got {prefetch}")
        self.prefetch = int(prefetch)
        with _reading(self.path, "not a .npy file", opening=True):
            with open(self.path, "rb") as fh:
                shape, fortran, dtype = _npy_header(fh)
                self._offset = fh.tell()
                size = os.fstat(fh.fileno()).st_size
        if dtype not in (np.dtype("<f8"), np.dtype("<f4")) or fortran:
            raise DataError(
                f"{self.path}: out-of-core reading needs a float64 or float32 "
                "C-order array, "
                f"got dtype {dtype}{' (Fortran order)' if fortran else ''}"
            )
        if len(shape) != 2 or 0 in shape:
            raise DataError(
                f"{self.path}: expected a 2-D array (rows x columns), got shape {shape}"
            )
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float64)  # of the blocks
        self.file_dtype = np.dtype(dtype)
        self._row_bytes = self.shape[1] * self.file_dtype.itemsize
        expected = self._offset + self.shape[0] * self._row_bytes
        if size < expected:
            raise DataError(
                f"{self.path}: truncated ({size} bytes, the header promises {expected})"
            )
        self._spare = []  # block buffers not in use by a pass, kept for the next
        self._spare_lock = threading.Lock()
        self._checked = 0  # rows [0, _checked) have been checked for NaN/inf

    def read_rows(self, start, stop, out=None):
        """Rows ``start:stop`` (a copy, or into ``out``)."""
        n = stop - start
        if out is None:
            out = np.empty((n, self.shape[1]))
        with open(self.path, "rb") as fh:
            fh.seek(self._offset + start * self._row_bytes)
            got = fh.readinto(memoryview(out).cast("B")[: n * self._row_bytes])
        if got != n * self._row_bytes:
            raise DataError(
                f"{self.path}: truncated while reading rows {start + 1}..{stop}"
            )
        self._widen(out, n)
        return out

    def _widen(self, rows, n):
        """float32 files: the bytes read into the start of ``rows`` (n rows of the
        file) become float64 values in place (exact; NumPy copies the overlap)."""
        if self.file_dtype.itemsize == 8:
            return
        raw = rows.reshape(-1).view(self.file_dtype)[: n * self.shape[1]]
        rows[:n] = raw.reshape(n, self.shape[1])

    def _spans(self):
        N = self.shape[0]
        return [
            (start, min(N, start + self.block_rows))
            for start in range(0, N, self.block_rows)
        ]

    def _take_buffers(self, n):
        """``n`` block buffers: the source's spare ones first, new ones if short."""
        rows = min(self.block_rows, self.shape[0]) + 1
        with self._spare_lock:
            taken, self._spare = self._spare[:n], self._spare[n:]
        while len(taken) < n:
            taken.append(np.empty((rows, self.shape[1])))
        return taken

    def _give_back(self, buffers):
        with self._spare_lock:
            self._spare.extend(buffers)

    def _map(self, fh):
        """A private (copy-on-write) mapping of the whole file, or None where rows
        are copied instead: a float32 file, a platform without ``MADV_POPULATE_READ``
        (Linux 5.14), a file that cannot be mapped."""
        if _POPULATE_READ is None or self.file_dtype.itemsize != 8 or self._offset % 8:
            return None
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
            mapped.madvise(_POPULATE_READ, 0, 1)
        except (OSError, ValueError):
            return None
        return mapped

    def _load(self, fh, mapped, start, stop, buffer):
        """The view of block ``start:stop`` (class Notes), its rows in memory and
        checked for NaN/infinity on the first pass: mapped from the page cache (read
        first if not there), or read into ``buffer``."""
        n, row = stop - start, self._row_bytes
        if mapped is None:
            view = buffer[: n + 1]
            self._fill(fh, view, start, stop)
        else:
            first, end = self._offset + (start - 1) * row, self._offset + stop * row
            page = max(first, 0) // mmap.PAGESIZE * mmap.PAGESIZE
            try:
                if end > len(mapped):  # cut short since it was opened
                    raise ValueError
                mapped.madvise(_POPULATE_READ, page, end - page)
            except (OSError, ValueError) as error:  # EFAULT: cut short while mapped
                if isinstance(error, OSError) and error.errno != errno.EFAULT:
                    raise OSError(  # EIO, ENOMEM, ...: not a short file
                        error.errno,
                        f"{self.path}: reading rows {start + 1}..{stop}: "
                        f"{error.strerror}",
                    ) from error
                raise DataError(
                    f"{self.path}: truncated while reading rows {start + 1}..{stop}"
                ) from None
            D = self.shape[1]
            if first >= 0:
                view = np.frombuffer(mapped, np.float64, (n + 1) * D, first)
            else:  # the spare row of block 0 would precede the file: a copy
                view = np.empty((n + 1) * D)
                view[D:] = np.frombuffer(mapped, np.float64, n * D, first + row)
            view = view.reshape(n + 1, D)
        if stop > self._checked:
            check_finite(view[1:], self.path, row_offset=start)
            self._checked = max(self._checked, stop)
        return view

    def _release(self, mapped, start, stop):
        """Unmap the pages of a block the consumer is done with (those it shares
        with the next block stay): the process holds a few blocks of the file."""
        if mapped is None:
            return
        first = max(0, self._offset + (start - 1) * self._row_bytes)
        last = self._offset + (stop - 1) * self._row_bytes  # the next block's first
        page = first // mmap.PAGESIZE * mmap.PAGESIZE
        length = (
            last // mmap.PAGESIZE * mmap.PAGESIZE
            if stop < self.shape[0]
            else len(mapped)
        ) - page
        if length > 0:
            mapped.madvise(mmap.MADV_DONTNEED, page, length)

    def _fill(self, fh, view, start, stop):
        """Read rows ``start:stop`` (the next ones in ``fh``) into ``view[1:]``."""
        want = (stop - start) * self._row_bytes
        fh.seek(self._offset + start * self._row_bytes)
        target = memoryview(view[1:]).cast("B")[:want]
        got = 0
        while got < want:  # readinto may return less than asked
            more = fh.readinto(target[got:])
            if not more:
                raise DataError(
                    f"{self.path}: truncated while reading rows {start + 1}..{stop}"
                )
            got += more
        self._widen(view[1:], stop - start)

    def iter_blocks(self):
        """``(start, stop, view)`` for every block, in row order (class Notes)."""
        n_slots = 1 + min(self.prefetch, len(self._spans()) - 1)
        with open(self.path, "rb", buffering=0) as fh:
            if hasattr(os, "posix_fadvise"):  # a larger read-ahead on a cold file
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            mapped = self._map(fh)
            buffers = [] if mapped is not None else self._take_buffers(n_slots)
            slots = buffers or [None] * n_slots
            try:
                if n_slots == 1:
                    yield from self._blocks_here(fh, mapped, slots[0])
                else:
                    yield from self._blocks_prefetched(fh, mapped, slots)
            finally:
                self._give_back(buffers)
                if mapped is not None:  # unmapped when its last view is gone
                    mapped.madvise(mmap.MADV_DONTNEED)

    def _blocks_here(self, fh, mapped, buffer):
        for start, stop in self._spans():
            yield start, stop, self._load(fh, mapped, start, stop, buffer)
            self._release(mapped, start, stop)

    def _blocks_prefetched(self, fh, mapped, slots):
        reader = _BlockReader(self, fh, mapped, slots)
        try:
            while True:
                item = reader.next_block()
                if item is None:
                    return
                yield item[:3]
                reader.done_with(item)
        finally:
            reader.stop()


class _BlockReader:
    """A thread that loads the next blocks of a file into free slots (buffers, or
    None for a mapped file) and releases the blocks the consumer is done with.

    Blocks go to the consumer in file order through ``ready``; a slot goes back
    to ``free`` when the consumer asks for the block after the one it holds. The
    thread holds no reference to the consumer's generator, so dropping that
    generator closes it (and its ``finally`` calls :meth:`stop`).
    """

    def __init__(self, source, fh, mapped, slots):
        self._free = queue.SimpleQueue()
        self._ready = queue.SimpleQueue()
        self._stopping = False
        for slot in slots:
            self._free.put((slot, None))
        self._thread = threading.Thread(
            target=self._run,
            args=(source, fh, mapped),
            name=f"fastvi-read {os.path.basename(source.path)}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, source, fh, mapped):
        try:
            for start, stop in source._spans():
                item = self._free.get()
                if item is None or self._stopping:
                    return
                slot, done = item
                if done is not None:
                    source._release(mapped, *done)
                view = source._load(fh, mapped, start, stop, slot)
                self._ready.put((start, stop, view, slot))
            self._ready.put(None)
        except BaseException as exc:  # raised in the consumer, at this block
            self._ready.put(exc)

    def next_block(self):
        """The next ``(start, stop, view, slot)``; None after the last; raises the
        reader's error at the block it stopped on."""
        item = self._ready.get()
        if isinstance(item, BaseException):
            try:
                raise item
            finally:
                item = None  # no reference cycle through the traceback
        return item

    def done_with(self, item):
        """The consumer is done with the block ``item``: its slot may be reused."""
        start, stop, _, slot = item
        self._free.put((slot, (start, stop)))

    def stop(self):
        """End the thread and wait for it (a read in progress finishes first)."""
        self._stopping = True
        self._free.put(None)
        try:
            self._thread.join()
        except BaseException:  # Ctrl-C while joining: the buffers and the file
            self._thread.join()  # must outlive the read in progress
            raise


def dask_rows(path, block_rows=DEFAULT_BLOCK_ROWS):
    """A dask array of a float64 ``.npy`` file whose chunks are read on the workers.

    Each chunk is a task that reads rows ``start:stop`` of ``path`` itself (checking
    them for NaN/infinity, the error naming the file and row), so the file must be
    visible at the same path on every worker (a shared file system); only the header
    is read here. Used by ``fastvi fit --scheduler``.
    """
    import dask
    import dask.array as da

    rows = NpyRows(path, block_rows=block_rows)  # validates the header here
    D = rows.shape[1]
    read = dask.delayed(_read_checked_rows, pure=True)
    chunks = [
        da.from_delayed(
            read(rows.path, start, stop), shape=(stop - start, D), dtype=np.float64
        )
        for start, stop in rows._spans()
    ]
    return da.concatenate(chunks, axis=0)


def _read_checked_rows(path, start, stop):
    """Task of :func:`dask_rows`: rows ``start:stop`` of a ``.npy`` file, checked."""
    block = NpyRows(path).read_rows(start, stop)
    check_finite(block, path, row_offset=start)
    return block


# ------------------------------------------------------------------ fingerprints
_HASH = "sha256"  # hardware-accelerated on current x86 and ARM cores (~2 GB/s)
_HASH_BYTES = 1 << 23  # hash (and cast) 8 MiB at a time: bounded temporaries


class DataDigest:
    """Fingerprint of a 2-D data set fed to it block by block, in row order.

    Every value goes into a SHA-256 hash as float64 (the values the fits compute
    with), after a header holding the layout, the shape and the dtype; a change of
    one value anywhere (or of the shape) changes the digest. Dense rows are fed with
    :meth:`update_rows` (the blocks may have any sizes: the digest of the same rows
    is the same however they are cut), a CSR matrix with :meth:`update_csr`.
    """

    def __init__(self, shape, dtype=np.float64, layout="dense"):
        self.shape = [int(v) for v in shape]
        self._hash = hashlib.new(_HASH)
        header = f"fastvi-data {layout} {self.shape} {np.dtype(dtype).name}"
        self._hash.update(header.encode("ascii"))

    def _update(self, values, dtype):
        values = values.reshape(-1)
        step = max(1, _HASH_BYTES // np.dtype(dtype).itemsize)
        for start in range(0, values.size, step):
            part = np.ascontiguousarray(values[start : start + step], dtype=dtype)
            self._hash.update(memoryview(part).cast("B"))

    def update_rows(self, rows):
        """Feed the next rows of a dense data set (any numeric dtype)."""
        rows = np.asarray(rows)
        width = rows.shape[1] if rows.ndim > 1 else 1
        step = max(1, _HASH_BYTES // (8 * max(1, width)))
        for start in range(0, rows.shape[0], step):
            self._update(rows[start : start + step], np.float64)

    def update_digests(self, digests):
        """Feed the hex digests of consecutive chunks (hashed where they live)."""
        self._hash.update("".join(digests).encode("ascii"))

    def update_csr(self, X):
        """Feed a whole CSR matrix: its row pointers, column indices and values."""
        self._update(X.indptr, np.int64)
        self._update(X.indices, np.int64)
        self._update(X.data, np.float64)

    def fingerprint(self):
        """``{"shape": [n_rows, n_columns], "sha256": hex digest}``."""
        return {"shape": list(self.shape), _HASH: self._hash.hexdigest()}


def _block_digest(block):
    """Task of the Dask fingerprint: the digest of one row chunk."""
    digest = DataDigest(block.shape, block.dtype)
    digest.update_rows(block)
    return digest.fingerprint()[_HASH]


def fingerprint(X):
    """Ties a checkpoint to its data: the shape and a SHA-256 hash of every value.

    Parameters
    ----------
    X : ndarray (also memory-mapped), sparse matrix, :class:`NpyRows` or dask array

    Returns
    -------
    dict
        ``{"shape": [n_rows, n_columns], "sha256": hex digest}`` (see
        :class:`DataDigest`); JSON-serializable, stored in a checkpoint's metadata.

    Notes
    -----
    The hash covers all of the data, so a checkpoint made on data that differs in
    one value is refused. In-memory data is hashed here, straight from its buffer
    in 8 MiB pieces: a memory-speed pass (about 2 GB/s), far cheaper than one
    iteration of a fit. A :class:`NpyRows` source is read block by block here; a
    fit avoids that extra read of the file by hashing the blocks as its own first
    pass reads them (``fastvi.batch.jobs``), giving the same digest. Dense data
    gives the same digest in memory and as a ``.npy`` file of the same float64
    values. A dask array is hashed chunk by chunk on the workers (the chunk digests
    are then hashed in order), so its digest depends on the chunking as well.
    """
    import scipy.sparse as sp

    from .._dask import is_dask_collection

    if hasattr(X, "iter_blocks"):  # a row source such as NpyRows
        digest = DataDigest(X.shape, getattr(X, "dtype", np.float64))
        for _, _, view in X.iter_blocks():
            digest.update_rows(view[1:])
        return digest.fingerprint()
    if is_dask_collection(X):
        import dask

        if hasattr(X, "to_dask_array"):  # a dask DataFrame
            X = X.to_dask_array(lengths=True)
        X = X.rechunk({1: -1})
        task = dask.delayed(_block_digest, pure=True)
        parts = dask.compute(*[task(b) for b in X.to_delayed().ravel()])
        digest = DataDigest(X.shape, X.dtype, layout=f"dask {list(X.chunks[0])}")
        digest.update_digests(parts)
        return digest.fingerprint()
    if sp.issparse(X):
        X = X.tocsr()
        digest = DataDigest(X.shape, X.dtype, layout="csr")
        digest.update_csr(X)
        return digest.fingerprint()
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
    digest = DataDigest(X.shape, X.dtype)
    digest.update_rows(X)
    return digest.fingerprint()


# ------------------------------------------------------ sparse counts, block by block
_TEXT_BYTES = 1 << 22  # a docword file is parsed 4 MiB of text at a time


class _SparseBlocks(_BlockSource):
    """What the sparse block sources share: ``shape``, ``block_rows``, ``dtype`` and
    ``spare_row = False`` (``iter_blocks()`` yields ``(start, stop, csr)``: the rows
    ``start:stop`` as a float64 CSR matrix of their own, checked for NaN/infinity).
    """

    spare_row = False
    dtype = np.dtype(np.float64)

    def _block(self, start, stop, indptr, indices, data):
        import scipy.sparse as sp

        block = sp.csr_matrix(
            (data.astype(np.float64, copy=False), indices, indptr),
            shape=(stop - start, self.shape[1]),
        )
        check_finite(block, self.path, row_offset=start)
        return block


class SparseNpzRows(_SparseBlocks):
    """Fixed row blocks of a CSR matrix saved by ``scipy.sparse.save_npz``.

    An out-of-core source of document-word counts (``LatentDirichletAllocation.fit``):
    each pass streams the archive's ``indptr``, ``indices`` and ``data`` members
    (compressed or not) side by side and yields ``block_rows`` rows at a time, so
    the memory used is one block's entries, whatever the number of rows. Every
    block is checked as it is read: row pointers, column indices, NaN/infinity.

    Parameters
    ----------
    path : str or path-like
    block_rows : int, default=65536
    """

    def __init__(self, path, block_rows=DEFAULT_BLOCK_ROWS):
        self._init_blocks(path, block_rows)
        _refuse_model_file(self.path)
        with _reading(self.path, "cannot read as .npz", opening=True):
            with zipfile.ZipFile(self.path) as zf:
                names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
                if not _SPARSE_KEYS <= names:
                    raise DataError(
                        f"{self.path}: out-of-core reading of .npz needs a SciPy "
                        "sparse matrix saved by scipy.sparse.save_npz"
                    )
                with zf.open("format.npy") as fh:
                    fmt = np.lib.format.read_array(fh, allow_pickle=False).item()
                fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                with zf.open("shape.npy") as fh:
                    shape = np.lib.format.read_array(fh, allow_pickle=False)
                shape = tuple(int(v) for v in shape)
                self._members = {
                    name: self._member_header(zf, name)
                    for name in ("indptr", "indices", "data")
                }
        if fmt != "csr":
            raise DataError(
                f"{self.path}: out-of-core reading needs a CSR matrix, got format "
                f"{fmt!r} (save X.tocsr())"
            )
        if len(shape) != 2 or 0 in shape:
            raise DataError(f"{self.path}: the matrix is empty (shape {shape})")
        self.shape = shape
        lengths = {name: size for name, (size, _) in self._members.items()}
        if lengths["indptr"] != shape[0] + 1 or lengths["indices"] != lengths["data"]:
            raise DataError(
                f"{self.path}: inconsistent CSR arrays (indptr {lengths['indptr']}, "
                f"indices {lengths['indices']}, data {lengths['data']} values for "
                f"{shape[0]} rows)"
            )
        self.nnz = lengths["data"]

    def _member_header(self, zf, name):
        """(number of values, dtype) of the 1-D array ``name`` of the archive."""
        with zf.open(name + ".npy") as fh:
            shape, _, dtype = _npy_header(fh)
        if len(shape) != 1 or dtype.kind not in ("iuf" if name == "data" else "iu"):
            raise DataError(
                f"{self.path}: {name} is not a 1-D numeric array ({shape}, {dtype})"
            )
        return shape[0], dtype

    def _read(self, fh, name, n):
        dtype = self._members[name][1]
        raw = fh.read(n * dtype.itemsize)
        if len(raw) != n * dtype.itemsize:
            raise DataError(f"{self.path}: truncated ({name} ends early)")
        return np.frombuffer(raw, dtype=dtype)

    def iter_blocks(self):
        N, W = self.shape
        with _reading(self.path, "cannot read as .npz"):
            with zipfile.ZipFile(self.path) as zf:
                streams = {}
                for name in ("indptr", "indices", "data"):
                    streams[name] = zf.open(name + ".npy")
                    _npy_header(streams[name])
                try:
                    yield from self._blocks(streams, N, W)
                finally:
                    for fh in streams.values():
                        fh.close()

    def _blocks(self, streams, N, W):
        first = self._read(streams["indptr"], "indptr", 1).astype(np.int64)
        if first[0] != 0:
            raise DataError(f"{self.path}: indptr does not start at 0")
        for start in range(0, N, self.block_rows):
            stop = min(N, start + self.block_rows)
            ends = self._read(streams["indptr"], "indptr", stop - start)
            indptr = np.concatenate((first, ends.astype(np.int64)))
            first = indptr[-1:]
            if np.any(np.diff(indptr) < 0) or indptr[-1] > self.nnz:
                raise DataError(
                    f"{self.path}: rows {start + 1}..{stop}: indptr is not a "
                    f"non-decreasing sequence within 0..{self.nnz}"
                )
            n = int(indptr[-1] - indptr[0])
            indices = self._read(streams["indices"], "indices", n).astype(np.int32)
            data = self._read(streams["data"], "data", n)
            if n and (indices.min() < 0 or indices.max() >= W):
                bad = np.flatnonzero((indices < 0) | (indices >= W))[0]
                row = int(np.searchsorted(indptr, indptr[0] + bad, side="right")) - 1
                raise DataError(
                    f"{self.path}: row {start + row + 1}: column index "
                    f"{int(indices[bad]) + 1} is outside 1..{W}"
                )
            block = self._block(start, stop, indptr - indptr[0], indices, data)
            yield start, stop, block


class DocwordRows(_SparseBlocks):
    """Fixed row (document) blocks of a UCI bag-of-words "docword" file.

    The format: three lines D, W and NNZ, then NNZ lines ``docID wordID count``
    (1-based ids; ``.gz`` files are read through gzip). Each pass parses the text a
    few MiB at a time and yields documents ``block_rows`` at a time, so the memory
    used is one block's entries, whatever the number of documents. This needs the
    entries sorted by docID, as the UCI files are; an unsorted file is refused,
    naming the first line out of order (sort it with ``sort -s -n -k1,1`` after
    the header, or read it in memory with :func:`read_data`). Duplicate
    ``(docID, wordID)`` lines are summed, as :func:`read_data` does.

    Parameters
    ----------
    path : str or path-like
    block_rows : int, default=65536
        Documents per block.
    """

    def __init__(self, path, block_rows=DEFAULT_BLOCK_ROWS):
        self._init_blocks(path, block_rows)
        with _reading(self.path, "cannot read", opening=True), self._open() as fh:
            n_docs, n_words, nnz = _docword_header(self.path, fh)
        if n_docs < 1 or n_words < 1:
            raise DataError(
                f"{self.path}: the matrix is empty ({n_docs} documents, "
                f"{n_words} words)"
            )
        self.shape, self.nnz = (n_docs, n_words), nnz

    def _open(self):
        return (gzip.open if self.path.endswith(".gz") else open)(self.path, "rb")

    def _parse(self, text, line):
        """The entries of ``text`` (whole lines following line ``line``), checked."""
        try:
            entries = np.loadtxt(io.BytesIO(text), dtype=np.int64, ndmin=2)
        except ValueError as exc:
            found = re.search(r"at row (\d+)", str(exc))
            where = f"line {line + int(found.group(1)) + 1}: " if found else ""
            raise DataError(
                f"{self.path}: {where}bad docword entry (expected 'docID wordID "
                "count' integers)"
            ) from None
        if entries.shape[1] != 3:
            raise DataError(
                f"{self.path}: line {line + 1}: docword entries must be "
                "'docID wordID count'"
            )
        _check_entries(self.path, entries, line, self.shape)
        return entries

    def _refuse_unsorted(self, docs, last, line):
        previous = np.concatenate(([last], docs[:-1]))
        bad = np.flatnonzero(docs < previous)
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.path}: line {line + i + 1}: docID {int(docs[i])} follows "
                f"docID {int(previous[i])}; reading a docword file block by block "
                "needs the entries sorted by docID (sort the lines after the "
                "three-line header with 'sort -s -n -k1,1', or read the file in "
                "memory)"
            )

    def iter_blocks(self):
        with _reading(self.path, "cannot read"), self._open() as fh:
            _docword_header(self.path, fh)
            yield from self._blocks(fh)

    def _blocks(self, fh):
        D = self.shape[0]
        line, last, seen = 3, 0, 0  # lines read, the last docID, entries read
        parts, rest, start = [], b"", 0
        while start < D:
            chunk = fh.read(_TEXT_BYTES)
            text = rest + chunk
            cut = len(text) if not chunk else text.rfind(b"\n") + 1
            text, rest = text[:cut], text[cut:]
            if text.strip():
                entries = self._parse(text, line)
                self._refuse_unsorted(entries[:, 0], last, line)
                last = int(entries[-1, 0])
                seen += entries.shape[0]
                parts.append(entries)
            line += text.count(b"\n")
            # every block whose documents all came before ``last`` is complete
            while start < D and (not chunk or last > start + self.block_rows):
                stop = min(D, start + self.block_rows)
                pending = np.concatenate(parts) if parts else np.empty((0, 3), int)
                k = int(np.searchsorted(pending[:, 0], stop, side="right"))
                yield start, stop, self._entries_block(start, stop, pending[:k])
                parts = [pending[k:].copy()]
                start = stop
        if seen != self.nnz or fh.read(1).strip():
            raise DataError(
                f"{self.path}: the header says {self.nnz} entries, the file holds "
                f"{seen if seen != self.nnz else 'more'}"
            )

    def _entries_block(self, start, stop, entries):
        import scipy.sparse as sp

        docs, words, counts = entries.T
        # duplicates summed, indices sorted: the rows of read_data's CSR matrix
        return sp.csr_matrix(
            (counts.astype(np.float64), (docs - 1 - start, words - 1)),
            shape=(stop - start, self.shape[1]),
        )


def sparse_rows(path, fmt="auto", block_rows=DEFAULT_BLOCK_ROWS):
    """An out-of-core source of a sparse count file: :class:`SparseNpzRows` for a
    ``.npz`` CSR matrix, :class:`DocwordRows` for a docword file."""
    fmt = data_format(path, fmt)
    if fmt == "npz":
        return SparseNpzRows(path, block_rows)
    if fmt == "docword":
        return DocwordRows(path, block_rows)
    raise DataError(
        f"{path}: out-of-core sparse reading needs a .npz CSR matrix or a docword "
        f"file, not {fmt}"
    )
