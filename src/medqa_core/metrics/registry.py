"""Every number a case reports, in one table: its name, which way is better, the smallest change
the gate treats as a real effect, and where a record keeps it.

Everything that needs to know whether a drop or a rise is bad (the gate, trends, the summary
and the report) asks this module; nothing else encodes a direction.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import METRICS


@dataclass(frozen=True)
class Measure:
    name: str  # the column name in summaries, trends and the history
    label: str
    higher_is_better: bool
    #: the gate's default minimum effect (``[gate] metric_tolerance`` overrides it); None = the
    #: noise model does not judge it (resources have their own factor rules)
    min_effect: float | None
    #: where a case record keeps it: ("metrics", key) or ("resources", key)
    source: tuple[str, str]
    kind: str  # score | length | rate (a share of answers) | likelihood | resource
    #: a move the better way beyond the gate's band fails too (``changed``: the baseline no longer
    #: describes the recipe) unless ``[gate] one_sided`` lists it; False: such a move always passes
    #: (``improvement``), as for a metric the profile lists in ``one_sided``
    two_sided: bool = True
    #: the values it can take (None: unbounded that side): a gate threshold at or beyond the end it
    #: gets worse towards cannot be crossed (``power.can_fail``)
    bounds: tuple[float | None, float | None] = (0.0, 1.0)
    #: a primary score: the gate refuses (``power`` check, :func:`gate.judge_power`) a check of it
    #: that cannot fail, instead of passing it
    power_checked: bool = False


#: the gate's minimum effect on the share of degenerate (looping) answers, in share units
DEGENERATE_MIN_EFFECT = 0.05

#: the reference-answer likelihood measure ([gate] answer_nll) and its minimum effect (nats per token)
NLL = "answer_nll"
NLL_MIN_EFFECT = 0.02


#: the primary scores (BERTScore F1, USE F1): their gate checks must be able to fail (power_checked)
PRIMARY = ("bert_f1", "use_f1")

_LABELS = {"bert_p": "BERTScore precision", "bert_r": "BERTScore recall", "bert_f1": "BERTScore F1",
           "cosine": "USE whole-answer cosine", "use_p": "USE precision", "use_r": "USE recall", "use_f1": "USE F1"}

MEASURES: dict[str, Measure] = {
    **{m: Measure(m, _LABELS[m], True, 0.02, ("metrics", m), "score", power_checked=m in PRIMARY) for m in METRICS},
    # the tuned answers' mean length in words: a cheap signal of truncated or run-away generation
    # (two-sided: a drop is a regression, a rise beyond the band 'changed')
    "answer_words": Measure("answer_words", "mean answer length (words)", True, 3.0, ("metrics", "answer_words"),
                            "length", bounds=(0.0, None)),
    "train_s": Measure("train_s", "training time (s)", False, None, ("resources", "train_seconds"), "resource",
                       bounds=(0.0, None)),
    "mem_mib": Measure("mem_mib", "peak training memory (MiB)", False, None, ("resources", "peak_mem_mib"), "resource",
                       bounds=(0.0, None)),
    "tokens_per_s": Measure("tokens_per_s", "training throughput (tokens/s)", True, None,
                            ("resources", "tokens_per_s"), "resource", bounds=(0.0, None)),
    # share of answers that repeat a word 4-gram 3+ times (metrics/degeneration.py). Lower is better:
    # a rise beyond its band is a regression, a fall beyond it 'changed'. Min effect 0.05 = 5 points
    # of answers (6 of tiny's 120 test answers): clean tiny runs loop in 0 answers, so one or two
    # answers flipping between seeds stays inside it, and a broken recipe (steps / 4: every answer
    # loops, +1.0) is 20 times beyond it. The absolute ceiling without a baseline is gate.MAX_DEGENERATE.
    "degenerate": Measure("degenerate", "degenerate answers (share)", False, DEGENERATE_MIN_EFFECT,
                          ("metrics", "degenerate"), "rate"),
    # the tuned model's NLL of the reference answers (nats per answer token; [gate] answer_nll = true;
    # train/nll.py). Lower is better. Min effect 0.02 nats: SmolLM2's between-seed sd on 120 MedQuAD
    # questions is ~0.004, a planted steps / 4 or learning rate / 10 moves it by 0.12-0.16
    # (docs/own-data.md). Only runs that measure it are judged on it.
    NLL: Measure(NLL, "reference-answer NLL (nats/token)", False, NLL_MIN_EFFECT, ("metrics", NLL), "likelihood",
                 bounds=(0.0, None)),
}

#: judged by the noise model of the gate, in this order (which way is a regression:
#: :func:`higher_is_better`; whether a move the other way fails too: :func:`two_sided`)
GATED: tuple[str, ...] = tuple(m.name for m in MEASURES.values() if m.min_effect is not None)
#: gate.DEFAULT_MIN_EFFECT
DEFAULT_MIN_EFFECT: dict[str, float] = {m.name: m.min_effect for m in MEASURES.values() if m.min_effect is not None}
#: time and memory, as the summary and trends name them
RESOURCES: tuple[str, ...] = ("train_s", "mem_mib")
#: the history's/summary's short name -> the key in a record's ``resources`` (record keys map to themselves)
RESOURCE_KEYS: dict[str, str] = {
    **{m.name: m.source[1] for m in MEASURES.values() if m.source[0] == "resources"},
    **{m.source[1]: m.source[1] for m in MEASURES.values() if m.source[0] == "resources"},
}


#: measures whose gate check must be able to fail (gate.judge_power), in registry order
POWER_CHECKED: tuple[str, ...] = tuple(m.name for m in MEASURES.values() if m.power_checked)


def measure(name: str) -> Measure:
    """The measure ``name`` (a measure, or a record's resource key); KeyError when unknown."""
    if name in MEASURES:
        return MEASURES[name]
    for m in MEASURES.values():
        if m.source[1] == name:
            return m
    raise KeyError(f"unknown measure {name!r}; known: {sorted(MEASURES)}")


def higher_is_better(name: str) -> bool:
    """Which way is better for ``name`` (a measure, or a record's resource key)."""
    return measure(name).higher_is_better


def two_sided(name: str) -> bool:
    """Whether the gate fails a move of ``name`` the better way beyond its band (``changed``) by
    default, i.e. unless ``[gate] one_sided`` lists it."""
    return measure(name).two_sided
