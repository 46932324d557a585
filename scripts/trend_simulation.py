"""How well does trend.py find shifts? Simulated nightly series, numbers for docs/regression-gating.md.

Series of 30 runs with Gaussian noise (sd 0.005, about the run-to-run spread of a 40-question
score on GPUs); min effect 0.01 (half the tiny tolerance). For each penalty: the share of flat
series with a false shift, of 0.02 steps found at the exact run (and within one run), and of
slow drifts (0.002 per run from run 15 on) reported starting within two runs of 15.

    python scripts/trend_simulation.py [--trials 300]
"""
from __future__ import annotations

import argparse

import numpy as np

from medqa_core.results.trend import regressions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=300)
    args = ap.parse_args()
    n, sd, eff = 30, 0.005, 0.01
    print("| penalty | false shift (flat) | 0.02 step at exact run | within 1 run | drift start within 2 runs |")
    print("|---|---|---|---|---|")
    for pen in (3.0, 6.0, 10.0):
        fp = exact = near = drift = 0
        for s in range(args.trials):
            rng = np.random.default_rng(s)
            fp += bool(regressions(0.45 + rng.normal(0, sd, n), eff, penalty=pen))
            step = np.r_[0.45 + rng.normal(0, sd, 20), 0.43 + rng.normal(0, sd, 10)]
            found = [x.start for x in regressions(step, eff, penalty=pen)]
            exact += 20 in found
            near += any(abs(x - 20) <= 1 for x in found)
            d = np.r_[0.45 + rng.normal(0, sd, 15), 0.45 - 0.002 * np.arange(1, 16) + rng.normal(0, sd, 15)]
            found = [x.start for x in regressions(d, eff, penalty=pen)]
            drift += any(abs(x - 15) <= 2 for x in found)
        t = args.trials
        print(f"| {pen:g} | {fp / t:.1%} | {exact / t:.1%} | {near / t:.1%} | {drift / t:.1%} |")


if __name__ == "__main__":
    main()
