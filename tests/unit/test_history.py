"""The SQLite run history: append-only, run references, series, and the alert payload built from it."""
from __future__ import annotations

import sqlite3

import pytest

from medqa_core.errors import MedQAError
from medqa_core.metrics import METRICS
from medqa_core.results.alerts import payload
from medqa_core.results.history import History, HistoryError, metric_value, series_of


def series(h, case_id, metric, profile=None, hardware_class=None):
    """(run id, value) of one case's metric in run order, as trend and report read it."""
    return series_of(h.case_rows(case_id, profile), metric, hardware_class)


def rec(case_id: str, bert_f1: float, status: str = "pass", outcome: str = "passed", gpu: str | None = None,
        train_s: float = 10.0) -> dict:
    return {
        "case_id": case_id, "model": case_id.split("-")[0], "dataset": case_id.split("-", 1)[1],
        "metrics": {**{m: 0.4 for m in METRICS}, "bert_f1": bert_f1},
        "resources": {"train_seconds": train_s, "peak_mem_mib": 100.0, "tokens_per_s": 5.0, "device": "cpu"},
        "provenance": {"git_sha": "abc123", "hardware": {"gpu": gpu, "gpu_count": 1 if gpu else None}},
        "verdict": {"status": status, "checks": []}, "outcome": outcome, "_path": "/x.json",
    }


def test_runs_are_appended_in_order_and_read_back(tmp_path):
    h = History(tmp_path / "h.sqlite")
    assert h.add_run("r1", "tiny", [rec("llama-wikidoc", 0.5), rec("phi-wikidoc", 0.3)]) == 1
    assert h.add_run("r2", "tiny", [rec("llama-wikidoc", 0.45, "regression", "failed")]) == 2
    h.add_run("g1", "paper", [rec("llama-wikidoc", 0.9, gpu="NVIDIA H100 80GB HBM3")])
    assert [r.run_id for r in h.runs()] == ["r1", "r2", "g1"]
    assert [r.run_id for r in h.runs("tiny")] == ["r1", "r2"]
    assert h.runs()[0].hardware_class == "cpu" and h.runs()[2].hardware_class == "1x-nvidia-h100-80gb-hbm3"
    assert series(h, "llama-wikidoc", "bert_f1", "tiny") == [("r1", 0.5), ("r2", 0.45)]
    assert series(h, "llama-wikidoc", "train_s", hardware_class="1x-nvidia-h100-80gb-hbm3") == [("g1", 10.0)]
    assert h.case_ids("tiny") == ["llama-wikidoc", "phi-wikidoc"]
    [r2] = h.records("r2")
    assert r2["outcome"] == "failed" and r2["verdict"]["status"] == "regression" and "_path" not in r2


def test_history_is_append_only(tmp_path):
    h = History(tmp_path / "h.sqlite")
    h.add_run("r1", "tiny", [rec("llama-wikidoc", 0.5)])
    with pytest.raises(HistoryError, match="already stored"):
        h.add_run("r1", "tiny", [rec("llama-wikidoc", 0.1)])
    con = sqlite3.connect(h.path)
    for sql in ("UPDATE cases SET status = 'pass'", "DELETE FROM cases", "UPDATE runs SET profile = 'x'", "DELETE FROM runs"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()
    assert series(h, "llama-wikidoc", "bert_f1") == [("r1", 0.5)]  # the failed duplicate left nothing behind


def test_run_references(tmp_path):
    h = History(tmp_path / "h.sqlite")
    with pytest.raises(HistoryError, match="empty"):
        h.resolve("latest")
    for rid in ("20261101-020000-aaaaaa", "20261102-020000-bbbbbb", "20261103-020000-cccccc"):
        h.add_run(rid, "tiny", [rec("llama-wikidoc", 0.5)])
    assert h.resolve("latest") == "20261103-020000-cccccc"
    assert h.resolve("latest~2") == "20261101-020000-aaaaaa"
    assert h.resolve("20261102") == "20261102-020000-bbbbbb"
    with pytest.raises(HistoryError, match="ambiguous"):
        h.resolve("2026110")
    with pytest.raises(HistoryError, match="not found"):
        h.resolve("1999")
    with pytest.raises(HistoryError, match="only 3 run"):
        h.resolve("latest~3")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "h.sqlite"
    bad.write_text("not sqlite " * 100)
    with pytest.raises(MedQAError, match=str(bad)):
        History(bad).runs()
    assert bad.read_text().startswith("not sqlite")  # untouched


def test_empty_run_is_refused(tmp_path):
    with pytest.raises(HistoryError, match="no case records"):
        History(tmp_path / "h.sqlite").add_run("r", "tiny", [])


def test_metric_value_reads_scores_and_resources():
    r = rec("llama-wikidoc", 0.5, train_s=12.5)
    assert metric_value(r, "bert_f1") == 0.5 and metric_value(r, "train_s") == 12.5
    assert metric_value(r, "mem_mib") == 100.0 and metric_value(r, "nope") is None


def test_alert_payload_names_failures_and_trends():
    from medqa_core.results.trend import Shift

    bad = rec("llama-wikidoc", 0.45, "regression", "failed")
    bad["verdict"]["checks"] = [
        {"name": "bert_f1", "value": 0.45, "baseline": 0.5, "limit": 0.48, "passed": False,
         "detail": "paired diff -0.0500 [95% CI -0.0600, -0.0400], min effect 0.02", "basis": "paired", "ci": [-0.06, -0.04]},
        {"name": "use_f1", "value": 0.4, "baseline": 0.4, "limit": 0.37, "passed": True, "detail": "", "basis": "paired"},
    ]
    ok = rec("phi-wikidoc", 0.3)
    trend = {"phi-wikidoc": {"use_f1": [Shift(4, "r4", 0.40, 0.38, "drift", (4, 6))]}}
    body = payload("run9", "tiny", [bad, ok], 1, trend, "/r/summary.md")
    assert body["status"] == "regression" and body["run_id"] == "run9"
    lines = body["text"].splitlines()
    assert lines[0] == "medqa-bench tiny run run9: 1 of 2 case(s) regressed or failed (pytest exit 1)"
    assert "- llama-wikidoc bert_f1: 0.4500 vs baseline 0.5000 (limit 0.4800) paired diff -0.0500" in body["text"]
    assert "use_f1: 0.4000" not in body["text"]  # passing checks are not alerts
    assert "- phi-wikidoc use_f1: drift -0.0200 (0.4000 -> 0.3800) since run r4" in body["text"]
    assert lines[-1] == "report: /r/summary.md"

    calm = payload("run10", "tiny", [ok], 0, {})
    assert calm["status"] == "pass" and calm["text"] == "medqa-bench tiny run run10: all 1 case(s) pass"
    assert payload("run11", "tiny", [ok], 0, trend)["status"] == "trend"
    assert payload("run12", "tiny", [ok], 2, {})["status"] == "regression"  # pytest itself failed


def test_recorded_hardware_class_never_probes_this_machine(monkeypatch):
    from medqa_core import resources

    monkeypatch.setattr(resources, "hardware", lambda: pytest.fail("a recorded class must not probe the machine"))
    assert resources.recorded_hardware_class({"gpu": None}) == "cpu"
    assert resources.recorded_hardware_class({"gpu": "Tesla T4", "gpu_count": 2}) == "2x-tesla-t4"


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path):
    import sqlite3

    from medqa_core.results.history import History, HistoryError

    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(HistoryError, match="another application"):
        History(other).runs()
    assert other.read_bytes() == before


@pytest.mark.parametrize("kind", ["directory", "inside_a_file", "not_sqlite"])
def test_unusable_history_paths_are_one_line_errors(tmp_path, kind):
    from medqa_core.results.history import History, HistoryError

    if kind == "directory":
        path = tmp_path / "d"
        path.mkdir()
    elif kind == "inside_a_file":
        (tmp_path / "f").write_text("x")
        path = tmp_path / "f" / "h.sqlite"
    else:
        path = tmp_path / "h.sqlite"
        path.write_text("this is not a database" * 100)
    with pytest.raises(HistoryError, match="--history"):
        History(path).runs()


def test_own_history_is_stamped_and_reopened(tmp_path):
    import sqlite3

    from medqa_core.results.history import APPLICATION_ID, History

    h = History(tmp_path / "h.sqlite")
    assert h.runs() == []
    assert sqlite3.connect(tmp_path / "h.sqlite").execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert History(tmp_path / "h.sqlite").runs() == []


def test_a_run_group_is_listed_resolved_and_read_as_one_run(tmp_path):
    from medqa_core.results.history import ImportRun

    h = History(tmp_path / "h.sqlite")
    h.add_run("20261101-020000-aaaaaa", "tiny", [rec("llama-wikidoc", 0.5)])
    runs = [ImportRun(f"20261102-02000{i}-bbbbb{i}", "tiny", [rec(f"{fam}-wikidoc", 0.4 + i / 10, gpu=gpu)], 0.0, f"/d{i}")
            for i, (fam, gpu) in enumerate((("llama", "Tesla T4"), ("phi", None)))]
    res = h.merge("night-2", runs)
    assert res.runs_added == [r.run_id for r in runs] and res.total_added == 2 and res.profile == "tiny"
    listed = h.runs()
    assert [r.run_id for r in listed] == ["20261101-020000-aaaaaa", "night-2"]
    assert listed[1].members == tuple(r.run_id for r in runs) and listed[1].hardware_class == "1x-tesla-t4+cpu"
    assert h.resolve("latest") == "night-2" and h.resolve("latest~1") == "20261101-020000-aaaaaa"
    assert h.resolve("night") == "night-2" and h.resolve("20261102-020001-bbbbb1") == "20261102-020001-bbbbb1"
    assert [r["case_id"] for r in h.records("night-2")] == ["llama-wikidoc", "phi-wikidoc"]
    assert [r["case_id"] for r in h.records("20261102-020001-bbbbb1")] == ["phi-wikidoc"]
    assert series(h, "llama-wikidoc", "bert_f1") == [("20261101-020000-aaaaaa", 0.5), ("night-2", 0.4)]
    assert series(h, "llama-wikidoc", "bert_f1", hardware_class="1x-tesla-t4") == [("night-2", 0.4)]
    con = sqlite3.connect(h.path)
    for sql in ("UPDATE run_groups SET group_id = 'x'", "DELETE FROM run_groups"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()


def test_a_history_written_before_run_groups_still_opens_and_takes_a_merge(tmp_path):
    from medqa_core.results.history import ImportRun

    path = tmp_path / "old.sqlite"
    History(path).add_run("r1", "tiny", [rec("llama-wikidoc", 0.5)])
    con = sqlite3.connect(path)
    con.execute("DROP TABLE run_groups")  # as the file was before run groups existed (its triggers go with it)
    con.execute("VACUUM")
    con.close()
    assert "run_groups" not in path.read_bytes().decode("latin-1")
    h = History(path)
    h.merge("g", [ImportRun("r2", "tiny", [rec("llama-wikidoc", 0.45)], 0.0, "/r2")])
    assert [r.run_id for r in h.runs()] == ["r1", "g"]


def test_the_history_package_is_post_run_code_for_the_cache_key(tmp_path, monkeypatch):
    """The history is a package (results/history/); like every module of results/ it shapes no
    cached artefact, so editing any of its modules keeps the cache key's code digest
    (cache.code_digest, cache.POST_RUN_PACKAGES), while editing a pipeline module changes it."""
    import shutil
    from pathlib import Path

    from medqa_core import cache

    src = Path(cache.__file__).resolve().parent
    pkg = tmp_path / "medqa_core"
    for p in src.rglob("*.py"):  # the package's code, in a copy the test may edit
        if "__pycache__" not in p.parts:
            (pkg / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, pkg / p.relative_to(src))
    monkeypatch.setattr(cache, "__file__", str(pkg / "cache.py"))
    digest = cache.code_digest.__wrapped__  # uncached: each call reads the copy again
    history_modules = sorted((pkg / "results" / "history").glob("*.py"))
    assert {p.name for p in history_modules} >= {"__init__.py", "store.py", "groups.py"}
    before = digest()
    for p in history_modules:
        p.write_text(p.read_text() + "\n# edited\n")
        assert digest() == before, f"editing {p.relative_to(pkg)} changed the code digest"
    stages = pkg / "stages.py"
    stages.write_text(stages.read_text() + "\n# edited\n")
    assert digest() != before
