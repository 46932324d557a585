"""History retention: ``History.prune(keep_runs=..., keep_days=...)`` and the same as a setting
applied after every stored run. Only prune deletes; the append-only triggers stay for the rest."""
from __future__ import annotations

import sqlite3

import pytest
from helpers import history_record

from medqa_core.results.history import History, HistoryError, ImportRun

DAY = 86400.0
NOW = 2_000_000_000.0


def counts(path) -> tuple[int, int, int]:
    con = sqlite3.connect(path)
    try:
        return tuple(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "cases", "run_groups"))
    finally:
        con.close()


def test_prune_keeps_the_newest_runs_of_each_profile(tmp_path):
    h = History(tmp_path / "h.sqlite")
    for i in range(6):
        h.add_run(f"t{i}", "tiny", [history_record(), history_record("phi-wikidoc")], created=NOW - (6 - i) * DAY)
    for i in range(2):
        h.add_run(f"p{i}", "paper", [history_record()], created=NOW - 100 * DAY)  # old, but few: kept by keep_runs alone
    res = h.prune(keep_runs=3)
    assert res.runs_removed == ["t0", "t1", "t2"] and res.cases_removed == 6 and res.groups_removed == []
    assert [r.run_id for r in h.runs()] == ["t3", "t4", "t5", "p0", "p1"]
    assert counts(h.path) == (5, 8, 0)
    assert h.prune(keep_runs=3).runs_removed == []  # idempotent


def test_prune_by_age_and_both_limits(tmp_path):
    h = History(tmp_path / "h.sqlite")
    for i in range(6):
        h.add_run(f"t{i}", "tiny", [history_record()], created=NOW - (6 - i) * 10 * DAY)  # 60, 50, ... 10 days old
    assert h.prune(keep_days=35, now=NOW).runs_removed == ["t0", "t1", "t2"]
    assert h.prune(keep_runs=2, keep_days=35, now=NOW).runs_removed == ["t3"]  # every limit must keep a run
    assert [r.run_id for r in h.runs()] == ["t4", "t5"]
    with pytest.raises(HistoryError, match="keep_runs and/or keep_days"):
        h.prune()
    with pytest.raises(HistoryError, match="keep_runs"):
        h.prune(keep_runs=0)


def test_a_group_counts_as_one_run_and_goes_whole(tmp_path):
    h = History(tmp_path / "h.sqlite")
    for night in range(3):
        h.merge(f"night-{night}", [ImportRun(f"n{night}-{fam}", "tiny", [history_record(f"{fam}-wikidoc")], NOW + night * DAY + k,
                                             f"/d/{fam}") for k, fam in enumerate(("llama", "phi"))])
    h.add_run("solo", "tiny", [history_record()], created=NOW + 5 * DAY)
    assert [r.run_id for r in h.runs()] == ["night-0", "night-1", "night-2", "solo"]
    res = h.prune(keep_runs=2)
    assert res.groups_removed == ["night-0", "night-1"]
    assert res.runs_removed == ["n0-llama", "n0-phi", "n1-llama", "n1-phi"]
    assert [r.run_id for r in h.runs()] == ["night-2", "solo"] and counts(h.path) == (3, 3, 2)


def test_only_prune_deletes(tmp_path):
    h = History(tmp_path / "h.sqlite")
    for i in range(3):
        h.add_run(f"t{i}", "tiny", [history_record()])
    h.prune(keep_runs=1)
    con = sqlite3.connect(h.path)
    names = {r for (r,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert {"runs_append_only_d", "cases_append_only_d", "run_groups_append_only_d"} <= names
    for sql in ("DELETE FROM cases", "DELETE FROM runs", "UPDATE runs SET profile = 'x'"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()


def test_retention_setting_prunes_after_every_stored_run(tmp_path, monkeypatch):
    h = History(tmp_path / "h.sqlite", keep_runs=3)
    for i in range(5):
        h.add_run(f"t{i}", "tiny", [history_record()])
    assert [r.run_id for r in h.runs()] == ["t2", "t3", "t4"]
    monkeypatch.setenv("MEDQA_HISTORY_KEEP_RUNS", "2")
    env = History(tmp_path / "h.sqlite")
    assert env.retention() == (2, None)
    env.add_run("t5", "tiny", [history_record()])
    assert [r.run_id for r in env.runs()] == ["t4", "t5"]
    monkeypatch.setenv("MEDQA_HISTORY_KEEP_DAYS", "-3")
    with pytest.raises(HistoryError, match="MEDQA_HISTORY_KEEP_DAYS='-3'"):
        History(tmp_path / "h.sqlite").add_run("t6", "tiny", [history_record()])
    assert [r.run_id for r in env.runs()] == ["t4", "t5"]  # a bad setting stores nothing


def test_vacuum_returns_the_space(tmp_path):
    h = History(tmp_path / "h.sqlite")
    big = history_record()
    big["runs"] = [{"per_example": {"bert_f1": [0.5] * 5000}}]
    for i in range(20):
        h.add_run(f"t{i}", "tiny", [big])
    before = h.path.stat().st_size
    h.prune(keep_runs=2, vacuum=True)
    assert h.path.stat().st_size < before / 4
    assert [r.run_id for r in h.runs()] == ["t18", "t19"]
