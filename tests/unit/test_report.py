"""Summary tables (plain text and markdown) and record loading."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.metrics import METRICS
from medqa_core.results.summary import COLUMNS, HEADER, load_records, markdown_table, plain_table, table_rows


def rec(model, dataset, metrics, train_s=10.0, mem=200.0, status="pass"):
    return {"case_id": f"{model}-{dataset}", "model": model, "dataset": dataset, "metrics": dict(zip(METRICS, metrics)),
            "resources": {"train_seconds": train_s, "peak_mem_mib": mem, "device": "cpu"},
            "verdict": {"status": status}}


RECORDS = [
    rec("llama", "wikidoc", (0.81234, 0.5, 0.6, 0.7, 0.4, 0.45, 0.425), 12.0, 240.0, "pass"),
    rec("phi", "wikidoc", (0.30, 0.31, 0.32, 0.33, 0.34, 0.35, 0.36), 8.0, 100.0, "regression"),
    rec("mistral", "healthcaremagic", (0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9), 5.0, 50.0, "improvement"),
]
BASELINE = {"schema_version": 1, "cases": {
    "llama-wikidoc": {"metrics": dict(zip(METRICS, (0.8, 0.5, 0.61234, 0.7, 0.4, 0.45, 0.425))),
                      "resources": {"train_seconds": 10.0, "peak_mem_mib": 200.0, "device": "cpu"}},
    "phi-wikidoc": {"metrics": dict(zip(METRICS, (0.35, 0.31, 0.32, 0.33, 0.34, 0.35, 0.36)))},  # no resources
}}


def row_of(table: str, model: str, dataset: str) -> str:
    lines = [ln for ln in table.splitlines() if f" {model} " in f" {ln} " and dataset in ln]
    assert len(lines) == 1, (model, dataset, table)
    return lines[0]


def test_plain_table_rows_and_deltas():
    out = plain_table(RECORDS, BASELINE)
    lines = out.splitlines()
    assert len(lines) == 3 + len(RECORDS)
    assert lines[-1].startswith("every value is the mean over 1 run of its case")  # the legend
    lines = lines[:-1]
    assert lines[0].split() == HEADER
    assert set(lines[1].replace(" ", "")) == {"-"}
    llama = row_of(out, "llama", "wikidoc")
    assert "0.8123 (+0.0123)" in llama  # bert_p 0.81234 vs 0.8
    assert "0.6000 (-0.0123)" in llama  # bert_f1 0.6 vs 0.61234
    assert "0.5000 (+0.0000)" in llama
    assert "12.0 (x1.20)" in llama and "240.0 (x1.20)" in llama
    assert llama.rstrip().endswith("pass")
    phi = row_of(out, "phi", "wikidoc")
    assert "0.3000 (-0.0500)" in phi
    assert "8.0" in phi and "(x" not in phi  # baseline without resources: no ratios
    assert phi.rstrip().endswith("regression")
    mistral = row_of(out, "mistral", "healthcaremagic")  # no baseline entry: no deltas
    assert "(" not in mistral and "0.9000" in mistral and mistral.rstrip().endswith("improvement")
    # every line is aligned to the header's column starts
    starts = [lines[0].index(h) for h in ("model", "verdict")]
    for ln in lines[2:]:
        assert ln[starts[0] - 2: starts[0]] == "  "


def test_tables_without_baseline_have_no_deltas():
    for out in (plain_table(RECORDS, None), markdown_table(RECORDS, None), plain_table(RECORDS, {"cases": {}})):
        out = "\n".join(ln for ln in out.splitlines() if "every value is" not in ln)  # the legend names "(delta)"
        assert "(" not in out and "+0." not in out
        for r in RECORDS:
            assert r["model"] in out and r["dataset"] in out
            assert f"{r['metrics']['bert_p']:.4f}" in out


def test_markdown_table():
    out = markdown_table(RECORDS, BASELINE)
    lines = out.splitlines()
    assert len(lines) == 4 + len(RECORDS)
    assert lines[-2] == "" and lines[-1].startswith("_every value is the mean over 1 run")  # the legend
    lines = lines[:-2]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == HEADER
    assert lines[1] == "|" + "---|" * len(HEADER)
    for ln, r in zip(lines[2:], RECORDS):
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(HEADER)
        assert cells[0] == r["dataset"] and cells[1] == r["model"] and cells[-1] == r["verdict"]["status"]
    llama = [c.strip() for c in lines[2].strip("|").split("|")]
    assert llama[HEADER.index("bert_p")] == "0.8123 (+0.0123)"
    assert llama[HEADER.index("bert_f1")] == "0.6000 (-0.0123)"
    assert llama[HEADER.index("train_s")] == "12.0 (x1.20)"


def test_zero_resource_baseline_gives_no_ratio():
    base = {"cases": {"llama-wikidoc": {"metrics": RECORDS[0]["metrics"],
                                        "resources": {"train_seconds": 0.0, "peak_mem_mib": 0}}}}
    row = table_rows(RECORDS[:1], base)[0]
    assert row[2 + COLUMNS.index("train_s")] == "12.0"
    assert row[2 + COLUMNS.index("mem_mib")] == "240.0"


@given(st.floats(-1, 1), st.floats(-1, 1))
@settings(max_examples=100, deadline=None)
def test_property_delta_cell(v, b):
    r = rec("llama", "wikidoc", (v,) * 7)
    base = {"cases": {"llama-wikidoc": {"metrics": dict.fromkeys(METRICS, b)}}}
    cell = table_rows([r], base)[0][2]
    value, delta = cell.split(" ")
    assert float(value) == pytest.approx(v, abs=5.1e-5)
    assert delta[0] == "(" and delta[1] in "+-" and delta[-1] == ")"
    assert float(delta[1:-1]) == pytest.approx(v - b, abs=5.1e-5)


def test_load_records_skips_broken_and_sorts(tmp_path):
    paths = []
    for i, r in enumerate(RECORDS):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(r))
        paths.append(p)
    (tmp_path / "broken.json").write_text('{"case_id": ')
    paths += [tmp_path / "broken.json", tmp_path / "missing.json"]
    got = load_records(paths)
    assert [(r["dataset"], r["model"]) for r in got] == [
        ("healthcaremagic", "mistral"), ("wikidoc", "llama"), ("wikidoc", "phi")]


def test_markdown_cells_and_fences_cannot_break_out():
    """Names and verdict texts come from users' profiles and data: in report.md they stay text."""
    from medqa_core.results.summary import md_cell, md_fence

    cell = md_cell("<script>x</script>|y\nz")
    assert "<" not in cell and "\n" not in cell and "\\|" in cell and cell.count("|") == 1
    text = "a ```` b ``` c"
    block = md_fence(text)
    fence = block[0]
    assert block[1] == text and block[2] == fence and len(fence) > 4 and set(fence) == {"`"}
    assert fence not in text


def test_answer_nll_is_a_column_only_when_a_run_measured_it():
    """A run with ``[gate] answer_nll`` shows it after ``degenerate`` with its delta (nats, four
    decimals); a table of runs without it keeps the usual header."""
    from medqa_core.results.summary import columns, header

    with_nll = [{**RECORDS[0], "metrics": {**RECORDS[0]["metrics"], "answer_nll": 2.14251}}, RECORDS[1]]
    base = {"cases": {"llama-wikidoc": {"metrics": {**BASELINE["cases"]["llama-wikidoc"]["metrics"], "answer_nll": 2.1}}}}
    assert columns(RECORDS) == COLUMNS and header(RECORDS) == HEADER
    head = header(with_nll)
    assert head.index("answer_nll") == head.index("degenerate") + 1 and len(head) == len(HEADER) + 1
    lines = markdown_table(with_nll, base).splitlines()
    llama = [c.strip() for c in lines[2].strip("|").split("|")]
    assert llama[head.index("answer_nll")] == "2.1425 (+0.0425)"
    phi = [c.strip() for c in lines[3].strip("|").split("|")]
    assert phi[head.index("answer_nll")] == "-" and len(phi) == len(head)
    assert plain_table(with_nll, base).splitlines()[0].split() == head
