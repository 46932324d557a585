"""medqa_core.power: the MDE against simulated gate runs (normal between-run noise with a known
sd, the gate's moderated one-sided t test, vectorised), the pilot's estimates, the plan's
choices, the refusal of checks that cannot fail, and the per-test alpha."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medqa_core.errors import ConfigError
from medqa_core.gate import Band
from medqa_core.power import (
    SINGLE_SEED_DF,
    alpha_for,
    can_fail,
    mde,
    pilot_sigma,
    plan,
    pooled_sigma,
)

ALPHAS = [0.0005, 0.0025, 0.01, 0.05]


def simulated_fail_rate(drop: float, sigma: float, k: int, r: int, alpha: float, d0: float, n: int, seed: int) -> float:
    """Share of n simulated gate runs that flag a drop: K baseline runs and R new runs with
    between-run sd ``sigma`` (the new ones shifted by ``-drop``), the variance moderated by a
    prior worth d0 df (itself a chi-square estimate of sigma^2, as a prior fitted to other
    cases or metrics of the same noise is), then ``t < -t_df(1 - alpha)`` as in gate.judge_noise."""
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, sigma, (n, k))
    x = rng.normal(-drop, sigma, (n, r))
    dc = k - 1
    sc2 = y.var(axis=1, ddof=1) if dc else np.zeros(n)
    s02 = sigma ** 2 * rng.chisquare(d0, n) / d0 if d0 > 0 else np.zeros(n)
    df = d0 + dc
    s2 = (d0 * s02 + dc * sc2) / df
    t = (x.mean(axis=1) - y.mean(axis=1)) / np.sqrt(s2 * (1.0 / k + 1.0 / r))
    return float(np.mean(t < -stats.t.ppf(1 - alpha, df)))


# ---- the MDE against simulation ----------------------------------------------------------------

@settings(max_examples=25, deadline=None, derandomize=True)
@given(sigma=st.floats(0.002, 0.2), k=st.integers(2, 10), r=st.integers(1, 5), alpha=st.sampled_from(ALPHAS),
       d0=st.sampled_from([0.0, 2.0, 5.9, 20.0]), seed=st.integers(0, 2 ** 31))
def test_power_at_the_mde_is_the_promised_power(sigma, k, r, alpha, d0, seed):
    n = 20_000
    drop = mde(sigma, k, r, alpha, df=k - 1 + d0)
    rate = simulated_fail_rate(drop, sigma, k, r, alpha, d0, n, seed)
    # Monte-Carlo sd at 0.8 and n = 20000 is 0.0028: 0.015 is over 5 sd
    assert abs(rate - 0.8) < 0.015, (rate, drop)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(sigma=st.floats(0.002, 0.2), k=st.integers(2, 10), r=st.integers(1, 5), alpha=st.sampled_from(ALPHAS),
       d0=st.sampled_from([0.0, 3.5, 20.0]), seed=st.integers(0, 2 ** 31))
def test_false_alarm_rate_at_zero_effect_is_alpha(sigma, k, r, alpha, d0, seed):
    n = 40_000
    rate = simulated_fail_rate(0.0, sigma, k, r, alpha, d0, n, seed)
    lo, hi = stats.binom.ppf([1e-4, 1 - 1e-4], n, alpha) / n
    assert lo <= rate <= hi, (rate, alpha)


def test_the_gate_formula_is_what_gate_prints_and_is_optimistic_at_small_df():
    for k, r, alpha, var, df in [(5, 1, 0.0005, 0.0134 ** 2, 4.0), (3, 2, 0.0025, 0.02 ** 2, 7.9), (5, 3, 0.01, 1e-4, 200.0)]:
        band = Band(0.3, var, df, k)
        assert mde(math.sqrt(var), k, r, alpha, df=df, method="gate", min_effect=0.02) == pytest.approx(
            band.mde(r, alpha, 0.02), rel=1e-12)
    # at df 4 and alpha 0.0005 the printed MDE is caught only ~69% of the time
    g = mde(0.01, 5, 1, 0.0005, method="gate")
    assert simulated_fail_rate(g, 0.01, 5, 1, 0.0005, 0.0, 40_000, 1) < 0.72
    assert mde(0.01, 5, 1, 0.0005) > 1.1 * g
    # with many df the two agree
    assert mde(0.01, 5, 1, 0.0005, df=500) == pytest.approx(mde(0.01, 5, 1, 0.0005, df=500, method="gate"), rel=0.01)


def test_the_issue_numbers_single_case_no_prior():
    # the issue's printed MDEs (gate formula, alpha 0.0005, R = 1): 0.14 at K = 5, 0.65 at K = 3
    assert mde(0.0134, 5, 1, 0.0005, method="gate") == pytest.approx(0.14, abs=0.005)
    assert mde(0.017, 3, 1, 0.0005, method="gate") == pytest.approx(0.65, abs=0.02)
    # on a score of 0.2 the K = 3 check cannot fail; two primaries (4 tests) and K=10, R=3 can
    assert can_fail(0.2, 0.2 - 0.5, mde=mde(0.017, 3, 1, 0.0005))
    assert can_fail(0.2, 0.17, mde=mde(0.0134, 10, 3, alpha_for(4))) == ""
    assert mde(0.0134, 10, 3, alpha_for(4)) < 0.05


def test_mde_edges():
    assert mde(0.01, 1, 1, 0.01) == math.inf  # one run, no prior: no noise estimate
    assert math.isfinite(mde(0.01, 1, 1, 0.01, prior=(0.01 ** 2, 5.0)))
    assert mde(0.0, 5, 1, 0.01, min_effect=0.02) == 0.02
    assert mde(0.01, 5, 1, 0.01, df=math.inf) == pytest.approx(
        (stats.norm.ppf(0.99) + stats.norm.ppf(0.8)) * 0.01 * math.sqrt(1.2))
    # a prior moderates the variance as gate.band does
    s0_sq, d0, sc = 0.02 ** 2, 6.0, 0.01
    want = math.sqrt((d0 * s0_sq + 4 * sc ** 2) / (d0 + 4))
    assert mde(sc, 5, 2, 0.01, prior=(s0_sq, d0)) == pytest.approx(mde(want, 5, 2, 0.01, df=d0 + 4))
    for bad in [dict(alpha=0.0), dict(alpha=0.7), dict(power=0.001)]:
        with pytest.raises(ConfigError):
            mde(0.01, 5, 1, **{"alpha": 0.01, **bad})
    with pytest.raises(ConfigError):
        mde(0.01, 0, 1, 0.01)


# ---- the pilot ---------------------------------------------------------------------------------

def test_pilot_from_seeds_estimates_the_between_run_variance():
    rng = np.random.default_rng(3)
    sigma, q_sd, n_q = 0.015, 0.12, 60
    questions = rng.normal(0.3, q_sd, n_q)  # the fixed test set's per-question levels
    v2, v3 = [], []
    for _ in range(400):
        seeds = [questions + rng.normal(0, sigma) + rng.normal(0, 0.02, n_q) for _ in range(3)]
        # seed noise: a shift of the whole run plus independent per-question wobble (sd 0.02 / sqrt(60))
        v2.append(pilot_sigma(seeds[:2], n_boot=50).sigma ** 2)
        v3.append(pilot_sigma(seeds, n_boot=50).sigma ** 2)
    true_var = sigma ** 2 + 0.02 ** 2 / n_q
    assert np.mean(v2) == pytest.approx(true_var, rel=0.15)
    assert np.mean(v3) == pytest.approx(true_var, rel=0.1)
    est = pilot_sigma(seeds)
    assert (est.method, est.df, est.n_seeds) == ("seeds", 2.0, 3)
    assert pilot_sigma([0.31, 0.29, 0.30]).sigma == pytest.approx(0.01)


def test_pilot_single_seed_is_the_question_bootstrap_and_says_so():
    rng = np.random.default_rng(0)
    per_q = rng.normal(0.2, 0.1, 200)
    est = pilot_sigma([per_q], n_boot=4000)
    assert est.method == "bootstrap" and est.df == SINGLE_SEED_DF and est.n_seeds == 1
    assert est.sigma == pytest.approx(per_q.std(ddof=1) / math.sqrt(200), rel=0.05)
    assert "not a bound" in est.note
    # the bootstrap sees question spread, not what another seed does on the same questions
    shifted = [per_q + d for d in (0.0, 0.05, -0.05)]
    assert pilot_sigma(shifted).sigma > 3 * est.sigma
    with pytest.raises(ConfigError, match="second seed"):
        pilot_sigma([0.3])
    with pytest.raises(ConfigError):
        pilot_sigma([])
    assert "deterministic" in pilot_sigma([0.3, 0.3]).note


def test_pooled_over_metrics():
    rng = np.random.default_rng(5)
    n = 40
    common = rng.normal(0, 0.01, n)  # one adapter, one shift for every score
    runs = {"bert_f1": 0.4 + common + rng.normal(0, 0.002, n), "bert_p": 0.42 + common + rng.normal(0, 0.002, n),
            "use_f1": 0.6 + rng.normal(0, 0.01, n)}
    p = pooled_sigma(runs)
    assert p.s0_sq == pytest.approx(np.mean([np.var(v, ddof=1) for v in runs.values()]))
    assert p.d0 == n - 1 and p.m_eff == 1.0  # correlated metrics: no df bought by default
    assert 1.0 <= p.m_eff_estimated <= 3.0
    e = pooled_sigma(runs, m_eff="estimate")
    assert e.d0 == pytest.approx((n - 1) * e.m_eff_estimated)
    assert 1.5 < e.m_eff_estimated < 2.5  # two independent groups
    rel = pooled_sigma({"bert_f1": runs["bert_f1"], "answer_words": 30 + 50 * common}, scale="relative")
    assert rel.sigma("answer_words") == pytest.approx(math.sqrt(rel.s0_sq) * rel.mean["answer_words"])
    # a pooled prior over the same runs: df = 0 in mde
    s0_sq, d0 = p.prior()
    assert mde(0.0, n, 1, 0.01, df=0, prior=(s0_sq, d0)) == pytest.approx(mde(math.sqrt(s0_sq), n, 1, 0.01, df=d0))
    with pytest.raises(ConfigError):
        pooled_sigma({"a": [0.1, 0.2], "b": [0.1, 0.2, 0.3]})
    with pytest.raises(ConfigError):
        pooled_sigma(runs, m_eff=7)


# ---- the plan ------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None, derandomize=True)
@given(sigma=st.floats(0.001, 0.1), alpha=st.sampled_from(ALPHAS), prior_df=st.sampled_from([0.0, 3.5, 30.0]),
       target=st.floats(0.005, 0.3), secs=st.floats(10, 1000), budget=st.floats(10, 6000))
def test_plan_is_monotone_and_its_choice_is_the_cheapest_that_reaches(sigma, alpha, prior_df, target, secs, budget):
    p = plan(sigma, secs, target, budget, alpha, k_max=8, r_max=4, prior_df=prior_df)
    assert len(p.rows) == 8 * 4
    for row in p.rows:  # more K or more R never raises the MDE
        if row.k < 8:
            assert p.row(row.k + 1, row.r).mde <= row.mde
        if row.r < 4:
            assert p.row(row.k, row.r + 1).mde <= row.mde
    ok = [x for x in p.rows if x.mde <= target and x.gate_seconds <= budget]
    if p.choice is not None:
        c = p.choice
        assert c.mde <= target and c.gate_seconds <= budget and c.mde == mde(sigma, c.k, c.r, alpha,
                                                                             df=c.k - 1 + prior_df)
        assert all((c.gate_seconds, c.baseline_seconds) <= (x.gate_seconds, x.baseline_seconds) for x in ok)
        assert f"K={c.k}, R={c.r}" in p.reason and p.feasible
    else:
        assert not ok and not p.feasible and "not reachable" in p.reason and "\n" not in p.reason
        if p.best is not None:
            assert p.best.mde > target


def test_plan_choice_reaches_the_target_in_simulation():
    sigma, target, alpha = 0.0134, 0.05, alpha_for(4)
    p = plan(sigma, 300, target, 1200, alpha)
    c = p.choice
    assert c is not None and (c.k, c.r) == (10, 2)
    assert simulated_fail_rate(target, sigma, c.k, c.r, alpha, 0.0, 40_000, 7) >= 0.8 - 0.01
    text = "\n".join(p.table())
    assert "0.0487*" in text and p.reason in text


def test_plan_infeasible_targets_say_why():
    p = plan(0.0134, 300, 0.01, 1200, alpha_for(4))
    assert p.choice is None and p.best == p.row(10, 4)
    assert p.reason.startswith("target MDE 0.01 not reachable with K <= 10, R <= 5")
    # reachable, but only beyond the budget
    p = plan(0.0134, 300, 0.04, 600, alpha_for(4))
    assert p.choice is None and "K=9, R=4 reaches it at 1200 s per gate run, 2700 s per baseline" in p.reason
    assert "beyond the budget" in plan(0.0134, 3000, 0.05, 600, 0.01).reason
    assert "no variance prior" in plan(0.0134, 300, 0.05, 600, 0.01, k_max=1).reason
    # a shipped prior makes K = 1 usable
    assert plan(0.0134, 300, 0.2, 600, 0.01, k_max=1, prior_df=20).choice is not None
    with pytest.raises(ConfigError, match="--mde"):
        plan(0.01, 300, 0.0, 600, 0.01)


# ---- checks that cannot fail, alpha ---------------------------------------------------------------

def test_can_fail_refuses_with_one_line():
    # the issue: threshold below zero on a score of 0.2
    why = can_fail(0.2, -0.087, mde=0.65, name="bert_f1")
    assert "threshold -0.0870" in why and "below the metric's range [0, 1]" in why and "\n" not in why
    why = can_fail(0.2, 0.05, mde=0.2, name="bert_f1")
    assert why.startswith("bert_f1: MDE 0.2000 >= the score's distance to 0 (0.2000)")
    assert can_fail(0.2, 0.15, mde=0.04) == ""
    # a rise that fails: the mirror image at the top of the range
    assert "above the metric's range" in can_fail(0.95, 1.01, higher_is_better=False)
    assert "distance to 1" in can_fail(0.95, 0.99, mde=0.06, higher_is_better=False)
    assert can_fail(0.5, 0.6, mde=0.1, higher_is_better=False) == ""
    # unbounded above (answer length in words), and no noise estimate
    assert can_fail(24.0, 30.0, lo=0.0, hi=None, mde=5.0, higher_is_better=False) == ""
    assert "no noise estimate" in can_fail(0.3, 0.2, mde=math.inf)
    assert "no noise estimate" in can_fail(0.3, -math.inf)


def test_alpha_for():
    assert alpha_for(4) == pytest.approx(0.0025)
    assert alpha_for(22) == pytest.approx(0.01 / 22)
    assert alpha_for(1, 0.05) == 0.05
    for bad in [0, -1, 2.0]:
        with pytest.raises(ConfigError):
            alpha_for(bad)
    with pytest.raises(ConfigError):
        alpha_for(2, 1.5)


@settings(max_examples=40, deadline=None)
@given(sigma=st.floats(0.002, 0.03), secs=st.floats(20, 400), target=st.floats(0.01, 0.08),
       budget=st.floats(300, 4000), prior_df=st.sampled_from([0.0, 4.0, 8.0]))
def test_plan_cheapest_total_is_the_fewest_seeds_in_all(sigma, secs, target, budget, prior_df):
    """``cheapest="total"`` (init's first sitting: record K, gate once with R): the choice reaches
    the target with (K + R) * seconds within the budget, and no pair with fewer seeds in all (or
    as many and fewer R) does; checked by brute force over the grid with :func:`mde` itself."""
    alpha = 0.001
    p = plan(sigma, secs, target, budget, alpha, k_max=8, r_max=3, prior_df=prior_df, cheapest="total")

    def ok(k: int, r: int) -> bool:
        return (k + r) * secs <= budget and mde(sigma, k, r, alpha, df=k - 1 + prior_df) <= target

    pairs = [(k, r) for k in range(1, 9) for r in range(1, 4) if ok(k, r)]
    if not pairs:
        assert p.choice is None and "not reachable" in p.reason
        return
    c = p.choice
    assert c is not None and ok(c.k, c.r)
    assert (c.k + c.r, c.r) == min((k + r, r) for k, r in pairs)
    # the default ("gate": cheapest later gate run) never asks for more gate runs than this choice
    g = plan(sigma, secs, target, budget, alpha, k_max=8, r_max=3, prior_df=prior_df)
    assert g.choice is not None and g.choice.r <= c.r


def test_plan_cheapest_must_be_named():
    with pytest.raises(ConfigError, match="cheapest"):
        plan(0.01, 300, 0.03, 600, 0.001, cheapest="fast")
