"""Judging one case against its baseline: noise bands per measure, controls, invariants and
recipe, time and memory, power, the degenerate-answer ceiling, and :func:`judge_case` that
puts them together into a :class:`~.checks.Verdict`."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ..metrics import degeneration
from ..metrics.registry import DEFAULT_MIN_EFFECT, GATED, MEASURES, POWER_CHECKED
from ..resources import BUSY_LIMIT
from ..results.record import BaselineCase, Identity, Invariants, Resources, RunRecord, Status
from .checks import Check, Verdict, _higher_is_better, is_one_sided, is_worse, worse_way
from .stats import Band, band, paired_bootstrap_ci, run_means, run_value, t_cdf, t_quantile, variance_prior

#: the share of degenerate (looping) tuned answers at which a run fails outright, with or without a
#: baseline (recording refuses it too); ``[gate] max_degenerate`` overrides it, None turns it off.
#: Clean tiny runs loop in 0 answers; a recipe that has not learned (steps / 4) loops in all of them.
#: One answer in ten repeating a phrase is far beyond what a working fine-tune does, and well above
#: the noise gate's minimum effect (0.05), which catches smaller rises against a baseline.
MAX_DEGENERATE = 0.10


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


def judge_invariants(current: Mapping[str, Any], baseline: Mapping[str, Any], same_seed: bool) -> list[Check]:
    """Exact comparisons; ``tokens_seen`` depends on the batch order, so only for the same seed.
    ``scorer_canary`` values compare to 1e-4 (another CPU's float rounding). ``current`` and
    ``baseline`` are ``results.record.Invariants``, read by key name in a loop (hence
    mappings of any value: each invariant is compared as it was recorded)."""
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


def judge_recipe(current: Invariants, baseline: Invariants) -> list[Check]:
    """The recipe as applied (train/applied.py), exactly: a failing ``recipe:<setting>`` check for
    each setting that differs from what the profile asked (within the run: a trainer that trains
    something else), ``recipe:prompt_layout`` when training saw other prompt tokens than generation
    feeds, and ``recipe:<setting>`` for each setting that differs from the baseline's (the recipe
    changed). Nothing for a run whose adapter recorded no recipe (an older cache entry)."""
    from ..train.applied import compare

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
    from ..power import can_fail

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


#: what a baseline must share with a run to be compared at all (the recipe may differ: that is
#: what the gate judges)
IDENTITY_KEYS = {"data": "data (fingerprint of the cleaned rows)", "test_ids": "test set", "scorer": "scorer"}


#: compared like IDENTITY_KEYS where both sides have it, but no part of a trend series' inputs:
#: the scorer's models and settings without library versions, all a published baseline
#: (paper.json) can record; ``scorer`` (with versions) already covers it for recorded ones
SPEC_IDENTITY_KEYS = {"scorer_spec": "scorer (models and settings, metrics.spec)"}


def identity_mismatch(current: Mapping[str, object], baseline: Mapping[str, object] | None) -> str:
    """One line naming what differs between a run and its baseline's identity ('' = comparable).
    Both are ``results.record.Identity``, read by the key names of IDENTITY_KEYS."""
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


def judge_case(case_id: str, runs: Sequence[RunRecord], baseline_case: BaselineCase | None,
               baseline_cases: Mapping[str, BaselineCase], gate: Any, identity: Identity,
               resources_baseline: Resources | None = None) -> Verdict:
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


def like_for_like(res: Resources, baseline_case: BaselineCase) -> Resources:
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


def _judge_without_runs(metric: str, runs: Sequence[RunRecord], baseline: float, min_effect: float,
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


def judge_degenerate_ceiling(run: RunRecord, ceiling: float | None) -> Check | None:
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
