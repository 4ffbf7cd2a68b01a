"""Fail when fastvi's speed-up over its anchor dropped, group by group.

Usage::

    python bench/check_regression.py [NEW] [--baseline BASE] [--threshold 0.2]
                                     [--storage .benchmarks]

``NEW`` and ``BASE`` are pytest-benchmark JSON files or names of runs saved in the
storage (``0002``, ``0002_mine``: the start of the file name). Without ``NEW`` the
latest saved run of this machine is checked; without ``BASE`` it is compared with the
saved run before it. The compared quantity is each group's ratio anchor median / fastvi
median (``bench/report.py``), measured within one run, so a machine that is slower or
busier overall moves both sides; where the runs carry them, also the per-iteration
speed-up (``"<group> per iter"``), fastvi's fraction of the GEMM peak measured in the
same run (``"<group> of peak"``) and the ratio of CPU times (``"<group> cpu"``: the LDA
corpus groups' per-core comparison). Exit status 1 when any common group's ratio fell by
more than ``threshold`` (0.2: new < 0.8 × old); 2 when a run is not found or the two
share no group.
"""

import argparse
import sys
from pathlib import Path

from report import fraction_of_peak, load, pairs, per_iteration_speedup, speedup


def stored_runs(storage):
    """This machine's saved runs, ``<storage>/<machine id>/NNNN_*.json``, by age."""
    from pytest_benchmark.utils import get_machine_id

    folder = Path(storage) / get_machine_id()
    return sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.json"))


def resolve(spec, storage):
    """A file path as given, else the latest saved run whose name starts with spec."""
    if spec and Path(spec).is_file():
        return Path(spec)
    matches = [p for p in stored_runs(storage) if p.name.startswith(spec)]
    if not matches:
        what = f"file or saved run matching {spec!r}" if spec else "saved run"
        raise FileNotFoundError(f"no {what} in {storage}")
    return matches[-1]


def previous_run(new, storage):
    """The saved run before ``new``; the latest saved run when ``new`` is not saved."""
    runs = stored_runs(storage)
    saved = [p.resolve() for p in runs]
    if new.resolve() in saved:
        runs = runs[: saved.index(new.resolve())]
    if not runs:
        raise FileNotFoundError(f"no saved baseline run in {storage}")
    return runs[-1]


def ratios(path):
    """``{group: ratio}`` of one file: anchor median / fastvi median for every group,
    and, where the entries carry them, the per-iteration speed-up (``"<group> per
    iter"``), fastvi's fraction of the run's GEMM peak (``"<group> of peak"``) and
    anchor / fastvi CPU seconds (``"<group> cpu"``)."""
    out = {}
    for g, (f, a) in pairs(load(path)).items():
        out[g] = speedup(f, a)
        per_iter = per_iteration_speedup(f, a)
        if per_iter:
            out[f"{g} per iter"] = per_iter
        peak = fraction_of_peak(f)
        if peak:
            out[f"{g} of peak"] = peak
        cpu = [e["extra_info"].get("cpu_seconds") for e in (a, f)]
        if all(cpu):
            out[f"{g} cpu"] = cpu[0] / cpu[1]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", nargs="?", help="new run (default: latest saved)")
    parser.add_argument("--baseline", help="baseline run (default: the one before)")
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--storage", default=".benchmarks")
    args = parser.parse_args(argv)

    try:
        new = resolve(args.new or "", args.storage)
        if args.baseline:
            base = resolve(args.baseline, args.storage)
        else:
            base = previous_run(new, args.storage)
    except FileNotFoundError as error:
        parser.error(str(error))
    old_ratios, new_ratios = ratios(base), ratios(new)
    common = [g for g in new_ratios if g in old_ratios]
    print(f"baseline: {base}\nnew:      {new}\n")
    if not common:
        print("no group in common: nothing to compare")
        return 2

    width = max(len(g) for g in common)
    print(f"{'group':<{width}}  {'old':>8}  {'new':>8}  {'change':>8}")
    failed = []
    for group in common:
        old, cur = old_ratios[group], new_ratios[group]
        change = cur / old - 1.0
        flag = ""
        if change < -args.threshold:
            failed.append(group)
            flag = "  REGRESSION"
        print(f"{group:<{width}}  {old:7.2f}×  {cur:7.2f}×  {change:+8.1%}{flag}")
    for group in sorted(set(old_ratios) ^ set(new_ratios)):
        print(f"{group}: only in {'new' if group in new_ratios else 'baseline'}")

    if failed:
        print(f"\nFAIL: {len(failed)} group(s) lost more than {args.threshold:.0%}")
        return 1
    print(f"\nOK: no group lost more than {args.threshold:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
