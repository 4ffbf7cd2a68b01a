"""Print a Markdown table of a pytest-benchmark JSON file from ``bench/``.

Usage::

    python bench/report.py FILE.json

``FILE.json`` is ``--benchmark-json`` output or a run saved in ``.benchmarks/``. One row
per group: fastvi's and its anchor's median time, the speed-up (anchor / fastvi), peak
memory beyond X (tracemalloc; and peak RSS growth) and the final lower bounds; then the
machine and library versions recorded with the run.
"""

import argparse
import json
from pathlib import Path


def load(path):
    """The parsed JSON of a pytest-benchmark file."""
    return json.loads(Path(path).read_text())


def pairs(data):
    """``{group: (fastvi_entry, anchor_entry)}`` in file order, complete groups only.

    A group may hold several fastvi entries (roles ``"fastvi"``, ``"fastvi_1"``, ...)
    and several anchors (``"anchor"``, ``"anchor_2"``, ...): each side is represented
    by its fastest entry, so the speed-up is against the anchor's best setting.
    """
    groups = {}
    for bench in data["benchmarks"]:
        role = str(bench.get("extra_info", {}).get("role", ""))
        side = role.split("_")[0]
        if side in ("fastvi", "anchor"):
            groups.setdefault(bench["group"], {}).setdefault(side, []).append(bench)
    return {
        group: (min(sides["fastvi"], key=median), min(sides["anchor"], key=median))
        for group, sides in groups.items()
        if sides.keys() == {"fastvi", "anchor"}
    }


def median(entry):
    """Median seconds of one benchmark entry."""
    return entry["stats"]["median"]


def speedup(fastvi, anchor):
    """How many times faster fastvi is than its anchor (median over median)."""
    return median(anchor) / median(fastvi)


def _label(entry):
    info = entry["extra_info"]
    if info.get("library") == "fastvi":
        return f"fastvi n_jobs={info.get('n_jobs')}"
    label = f"{info.get('library', '?')} {info.get('version', '')}".strip()
    n_jobs = info.get("n_jobs")
    return label + ("" if n_jobs is None else f" n_jobs={n_jobs}")


def _num(info, key):
    value = info.get(key)
    return "–" if value is None else f"{value:.10g}"


def _mem(fastvi, anchor, key):
    values = [entry["extra_info"].get(key) for entry in (fastvi, anchor)]
    return " / ".join("–" if v is None else f"{v:.0f}" for v in values)


def table(data):
    """Markdown lines of the per-group table."""
    lines = [
        "| case | fastvi (s) | anchor | anchor (s) | speed-up "
        "| peak mem MB fastvi / anchor | peak RSS MB fastvi / anchor "
        "| lower bound fastvi | lower bound anchor | iters | rounds |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for group, (fastvi, anchor) in pairs(data).items():
        f_info, a_info = fastvi["extra_info"], anchor["extra_info"]
        lines.append(
            f"| {group} | {median(fastvi):.3f} | {_label(anchor)} "
            f"| {median(anchor):.3f} | {speedup(fastvi, anchor):.1f}× "
            f"| {_mem(fastvi, anchor, 'peak_mem_mb')} "
            f"| {_mem(fastvi, anchor, 'peak_rss_mb')} "
            f"| {_num(f_info, 'lower_bound')} | {_num(a_info, 'lower_bound')} "
            f"| {f_info.get('n_iter', '–')} | {fastvi['stats']['rounds']} / "
            f"{anchor['stats']['rounds']} |"
        )
    return lines


def machine(data):
    """Markdown bullet lines describing the machine and the software versions."""
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    libraries = ", ".join(f"{k} {v}" for k, v in info.get("libraries", {}).items())
    blas = ", ".join(
        f"{pool['internal_api']} {pool['version']} ({pool['num_threads']} threads)"
        for pool in info.get("blas", [])
    )
    commit = data.get("commit_info", {})
    return [
        f"- run: {data.get('datetime', '?')}, profile "
        f"`{info.get('bench_profile', '?')}`, commit {commit.get('id') or '?'}"
        f"{' (dirty)' if commit.get('dirty') else ''}",
        f"- CPU: {cpu.get('brand_raw', info.get('processor', '?'))}, "
        f"{cpu.get('count', '?')} logical cores, {info.get('system', '?')} "
        f"{info.get('release', '')}",
        f"- Python {info.get('python_version', '?')}; {libraries}",
        f"- BLAS: {blas or '?'}; numba threads {info.get('numba_num_threads', '?')} "
        f"(layer setting `{info.get('numba_threading_layer', '?')}`)",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="pytest-benchmark JSON file")
    args = parser.parse_args(argv)
    data = load(args.file)
    print("\n".join(table(data) + [""] + machine(data)))


if __name__ == "__main__":
    main()
