"""The typed record (results/record.py): verdict statuses as ``Status``, and what a check judged
(metric, control, seed) read from its own fields, or for a record written before checks carried
them, from its name by the one legacy reader (``_legacy_fields``)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from medqa_core import gate
from medqa_core.results import alerts
from medqa_core.results.record import FIELDS, CheckFields, Status, _legacy_fields, check_fields, judges_score
from medqa_core.results.report import Report, case_check_state, cell_state, to_html, to_markdown
from medqa_core.results.summary import control_rows, details_markdown, details_text, failure_reasons
from medqa_core.specs import GateConfig

IDENTITY = {"data": "D", "test_ids": "T", "scorer": "S"}
M = "bert_f1"
N = 8

# ---------------------------------------------------------------- Status


def test_status_values_are_the_stored_strings():
    assert [s.value for s in Status] == ["pass", "improvement", "regression", "changed", "incomparable",
                                         "no-baseline", "error"]
    for s in Status:
        assert s == s.value and str(s) == s.value and f"{s}" == s.value and Status(s.value) is s


@pytest.mark.parametrize("status", list(Status))
def test_status_round_trips_through_json(status):
    text = json.dumps({"status": status})
    assert text == json.dumps({"status": status.value})
    back = json.loads(text)["status"]
    assert type(back) is str and back == status and Status(back) is status
    v = gate.Verdict("c", status)
    assert v.status == status and type(v.status) is str  # plain: pytest-xdist sends it as a user property
    out = v.to_json()
    assert type(out["status"]) is str and json.loads(json.dumps(out))["status"] == status.value
    assert v.explain().splitlines()[0] == f"c: {status.value}"


def test_a_verdict_status_crosses_to_the_xdist_controller():
    """pytest-xdist sends user properties (the plugin's ``verdict``) by exact type: a plain str."""
    gateway_base = pytest.importorskip("execnet.gateway_base")
    v = gate.Verdict("c", Status.REGRESSION)
    assert gateway_base.loads(gateway_base.dumps([("verdict", v.status), v.to_json()["status"]])) == [
        ("verdict", "regression"), "regression"]


def test_verdict_refuses_a_status_the_gate_does_not_know():
    with pytest.raises(ValueError):
        gate.Verdict("c", "passed")


def test_status_sets_match_plain_strings_read_back():
    assert "regression" in gate.FAILING and "pass" not in gate.FAILING
    assert gate.next_step("changed") == gate.next_step(Status.CHANGED) != ""


# ---------------------------------------------------------------- check fields


@pytest.mark.parametrize("name, kind, expected", [
    ("beats_base:bert_f1", "control", (M, "base", None)),
    ("beats_no_question:use_f1@seed3", "control", ("use_f1", "no_question", 3)),
    ("margin:shuffled:bert_f1", "noise", (M, "shuffled", None)),
    ("bert_f1", "noise", (M, None, None)),
    ("degenerate", "noise", ("degenerate", None, None)),
    ("max_degenerate@seed12", "ceiling", ("degenerate", None, 12)),
    ("power:use_f1", "power", ("use_f1", None, None)),
    ("train_steps@seed0", "invariant", (None, None, 0)),
    ("recipe:lora_r", "invariant", (None, None, None)),
    ("train_work", "time", (None, None, None)),
    ("peak_mem_mib", "memory", (None, None, None)),
])
def test_legacy_names_are_read_as_the_gate_wrote_them(name, kind, expected):
    assert check_fields({"name": name, "kind": kind}) == CheckFields(*expected)
    assert _legacy_fields(name, kind) == CheckFields(*expected)


def test_fields_when_present_win_over_the_name():
    c = {"name": "whatever text", "kind": "control", "metric": "use_f1", "control": "base", "seed": 7}
    assert check_fields(c) == ("use_f1", "base", 7)
    # a record with the fields: None means none, never "parse the name"
    assert check_fields({"name": "beats_base:bert_f1@seed1", "kind": "control", "metric": None, "control": None,
                         "seed": None}) == (None, None, None)
    assert FIELDS == ("metric", "control", "seed")


def test_judges_score_is_the_metric_itself_not_a_margin_or_one_run():
    assert judges_score({"name": M, "kind": "noise"}, M)
    assert not judges_score({"name": f"margin:base:{M}", "kind": "noise"}, M)
    assert not judges_score({"name": f"beats_base:{M}", "kind": "control"}, M)
    assert judges_score({"name": "label", "kind": "noise", "metric": M, "control": None, "seed": None}, M)


# ---------------------------------------------------------------- a legacy record reads the same


def _run(seed: int, f1: float, base: float, steps: int = 200) -> dict:
    rng = np.random.default_rng(seed)
    per = {m: [round(float(v), 6) for v in rng.normal(x, 0.02, N)] for m, x in ((M, f1), ("use_f1", 0.5))}
    ctrl_per = {m: [round(float(v), 6) for v in rng.normal(base, 0.02, N)] for m in (M, "use_f1")}
    run = {"seed": seed, "metrics": {m: float(np.mean(v)) for m, v in per.items()},
           "per_example": {"ids": [f"q{i}" for i in range(N)], **per},
           "controls": {"base": {"metrics": {m: float(np.mean(v)) for m, v in ctrl_per.items()}, "per_example": ctrl_per}},
           "invariants": {"train_steps": steps}, "resources": {}, "base_metrics": {M: base}}
    run["margins"] = gate.margins(run, (M,))
    return run


def _judged_record() -> dict:
    """Three seeds that fail their control and drop their score and margin; one invariant changed."""
    base_runs = [_run(s, 0.6 + 0.004 * s, 0.3) for s in range(5)]
    case = {"metrics": {m: float(np.mean([r["metrics"][m] for r in base_runs])) for m in (M, "use_f1")},
            "runs": [{"seed": r["seed"], "metrics": r["metrics"], "margins": r["margins"]} for r in base_runs],
            "invariants": {"train_steps": 200}, "identity": dict(IDENTITY)}
    runs = [_run(s, 0.45, 0.47, steps=190) for s in (0, 1, 2)]
    v = gate.judge_case("llama-x", runs, case, {"llama-x": case}, GateConfig(), dict(IDENTITY))
    assert v.status == "regression" and any(c.seed == 2 and c.kind == "control" for c in v.failures)
    rec = {**runs[0], "case_id": "llama-x", "model": "llama", "dataset": "x", "runs": runs, "seeds": [0, 1, 2],
           "verdict": v.to_json()}
    return json.loads(json.dumps(rec))


def _without_fields(rec: dict) -> dict:
    old = copy.deepcopy(rec)
    for c in old["verdict"]["checks"]:
        for k in FIELDS:
            del c[k]
    return old


def _outputs(rec: dict) -> dict:
    rep = Report("t", [rec], None)
    return {"reasons": failure_reasons(rec), "text": details_text([rec]), "md": details_markdown([rec]),
            "rows": control_rows([rec]), "html": to_html(rep, {}), "report_md": to_markdown(rep, {}),
            "cells": [cell_state(rec, m, None) for m in (M, "use_f1")],
            "checks": [case_check_state(rec, col) for col in ("controls", "invariants", "resources")],
            "alert": alerts.payload("r", "tiny", [rec], 1)["text"]}


def test_a_record_without_the_fields_reads_the_same():
    new = _judged_record()
    assert all(set(FIELDS) <= set(c) for c in new["verdict"]["checks"])
    old = _without_fields(new)
    assert _outputs(old) == _outputs(new)
    reasons = failure_reasons(new)
    assert "does not beat the base model on bert_f1 (seed2)" in " ".join(reasons)
    assert any(r.startswith("margin over the base model on bert_f1 dropped") for r in reasons)
    assert case_check_state(new, "controls")["text"] == "not > base"


def test_readers_take_the_fields_not_the_name():
    """Renaming every check (its text only) changes no reason's facts: they come from the fields."""
    rec = _judged_record()
    for c in rec["verdict"]["checks"]:
        if c["kind"] == "control":
            c["name"] = "renamed"
    reasons = " ".join(failure_reasons(rec))
    for seed in (0, 1, 2):
        assert f"does not beat the base model on bert_f1 (seed{seed})" in reasons
