"""False alarms and minimum detectable effects of the gate, from real runs (docs/regression-gating.md).

Reads a recorded baseline and one or more sweeps of unchanged code (scripts/noise_sweep.py:
other seeds, thread counts, ``ATEN_CPU_CAPABILITY`` values) and judges every run exactly as the
benchmark does (gate.judge_case, then family/suite aggregates per seed), without the time
checks (a sweep runs in one process, not under the benchmark's load). Prints:

* false failures per sweep: case-runs failing (and on which checks); family and suite verdicts
  failing (one per family or suite and seed: it fails when any metric's aggregate check does),
  with the failing aggregate checks (one per metric) in brackets;
* the MDE table: per case, the smallest BERTScore F1 / USE F1 drop the gate flags with 80% power
  (one run against the K-run baseline), and the family and suite MDEs.

    python scripts/gate_calibration.py --baseline baselines/tiny.json /tmp/sweep-*.json [--mde-md docs/mde.md]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=REPO / "baselines" / "tiny.json")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("sweeps", nargs="*", help="sweep JSON files; FILE1,FILE2 = one sweep split over processes")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    ap.add_argument("--runs-per-gate", type=int, default=None,
                    help="R: runs judged together per case, as --seeds R does (default: the profile's [gate] gate_seeds); "
                         "a sweep's seeds are taken in sorted order in disjoint groups of R, a remainder left out")
    args = ap.parse_args(argv)

    from scipy import stats

    from medqa_core import baselines, gate
    from medqa_core.profile import load_profile

    profile = load_profile(args.profile)
    g = profile.gate
    R = g.gate_seeds if args.runs_per_gate is None else args.runs_per_gate
    if R < 1:
        ap.error("--runs-per-gate must be >= 1")
    base = baselines.load(args.baseline)
    cases = base["cases"]
    tol = {**gate.DEFAULT_MIN_EFFECT, **g.metric_tolerance}
    out: dict = {"sweeps": [], "mde": {}}

    # ---- MDE table ------------------------------------------------------------------------
    print(f"## MDE (80% power, R = {R} run(s) vs K-run baseline, alpha {g.alpha} per side; aggregates alpha {g.aggregate_alpha})\n")
    print("| case | K | BERTScore F1 sd | BERTScore F1 MDE | USE F1 sd | USE F1 MDE |")
    print("|---|---|---|---|---|---|")
    ses: dict[str, dict[str, float]] = defaultdict(dict)
    for cid in sorted(cases):
        row = []
        for m in ("bert_f1", "use_f1"):
            b = gate.band(cases[cid], m, gate.pooled_variance(cases, m))
            if b is None:
                row += ["-", "-"]
                continue
            ses[m][cid] = b.se(R)
            mde = b.mde(R, g.alpha, tol[m])
            out["mde"].setdefault(cid, {})[m] = round(mde, 4)
            row += [f"{math.sqrt(b.var):.4f}", f"{mde:.4f}"]
        print(f"| {cid} | {len(cases[cid].get('runs', []))} | " + " | ".join(row) + " |")
    crit = stats.norm.ppf(1 - g.aggregate_alpha) + stats.norm.ppf(gate.POWER)
    for m in ("bert_f1", "use_f1"):
        fams = defaultdict(list)
        for cid, se in ses[m].items():
            fams[cid.split("-", 1)[0]].append(se)
        eff = tol[m] * g.aggregate_min_effect_factor
        suite = max(eff, crit * math.sqrt(len(ses[m])) / sum(1 / s for s in ses[m].values()))
        fam = {f: round(max(eff, crit * math.sqrt(len(v)) / sum(1 / s for s in v)), 4) for f, v in fams.items()}
        out["mde"][f"suite:{m}"] = round(suite, 4)
        out["mde"][f"family:{m}"] = fam
        print(f"\n{m}: suite MDE {suite:.4f} over {len(ses[m])} cases; family MDE " +
              ", ".join(f"{f} {v:.4f}" for f, v in sorted(fam.items())))

    # ---- frontier: more runs per gate run (--seeds R) buy power ----------------------------
    print("\n## Frontier: MDE vs runs per case (--seeds R; the cold matrix takes about R times as long)\n")
    print("| R | BERTScore F1 case MDE median (max) | suite MDE | USE F1 case MDE median (max) | suite MDE |")
    print("|---|---|---|---|---|")
    for r in (1, 2, 3, 5, 10):
        row = [str(r)]
        for m in ("bert_f1", "use_f1"):
            bands = [gate.band(cases[c], m, gate.pooled_variance(cases, m)) for c in sorted(cases)]
            mdes = [b.mde(r, g.alpha, tol[m]) for b in bands if b]
            se = [b.se(r) for b in bands if b]
            eff = tol[m] * g.aggregate_min_effect_factor
            suite = max(eff, crit * math.sqrt(len(se)) / sum(1 / x for x in se))
            out.setdefault("frontier", {}).setdefault(m, {})[r] = {"case_median": float(np.median(mdes)),
                                                                   "case_max": max(mdes), "suite": suite}
            row += [f"{np.median(mdes):.4f} ({max(mdes):.4f})", f"{suite:.4f}"]
        print("| " + " | ".join(row) + " |")
    for m in ("bert_f1", "use_f1"):
        print(f"{m}: variance prior s0 = {math.sqrt(gate.pooled_variance(cases, m)[0]):.4f}, d0 = {gate.pooled_variance(cases, m)[1]:.1f}")

    # ---- false alarms -----------------------------------------------------------------------
    print("\n## False failures of unchanged code\n")
    print("| sweep | case-runs | failing case-runs | checks that failed | family verdicts failing (checks) | "
          "suite verdicts failing (checks) | largest abs(t) / critical t |")
    print("|---|---|---|---|---|---|---|")
    for group in args.sweeps:
        files = [Path(f) for f in group.split(",")]
        parts = [json.loads(f.read_text()) for f in files]
        data = {"settings": parts[0].get("settings", {}), "runs": [r for p in parts for r in p["runs"]]}
        path = files[0]
        env = data.get("settings", {}).get("env", {})
        seeds = sorted({r["seed"] for r in data["runs"]})
        label = (f"{path.stem.rsplit('-', 1)[0]}: seeds {seeds[0]}-{seeds[-1]} (R = {R}), ATEN_CPU_CAPABILITY="
                 f"{env.get('ATEN_CPU_CAPABILITY') or 'unset (AVX512 here)'}, {env.get('MEDQA_THREADS') or '-'} thread(s)")
        by_seed: dict[int, list[dict]] = defaultdict(list)  # one gate run: keyed by its first seed
        failing_checks: Counter = Counter()
        n_fail = n = 0
        reproduced = closest = 0.0
        fresh: dict[str, dict[int, dict]] = defaultdict(dict)  # case -> seed -> run the baseline does not hold
        for r in data["runs"]:
            bc = cases.get(r["case"])
            if bc is None:
                continue
            if r["seed"] in {x.get("seed") for x in bc.get("runs", [])}:
                # a seed the baseline holds: not an independent run; on the recording machine it must
                # reproduce that run (counted apart, never as a pass of the false-alarm test)
                rec_run = next(x for x in bc["runs"] if x.get("seed") == r["seed"])
                reproduced += all(abs(r["metrics"][m] - rec_run["metrics"][m]) <= 1e-5 for m in rec_run["metrics"])
                continue
            fresh[r["case"]][r["seed"]] = r
        # gate runs: the sweep's fresh seeds in sorted order, disjoint groups of R (as `--seeds R` judges R runs)
        all_seeds = sorted({s for runs in fresh.values() for s in runs})
        groups = [all_seeds[i:i + R] for i in range(0, len(all_seeds) - R + 1, R)]
        for grp in groups:
            for cid, runs in sorted(fresh.items()):
                if not all(s in runs for s in grp):
                    continue
                r = runs[grp[0]]
                v = gate.judge_case(cid, [runs[s] for s in grp], cases[cid], cases, g, r["identity"], None)
                n += 1
                for c in v.checks:
                    if c.kind == "noise" and c.t is not None and c.df:
                        closest = max(closest, abs(c.t) / gate.t_quantile(1 - g.alpha, c.df))
                if v.failed or v.status == "incomparable":
                    n_fail += 1
                    failing_checks.update(c.name.split("@")[0] for c in v.failures)
                by_seed[grp[0]].append({"case_id": cid, "model": r["model"], "verdict": v.to_json()})
        fam_fail = fam_n = suite_fail = suite_n = 0
        verdicts: dict[str, list[int]] = {"family": [0, 0], "suite": [0, 0]}  # [failing, judged]
        for recs in by_seed.values():
            failed_scope: dict[str, bool] = {}  # one verdict per family / suite and seed: any metric failing
            for a in gate.aggregates(recs, g):
                failed_scope[a.scope] = failed_scope.get(a.scope, False) or not a.passed
                if a.scope == "suite":
                    suite_n += 1
                    suite_fail += not a.passed
                else:
                    fam_n += 1
                    fam_fail += not a.passed
            for scope, failed in failed_scope.items():
                v = verdicts["suite" if scope == "suite" else "family"]
                v[0] += failed
                v[1] += 1
        top = ", ".join(f"{k} x{c}" for k, c in failing_checks.most_common(6)) or "-"
        fv, sv = verdicts["family"], verdicts["suite"]
        print(f"| {label} | {n} | {n_fail} ({100 * n_fail / max(1, n):.1f}%) | {top} | {fv[0]}/{fv[1]} ({fam_fail}/{fam_n}) | "
              f"{sv[0]}/{sv[1]} ({suite_fail}/{suite_n}) | {closest:.2f} |" + (f" ({int(reproduced)} runs of baseline seeds reproduced)" if reproduced else ""))
        out["sweeps"].append({"sweep": str(path), "env": env, "case_runs": n, "failing": n_fail, "closest": closest,
                              "reproduced": reproduced,
                              "checks": dict(failing_checks), "family": [fam_fail, fam_n], "suite": [suite_fail, suite_n],
                              "family_verdicts": verdicts["family"], "suite_verdicts": verdicts["suite"]})
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
