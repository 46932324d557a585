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

from ..metrics import METRICS
from ..metrics.registry import DEFAULT_MIN_EFFECT, GATED, POWER_CHECKED
from .aggregates import (
    Aggregate,
    aggregate,
    aggregates,
)
from .checks import (
    FAILING,
    NEXT_STEP,
    WITHIN_BAND_SHOWN,
    Check,
    Verdict,
    _scored,
    is_drop,
    is_one_sided,
    is_worse,
    moved,
    movement,
    next_step,
    worse_way,
)
from .judging import (
    IDENTITY_KEYS,
    INVARIANT_ORDER,
    MAX_DEGENERATE,
    SPEC_IDENTITY_KEYS,
    identity_mismatch,
    judge_case,
    judge_control,
    judge_degenerate_ceiling,
    judge_invariants,
    judge_noise,
    judge_power,
    judge_ratio,
    judge_recipe,
    like_for_like,
    other_machine,
    status_of,
)
from .stats import (
    MAX_PRIOR_DF,
    MIN_PRIOR_DF,
    POWER,
    Band,
    band,
    margins,
    paired_bootstrap_ci,
    pooled_variance,
    run_means,
    run_value,
    t_cdf,
    t_quantile,
    variance_prior,
)

__all__ = [
    "Aggregate",
    "Band",
    "Check",
    "DEFAULT_MIN_EFFECT",
    "FAILING",
    "GATED",
    "IDENTITY_KEYS",
    "INVARIANT_ORDER",
    "MAX_DEGENERATE",
    "MAX_PRIOR_DF",
    "METRICS",
    "MIN_PRIOR_DF",
    "NEXT_STEP",
    "POWER",
    "POWER_CHECKED",
    "SPEC_IDENTITY_KEYS",
    "Verdict",
    "WITHIN_BAND_SHOWN",
    "_scored",
    "aggregate",
    "aggregates",
    "band",
    "identity_mismatch",
    "is_drop",
    "is_one_sided",
    "is_worse",
    "judge_case",
    "judge_control",
    "judge_degenerate_ceiling",
    "judge_invariants",
    "judge_noise",
    "judge_power",
    "judge_ratio",
    "judge_recipe",
    "like_for_like",
    "margins",
    "moved",
    "movement",
    "next_step",
    "other_machine",
    "paired_bootstrap_ci",
    "pooled_variance",
    "run_means",
    "run_value",
    "status_of",
    "t_cdf",
    "t_quantile",
    "variance_prior",
    "worse_way",
]
