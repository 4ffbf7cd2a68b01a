"""Peak memory of an out-of-core LDA fit against the size of its docword file.

Writes seeded synthetic docword files (UCI bag-of-words: D, W, NNZ, then sorted
``docID wordID count`` lines) of about 1/8 GB and ``SIZE_GB`` (default 1) GB, fits
``LatentDirichletAllocation`` on each with :class:`fastvi.batch.io.DocwordRows` (one
batch epoch, then the final perplexity pass: three reads of the file counting the
check pass) in a fresh process, and prints each child's peak resident memory (RSS)
beside the file size. Bounded memory shows as the same peak for both files.
Skipped when the disk lacks room. Not a pytest benchmark (one long run)::

    python bench/bench_lda_ooc.py [SIZE_GB] [DIR]
"""

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS, TOKENS_PER_DOC, BLOCK_DOCS = 20000, 60, 8192


def write_docword(path, target_bytes, seed=0):
    """Documents of ~TOKENS_PER_DOC distinct words until the file passes the target."""
    rng = np.random.default_rng(seed)
    n_docs, chunk = 0, 20000
    body = path + ".body"
    nnz = 0
    with open(body, "w") as fh:
        while fh.tell() < target_bytes:
            lengths = rng.integers(TOKENS_PER_DOC // 2, 3 * TOKENS_PER_DOC // 2, chunk)
            docs = np.repeat(np.arange(n_docs + 1, n_docs + chunk + 1), lengths)
            words = rng.zipf(1.3, docs.size) % WORDS + 1
            counts = rng.geometric(0.6, docs.size)
            order = np.lexsort((words, docs))
            lines = np.column_stack((docs[order], words[order], counts[order]))
            fh.write("\n".join(map("%d %d %d".__mod__, map(tuple, lines))) + "\n")
            n_docs += chunk
            nnz += docs.size
    with open(path, "w") as out, open(body) as fh:
        out.write(f"{n_docs}\n{WORDS}\n{nnz}\n")
        shutil.copyfileobj(fh, out, 1 << 24)
    os.remove(body)
    return n_docs, nnz


def child(path):
    from fastvi import LatentDirichletAllocation
    from fastvi.batch.io import DocwordRows

    t = time.perf_counter()
    est = LatentDirichletAllocation(n_components=10, max_iter=1, random_state=0)
    est.fit(DocwordRows(path, block_rows=BLOCK_DOCS))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak:.0f} {time.perf_counter() - t:.1f} {est.bound_:.4f}")


def main(size_gb=1.0, folder=None):
    folder = folder or tempfile.gettempdir()
    if shutil.disk_usage(folder).free < 2.5 * size_gb * 2**30:
        print(f"skipped: less than {2.5 * size_gb:.1f} GiB free in {folder}")
        return
    work = tempfile.mkdtemp(dir=folder)
    try:
        print("file_MB docs entries peak_RSS_MB seconds perplexity")
        for gb in (size_gb / 8, size_gb):
            path = os.path.join(work, f"docword.{gb:g}.txt")
            n_docs, nnz = write_docword(path, gb * 2**30)
            run = subprocess.run(
                [sys.executable, __file__, "--child", path],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            peak, seconds, perplexity = run.stdout.split()
            size = os.path.getsize(path) / 2**20
            print(f"{size:.0f} {n_docs} {nnz} {peak} {seconds} {perplexity}")
            os.remove(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0, *sys.argv[2:3])
