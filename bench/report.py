"""Print a Markdown table of a pytest-benchmark JSON file from ``bench/``.

Usage::

    python bench/report.py FILE.json

``FILE.json`` is ``--benchmark-json`` output or a run saved in ``.benchmarks/``. One row
per group: fastvi's and its anchor's median time, the speed-up (anchor / fastvi), peak
memory beyond X (tracemalloc; and peak RSS growth) and the final lower bounds; then,
where the entries carry them, seconds per iteration and the fraction of the machine's
GEMM peak measured in the same run (``bench/limits.py``); then the machine and library
versions recorded with the run.
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


def fraction_of_peak(entry):
    """GFLOP/s of one iteration over the run's GEMM peak of the same precision, or
    None when the entry lacks a per-iteration time, a flop count or limits."""
    info = entry["extra_info"]
    per_iter, gflop = info.get("seconds_per_iter"), info.get("gflop_per_iter")
    limits = info.get("limits") or {}
    key = "sgemm_gflops" if info.get("dtype") == "float32" else "dgemm_gflops"
    if not per_iter or not gflop or not limits.get(key):
        return None
    return gflop / per_iter / limits[key]


def per_iteration_speedup(fastvi, anchor):
    """anchor / fastvi seconds per iteration, or None where either lacks it."""
    f = fastvi["extra_info"].get("seconds_per_iter")
    a = anchor["extra_info"].get("seconds_per_iter")
    return a / f if f and a else None


def limits_table(data):
    """Markdown lines: seconds per iteration, their ratio, and the fraction of the
    machine's GEMM peak (measured in the same run) each side reaches."""
    lines = [
        "| case | fastvi s/iter | anchor s/iter | speed-up per iter | GFLOP/iter "
        "| fastvi GFLOP/s | fastvi / peak | anchor / peak |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    rows = 0
    for group, (fastvi, anchor) in pairs(data).items():
        f_info, a_info = fastvi["extra_info"], anchor["extra_info"]
        per_f, per_a = f_info.get("seconds_per_iter"), a_info.get("seconds_per_iter")
        gflop = f_info.get("gflop_per_iter")
        if not per_f or not gflop:
            continue
        rows += 1
        ratio = per_iteration_speedup(fastvi, anchor)
        fr_f, fr_a = fraction_of_peak(fastvi), fraction_of_peak(anchor)
        lines.append(
            f"| {group} | {per_f:.4f} | {per_a or float('nan'):.4f} "
            f"| {'–' if ratio is None else f'{ratio:.1f}×'} | {gflop:.2f} "
            f"| {gflop / per_f:.1f} | {'–' if fr_f is None else f'{fr_f:.0%}'} "
            f"| {'–' if fr_a is None else f'{fr_a:.0%}'} |"
        )
    return lines if rows else []


def limits_line(data):
    """One bullet naming the limits recorded with the run's entries."""
    for bench in data["benchmarks"]:
        limits = bench.get("extra_info", {}).get("limits")
        if limits:
            return [
                f"- limits measured in this run ({limits['threads']} threads, "
                f"{limits['cpu_name']}, {limits['simd']}): DGEMM "
                f"{limits['dgemm_gflops']:.1f} GFLOP/s, SGEMM "
                f"{limits['sgemm_gflops']:.1f} GFLOP/s (n={limits['gemm_n']}), read "
                f"{limits['read_gbs']:.1f} GB/s"
            ]
    return []


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
    extra = limits_table(data)
    lines = table(data) + ([""] + extra if extra else []) + [""] + machine(data)
    print("\n".join(lines + limits_line(data)))


if __name__ == "__main__":
    main()
