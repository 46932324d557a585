"""The degeneration metric (metrics/degeneration.py): share of answers in which some word 4-gram
occurs 3+ times. Checked by hand, against an independent naive count (hypothesis), and for
where it goes: the case record, the summary and the gate (lower is better, plus a ceiling), never
the baseline identity."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core import gate
from medqa_core.metrics import degeneration
from medqa_core.results.summary import HEADER, plain_table, table_rows


def naive_tokens(text: str) -> list[str]:
    """Words of an ASCII text, character by character: letters, digits and '_' build a word."""
    out, cur = [], ""
    for ch in text.lower():
        if ch.isascii() and (ch.isalnum() or ch == "_"):
            cur += ch
        else:
            if cur:
                out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


def naive_degenerate(text: str, n: int, k: int) -> bool:
    """Some n-gram occurs at >= k start positions, by comparing every pair of positions."""
    w = naive_tokens(text)
    starts = range(len(w) - n + 1)
    return any(sum(1 for j in starts if w[j:j + n] == w[i:i + n]) >= k for i in starts)


def test_by_hand():
    loop = "I understand your concern. " * 3
    assert degeneration.is_degenerate(loop)  # a 4-word sentence said three times
    assert not degeneration.is_degenerate("I understand your concern. " * 2)
    assert degeneration.is_degenerate("go go go go go go")  # the 4-gram (go go go go) starts 3 times
    assert not degeneration.is_degenerate("go go go go go")
    assert degeneration.is_degenerate("rest and fluids, rest and fluids, rest and fluids, rest and fluids")  # 3 words x4
    assert not degeneration.is_degenerate("rest and fluids, rest and fluids, rest and fluids")
    assert not degeneration.is_degenerate("Rest, drink fluids and see a doctor if the fever lasts more than three days.")
    assert not degeneration.is_degenerate("")
    assert degeneration.max_ngram_count("A b c d. A B C D! a-b-c-d") == 3  # case and punctuation ignored
    assert degeneration.share(["x y z w " * 3, "fine answer", "", "x y z w " * 2]) == pytest.approx(0.25)
    assert degeneration.share([]) == 0.0
    assert degeneration.flags(["a b c d " * 3, "ok"]).tolist() == [1.0, 0.0]


VOCAB = st.sampled_from(["rest", "and", "fluids", "see", "a", "doctor", "Rest", "x1"])
SEPS = st.sampled_from([" ", ", ", ". ", "! ", "\n", " - ", "_"])


@st.composite
def answers(draw):
    """Answers over a tiny vocabulary, often with a phrase pasted several times (loops)."""
    parts = draw(st.lists(st.tuples(VOCAB, SEPS), max_size=25))
    text = "".join(w + s for w, s in parts)
    if draw(st.booleans()) and parts:
        phrase = "".join(w + s for w, s in parts[: draw(st.integers(1, min(6, len(parts))))])
        text += phrase * draw(st.integers(1, 5))
    return text


@given(answers(), st.integers(1, 5), st.integers(2, 4))
@settings(max_examples=400, deadline=None)
def test_property_matches_naive_count(text, n, k):
    assert degeneration.words(text) == naive_tokens(text)
    assert degeneration.is_degenerate(text, n, k) == naive_degenerate(text, n, k)


@given(st.lists(answers(), max_size=12))
@settings(max_examples=100, deadline=None)
def test_property_share_is_the_mean_of_naive_flags(texts):
    expected = np.mean([naive_degenerate(t, 4, 3) for t in texts]) if texts else 0.0
    assert degeneration.share(texts) == pytest.approx(expected)


def test_gated_lower_is_better_and_not_identity():
    from medqa_core.metrics import registry

    assert degeneration.NAME in gate.GATED and gate.DEFAULT_MIN_EFFECT[degeneration.NAME] == 0.05
    assert not registry.higher_is_better(degeneration.NAME) and gate.worse_way(degeneration.NAME) == "up"
    assert degeneration.NAME not in gate.IDENTITY_KEYS and degeneration.NAME not in gate.SPEC_IDENTITY_KEYS


def _run_of(answers: list[str], seed: int = 0) -> dict:
    """A run record as session.case_record keeps it, with the share and flags the pipeline writes."""
    flags = degeneration.flags(answers)
    return {"seed": seed, "metrics": {degeneration.NAME: float(flags.mean())}, "margins": {},
            "per_example": {"ids": [f"q{i}" for i in range(len(answers))], degeneration.NAME: flags.tolist()},
            "controls": {}, "invariants": {}, "resources": {}}


def test_a_looping_model_is_refused_at_recording_by_the_ceiling():
    """From answer text to verdict: the steps / 4 symptom (every answer loops) fails without any
    baseline, in one line naming the share; clean answers record."""
    from medqa_core.specs import GateConfig

    loop = "Take rest and drink fluids. " * 4
    clean = "Rest, drink fluids and see a doctor if the fever lasts more than three days."
    cfg = GateConfig(require_controls=())
    v = gate.judge_case("llama-wikidoc", [_run_of([loop] * 10)], None, {}, cfg, {})
    assert v.status == "regression"
    [line] = [ln for ln in v.explain().splitlines() if "[FAIL]" in ln]
    assert line.startswith("  [FAIL] max_degenerate: 100.0% of tuned answers degenerate (10 of 10)"), line
    assert gate.judge_case("llama-wikidoc", [_run_of([clean] * 9 + [loop])], None, {}, cfg, {}).status == "regression"
    ok = gate.judge_case("llama-wikidoc", [_run_of([clean] * 10)], None, {}, cfg, {})
    assert ok.status == "no-baseline" and not ok.failed


def _record(degenerate: float | None) -> dict:
    metrics = {m: 0.5 for m in ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")}
    if degenerate is not None:
        metrics["degenerate"] = degenerate
    return {"case_id": "llama-wikidoc", "model": "llama", "dataset": "wikidoc", "metrics": metrics,
            "resources": {"train_seconds": 1.0, "peak_mem_mib": 10.0}, "verdict": {"status": "pass"}}


def test_summary_shows_the_share():
    col = HEADER.index("degenerate")
    [row] = table_rows([_record(0.25)], None)
    assert row[col] == "0.25"
    base = {"cases": {"llama-wikidoc": {"metrics": {**_record(0.1)["metrics"]}}}}
    assert table_rows([_record(0.25)], base)[0][col] == "0.25 (+0.15)"
    assert table_rows([_record(None)], None)[0][col] == "-"  # records written before the metric
    assert "degenerate" in plain_table([_record(0.5)], None).splitlines()[0]
