"""How well does trend.py find shifts, and how long does the session-end history work take?

Detection (default): simulated nightly series, numbers for docs/regression-gating.md. Series of
30 runs with Gaussian noise (sd 0.005, about the run-to-run spread of a 40-question score on
GPUs); min effect 0.01 (half the tiny tolerance). For each penalty: the share of flat series
with a false shift, of 0.02 steps found at the exact run (and within one run), and of slow
drifts (0.002 per run from run 15 on) reported starting within two runs of 15.

    python scripts/trend_simulation.py [--trials 300]

Scale (``--scale``): what the pytest plugin does at every session end, ``History.add_run`` of
one run then ``trend.case_trends`` over the cases just run, timed on a history that already
holds N runs of synthetic records (``--cases`` cases per run, each record with per-example
scores like a real one, a planted 0.03 step in one case's bert_f1 ten runs before the end).
The history is built once per N with plain SQL inserts in one transaction (the schema the
history writes; fast, and the same for older versions of history.py), so the script also
times code from before the trend window (run it with ``PYTHONPATH`` pointing at an old ``src``).

    python scripts/trend_simulation.py --scale 100,1000,10000 [--cases 4] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from medqa_core.results.trend import regressions

PROFILE = "tiny"
FAMILIES = ("llama", "phi", "mistral", "gemma", "qwen", "smollm2")
DATASETS = ("wikidoc", "mental_health")


def detection(trials: int) -> None:
    n, sd, eff = 30, 0.005, 0.01
    print("| penalty | false shift (flat) | 0.02 step at exact run | within 1 run | drift start within 2 runs |")
    print("|---|---|---|---|---|")
    for pen in (3.0, 6.0, 10.0):
        fp = exact = near = drift = 0
        for s in range(trials):
            rng = np.random.default_rng(s)
            fp += bool(regressions(0.45 + rng.normal(0, sd, n), eff, penalty=pen))
            step = np.r_[0.45 + rng.normal(0, sd, 20), 0.43 + rng.normal(0, sd, 10)]
            found = [x.start for x in regressions(step, eff, penalty=pen)]
            exact += 20 in found
            near += any(abs(x - 20) <= 1 for x in found)
            d = np.r_[0.45 + rng.normal(0, sd, 15), 0.45 - 0.002 * np.arange(1, 16) + rng.normal(0, sd, 15)]
            found = [x.start for x in regressions(d, eff, penalty=pen)]
            drift += any(abs(x - 15) <= 2 for x in found)
        t = trials
        print(f"| {pen:g} | {fp / t:.1%} | {exact / t:.1%} | {near / t:.1%} | {drift / t:.1%} |")


# ------------------------------------------------------------------------------ scale


def case_ids(n: int) -> list[str]:
    return [f"{FAMILIES[i % len(FAMILIES)]}-{DATASETS[(i // len(FAMILIES)) % len(DATASETS)]}" for i in range(n)]


def synthetic_record(case_id: str, i: int, n_runs: int, rng: random.Random, examples: int = 40) -> dict:
    """A case record shaped like a real one (metrics, resources, identity, provenance, one seed's
    per-example scores); bert_f1 of the first case drops by 0.03 ten runs before the end."""
    from medqa_core.metrics import METRICS

    model, dataset = case_id.split("-", 1)
    level = 0.45 - (0.03 if case_id == case_ids(1)[0] and i >= n_runs - 10 else 0.0)
    metrics = {m: round(level + rng.gauss(0, 0.004), 6) for m in METRICS}
    per_example = {m: [round(rng.random(), 4) for _ in range(examples)] for m in METRICS}
    hw = {"gpu": None, "gpu_count": None}
    prov = {"git_sha": f"{i:040x}", "hardware": hw, "profile": PROFILE, "device": "cpu"}
    ident = {"data": "D", "test_ids": "T", "scorer": "S"}
    resources = {"train_seconds": round(60 + rng.gauss(0, 2), 3), "peak_mem_mib": round(900 + rng.gauss(0, 10), 1),
                 "tokens_per_s": 50.0, "device": "cpu"}
    return {"case_id": case_id, "model": model, "dataset": dataset, "profile": PROFILE, "metrics": metrics,
            "resources": resources, "identity": ident, "provenance": prov, "seeds": [0],
            "runs": [{"seed": 0, "metrics": metrics, "per_example": per_example, "resources": resources}],
            "verdict": {"status": "pass", "note": "", "checks": [], "explain": f"{case_id}: pass"},
            "outcome": "passed"}


def build(path: Path, n_runs: int, n_cases: int, seed: int = 0) -> None:
    """A history of ``n_runs`` runs (one a night), written in one transaction."""
    from medqa_core.results.history import History

    History(path).runs()  # creates the schema (whatever version of history.py is imported)
    rng = random.Random(seed)
    t0 = time.time() - n_runs * 86400.0
    con = sqlite3.connect(path)
    with con:
        for i in range(n_runs):
            rid = f"run{i:06d}"
            con.execute("INSERT INTO runs (run_id, created, profile, git_sha, hardware_class, meta) VALUES (?,?,?,?,?,?)",
                        (rid, t0 + i * 86400.0, PROFILE, f"{i:040x}", "cpu", json.dumps({"exitstatus": 0})))
            rows = []
            for cid in case_ids(n_cases):
                r = synthetic_record(cid, i, n_runs, rng)
                rows.append((rid, cid, r["outcome"], r["verdict"]["status"], json.dumps(r)))
            con.executemany("INSERT INTO cases (run_id, case_id, outcome, status, record) VALUES (?,?,?,?,?)", rows)
    con.close()


def session_end(path: Path, n_runs: int, cases: list[str], tag: str) -> tuple[float, float, int]:
    """(add_run seconds, case_trends seconds, shifts found) of one session end, as the plugin does it."""
    from medqa_core.results.history import History
    from medqa_core.results.trend import case_trends

    rng = random.Random(tag)
    recs = [synthetic_record(c, n_runs, n_runs + 1, rng) for c in cases]
    hist = History(path)
    t0 = time.perf_counter()
    hist.add_run(f"session-{tag}", PROFILE, recs, {"exitstatus": 0})
    t1 = time.perf_counter()
    found = case_trends(hist, cases, PROFILE, {"bert_f1": 0.02}, "cpu", memory_slack_mib=256.0)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, sum(len(v) for per in found.values() for v in per.values())


def scale(sizes: list[int], n_cases: int, repeat: int, single: bool = False) -> None:
    print(f"| runs in history | add_run (s) | case_trends, 1 case (s) | case_trends, {n_cases} cases (s) | "
          "total, 1 case (s) | shifts found |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "history.sqlite"
            t = time.perf_counter()
            build(path, n, n_cases)
            built = time.perf_counter() - t
            one, many = [], []
            found = 0
            for k in range(repeat):
                a, c, f = session_end(path, n, case_ids(1), f"one{k}")
                one.append((a, c))
                found = f
                if not single:
                    a2, c2, _ = session_end(path, n, case_ids(n_cases), f"all{k}")
                    many.append(c2)
            add = min(a for a, _ in one)
            tr1 = min(c for _, c in one)
            trn = f"{min(many):.3f}" if many else "-"
            print(f"| {n} | {add:.3f} | {tr1:.3f} | {trn} | {add + tr1:.3f} | {found} |  "
                  f"<!-- built in {built:.1f} s, {path.stat().st_size / 2**20:.0f} MiB -->", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--scale", help="comma-separated history sizes (runs), e.g. 100,1000,10000")
    ap.add_argument("--cases", type=int, default=4, help="cases per run in the synthetic history (--scale)")
    ap.add_argument("--repeat", type=int, default=3, help="session ends timed per size, the fastest shown (--scale)")
    ap.add_argument("--single", action="store_true", help="time the one-case session end only (--scale)")
    args = ap.parse_args()
    if args.scale:
        scale([int(s) for s in args.scale.split(",")], args.cases, args.repeat, args.single)
    else:
        detection(args.trials)


if __name__ == "__main__":
    main()
