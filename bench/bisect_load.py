"""The load benchmark on several commits, interleaved: `python -m bench.bisect_load A B [--rounds 2]`.

    python -m bench.bisect_load e70d3d9 HEAD --rounds 2 -- --sessions 1,16 --max-tokens 64 --prompts 8

Each commit gets a temporary `git worktree` (removed at the end); every round runs
`python -m tandem bench ARGS` once per commit, in order (A B A B ...), with PYTHONPATH and the
working directory set to that commit's tree, so runs of different commits sit side by side
under the same machine load. `.` names the working tree as it is (uncommitted changes
included). The load average is read before and after every run. Prints one line per run
(the ratios the README's load targets name) and writes bisect.json to --out.

Why interleaved: on a shared machine the load swings more between minutes than a regression
would; A B A B lets a steady difference show through the drift.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def _tree(commit: str, scratch: Path) -> tuple[str, Path, bool]:
    """(label, tree, temporary?) for a commit; '.' is this working tree."""
    if commit == ".":
        return "worktree", REPO, False
    sha = _git("rev-parse", "--short", commit)
    tree = scratch / f"bisect-{sha}"
    if not tree.exists():
        _git("worktree", "add", "--detach", str(tree), sha)
    return sha, tree, True


def figures(rows: list[dict]) -> dict:
    """hybrid N/1, cloud N/1 and hybrid/cloud at the largest N, from load.json's rows."""
    plain = {(r["mode"], r["sessions"]): r["tokens_per_s"] for r in rows if not r.get("join_run")}
    most = max(n for _, n in plain)
    out = {f"{m}_{n}": v for (m, n), v in sorted(plain.items())}

    def ratio(a, b):
        return round(plain[a] / plain[b], 2) if a in plain and b in plain else None

    out |= {"hybrid_most_per_one": ratio(("hybrid", most), ("hybrid", 1)),
            "cloud_most_per_one": ratio(("cloud", most), ("cloud", 1)),
            "hybrid_per_cloud_at_most": ratio(("hybrid", most), ("cloud", most)), "most": most}
    accept = {r["sessions"]: r.get("acceptance") for r in rows if r["mode"] == "hybrid" and not r.get("join_run")}
    passes = {r["sessions"]: r["sessions_per_pass"] for r in rows if r["mode"] == "hybrid" and not r.get("join_run")}
    return out | {"hybrid_acceptance": accept, "hybrid_sessions_per_pass": passes}


def run_once(label: str, tree: Path, bench_args: list[str], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    before = os.getloadavg()
    started = time.monotonic()
    env = os.environ | {"PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "tandem", "bench", *bench_args, "--out", str(out)], cwd=tree,
                          env=env, capture_output=True, text=True)
    record = {"commit": label, "load_average_before": before, "load_average_after": os.getloadavg(),
              "wall_s": round(time.monotonic() - started, 1), "returncode": done.returncode}
    if done.returncode != 0:
        return record | {"error": done.stderr[-2000:]}
    return record | figures(json.loads((out / "load.json").read_text())["rows"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, bench_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m bench.bisect_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("commits", nargs="+", help="commits to compare ('.' = this working tree)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per commit, interleaved")
    parser.add_argument("--out", default="bisect-results", help="output directory")
    parser.add_argument("--scratch", default="/tmp", help="where the temporary worktrees go")
    args = parser.parse_args(ours)
    bench_args = bench_args or ["--sessions", "1,16", "--max-tokens", "64", "--prompts", "8",
                                "--long-prompt-tokens", "0"]
    out = Path(args.out)
    trees = [_tree(c, Path(args.scratch)) for c in args.commits]
    records = []
    try:
        for round_ in range(args.rounds):
            for label, tree, _ in trees:
                print(f"round {round_ + 1}: {label} ...", file=sys.stderr, flush=True)
                record = run_once(label, tree, bench_args, out / f"{round_ + 1}-{label}") | {"round": round_ + 1}
                records.append(record)
                print(_line(record), flush=True)
                (out / "bisect.json").write_text(json.dumps({"bench_args": bench_args, "runs": records}, indent=1))
    finally:
        for _, tree, temporary in trees:
            if temporary:
                _git("worktree", "remove", "--force", str(tree))
    return 0 if all(r["returncode"] == 0 for r in records) else 1


def _line(r: dict) -> str:
    load = f"load {r['load_average_before'][0]:.2f} -> {r['load_average_after'][0]:.2f}"
    if r["returncode"]:
        return f"{r['commit']:<9} round {r['round']}  FAILED ({load}): {r['error'].strip().splitlines()[-1:]}"
    n = r["most"]
    return (f"{r['commit']:<9} round {r['round']}  hybrid {r.get('hybrid_1')} -> {r.get(f'hybrid_{n}')} tok/s "
            f"({r['hybrid_most_per_one']}x), cloud {r.get('cloud_1')} -> {r.get(f'cloud_{n}')} "
            f"({r['cloud_most_per_one']}x), hybrid/cloud at {n}: {r['hybrid_per_cloud_at_most']}, "
            f"acceptance {r['hybrid_acceptance']}, sessions/pass {r['hybrid_sessions_per_pass']}; {load}; "
            f"{r['wall_s']:.0f}s")


if __name__ == "__main__":
    raise SystemExit(main())
