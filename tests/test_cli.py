"""The medqa-bench command line on hand-written run records (no models)."""
from __future__ import annotations

import json
from pathlib import Path

from medqa_core.cli import main

METRICS = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")


def write_run(d: Path, bert_f1_values: list[float]) -> Path:
    d.mkdir()
    ids = [f"e{i}" for i in range(len(bert_f1_values))]
    mean = sum(bert_f1_values) / len(bert_f1_values)
    rec = {
        "case_id": "llama-wikidoc", "model": "llama", "dataset": "wikidoc",
        "metrics": {**{m: 0.5 for m in METRICS}, "bert_f1": mean},
        "resources": {"train_seconds": 10.0, "peak_mem_mib": 100.0, "tokens_per_s": 1.0, "device": "cpu"},
        "per_example": {"ids": ids, **{m: [0.5] * len(ids) for m in METRICS}, "bert_f1": bert_f1_values},
    }
    (d / "llama-wikidoc.json").write_text(json.dumps(rec))
    return d


def test_summary_prints_rows(tmp_path, capsys):
    run = write_run(tmp_path / "a", [0.4, 0.6])
    assert main(["summary", str(run)]) == 0
    out = capsys.readouterr().out
    assert "wikidoc" in out and "llama" in out and "0.5000" in out


def test_compare_flags_a_drop_with_its_ci(tmp_path, capsys):
    a = write_run(tmp_path / "a", [0.5] * 20)
    b = write_run(tmp_path / "b", [0.4] * 20)  # -0.1, tolerance 0.02
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "regression" in out and "bert_f1" in out and "95% CI -0.1000, -0.1000" in out
    assert main(["compare", str(a), str(a)]) == 0


def test_bad_run_dir_is_a_one_line_error(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and err.count("\n") == 1
