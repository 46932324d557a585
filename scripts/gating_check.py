"""Does the gate tell signal from noise on real runs? (docs/regression-gating.md)

1. ``--repeats`` runs of one unchanged tiny case, each retraining its adapter from the cached
   base model (adapter, answers and scores removed between runs): the gate must flag nothing.
2. Planted degradations of the same case, each a copy of the profile with one value changed
   (``--plant train.steps=50``): the gate must flag them, with the CI behind the verdict.
   The first plant is run three times in the same history (the first cold, then cached), so
   the history holds a step change at run ``repeats``; ``medqa-bench trend`` must find it there.
Every run is a real ``pytest benchmarks/test_medqa.py -k CASE`` subprocess.

    python scripts/gating_check.py --case llama-wikidoc --repeats 10 \\
        --plant train.steps=50 --plant generation.max_new_tokens=8 --work /tmp/gating
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def override(text: str, dotted: str) -> str:
    """Set ``section.key=value`` in a profile's TOML text (the key must exist in that section)."""
    lhs, value = dotted.split("=", 1)
    section, key = lhs.rsplit(".", 1)
    head = re.search(rf"^\[{re.escape(section)}\]\s*$", text, re.M)
    if head is None:
        raise SystemExit(f"--plant {dotted}: no [{section}] section in the profile")
    nxt = re.search(r"^\[", text[head.end():], re.M)
    end = head.end() + (nxt.start() if nxt else len(text) - head.end())
    body, n = re.subn(rf"^{re.escape(key)}\s*=.*$", f"{key} = {value}", text[head.end():end], count=1, flags=re.M)
    if n != 1:
        raise SystemExit(f"--plant {dotted}: no key {key!r} in [{section}]")
    return text[:head.end()] + body + text[end:]


def run_case(case: str, profile: Path, cache: Path, history: Path | str, results: Path) -> dict:
    before = set(results.glob("*/")) if results.exists() else set()
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_medqa.py", "-k", case, "-n", "0", "-q",
           "-p", "no:cacheprovider", "--profile", str(profile), "--cache-dir", str(cache),
           "--history", str(history), "--results-dir", str(results)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    [run_dir] = set(results.glob("*/")) - before
    rec = json.loads((run_dir / f"{case}.json").read_text())
    checks = {c["name"]: c for c in rec["verdict"]["checks"]}
    return {"run": run_dir.name, "exit": proc.returncode, "status": rec["verdict"]["status"],
            "seconds": round(time.time() - t0, 1), "cached_train": rec["cached"]["train"],
            "metrics": rec["metrics"], "train_seconds": rec["resources"]["train_seconds"],
            "flagged": [n for n, c in checks.items() if not c["passed"]],
            "ci": {m: checks[m]["ci"] for m in ("bert_f1", "use_f1")}, "explain": rec["verdict"]["explain"]}


def clear_case_cache(cache: Path) -> None:
    for stage in ("adapter", "answers", "scores"):
        shutil.rmtree(cache / stage, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="llama-wikidoc")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--plant", action="append", default=[], help="section.key=value changed in a profile copy")
    ap.add_argument("--seeds", type=int, default=0,
                    help="also run train.seed = 1..N (run-to-run variation a GPU's nondeterminism would add) "
                         "and count what the CI rule and a plain threshold would flag")
    ap.add_argument("--skip-repeats", action="store_true", help="only the seed sweep")
    ap.add_argument("--work", default="/tmp/medqa-gating", help="scratch directory (cache, history, results)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "gating-check.json"))
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache, history, results = work / "cache", work / "history.sqlite", work / "results"
    src = REPO / "profiles" / f"{args.profile}.toml"
    out: dict = {"case": args.case, "threads": os.environ.get("MEDQA_THREADS"), "repeats": [], "plants": []}
    for i in range(0 if args.skip_repeats else args.repeats):
        clear_case_cache(cache)
        r = run_case(args.case, src, cache, history, results)
        out["repeats"].append(r)
        print(f"repeat {i}: {r['status']} exit {r['exit']} bert_f1 {r['metrics']['bert_f1']:.4f} "
              f"use_f1 {r['metrics']['use_f1']:.4f} train {r['train_seconds']:.1f}s ({r['seconds']}s)", flush=True)
    out["seeds"] = []
    for seed in range(1, args.seeds + 1):
        prof = work / f"seed{seed}.toml"
        prof.write_text(override(src.read_text(), f"train.seed={seed}"))
        r = run_case(args.case, prof, cache, "none", results)
        r["seed"] = seed
        rec = json.loads((results / r["run"] / f"{args.case}.json").read_text())
        checks = {c["name"]: c for c in rec["verdict"]["checks"]}
        r["threshold_would_flag"] = [m for m, c in checks.items() if c["basis"] == "paired" and c["value"] < c["limit"]]
        out["seeds"].append(r)
        print(f"seed {seed}: {r['status']} flagged {r['flagged']} (plain threshold would flag {r['threshold_would_flag']}) "
              f"bert_f1 {r['metrics']['bert_f1']:.4f} CI {r['ci']['bert_f1']}", flush=True)
    for k, plant in enumerate(args.plant):
        prof = work / f"plant{k}.toml"
        prof.write_text(override(src.read_text(), plant))
        for rep in range(3 if k == 0 else 1):
            r = run_case(args.case, prof, cache, history if k == 0 else "none", results)
            r["plant"] = plant
            out["plants"].append(r)
            print(f"plant {plant} #{rep}: {r['status']} flagged {r['flagged']} CI bert_f1 {r['ci']['bert_f1']}", flush=True)
    trend = subprocess.run([sys.executable, "-m", "medqa_core.cli", "trend", "--profile", args.profile,
                            "--history", str(history)], cwd=REPO, capture_output=True, text=True)
    out["trend"] = trend.stdout.strip().splitlines()
    print("\n".join(out["trend"]))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
