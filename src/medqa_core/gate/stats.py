"""The gate's statistics: Student-t quantiles, the per-run means of a case, the pooled
between-run variance with its prior, the band a difference must leave, paired bootstrap intervals."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..results.record import BaselineCase, BaselineRun, RunRecord

#: bounds of the prior degrees of freedom fitted by :func:`pooled_variance`
MIN_PRIOR_DF = 1.0


MAX_PRIOR_DF = 200.0


POWER = 0.8


def t_quantile(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df)) if math.isfinite(df) else float(stats.norm.ppf(q))


def t_cdf(x: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.cdf(x, df)) if math.isfinite(df) else float(stats.norm.cdf(x))


def run_means(runs: Sequence[RunRecord | BaselineRun], metric: str) -> np.ndarray:
    """One value per run: a metric's mean, or a control margin (``margin:<control>:<metric>``)."""
    return np.asarray([v for r in runs if (v := run_value(r, metric)) is not None], dtype=np.float64)


def run_value(run: RunRecord | BaselineRun, metric: str) -> float | None:
    section = run.get("margins", {}) if metric.startswith("margin:") else run.get("metrics", {})
    return float(section[metric]) if metric in section else None


def margins(run: RunRecord, metrics: tuple[str, ...]) -> dict[str, float]:
    """Tuned minus control mean, per control and metric (``margin:<control>:<metric>``)."""
    return {f"margin:{name}:{m}": round(float(run["metrics"][m]) - float(c["metrics"][m]), 6)
            for name, c in run.get("controls", {}).items() for m in metrics if m in c["metrics"]}


def pooled_variance(baseline_cases: Mapping[str, BaselineCase], metric: str) -> tuple[float, float]:
    """The prior of the between-run variance of ``metric``: ``(s0^2, d0)``, fitted to the K-run
    variances of every case in the baseline file by limma's moment method (Smyth 2004): if
    ``s_c^2 ~ sigma_c^2 chi2_{k}/k`` and ``sigma_c^2 ~ s0^2 d0 / chi2_{d0}``, the log variances have
    mean ``log s0^2 + psi(k/2) - log(k/2) - psi(d0/2) + log(d0/2)`` and variance
    ``psi'(k/2) + psi'(d0/2)``. Cases of similar noise give a large d0 (strong pooling), cases of
    very different noise a small one (each case mostly on its own). (0, 0) = no case has 2 runs."""
    from scipy import optimize, special

    logs, dfs = [], []
    for case in baseline_cases.values():
        y = run_means(case.get("runs", []), metric)
        if y.size >= 2:
            v = float(np.var(y, ddof=1))
            # runs that agree exactly (float rounding aside) carry no information about the scale
            if v > 1e-12 * max(1e-6, float(np.mean(y)) ** 2):
                k = y.size - 1
                logs.append(math.log(v) - special.digamma(k / 2) + math.log(k / 2))
                dfs.append(k)
    if len(logs) < 3:  # too few cases to fit a prior's spread: each case stands on its own runs
        return (float(np.exp(np.mean(logs))) if logs else 0.0), 0.0
    e = np.asarray(logs)
    mean_e = float(e.mean())
    excess = (float(e.var(ddof=1)) if e.size > 1 else 0.0) - float(np.mean([special.polygamma(1, k / 2) for k in dfs]))
    if excess <= 1.0 / MAX_PRIOR_DF:  # as alike as sampling allows: the pool is nearly exact
        d0 = MAX_PRIOR_DF
    else:
        d0 = 2 * float(optimize.brentq(lambda x: special.polygamma(1, x) - excess, 1e-6, 1e6))
        d0 = min(max(d0, MIN_PRIOR_DF), MAX_PRIOR_DF)
    d0 = min(d0, float(sum(dfs)))  # the prior cannot know more than the runs it was fitted to
    s0 = math.exp(mean_e + special.digamma(d0 / 2) - math.log(d0 / 2))
    return s0, d0


@dataclass(frozen=True)
class Band:
    """What the noise model allows for one case and metric."""

    mean: float  # baseline mean over its K runs
    var: float  # moderated between-run variance
    df: float
    k: int

    def se(self, r: int) -> float:
        return math.sqrt(self.var * (1.0 / self.k + 1.0 / max(1, r)))

    def mde(self, r: int, alpha: float, min_effect: float, power: float = POWER) -> float:
        """Smallest drop flagged with probability ``power`` (one-sided level ``alpha``)."""
        return max(min_effect, (t_quantile(1 - alpha, self.df) + t_quantile(power, self.df)) * self.se(r))


def variance_prior(baseline_cases: Mapping[str, BaselineCase], metric: str, gate: Any) -> tuple[float, float]:
    """The stronger of the baseline's own cross-case pool (:func:`pooled_variance`) and the
    profile's measured prior (``[gate] prior_sd`` / ``prior_df``, for a single case that has no
    other case to pool with). Margins keep their own pool: their variance is not the score's."""
    pooled = pooled_variance(baseline_cases, metric)
    sd = (getattr(gate, "prior_sd", None) or {}).get(metric)
    df = float(getattr(gate, "prior_df", 0.0) or 0.0)
    if sd is None or metric.startswith("margin:") or df <= pooled[1]:
        return pooled
    return float(sd) ** 2, df


def band(case: BaselineCase, metric: str, prior: tuple[float, float]) -> Band | None:
    y = run_means(case.get("runs", []), metric)
    if y.size == 0:
        if metric in case.get("metrics", {}) and prior[1] > 0 and not metric.startswith("margin:"):
            return Band(float(case["metrics"][metric]), prior[0], prior[1], 1)
        return None
    s0, d0 = prior
    dc = y.size - 1
    sc = float(np.var(y, ddof=1)) if dc else 0.0
    if d0 + dc == 0:
        return None  # one run and no pool: no noise estimate
    with np.errstate(over="ignore", invalid="ignore"):
        var = (d0 * s0 + dc * sc) / (d0 + dc)
        mean = float(y.mean())
    if not (math.isfinite(mean) and math.isfinite(var)):  # an infinite band would pass any value
        from ..errors import BaselineError

        raise BaselineError(f"baseline case {dict(case).get('case_id', '?')!r}, {metric}: its runs give a non-finite "
                            f"mean or variance ({mean}, {var}); the baseline is corrupt - restore it from git")
    return Band(mean, var, d0 + dc, int(y.size))


def paired_bootstrap_ci(diff: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-example differences and its two-sided percentile bootstrap CI at level 1-alpha."""
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("bootstrap needs a non-empty 1-d array of per-example values")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    mean = float(d.mean())
    return mean, min(float(lo), mean), max(float(hi), mean)
