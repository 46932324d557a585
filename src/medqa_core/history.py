"""Append-only run history in SQLite: one row per run, one row per case result.

Default location ``<cache dir>/history.sqlite`` (``--history PATH`` / ``MEDQA_HISTORY``). Rows are
only ever inserted: triggers make UPDATE and DELETE fail, so a nightly series can be trusted
as it was written. A run is added by the pytest controller at the end of a session with the
case records it collected (the same JSON records that sit in the run directory).
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MedQAError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    profile TEXT NOT NULL,
    git_sha TEXT,
    hardware_class TEXT,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cases (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    case_id TEXT NOT NULL,
    outcome TEXT,
    status TEXT,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, case_id)
);
CREATE TRIGGER IF NOT EXISTS runs_append_only_u BEFORE UPDATE ON runs
    BEGIN SELECT RAISE(ABORT, 'medqa history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS runs_append_only_d BEFORE DELETE ON runs
    BEGIN SELECT RAISE(ABORT, 'medqa history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS cases_append_only_u BEFORE UPDATE ON cases
    BEGIN SELECT RAISE(ABORT, 'medqa history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS cases_append_only_d BEFORE DELETE ON cases
    BEGIN SELECT RAISE(ABORT, 'medqa history is append-only'); END;
"""


#: marks a SQLite file as a medqa history ("MQBH")
APPLICATION_ID = 0x4D514248


class HistoryError(MedQAError):
    """The history database cannot be read or written."""


@dataclass(frozen=True)
class RunRow:
    seq: int
    run_id: str
    created: float
    profile: str
    git_sha: str | None
    hardware_class: str | None


class History:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        """Open (creating) the history. A path that is a directory or a file inside a regular file,
        or another application's SQLite database, is refused before anything is written to it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise HistoryError(f"--history {self.path}: is a directory; give a file path (or 'none')")
            con = sqlite3.connect(self.path, timeout=30)
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            ours = app_id == APPLICATION_ID or (app_id == 0 and (not tables or {"runs", "cases"} <= tables))
            if not ours:
                con.close()
                raise HistoryError(f"--history {self.path}: a SQLite database of another application "
                                   f"(application_id {app_id}, tables {sorted(tables)[:5]}); not touching it, "
                                   "give another path")
            con.executescript(SCHEMA)
            if app_id == 0:
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise HistoryError(f"--history {self.path}: not a usable medqa history database ({exc})") from exc
        return con

    def add_run(self, run_id: str, profile: str, records: list[dict[str, Any]],
                meta: dict[str, Any] | None = None, created: float | None = None) -> int:
        """Insert a run and its case records in one transaction; returns the run's sequence number."""
        if not records:
            raise HistoryError(f"{self.path}: run {run_id} has no case records to store")
        prov = records[0].get("provenance", {})
        hw = prov.get("hardware", {})
        from .resources import recorded_hardware_class

        hw_class = recorded_hardware_class(hw) if hw else None
        with closing(self._connect()) as con:
            try:
                with con:
                    cur = con.execute(
                        "INSERT INTO runs (run_id, created, profile, git_sha, hardware_class, meta) VALUES (?,?,?,?,?,?)",
                        (run_id, time.time() if created is None else created, profile, prov.get("git_sha"),
                         hw_class, json.dumps(meta or {}, sort_keys=True)),
                    )
                    seq = int(cur.lastrowid)
                    con.executemany(
                        "INSERT INTO cases (run_id, case_id, outcome, status, record) VALUES (?,?,?,?,?)",
                        [(run_id, r["case_id"], r.get("outcome"), (r.get("verdict") or {}).get("status"),
                          json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, allow_nan=False))
                         for r in records],
                    )
            except sqlite3.IntegrityError as exc:
                raise HistoryError(f"{self.path}: run {run_id} is already stored ({exc})") from exc
        return seq

    def runs(self, profile: str | None = None) -> list[RunRow]:
        q = "SELECT seq, run_id, created, profile, git_sha, hardware_class FROM runs"
        args: tuple = ()
        if profile:
            q, args = q + " WHERE profile = ?", (profile,)
        with closing(self._connect()) as con:
            return [RunRow(*row) for row in con.execute(q + " ORDER BY seq", args)]

    def resolve(self, ref: str) -> str:
        """A run id from ``ref``: an exact run id, ``latest``, ``latest~N`` (N runs before), or a unique prefix."""
        runs = self.runs()
        if not runs:
            raise HistoryError(f"{self.path}: the history is empty")
        if ref == "latest" or ref.startswith("latest~"):
            back = int(ref.split("~", 1)[1]) if "~" in ref else 0
            if back >= len(runs):
                raise HistoryError(f"{self.path}: {ref}: only {len(runs)} run(s) stored")
            return runs[-1 - back].run_id
        hits = [r.run_id for r in runs if r.run_id.startswith(ref)]
        if len(hits) != 1:
            raise HistoryError(f"{self.path}: run {ref!r} " + ("not found" if not hits else f"is ambiguous: {hits[:5]}"))
        return hits[0]

    def records(self, run_id: str) -> list[dict[str, Any]]:
        with closing(self._connect()) as con:
            rows = con.execute("SELECT record, outcome FROM cases WHERE run_id = ? ORDER BY case_id", (run_id,)).fetchall()
        out = []
        for rec, outcome in rows:
            r = json.loads(rec)
            r["outcome"] = outcome
            out.append(r)
        return out

    def case_rows(self, case_id: str, profile: str | None = None) -> list[tuple[str, str | None, dict[str, Any]]]:
        """(run id, hardware class, record) of every stored result of one case, in run order."""
        q = ("SELECT runs.run_id, runs.hardware_class, cases.record FROM cases JOIN runs ON runs.run_id = cases.run_id "
             "WHERE cases.case_id = ?")
        args: list[str] = [case_id]
        if profile:
            q += " AND runs.profile = ?"
            args.append(profile)
        with closing(self._connect()) as con:
            rows = con.execute(q + " ORDER BY runs.seq", args).fetchall()
        return [(run_id, hw_class, json.loads(rec)) for run_id, hw_class, rec in rows]

    def series(self, case_id: str, metric: str, profile: str | None = None,
               hardware_class: str | None = None) -> list[tuple[str, float]]:
        """(run id, value) of one case's metric (or resource: train_s, mem_mib) in run order,
        optionally only runs of one profile and of one hardware class."""
        return series_of(self.case_rows(case_id, profile), metric, hardware_class)

    def case_ids(self, profile: str | None = None) -> list[str]:
        q = "SELECT DISTINCT cases.case_id FROM cases JOIN runs ON runs.run_id = cases.run_id"
        args: tuple = ()
        if profile:
            q, args = q + " WHERE runs.profile = ?", (profile,)
        with closing(self._connect()) as con:
            return sorted(r[0] for r in con.execute(q, args))


RESOURCE_KEYS = {"train_s": "train_seconds", "mem_mib": "peak_mem_mib", "train_seconds": "train_seconds",
                 "peak_mem_mib": "peak_mem_mib", "tokens_per_s": "tokens_per_s"}


def series_of(rows: list[tuple[str, str | None, dict[str, Any]]], metric: str,
              hardware_class: str | None = None) -> list[tuple[str, float]]:
    """(run id, value) of ``metric`` from :meth:`History.case_rows`, runs without the value left out."""
    out = []
    for run_id, hw_class, rec in rows:
        v = metric_value(rec, metric)
        if v is not None and (hardware_class is None or hw_class == hardware_class):
            out.append((run_id, v))
    return out


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    if metric in record.get("metrics", {}):
        return float(record["metrics"][metric])
    key = RESOURCE_KEYS.get(metric)
    if key and record.get("resources", {}).get(key) is not None:
        return float(record["resources"][key])
    return None
