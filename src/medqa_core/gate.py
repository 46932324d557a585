"""The gate: a noise model that includes training randomness, verdicts, controls, MDE.

Why not the paired bootstrap alone: it resamples test questions, so it says whether *this*
adapter scores lower than *the baseline's* adapter on these questions. Another seed, another
CPU's rounding or GPU nondeterminism gives another adapter, and its scores differ by far more
than question sampling explains (docs/regression-gating.md). The test set is fixed (its ids
are an exact invariant), so the noise that separates a run from its baseline is the
between-run spread of a case's mean score, which the baseline measures by recording K
independent training runs (seeds).

The test per case and metric (a moderated two-sample t-test, as in limma):

* baseline: K run means ``y_1..y_K`` (mean ``ybar``, variance ``s_c^2`` with ``K-1`` df);
* prior: a scaled inverse chi-square fitted to the K-run variances of that metric over every
  case of the baseline file (``s_0^2`` with ``d_0`` degrees of freedom, limma's moment method,
  :func:`pooled_variance`); the case's variance is shrunk towards it:
  ``s^2 = (d_0 s_0^2 + (K-1) s_c^2) / (d_0 + K - 1)``, with ``d_0 + K - 1`` df. Shrinkage keeps a
  case whose K runs happened to agree from getting a tiny band, and d_0 is small when the cases'
  noise levels really differ, so a noisy case keeps its own wide band;
* this run: the mean of its R run means (``R = --seeds``, default 1);
* ``delta = xbar - ybar``, ``se = s * sqrt(1/K + 1/R)``, ``t = delta / se``.

A drop is a ``regression`` when ``delta < -min_effect`` **and** ``t < -t_{df}(1 - alpha)``; a
rise beyond the same band is ``changed`` (fails until the baseline is re-recorded on purpose),
unless the profile lists the metric in ``[gate] one_sided``. The minimum detectable effect (80%
power) is ``max(min_effect, (t_{1-alpha} + t_{0.8}) * se)``.

Aggregates (family = one model's cases, suite = every case of the run) combine the cases'
one-sided p-values with Stouffer's method, ``Z = sum(z_i) / sqrt(N)``, and flag a drop when
``Z < -z(1 - alpha_aggregate)`` and the mean delta exceeds the aggregate minimum effect. A code
change that hurts training hurts every case a little; this sees it when no single case can.

Controls (does the task need the fine-tuned adapter and the question?): per question, the
tuned answer's score minus the control's (base model; tuned adapter with the question removed;
tuned answers against shuffled references). The tuned model must beat each control: the
one-sided paired bootstrap bound at ``control_alpha`` must exclude zero.

Exact invariants (no statistics): optimizer steps, training rows and their digest, tokens seen
(same seed only), trainable parameters (and the closed-form LoRA count), test ids, generation
settings, prompt digest, scorer fingerprint and canary scores. Any mismatch fails with both values.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .metrics import METRICS
from .metrics.registry import DEFAULT_MIN_EFFECT, GATED

__all__ = ["DEFAULT_MIN_EFFECT", "GATED", "METRICS"]  # names and effects live in metrics.registry
#: bounds of the prior degrees of freedom fitted by :func:`pooled_variance`
MIN_PRIOR_DF = 1.0
MAX_PRIOR_DF = 200.0
POWER = 0.8
#: the statuses that fail a case (the others: incomparable, no-baseline, improvement, pass)
FAILING = ("error", "regression", "changed")


@dataclass
class Check:
    """One judged quantity. ``passed`` False fails the case; ``kind`` says which rule judged it."""

    name: str
    value: Any
    baseline: Any
    passed: bool
    kind: str  # noise | invariant | control | time | memory | aggregate
    detail: str = ""
    limit: float | None = None
    delta: float | None = None
    se: float | None = None
    t: float | None = None
    df: float | None = None
    p: float | None = None  # one-sided p-value of the observed direction
    mde: float | None = None
    direction: str = ""  # down | up | ""
    ci: tuple[float, float] | None = None

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        if self.kind == "invariant":
            return f"  [{mark}] {self.name}: {_short(self.value)} vs baseline {_short(self.baseline)} {self.detail}".rstrip()
        v = f"{self.value:.4f}" if isinstance(self.value, (int, float)) else str(self.value)
        b = f"{self.baseline:.4f}" if isinstance(self.baseline, (int, float)) else str(self.baseline)
        return f"  [{mark}] {self.name}: {v} vs {b} {self.detail}".rstrip()


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


@dataclass
class Verdict:
    case_id: str
    status: str
    checks: list[Check] = field(default_factory=list)
    note: str = ""

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def explain(self) -> str:
        head = f"{self.case_id}: {self.status}" + (f" ({self.note})" if self.note else "")
        shown = self.failures or [c for c in self.checks if c.kind in ("noise", "control")]
        return "\n".join([head, *(c.line() for c in shown)])

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "note": self.note, "explain": self.explain(),
                "checks": [asdict(c) for c in self.checks]}


# ---- statistics ---------------------------------------------------------------------------

def t_quantile(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df)) if math.isfinite(df) else float(stats.norm.ppf(q))


def t_cdf(x: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.cdf(x, df)) if math.isfinite(df) else float(stats.norm.cdf(x))


def run_means(runs: list[dict[str, Any]], metric: str) -> np.ndarray:
    """One value per run: a metric's mean, or a control margin (``margin:<control>:<metric>``)."""
    return np.asarray([v for r in runs if (v := run_value(r, metric)) is not None], dtype=np.float64)


def run_value(run: dict[str, Any], metric: str) -> float | None:
    section = run.get("margins" if metric.startswith("margin:") else "metrics", {})
    return float(section[metric]) if metric in section else None


def margins(run: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, float]:
    """Tuned minus control mean, per control and metric (``margin:<control>:<metric>``)."""
    return {f"margin:{name}:{m}": round(float(run["metrics"][m]) - float(c["metrics"][m]), 6)
            for name, c in run.get("controls", {}).items() for m in metrics if m in c["metrics"]}


def pooled_variance(baseline_cases: dict[str, Any], metric: str) -> tuple[float, float]:
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


def band(case: dict[str, Any], metric: str, prior: tuple[float, float]) -> Band | None:
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
    var = (d0 * s0 + dc * sc) / (d0 + dc)
    return Band(float(y.mean()), var, d0 + dc, int(y.size))


def judge_noise(name: str, values: list[float], b: Band, alpha: float, min_effect: float, one_sided: bool) -> Check:
    r = len(values)
    x = float(np.mean(values))
    delta = x - b.mean
    se = b.se(r)
    crit = t_quantile(1 - alpha, b.df)
    # a zero-width band (every run identical, no prior): any move is beyond it; t stays finite for JSON
    t = delta / se if se > 0 else (math.copysign(1e12, delta) if delta else 0.0)
    p = 1 - t_cdf(abs(t), b.df)
    down = delta < -min_effect and t < -crit
    up = delta > min_effect and t > crit
    mde = b.mde(r, alpha, min_effect)
    band_w = max(min_effect, crit * se)
    detail = (f"delta {delta:+.4f}, band +/-{band_w:.4f} (t={t:+.2f}, df={b.df:.0f}, K={b.k}, R={r}), "
              f"min effect {min_effect:g}, MDE {mde:.4f}")
    passed = not down and not (up and not one_sided)
    direction = "down" if down else ("up" if up else "")
    return Check(name, x, b.mean, passed, "noise", detail, b.mean - band_w, delta, se, t, b.df, p, mde, direction)


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


def judge_control(metric: str, control: str, tuned: list[float], other: list[float], alpha: float) -> Check:
    """The tuned model must beat ``control`` on ``metric``: the one-sided (1-alpha) bootstrap
    lower bound of the mean per-question margin must be above zero."""
    d = np.asarray(tuned, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    mean, lo, hi = paired_bootstrap_ci(d, alpha=2 * alpha)
    ok = lo > 0
    detail = (f"margin {mean:+.4f}, one-sided {100 * (1 - alpha):g}% bound {lo:+.4f}"
              + ("" if ok else f": the fine-tuned model does not beat the {control} control"))
    return Check(f"beats_{control}:{metric}", float(np.mean(tuned)), float(np.mean(other)), ok, "control", detail,
                 delta=mean, ci=(lo, hi))


INVARIANT_ORDER = ("test_ids", "train_rows", "train_rows_digest", "train_test_overlap", "train_steps", "tokens_seen",
                   "trainable_params", "generation", "prompt_digest", "scorer", "scorer_canary")


def judge_invariants(current: dict[str, Any], baseline: dict[str, Any], same_seed: bool) -> list[Check]:
    """Exact comparisons; ``tokens_seen`` depends on the batch order, so only for the same seed.
    ``scorer_canary`` values compare to 1e-4 (another CPU's float rounding)."""
    out: list[Check] = []
    for key in INVARIANT_ORDER:
        if key not in current:
            continue
        cur = current[key]
        if key == "train_test_overlap":
            out.append(Check(key, cur, 0, cur == 0, "invariant", "(test rows seen in training)" if cur else ""))
            continue
        if key == "trainable_params" and current.get("lora_closed_form") is not None:
            cf = current["lora_closed_form"]
            out.append(Check("trainable_params_closed_form", cur, cf, cur == cf, "invariant",
                             "" if cur == cf else "(LoRA parameters differ from r x (in + out) over the targets)"))
        if key not in baseline or (key == "tokens_seen" and not same_seed):
            continue
        base = baseline[key]
        if key == "scorer_canary":
            ok = set(cur) == set(base) and all(abs(float(cur[k]) - float(base[k])) <= 1e-4 for k in cur)
        else:
            ok = cur == base
        out.append(Check(key, cur, base, ok, "invariant", "" if ok else "(must be identical)"))
    return out


def judge_ratio(name: str, value: float, baseline: float, factor: float, slack: float, kind: str, unit: str = "") -> Check:
    limit = max(baseline * factor, baseline + slack)
    why = f"(limit {limit:.3g}{unit}: x{factor:g}" + (f" or +{slack:g}" if slack else "") + ")"
    return Check(name, value, baseline, value <= limit, kind, why, limit=limit)


def status_of(checks: list[Check]) -> str:
    bad = [c for c in checks if not c.passed]
    if any(c.kind in ("noise",) and c.direction == "down" or c.kind in ("control", "time", "memory") for c in bad):
        return "regression"
    if bad:
        return "changed"
    if any(c.kind == "noise" and c.direction == "up" for c in checks):
        return "improvement"  # a rise on a metric the profile marks one-sided
    return "pass"


# ---- aggregates -----------------------------------------------------------------------------

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


def aggregate(scope: str, metric: str, checks: list[Check], alpha: float, min_effect: float, one_sided: bool) -> Aggregate | None:
    """Stouffer's combination of the cases' t statistics (each turned into a normal z through its
    own t distribution). MDE: the uniform drop ``d`` that gives ``Z = z_alpha + z_power``:
    ``d = (z_{1-alpha} + z_power) * sqrt(N) / sum(1 / se_i)``."""
    from scipy import stats

    usable = [c for c in checks if c.kind == "noise" and c.t is not None and c.se and math.isfinite(c.t)]
    if not usable:
        return None
    zs = [float(stats.norm.ppf(np.clip(t_cdf(c.t, c.df or math.inf), 1e-15, 1 - 1e-15))) for c in usable]
    n = len(usable)
    z = sum(zs) / math.sqrt(n)
    mean_delta = float(np.mean([c.delta for c in usable]))
    crit = float(stats.norm.ppf(1 - alpha))
    mde = max(min_effect, (crit + float(stats.norm.ppf(POWER))) * math.sqrt(n) / sum(1.0 / c.se for c in usable))
    down = z < -crit and mean_delta < -min_effect
    up = z > crit and mean_delta > min_effect
    return Aggregate(scope, metric, n, mean_delta, z, mde, not down and not (up and not one_sided),
                     "down" if down else ("up" if up else ""))


# ---- one case ---------------------------------------------------------------------------------

#: what a baseline must share with a run to be compared at all (the recipe may differ: that is
#: what the gate judges)
IDENTITY_KEYS = {"data": "data (fingerprint of the cleaned rows)", "test_ids": "test set", "scorer": "scorer"}
#: compared like IDENTITY_KEYS where both sides have it, but no part of a trend series' inputs:
#: the scorer's models and settings without library versions, all a published baseline
#: (paper.json) can record; ``scorer`` (with versions) already covers it for recorded ones
SPEC_IDENTITY_KEYS = {"scorer_spec": "scorer (models and settings, metrics.spec)"}


def identity_mismatch(current: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """One line naming what differs between a run and its baseline's identity ('' = comparable)."""
    if not baseline:
        return ""
    diffs = [f"{label} {baseline[k]!s:.24} -> {current[k]!s:.24}" for k, label in {**IDENTITY_KEYS, **SPEC_IDENTITY_KEYS}.items()
             if k in baseline and k in current and baseline[k] != current[k]]
    return "; ".join(diffs)


def judge_case(case_id: str, runs: list[dict[str, Any]], baseline_case: dict[str, Any] | None,
               baseline_cases: dict[str, Any], gate: Any, identity: dict[str, Any],
               resources_baseline: dict[str, Any] | None = None) -> Verdict:
    """Judge the R runs of one case (records of :func:`pipeline.run_case`) against its baseline.

    Controls are judged on every run even without a baseline; everything else needs one.
    """
    checks: list[Check] = []
    for run in runs:
        for name in gate.require_controls:
            ctrl = run.get("controls", {}).get(name)
            if ctrl is None:
                continue
            for m in gate.require_beats_base:
                c = judge_control(m, name, run["per_example"][m], ctrl["per_example"][m], gate.control_alpha)
                if len(runs) > 1:
                    c.name += f"@seed{run['seed']}"
                checks.append(c)
    if baseline_case is None:
        failed = [c for c in checks if not c.passed]
        return Verdict(case_id, "regression" if failed else "no-baseline", checks)
    why = identity_mismatch(identity, baseline_case.get("identity"))
    if why:
        return Verdict(case_id, "incomparable", checks,
                       f"baseline recorded on other inputs ({why}); no regression verdict; "
                       "record a baseline for these inputs with --baseline PATH --update-baselines")
    tol = {**DEFAULT_MIN_EFFECT, **gate.metric_tolerance}
    margin_names = sorted(k for k in runs[0].get("margins", {}) if all(k in r.get("margins", {}) for r in runs))
    for m in (*GATED, *margin_names):
        is_margin = m.startswith("margin:")
        if is_margin:
            tol[m] = tol[m.rsplit(":", 1)[1]]
            if not run_means(baseline_case.get("runs", []), m).size:
                continue
        elif m not in baseline_case.get("metrics", {}) or not all(m in r["metrics"] for r in runs):
            continue
        b = band(baseline_case, m, pooled_variance(baseline_cases, m))
        values = [v for r in runs if (v := run_value(r, m)) is not None]
        if b is None:  # aggregates only (paper.json): this run's own bootstrap CI against the number
            checks.append(_judge_without_runs(m, runs, float(baseline_case["metrics"][m]), tol[m]))
            continue
        # a margin over a control may grow (one-sided); a score may not move either way
        checks.append(judge_noise(m, values, b, gate.alpha, tol[m], is_margin or m in gate.one_sided))
    base_inv = baseline_case.get("invariants") or {}
    base_tokens = {r.get("seed"): r.get("tokens_seen") for r in baseline_case.get("runs", [])}
    for run in runs:
        inv = run.get("invariants", {})
        same_seed = run["seed"] in base_tokens
        for c in judge_invariants(inv, {**base_inv, "tokens_seen": base_tokens.get(run["seed"])}, same_seed):
            if len(runs) > 1:
                c.name += f"@seed{run['seed']}"
            checks.append(c)
    res = resources_baseline or {}
    cur = runs[0].get("resources", {})
    if res and res.get("device") == cur.get("device"):
        for key in ("train_work", "generate_work", "score_work"):
            if key in res and key in cur:
                checks.append(judge_ratio(key, float(cur[key]), float(res[key]), gate.time_factor, 0.0, "time", "x ref"))
        if "train_work" not in res and "train_seconds" in res and "train_seconds" in cur and not all(
                r.get("cached", {}).get("train") for r in runs):
            # a hardware-class record or published minutes (paper.json): plain seconds, same class only
            checks.append(judge_ratio("train_seconds", float(cur["train_seconds"]), float(res["train_seconds"]),
                                      gate.time_factor, 0.0, "time", " s"))
        if "peak_mem_mib" in res and "peak_mem_mib" in cur:
            checks.append(judge_ratio("peak_mem_mib", float(cur["peak_mem_mib"]), float(res["peak_mem_mib"]),
                                      gate.memory_factor, gate.memory_slack_mib, "memory", " MiB"))
    return Verdict(case_id, status_of(checks), checks)


def _judge_without_runs(metric: str, runs: list[dict[str, Any]], baseline: float, min_effect: float) -> Check:
    """No between-run spread is known: flag only when this run's whole 95% bootstrap CI (over test
    questions) lies beyond baseline -/+ min effect. Blind to training noise; see the docs."""
    per = runs[0].get("per_example", {}).get(metric)
    x = float(np.mean([r["metrics"][metric] for r in runs]))
    if per is None:
        ok = x >= baseline - min_effect
        return Check(metric, x, baseline, ok, "noise", f"threshold {baseline - min_effect:.4f}", baseline - min_effect,
                     x - baseline, direction="" if ok else "down")
    mean, lo, hi = paired_bootstrap_ci(np.asarray(per))
    down = hi < baseline - min_effect
    detail = f"run mean {mean:.4f} [95% CI {lo:.4f}, {hi:.4f}] vs baseline +/- {min_effect:g} (no run spread recorded)"
    return Check(metric, x, baseline, not down, "noise", detail, baseline - min_effect, x - baseline, ci=(lo, hi),
                 direction="down" if down else "")


def aggregates(records: list[dict[str, Any]], gate: Any) -> list[Aggregate]:
    """Family (per model) and suite verdicts per gated metric over the judged cases of a run."""
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
        one = m in gate.one_sided
        families = sorted({fam for fam, _ in items})
        for fam in families:
            a = aggregate(f"family {fam}", m, [c for f, c in items if f == fam], gate.aggregate_alpha, eff, one)
            if a is not None and a.n > 1:
                out.append(a)
        a = aggregate("suite", m, [c for _, c in items], gate.aggregate_alpha, eff, one)
        if a is not None and a.n > 1 and len(families) > 1:
            out.append(a)
    return out
