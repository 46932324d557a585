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
* this run: the mean of its R run means (``R = --seeds``, default ``[gate] gate_seeds``, itself 1 by default);
* ``delta = xbar - ybar``, ``se = s * sqrt(1/K + 1/R)``, ``t = delta / se``.

A drop is a ``regression`` when ``delta < -min_effect`` **and** ``t < -t_{df}(1 - alpha)``; a
rise beyond the same band is ``changed`` (fails until the baseline is re-recorded on purpose),
unless the profile lists the metric in ``[gate] one_sided`` (or the registry's ``two_sided`` is
False). The minimum detectable effect (80% power) is ``max(min_effect, (t_{1-alpha} + t_{0.8}) * se)``.
Which way is worse is the metrics registry's (``higher_is_better``), never this module's: for
``degenerate``, the share of looping answers, the mirror image holds (a rise beyond the band is a
``regression``, a fall ``changed``).

Looping answers also have an absolute ceiling that needs no baseline (:data:`MAX_DEGENERATE`,
``[gate] max_degenerate``): a run whose tuned answers are that degenerate fails as a
``regression``, also while recording a baseline.

Aggregates (family = one model's cases, suite = every case of the run; :func:`aggregates`)
turn each case's t into a normal z through its own t distribution and combine them with
Stouffer's method, ``Z = sum(z_i) / sqrt(N)``. Like a case's check they are two-sided: a drop
fails when ``Z < -z(1 - alpha_aggregate)`` and the mean delta is below minus the aggregate
minimum effect, and a rise fails when ``Z > z(1 - alpha_aggregate)`` and the mean delta is above
it (the aggregate's counterpart of ``changed``), unless the metric is one-sided (:func:`is_one_sided`);
for a lower-is-better measure (``degenerate``) the two directions swap roles. A code
change that hurts training hurts every case a little; this sees it when no single case can.

Controls (does the task need the fine-tuned adapter and the question?): per question, the
tuned answer's score minus the control's (base model; tuned adapter with the question removed;
tuned answers against shuffled references). Each margin is gated like a score, one-sided (a
shrinking margin is a ``regression``), once the baseline holds margins; a control listed in
``[gate] require_controls`` must also be beaten outright in every run, on the metrics of
``require_beats_base``: the one-sided paired bootstrap bound at ``control_alpha`` must exclude
zero (:func:`judge_control`).

Exact invariants (no statistics): optimizer steps, training rows and their digest, tokens seen
(same seed only), trainable parameters (and the closed-form LoRA count), test ids, generation
settings, prompt digest, scorer fingerprint and canary scores. Any mismatch fails with both values.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .metrics import METRICS, degeneration
from .metrics.registry import DEFAULT_MIN_EFFECT, GATED, MEASURES, POWER_CHECKED, higher_is_better, two_sided
from .resources import BUSY_LIMIT
from .results.record import Status, VerdictRecord

__all__ = ["DEFAULT_MIN_EFFECT", "GATED", "MAX_DEGENERATE", "METRICS", "POWER_CHECKED"]  # these live in metrics.registry
#: the share of degenerate (looping) tuned answers at which a run fails outright, with or without a
#: baseline (recording refuses it too); ``[gate] max_degenerate`` overrides it, None turns it off.
#: Clean tiny runs loop in 0 answers; a recipe that has not learned (steps / 4) loops in all of them.
#: One answer in ten repeating a phrase is far beyond what a working fine-tune does, and well above
#: the noise gate's minimum effect (0.05), which catches smaller rises against a baseline.
MAX_DEGENERATE = 0.10
#: bounds of the prior degrees of freedom fitted by :func:`pooled_variance`
MIN_PRIOR_DF = 1.0
MAX_PRIOR_DF = 200.0
POWER = 0.8
#: the statuses that fail a case (the others: incomparable, no-baseline, improvement, pass)
FAILING = (Status.ERROR, Status.REGRESSION, Status.CHANGED)


@dataclass
class Check:
    """One judged quantity. ``passed`` False fails the case; ``kind`` says which rule judged it.

    ``name`` is text for people (``beats_base:bert_f1@seed3``); what the check judged is in
    ``metric``, ``control`` and ``seed`` (see :class:`results.record.CheckFields`), set where the
    check is made. Readers of records take them through :func:`results.record.check_fields`."""

    name: str
    value: Any
    baseline: Any
    passed: bool
    kind: str  # noise | invariant | control | ceiling | power | time | memory
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
    metric: str | None = None  # the score judged (under a margin: the score); None: invariant, time, memory
    control: str | None = None  # beats_<control> and margin:<control>:<metric> checks
    seed: int | None = None  # the one run judged, when the case has several (also @seed<n> in the name)

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        if self.kind == "invariant":
            return f"  [{mark}] {self.name}: {_short(self.value)} vs baseline {_short(self.baseline)} {self.detail}".rstrip()
        if self.kind in ("ceiling", "power"):
            return f"  [{mark}] {self.name}: {self.detail}"
        v = f"{self.value:.4f}" if isinstance(self.value, (int, float)) else str(self.value)
        b = f"{self.baseline:.4f}" if isinstance(self.baseline, (int, float)) else str(self.baseline)
        way = f"{_way(asdict(self))}: " if self.kind == "noise" else ""
        return f"  [{mark}] {self.name}: {v} vs {b} {way}{self.detail}".rstrip()


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


# ---- which way a judged score moved, in words (the verdict's head line, the summary's reasons) ----

#: what to do next, per failing status: re-recording is offered only for a rise or an intended
#: recipe change (``changed``), never for a regression (that would bless a broken model)
NEXT_STEP: dict[str, str] = {
    Status.REGRESSION: ("investigate before touching the baseline: rerun the case with --seeds 3 (-k <case id>) "
                        "and read the report (medqa-bench report <run dir>); a drop (or a rise in looping answers) "
                        "that holds is a defect to fix, not a baseline to re-record"),
    Status.CHANGED: ("a move the better way beyond the band (a score up, fewer looping answers) or a changed invariant, "
                     "not a drop: if it is intended (a recipe change), "
                     "re-record this case's baseline with --update-baselines; if not, investigate it like a regression "
                     "(rerun with --seeds 3, read the report)"),
}


def next_step(status: str) -> str:
    """The one hint for a verdict's status ('' for statuses that need none)."""
    return NEXT_STEP.get(status, "")


def _delta_text(delta: float) -> str:
    return f"{delta:+.1f}" if abs(delta) >= 1 else f"{delta:+.4f}"


def is_drop(c: dict[str, Any]) -> bool:
    """A noise check that failed downward: marked ``down``, or (a check without a direction) a
    negative or unknown delta. A failing score that is not known to have risen counts as a drop."""
    if c.get("kind") != "noise" or c.get("passed", True):
        return False
    if c.get("direction") in ("down", "up"):
        return c.get("direction") == "down"
    d = c.get("delta")
    return not (isinstance(d, (int, float)) and d > 0)


def _scored(name: str) -> str:
    """The measure a noise check's name judges: the score under a margin
    (``margin:<control>:<metric>``), else the name itself."""
    return name.split(":", 2)[2] if name.startswith("margin:") and name.count(":") >= 2 else name


def _higher_is_better(name: str) -> bool:
    """The registry's direction for a gated measure or a margin over a control (tuned minus
    control: better the way its score is better). KeyError for a name the registry lacks."""
    return higher_is_better(_scored(name))


def is_one_sided(name: str, gate: Any) -> bool:
    """Whether a move of ``name`` the better way beyond its band passes (``improvement``) instead
    of failing (``changed``): always for a margin over a control (beating it by more is fine),
    for a measure the registry marks one-sided, or one the profile lists in ``[gate] one_sided``."""
    return name.startswith("margin:") or name in gate.one_sided or not two_sided(name)


def worse_way(name: str) -> str:
    """Which way a noise check's metric gets worse, from the registry (``higher_is_better``):
    'down' for scores, lengths and margins over their controls, 'up' for a lower-is-better
    measure (``degenerate``). A name the registry does not know (an older record) gets 'down'."""
    m = MEASURES.get(_scored(str(name)))
    return "up" if m is not None and not m.higher_is_better else "down"


def is_worse(c: dict[str, Any]) -> bool:
    """A noise check that failed the bad way for its metric (:func:`worse_way`): a score down, the
    share of looping answers up. A failing check without a direction (an older record) is judged by
    the sign of its delta; with no delta either it counts as worse (never hides a regression)."""
    if c.get("kind") != "noise" or c.get("passed", True):
        return False
    way = c.get("direction")
    if way not in ("down", "up"):
        d = c.get("delta")
        if not isinstance(d, (int, float)):
            return True
        if d == 0:
            return True
        way = "up" if d > 0 else "down"
    return way == worse_way(c.get("name", ""))


def _way(c: dict[str, Any]) -> str:
    """'up beyond band', 'down beyond band', 'down, within band', ... for one noise check (as JSON)."""
    d = c.get("delta")
    if c.get("direction") in ("up", "down") or not c.get("passed", True):
        way = c.get("direction") or ("down" if is_drop(c) else "up")
        return f"{way} beyond band" + (" (one-sided: allowed)" if c.get("passed", True) else "")
    if not isinstance(d, (int, float)) or d == 0:
        return "unchanged, within band"
    return f"{'up' if d > 0 else 'down'}, within band"


def movement(c: dict[str, Any]) -> str:
    """One noise check as '<name> <up|down> <delta> beyond band' or '... (within band)'."""
    d = c.get("delta")
    dt = f" {_delta_text(d)}" if isinstance(d, (int, float)) else ""
    way = _way(c)
    if way.endswith("within band"):
        return f"{c.get('name')} {way.split(',')[0]}{dt} (within band)"
    way_word, _, rest = way.partition(" ")
    return f"{c.get('name')} {way_word}{dt} {rest}"


#: within-band moves the worse way (drops; more looping) named beside a move beyond the band (the
#: closest to their band first)
WITHIN_BAND_SHOWN = 3


def moved(checks: list[dict[str, Any]]) -> list[str]:
    """Every score that moved beyond its band, the worse way first (a score down, looping answers
    up: :func:`worse_way`), each with direction and delta; and, when anything moved beyond its band,
    the scores that moved the worse way *within* theirs (so a verdict made by a move the better way,
    such as ``changed``, never hides a drop). [] when nothing moved beyond a band."""
    noise = [c for c in checks if c.get("kind") == "noise"]
    beyond = [c for c in noise if c.get("direction") in ("up", "down") or not c.get("passed", True)]
    if not beyond:
        return []
    beyond.sort(key=lambda c: (not is_worse(c), c.get("passed", True)))
    out = [movement(c) for c in beyond]

    def closeness(c: dict[str, Any]) -> float:
        width: float = (c["baseline"] - c["limit"]) if isinstance(c.get("baseline"), (int, float)) and isinstance(
            c.get("limit"), (int, float)) else 0.0
        delta: float = abs(c["delta"])
        return delta / width if width > 0 else delta

    def worse_within(c: dict[str, Any]) -> bool:
        d = c.get("delta")
        return isinstance(d, (int, float)) and (d > 0 if worse_way(c.get("name", "")) == "up" else d < 0)

    within = sorted((c for c in noise if c not in beyond and worse_within(c)), key=closeness, reverse=True)
    out += [movement(c) for c in within[:WITHIN_BAND_SHOWN]]
    if len(within) > WITHIN_BAND_SHOWN:
        out.append(f"{len(within) - WITHIN_BAND_SHOWN} more worse within band")
    return out


@dataclass
class Verdict:
    case_id: str
    #: a Status value, kept as the plain str: it travels in pytest's user properties, which
    #: pytest-xdist serializes by exact type (an enum member would not cross to the controller)
    status: str
    checks: list[Check] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        self.status = Status(self.status).value  # any other text: ValueError

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def explain(self) -> str:
        """The head line (status, note, and which scores moved which way, with their deltas), the
        failing checks, then the other scores and controls, and for a failing status what to do next."""
        as_json = [asdict(c) for c in self.checks]
        moves = moved(as_json)
        others = [c for c in self.failures if c.kind != "noise"]
        what = [*moves, *(f"{c.name} {100 * c.value:.1f}% >= {100 * c.limit:g}%" if c.kind == "ceiling" and c.limit is not None
                          else f"{c.name} failed ({c.kind})" for c in others)]
        head = (f"{self.case_id}: {self.status}" + (f" ({self.note})" if self.note else "")
                + (f": {'; '.join(what)}" if what else ""))
        shown = [*self.failures, *(c for c in self.checks if c.passed and c.kind in ("noise", "control"))]
        hint = next_step(self.status)
        return "\n".join([head, *(c.line() for c in shown), *([f"  next: {hint}"] if hint else [])])

    def to_json(self) -> VerdictRecord:
        return {"status": self.status, "note": self.note, "explain": self.explain(),
                "checks": [asdict(c) for c in self.checks]}


# ---- statistics ---------------------------------------------------------------------------

def t_quantile(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df)) if math.isfinite(df) else float(stats.norm.ppf(q))


def t_cdf(x: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.cdf(x, df)) if math.isfinite(df) else float(stats.norm.cdf(x))


def run_means(runs: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray:
    """One value per run: a metric's mean, or a control margin (``margin:<control>:<metric>``)."""
    return np.asarray([v for r in runs if (v := run_value(r, metric)) is not None], dtype=np.float64)


def run_value(run: Mapping[str, Any], metric: str) -> float | None:
    section = run.get("margins" if metric.startswith("margin:") else "metrics", {})
    return float(section[metric]) if metric in section else None


def margins(run: Mapping[str, Any], metrics: tuple[str, ...]) -> dict[str, float]:
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


def variance_prior(baseline_cases: dict[str, Any], metric: str, gate: Any) -> tuple[float, float]:
    """The stronger of the baseline's own cross-case pool (:func:`pooled_variance`) and the
    profile's measured prior (``[gate] prior_sd`` / ``prior_df``, for a single case that has no
    other case to pool with). Margins keep their own pool: their variance is not the score's."""
    pooled = pooled_variance(baseline_cases, metric)
    sd = (getattr(gate, "prior_sd", None) or {}).get(metric)
    df = float(getattr(gate, "prior_df", 0.0) or 0.0)
    if sd is None or metric.startswith("margin:") or df <= pooled[1]:
        return pooled
    return float(sd) ** 2, df


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
    with np.errstate(over="ignore", invalid="ignore"):
        var = (d0 * s0 + dc * sc) / (d0 + dc)
        mean = float(y.mean())
    if not (math.isfinite(mean) and math.isfinite(var)):  # an infinite band would pass any value
        from .errors import BaselineError

        raise BaselineError(f"baseline case {case.get('case_id', '?')!r}, {metric}: its runs give a non-finite "
                            f"mean or variance ({mean}, {var}); the baseline is corrupt - restore it from git")
    return Band(mean, var, d0 + dc, int(y.size))


def judge_noise(name: str, values: list[float], b: Band, alpha: float, min_effect: float, one_sided: bool,
                higher_is_better: bool | None = None, metric: str | None = None, control: str | None = None) -> Check:
    """A move beyond ``min_effect`` and the band is ``direction`` 'down' or 'up'; it fails unless it
    is the better way (up for scores, down for a lower-is-better measure) and ``one_sided``.
    ``higher_is_better`` None: the registry's, for ``name`` (:func:`_higher_is_better`).
    ``metric`` (default ``name``) and ``control`` (a margin over a control) are what it judged."""
    hib = _higher_is_better(name) if higher_is_better is None else higher_is_better
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
    worse, better = (down, up) if hib else (up, down)
    passed = not worse and not (better and not one_sided)
    direction = "down" if down else ("up" if up else "")
    return Check(name, x, b.mean, passed, "noise", detail, b.mean - band_w, delta, se, t, b.df, p, mde, direction,
                 metric=metric or name, control=control)


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
    lower bound of the mean per-question margin must be above zero. The margin is how much better
    the tuned answers are, the registry's way (tuned minus control for a score; control minus
    tuned for a lower-is-better measure)."""
    d = np.asarray(tuned, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if not _higher_is_better(metric):
        d = -d
    mean, lo, hi = paired_bootstrap_ci(d, alpha=2 * alpha)
    ok = lo > 0
    detail = (f"margin {mean:+.4f}, one-sided {100 * (1 - alpha):g}% bound {lo:+.4f}"
              + ("" if ok else f": the fine-tuned model does not beat the {control} control"))
    return Check(f"beats_{control}:{metric}", float(np.mean(tuned)), float(np.mean(other)), ok, "control", detail,
                 delta=mean, ci=(lo, hi), metric=metric, control=control)


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


def judge_recipe(current: dict[str, Any], baseline: dict[str, Any]) -> list[Check]:
    """The recipe as applied (train/applied.py), exactly: a failing ``recipe:<setting>`` check for
    each setting that differs from what the profile asked (within the run: a trainer that trains
    something else), ``recipe:prompt_layout`` when training saw other prompt tokens than generation
    feeds, and ``recipe:<setting>`` for each setting that differs from the baseline's (the recipe
    changed). Nothing for a run whose adapter recorded no recipe (an older cache entry)."""
    from .train.applied import compare

    got = current.get("recipe")
    if not got:
        return []
    out: list[Check] = []
    for key, g, w in compare(got, current.get("recipe_asked") or {}):
        out.append(Check(f"recipe:{key}", g, w, False, "invariant", "(the trainer applied another value than the profile asks)"))
    gen_ids = current.get("generation_prompt_ids")
    if gen_ids and got.get("train_prompt_ids") and gen_ids != got["train_prompt_ids"]:
        out.append(Check("recipe:prompt_layout", got["train_prompt_ids"], gen_ids, False, "invariant",
                         "(training rows start with other prompt tokens than generation feeds)"))
    named = {c.name for c in out}
    for key, g, w in compare(got, baseline.get("recipe") or {}):
        if f"recipe:{key}" not in named:
            out.append(Check(f"recipe:{key}", g, w, False, "invariant", "(differs from the baseline's; must be identical)"))
    if not out:
        out.append(Check("recipe", "as asked", "as asked", True, "invariant",
                         f"{len(got)} settings read back from the trained objects"))
    return out


def judge_ratio(name: str, value: float, baseline: float, factor: float, slack: float, kind: str, unit: str = "") -> Check:
    limit = max(baseline * factor, baseline + slack)
    why = f"(limit {limit:.3g}{unit}: x{factor:g}" + (f" or +{slack:g}" if slack else "") + ")"
    return Check(name, value, baseline, value <= limit, kind, why, limit=limit)


def judge_power(check: Check, b: Band) -> list[Check]:
    """A failing ``power`` check when the score's check cannot fail (power.can_fail): its pass
    threshold is beyond the metric's range (the registry's ``bounds``), or its MDE is at least the
    score's distance to the end it gets worse towards (for a score: the score itself; e.g. a single
    case whose band rests on one degree of freedom). Such a gate is refused, not passed. Which way
    is worse is the registry's."""
    from .power import can_fail

    m = MEASURES[check.metric or check.name]
    lo, hi = m.bounds
    worst = lo if m.higher_is_better else hi
    # a score at the floor cannot drop (a lower-is-better one at its ceiling cannot rise): nothing
    # to detect, not a power problem
    if worst is not None and not (b.mean - worst if m.higher_is_better else worst - b.mean) > 0:
        return []
    # the band's edge the worse way (a noise check's ``limit`` is its lower edge)
    if check.limit is None:
        threshold = -math.inf if m.higher_is_better else math.inf
    else:
        threshold = float(check.limit) if m.higher_is_better else b.mean + (b.mean - float(check.limit))
    why = can_fail(b.mean, threshold, lo, hi, check.mde, higher_is_better=m.higher_is_better, name=check.name)
    if not why:
        return []
    return [Check(f"power:{check.name}", check.value, b.mean, False, "power",
                  f"{why}; record more baseline runs (--seeds), or give the profile a variance prior "
                  "([gate] prior_sd, prior_df)", check.limit, mde=check.mde, metric=check.metric, control=check.control)]


def status_of(checks: list[Check]) -> Status:
    """``regression`` when a noise check failed the worse way (a score down, looping answers up:
    :func:`is_worse`) or a control, ceiling, time or memory check failed, whatever else moved;
    ``changed`` when the only failures are moves the better way beyond the band or exact
    invariants; ``improvement`` for an allowed (one-sided) move the better way; else ``pass``."""
    bad = [c for c in checks if not c.passed]
    if any(c.kind in ("control", "ceiling", "time", "memory") or is_worse(asdict(c)) for c in bad):
        return Status.REGRESSION
    if any(c.kind == "power" for c in bad):
        return Status.INCOMPARABLE  # the gate cannot judge this case as its baseline stands
    if bad:
        return Status.CHANGED
    if any(c.kind == "noise" and c.direction in ("up", "down") and c.direction != worse_way(c.name) for c in checks):
        return Status.IMPROVEMENT  # a move the better way on a metric the profile marks one-sided
    return Status.PASS


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


def _one_run(check: Check, seed: int) -> Check:
    """``check`` as the check of one of a case's several runs: ``seed`` set, and ``@seed<n>``
    appended to its name (the text records and reports have always shown)."""
    check.seed = seed
    check.name += f"@seed{seed}"
    return check


def judge_case(case_id: str, runs: Sequence[Mapping[str, Any]], baseline_case: dict[str, Any] | None,
               baseline_cases: dict[str, Any], gate: Any, identity: dict[str, Any],
               resources_baseline: dict[str, Any] | None = None) -> Verdict:
    """Judge the R runs of one case (records of :func:`pipeline.run_case`) against its baseline.

    Controls and the ceiling on looping answers (:func:`judge_degenerate_ceiling`) are judged on
    every run even without a baseline (so recording refuses a run that fails them); everything
    else needs one.
    """
    checks: list[Check] = []
    ceiling = getattr(gate, "max_degenerate", MAX_DEGENERATE)
    for run in runs:
        for name in gate.require_controls:
            ctrl = run.get("controls", {}).get(name)
            if ctrl is None:
                continue
            for m in gate.require_beats_base:
                c = judge_control(m, name, run["per_example"][m], ctrl["per_example"][m], gate.control_alpha)
                checks.append(_one_run(c, run["seed"]) if len(runs) > 1 else c)
        ceiling_check = judge_degenerate_ceiling(run, ceiling)
        if ceiling_check is not None:
            checks.append(_one_run(ceiling_check, run["seed"]) if len(runs) > 1 else ceiling_check)
    if baseline_case is None:
        failed = [c for c in checks if not c.passed]
        return Verdict(case_id, Status.REGRESSION if failed else Status.NO_BASELINE, checks)
    why = identity_mismatch(identity, baseline_case.get("identity"))
    if why:
        # the ceiling needs no baseline: a looping model fails even against a baseline it cannot use
        looping = any(c.kind == "ceiling" and not c.passed for c in checks)
        return Verdict(case_id, Status.REGRESSION if looping else Status.INCOMPARABLE, checks,
                       f"baseline recorded on other inputs ({why}); no regression verdict on the scores; "
                       "record a baseline for these inputs with --baseline PATH --update-baselines")
    tol = {**DEFAULT_MIN_EFFECT, **gate.metric_tolerance}
    margin_names = sorted(k for k in runs[0].get("margins", {}) if all(k in r.get("margins", {}) for r in runs))
    for m in (*GATED, *margin_names):
        is_margin = m.startswith("margin:")
        metric, control = m, None
        if is_margin:  # the run's margin key (margins()): margin:<control>:<metric>
            _, control, metric = m.split(":", 2)
            tol[m] = tol[metric]
            if not run_means(baseline_case.get("runs", []), m).size:
                continue
        elif m not in baseline_case.get("metrics", {}) or not all(m in r["metrics"] for r in runs):
            continue  # e.g. degenerate against a baseline recorded before it existed: not judged
        b = band(baseline_case, m, variance_prior(baseline_cases, m, gate))
        values = [v for r in runs if (v := run_value(r, m)) is not None]
        if b is None:  # no spread to go on (aggregates only, as paper.json): this run's own bootstrap CI
            if is_margin:  # a margin has no per-question series to bootstrap: no check without a band
                continue
            checks.append(_judge_without_runs(m, runs, float(baseline_case["metrics"][m]), tol[m],
                                              _higher_is_better(m)))
            continue
        # which way is a regression is the registry's (degenerate: a rise; a margin: its score's);
        # a margin over a control may grow (one-sided), a measure may not move either way unless the
        # registry or the profile makes it one-sided (is_one_sided)
        checks.append(judge_noise(m, values, b, gate.alpha, tol[m], is_one_sided(m, gate),
                                  _higher_is_better(m), metric, control))
        if m in POWER_CHECKED:
            checks.extend(judge_power(checks[-1], b))
    base_inv = baseline_case.get("invariants") or {}
    base_tokens = {r.get("seed"): r.get("tokens_seen") for r in baseline_case.get("runs", [])}
    for run in runs:
        inv = run.get("invariants", {})
        same_seed = run["seed"] in base_tokens
        for c in (judge_invariants(inv, {**base_inv, "tokens_seen": base_tokens.get(run["seed"])}, same_seed)
                  + judge_recipe(inv, base_inv)):
            checks.append(_one_run(c, run["seed"]) if len(runs) > 1 else c)
    res = like_for_like(resources_baseline or {}, baseline_case)
    cur = runs[0].get("resources", {})
    if res and res.get("device") == cur.get("device"):
        elsewhere = other_machine(res, cur)
        for key in ("train_work", "generate_work", "score_work"):
            if key in res and key not in cur:  # the stage came from the cache: nothing was measured
                checks.append(Check(key, "cached", float(res[key]), True, "time",
                                    "not measured: the stage was built by an earlier run (served from the cache)"))
            if key in res and key in cur and elsewhere:
                checks.append(Check(key, float(cur[key]), float(res[key]), True, "time", f"unjudged: {elsewhere}"))
                continue
            if key in res and key in cur:
                busy = cur.get(key.replace("_work", "_busy"))
                if busy is not None and busy > BUSY_LIMIT:  # load alone never makes a regression
                    checks.append(Check(key, float(cur[key]), float(res[key]), True, "time",
                                        f"unjudged: machine busy (other processes kept {100 * busy:.0f}% of the cores "
                                        f"busy while it ran; judged up to {100 * BUSY_LIMIT:.0f}%)"))
                    continue
                checks.append(judge_ratio(key, float(cur[key]), float(res[key]), gate.time_factor, 0.0, "time", "x ref"))
        if "train_work" not in res and "train_seconds" in res and "train_seconds" in cur and not all(
                r.get("cached", {}).get("train") for r in runs):
            # a hardware-class record or published minutes (paper.json): plain seconds, same class only
            checks.append(judge_ratio("train_seconds", float(cur["train_seconds"]), float(res["train_seconds"]),
                                      gate.time_factor, 0.0, "time", " s"))
        if "peak_mem_mib" in res and "peak_mem_mib" in cur:
            mem = judge_ratio("peak_mem_mib", float(cur["peak_mem_mib"]), float(res["peak_mem_mib"]),
                              gate.memory_factor, gate.memory_slack_mib, "memory", " MiB")
            if res is not resources_baseline:  # like_for_like chose the baseline's first run
                mem.detail += " vs the baseline's first run (the first seed of its process, as this run's)"
            checks.append(mem)
    return Verdict(case_id, status_of(checks), checks)


def other_machine(res: Mapping[str, Any], cur: Mapping[str, Any]) -> str:
    """Why a baseline's stage work cannot be compared with this run's ("" when it can): recorded on
    a CPU of another identity (:func:`resources.cpu_identity`), or at another torch thread count.
    Work is CPU seconds in units of a matmul workload; a Python-bound stage (a tiny model's
    generation) and that workload need not speed up alike from one CPU model to the next, and CPU
    seconds grow with the threads: a comparison nothing measured is not made (docs/regression-
    gating.md, "Time on another CPU"). A baseline recorded before the identity was kept (no
    ``cpu``) is judged as before."""
    if res.get("cpu") and cur.get("cpu") and res["cpu"] != cur["cpu"]:
        return (f"time recorded on another CPU ({res['cpu']}; this run: {cur['cpu']}); "
                "record times on this machine with --update-resources")
    if res.get("threads") is not None and cur.get("threads") is not None \
            and round(float(res["threads"])) != round(float(cur["threads"])):
        return (f"time recorded at {float(res['threads']):g} torch threads per process, this run at "
                f"{float(cur['threads']):g} (MEDQA_THREADS, -n); record times at these settings with --update-resources")
    return ""


def like_for_like(res: dict[str, Any], baseline_case: dict[str, Any]) -> dict[str, Any]:
    """The resources a run is compared with, measured the way the run measures them. When they are
    the baseline case's own (not a hardware-class file's or published minutes): memory is the
    baseline's first run's (the first seed in its process, as a gate run's first seed is: later
    seeds of one process reuse its warm allocations, so a K-run mean reads low), and each stage's
    work is the median over the baseline runs that built that stage while other processes kept at
    most ``BUSY_LIMIT`` of the cores busy (over all that built it when none did)."""
    own = res is baseline_case.get("resources")  # (a bool: `is` would narrow res to Any for mypy)
    if not res or not own:
        return res
    per_run = [r.get("resources") or {} for r in baseline_case.get("runs", [])]
    if not per_run or not per_run[0]:
        return res
    out = dict(res)
    if "peak_mem_mib" in per_run[0]:
        out["peak_mem_mib"] = float(per_run[0]["peak_mem_mib"])
    for key in ("train_work", "generate_work", "score_work"):
        vals = [float(r[key]) for r in per_run if key in r]
        # runs measured on a quiet machine, where there are any (a run's load inflates its CPU seconds)
        quiet = [float(r[key]) for r in per_run if key in r and float(r.get(key.replace("_work", "_busy"), 0.0)) <= BUSY_LIMIT]
        if vals:
            out[key] = float(np.median(quiet or vals))
    return out


def _judge_without_runs(metric: str, runs: Sequence[Mapping[str, Any]], baseline: float, min_effect: float,
                        higher_is_better: bool | None = None) -> Check:
    """No between-run spread is known: flag only when this run's whole 95% bootstrap CI (over test
    questions) lies beyond baseline -/+ min effect the worse way (below for a score, above for a
    lower-is-better measure; ``higher_is_better`` None: the registry's). Blind to training noise;
    see the docs."""
    if higher_is_better is None:
        higher_is_better = _higher_is_better(metric)
    per = runs[0].get("per_example", {}).get(metric)
    x = float(np.mean([r["metrics"][metric] for r in runs]))
    limit = baseline - min_effect if higher_is_better else baseline + min_effect
    worse_way = "down" if higher_is_better else "up"
    if per is None:
        ok = x >= limit if higher_is_better else x <= limit
        return Check(metric, x, baseline, ok, "noise", f"threshold {limit:.4f}", limit,
                     x - baseline, direction="" if ok else worse_way, metric=metric)
    mean, lo, hi = paired_bootstrap_ci(np.asarray(per))
    worse = hi < limit if higher_is_better else lo > limit
    detail = f"run mean {mean:.4f} [95% CI {lo:.4f}, {hi:.4f}] vs baseline +/- {min_effect:g} (no run spread recorded)"
    return Check(metric, x, baseline, not worse, "noise", detail, limit, x - baseline, ci=(lo, hi),
                 direction=worse_way if worse else "", metric=metric)


def judge_degenerate_ceiling(run: Mapping[str, Any], ceiling: float | None) -> Check | None:
    """The share of this run's tuned answers that loop (``metrics.degenerate``, see
    metrics/degeneration.py) must stay below ``ceiling`` (``MAX_DEGENERATE`` unless ``[gate]
    max_degenerate`` says otherwise). Needs no baseline. None when the ceiling is off or the run
    was recorded before the metric existed."""
    if ceiling is None or degeneration.NAME not in run.get("metrics", {}):
        return None
    share = float(run["metrics"][degeneration.NAME])
    flags = run.get("per_example", {}).get(degeneration.NAME)
    count = f" ({int(round(sum(flags)))} of {len(flags)})" if flags else ""
    ok = share < ceiling
    detail = (f"{100 * share:.1f}% of tuned answers degenerate{count}, "
              + (f"below the ceiling {100 * ceiling:g}%" if ok else
                 f"at or above the ceiling {100 * ceiling:g}% ([gate] max_degenerate): the model loops "
                 f"(a word {degeneration.NGRAM}-gram {degeneration.MIN_REPEATS}+ times in one answer)"))
    return Check(f"max_{degeneration.NAME}", share, ceiling, ok, "ceiling", detail, limit=ceiling, metric=degeneration.NAME)


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
