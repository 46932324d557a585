"""Power of the gate before a baseline exists: how many baseline runs (K) and gate runs (R) a
case needs for a given minimum detectable effect (MDE), from a short pilot.

Pure numpy/scipy; no model, no pipeline. ``medqa-bench init`` runs no pilot: it plans from the
model's measured prior sd (``scaffold.power_plan``), prints :meth:`Plan.table` from :func:`plan`
and writes the (K, R) with the fewest seeds in all that reaches ``--mde`` within ``--budget``;
the gate refuses a check that cannot fail (:func:`can_fail`, via ``gate.judge_power``). A short
pilot's noise can be estimated with :func:`pilot_sigma` (or :func:`pooled_sigma` over the
metrics of the same runs); per-test alpha for a case's primary metrics: :func:`alpha_for`.

The test being planned for is the gate's (``gate.judge_noise``): the mean of R new runs against
the mean of K baseline runs, ``t = delta / (s * sqrt(1/K + 1/R))``, one-sided at ``alpha``, where
``s^2`` is the between-run variance estimated with ``df`` degrees of freedom (``K - 1`` from the
baseline runs, plus ``d0`` from a prior). With normal between-run noise, ``t`` under a true drop
``D`` is noncentral t with ``df`` degrees of freedom and noncentrality ``D / (sigma * sqrt(1/K + 1/R))``.
Example::

    >>> p = plan(0.0134, seconds_per_seed=300, target_mde=0.05, budget_seconds=1200, alpha=alpha_for(4))
    >>> p.choice.k, p.choice.r                       # doctest: +SKIP
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .errors import ConfigError

__all__ = ["PilotEstimate", "Plan", "PlanRow", "PooledEstimate", "SINGLE_SEED_DF", "alpha_for", "can_fail",
           "mde", "pilot_sigma", "plan", "pooled_sigma"]

POWER = 0.8
#: the degrees of freedom given to a one-seed (bootstrap) noise estimate. On the recorded
#: baselines (tiny: 20 cases x K=5, small: 5 cases x K=3; BERTScore F1 and USE F1), the ratio of
#: the between-run sd to the one-run bootstrap SE ranges 0.07-2.25 (median ~1); the spread of its
#: log (0.53 tiny, 0.91 small), less what the K-run sd's own sampling explains, is that of a
#: chi-square estimate with about 1-3 df. 1 is the cautious end.
SINGLE_SEED_DF = 1.0


# ---- the minimum detectable effect -------------------------------------------------------------

def _validate(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ConfigError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if not alpha < power < 1.0:
        raise ConfigError(f"power must be in (alpha, 1), got {power!r}")


@lru_cache(maxsize=4096)
def _ncp(alpha: float, power: float, df: float) -> float:
    """The noncentrality at which a one-sided t test at ``alpha`` with ``df`` df rejects with
    probability ``power`` (normal quantiles when df is infinite)."""
    from scipy import optimize, stats

    if not math.isfinite(df):
        return float(stats.norm.ppf(1 - alpha) + stats.norm.ppf(power))
    crit = float(stats.t.ppf(1 - alpha, df))
    hi = max(1.0, 2.0 * (crit + float(stats.t.ppf(power, df))))
    while stats.nct.sf(crit, df, hi) < power:
        hi *= 2.0
    return float(optimize.brentq(lambda n: stats.nct.sf(crit, df, n) - power, 0.0, hi, xtol=1e-10, rtol=1e-12))


def _gate_factor(alpha: float, power: float, df: float) -> float:
    """gate.Band.mde's factor: ``t_df(1 - alpha) + t_df(power)``."""
    from scipy import stats

    if not math.isfinite(df):
        return float(stats.norm.ppf(1 - alpha) + stats.norm.ppf(power))
    return float(stats.t.ppf(1 - alpha, df) + stats.t.ppf(power, df))


def mde(sigma_run: float, K: int, R: int, alpha: float, power: float = POWER, df: float | None = None,
        prior: tuple[float, float] | None = None, *, min_effect: float = 0.0, method: str = "exact") -> float:
    """The smallest true drop that the gate's one-sided t test at ``alpha`` (mean of R new runs
    against the mean of K baseline runs) detects with probability ``power``.

    ``sigma_run`` is the between-run sd, estimated with ``df`` degrees of freedom (default
    ``K - 1``: the baseline's runs; ``math.inf`` = known). With ``prior = (s0^2, d0)`` the variance
    is moderated as in ``gate.band``: ``s^2 = (d0 s0^2 + df sigma_run^2) / (d0 + df)`` with
    ``d0 + df`` df (pass ``df=0`` when the prior already holds these runs, as :func:`pooled_sigma`
    does). Result: ``max(min_effect, c * s * sqrt(1/K + 1/R))``; ``inf`` when there is no noise
    estimate (no df).

    ``method="exact"`` (default): ``c`` is the noncentrality at which a noncentral t with ``df``
    df exceeds ``t_df(1 - alpha)`` with probability ``power``: the exact power of the t test under
    normal noise (checked by simulation in tests/unit/test_power.py).
    ``method="gate"``: ``c = t_df(1 - alpha) + t_df(power)``, the formula the gate prints
    (``Band.mde``). **It differs at small df**: that approximation treats the estimated se as
    if it were known on the alternative side, and its real power at alpha 0.0005 is 0.66 (df 2),
    0.69 (df 4), 0.76 (df 10), 0.79 (df 30); the exact MDE is 23%, 12%, 4%, 1% larger. With K=3-5
    and no prior the gate's printed MDE is optimistic; this module plans with the exact one.
    """
    _validate(alpha, power)
    if K < 1 or R < 1:
        raise ConfigError(f"K and R must be at least 1, got K={K}, R={R}")
    if sigma_run < 0 or not math.isfinite(sigma_run):
        raise ConfigError(f"sigma_run must be a finite sd >= 0, got {sigma_run!r}")
    d = float(K - 1) if df is None else float(df)
    var = float(sigma_run) ** 2
    if prior is not None and prior[1] > 0:
        s0_sq, d0 = float(prior[0]), float(prior[1])
        if math.isfinite(d):  # a known sd (df inf) outweighs any prior
            var = (d0 * s0_sq + d * var) / (d0 + d)
        d = d0 + d
    if d <= 0:
        return math.inf
    if method == "exact":
        c = _ncp(float(alpha), float(power), d)
    elif method == "gate":
        c = _gate_factor(float(alpha), float(power), d)
    else:
        raise ConfigError(f"method must be 'exact' or 'gate', got {method!r}")
    return max(float(min_effect), c * math.sqrt(var * (1.0 / K + 1.0 / R)))


# ---- the pilot ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PilotEstimate:
    """Between-run sd of a case's mean score from a pilot, and how much it is worth."""

    sigma: float
    df: float
    n_seeds: int
    method: str  # "seeds" (sd of the seeds' means) | "bootstrap" (one seed, question resampling)
    means: tuple[float, ...]
    bootstrap_se: float | None = None  # question-sampling SE of one run's mean (per-question scores given)
    note: str = ""


def _bootstrap_se(per_question: np.ndarray, n_boot: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_question.size, size=(n_boot, per_question.size))
    return float(per_question[idx].mean(axis=1).std(ddof=1))


def pilot_sigma(per_seed_scores: Sequence[float] | Sequence[Sequence[float]], n_boot: int = 2000,
                seed: int = 0) -> PilotEstimate:
    """Estimate the between-run sd of a case's mean score from a short pilot.

    ``per_seed_scores``: one entry per training seed, each either the run's mean score or its
    per-question scores (all on the same, fixed test set).

    * **2+ seeds**: the sample sd of the seeds' means, with ``n - 1`` df. This is the noise the
      gate faces (training randomness on a fixed test set) and the estimate to plan with.
    * **1 seed** (per-question scores needed): the bootstrap SE of the run's mean over the test
      questions, with :data:`SINGLE_SEED_DF` df. This is a *proxy*, and it is **not a lower bound**
      on the between-run sd, contrary to intuition: it measures which questions were drawn,
      while the gate's noise is what another seed does on the same questions. It misses
      training noise that moves every question together (which makes the true sd larger) and
      it includes question-to-question spread that cancels between runs on a fixed test set
      (which makes it larger than the true sd). On the recorded baselines the true sd was
      0.07x-2.25x this proxy (median ~1). Plan with it only to size a second pilot seed.
    """
    entries = list(per_seed_scores)
    if not entries:
        raise ConfigError("pilot_sigma needs the scores of at least one seed")
    arrays = [np.atleast_1d(np.asarray(e, dtype=np.float64)) for e in entries]
    if any(a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) for a in arrays):
        raise ConfigError("pilot_sigma: each seed's scores must be a finite number or a non-empty 1-d list of numbers")
    means = tuple(float(a.mean()) for a in arrays)
    per_question = arrays[0] if arrays[0].size > 1 else None
    boot = None
    if per_question is not None:
        boot = float(np.mean([_bootstrap_se(a, n_boot, seed + i) for i, a in enumerate(arrays) if a.size > 1]))
    if len(arrays) >= 2:
        sigma = float(np.std(means, ddof=1))
        note = ("the seeds' means agree exactly: a deterministic setup (record K=1 and a tight tolerance)"
                if sigma == 0.0 else "")
        return PilotEstimate(sigma, float(len(arrays) - 1), len(arrays), "seeds", means, boot, note)
    if per_question is None:
        raise ConfigError("pilot_sigma: one seed given as a single mean; give its per-question scores "
                          "(for a bootstrap proxy) or run a second seed")
    return PilotEstimate(boot or 0.0, SINGLE_SEED_DF, 1, "bootstrap", means, boot,
                         "one seed: question-bootstrap proxy, not a bound on the between-run sd; run a second seed")


@dataclass(frozen=True)
class PooledEstimate:
    """A variance prior from several metrics measured on the same runs of one case.

    ``s0_sq`` on the metrics' own scale (``scale="absolute"``) or as a squared coefficient of
    variation (``"relative"``); use :meth:`prior` for one metric's ``(s0^2, d0)``."""

    s0_sq: float
    d0: float
    n_seeds: int
    m_eff: float
    m_eff_estimated: float | None
    scale: str
    sd: dict[str, float] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)

    def sigma(self, metric: str | None = None) -> float:
        if self.scale == "relative":
            if metric is None:
                raise ConfigError("a relative pooled estimate needs the metric whose sd is wanted")
            return math.sqrt(self.s0_sq) * abs(self.mean[metric])
        return math.sqrt(self.s0_sq)

    def prior(self, metric: str | None = None) -> tuple[float, float]:
        """``(s0^2, d0)`` for :func:`mde` (``df=0``: the pool already holds this metric's runs)."""
        return self.sigma(metric) ** 2, self.d0


def _participation_ratio(values: np.ndarray) -> float | None:
    """Effective number of independent metrics: ``(sum l)^2 / sum l^2`` over the eigenvalues of
    the metrics' correlation matrix across runs; None when it cannot be estimated."""
    if values.shape[0] < 3 or values.shape[1] < 2:
        return None
    sd = values.std(axis=0, ddof=1)
    if np.any(sd == 0):
        return None
    ev = np.clip(np.linalg.eigvalsh(np.corrcoef(values.T)), 0.0, None)
    return float(ev.sum() ** 2 / (ev ** 2).sum())


def pooled_sigma(per_metric: Mapping[str, Sequence[float]], scale: str = "absolute",
                 m_eff: float | str = 1.0) -> PooledEstimate:
    """A between-run variance prior for a single case, pooled over metrics of the same runs
    (``per_metric``: metric -> one mean per seed, same seeds in the same order).

    **Scale.** ``"absolute"`` (default) averages the metrics' variances as they are; use it for
    scores on one scale (the seven similarity scores, all in [0, 1]). ``"relative"`` averages
    ``var / mean^2`` (squared CV); use it only to mix units (``answer_words``). Measured on the
    recorded baselines, the seven scores' sds within a case agree better in absolute terms than
    relative ones (sd of log sd across the metrics: 0.23 absolute vs 0.27 relative on tiny,
    0.36 vs 0.43 on small): the noise is the adapter's, not a fixed share of each score.

    **Degrees of freedom.** Metrics of the same runs are not independent estimates: BERTScore
    P/R/F1, USE P/R/F1 and cosine move together (the effective number of independent metrics,
    the participation ratio of their correlation matrix, was median 1.3 over tiny's 20 cases,
    K = 5, and that small-sample estimate is biased upwards). So ``d0 = (n - 1) * m_eff`` with
    ``m_eff = 1`` by default: pooling steadies the point estimate but buys almost no df.
    ``m_eff="estimate"`` uses the participation ratio (3+ seeds); a float sets it. The prior
    that does buy df for one case is a measured one shipped per model family (many cases and
    seeds; ``gate.pooled_variance`` over the family's recorded cases).
    """
    if scale not in ("absolute", "relative"):
        raise ConfigError(f"scale must be 'absolute' or 'relative', got {scale!r}")
    names = list(per_metric)
    if not names:
        raise ConfigError("pooled_sigma needs at least one metric")
    cols = [np.asarray(per_metric[m], dtype=np.float64) for m in names]
    n = {c.size for c in cols}
    if len(n) != 1 or cols[0].ndim != 1 or cols[0].size < 2:
        raise ConfigError("pooled_sigma: every metric needs one mean per seed, the same 2+ seeds for all")
    values = np.stack(cols, axis=1)  # runs x metrics
    means = values.mean(axis=0)
    var = values.var(axis=0, ddof=1)
    if scale == "relative":
        if np.any(means == 0):
            raise ConfigError("pooled_sigma: a relative (CV) pool needs metrics with a non-zero mean")
        var = var / means ** 2
    est = _participation_ratio(values)
    if m_eff == "estimate":
        m = est if est is not None else 1.0
    elif isinstance(m_eff, (int, float)) and 1.0 <= m_eff <= len(names):
        m = float(m_eff)
    else:
        raise ConfigError(f"m_eff must be 'estimate' or a number in [1, {len(names)}], got {m_eff!r}")
    k = values.shape[0]
    return PooledEstimate(float(var.mean()), (k - 1) * m, k, m, est, scale,
                          {nm: float(s) for nm, s in zip(names, values.std(axis=0, ddof=1))},
                          {nm: float(mu) for nm, mu in zip(names, means)})


# ---- choosing K and R ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanRow:
    k: int
    r: int
    df: float
    mde: float
    baseline_seconds: float  # K seeds, once (recording the baseline)
    gate_seconds: float  # R seeds, every gate run
    within_budget: bool
    reaches: bool  # mde <= target


@dataclass(frozen=True)
class Plan:
    sigma: float
    seconds_per_seed: float
    target_mde: float
    budget_seconds: float
    alpha: float
    power: float
    rows: tuple[PlanRow, ...]
    choice: PlanRow | None  # cheapest reaching the target within budget; None if none does
    best: PlanRow | None  # smallest MDE within budget (== choice's peer when infeasible)
    reason: str

    @property
    def feasible(self) -> bool:
        return self.choice is not None

    def row(self, k: int, r: int) -> PlanRow:
        return next(x for x in self.rows if x.k == k and x.r == r)

    def table(self) -> list[str]:
        """What ``init`` prints: the MDE of every (K, R), K down and R across; ``*`` marks the
        choice, ``!`` a gate run beyond the budget; then the one-line reason."""
        ks = sorted({x.k for x in self.rows})
        rs = sorted({x.r for x in self.rows})
        lines = [f"between-run sd {self.sigma:.4f}, {self.seconds_per_seed:.0f} s per seed, alpha {self.alpha:g}, "
                 f"power {self.power:g}: MDE per K baseline runs (rows) x R gate runs (columns)",
                 "  K  baseline s " + "".join(f"{f'R={r} ' + ('!' if self.row(ks[0], r).gate_seconds > self.budget_seconds else ' '):>10}"
                                              for r in rs)]
        for k in ks:
            cells = []
            for r in rs:
                x = self.row(k, r)
                cells.append(f"{x.mde:9.4f}{'*' if x == self.choice else ' '}" if math.isfinite(x.mde) else f"{'-':>9} ")
            lines.append(f"{k:3d}  {k * self.seconds_per_seed:10.0f} " + "".join(cells))
        lines.append(self.reason)
        return lines


def plan(sigma: float, seconds_per_seed: float, target_mde: float, budget_seconds: float, alpha: float,
         k_max: int = 10, r_max: int = 5, *, power: float = POWER, prior_df: float = 0.0, m_eff: float = 1.0,
         baseline_budget_seconds: float | None = None, min_effect: float = 0.0, cheapest: str = "gate") -> Plan:
    """Every (K, R) with 1 <= K <= k_max, 1 <= R <= r_max: its MDE (:func:`mde`, exact, at the
    between-run sd ``sigma``, df ``(K - 1) * m_eff + prior_df``), the baseline's cost (K seeds,
    once) and a gate run's cost (R seeds). The choice is the cheapest gate run (fewest R, then
    fewest K) whose MDE reaches ``target_mde`` with ``R * seconds_per_seed <= budget_seconds``
    (and ``K * seconds_per_seed <= baseline_budget_seconds`` when given). When none does,
    ``choice`` is None, ``best`` the smallest MDE within budget, and ``reason`` says why, in one line.
    MDE falls as K or R grows (more runs, more df), so the grid's corner is the best it can do.
    ``cheapest="total"`` instead picks the fewest seeds of baseline and gate run together (then
    fewer R, then the smaller MDE), within ``budget_seconds`` for both: the plan of a first
    session (record, then gate once) that must fit one sitting."""
    if cheapest not in ("gate", "total"):
        raise ConfigError(f"cheapest must be 'gate' or 'total', got {cheapest!r}")
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ConfigError(f"sigma must be a finite sd >= 0, got {sigma!r}")
    if not seconds_per_seed > 0:
        raise ConfigError(f"seconds per seed must be > 0, got {seconds_per_seed!r}")
    if not target_mde > 0:
        raise ConfigError(f"--mde must be > 0, got {target_mde!r}")
    if not budget_seconds > 0:
        raise ConfigError(f"--budget must be > 0 seconds, got {budget_seconds!r}")
    if k_max < 1 or r_max < 1:
        raise ConfigError(f"k_max and r_max must be >= 1, got {k_max}, {r_max}")
    _validate(alpha, power)
    base_budget = math.inf if baseline_budget_seconds is None else baseline_budget_seconds
    rows = []
    for k in range(1, k_max + 1):
        df = (k - 1) * m_eff + prior_df
        for r in range(1, r_max + 1):
            m = mde(sigma, k, r, alpha, power, df=df, min_effect=min_effect)
            spent = (k + r if cheapest == "total" else r) * seconds_per_seed
            within = spent <= budget_seconds and k * seconds_per_seed <= base_budget
            rows.append(PlanRow(k, r, df, m, k * seconds_per_seed, r * seconds_per_seed, within, m <= target_mde))
    ok = [row for row in rows if row.within_budget and row.reaches]
    in_budget = [row for row in rows if row.within_budget and math.isfinite(row.mde)]
    best = min(in_budget, key=lambda row: (row.mde, row.gate_seconds, row.baseline_seconds), default=None)
    order = ((lambda row: (row.k + row.r, row.r, row.mde)) if cheapest == "total"
             else (lambda row: (row.gate_seconds, row.baseline_seconds, row.mde)))
    choice = min(ok, key=order, default=None)
    if choice is not None:
        reason = (f"K={choice.k}, R={choice.r}: MDE {choice.mde:.4f} <= target {target_mde:g}; "
                  f"{choice.gate_seconds:.0f} s per gate run, {choice.baseline_seconds:.0f} s to record the baseline")
    else:
        anywhere = min((row for row in rows if row.reaches), key=lambda row: (row.gate_seconds, row.baseline_seconds),
                       default=None)
        if best is None:
            if seconds_per_seed > min(budget_seconds, base_budget):
                why = f"one seed takes {seconds_per_seed:.0f} s, beyond the budget"
            else:
                why = "no noise estimate within it (K=1 and no variance prior)"
            reason = f"target MDE {target_mde:g} not reachable: {why}"
        elif anywhere is not None:
            reason = (f"target MDE {target_mde:g} not reachable within the budget: best there MDE {best.mde:.4f} "
                      f"(K={best.k}, R={best.r}); K={anywhere.k}, R={anywhere.r} reaches it at "
                      f"{anywhere.gate_seconds:.0f} s per gate run, {anywhere.baseline_seconds:.0f} s per baseline")
        else:
            reason = (f"target MDE {target_mde:g} not reachable with K <= {k_max}, R <= {r_max}: best MDE "
                      f"{best.mde:.4f} (K={best.k}, R={best.r}); reduce the noise (longer training, a larger "
                      f"test set), use fewer tests (higher alpha) or a larger target")
    return Plan(float(sigma), float(seconds_per_seed), float(target_mde), float(budget_seconds), float(alpha),
                float(power), tuple(rows), choice, best, reason)


# ---- refusing a check that cannot fail, and the per-test alpha ---------------------------------

def can_fail(metric_value: float, threshold: float, lo: float | None = 0.0, hi: float | None = 1.0,
             mde: float | None = None, *, higher_is_better: bool = True, name: str = "check") -> str:
    """'' when the check can fail, else one line saying why not.

    ``metric_value``: the baseline's score; ``threshold``: the value a run must fall below to
    fail (``baseline - band``; above, for ``higher_is_better=False``); ``lo``/``hi``: the
    metric's range (None = unbounded); ``mde``: the check's minimum detectable effect.
    Refused: a non-finite threshold or MDE (no noise estimate); a threshold at or beyond the end
    of the range (no score can cross it); an MDE at or beyond the distance from the score to that
    end (for a score in [0, 1] with a drop failing: MDE >= the score itself), so even a drop to
    the floor would be missed more often than 1 - power.
    """
    if not math.isfinite(metric_value):
        return f"{name}: baseline score {metric_value!r} is not a number"
    if not math.isfinite(threshold) or (mde is not None and not math.isfinite(mde)):
        return f"{name}: no noise estimate (infinite band): record 2+ baseline runs or give a variance prior"
    if higher_is_better:
        end, side, word, move = lo, "below", "fall below", "drop"
        room = None if lo is None else metric_value - lo
        beyond = lo is not None and threshold <= lo
    else:
        end, side, word, move = hi, "above", "rise above", "rise"
        room = None if hi is None else hi - metric_value
        beyond = hi is not None and threshold >= hi
    if beyond:
        return (f"{name}: threshold {threshold:.4f} is at or {side} the metric's range [{_g(lo, '-inf')}, {_g(hi)}]: "
                f"no score can {word} it, so this check cannot fail")
    if mde is not None and room is not None and mde >= room:
        return (f"{name}: MDE {mde:.4f} >= the score's distance to {_g(end)} ({room:.4f}): even a {move} to "
                f"{_g(end)} would usually pass; add runs (K, R), a variance prior or fewer tests")
    return ""


def _g(x: float | None, missing: str = "inf") -> str:
    return missing if x is None else f"{x:g}"


def alpha_for(n_tests: int, case_alpha: float = 0.01) -> float:
    """Bonferroni per-test alpha: ``case_alpha / n_tests`` keeps the chance that any of a case's
    ``n_tests`` one-sided tests false-alarms at or below ``case_alpha``. Count each direction
    that fails as a test: 2 primary metrics (bert_f1, use_f1) judged both ways = 4 tests ->
    0.0025 at case_alpha 0.01 (the tiny profile's 22 tests give 0.00045, set as 0.0005)."""
    if not isinstance(n_tests, int) or n_tests < 1:
        raise ConfigError(f"n_tests must be a whole number >= 1, got {n_tests!r}")
    if not 0.0 < case_alpha < 1.0:
        raise ConfigError(f"case_alpha must be in (0, 1), got {case_alpha!r}")
    return case_alpha / n_tests
