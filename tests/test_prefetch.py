"""Reading the blocks of a ``.npy`` file ahead of the caller (``NpyRows(prefetch=)``).

The reader thread must change nothing but the timing: the same blocks in the same
order with the same values as reading in the caller (``prefetch=0``), the same errors
at the same block, and no thread or buffer left behind by a pass that ends early.
Every test runs on both ways of loading a block: a float64 file is mapped from the
page cache (Linux), a float32 file is read into buffers and widened.
"""

import mmap
import os
import signal
import sys
import threading

import numpy as np
import pytest

from fastvi.batch.io import _POPULATE_READ, DataError, NpyRows

BLOCK = 64
WAIT = 60.0  # seconds; only a broken reader ever waits this long


def wait_for(condition):
    """Whether ``condition()`` became true within WAIT seconds."""
    pause = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return True
        pause.wait(0.01)
    return condition()


def reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("fastvi-read")]


def buffers_of(source):
    """How many block buffers a pass takes: none where the file is mapped."""
    mapped = _POPULATE_READ is not None and source.file_dtype == np.float64
    return 0 if mapped else 1 + source.prefetch


@pytest.fixture(params=[np.float64, np.float32])
def data(tmp_path, request):
    X = np.random.default_rng(0).normal(size=(5 * BLOCK + 17, 3))
    X = X.astype(request.param)
    path = tmp_path / "x.npy"
    np.save(path, X)
    return path, X.astype(np.float64)


def blocks_of(source):
    return [(a, b, v.shape, v[1:].copy()) for a, b, v in source.iter_blocks()]


@pytest.mark.parametrize("n_rows", [1, BLOCK - 1, BLOCK, 3 * BLOCK, 5 * BLOCK + 17])
@pytest.mark.parametrize("prefetch", [1, 2, 7])
@pytest.mark.parametrize("n_features", [4, 40])  # 40: a row longer than the header
def test_prefetched_blocks_are_the_blocks_read_in_the_caller(
    tmp_path, n_rows, prefetch, n_features
):
    X = np.random.default_rng(n_rows).normal(size=(n_rows, n_features))
    np.save(tmp_path / "x.npy", X)
    here = blocks_of(NpyRows(tmp_path / "x.npy", block_rows=BLOCK, prefetch=0))
    ahead = blocks_of(NpyRows(tmp_path / "x.npy", block_rows=BLOCK, prefetch=prefetch))
    assert [b[:3] for b in ahead] == [b[:3] for b in here]
    for (*_, got), (*_, want) in zip(ahead, here):
        assert got.tobytes() == want.tobytes()
    assert np.concatenate([b[3] for b in ahead]).tobytes() == X.tobytes()
    assert reader_threads() == []


def test_the_block_held_is_not_overwritten_and_its_spare_row_is_free(data):
    path, X = data
    prefetch = 2
    source = NpyRows(path, block_rows=BLOCK, prefetch=prefetch)
    loaded, released = [], []  # (start, buffer) loaded; starts released, in order
    real_load, real_release = source._load, source._release

    def load(fh, mapped, start, stop, buffer):
        view = real_load(fh, mapped, start, stop, buffer)
        loaded.append((start, buffer))
        return view

    def release(mapped, start, stop):
        released.append(start)
        real_release(mapped, start, stop)

    source._load, source._release = load, release
    n_blocks = -(-X.shape[0] // BLOCK)
    held = []
    for i, (start, stop, view) in enumerate(source.iter_blocks()):
        # let the reader get as far ahead as it may, then look at the block held
        last = min(i + prefetch, n_blocks - 1) * BLOCK
        assert wait_for(lambda last=last: any(s == last for s, _ in list(loaded)))
        assert all(s <= last for s, _ in loaded), "the reader got too far ahead"
        view[0] = -1.0  # the spare row is the consumer's
        assert view[1:].tobytes() == X[start:stop].tobytes()
        assert start not in released, "the block held was released"
        buffer = dict(loaded)[start]
        assert buffer is None or not any(
            b is buffer and s > start for s, b in loaded
        ), "the buffer in use was filled again"
        held.append(start)
    assert released == held[: len(released)]  # the last ones go with the pass


def test_mapped_blocks_are_views_of_the_file_and_few_stay_resident(tmp_path):
    if _POPULATE_READ is None:
        pytest.skip("blocks are mapped on Linux only")
    X = np.random.default_rng(0).normal(size=(256 * 1024, 16))  # 256 blocks, 32 MiB
    path = tmp_path / "x.npy"
    np.save(path, X)
    source = NpyRows(path, block_rows=1024, prefetch=2)
    most = 0
    for start, stop, view in source.iter_blocks():
        owner = view
        while isinstance(owner, np.ndarray):
            owner = owner.base
        assert isinstance(getattr(owner, "obj", owner), mmap.mmap)  # no copy
        assert view.flags.writeable and view.flags.c_contiguous
        assert view[1:].tobytes() == X[start:stop].tobytes()
        most = max(most, resident_kb(path) * 1024)
    # the blocks held or read ahead (3 of 128 KiB), their neighbours' shared pages,
    # and the page cache's large folios (up to 2 MiB, mapped whole) at either end
    assert 0 < most <= 4 * 1024 * 16 * 8 + 2 * 2**21
    assert source._spare == []


def resident_kb(path):
    """Resident kB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(str(path))
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


def test_buffers_are_allocated_once_and_reused_by_the_next_passes(data):
    path, X = data
    source = NpyRows(path, block_rows=BLOCK, prefetch=2)
    if buffers_of(source) == 0:
        pytest.skip("a mapped file takes no buffers")
    first = {id(v.base) for _, _, v in source.iter_blocks()}
    assert len(first) == 3
    for _ in range(3):
        again = {id(v.base) for _, _, v in source.iter_blocks()}
        assert again == first
    assert len(source._spare) == 3
    assert reader_threads() == []


def test_two_passes_at_once_do_not_share_buffers(data):
    path, X = data
    source = NpyRows(path, block_rows=BLOCK, prefetch=1)
    outer = source.iter_blocks()
    a = next(outer)
    for start, stop, view in source.iter_blocks():  # a nested pass, to the end
        assert view[1:].tobytes() == X[start:stop].tobytes()
    assert a[2][1:].tobytes() == X[a[0] : a[1]].tobytes()
    first = a[2][1:].copy()  # valid until the outer pass moves on
    rest = [v[1:].copy() for _, _, v in outer]
    assert np.concatenate([first, *rest]).tobytes() == X.tobytes()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_file_cut_short_after_opening_is_named_at_its_block(data, prefetch):
    path, X = data
    source = NpyRows(path, block_rows=BLOCK, prefetch=prefetch)
    size = os.path.getsize(path)
    os.truncate(path, size - 10 * source._row_bytes)  # rows lost in the last block
    got = []
    with pytest.raises(DataError) as info:
        for _, _, view in source.iter_blocks():
            got.append(view[1:].copy())
    last = 5 * BLOCK
    assert str(info.value) == (
        f"{path}: truncated while reading rows {last + 1}..{X.shape[0]}"
    )
    assert np.concatenate(got).tobytes() == X[:last].tobytes()  # all blocks before
    assert reader_threads() == []


def test_a_file_cut_short_during_a_pass_is_named_at_its_block(data):
    # a float64 file is mapped for the pass before the cut: loading the lost pages
    # fails (EFAULT), which is the truncation, not an operating-system error
    path, X = data
    source = NpyRows(path, block_rows=BLOCK, prefetch=0)
    blocks = source.iter_blocks()
    got = [next(blocks)[2][1:].copy()]
    os.truncate(path, os.path.getsize(path) - 10 * source._row_bytes)
    with pytest.raises(DataError) as info:
        for _, _, view in blocks:
            got.append(view[1:].copy())
    last = 5 * BLOCK
    assert str(info.value) == (
        f"{path}: truncated while reading rows {last + 1}..{X.shape[0]}"
    )
    assert np.concatenate(got).tobytes() == X[:last].tobytes()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_nan_on_the_first_pass_is_named_at_its_block(tmp_path, prefetch):
    X = np.random.default_rng(1).normal(size=(4 * BLOCK, 2))
    X[2 * BLOCK + 3, 1] = np.inf
    np.save(tmp_path / "bad.npy", X)
    source = NpyRows(tmp_path / "bad.npy", block_rows=BLOCK, prefetch=prefetch)
    seen = []
    with pytest.raises(DataError) as info:
        for start, _, _ in source.iter_blocks():
            seen.append(start)
    assert str(info.value) == (
        f"{tmp_path / 'bad.npy'}: row {2 * BLOCK + 4}, column 2: value inf is not "
        "finite"
    )
    assert seen == [0, BLOCK]
    assert reader_threads() == []


def test_an_os_error_of_the_reader_is_raised_in_the_caller(data, monkeypatch):
    path, X = data
    source = NpyRows(path, block_rows=BLOCK, prefetch=2)
    real_load = source._load

    def load(fh, mapped, start, stop, buffer):
        if start == 2 * BLOCK:
            raise OSError(5, "Input/output error")
        return real_load(fh, mapped, start, stop, buffer)

    source._load = load
    seen = []
    with pytest.raises(OSError, match="Input/output error"):
        for start, _, _ in source.iter_blocks():
            seen.append(start)
    assert seen == [0, BLOCK]
    assert reader_threads() == []


class Stop(Exception):
    pass


@pytest.mark.parametrize("how", ["close", "exception", "keyboard", "dropped"])
def test_a_pass_ended_early_stops_the_reader_and_returns_its_buffers(data, how):
    path, X = data
    source = NpyRows(path, block_rows=BLOCK, prefetch=2)
    blocks = source.iter_blocks()
    next(blocks)
    assert len(reader_threads()) == 1
    if how == "close":
        blocks.close()
    elif how == "dropped":
        del blocks
    else:
        error = Stop if how == "exception" else KeyboardInterrupt
        with pytest.raises(error):
            for start, _, _ in blocks:
                if start == 2 * BLOCK:
                    raise error()
        del blocks
    assert reader_threads() == []
    assert len(source._spare) == buffers_of(source)  # back, for the next pass
    assert blocks_of(source)[-1][3].tobytes() == X[5 * BLOCK :].tobytes()


def test_ctrl_c_while_waiting_for_a_block_stops_the_reader(data, monkeypatch):
    path, X = data
    source = NpyRows(path, block_rows=BLOCK, prefetch=2)
    entered, release = threading.Event(), threading.Event()
    real_load = source._load

    def load(fh, mapped, start, stop, buffer):
        if start == BLOCK:  # a slow read: the caller waits for this block
            entered.set()
            release.wait(WAIT)
        return real_load(fh, mapped, start, stop, buffer)

    source._load = load
    main = threading.get_ident()

    def waiting():  # the caller is blocked in the wait for a block
        frame = sys._current_frames().get(main)
        return frame is not None and frame.f_code.co_name == "next_block"

    def interrupt():
        entered.wait(WAIT)
        if wait_for(waiting):
            signal.pthread_kill(main, signal.SIGINT)
        release.set()

    blocks = source.iter_blocks()
    next(blocks)
    helper = threading.Thread(target=interrupt)
    # Python's own handler, which raises KeyboardInterrupt: a test run started as a
    # background job inherits SIGINT ignored, and Python then installs none
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            next(blocks)
        helper.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert reader_threads() == []
    assert len(source._spare) == buffers_of(source)


def test_prefetch_must_not_be_negative(data):
    with pytest.raises(ValueError, match="prefetch must be 0 or more"):
        NpyRows(data[0], prefetch=-1)
