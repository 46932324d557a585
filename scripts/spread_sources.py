"""Issue 27: what the between-seed spread of the tiny matrix is made of, from recorded sweeps
(``scripts/noise_sweep.py`` / ``scripts/spread_probe.py`` output; FILE.json or FILE.json.gz).

    python scripts/spread_sources.py items SWEEP...
        per case, a two-way split of the per-question scores (seed x question): the seed's share
        (the adapter as a whole better or worse) and the question-by-seed share, which a larger
        test set would average away; and what twice the test questions would leave of the sd.
    python scripts/spread_sources.py compare --against SWEEP... -- SWEEP...
        pooled between-seed sd over the cases both sides ran, and a one-sided F test.
    python scripts/spread_sources.py pool SWEEP... [--baseline FILE]
        the baseline's runs plus the sweeps' runs as one larger baseline: the variance prior and
        the suite MDE at R = 1, 2 and 3, as scripts/gate_calibration.py computes them.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METRICS = ("bert_f1", "use_f1")


def runs_of(paths: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in paths:
        opener: Any = gzip.open if p.endswith(".gz") else open
        with opener(p, "rt") as fh:
            out += json.load(fh)["runs"]
    return out


def by_case(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        out[r["case"]][r["seed"]] = r
    return out


def items(paths: list[str]) -> None:
    cases = by_case(runs_of(paths))
    for m in METRICS:
        now = doubled = 0.0
        print(f"\n{m}: case, seeds, sd of the case mean, seed share sd_a, question x seed sd_e/sqrt(n), sd at 2n")
        for cid, seeds in sorted(cases.items()):
            ids = seeds[min(seeds)]["per_example"]["ids"]
            s = np.array(
                [[dict(zip(r["per_example"]["ids"], r["per_example"][m]))[i] for i in ids] for _, r in sorted(seeds.items())]
            )
            k, n = s.shape
            a = s.mean(1) - s.mean()
            e = s - s.mean(1, keepdims=True) - s.mean(0, keepdims=True) + s.mean()
            mse = float((e**2).sum()) / ((k - 1) * (n - 1))
            var_a = max(0.0, (n * float((a**2).sum()) / (k - 1) - mse) / n)
            if k < 2 or n < 2:
                continue  # no split without two seeds and two questions
            var_mean = float(s.mean(1).var(ddof=1))
            now, doubled = now + var_a + mse / n, doubled + var_a + mse / (2 * n)  # the same model both times
            print(
                f"  {cid:28s} {k:2d} {math.sqrt(var_mean):.4f} {math.sqrt(var_a):.4f} {math.sqrt(mse / n):.4f} "
                f"{math.sqrt(var_a + mse / (2 * n)):.4f}"
            )
        print(f"  suite: twice the test questions leave x{math.sqrt(doubled / now):.2f} of the sd")


def compare(against: list[str], paths: list[str]) -> None:
    from scipy import stats

    old, new = by_case(runs_of(against)), by_case(runs_of(paths))
    common = sorted(set(old) & set(new))
    for m in METRICS:
        pooled = {}
        for name, side in (("against", old), ("probe", new)):
            var = df = 0.0
            for cid in common:
                y = np.array([r["metrics"][m] for r in side[cid].values()])
                if y.size > 1:
                    var, df = var + float(y.var(ddof=1)) * (y.size - 1), df + y.size - 1
            pooled[name] = (var / df, df)
        (va, da), (vp, dp) = pooled["against"], pooled["probe"]
        p = float(stats.f.sf(va / vp, da, dp))
        print(
            f"{m} over {len(common)} cases: sd {math.sqrt(va):.4f} (df {da:.0f}) vs probe {math.sqrt(vp):.4f} "
            f"(df {dp:.0f}): x{math.sqrt(vp / va):.2f}, one-sided p {p:.3f}"
        )


def pool(paths: list[str], baseline: Path) -> None:
    from scipy import stats

    from medqa_core import baselines, gate
    from medqa_core.profile import load_profile

    g = load_profile("tiny").gate
    cases = copy.deepcopy(baselines.load(baseline)["cases"])
    extra = by_case(runs_of(paths))
    for cid in cases:
        have = {r["seed"] for r in cases[cid]["runs"]}
        again = have & set(extra.get(cid, {}))
        if again:
            raise SystemExit(f"{cid}: seeds {sorted(again)} are in the baseline already; pool other seeds")
        cases[cid]["runs"] = list(cases[cid]["runs"]) + [extra[cid][s] for s in sorted(extra.get(cid, {}))]
    crit = stats.norm.ppf(1 - g.aggregate_alpha) + stats.norm.ppf(gate.POWER)
    k = sorted({len(c["runs"]) for c in cases.values()})
    tol = {**gate.DEFAULT_MIN_EFFECT, **g.metric_tolerance}
    for m in METRICS:
        prior = gate.pooled_variance(cases, m)
        bands = [b for b in (gate.band(cases[c], m, prior) for c in sorted(cases)) if b is not None]
        eff = tol[m] * g.aggregate_min_effect_factor
        suite = [max(eff, crit * math.sqrt(len(bands)) / sum(1 / b.se(r) for b in bands)) for r in (1, 2, 3)]
        print(
            f"{m}: K = {k}, prior s0 {math.sqrt(prior[0]):.4f} (d0 {prior[1]:.1f}); suite MDE R=1 {suite[0]:.4f}, "
            f"R=2 {suite[1]:.4f}, R=3 {suite[2]:.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("items").add_argument("sweeps", nargs="+")
    c = sub.add_parser("compare")
    c.add_argument("--against", nargs="+", required=True)
    c.add_argument("sweeps", nargs="+")
    p = sub.add_parser("pool")
    p.add_argument("sweeps", nargs="+")
    p.add_argument("--baseline", type=Path, default=REPO / "baselines" / "tiny.json")
    args = ap.parse_args(argv)
    if args.cmd == "items":
        items(args.sweeps)
    elif args.cmd == "compare":
        compare(args.against, args.sweeps)
    else:
        pool(args.sweeps, args.baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
