"""What a recorded own-data case measured, and the (K, R) frontier it implies (docs/own-data.md,
"Measured on real data").

    python scripts/own_data_frontier.py RUN_DIR [--profile PROFILE.toml] [--target 0.03] [--budget 1200]

From the case record(s) in RUN_DIR (a run of ``pytest ... --update-baselines``): seconds per seed
(training, generation, scoring, as the record's stage seconds), the tuned scores per seed, the
base model and the question-removed control with the paired 95% bootstrap interval of the
difference, the share of degenerate answers, and the between-run sd of BERTScore F1 over the
seeds. Then power.plan over K baseline runs x R gate runs at the profile's alpha, with the
variance estimated from these seeds pooled with the profile's measured prior (prior_sd, prior_df).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medqa_core import power
from medqa_core.gate import paired_bootstrap_ci
from medqa_core.profile import load_profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--profile")
    ap.add_argument("--target", type=float, default=0.03)
    ap.add_argument("--budget", type=float, default=1200.0, help="seconds per gate run")
    args = ap.parse_args()
    recs = [json.loads(p.read_text()) for p in sorted(Path(args.run_dir).glob("*.json")) if p.name != "aggregates.json"]
    for rec in recs:
        print(f"== {rec['case_id']}: {len(rec['runs'])} run(s), seeds {rec.get('seeds')}")
        f1 = []
        secs = []
        for run in rec["runs"]:
            m = run["metrics"]
            f1.append(m["bert_f1"])
            s = {k: v for k, v in (rec.get("seconds") or {}).items()} if run is rec["runs"][0] else {}
            per = run["per_example"]["bert_f1"]
            line = [f"seed {run['seed']}: bert_f1 {m['bert_f1']:.4f} use_f1 {m['use_f1']:.4f} "
                    f"degenerate {m.get('degenerate', float('nan')):.3f} words {m.get('answer_words', float('nan')):.1f}"]
            for name, ctrl in (run.get("controls") or {}).items():
                cper = ctrl["per_example"]["bert_f1"]
                mean, lo, hi = paired_bootstrap_ci(np.asarray(per) - np.asarray(cper))
                deg = ctrl["metrics"].get("degenerate")
                line.append(f"   tuned - {name}: {mean:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]"
                            + (f" ({name} degenerate {deg:.3f})" if deg is not None else ""))
            res = run.get("resources", {})
            line.append(f"   train {res.get('train_seconds', 0):.0f} s, {res.get('tokens_per_s', 0):.0f} tokens/s, "
                        f"peak +{res.get('peak_mem_mib', 0):.0f} MiB" + (f"; stage seconds {s}" if s else ""))
            secs.append(float(res.get("train_seconds", 0)))
            print("\n".join(line))
        seconds = {k: v for k, v in (rec.get("seconds") or {}).items()}
        per_seed = sum(v for k, v in seconds.items() if k != "base" and k != "load")
        print(f"stage seconds of the last run: {seconds}; ~{per_seed:.0f} s per seed (training, answers, scores)")
        if len(f1) > 1:
            sd = float(np.std(f1, ddof=1))
            print(f"between-run sd of bert_f1 over {len(f1)} seeds: {sd:.4f} ({len(f1) - 1} df)")
        else:
            sd = None
        if args.profile:
            gate = load_profile(args.profile).gate
            prior_sd = gate.prior_sd.get("bert_f1")
            d0 = gate.prior_df
            k = len(f1)
            if prior_sd is not None and sd is not None:
                pooled = ((d0 * prior_sd ** 2 + (k - 1) * sd ** 2) / (d0 + k - 1)) ** 0.5
            else:
                pooled = sd or prior_sd
            if pooled:
                print(f"sd for the plan: {pooled:.4f} (seeds pooled with the prior {prior_sd} at {d0:g} df)")
                pl = power.plan(pooled, max(per_seed, 1.0), args.target, args.budget, gate.alpha, k_max=10, r_max=5,
                                prior_df=d0, min_effect=gate.metric_tolerance.get("bert_f1", 0.0))
                print("\n".join(pl.table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
