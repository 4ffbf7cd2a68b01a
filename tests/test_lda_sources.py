"""LatentDirichletAllocation on every data source (``fastvi.rows``).

The matrix: learning method x source (in memory, a sparse ``.npz`` file and a
docword file read block by block, a dask array). The corpus spans three blocks of
documents (the last partial), so batch statistics go through the block tree and
online minibatches straddle block boundaries. Out-of-core fits are bitwise the
in-memory fits; so are Dask fits whose chunks are the blocks.
"""

import tracemalloc
from functools import cache

import numpy as np
import pytest
import scipy.sparse as sp

import fastvi.batch.io as fio
from fastvi import LatentDirichletAllocation
from fastvi.batch.io import DataError, DocwordRows, SparseNpzRows, read_data
from fastvi.rows import BLOCK_ROWS

N, V = 2 * BLOCK_ROWS + 1234, 40
FITTED = ("components_", "exp_dirichlet_component_", "perplexity_history_")


def _corpus(n_docs, n_words, density, seed):
    X = sp.random(n_docs, n_words, density=density, random_state=seed, format="csr")
    X.data = np.ceil(X.data * 3)
    return X


def write_docword(path, X):
    """``X`` as a UCI docword file (entries sorted by document, then word)."""
    coo = X.tocoo()
    order = np.lexsort((coo.col, coo.row))
    lines = np.column_stack((coo.row + 1, coo.col + 1, coo.data.astype(np.int64)))
    with open(path, "w") as fh:
        fh.write(f"{X.shape[0]}\n{X.shape[1]}\n{X.nnz}\n")
        np.savetxt(fh, lines[order], fmt="%d")


@cache
def _X():
    return _corpus(N, V, 0.05, 0)


def _kw(method):
    return dict(
        n_components=3,
        learning_method=method,
        max_iter=2,
        evaluate_every=1,
        batch_size=1000,  # N is no multiple: minibatches straddle the blocks
        random_state=0,
    )


@cache
def _in_memory(method):
    return LatentDirichletAllocation(**_kw(method)).fit(_X())


def _source(kind, tmp_path):
    X = _X()
    if kind == "npz":
        sp.save_npz(tmp_path / "x.npz", X)
        return SparseNpzRows(tmp_path / "x.npz")
    if kind == "docword":
        write_docword(tmp_path / "docword.x.txt", X)
        return DocwordRows(tmp_path / "docword.x.txt")
    da = pytest.importorskip("dask.array")
    return da.from_array(X, chunks=(BLOCK_ROWS, V), asarray=False)


@pytest.mark.parametrize("method", ["batch", "online"])
@pytest.mark.parametrize("kind", ["memory", "npz", "docword", "dask"])
def test_every_source_gives_the_in_memory_bits(kind, method, tmp_path):
    a = _in_memory(method)
    X = _X() if kind == "memory" else _source(kind, tmp_path)
    b = LatentDirichletAllocation(**_kw(method), n_jobs=1).fit(X)
    for name in FITTED:
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    assert b.bound_ == a.bound_
    assert (b.n_iter_, b.n_batch_iter_) == (a.n_iter_, a.n_batch_iter_)
    assert len(a.perplexity_history_) == 2 and np.isfinite(a.bound_)


def test_a_file_source_gives_the_in_memory_topic_mix(tmp_path):
    est = _in_memory("batch")
    X = _X()[:3000]
    sp.save_npz(tmp_path / "x.npz", X)
    got = est.transform(SparseNpzRows(tmp_path / "x.npz", block_rows=700))
    np.testing.assert_array_equal(got, est.transform(X))


def test_block_readers_read_what_read_data_reads(tmp_path):
    X = _corpus(1000, 50, 0.1, 1)
    write_docword(tmp_path / "docword.a.txt", X)
    sp.save_npz(tmp_path / "a.npz", X, compressed=False)
    for source in (
        DocwordRows(tmp_path / "docword.a.txt", block_rows=77),
        SparseNpzRows(tmp_path / "a.npz", block_rows=77),
    ):
        blocks = list(source.iter_blocks())
        assert [b[:2] for b in blocks][:2] == [(0, 77), (77, 154)]
        whole = sp.vstack([b[2] for b in blocks]).tocsr()
        for path in ("docword.a.txt", "a.npz"):
            M = read_data(tmp_path / path)
            np.testing.assert_array_equal(whole.indptr, M.indptr)
            np.testing.assert_array_equal(whole.indices, M.indices)
            np.testing.assert_array_equal(whole.data, M.data)


def test_block_readers_refuse_bad_files(tmp_path):
    X = _corpus(300, 20, 0.2, 2)
    path = tmp_path / "docword.b.txt"
    write_docword(path, X)
    head, body = path.read_text().splitlines()[:3], path.read_text().splitlines()[3:]
    # out of order: the line after the moved one names the problem
    moved = body[:10] + [body[500]] + body[10:500] + body[501:]
    path.write_text("\n".join(head + moved) + "\n")
    with pytest.raises(DataError, match=r"line 15: docID \d+ follows docID \d+;.*sort"):
        list(DocwordRows(path, block_rows=50).iter_blocks())
    path.write_text("\n".join(head + body[:-1]) + "\n")
    with pytest.raises(DataError, match="the header says"):
        list(DocwordRows(path, block_rows=50).iter_blocks())
    path.write_text("\n".join(head + body[:7] + ["3 999 1"] + body[8:]) + "\n")
    with pytest.raises(DataError, match="line 11: wordID 999 is outside 1..20"):
        list(DocwordRows(path, block_rows=50).iter_blocks())
    path.write_text("\n".join(head + body[:7] + ["3 4"] + body[8:]) + "\n")
    with pytest.raises(DataError, match="bad docword entry"):
        list(DocwordRows(path, block_rows=50).iter_blocks())
    sp.save_npz(tmp_path / "c.npz", X.tocsc())
    with pytest.raises(DataError, match="needs a CSR matrix"):
        SparseNpzRows(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", X=X.toarray())
    with pytest.raises(DataError, match="scipy.sparse.save_npz"):
        SparseNpzRows(tmp_path / "d.npz")
    Y = X.copy()
    Y.data[7] = np.nan
    sp.save_npz(tmp_path / "e.npz", Y)
    est = LatentDirichletAllocation(n_components=2)
    with pytest.raises(DataError, match="is not finite"):
        est.fit(SparseNpzRows(tmp_path / "e.npz", block_rows=50))
    Y.data[7] = -1.0
    sp.save_npz(tmp_path / "e.npz", Y)
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        est.fit(SparseNpzRows(tmp_path / "e.npz", block_rows=50))
    assert not hasattr(est, "components_")


@pytest.mark.parametrize("method", ["batch", "online"])
def test_out_of_core_memory_does_not_grow_with_the_documents(
    method, tmp_path, monkeypatch
):
    # the text is parsed a few KiB at a time here, so a file of a few MB is many
    # chunks and blocks; a fit that held the corpus would grow with it 8-fold
    monkeypatch.setattr(fio, "_TEXT_BYTES", 1 << 14)
    peaks, sizes = [], []
    for n_docs in (2000, 16000):
        X = _corpus(n_docs, 100, 0.1, 3)
        path = tmp_path / f"docword.{n_docs}.txt"
        write_docword(path, X)
        source = DocwordRows(path, block_rows=256)
        est = LatentDirichletAllocation(
            n_components=4, learning_method=method, max_iter=1, evaluate_every=1,
            batch_size=100, random_state=0,
        )  # fmt: skip
        est.fit(source)  # compiled, warmed up
        tracemalloc.start()
        try:
            est.fit(source)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        sizes.append(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    assert peaks[1] < 1.25 * peaks[0], peaks
    assert peaks[1] < sizes[1] / 2, (peaks, sizes)
