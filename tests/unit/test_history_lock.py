"""A locked history never costs a run and never raises anything but a MedQAError.

Another process (here another connection, in a thread) holds the write lock on history.sqlite:
``add_run`` waits at most its deadline, spools the run to ``history.sqlite.spool/<run id>.json``
and says so in one line; the next write that gets the history stores the spooled run, once.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest
from helpers import history_record

from medqa_core.errors import MedQAError
from medqa_core.results.history import History, HistoryError, HistorySpooled
from medqa_core.results.trend import case_trends


@contextmanager
def locked(path, how: str = "IMMEDIATE"):
    """Another connection, in another thread, holding a write lock (``BEGIN IMMEDIATE``: writers
    wait; ``BEGIN EXCLUSIVE``: readers wait too) until the block ends."""
    ready, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            con = sqlite3.connect(path, timeout=0, isolation_level=None)
            con.execute(f"BEGIN {how}")
            con.execute("INSERT INTO runs (run_id, created, profile, meta) VALUES ('holder', 0, 'x', '{}')")
            ready.set()
            release.wait(60)
            con.execute("ROLLBACK")
            con.close()
        except BaseException as exc:  # pragma: no cover - shows in the test
            errors.append(exc)
            ready.set()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert ready.wait(10) and not errors, errors
    try:
        yield
    finally:
        release.set()
        t.join(10)


def stored(path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r for (r,) in con.execute("SELECT run_id FROM runs ORDER BY seq")]
    finally:
        con.close()


@pytest.mark.parametrize("how", ["IMMEDIATE", "EXCLUSIVE"])
def test_locked_history_spools_the_run_within_the_deadline_and_replays_it_once(tmp_path, how):
    path = tmp_path / "history.sqlite"
    h = History(path, lock_timeout=0.5)
    h.add_run("r1", "tiny", [history_record(f1=0.5)])
    with locked(path, how):
        t = time.monotonic()
        with pytest.raises(HistorySpooled) as err:
            h.add_run("r2", "tiny", [history_record(f1=0.45)], {"exitstatus": 1})
        took = time.monotonic() - t
        if how == "EXCLUSIVE":  # a trend read waits the same deadline and is a MedQAError too
            with pytest.raises(MedQAError, match="locked"):
                case_trends(h, ["llama-wikidoc"], "tiny", {})
    assert 0.4 < took < 3.0, took
    msg = str(err.value)
    spool = tmp_path / "history.sqlite.spool" / "r2.json"
    assert isinstance(err.value, MedQAError) and "\n" not in msg
    assert f"spooled to {spool}" in msg and "locked by another process for 0.5 s" in msg
    assert err.value.spool_file == spool and spool.is_file()
    assert json.loads(spool.read_text())["records"][0]["metrics"]["bert_f1"] == 0.45
    assert stored(path) == ["r1"] and h.spooled() == [spool]

    # the next session's add_run stores the spooled run first, then its own; the spool is emptied
    assert h.add_run("r3", "tiny", [history_record(f1=0.4)]) == 3
    assert stored(path) == ["r1", "r2", "r3"]
    assert not spool.exists() and h.spooled() == []
    assert h.run_meta(["r2"])["r2"] == {"exitstatus": 1}
    assert [r["metrics"]["bert_f1"] for r in h.records("r2")] == [0.45]
    h.add_run("r4", "tiny", [history_record(f1=0.4)])
    assert stored(path) == ["r1", "r2", "r3", "r4"]  # once


def test_lock_timeout_comes_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "history.sqlite"
    History(path).add_run("r1", "tiny", [history_record()])
    monkeypatch.setenv("MEDQA_HISTORY_LOCK_TIMEOUT", "0.3")
    h = History(path)
    assert h.lock_timeout == 0.3
    with locked(path):
        t = time.monotonic()
        with pytest.raises(HistorySpooled, match="for 0.3 s"):
            h.add_run("r2", "tiny", [history_record()])
        assert time.monotonic() - t < 2.5
    monkeypatch.setenv("MEDQA_HISTORY_LOCK_TIMEOUT", "soon")
    with pytest.raises(HistoryError, match="MEDQA_HISTORY_LOCK_TIMEOUT='soon'"):
        History(path).add_run("r3", "tiny", [history_record()])  # the constructor itself never raises


def test_a_spooled_run_stored_before_its_file_was_removed_is_not_stored_twice(tmp_path):
    """A crash between the commit and the removal of the spool file: the file is still there."""
    path = tmp_path / "history.sqlite"
    h = History(path, lock_timeout=0.3)
    h.add_run("r1", "tiny", [history_record()])
    with locked(path):
        with pytest.raises(HistorySpooled):
            h.add_run("r2", "tiny", [history_record()])
    spool = h.spooled()[0]
    kept = spool.read_text()
    h.add_run("r3", "tiny", [history_record()])
    spool.write_text(kept)  # as if the removal never happened
    assert h.replay_spool() == ["r2"]
    assert stored(path) == ["r1", "r2", "r3"] and h.spooled() == []


def test_the_same_run_spooled_then_added_again_is_stored_once(tmp_path):
    path = tmp_path / "history.sqlite"
    h = History(path, lock_timeout=0.3)
    h.runs()  # the schema
    with locked(path):
        with pytest.raises(HistorySpooled):
            h.add_run("r1", "tiny", [history_record()])
    assert h.add_run("r1", "tiny", [history_record()]) == 1  # a retry of the same run: the spooled copy is it
    assert stored(path) == ["r1"]


def test_a_damaged_spool_file_is_set_aside_and_does_not_block_the_history(tmp_path, caplog):
    path = tmp_path / "history.sqlite"
    h = History(path)
    h.spool_dir.mkdir(parents=True)
    (h.spool_dir / "broken.json").write_text("{not json")
    (h.spool_dir / "empty.json").write_text(json.dumps({"run_id": "x", "profile": "tiny", "records": []}))
    h.add_run("r1", "tiny", [history_record()])
    assert stored(path) == ["r1"] and h.spooled() == []
    assert sorted(p.name for p in h.spool_dir.iterdir()) == ["broken.json.bad", "empty.json.bad"]
    assert "broken.json cannot be stored" in caplog.text


def test_a_spool_that_cannot_be_written_is_still_one_medqa_error(tmp_path):
    path = tmp_path / "history.sqlite"
    h = History(path, lock_timeout=0.2)
    h.runs()
    h.spool_dir.write_text("a file where the spool directory would go")
    with locked(path):
        with pytest.raises(HistoryError, match="could not be spooled.*run r1 not stored") as err:
            h.add_run("r1", "tiny", [history_record()])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", ["nan", "no_case_id", "not_a_dict"])
def test_add_run_raises_nothing_but_medqa_errors(tmp_path, bad):
    r: object = history_record()
    if bad == "nan":
        r["metrics"]["bert_f1"] = math.nan  # type: ignore[index]
    elif bad == "no_case_id":
        del r["case_id"]  # type: ignore[attr-defined]
    else:
        r = ["not", "a", "record"]
    with pytest.raises(HistoryError, match="r1"):
        History(tmp_path / "h.sqlite").add_run("r1", "tiny", [r])  # type: ignore[list-item]
    assert History(tmp_path / "h.sqlite").runs() == []


def test_run_ids_that_are_not_file_names_spool_safely(tmp_path):
    path = tmp_path / "history.sqlite"
    h = History(path, lock_timeout=0.2)
    h.runs()
    with locked(path):
        with pytest.raises(HistorySpooled) as err:
            h.add_run("../../etc/x", "tiny", [history_record()])
    assert err.value.spool_file.parent == h.spool_dir and err.value.spool_file.name.startswith("_.._etc_x-")
    h.replay_spool()
    assert stored(path) == ["../../etc/x"]
