"""The gate (medqa_core.gate): the noise model, controls, invariants, verdicts and aggregates,
checked against independent computations (the formulas of the gate package's docstring written out
here with scipy.stats directly, scipy's Stouffer combination, and Monte-Carlo rates on normal
data with a known spread); plus the session's --seeds parser and --set overrides."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from helpers import MINIMAL_PROFILE
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import special, stats

from medqa_core import gate
from medqa_core.errors import ConfigError, MedQAError
from medqa_core.gate import (
    DEFAULT_MIN_EFFECT,
    MAX_PRIOR_DF,
    MIN_PRIOR_DF,
    Band,
    Check,
    aggregate,
    aggregates,
    band,
    identity_mismatch,
    judge_case,
    judge_control,
    judge_invariants,
    judge_noise,
    judge_ratio,
    paired_bootstrap_ci,
    pooled_variance,
    status_of,
)
from medqa_core.metrics import METRICS
from medqa_core.profile import load_profile, with_overrides
from medqa_core.session import parse_seeds
from medqa_core.specs import GateConfig

M = "bert_f1"
IDENTITY = {"data": "rows-fp", "test_ids": "test-fp", "scorer": "scorer-fp"}


# ---------------------------------------------------------------- builders


def metrics_at(value: float, **over: float) -> dict[str, float]:
    return {**{m: value for m in METRICS}, **over}


def a_run(seed: int, metrics: dict[str, float], *, margins: dict[str, float] | None = None,
          per_example: dict[str, list[float]] | None = None, controls: dict | None = None,
          invariants: dict | None = None, resources: dict | None = None) -> dict:
    """One run as session.case_record keeps it."""
    return {"seed": seed, "metrics": dict(metrics), "margins": margins or {},
            "per_example": per_example or {"ids": ["q0"], **{m: [v] for m, v in metrics.items()}},
            "controls": controls or {}, "invariants": invariants or {}, "resources": resources or {}}


def baseline_case(values: list[float], metric: str = M, *, margins: list[float] | None = None,
                  seeds: list[int] | None = None, tokens: list[int] | None = None, **extra) -> dict:
    """A schema-2 baseline case whose K runs have ``values`` on ``metric`` (others 0.5)."""
    seeds = seeds or list(range(len(values)))
    runs = []
    for i, v in enumerate(values):
        run = {"seed": seeds[i], "metrics": metrics_at(0.5, **{metric: v})}
        if margins is not None:
            run["margins"] = {f"margin:base:{metric}": margins[i]}
        if tokens is not None:
            run["tokens_seen"] = tokens[i]
        runs.append(run)
    return {"metrics": metrics_at(0.5, **{metric: statistics.fmean(values)}), "runs": runs,
            "identity": dict(IDENTITY), **extra}


def gate_cfg(**over) -> GateConfig:
    return GateConfig(**{"require_controls": (), **over})


# ---------------------------------------------------------------- reference formulas (independent)


def trigamma_inverse(x: float) -> float:
    """limma's Newton iteration for the inverse of the trigamma function (Smyth 2004)."""
    if x > 1e7:
        return 1 / math.sqrt(x)
    if x < 1e-6:
        return 1 / x
    y = 0.5 + 1 / x
    for _ in range(100):
        tri = float(special.polygamma(1, y))
        dif = tri * (1 - tri / x) / float(special.polygamma(2, y))
        y += dif
        if -dif / y < 1e-10:
            break
    return y


def ref_prior(cases: list[list[float]]) -> tuple[float, float]:
    """limma's moment fit of a scaled inverse chi-square prior to the cases' K-run variances:
    e_c = log s_c^2 - psi(k/2) + log(k/2); d0 from var(e) - mean psi'(k/2) = psi'(d0/2);
    s0^2 = exp(mean(e) + psi(d0/2) - log(d0/2)). Zero variances carry no information."""
    xs = [(statistics.variance(y), len(y) - 1) for y in cases
          if len(y) >= 2 and statistics.variance(y) > 1e-12 * max(1e-6, statistics.fmean(y) ** 2)]
    if len(xs) < 3:  # too few cases to fit the prior's spread: no pooling (d0 = 0)
        return (math.exp(statistics.fmean(math.log(v) for v, _ in xs)) if xs else 0.0), 0.0
    e = [math.log(v) - special.digamma(k / 2) + math.log(k / 2) for v, k in xs]
    excess = (statistics.variance(e) if len(e) > 1 else 0.0) - statistics.fmean(special.polygamma(1, k / 2) for _, k in xs)
    if excess <= 1 / MAX_PRIOR_DF:
        d0 = MAX_PRIOR_DF
    else:
        d0 = min(max(2 * trigamma_inverse(excess), MIN_PRIOR_DF), MAX_PRIOR_DF)
    d0 = min(d0, float(sum(k for _, k in xs)))  # no more df than the runs it was fitted to
    return math.exp(statistics.fmean(e) + special.digamma(d0 / 2) - math.log(d0 / 2)), d0


def ref_band(y: list[float], prior: tuple[float, float]) -> tuple[float, float, float] | None:
    """(mean, moderated variance, df) of the docstring: s^2 = (d0 s0^2 + (K-1) s_c^2) / (d0 + K - 1)."""
    s0, d0 = prior
    dc = len(y) - 1
    sc = statistics.variance(y) if dc else 0.0
    if d0 + dc == 0:
        return None
    return statistics.fmean(y), (d0 * s0 + dc * sc) / (d0 + dc), d0 + dc


def ref_test(x: list[float], ybar: float, var: float, df: float, k: int, alpha: float, min_effect: float):
    delta = statistics.fmean(x) - ybar
    se = math.sqrt(var * (1 / k + 1 / len(x)))
    t = delta / se
    crit = stats.t.ppf(1 - alpha, df)
    down = delta < -min_effect and t < -crit
    up = delta > min_effect and t > crit
    mde = max(min_effect, (stats.t.ppf(1 - alpha, df) + stats.t.ppf(0.8, df)) * se)
    p = stats.t.sf(abs(t), df)
    return delta, se, t, crit, down, up, mde, p


UNIT = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False)
GRID = st.integers(0, 1000).map(lambda i: i / 1000)  # scores on a 0.001 grid
ALPHA = st.sampled_from([0.001, 0.01, 0.05, 0.2])


def as_cases(value_sets: list[list[float]]) -> dict:
    return {f"c{i}": {"metrics": {M: statistics.fmean(y)}, "runs": [{"metrics": {M: v}} for v in y]}
            for i, y in enumerate(value_sets)}


@given(st.lists(st.one_of(st.lists(GRID, min_size=1, max_size=1), st.lists(GRID, min_size=2, max_size=6, unique=True)),
                max_size=12))
@settings(max_examples=200, deadline=None)
def test_property_prior_matches_the_limma_moment_fit(value_sets):
    s0, d0 = pooled_variance(as_cases(value_sets), M)
    r0, rd = ref_prior(value_sets)
    assert d0 == pytest.approx(rd, rel=1e-6)
    if rd > 0:
        assert s0 == pytest.approx(r0, rel=1e-6, abs=1e-300)


def test_prior_without_two_runs_anywhere_is_empty():
    assert pooled_variance({}, M) == (0.0, 0.0)
    assert pooled_variance(as_cases([[0.5], [0.6]]), M)[1] == 0.0
    assert pooled_variance({"old": {"metrics": {M: 0.5}}}, M) == (0.0, 0.0)  # schema 1: no runs


def test_prior_df_tracks_how_alike_the_cases_noise_is():
    rng = np.random.default_rng(5)
    alike = as_cases([list(rng.normal(0.5, 0.01, 5)) for _ in range(20)])
    s0, d0 = pooled_variance(alike, M)
    assert d0 >= 30 and 0.5e-4 <= s0 <= 2e-4  # true variance 1e-4
    mixed = as_cases([list(rng.normal(0.5, 0.001, 5)) for _ in range(10)] + [list(rng.normal(0.5, 0.05, 5)) for _ in range(10)])
    s0m, d0m = pooled_variance(mixed, M)
    assert d0m <= 5
    noisy = mixed["c15"]
    own = statistics.variance([r["metrics"][M] for r in noisy["runs"]])
    assert band(noisy, M, (s0m, d0m)).var >= 0.5 * own  # a noisy case keeps most of its own band


def test_a_case_whose_runs_agree_exactly_does_not_move_the_prior():
    """Runs that agree exactly have variance 0 and carry no information about the spread; floating
    rounding (np.var of [0.7, 0.7, 0.7] is 1.8e-32, not 0) must not turn them into log(1e-32)."""
    rng = np.random.default_rng(9)
    others = [list(rng.normal(0.5, 0.01, 5)) for _ in range(19)]
    before = pooled_variance(as_cases(others), M)
    for same in ([0.5] * 5, [0.7] * 3, [0.1] * 3, [0.81] * 5):
        after = pooled_variance(as_cases([*others, same]), M)
        assert after == (pytest.approx(before[0], rel=1e-6), pytest.approx(before[1], rel=1e-6)), same


@given(y=st.lists(UNIT, min_size=1, max_size=6), s0=st.floats(0.0, 0.05), d0=st.sampled_from([0.0, 1.0, 3.7, 20.0, 200.0]),
       x=st.lists(UNIT, min_size=1, max_size=4), alpha=ALPHA, min_effect=st.floats(0.0, 0.1), one_sided=st.booleans())
@settings(max_examples=300, deadline=None)
def test_property_noise_test_matches_the_moderated_t_reference(y, s0, d0, x, alpha, min_effect, one_sided):
    case = {"metrics": {M: statistics.fmean(y)}, "runs": [{"metrics": {M: v}} for v in y]}
    b = band(case, M, (s0, d0))
    ref = ref_band(y, (s0, d0))
    if ref is None:
        assert b is None
        return
    ybar, var, df = ref
    assert (b.mean, b.df, b.k) == (pytest.approx(ybar), df, len(y))
    assert b.var == pytest.approx(var, rel=1e-9, abs=1e-15)
    assume(var > 1e-12)
    delta, se, t, crit, down, up, mde, p = ref_test(x, ybar, var, df, len(y), alpha, min_effect)
    assume(abs(abs(t) - crit) > 1e-6 * max(1.0, crit) and abs(abs(delta) - min_effect) > 1e-9)
    c = judge_noise(M, x, b, alpha, min_effect, one_sided)
    assert c.kind == "noise" and c.name == M
    assert c.delta == pytest.approx(delta, abs=1e-12)
    assert c.se == pytest.approx(se, rel=1e-9)
    assert c.t == pytest.approx(t, rel=1e-6, abs=1e-9)
    assert c.df == df
    assert c.p == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert c.mde == pytest.approx(mde, rel=1e-9)
    assert c.direction == ("down" if down else "up" if up else "")
    assert c.passed == (not down and not (up and not one_sided))
    assert status_of([c]) == ("regression" if down else "changed" if up and not one_sided
                              else "improvement" if up else "pass")


@given(y=st.lists(UNIT, min_size=1, max_size=6), others=st.lists(st.lists(UNIT, min_size=2, max_size=5), max_size=3),
       min_effect=st.floats(0.0, 0.1), alpha=ALPHA, one_sided=st.booleans(), same_order=st.booleans())
@settings(max_examples=200, deadline=None)
def test_property_identical_runs_never_flag(y, others, min_effect, alpha, one_sided, same_order):
    """The run repeats the baseline's runs exactly: nothing moved, whatever the spread."""
    cases = {"c": baseline_case(y)}
    cases.update({f"o{i}": baseline_case(o) for i, o in enumerate(others)})
    runs = [a_run(i, metrics_at(0.5, **{M: v})) for i, v in enumerate(y if same_order else y[::-1])]
    assume(float(np.mean([r["metrics"][M] for r in runs])) == float(np.mean(y)))  # reordering can round
    cfg = gate_cfg(alpha=alpha, metric_tolerance={m: min_effect for m in METRICS},
                   one_sided=(M,) if one_sided else ())
    v = judge_case("c", runs, cases["c"], cases, cfg, IDENTITY)
    # nothing moved; a baseline too weak to judge a primary score is refused (power), not failed
    assert not [c for c in v.failures if c.kind != "power"], v.explain()
    assert v.status == ("incomparable" if v.failures else "pass"), v.explain()


@given(y=st.lists(UNIT, min_size=2, max_size=6), frac=st.floats(0.0, 0.999), min_effect=st.floats(0.001, 0.1),
       alpha=ALPHA)
@settings(max_examples=200, deadline=None)
def test_property_drops_below_the_minimum_effect_never_flag(y, frac, min_effect, alpha):
    """Even with zero spread (an infinitely tight band) a change smaller than the minimum effect passes."""
    b = band(baseline_case(y), M, (0.0, 0.0))
    for x in (b.mean - frac * min_effect, b.mean + frac * min_effect):
        c = judge_noise(M, [x], b, alpha, min_effect, one_sided=False)
        assert c.passed and c.direction == "", c.detail


def test_shrinkage_a_case_whose_runs_agree_gets_the_pooled_band():
    others = [[0.50, 0.52, 0.48, 0.51, 0.49], [0.50, 0.515, 0.49, 0.505, 0.485], [0.49, 0.52, 0.5, 0.51, 0.48]]
    cases = {"c": baseline_case([0.5] * 5), **{f"o{i}": baseline_case(o) for i, o in enumerate(others)}}
    s0, d0 = pooled_variance(cases, M)
    assert s0 > 0 and d0 > 0
    b = band(cases["c"], M, (s0, d0))
    assert b.var == pytest.approx(d0 * s0 / (d0 + 4)) and b.var > 0  # the case's own 4 df say 0
    assert b.df == d0 + 4
    se = math.sqrt(b.var * (1 / 5 + 1))
    crit = stats.t.ppf(1 - 0.001, b.df)
    inside = 0.5 - 0.5 * crit * se  # within the pooled band, beyond the minimum effect
    assert 0.5 - inside > 0.005
    c = judge_noise(M, [inside], b, 0.001, 0.005, False)
    assert c.passed, c.detail
    # without the pool, the case's own zero spread would have flagged the same value
    alone = band(cases["c"], M, (0.0, 0.0))
    assert alone is not None and alone.var == 0.0
    assert not judge_noise(M, [inside], alone, 0.001, 0.005, False).passed
    outside = 0.5 - 1.5 * crit * se
    assert not judge_noise(M, [outside], b, 0.001, 0.005, False).passed


def test_a_single_run_baseline_without_a_pool_has_no_band():
    assert band(baseline_case([0.5]), M, (0.0, 0.0)) is None
    b = band(baseline_case([0.5]), M, (0.0004, 8.0))  # the pool alone gives one
    assert (b.var, b.df, b.k) == (pytest.approx(0.0004), 8.0, 1)


# ---------------------------------------------------------------- Monte Carlo: level and power


@pytest.mark.parametrize("n_cases", [1, 20])
def test_monte_carlo_false_alarm_rate_and_power_at_the_mde(n_cases):
    """Normal runs with a known spread (K = 5 per case; the baseline file holds ``n_cases`` such
    cases): the per-direction false-alarm rate is at most alpha, and a drop equal to the MDE the
    check reports is caught about 80% of the time."""
    rng = np.random.default_rng(20261128 + n_cases)
    alpha, sd, mu, k, trials = 0.01, 0.01, 0.5, 5, 1500
    down = up = caught = 0
    for _ in range(trials):
        cases = as_cases([list(rng.normal(mu, sd, k)) for _ in range(n_cases)])
        b = band(cases["c0"], M, pooled_variance(cases, M))
        c = judge_noise(M, [float(rng.normal(mu, sd))], b, alpha, 0.0, False)
        down += c.direction == "down"
        up += c.direction == "up"
        planted = judge_noise(M, [float(rng.normal(mu, sd)) - c.mde], b, alpha, 0.0, False)
        caught += planted.direction == "down" and not planted.passed
    binom = 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert down / trials <= alpha + binom, f"false alarms (drops) {down / trials:.4f} at alpha {alpha}"
    assert up / trials <= alpha + binom, f"false alarms (rises) {up / trials:.4f} at alpha {alpha}"
    assert down / trials >= alpha / 4  # the test is not blind either
    assert 0.70 <= caught / trials <= 0.90, caught / trials


# ---------------------------------------------------------------- rises, margins, statuses


def _cases_with_spread(value_sets: list[list[float]], metric: str = M, **kw) -> dict:
    return {f"c{i}": baseline_case(v, metric, **kw) for i, v in enumerate(value_sets)}


SPREAD = [[0.50, 0.51, 0.49, 0.505, 0.495]] * 4


def test_a_rise_beyond_the_band_is_changed_unless_one_sided():
    cases = _cases_with_spread(SPREAD)
    runs = [a_run(0, metrics_at(0.5, bert_f1=0.60))]
    v = judge_case("c0", runs, cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "changed" and v.failed
    [f] = v.failures
    assert f.name == M and f.direction == "up" and f.delta == pytest.approx(0.1)
    v = judge_case("c0", runs, cases["c0"], cases, gate_cfg(one_sided=(M,)), IDENTITY)
    assert v.status == "improvement" and not v.failed and not v.failures
    # a drop fails as a regression in both settings
    runs = [a_run(0, metrics_at(0.5, bert_f1=0.40))]
    for cfg in (gate_cfg(), gate_cfg(one_sided=(M,))):
        v = judge_case("c0", runs, cases["c0"], cases, cfg, IDENTITY)
        assert v.status == "regression" and [c.name for c in v.failures] == [M]
        assert "bert_f1: 0.4000 vs 0.5000" in v.explain() and "FAIL" in v.explain()


def test_margins_over_controls_are_one_sided():
    margins = [0.20, 0.21, 0.19, 0.205, 0.195]
    cases = _cases_with_spread(SPREAD, margins=margins)
    name = f"margin:base:{M}"
    grown = [a_run(0, metrics_at(0.5), margins={name: 0.40})]
    v = judge_case("c0", grown, cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "improvement" and not v.failures  # a margin may grow
    [mc] = [c for c in v.checks if c.name == name]
    assert mc.direction == "up" and mc.passed
    shrunk = [a_run(0, metrics_at(0.5), margins={name: 0.05})]
    v = judge_case("c0", shrunk, cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "regression" and [c.name for c in v.failures] == [name]
    small = [a_run(0, metrics_at(0.5), margins={name: 0.2 - 0.5 * DEFAULT_MIN_EFFECT[M]})]
    assert judge_case("c0", small, cases["c0"], cases, gate_cfg(), IDENTITY).status == "pass"


@pytest.mark.parametrize("checks, expected", [
    ([], "pass"),
    ([Check("a", 1, 1, True, "noise")], "pass"),
    ([Check("a", 1, 0, True, "noise", direction="up")], "improvement"),
    ([Check("a", 1, 0, False, "noise", direction="up")], "changed"),
    ([Check("a", 0, 1, False, "noise", direction="down")], "regression"),
    ([Check("a", 1, 0, False, "noise", direction="up"), Check("b", 0, 1, False, "noise", direction="down")],
     "regression"),
    ([Check("steps", 1, 2, False, "invariant")], "changed"),
    ([Check("beats_base:bert_f1", 0.4, 0.5, False, "control")], "regression"),
    ([Check("train_work", 9, 1, False, "time")], "regression"),
    ([Check("peak_mem_mib", 900, 100, False, "memory")], "regression"),
    ([Check("a", 1, 0, True, "noise", direction="up"), Check("steps", 1, 2, False, "invariant")], "changed"),
])
def test_status_of(checks, expected):
    assert status_of(checks) == expected
    assert (expected in gate.FAILING) == bool([c for c in checks if not c.passed])


def test_zero_spread_verdict_is_valid_json():
    """A record (and its verdict) is written with json.dumps(allow_nan=False): a band of zero width
    must not put an infinite t statistic into it."""
    cases = _cases_with_spread([[0.5] * 5] * 3)  # every run of every case agrees: no spread at all
    v = judge_case("c0", [a_run(0, metrics_at(0.5, bert_f1=0.40))], cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "regression"
    json.dumps(v.to_json(), allow_nan=False)


# ---------------------------------------------------------------- controls


def test_paired_bootstrap_ci_properties():
    assert paired_bootstrap_ci(np.full(7, 0.25)) == (0.25, 0.25, 0.25)
    d = np.random.default_rng(3).normal(0.1, 0.3, 50)
    mean, lo, hi = paired_bootstrap_ci(d, seed=5)
    assert mean == pytest.approx(d.mean()) and lo <= mean <= hi
    assert d.min() <= lo and hi <= d.max()
    assert paired_bootstrap_ci(d, seed=5) == (mean, lo, hi)  # seeded: reproducible
    for bad in (np.array([]), np.zeros((2, 3))):
        with pytest.raises(ValueError, match="non-empty 1-d"):
            paired_bootstrap_ci(bad)


def test_control_lower_bound_matches_normal_theory():
    rng = np.random.default_rng(11)
    other = rng.uniform(0.3, 0.6, 400)
    tuned = other + rng.normal(0.03, 0.2, 400)
    c = judge_control(M, "base", list(tuned), list(other), alpha=0.01)
    d = tuned - other
    se = d.std(ddof=1) / math.sqrt(d.size)
    ref_lo = d.mean() - stats.norm.ppf(0.99) * se  # one-sided 99% bound
    assert c.delta == pytest.approx(d.mean())
    assert c.ci[0] == pytest.approx(ref_lo, abs=0.2 * stats.norm.ppf(0.99) * se)
    assert c.passed == (c.ci[0] > 0)


def test_control_beaten_passes_and_a_better_control_fails():
    rng = np.random.default_rng(0)
    other = rng.uniform(0.3, 0.6, 60)
    good = judge_control(M, "base", list(other + 0.05 + rng.normal(0, 0.01, 60)), list(other), 0.01)
    assert good.passed and good.ci[0] > 0 and good.kind == "control" and good.name == "beats_base:bert_f1"
    bad = judge_control(M, "no_question", list(other), list(other + 0.05), 0.01)
    assert not bad.passed and bad.ci[0] < 0
    assert "does not beat the no_question control" in bad.detail
    assert status_of([good, bad]) == "regression"
    tied = judge_control(M, "base", list(other), list(other), 0.01)
    assert not tied.passed  # must beat it, not match it


def test_judge_case_controls_are_judged_per_run_even_without_baseline():
    per = {"ids": ["a", "b", "c", "d"], M: [0.5, 0.6, 0.55, 0.58]}
    worse_base = {"base": {"metrics": {M: 0.3}, "per_example": {M: [0.3, 0.31, 0.29, 0.3]}}}
    better_base = {"base": {"metrics": {M: 0.9}, "per_example": {M: [0.9, 0.9, 0.9, 0.9]}}}
    cfg = GateConfig(require_controls=("base",), require_beats_base=(M,))
    ok = judge_case("c", [a_run(0, metrics_at(0.55), per_example=per, controls=worse_base)], None, {}, cfg, IDENTITY)
    assert ok.status == "no-baseline" and [c.name for c in ok.checks] == ["beats_base:bert_f1"]
    runs = [a_run(0, metrics_at(0.55), per_example=per, controls=worse_base),
            a_run(1, metrics_at(0.55), per_example=per, controls=better_base)]
    bad = judge_case("c", runs, None, {}, cfg, IDENTITY)
    assert bad.status == "regression"
    assert [c.name for c in bad.failures] == ["beats_base:bert_f1@seed1"]


def test_checks_carry_their_metric_control_and_seed():
    """The gate sets what each check judged (metric, control, seed) where it makes it, keeps the
    name's text (``@seed<n>`` for one of several runs), and writes both into the verdict's JSON;
    the fields say what the name always said, so older records are read the same."""
    from medqa_core.results.record import _legacy_fields, check_fields

    per = {"ids": ["a", "b", "c", "d"], M: [0.5, 0.6, 0.55, 0.58], "degenerate": [0.0] * 4}
    worse_base = {"base": {"metrics": {M: 0.3}, "per_example": {M: [0.3, 0.31, 0.29, 0.3]}}}
    cfg = GateConfig(require_controls=("base",), require_beats_base=(M,))
    base = baseline_case([0.50, 0.51, 0.49], margins=[0.2, 0.21, 0.19], invariants={"train_steps": 200})
    runs = [a_run(s, metrics_at(0.5, degenerate=0.0), margins={f"margin:base:{M}": 0.2}, per_example=per,
                  controls=worse_base, invariants={"train_steps": 200}) for s in (3, 4)]
    v = judge_case("c", runs, base, {"c": base}, cfg, IDENTITY)
    got = {c.name: (c.kind, c.metric, c.control, c.seed) for c in v.checks}
    assert got["beats_base:bert_f1@seed3"] == ("control", M, "base", 3)
    assert got["beats_base:bert_f1@seed4"] == ("control", M, "base", 4)
    assert got["max_degenerate@seed4"] == ("ceiling", "degenerate", None, 4)
    assert got[M] == ("noise", M, None, None)
    assert got["use_f1"] == ("noise", "use_f1", None, None)
    assert got[f"margin:base:{M}"] == ("noise", M, "base", None)
    assert got["train_steps@seed3"] == ("invariant", None, None, 3)
    as_json = json.loads(json.dumps(v.to_json()))
    [chk] = [c for c in as_json["checks"] if c["name"] == "beats_base:bert_f1@seed4"]
    assert (chk["metric"], chk["control"], chk["seed"]) == (M, "base", 4)
    for c in as_json["checks"]:
        assert check_fields(c) == _legacy_fields(c["name"], c["kind"]), c["name"]
    one = judge_case("c", runs[:1], None, {}, cfg, IDENTITY)  # one run: no seed in the name nor the field
    assert [(c.name, c.metric, c.control, c.seed) for c in one.checks] == [
        ("beats_base:bert_f1", M, "base", None), ("max_degenerate", "degenerate", None, None)]


# ---------------------------------------------------------------- exact invariants

INV = {"test_ids": "t", "train_rows": 100, "train_rows_digest": "r", "train_test_overlap": 0, "train_steps": 200,
       "tokens_seen": 5000, "trainable_params": 4096, "lora_closed_form": 4096, "generation": {"do_sample": False},
       "prompt_digest": "p", "scorer": {"model": "x"}, "scorer_canary": {"bert_f1[0]": 0.81234, "use_f1[0]": 0.5}}


def test_invariants_identical_pass():
    checks = judge_invariants(dict(INV), {k: v for k, v in INV.items() if k != "lora_closed_form"}, same_seed=True)
    assert all(c.passed and c.kind == "invariant" for c in checks)
    names = [c.name for c in checks]
    assert "tokens_seen" in names and "trainable_params_closed_form" in names and "scorer_canary" in names


@pytest.mark.parametrize("key, value", [("train_steps", 150), ("train_rows", 99), ("train_rows_digest", "other"),
                                        ("test_ids", "u"), ("generation", {"do_sample": True}), ("prompt_digest", "q"),
                                        ("scorer", {"model": "y"})])
def test_invariant_mismatch_fails_with_both_values(key, value):
    cur = {**INV, key: value}
    [c] = [c for c in judge_invariants(cur, INV, True) if c.name == key]
    assert not c.passed and c.value == value and c.baseline == INV[key]
    line = c.line()
    assert "FAIL" in line and str(value)[:20] in line and str(INV[key])[:20] in line
    assert status_of([c]) == "changed"


def test_tokens_seen_only_compared_for_the_same_seed():
    cur = {**INV, "tokens_seen": 4000}
    assert not next(c for c in judge_invariants(cur, INV, same_seed=True) if c.name == "tokens_seen").passed
    assert "tokens_seen" not in [c.name for c in judge_invariants(cur, INV, same_seed=False)]


@pytest.mark.parametrize("shift, ok", [(0.0, True), (5e-5, True), (-9e-5, True), (2e-4, False), (-1e-3, False)])
def test_scorer_canary_tolerance(shift, ok):
    cur = {**INV, "scorer_canary": {**INV["scorer_canary"], "bert_f1[0]": INV["scorer_canary"]["bert_f1[0]"] + shift}}
    [c] = [c for c in judge_invariants(cur, INV, True) if c.name == "scorer_canary"]
    assert c.passed == ok


def test_scorer_canary_with_other_pairs_fails():
    cur = {**INV, "scorer_canary": {"bert_f1[0]": 0.81234}}
    [c] = [c for c in judge_invariants(cur, INV, True) if c.name == "scorer_canary"]
    assert not c.passed


def test_train_test_overlap_fails_even_without_a_baseline():
    [c] = [c for c in judge_invariants({"train_test_overlap": 3}, {}, False)]
    assert not c.passed and c.value == 3 and "test rows seen in training" in c.detail
    [c] = [c for c in judge_invariants({"train_test_overlap": 0}, {}, False)]
    assert c.passed


def test_trainable_params_against_the_closed_form():
    checks = judge_invariants({"trainable_params": 4100, "lora_closed_form": 4096}, {}, False)
    [c] = checks
    assert c.name == "trainable_params_closed_form" and not c.passed and (c.value, c.baseline) == (4100, 4096)
    assert judge_invariants({"trainable_params": 4096, "lora_closed_form": None}, {}, False) == []


def test_judge_case_invariants_and_tokens_per_seed():
    base = baseline_case([0.50, 0.51, 0.49], seeds=[0, 1, 2], tokens=[5000, 5100, 5200],
                         invariants={k: v for k, v in INV.items() if k not in ("tokens_seen", "lora_closed_form")})
    cases = {"c": base}
    inv = {**INV, "tokens_seen": 5100}
    v = judge_case("c", [a_run(1, metrics_at(0.5), invariants=inv)], base, cases, gate_cfg(), IDENTITY)
    assert v.status == "pass", v.explain()
    v = judge_case("c", [a_run(0, metrics_at(0.5), invariants=inv)], base, cases, gate_cfg(), IDENTITY)
    assert v.status == "changed" and [c.name for c in v.failures] == ["tokens_seen"]  # seed 0 saw 5000
    v = judge_case("c", [a_run(9, metrics_at(0.5), invariants=inv)], base, cases, gate_cfg(), IDENTITY)
    assert v.status == "pass" and "tokens_seen" not in [c.name for c in v.checks]  # a seed the baseline lacks
    bad = {**inv, "train_steps": 199}
    v = judge_case("c", [a_run(1, metrics_at(0.5), invariants=bad)], base, cases, gate_cfg(), IDENTITY)
    assert v.status == "changed" and "train_steps: 199 vs baseline 200" in v.explain()


def test_judge_case_an_invariant_broken_in_a_later_run_fails():
    """Every run is checked, not only the first: the second run leaking test rows must fail the case."""
    base = baseline_case([0.50, 0.51, 0.49], invariants={"train_steps": 200})
    cases = {"c": base}
    runs = [a_run(0, metrics_at(0.5), invariants={"train_steps": 200, "train_test_overlap": 0}),
            a_run(1, metrics_at(0.5), invariants={"train_steps": 150, "train_test_overlap": 4})]
    v = judge_case("c", runs, base, cases, gate_cfg(), IDENTITY)
    assert v.failed, v.explain()
    failing = " ".join(c.name for c in v.failures)
    assert "train_steps" in failing and "train_test_overlap" in failing


def test_judge_ratio_limit():
    c = judge_ratio("train_work", 2.9, 1.0, 3.0, 0.0, "time")
    assert c.passed and c.limit == pytest.approx(3.0)
    c = judge_ratio("peak_mem_mib", 350.0, 100.0, 1.5, 256.0, "memory", " MiB")
    assert c.passed and c.limit == pytest.approx(356.0) and "356 MiB" in c.detail
    assert not judge_ratio("peak_mem_mib", 357.0, 100.0, 1.5, 256.0, "memory").passed
    c = judge_ratio("peak_mem_mib", 400.0, 1000.0, 1.5, 256.0, "memory")
    assert c.limit == pytest.approx(1500.0)
    assert not judge_ratio("train_work", 3.1, 1.0, 3.0, 0.0, "time").passed


def test_judge_case_resources_same_device_only():
    base = baseline_case([0.50, 0.51, 0.49])
    res = {"train_work": 1.0, "peak_mem_mib": 100.0, "device": "cpu"}
    slow = a_run(0, metrics_at(0.5), resources={"train_work": 3.5, "peak_mem_mib": 100.0, "device": "cpu"})
    v = judge_case("c", [slow], base, {"c": base}, gate_cfg(time_factor=3.0), IDENTITY, res)
    assert v.status == "regression" and [c.name for c in v.failures] == ["train_work"]
    gpu = a_run(0, metrics_at(0.5), resources={"train_work": 35.0, "peak_mem_mib": 9e4, "device": "cuda"})
    assert judge_case("c", [gpu], base, {"c": base}, gate_cfg(), IDENTITY, res).status == "pass"


# ---------------------------------------------------------------- identity, no baseline, schema 1


def test_identity_mismatch_names_what_differs():
    assert identity_mismatch(IDENTITY, None) == ""
    assert identity_mismatch(IDENTITY, dict(IDENTITY)) == ""
    assert identity_mismatch(IDENTITY, {"data": "rows-fp"}) == ""  # keys the baseline lacks are not compared
    assert identity_mismatch(IDENTITY, {**IDENTITY, "profile": "other", "hardware_class": "gpu"}) == ""  # informational
    why = identity_mismatch({**IDENTITY, "data": "new-rows"}, {**IDENTITY, "scorer": "old-scorer"})
    assert "data" in why and "rows-fp -> new-rows" in why
    assert "scorer" in why and "old-scorer -> scorer-fp" in why
    assert "test set" not in why and "\n" not in why


def test_judge_case_without_baseline():
    v = judge_case("llama-x", [a_run(0, metrics_at(0.5))], None, {}, gate_cfg(), IDENTITY)
    assert v.status == "no-baseline" and v.checks == [] and not v.failed
    assert v.explain().startswith("llama-x: no-baseline")


def test_judge_case_identity_mismatch_is_incomparable_with_a_one_line_note():
    base = baseline_case([0.5, 0.51, 0.49])
    base["identity"]["test_ids"] = "old-test-fp"
    runs = [a_run(0, metrics_at(0.1))]  # a huge drop, but on another test set: no verdict
    v = judge_case("c", runs, base, {"c": base}, gate_cfg(), IDENTITY)
    assert v.status == "incomparable" and not v.failed
    assert "\n" not in v.note and "test set old-test-fp -> test-fp" in v.note and "--update-baselines" in v.note
    assert not [c for c in v.checks if c.kind == "noise"]


def test_schema_1_case_without_runs_uses_the_run_bootstrap_ci():
    base = {"metrics": metrics_at(0.5)}  # paper.json: aggregates only
    cases = {"c": base}
    cfg = gate_cfg(metric_tolerance={m: 0.05 for m in METRICS})
    per = {"ids": [f"q{i}" for i in range(20)], **{m: [0.5] * 20 for m in METRICS}}

    def judge(values):
        run = a_run(0, metrics_at(0.5, bert_f1=float(np.mean(values))), per_example={**per, M: values})
        return judge_case("c", [run], base, cases, cfg, IDENTITY)

    v = judge([0.30] * 20)  # whole CI below 0.5 - 0.05
    assert v.status == "regression"
    [f] = v.failures
    assert f.name == M and f.ci == (pytest.approx(0.3), pytest.approx(0.3)) and "no run spread recorded" in f.detail
    assert judge([0.40, 0.50] * 10).status == "pass"  # mean 0.45, but the CI reaches above 0.45
    v = judge([0.44, 0.46] * 10)  # mean 0.45 = the limit: the CI (about +-0.0045) straddles it
    [c] = [c for c in v.checks if c.name == M]
    lo, hi = c.ci
    assert lo <= 0.45 <= hi and c.passed
    assert judge([0.5] * 20).status == "pass"
    # CI of the fallback against normal theory
    rng = np.random.default_rng(2)
    vals = list(rng.uniform(0.2, 0.8, 400))
    [c] = [c for c in judge(vals).checks if c.name == M]
    se = np.std(vals, ddof=1) / math.sqrt(len(vals))
    assert c.ci[1] - c.ci[0] == pytest.approx(2 * stats.norm.ppf(0.975) * se, rel=0.15)


def test_schema_1_case_with_a_pool_from_other_cases_gets_a_band():
    cases = {"old": {"metrics": metrics_at(0.5)}, **_cases_with_spread(SPREAD)}
    v = judge_case("old", [a_run(0, metrics_at(0.5))], cases["old"], cases, gate_cfg(), IDENTITY)
    [c] = [c for c in v.checks if c.name == M]
    assert c.df == pooled_variance(cases, M)[1] > 0 and "K=1" in c.detail and c.se > 0


# ---------------------------------------------------------------- aggregates (Stouffer)


def _noise_record(model: str, case_id: str, drop: float, cases: dict, cfg: GateConfig) -> dict:
    base = cases[case_id]
    v = judge_case(case_id, [a_run(0, metrics_at(0.5, bert_f1=base["metrics"][M] - drop))], base, cases, cfg, IDENTITY)
    return {"case_id": case_id, "model": model, "verdict": v.to_json(), "_verdict": v}


def test_aggregate_z_and_mde_match_scipy_stouffer():
    rng = np.random.default_rng(4)
    checks = []
    for _ in range(12):
        b = Band(0.5, float(rng.uniform(1e-5, 4e-4)), float(rng.integers(4, 12)), int(rng.integers(2, 6)))
        checks.append(judge_noise(M, [0.5 + float(rng.normal(-0.004, 0.01))], b, 0.001, 0.02, False))
    a = aggregate("suite", M, checks, 0.001, 0.005, False)
    p_upper = [stats.t.sf(c.t, c.df) for c in checks]
    ref = stats.combine_pvalues(p_upper, method="stouffer")
    assert a.z == pytest.approx(ref.statistic, rel=1e-6)
    assert a.n == 12 and a.mean_delta == pytest.approx(np.mean([c.delta for c in checks]))
    z = stats.norm.ppf(0.999) + stats.norm.ppf(0.8)
    assert a.mde == pytest.approx(max(0.005, z * math.sqrt(12) / sum(1 / c.se for c in checks)))
    assert a.passed == (not (a.z < -stats.norm.ppf(0.999) and a.mean_delta < -0.005))


def test_uniform_small_drop_over_20_cases_is_caught_at_suite_level_only():
    sets = [[0.50, 0.51, 0.49, 0.505, 0.495]] * 20  # sd 0.0079 per run
    models = ["llama", "phi"]
    ids = [f"{models[i % 2]}-d{i}" for i in range(20)]
    cases = {cid: baseline_case(v) for cid, v in zip(ids, sets)}
    cfg = gate_cfg()  # min effect 0.02, aggregate 0.005, alpha 0.001
    drop = 0.015  # below the case minimum effect, above the aggregate one
    recs = [_noise_record(cid.split("-")[0], cid, drop, cases, cfg) for cid in ids]
    assert all(r["_verdict"].status == "pass" for r in recs), [r["_verdict"].explain() for r in recs]
    aggs = aggregates([{k: v for k, v in r.items() if k != "_verdict"} for r in recs], cfg)
    by = {(a.scope, a.metric): a for a in aggs}
    suite = by[("suite", M)]
    assert not suite.passed and suite.direction == "down" and suite.n == 20
    assert suite.mean_delta == pytest.approx(-drop)
    for fam in models:
        f = by[(f"family {fam}", M)]
        assert f.n == 10 and not f.passed
    assert all(a.passed for a in aggs if a.metric != M)  # nothing else moved
    # the same drop on 2 cases is not enough
    few = aggregates([{k: v for k, v in r.items() if k != "_verdict"} for r in recs[:2]], cfg)
    assert all(a.passed for a in few)


def test_aggregates_respect_one_sided_and_the_aggregate_min_effect():
    ids = [f"{m}-d{i}" for i in range(10) for m in ("llama", "phi")]
    cases = {cid: baseline_case([0.50, 0.51, 0.49, 0.505, 0.495]) for cid in ids}
    rise = [_noise_record(c.split("-")[0], c, -0.015, cases, gate_cfg()) for c in ids]
    strip = [{k: v for k, v in r.items() if k != "_verdict"} for r in rise]
    suite = next(a for a in aggregates(strip, gate_cfg()) if a.scope == "suite" and a.metric == M)
    assert not suite.passed and suite.direction == "up"  # two-sided: a uniform rise is a change
    suite = next(a for a in aggregates(strip, gate_cfg(one_sided=(M,))) if a.scope == "suite" and a.metric == M)
    assert suite.passed and suite.direction == "up"
    tight = {cid: baseline_case([0.5, 0.501, 0.499, 0.5005, 0.4995]) for cid in ids}  # 10x smaller spread
    tiny = [_noise_record(c.split("-")[0], c, 0.004, tight, gate_cfg()) for c in ids]
    assert all(r["_verdict"].status == "pass" for r in tiny)
    strip = [{k: v for k, v in r.items() if k != "_verdict"} for r in tiny]
    suite = next(a for a in aggregates(strip, gate_cfg()) if a.scope == "suite" and a.metric == M)
    assert suite.z < -10  # very significant ...
    assert suite.passed  # ... but below aggregate_min_effect_factor x 0.02 = 0.005


def test_aggregates_one_family_has_no_separate_suite_entry():
    ids = [f"llama-d{i}" for i in range(3)]
    cases = {cid: baseline_case([0.50, 0.51, 0.49]) for cid in ids}
    recs = [_noise_record("llama", c, 0.0, cases, gate_cfg()) for c in ids]
    aggs = aggregates([{k: v for k, v in r.items() if k != "_verdict"} for r in recs], gate_cfg())
    assert {a.scope for a in aggs} == {"family llama"}


# ---------------------------------------------------------------- degenerate: gated, lower is better

D = "degenerate"
#: looping shares of K = 5 baseline runs per case (4 cases, so the variance prior is fitted)
LOOP_SPREAD = [[0.02, 0.025, 0.015, 0.02, 0.02]] * 4


def _loop_run(share: float, n: int = 100, seed: int = 0) -> dict:
    """A run whose tuned answers loop in ``round(share * n)`` of ``n`` answers (scores unchanged)."""
    k = round(share * n)
    flags = [1.0] * k + [0.0] * (n - k)
    run = a_run(seed, metrics_at(0.5, **{D: k / n}))
    run["per_example"] = {"ids": [f"q{i}" for i in range(n)], **{m: [0.5] * n for m in METRICS}, D: flags}
    return run


def _gate_with(**over):
    """A gate config with attributes GateConfig does not have yet (``max_degenerate``)."""
    from dataclasses import asdict
    from types import SimpleNamespace

    return SimpleNamespace(**{**asdict(gate_cfg()), **over})


def test_degenerate_is_gated_lower_is_better_with_its_min_effect():
    from medqa_core.metrics import registry

    assert D in gate.GATED and DEFAULT_MIN_EFFECT[D] == 0.05 and not registry.higher_is_better(D)
    assert gate.worse_way(D) == "up" and gate.worse_way(M) == "down" and gate.worse_way(f"margin:base:{M}") == "down"
    assert 0 < DEFAULT_MIN_EFFECT[D] < gate.MAX_DEGENERATE == 0.10


def test_degenerate_rise_beyond_band_is_a_regression_naming_degenerate_up():
    cases = _cases_with_spread(LOOP_SPREAD, D)
    v = judge_case("c0", [_loop_run(0.09)], cases["c0"], cases, gate_cfg(), IDENTITY)  # +0.07, below the ceiling
    assert v.status == "regression" and v.failed, v.explain()
    [f] = v.failures
    assert f.name == D and f.kind == "noise" and f.direction == "up" and f.delta == pytest.approx(0.07)
    head = v.explain().splitlines()[0]
    assert head.startswith("c0: regression: degenerate up +0.0700 beyond band"), head
    assert "--update-baselines" not in gate.next_step(v.status)  # never bless a looping model
    # beside a score that rose beyond its band (changed on its own), the loop rise still decides
    run = _loop_run(0.09)
    run["metrics"][M] = 0.6
    both = {**cases, "c0": {**cases["c0"]}}
    for r in both["c0"]["runs"]:
        r["metrics"][M] = 0.5 + 0.005 * (r["seed"] % 2)
    v = judge_case("c0", [run], both["c0"], both, gate_cfg(), IDENTITY)
    assert v.status == "regression"
    head = v.explain().splitlines()[0]
    assert head.index("degenerate up") < head.index(f"{M} up"), head  # the worse move first


def test_degenerate_fall_beyond_band_is_changed_two_sided_unless_one_sided():
    cases = _cases_with_spread([[0.09, 0.085, 0.095, 0.09, 0.09]] * 4, D)
    v = judge_case("c0", [_loop_run(0.0)], cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "changed" and v.failed, v.explain()
    [f] = v.failures
    assert f.name == D and f.direction == "down" and f.delta == pytest.approx(-0.09)
    assert "degenerate down -0.0900 beyond band" in v.explain().splitlines()[0]
    # one_sided lets the better way (fewer loops) through, never a rise
    v = judge_case("c0", [_loop_run(0.0)], cases["c0"], cases, gate_cfg(one_sided=(D,)), IDENTITY)
    assert v.status == "improvement" and not v.failures
    low = _cases_with_spread(LOOP_SPREAD, D)
    v = judge_case("c0", [_loop_run(0.09)], low["c0"], low, gate_cfg(one_sided=(D,)), IDENTITY)
    assert v.status == "regression"


def test_degenerate_within_band_passes_and_is_named_beside_a_changed_verdict():
    cases = _cases_with_spread(LOOP_SPREAD, D)
    for share in (0.02, 0.0, 0.05):  # +0.03 (under the min effect), -0.02, +0.03
        v = judge_case("c0", [_loop_run(share)], cases["c0"], cases, gate_cfg(), IDENTITY)
        assert v.status == "pass", v.explain()
        [c] = [c for c in v.checks if c.name == D]
        assert c.passed and c.direction == "" and c.kind == "noise"
    # a verdict made by a score rising lists the within-band rise in loops (the worse way), not a fall
    run = _loop_run(0.05)
    run["metrics"][M] = 0.6
    v = judge_case("c0", [run], cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "changed"
    assert "degenerate up +0.0300 (within band)" in v.explain().splitlines()[0], v.explain()


def test_degenerate_zero_spread_baseline_is_guarded_by_the_min_effect():
    """Clean tiny runs loop in no answer at all: every baseline run 0.0, no variance anywhere.
    The band has zero width; the minimum effect alone keeps a run with a few loops passing."""
    cases = _cases_with_spread([[0.0] * 5] * 4, D)
    assert judge_case("c0", [_loop_run(0.04)], cases["c0"], cases, gate_cfg(), IDENTITY).status == "pass"
    v = judge_case("c0", [_loop_run(0.08)], cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "regression" and [c.name for c in v.failures] == [D]
    json.dumps(v.to_json(), allow_nan=False)


def test_degenerate_ceiling_fails_a_recording_with_one_line_naming_the_share():
    v = judge_case("c0", [_loop_run(0.25)], None, {}, gate_cfg(), IDENTITY)  # recording: no baseline
    assert v.status == "regression" and v.failed
    [f] = v.failures
    assert f.name == "max_degenerate" and f.kind == "ceiling" and f.value == pytest.approx(0.25)
    lines = [ln for ln in v.explain().splitlines() if "[FAIL]" in ln]
    assert lines == ["  [FAIL] max_degenerate: 25.0% of tuned answers degenerate (25 of 100), at or above the "
                     "ceiling 10% ([gate] max_degenerate): the model loops (a word 4-gram 3+ times in one answer)"]
    assert "max_degenerate 25.0% >= 10%" in v.explain().splitlines()[0]
    # the ceiling is inclusive; below it a recording passes (no-baseline)
    assert judge_case("c0", [_loop_run(0.10)], None, {}, gate_cfg(), IDENTITY).status == "regression"
    ok = judge_case("c0", [_loop_run(0.09)], None, {}, gate_cfg(), IDENTITY)
    assert ok.status == "no-baseline" and not ok.failed
    [c] = ok.checks
    assert c.passed and "below the ceiling 10%" in c.detail
    # one looping seed of K fails the recording and is named
    v = judge_case("c0", [_loop_run(0.0, seed=0), _loop_run(1.0, seed=101)], None, {}, gate_cfg(), IDENTITY)
    assert v.status == "regression" and [c.name for c in v.failures] == ["max_degenerate@seed101"]


def test_degenerate_ceiling_against_a_baseline_override_and_off():
    cases = _cases_with_spread([[0.2, 0.21, 0.19, 0.2, 0.2]] * 4, D)  # a baseline that already looped
    v = judge_case("c0", [_loop_run(0.2)], cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "regression" and [c.name for c in v.failures] == ["max_degenerate"]  # noise: unchanged
    assert judge_case("c0", [_loop_run(0.2)], cases["c0"], cases, _gate_with(max_degenerate=0.3), IDENTITY).status == "pass"
    v = judge_case("c0", [_loop_run(0.2)], cases["c0"], cases, _gate_with(max_degenerate=None), IDENTITY)
    assert v.status == "pass" and not [c for c in v.checks if c.kind == "ceiling"]
    # an incomparable baseline cannot judge the scores, but a looping model still fails
    other = {**cases["c0"], "identity": {**IDENTITY, "test_ids": "old"}}
    v = judge_case("c0", [_loop_run(0.5)], other, cases, gate_cfg(), IDENTITY)
    assert v.status == "regression" and "test set old -> test-fp" in v.note
    assert judge_case("c0", [_loop_run(0.0)], other, cases, gate_cfg(), IDENTITY).status == "incomparable"


def test_degenerate_old_baseline_without_the_metric_is_skipped():
    cases = _cases_with_spread(SPREAD)  # runs and metrics recorded before `degenerate` existed
    assert all(D not in r["metrics"] for c in cases.values() for r in c["runs"]) and D not in cases["c0"]["metrics"]
    v = judge_case("c0", [_loop_run(0.05)], cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "pass" and not [c for c in v.checks if c.name == D]
    assert [c.name for c in v.checks if c.kind == "ceiling"] == ["max_degenerate"]  # the ceiling still judges
    # and a run recorded before the metric, against a baseline that has it: nothing to judge either
    loops = _cases_with_spread(LOOP_SPREAD, D)
    v = judge_case("c0", [a_run(0, metrics_at(0.5))], loops["c0"], loops, gate_cfg(), IDENTITY)
    assert v.status == "pass" and not [c for c in v.checks if D in c.name]
    # a paper.json-like baseline (aggregates only) that has the share: the run's CI, the worse way up
    base = {"metrics": metrics_at(0.5, **{D: 0.0})}
    v = judge_case("c", [_loop_run(0.09, n=400)], base, {"c": base}, gate_cfg(), IDENTITY)
    [c] = [c for c in v.checks if c.name == D]
    assert not c.passed and c.direction == "up" and c.ci[0] > 0.05 and v.status == "regression"
    assert judge_case("c", [_loop_run(0.03)], base, {"c": base}, gate_cfg(), IDENTITY).status == "pass"


def test_degenerate_aggregates_fail_a_uniform_rise_as_worse():
    ids = [f"{m}-d{i}" for i in range(10) for m in ("llama", "phi")]
    cases = {cid: baseline_case([0.02, 0.025, 0.015, 0.02, 0.02], D) for cid in ids}
    recs = []
    for cid in ids:  # +0.025 in every case: under the case minimum effect, over the aggregate one
        v = judge_case(cid, [_loop_run(0.045)], cases[cid], cases, gate_cfg(), IDENTITY)
        assert v.status == "pass"
        recs.append({"case_id": cid, "model": cid.split("-")[0], "verdict": v.to_json()})
    suite = next(a for a in aggregates(recs, gate_cfg(one_sided=(D,))) if a.scope == "suite" and a.metric == D)
    assert not suite.passed and suite.direction == "up"  # one_sided allows a fall, never a rise
    b = Band(0.02, 1e-5, 8, 5)
    falls = [judge_noise(D, [0.0], b, 0.001, 0.005, True, higher_is_better=False) for _ in range(6)]
    assert all(c.passed and c.direction == "down" for c in falls)
    a = aggregate("suite", D, falls, 0.001, 0.005, True, higher_is_better=False)
    assert a.passed and a.direction == "down"
    assert not aggregate("suite", D, falls, 0.001, 0.005, False, higher_is_better=False).passed


@pytest.mark.parametrize("checks, expected", [
    ([Check(D, 0.3, 0.0, False, "noise", direction="up")], "regression"),
    ([Check(D, 0.0, 0.3, False, "noise", direction="down")], "changed"),
    ([Check(D, 0.0, 0.3, True, "noise", direction="down")], "improvement"),
    ([Check(D, 0.3, 0.0, False, "noise", delta=0.3)], "regression"),  # an older record without a direction
    ([Check(D, 0.0, 0.3, False, "noise", delta=-0.3)], "changed"),
    ([Check("max_degenerate", 0.5, 0.1, False, "ceiling")], "regression"),
    ([Check(D, 0.0, 0.3, False, "noise", direction="down"), Check(M, 0.4, 0.5, False, "noise", direction="down")],
     "regression"),
])
def test_status_of_reads_the_direction_from_the_registry(checks, expected):
    assert status_of(checks) == expected


# ---------------------------------------------------------------- --seeds


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    p = tmp_path_factory.mktemp("prof") / "p.toml"
    p.write_text(MINIMAL_PROFILE + "\n[train]\nseed = 5\n\n[gate]\nbaseline_seeds = 3\n")
    return load_profile(p)


def test_parse_seeds(profile):
    assert parse_seeds("5", profile, False) == [5, 6, 7, 8, 9]
    assert parse_seeds("1", profile, True) == [5]
    assert parse_seeds("0,101-104", profile, False) == [0, 101, 102, 103, 104]
    assert parse_seeds(" 7 , 3 ", profile, False) == [7, 3]
    assert parse_seeds(None, profile, False) == [5]
    assert parse_seeds("", profile, False) == [5]
    assert parse_seeds(None, profile, True) == [5, 6, 7]


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5", "1,1", "3-1", ",", "0,0-2", "1,,2"])
def test_parse_seeds_rejects(profile, text):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text, profile, False)


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=8, unique=True))
@settings(max_examples=60, deadline=None)
def test_property_parse_seeds_list_round_trips(profile, seeds):
    # (a single number is a count K, not a seed: a list needs two entries or a range)
    assert parse_seeds(",".join(map(str, seeds)), profile, False) == seeds
    assert parse_seeds(f"{seeds[0]}-{seeds[0] + 2}", profile, False) == [seeds[0], seeds[0] + 1, seeds[0] + 2]


# ---------------------------------------------------------------- --set


def test_with_overrides_applies_typed_values(profile):
    new = with_overrides(profile, ["train.seed=3", "train.learning_rate=1e-3", "generation.max_new_tokens=8",
                                   "split.test_size=7"])
    assert new.train.seed == 3 and new.train.learning_rate == 1e-3
    assert new.generation.max_new_tokens == 8 and new.split.test_size == 7
    assert new.train.steps == profile.train.steps and profile.train.seed == 5  # original unchanged
    assert with_overrides(profile, []) == profile


@pytest.mark.parametrize("text, fragments", [
    ("gate.alpha=0.1", ["'gate.alpha=0.1'", "SECTION"]),
    ("bogus.x=1", ["bogus"]),
    ("train.stepz=3", ["[train]", "'stepz'", "steps"]),
    ("pretrain.steps=3", ["[pretrain]", "'steps'"]),  # this profile has no [pretrain]
    ("train.seed", ["SECTION.KEY=VALUE"]),
    ("seed=3", ["SECTION.KEY=VALUE"]),
    ("train.optimizer=adamw torch", ["not TOML"]),
    ("train.steps=", ["not TOML"]),
    ("train.steps='many'", ["steps", "integer"]),
    ("train.steps=0", ["steps", "> 0"]),
    ("train.learning_rate=nan", ["learning_rate", "finite"]),
])
def test_with_overrides_errors_name_the_problem(profile, text, fragments):
    with pytest.raises(MedQAError) as info:
        with_overrides(profile, [text])
    assert isinstance(info.value, ConfigError)
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


@pytest.mark.parametrize("text, key", [("train.trainer='nope'", "trainer"), ("train.quantization='int3'", "quantization")])
def test_with_overrides_validates_like_a_profile_file(profile, text, key):
    """--set must not let through what the same value in the profile file is refused for."""
    with pytest.raises(ConfigError, match=key):
        with_overrides(profile, [text])


def test_shipped_tiny_profile_gate_fields():
    tiny = load_profile(Path(__file__).resolve().parents[2] / "profiles" / "tiny.toml")
    g = tiny.gate
    assert 0 < g.alpha < 0.5 and 0 < g.aggregate_alpha < 0.5 and 0 < g.control_alpha < 0.5
    assert g.baseline_seeds >= 2  # a band needs a spread
    assert set(g.controls) <= {"base", "no_question", "shuffled"}


def test_a_measured_prior_gives_a_single_case_a_band_that_can_fail():
    """One case, K = 2: alone its band rests on 1 df (t = 637 at alpha 0.0005) and a -0.1 drop
    passes; the profile's measured prior (prior_sd, prior_df) narrows it so the drop fails. The
    prior is used only where it is stronger than the baseline's own pool, and never for margins."""
    from medqa_core.specs import GateConfig

    case = {"runs": [{"metrics": {"bert_f1": 0.50}}, {"metrics": {"bert_f1": 0.51}}]}
    alone = GateConfig(alpha=0.0005)
    primed = GateConfig(alpha=0.0005, prior_sd={"bert_f1": 0.01}, prior_df=8.0)
    assert gate.variance_prior({"c": case}, "bert_f1", alone)[1] == 0.0  # one case: no pool
    assert gate.variance_prior({"c": case}, "bert_f1", primed) == pytest.approx((1e-4, 8.0))
    assert gate.variance_prior({"c": case}, "margin:base:bert_f1", primed)[1] == 0.0
    for cfg, fails in ((alone, False), (primed, True)):
        b = gate.band(case, "bert_f1", gate.variance_prior({"c": case}, "bert_f1", cfg))
        check = gate.judge_noise("bert_f1", [0.405], b, cfg.alpha, 0.02, False)
        assert check.passed is not fails and b.df == (9 if fails else 1)
    # a baseline with a stronger pool of its own keeps it
    many = {f"c{i}": {"runs": [{"metrics": {"bert_f1": 0.5 + 0.01 * ((i + j) % 3)}} for j in range(5)]}
            for i in range(10)}
    pooled = gate.pooled_variance(many, "bert_f1")
    if pooled[1] > 8:
        assert gate.variance_prior(many, "bert_f1", primed) == pooled


def test_a_check_that_cannot_fail_is_refused_with_one_line():
    """K = 2 and no prior: bert_f1's pass threshold lies below 0, so no score could fail it; the
    case is not passed but refused (status incomparable) with a line saying what to do."""
    from medqa_core.specs import GateConfig

    per = [0.5, 0.4, 0.6]
    runs = [{"seed": s, "metrics": {"bert_f1": v, "use_f1": v}, "per_example": {"bert_f1": per, "use_f1": per}}
            for s, v in ((0, 0.50), (1, 0.53))]
    case = {"metrics": {"bert_f1": 0.515, "use_f1": 0.515}, "runs": runs}
    run = [{**runs[0], "seed": 0}]
    alone = gate.judge_case("c", run, case, {"c": case}, GateConfig(alpha=0.0005, require_controls=()), {})
    lines = [ln for ln in alone.explain().splitlines() if "[FAIL] power:bert_f1" in ln]
    assert alone.status == "incomparable" and len(lines) == 1 and "prior_sd" in lines[0]
    power = {c.name: (c.metric, c.control, c.seed) for c in alone.checks if c.kind == "power"}
    assert power["power:bert_f1"] == ("bert_f1", None, None)
    primed = gate.judge_case("c", run, case, {"c": case},
                             GateConfig(alpha=0.0005, require_controls=(), prior_sd={"bert_f1": 0.01, "use_f1": 0.01},
                                        prior_df=8.0), {})
    assert primed.status == "pass" and not any(c.kind == "power" for c in primed.checks)


def test_time_on_a_busy_machine_is_unjudged_never_a_regression():
    """A time check whose stage ran while other processes kept the cores busy is reported as
    unjudged (passed, saying why); on a quiet machine the same 3x slower stage fails."""
    from medqa_core.resources import BUSY_LIMIT
    from medqa_core.specs import GateConfig

    base = {"metrics": {"bert_f1": 0.5}, "runs": [{"seed": 0, "metrics": {"bert_f1": 0.5}}]}
    res = {"device": "cpu", "train_work": 10.0}
    cfg = GateConfig(require_controls=(), time_factor=2.0)

    def verdict(busy: float) -> gate.Verdict:
        run = {"seed": 0, "metrics": {"bert_f1": 0.5},
               "resources": {"device": "cpu", "train_work": 30.0, "train_busy": busy}}
        return gate.judge_case("c", [run], base, {"c": base}, cfg, {}, res)

    quiet = verdict(0.02)
    assert [c.name for c in quiet.failures] == ["train_work"] and quiet.status == "regression"
    busy = verdict(BUSY_LIMIT + 0.3)
    check = next(c for c in busy.checks if c.name == "train_work")
    assert check.passed and "unjudged: machine busy" in check.detail and f"{100 * (BUSY_LIMIT + 0.3):.0f}%" in check.detail
    assert not any(c.kind == "time" for c in busy.failures)


def test_machine_busy_counts_other_processes_only():
    from medqa_core.resources import machine_busy

    # 10 s wall; the machine's cores were busy 14 CPU s, 6 of them ours: 8 s of others' work
    share = machine_busy((100.0, {1: 5.0, 2: 1.0}), (114.0, {1: 9.0, 2: 3.0, 3: 7.0}), 10.0)
    import psutil

    assert share == pytest.approx(min(1.0, 8.0 / (10.0 * psutil.cpu_count())), abs=1e-3)
    assert machine_busy((0.0, {}), (1.0, {}), 0.0) == 0.0


def test_resources_are_compared_like_with_like():
    """Memory against the baseline's first run (a K-run mean in one process reads low), work
    against the median of the runs that built the stage, and a cached stage says it was not measured."""
    from medqa_core.specs import GateConfig

    runs = [{"seed": s, "metrics": {"bert_f1": 0.5}, "resources": r} for s, r in enumerate(
        ({"peak_mem_mib": 150.0, "train_work": 10.0}, {"peak_mem_mib": 30.0, "train_work": 12.0},
         {"peak_mem_mib": 20.0, "train_work": 11.0}))]
    case = {"metrics": {"bert_f1": 0.5}, "runs": runs,
            "resources": {"device": "cpu", "peak_mem_mib": 66.7, "train_work": 11.0}}
    assert gate.like_for_like(case["resources"], case) == {"device": "cpu", "peak_mem_mib": 150.0, "train_work": 11.0}
    hw = {"device": "cpu", "peak_mem_mib": 66.7}  # a hardware-class file's numbers are used as they are
    assert gate.like_for_like(hw, case) is hw
    cfg = GateConfig(require_controls=(), memory_factor=1.5, memory_slack_mib=0.0)
    fresh = {"seed": 0, "metrics": {"bert_f1": 0.5}, "resources": {"device": "cpu", "peak_mem_mib": 160.0}}
    v = gate.judge_case("c", [fresh], case, {"c": case}, cfg, {}, case["resources"])
    mem = next(c for c in v.checks if c.name == "peak_mem_mib")
    assert mem.passed and mem.baseline == 150.0 and "first run" in mem.detail  # x2.4 of the mean, x1.07 like for like
    cached = next(c for c in v.checks if c.name == "train_work")
    assert cached.passed and cached.value == "cached" and "not measured" in cached.detail


def test_a_band_from_overflowing_runs_is_an_error_not_a_pass():
    """Runs at 1e308 overflow the variance to inf, and an infinite band passed any drop."""
    from medqa_core.errors import BaselineError
    from medqa_core.gate import band

    case = {"case_id": "x", "runs": [{"metrics": {"bert_f1": 1e308}}, {"metrics": {"bert_f1": -1e308}}]}
    with pytest.raises(BaselineError, match="non-finite"):
        band(case, "bert_f1", (0.0, 0.0))
    ok = band({"runs": [{"metrics": {"bert_f1": 0.5}}, {"metrics": {"bert_f1": 0.52}}]}, "bert_f1", (0.0, 0.0))
    assert ok is not None and abs(ok.var - 0.0002) < 1e-12


# ---------------------------------------------------------------- direction: the registry's


def test_the_gate_reads_direction_and_sidedness_from_the_registry(monkeypatch):
    """Flip bert_f1 to lower-is-better in the registry (nothing else changes): the gate judges it
    with the opposite sign everywhere - a case's check, the verdict, worse_way, the aggregates and
    the power check - so no part of the gate decides on its own that down is bad."""
    import dataclasses

    from medqa_core.metrics import registry

    cases = _cases_with_spread(SPREAD)
    rise, drop = [a_run(0, metrics_at(0.5, bert_f1=0.60))], [a_run(0, metrics_at(0.5, bert_f1=0.40))]
    # as registered: a drop is the regression, a rise 'changed'
    assert judge_case("c0", drop, cases["c0"], cases, gate_cfg(), IDENTITY).status == "regression"
    assert judge_case("c0", rise, cases["c0"], cases, gate_cfg(), IDENTITY).status == "changed"

    flipped = dataclasses.replace(registry.MEASURES[M], higher_is_better=False)
    monkeypatch.setitem(registry.MEASURES, M, flipped)
    assert gate.worse_way(M) == "up" and gate.worse_way(f"margin:base:{M}") == "up"
    v = judge_case("c0", rise, cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "regression" and v.failed, v.explain()  # a rise now fails the worse way
    [f] = v.failures
    assert f.name == M and f.direction == "up" and gate.is_worse(dataclasses.asdict(f))
    assert "--update-baselines" not in gate.next_step(v.status)
    v = judge_case("c0", drop, cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "changed", v.explain()  # a drop is the better way: two-sided, so it fails as changed
    assert judge_case("c0", drop, cases["c0"], cases, gate_cfg(one_sided=(M,)), IDENTITY).status == "improvement"
    # ... and passes outright once the registry (not the profile) makes the measure one-sided
    monkeypatch.setitem(registry.MEASURES, M, dataclasses.replace(flipped, two_sided=False))
    v = judge_case("c0", drop, cases["c0"], cases, gate_cfg(), IDENTITY)
    assert v.status == "improvement" and not v.failures, v.explain()
    assert judge_case("c0", rise, cases["c0"], cases, gate_cfg(), IDENTITY).status == "regression"

    # aggregates: a uniform small rise over many cases is the worse way; a uniform drop passes
    monkeypatch.setitem(registry.MEASURES, M, flipped)
    ids = [f"{m}-c{i}" for i in range(10) for m in ("llama", "phi")]
    many = {cid: baseline_case([0.50, 0.51, 0.49, 0.505, 0.495]) for cid in ids}

    def suite(shift: float, cfg: GateConfig) -> gate.Aggregate:
        recs = [{"case_id": cid, "model": cid.split("-")[0],
                 "verdict": judge_case(cid, [a_run(0, metrics_at(0.5, bert_f1=0.5 + shift))], many[cid], many,
                                       cfg, IDENTITY).to_json()} for cid in ids]
        return next(a for a in aggregates(recs, cfg) if a.scope == "suite" and a.metric == M)

    up, down = suite(+0.01, gate_cfg()), suite(-0.01, gate_cfg(one_sided=(M,)))
    assert not up.passed and up.direction == "up"
    assert down.passed and down.direction == "down"

    # the power check measures the room to the end the measure gets worse towards: 0 as
    # registered, 1 when flipped (the same band near 0 or near 1 swaps which one is refused)
    def refused(mean: float) -> list[str]:
        b = Band(mean, 1e-5, 8.0, 2)
        return [c.detail for c in gate.judge_power(judge_noise(M, [mean], b, 0.001, 0.01, False), b)]

    [near_one] = refused(0.98)
    assert "distance to 1 (0.0200)" in near_one and refused(0.02) == [] and refused(1.0) == []
    monkeypatch.setitem(registry.MEASURES, M, dataclasses.replace(flipped, higher_is_better=True))
    [near_zero] = refused(0.02)
    assert "distance to 0 (0.0200)" in near_zero and refused(0.98) == [] and refused(0.0) == []


def test_time_from_another_cpu_or_thread_count_is_unjudged():
    """Work recorded on a CPU of another identity, or at another thread count, is not compared
    (passes, saying why, with --update-resources as the way out); the same CPU and threads judge
    it, and a baseline recorded before the identity was kept is judged as before."""
    from medqa_core.specs import GateConfig

    base = {"metrics": {"bert_f1": 0.5}, "runs": [{"seed": 0, "metrics": {"bert_f1": 0.5}}]}
    cfg = GateConfig(require_controls=(), time_factor=2.0)

    def verdict(res_extra: dict, cur_extra: dict) -> gate.Verdict:
        run = {"seed": 0, "metrics": {"bert_f1": 0.5},
               "resources": {"device": "cpu", "generate_work": 6.0, "generate_busy": 0.0, **cur_extra}}
        return gate.judge_case("c", [run], base, {"c": base}, cfg, {}, {"device": "cpu", "generate_work": 2.5, **res_extra})

    same = verdict({"cpu": "A", "threads": 1}, {"cpu": "A", "threads": 1})
    assert [c.name for c in same.failures] == ["generate_work"]
    assert [c.name for c in verdict({}, {"cpu": "A", "threads": 1}).failures] == ["generate_work"]
    for res_extra, cur_extra, words in (({"cpu": "A", "threads": 1}, {"cpu": "B", "threads": 1}, "another CPU (A; this run: B)"),
                                        ({"cpu": "A", "threads": 2}, {"cpu": "A", "threads": 1}, "at 2 torch threads")):
        v = verdict(res_extra, cur_extra)
        check = next(c for c in v.checks if c.name == "generate_work")
        assert v.status == "pass" and check.passed and check.detail.startswith("unjudged: ")
        assert words in check.detail and "--update-resources" in check.detail
