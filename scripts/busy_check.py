"""Unchanged code on a busy machine (docs/regression-gating.md, "Time on a busy machine").

Starts ``--busy`` CPU-bound processes (each a single-threaded loop of float work, as a build or
a browser tab keeps a core busy), then runs one benchmark case ``--reps`` times, each on an empty
cache (cold: every stage is built and timed), and reads every run's record: the failing checks
(there must be none) and what each time check said (judged, or ``unjudged: machine busy``).

    python scripts/busy_check.py --case llama-wikidoc --reps 10 --busy 2 --out /tmp/busy.json
    python scripts/busy_check.py --matrix --busy 2 --out /tmp/busy-matrix.json   # -n 2, all cases

Pass ``--plant NAME`` (benchmarks/plants.py) to run a planted regression instead of the clean
code: it must still be caught, or its time check must say ``unjudged``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def burn(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 1.0001
    while not stop.is_set():
        for _ in range(200_000):
            x = x * 1.0000001 + 1e-9
            if x > 2.0:
                x = 1.0001


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="llama-wikidoc")
    ap.add_argument("--matrix", action="store_true", help="every case of the tiny profile with -n 2 (one rep)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound processes started beside the runs")
    ap.add_argument("--plant", default=None, help="a plant of benchmarks/plants.py instead of the clean code")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    stop = mp.Event()
    burners = [mp.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.busy)]
    for b in burners:
        b.start()
    work = Path(tempfile.mkdtemp(prefix="medqa-busy-"))
    tree = REPO
    if args.plant:
        sys.path.insert(0, str(REPO))
        from benchmarks.plants import BY_NAME, materialize

        tree = materialize(BY_NAME[args.plant], work / "tree")
    rows = []
    try:
        for rep in range(1 if args.matrix else args.reps):
            cache, results = work / f"cache-{rep}", work / f"results-{rep}"
            cmd = [sys.executable, "-m", "pytest", "benchmarks/test_medqa.py", "-p", "no:cacheprovider", "-q",
                   f"--cache-dir={cache}", f"--results-dir={results}", "--history", "none",
                   f"--baseline={REPO / 'baselines' / 'tiny.json'}"]
            cmd += ["-n", "2"] if args.matrix else ["-k", args.case, "-p", "no:xdist"]
            env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=args.timeout)
            wall = time.time() - t0
            load = os.getloadavg()[0]
            for path in sorted(results.glob("*/*.json")):
                rec = json.loads(path.read_text())
                if "verdict" not in rec or "case_id" not in rec:
                    continue
                checks = rec["verdict"].get("checks", [])
                rows.append({
                    "rep": rep, "case": rec["case_id"], "exit": proc.returncode, "wall_s": round(wall, 1),
                    "load1": round(load, 2), "status": rec["verdict"]["status"],
                    "failing": [c["name"] for c in checks if not c["passed"]],
                    "time": {c["name"]: {"value": c["value"], "baseline": c["baseline"], "passed": c["passed"],
                                         "detail": c.get("detail", "")}
                             for c in checks if c.get("kind") == "time"},
                })
            shown = [r for r in rows if r["rep"] == rep]
            print(f"rep {rep}: exit {proc.returncode}, {wall:.0f} s, load {load:.1f}, "
                  f"{sum(1 for r in shown if r['failing'])} of {len(shown)} case(s) failing "
                  + "; ".join(f"{r['case']}: {r['failing']}" for r in shown if r["failing"]), flush=True)
            args.out.write_text(json.dumps({"busy": args.busy, "plant": args.plant, "matrix": args.matrix,
                                            "rows": rows}, indent=1))
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        stop.set()
        for b in burners:
            b.join(timeout=5)
    failing = sum(1 for r in rows if r["failing"])
    print(f"{len(rows)} case-runs, {failing} with a failing check")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
