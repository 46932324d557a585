"""The report tells the truth about a case (a user's issue):

1. every column of the summary tables and of the HTML report is the mean over the case's runs
   (seeds): tuned, base and each control alike, and the legend says so ("mean over K runs");
2. a verdict names each moved score with its direction and delta, so a rise that makes a case
   ``changed`` never presents a drop as a rise, and a drop beyond its band is always ``regression``;
3. the hint offers re-recording the baseline only for ``changed``, never for a regression.

Records and verdicts are built by hand (as session.case_record and gate.judge_case leave them).
"""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core import gate
from medqa_core.gate import Check, judge_case, status_of
from medqa_core.metrics import METRICS
from medqa_core.results.report import Report, to_html, to_markdown
from medqa_core.results.summary import (
    HEADER,
    control_rows,
    details_markdown,
    details_text,
    failure_reasons,
    markdown_table,
    plain_table,
    table_rows,
)
from medqa_core.specs import GateConfig

IDENTITY = {"data": "d", "test_ids": "t", "scorer": "s"}
CFG = GateConfig(require_controls=())
N = 4  # test questions per run


def a_run(seed: int, tuned: dict[str, float], base: float, no_question: float | None, shuffled: float,
          train_s: float = 10.0) -> dict:
    """One run as session.case_record keeps it: metrics, base_metrics and the controls of this seed."""
    metrics = {**{m: 0.5 for m in METRICS}, "answer_words": 20.0, **tuned}
    ctrl = {"base": base, "no_question": no_question, "shuffled": shuffled}
    controls = {name: {"metrics": {m: v for m in METRICS}, "per_example": {m: [v] * N for m in METRICS}}
                for name, v in ctrl.items() if v is not None}
    return {"seed": seed, "metrics": metrics, "per_example": {"ids": [f"q{i}" for i in range(N)],
                                                              **{m: [v] * N for m, v in metrics.items()}},
            "controls": controls, "invariants": {}, "margins": {},
            "resources": {"train_seconds": train_s, "peak_mem_mib": 100.0 + seed, "device": "cpu"},
            "base_metrics": {m: base for m in METRICS}, "cached": {}}


def a_record(runs: list[dict], case_id: str = "llama-counsel", verdict: gate.Verdict | None = None) -> dict:
    """Mirrors session.case_record: the first run's fields, metrics averaged over the runs, every run kept."""
    rec = dict(runs[0])
    rec["metrics"] = {m: round(float(np.mean([r["metrics"][m] for r in runs])), 6) for m in runs[0]["metrics"]}
    rec.update(case_id=case_id, model=case_id.split("-")[0], dataset=case_id.split("-", 1)[1], runs=runs,
               seeds=[r["seed"] for r in runs])
    if verdict is not None:
        rec["verdict"] = verdict.to_json()
    return json.loads(json.dumps(rec))  # as read back from the run directory


# ---------------------------------------------------------------- 1. one aggregation for every column

# the case: the no-question control of counsel-chat, seed 0 at 0.110, mean over 3 seeds 0.202
SEED_VALUES = {"tuned": (0.40, 0.44, 0.42), "base": (0.10, 0.16, 0.13), "no_question": (0.110, 0.250, 0.246),
               "shuffled": (0.05, 0.08, 0.11)}


def three_seed_record() -> dict:
    v = SEED_VALUES
    runs = [a_run(s, {"bert_f1": v["tuned"][s], "use_f1": v["tuned"][s]}, v["base"][s], v["no_question"][s],
                  v["shuffled"][s], train_s=10.0 * (s + 1)) for s in range(3)]
    return a_record(runs)


def test_controls_table_shows_the_mean_over_the_runs_for_every_column():
    rec = three_seed_record()
    assert rec["controls"]["no_question"]["metrics"]["bert_f1"] == 0.110  # the record's top level: seed 0 only
    row = control_rows([rec])[0]
    assert row[:2] == ["llama-counsel", "bert_f1"]
    tuned, base, no_question, shuffled = row[2:6]
    expect = {k: f"{statistics.fmean(vals):.4f}" for k, vals in SEED_VALUES.items()}
    assert (tuned, base, no_question, shuffled) == (expect["tuned"], expect["base"], expect["no_question"],
                                                    expect["shuffled"])
    assert no_question == "0.2020" and "0.1100" not in " ".join(row)


def test_results_table_averages_resources_over_the_runs_and_counts_them():
    rec = three_seed_record()
    row = table_rows([rec], None)[0]
    assert row[HEADER.index("train_s")] == "20.0"  # 10, 20, 30 s: not seed 0's 10.0
    assert row[HEADER.index("mem_mib")] == "101.0"
    assert row[HEADER.index("bert_f1")] == "0.4200"
    assert row[HEADER.index("runs")] == "3" and row[-1] == ""


def test_every_table_and_the_html_report_state_the_aggregation():
    rec = three_seed_record()
    phrase = "mean over 3 runs (seeds 0, 1, 2)"
    for out in (plain_table([rec], None), markdown_table([rec], None), details_text([rec]), details_markdown([rec])):
        assert phrase in out, out
    page = to_html(Report("t", [rec], None), {})
    assert page.count(phrase) >= 3  # results legend, controls legend, heatmap legend
    controls = page.split("<table class='controls'>")[1].split("</table>")[0]
    assert "<td>0.2020</td>" in controls and "0.1100" not in controls
    assert phrase in to_markdown(Report("t", [rec], None), {})


def test_a_control_missing_from_some_runs_says_how_many_runs_it_averages():
    runs = [a_run(0, {"bert_f1": 0.4}, 0.1, 0.2, 0.05), a_run(1, {"bert_f1": 0.4}, 0.1, None, 0.05),
            a_run(2, {"bert_f1": 0.4}, 0.1, 0.3, 0.05)]
    row = control_rows([a_record(runs)])[0]
    assert row[4] == "0.2500 (2/3 runs)"


def test_a_record_without_runs_is_one_run():
    rec = {"case_id": "a-b", "model": "a", "dataset": "b", "metrics": {m: 0.5 for m in METRICS},
           "base_metrics": {m: 0.3 for m in METRICS}, "controls": {"no_question": {"metrics": {"bert_f1": 0.2}}}}
    assert control_rows([rec])[0][2:6] == ["0.5000", "0.3000", "0.2000", "-"]
    assert "mean over 1 run of its case" in plain_table([rec], None)
    error = {"case_id": "a-c", "model": "a", "dataset": "c", "metrics": {}, "runs": [],
             "verdict": {"status": "error", "note": "boom", "checks": []}}
    assert table_rows([error], None)[0][HEADER.index("runs")] == "-"


# ---------------------------------------------------------------- 2. which scores moved which way

def baseline_cases() -> dict:
    """One case, 5 runs: a narrow answer length (band = its 3-word minimum effect) and a bert_f1
    band of about 0.06 (so a -0.031 is within it and a -0.15 beyond)."""
    f1 = [0.50, 0.51, 0.49, 0.505, 0.495]
    words = [20.0, 20.5, 19.5, 20.2, 19.8]
    runs = [{"seed": s, "metrics": {**{m: 0.5 for m in METRICS}, "bert_f1": f1[s], "answer_words": words[s]}}
            for s in range(5)]
    metrics = {m: statistics.fmean(r["metrics"][m] for r in runs) for m in runs[0]["metrics"]}
    return {"llama-counsel": {"metrics": metrics, "runs": runs, "identity": dict(IDENTITY)}}


def judged(f1_delta: float, words_delta: float) -> tuple[gate.Verdict, dict]:
    cases = baseline_cases()
    base = cases["llama-counsel"]["metrics"]
    run = a_run(0, {"bert_f1": base["bert_f1"] + f1_delta, "answer_words": base["answer_words"] + words_delta},
                0.1, 0.2, 0.05)
    v = judge_case("llama-counsel", [run], cases["llama-counsel"], cases, CFG, IDENTITY)
    return v, a_record([run], verdict=v)


def test_changed_by_a_longer_answer_names_the_rise_and_the_drop_within_band():
    v, rec = judged(-0.031, 14.2)
    assert v.status == "changed", v.explain()
    head = v.explain().splitlines()[0]
    assert head.startswith("llama-counsel: changed: ")
    assert "answer_words up +14.2 beyond band" in head
    assert "bert_f1 down -0.0310 (within band)" in head
    assert "bert_f1 up" not in head
    assert head.index("answer_words up") < head.index("bert_f1 down")  # the move that made the verdict first
    # each score's line says which way it went
    lines = v.explain().splitlines()
    assert any(ln.startswith("  [FAIL] answer_words:") and "up beyond band" in ln for ln in lines)
    assert any(ln.startswith("  [ok  ] bert_f1:") and "down, within band" in ln for ln in lines)
    reasons = failure_reasons(rec)
    assert reasons[0].startswith("answer_words rose +14.2")
    assert "also bert_f1 down -0.0310 (within band)" in reasons


def test_a_drop_beyond_its_band_is_a_regression_even_beside_a_rise():
    v, _ = judged(-0.15, 14.2)
    assert v.status == "regression", v.explain()
    head = v.explain().splitlines()[0]
    assert "bert_f1 down -0.1500 beyond band" in head and "answer_words up +14.2 beyond band" in head
    assert head.index("bert_f1 down") < head.index("answer_words up")  # the drop first


def test_nothing_moved_beyond_a_band_keeps_a_plain_head():
    v, _ = judged(-0.01, 1.0)
    assert v.status == "pass" and v.explain().splitlines()[0] == "llama-counsel: pass"
    assert "next:" not in v.explain()


@given(f1=st.floats(-0.3, 0.3), words=st.floats(-30, 30))
@settings(max_examples=60, deadline=None)
def test_property_the_head_never_presents_a_drop_as_a_rise(f1, words):
    v, _ = judged(f1, words)
    head = v.explain().splitlines()[0]
    for c in v.checks:
        if c.kind != "noise" or f"{c.name} " not in head:
            continue
        part = next(p for p in head.split(": ", 2)[2].split("; ") if p.startswith(f"{c.name} "))
        word = part.split()[1]
        if c.delta and abs(c.delta) > 1e-12:
            assert word == ("down" if c.delta < 0 else "up"), (part, c.delta)
            assert part.split()[2][0] == ("-" if c.delta < 0 else "+"), part
        if c.direction == "down":
            assert v.status == "regression"
    if any(c.kind == "noise" and c.direction == "down" for c in v.checks):
        assert v.status == "regression"


KINDS = st.sampled_from(["noise", "invariant", "control", "time", "memory"])


@st.composite
def checks(draw) -> list[Check]:
    out = []
    for i in range(draw(st.integers(0, 5))):
        kind = draw(KINDS)
        passed = draw(st.booleans())
        direction = draw(st.sampled_from(["", "up", "down"])) if kind == "noise" else ""
        delta = draw(st.one_of(st.none(), st.floats(-1, 1))) if kind == "noise" else None
        out.append(Check(f"c{i}", 0.5, 0.5, passed, kind, delta=delta, direction=direction))
    return out


@given(checks())
@settings(max_examples=300, deadline=None)
def test_property_status_semantics(cs):
    status = status_of(cs)
    bad = [c for c in cs if not c.passed]
    drops = [c for c in bad if c.kind == "noise" and (c.direction == "down" or (
        c.direction == "" and not (c.delta is not None and c.delta > 0)))]
    if drops or any(c.kind in ("control", "time", "memory") for c in bad):
        assert status == "regression"
    elif bad:  # only rises beyond the band and exact invariants
        assert status == "changed"
    else:
        assert status in ("pass", "improvement")


def test_a_failing_score_without_a_direction_is_not_called_changed():
    """A check read back from an older record has no direction: its sign decides."""
    assert status_of([Check("bert_f1", 0.4, 0.5, False, "noise", delta=-0.1)]) == "regression"
    assert status_of([Check("answer_words", 30, 20, False, "noise", delta=10.0)]) == "changed"


# ---------------------------------------------------------------- 3. the hint

def test_regression_hint_says_investigate_never_re_record():
    v, rec = judged(-0.15, 14.2)
    assert v.status == "regression"
    texts = {"explain": v.explain(), "details": details_text([rec]), "markdown": details_markdown([rec]),
             "html": to_html(Report("t", [rec], None), {}).split("<h2>Why cases failed</h2>")[1].split("<h2>")[0]}
    for where, text in texts.items():
        assert "--seeds 3" in text and "read the report" in text, where
        assert "--update-baselines" not in text and "re-record the baseline" not in text, (where, text)
        assert "if intended" not in text, where
    assert any(x.startswith("answer_words rose +14.2") for x in failure_reasons(rec))


def test_changed_hint_offers_re_recording_only_if_intended():
    v, rec = judged(-0.031, 14.2)
    for text in (v.explain(), details_text([rec]), details_markdown([rec])):
        assert "next:" in text and "--update-baselines" in text and "if it is intended" in text, text
        assert "--seeds 3" in text  # and otherwise to investigate it


@pytest.mark.parametrize("status", ["pass", "improvement", "no-baseline"])
def test_no_hint_for_statuses_that_need_none(status):
    assert gate.next_step(status) == ""
    assert "next:" not in gate.Verdict("c", status).explain()
