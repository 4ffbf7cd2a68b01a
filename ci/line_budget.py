"""Who wrote fastvi/'s lines: the line budget of issue 15 ("One house").

Issue 15 caps the package: "`fastvi/` is no longer than today's 12,058 lines"
(12,058 = ``wc -l`` of fastvi/**/*.py at 7060b53, the end of round 1). The
founders' rule: a cap counts what its issue reshapes; code other issues add
does not count against it.

This script attributes every line of fastvi/**/*.py to the commit that last
touched it (``git blame --line-porcelain``, no move or copy detection) and maps
each commit to an issue. It prints lines per issue and the lines counted
against the cap: round 1 plus issue 15 plus every line it cannot place.

Usage (from the repository root)::

    python ci/line_budget.py            # the working tree (uncommitted lines: issue 15)
    python ci/line_budget.py --rev HEAD # a commit
    python ci/line_budget.py --files    # also the counted lines per file
    python ci/line_budget.py --moves    # moved lines to their writers (less strict)

How a commit is placed, first rule that applies:

1. an ancestor of 7060b53: round 1 (counted: the cap is measured there);
2. ``COMMITS`` below, by hash prefix (decided by reading each commit's message
   and diff);
3. a merge commit: issue 15 (conflict resolutions mix both sides; counted);
4. the branch that brought it: the merge ``Merge branch 'NAME'`` whose second
   parent reaches it first, mapped by ``BRANCHES`` (decided from the branch's
   commit messages and the issue texts in /work/issues);
5. a commit message that names its issue ("issue 13");
6. otherwise issue 15: counted.

Blame gives a line to its last toucher, so a line that issue 15 re-indented or
moved between files counts as issue 15, whoever wrote it first. That
overcounts issue 15; it never undercounts it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict

CAP = 12_058
ROUND1 = "7060b53"  # the commit the cap was measured at
COUNTED = ("round 1", "15")

# Issues (texts: /work/issues/ISSUE14-16.md; 12, 13 and 17 from the round-2 brief):
# 12 set-up, CI and compile time (_compile.py, first-run notices, warmup)
# 13 trust: loaded files, jobs, inputs validated; process safety; numerics
# 14 SGVI right by default (fixed-draw fit, priors, supports, NumbaModel
#    features, SGVI save/load and verbose, listed in ISSUE14.md)
# 15 the redesign: rows, registry, drivers, monitors, CLI for every model,
#    kernels' shared modules
# 16 performance: kernel speed, prefetch, float32 mixture, SCVB0, benchmarks
# 17 the posterior visible: predictive, posterior draws, LOO, plots, report
BRANCHES = {
    # round 2, merged into main on 2026-12-02
    "jobs": "13",  # checkpoint fingerprints, atomic_write, overlapping fits
    "persist": "13",  # load validates every attribute (_schema.py), fuzz test
    "numerics": "13",  # overflowing input refused with a named cause
    "linbound": "13",  # the commit message says "issue 13, F12"
    "ciflake": "12",  # CI: free ports, no wall-clock kills
    "sgvi": "14",
    "sgvibench": "14",
    "sgviapi": "14",  # SGVI save/load, verbose, NumbaModel probes (ISSUE14.md)
    "glm-priors": "14",
    "user-models": "14",  # supports, hyper, finite differences (one commit: 16)
    "sgvi-trust": "14",
    "sgvi-cheap": "14",
    "registry-cli": "15",
    "rows": "15",
    "cli-all": "15",
    "kernels-math": "15",
    "lda-rows": "15",
    "mixture-rows": "15",
    "drivers": "15",
    "plots-report": "17",
    "predictive": "17",
    "prefetch": "16",
    "sgvi-kernel": "16",  # SGVI GLM kernel blocking
    "gmm-f32": "16",  # compute_dtype='float32'
    # round 3 helper branches (not merged when this was written)
    "cost": "14",
    "user": "16",
    "gmm": "16",
    "lda": "16",
    "sgvirows": "15",  # SGVI estimators on every data source
    "resume": "15",  # checkpoints/--resume for every iterating driver
    "stoch": "15",  # one stochastic driver
    "lines": "15",
    # round 3, second day
    "eight": "14",  # eight schools: cheaper fixed-draw / stopping
    "daskbits": "15",  # SGVI Dask fits to the in-memory bits
    "shrink": "15",  # the line cap
    "gmm2": "16",  # mixture kernels toward the DGEMM peak
    "sgvik": "16",  # SGVI GLM kernel vs NumPyro and the bound
    "ooc": "16",  # out-of-core within 1.15x of in memory
    "psis": "14",  # the end-of-fit PSIS check's cost on large N (value-only pass)
    # round 3, third day
    "shrinka": "15",  # the line cap: conjugate, persist, batch/io, rows, sgvi estimators
    "shrinkb": "15",  # the line cap: mixture, lda, CLI, jobs, drivers
    "bam": "14",  # eight schools: batch-and-match
    "f32diag": "16",  # mixture float32 'diag' toward 1.7x
    "inline": "13",  # kernels inlined: the same bits on fresh and cached code
}

# Commits made on main directly (no branch), and branch commits placed apart
# from their branch. Each was read; the reason is the commit's subject.
COMMITS = {
    "6bf407f": "12",  # kernel cache in fastvi's own folder
    "b708d87": "12",  # shorter cold compile, first-compile notice, warmup
    "b4f44a8": "12",  # chunk loops folded into kernels (compile time)
    "8019fb3": "12",  # CI runs the README's commands; compile_time.py
    "634c64f": "13",  # damaged data files are named errors
    "9b797a8": "14",  # posteriordb test xfail text
    "c858f2d": "12",  # README compile table
    "949f0ed": "12",  # first-compile notice mark
    "b7111cd": "13",  # fuzz test for SGVI estimators
    "01f10ce": "13",  # README layout: _schema.py, _numerics.py
    "5bf61a2": "15",  # CLI log handler (unclear owner: counted)
    "3f3c3e1": "12",  # serial chunk kernels docs
    "c9b62be": "13",  # test: fits in threads give the same bits
    "318db33": "16",  # README mixture benchmark table
    "0f2904b": "12",  # ci/stress.sh
    "48dafd4": "12",  # _compile.__all__
    "8bfdbfd": "12",  # docstrings name the chunk kernels
    "fa4d09a": "16",  # bench: machine peaks
    "866e8eb": "16",  # bench: LDA on man pages
    "29e8a63": "16",  # LDA learning_method='scvb0'
    "537970b": "17",  # report: PSIS-LOO
    "1fdccdb": "15",  # merge fix after the rows merge
    "01a7616": "17",  # docs: k-hat figure
    "c099f4a": "16",  # test: SCVB0 thread independence
    "06f8e3d": "16",  # test: SCVB0 kernel bits
    "5e90d80": "13",  # test: bits on a fresh thread
    "c9bd69e": "12",  # batch jobs on cached kernels (_compile.py)
    "4e91a34": "15",  # README layout of the new house
    "538bab6": "16",  # README SCVB0
    "963b326": "14",  # README stopping rule
    "67205af": "14",  # README averaging
    "2fd4196": "13",  # persist: mangled .npy header
    "8a5720a": "16",  # bench_batch
    "31570ea": "16",  # NumbaModel inlined kernels (ISSUE16.md: users pay 10x)
    "3661eb4": "14",  # thread_limits reuse (in sgvi-cheap: SGVI fit cost)
    "bb2ad04": "14",  # SGVI k-hat alarm confirmed on 1000 draws (right-or-loud)
    "5931f29": "14",  # PSIS k-hat: GPD fit crash at N=1e6 (SGVI.run's k-hat check)
    "5615c59": "14",  # branch psis's value-only pass moved into kernels/sgvi.py
}

MENTION = re.compile(r"\bissue (1[2-7])\b", re.IGNORECASE)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], check=True, capture_output=True, text=True
    ).stdout


def commit_issues(rev: str) -> dict[str, tuple[str, str]]:
    """Full hash -> (issue, rule) for every commit of ROUND1..rev."""
    out: dict[str, tuple[str, str]] = {}
    subjects = {}
    merges = set()
    for line in git("log", "--format=%H %P%x00%s", f"{ROUND1}..{rev}").splitlines():
        head, subject = line.split("\x00", 1)
        sha, *parents = head.split()
        subjects[sha] = subject
        if len(parents) > 1:
            merges.add(sha)
    branch_of: dict[str, str] = {}
    for line in git(
        "log", "--merges", "--reverse", "--format=%H %P%x00%s", f"{ROUND1}..{rev}"
    ).splitlines():
        head, subject = line.split("\x00", 1)
        _, p1, p2, *_ = head.split()
        m = re.match(r"Merge branch '([^']+)'", subject)
        if not m:
            continue
        for sha in git("rev-list", f"{p1}..{p2}").split():
            branch_of.setdefault(sha, m.group(1))
    for sha, subject in subjects.items():
        pinned = next((v for k, v in COMMITS.items() if sha.startswith(k)), None)
        if pinned:
            out[sha] = (pinned, "table")
        elif sha in merges:
            out[sha] = ("15", "merge")
        elif branch_of.get(sha) in BRANCHES:
            out[sha] = (BRANCHES[branch_of[sha]], "branch " + branch_of[sha])
        elif MENTION.search(subject):
            out[sha] = (MENTION.search(subject).group(1), "message")
        else:
            out[sha] = ("15", "unknown")
    return out


def blame(path: str, rev: str | None, moves: bool = False) -> list[str]:
    """The commit that last touched each line of path (``moves``: the commit that
    wrote a line that was later moved or copied, within or between files)."""
    args = ["blame", "--line-porcelain", *(["-M", "-C", "-C"] if moves else [])]
    if rev:
        args.append(rev)
    text = git(*args, "--", path)
    return [
        line.split()[0]
        for line in text.splitlines()
        if line and line[0] != "\t" and re.match(r"^[0-9a-f]{40} \d+ \d+", line)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", help="blame this commit instead of the working tree")
    ap.add_argument("--files", action="store_true", help="counted lines per file")
    ap.add_argument(
        "--moves",
        action="store_true",
        help="give a moved or copied line to the commit that wrote it (git blame "
        "-M -C -C); not the default, which counts a move as its mover's line",
    )
    ap.add_argument("--commits", action="store_true", help="how each commit was placed")
    args = ap.parse_args()
    rev = args.rev
    placed = commit_issues(rev or "HEAD")
    if args.commits:
        for sha, (issue, rule) in placed.items():
            subject = git("log", "-1", "--format=%s", sha).strip()[:90]
            print(f"{sha[:7]} {issue:>2} {rule:<22} {subject}")
    if rev:
        files = git("ls-tree", "-r", "--name-only", rev, "fastvi").split()
    else:
        files = git("ls-files", "fastvi").split()
    files = [f for f in files if f.endswith(".py")]
    per_issue: Counter[str] = Counter()
    per_file: dict[str, Counter[str]] = defaultdict(Counter)
    per_rule: Counter[str] = Counter()  # how issue 15's lines were placed
    for path in files:
        for sha in blame(path, rev, args.moves):
            if set(sha) == {"0"}:
                issue = "15"  # not committed yet
                per_rule["uncommitted"] += 1
            elif sha in placed:
                issue = placed[sha][0]
                if issue == "15":
                    per_rule[placed[sha][1].split()[0]] += 1
            else:
                issue = "round 1"
            per_issue[issue] += 1
            per_file[path][issue] += 1
    total = sum(per_issue.values())
    counted = sum(per_issue[k] for k in COUNTED)
    print(f"fastvi/**/*.py at {rev or 'the working tree'}: {total:,} lines")
    for issue in sorted(per_issue, key=lambda k: (k != "round 1", k)):
        name = issue if issue == "round 1" else f"issue {issue}"
        mark = "  (counted)" if issue in COUNTED else ""
        print(f"  {name:<9} {per_issue[issue]:>7,}{mark}")
    rules = ", ".join(f"{k} {v:,}" for k, v in per_rule.most_common())
    print(f"  issue 15's lines by how they were placed: {rules}")
    print(
        f"counted against issue 15's cap: {counted:,} of {CAP:,} ({counted - CAP:+,})"
    )
    if args.files:
        print("\ncounted lines per file (round 1 + issue 15) / all lines:")
        rows = sorted(per_file.items(), key=lambda kv: -sum(kv[1][k] for k in COUNTED))
        for path, c in rows:
            print(f"  {sum(c[k] for k in COUNTED):>6,} / {sum(c.values()):>6,}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
