"""Family (per model) and suite verdicts over the judged cases of a run, per gated metric."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics.registry import DEFAULT_MIN_EFFECT, GATED
from .checks import Check, _higher_is_better, is_one_sided
from .stats import POWER, t_cdf


@dataclass
class Aggregate:
    scope: str  # "suite" or "family <model>"
    metric: str
    n: int
    mean_delta: float
    z: float
    mde: float
    passed: bool
    direction: str

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        return (f"  [{mark}] {self.scope} {self.metric}: mean delta {self.mean_delta:+.4f} over {self.n} case(s), "
                f"Stouffer z={self.z:+.2f}, MDE {self.mde:.4f}")


def aggregate(scope: str, metric: str, checks: list[Check], alpha: float, min_effect: float, one_sided: bool,
              higher_is_better: bool | None = None) -> Aggregate | None:
    """Stouffer's combination of the cases' t statistics (each turned into a normal z through its
    own t distribution). It fails (``passed`` False) on a move beyond ``z(1 - alpha)`` *and*
    ``min_effect`` either way: the worse way always, the better way (a score up, looping answers down) unless
    ``one_sided``, as a case's ``changed``. Which way is worse: ``higher_is_better``, None = the
    registry's for ``metric``. MDE: the uniform drop ``d`` that gives
    ``Z = z_alpha + z_power``: ``d = (z_{1-alpha} + z_power) * sqrt(N) / sum(1 / se_i)``."""
    from scipy import stats

    hib = _higher_is_better(metric) if higher_is_better is None else higher_is_better

    # (t, df, se, delta) of each usable check: t known and finite, se known and nonzero
    usable = [(c.t, c.df or math.inf, c.se, c.delta) for c in checks
              if c.kind == "noise" and c.t is not None and c.se and math.isfinite(c.t)]
    if not usable:
        return None
    zs = [float(stats.norm.ppf(np.clip(t_cdf(t, df), 1e-15, 1 - 1e-15))) for t, df, _, _ in usable]
    n = len(usable)
    z = sum(zs) / math.sqrt(n)
    mean_delta = float(np.mean([delta for _, _, _, delta in usable]))
    crit = float(stats.norm.ppf(1 - alpha))
    mde = max(min_effect, (crit + float(stats.norm.ppf(POWER))) * math.sqrt(n) / sum(1.0 / se for _, _, se, _ in usable))
    down = z < -crit and mean_delta < -min_effect
    up = z > crit and mean_delta > min_effect
    worse, better = (down, up) if hib else (up, down)
    return Aggregate(scope, metric, n, mean_delta, z, mde, not worse and not (better and not one_sided),
                     "down" if down else ("up" if up else ""))


def aggregates(records: Sequence[Mapping[str, Any]], gate: Any) -> list[Aggregate]:
    """Family (per model) and suite verdicts per gated metric over the judged cases of a run;
    each fails on a move the worse way (a score down, looping answers up) and, unless the metric
    is one-sided (:func:`is_one_sided`), on a move the better way (:func:`aggregate`)."""
    by_metric: dict[str, list[tuple[str, Check]]] = {}
    for rec in records:
        for c in (rec.get("verdict") or {}).get("checks", []):
            if c.get("kind") == "noise" and c.get("t") is not None:
                by_metric.setdefault(c["name"], []).append((rec["model"], Check(**{**c, "ci": None})))
    tol = {**DEFAULT_MIN_EFFECT, **gate.metric_tolerance}
    out: list[Aggregate] = []
    for m in GATED:
        items = by_metric.get(m, [])
        if not items:
            continue
        eff = tol[m] * gate.aggregate_min_effect_factor
        one = is_one_sided(m, gate)
        hib = _higher_is_better(m)
        families = sorted({fam for fam, _ in items})
        for fam in families:
            a = aggregate(f"family {fam}", m, [c for f, c in items if f == fam], gate.aggregate_alpha, eff, one, hib)
            if a is not None and a.n > 1:
                out.append(a)
        a = aggregate("suite", m, [c for _, c in items], gate.aggregate_alpha, eff, one, hib)
        if a is not None and a.n > 1 and len(families) > 1:
            out.append(a)
    return out
