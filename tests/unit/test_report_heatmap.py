"""The HTML report's ten-second view (heatmap, family panel, failure reasons) and the plain-text
summary's reasons, on verdicts made by the real gate from hand-written runs (no models)."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np

from medqa_core import gate
from medqa_core.metrics import METRICS
from medqa_core.results.report import HEAT_METRICS, Report, to_html
from medqa_core.results.summary import details_text, failure_reasons
from medqa_core.specs import GateConfig

N = 30  # test questions
GATE = GateConfig(require_controls=("base",), require_beats_base=("bert_f1",), controls=("base",))


def _run(seed: int, level: float, base_level: float, rng: np.random.Generator) -> dict:
    """One run: per-question scores around ``level``, the base model's around ``base_level``."""
    per = {m: (level + 0.05 * rng.standard_normal(N)).round(6).tolist() for m in METRICS}
    base = {m: (base_level + 0.05 * rng.standard_normal(N)).round(6).tolist() for m in METRICS}
    mean = {m: float(np.mean(v)) for m, v in per.items()}
    mean["answer_words"] = 20.0
    return {"seed": seed, "metrics": mean, "per_example": {"ids": [f"q{i}" for i in range(N)], **per},
            "controls": {"base": {"metrics": {m: float(np.mean(v)) for m, v in base.items()}, "per_example": base}},
            "invariants": {"train_steps": 40}, "margins": {}}


def _baseline_case(level: float, rng: np.random.Generator) -> dict:
    runs = [_run(s, level + 0.004 * rng.standard_normal(), 0.2, rng) for s in range(5)]
    return {"metrics": {m: float(np.mean([r["metrics"][m] for r in runs])) for m in runs[0]["metrics"]},
            "runs": [{"seed": r["seed"], "metrics": r["metrics"]} for r in runs], "invariants": {"train_steps": 40},
            "identity": {"data": "d", "test_ids": "t", "scorer": "s"}}


def make_records(names: dict[str, tuple[str, str]] | None = None) -> tuple[list[dict], dict]:
    """Three cases: one unchanged (pass), one whose scores drop by 0.1 (regression on the scores),
    one whose tuned model is no better than its base model (fails the base control only)."""
    rng = np.random.default_rng(0)
    names = names or {"ok": ("llama", "wikidoc"), "drop": ("phi", "wikidoc"), "base": ("llama", "mental")}
    plan = {"ok": (0.5, 0.2), "drop": (0.4, 0.2), "base": (0.5, 0.5)}  # (tuned level, base level) of the run
    base_levels = {"ok": 0.5, "drop": 0.5, "base": 0.5}
    cases = {}
    recs = []
    for key, (model, dataset) in names.items():
        cid = f"{model}-{dataset}"
        cases[cid] = _baseline_case(base_levels[key], rng)
    for key, (model, dataset) in names.items():
        cid = f"{model}-{dataset}"
        level, base_level = plan[key]
        run = _run(0, level, base_level, rng)
        if key == "base":  # the base model answers exactly as well, question by question
            run["controls"]["base"] = {"metrics": dict(run["metrics"]), "per_example": dict(run["per_example"])}
        v = gate.judge_case(cid, [run], cases[cid], cases, GATE, {"data": "d", "test_ids": "t", "scorer": "s"})
        rec = {"case_id": cid, "model": model, "dataset": dataset, "metrics": run["metrics"],
               "base_metrics": run["controls"]["base"]["metrics"], "runs": [run], "verdict": v.to_json()}
        recs.append(json.loads(json.dumps(rec)))  # as read back from the run directory
    return recs, {"cases": cases}


class Cells(HTMLParser):
    """Collects the heatmap's cells and every tag name."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.checks: list[dict[str, str]] = []
        self.tags: list[str] = []
        self._open: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-metric" in a:
            self._open = {**a, "text": ""}
            self.cells.append(self._open)
        elif tag == "td" and "data-check" in a:
            self._open = {**a, "text": ""}
            self.checks.append(self._open)
        else:
            self._open = None if tag != "small" else self._open

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


def cell(p: Cells, case: str, metric: str) -> dict[str, str]:
    hits = [c for c in p.cells if c["data-case"] == case and c["data-metric"] == metric]
    assert len(hits) == 1, (case, metric, len(hits))
    return hits[0]


def test_heatmap_has_one_cell_per_case_and_metric_with_its_verdict_class():
    recs, base = make_records()
    page = parse(to_html(Report("t", recs, base), {}))
    got = [(c["data-case"], c["data-metric"]) for c in page.cells]
    want = [(r["case_id"], m) for r in recs for m in HEAT_METRICS]
    assert sorted(got) == sorted(want)  # exactly one cell each, no more
    for c in page.cells:
        classes = c["class"].split()
        assert classes[0] == "cell" and len(classes) == 2 and classes[1] in (
            "pass", "regression", "changed", "improvement", "incomparable", "no-baseline", "error", "unjudged")
    # the class is the verdict of that metric's own check
    verdicts = {r["case_id"]: {c["name"]: c for c in r["verdict"]["checks"] if c["kind"] == "noise"} for r in recs}
    for c in page.cells:
        chk = verdicts[c["data-case"]].get(c["data-metric"])
        if chk is not None:
            assert (c["class"].split()[1] == "regression") == (not chk["passed"] and chk["direction"] == "down")
    drop = cell(page, "phi-wikidoc", "bert_f1")
    assert "regression" in drop["class"] and drop["text"].startswith("-0.")
    assert "MDE" in drop["title"] and "band" in drop["title"]  # the gate's numbers in the tooltip
    assert "\u00b1" in drop["text"]  # the interval in the cell
    assert "pass" in cell(page, "llama-wikidoc", "bert_f1")["class"]


def test_does_not_beat_base_is_shown_as_such_not_blamed_on_the_baseline():
    recs, base = make_records()
    rec = next(r for r in recs if r["case_id"] == "llama-mental")
    assert rec["verdict"]["status"] == "regression"
    reasons = failure_reasons(rec)
    assert reasons and reasons[0].startswith("does not beat the base model on bert_f1")
    html = to_html(Report("t", recs, base), {})
    page = parse(html)
    assert "pass" in cell(page, "llama-mental", "bert_f1")["class"]  # its scores match the baseline
    controls = [c for c in page.checks if c["data-case"] == "llama-mental" and c["data-check"] == "controls"]
    assert len(controls) == 1 and "regression" in controls[0]["class"] and controls[0]["text"] == "not > base"
    assert "does not beat the base model on bert_f1" in controls[0]["title"]
    why_list = html.split("<h2>Why cases failed</h2>")[1].split("<h2>")[0]
    assert "does not beat the base model on bert_f1" in why_list.split("llama-mental")[1]  # its first reason
    text = details_text(recs)
    why = [ln for ln in text.splitlines() if ln.strip().startswith("llama-mental:")]
    assert len(why) == 1 and "regression: does not beat the base model on bert_f1" in why[0]
    # the dropped case is explained by its scores, with the MDE
    drop = next(r for r in recs if r["case_id"] == "phi-wikidoc")
    assert any(x.startswith("bert_f1 dropped -0.") and "MDE" in x for x in failure_reasons(drop))
    # the controls table shows base scores beside the tuned ones
    row = next(ln for ln in text.splitlines() if ln.startswith("llama-mental"))
    assert row.split()[1:4] == ["bert_f1", f"{rec['metrics']['bert_f1']:.4f}", f"{rec['base_metrics']['bert_f1']:.4f}"]
    assert all(not failure_reasons(r) for r in recs if r["case_id"] == "llama-wikidoc")


def test_hostile_names_are_escaped():
    evil_model = "<script>alert(1)</script>"
    evil_data = 'x" onmouseover="alert(2)'
    recs, base = make_records({"ok": (evil_model, evil_data), "drop": ("phi", "<b>bold</b>"), "base": ("a&b", "c")})
    html = to_html(Report(f"report {evil_model}", recs, base), {})
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert 'onmouseover="alert' not in html
    page = parse(html)
    assert "script" not in page.tags and "b" not in page.tags
    # the names survive as text: the parser gives the original strings back
    cases = {c["data-case"] for c in page.cells}
    assert cases == {f"{evil_model}-{evil_data}", "phi-<b>bold</b>", "a&b-c"}


def test_family_panel_one_row_per_model():
    recs, base = make_records()
    html = to_html(Report("t", recs, base), {})
    fam = html.split("<h2>Per family</h2>")[1].split("</table>")[0]
    rows = parse(fam)
    assert fam.count("<tr>") == 3  # header + llama + phi
    assert "llama" in fam and "phi" in fam and "regression 1" in fam
    assert rows.cells == []  # family cells are not case cells


def test_sparkline_draws_the_history_and_marks_shifts():
    from medqa_core.results.report import sparkline_svg

    assert sparkline_svg([0.5]) == ""
    svg = sparkline_svg([0.5, 0.5, 0.5, 0.4, 0.4], shifts=[3])
    points = svg.split('points="')[1].split('"')[0].split()
    assert svg.startswith("<svg") and len(points) == 5 and "stroke-dasharray" in svg
    assert float(points[3].split(",")[1]) > float(points[0].split(",")[1])  # the drop goes down (SVG y grows downwards)
    recs, base = make_records()
    rep = Report("t", recs, base, history_series={"phi-wikidoc": {"bert_f1": [("r1", 0.5), ("r2", 0.5), ("r3", 0.4)]}})
    html = to_html(rep, {})
    assert html.count("<svg") == 1 and "3 stored runs" in html
