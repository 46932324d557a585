"""Append-only run history in SQLite: one row per run, one row per case result.

Default location ``<cache dir>/history.sqlite`` (``--history PATH`` / ``MEDQA_HISTORY``). Rows are
only ever inserted: triggers make UPDATE and DELETE fail, so a nightly series can be trusted
as it was written. A run is added by the pytest controller at the end of a session with the
case records it collected (the same JSON records that sit in the run directory).

Run groups (``medqa-bench merge``, docs/multi-runner.md): the runs of one night that ran on
several machines (one matrix job per model family) are imported under one group id. Every run
keeps its own row, records, provenance and hardware class; the group only says which runs
form one logical run. Listing, ``latest``, reports and trends show a group as one run; a run
that belongs to a group is not listed on its own.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MedQAError
from ..metrics import registry
from .record import CaseRecord

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
CREATE TABLE IF NOT EXISTS run_groups (
    group_id TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    added REAL NOT NULL,
    PRIMARY KEY (group_id, run_id)
);
CREATE TRIGGER IF NOT EXISTS run_groups_append_only_u BEFORE UPDATE ON run_groups
    BEGIN SELECT RAISE(ABORT, 'medqa history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS run_groups_append_only_d BEFORE DELETE ON run_groups
    BEGIN SELECT RAISE(ABORT, 'medqa history is append-only'); END;
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
    """One stored run, or one run group shown as a run (``members`` = its runs' ids; then
    ``seq`` is the newest member's, ``created`` the oldest member's, and ``git_sha`` and
    ``hardware_class`` list the members' distinct values joined by ``+``)."""

    seq: int
    run_id: str
    created: float
    profile: str
    git_sha: str | None
    hardware_class: str | None
    members: tuple[str, ...] = ()

    @property
    def is_group(self) -> bool:
        return bool(self.members)


@dataclass(frozen=True)
class ImportRun:
    """A run to import into a group (:meth:`History.merge`): its id (the run directory's name),
    profile, case records (each may carry ``_path``, the file it was read from, for errors)."""

    run_id: str
    profile: str
    records: list[CaseRecord]
    created: float
    source: str  # where it was read from, for messages and the run's meta


@dataclass(frozen=True)
class MergeResult:
    group_id: str
    runs_added: list[str]  # runs new to the history
    cases_added: dict[str, int]  # run id -> case rows inserted
    members: list[str]  # every run of the group after the merge
    profile: str = ""

    @property
    def total_added(self) -> int:
        return sum(self.cases_added.values())


def comparable(record: CaseRecord) -> dict[str, Any]:
    """A record as compared for idempotence: without the pytest outcome and without the
    in-memory ``_`` keys (neither is part of what the case measured)."""
    return {k: v for k, v in record.items() if k != "outcome" and not k.startswith("_")}


def outcome_of(record: CaseRecord) -> str:
    """The pytest outcome of a record read from a run directory (the file does not hold it):
    the one stored with it, else ``failed`` for a failing verdict (gate.FAILING) and ``passed``."""
    from ..gate import FAILING

    if record.get("outcome"):
        return str(record["outcome"])
    return "failed" if (record.get("verdict") or {}).get("status") in FAILING else "passed"


def record_hardware_class(record: CaseRecord, fallback: str | None = None) -> str | None:
    """The hardware class the record was measured on (its own provenance), else ``fallback``."""
    from ..resources import recorded_hardware_class

    hw = (record.get("provenance") or {}).get("hardware")
    return recorded_hardware_class(hw) if isinstance(hw, dict) and hw else fallback


def _case_row(run_id: str, r: dict[str, Any]) -> tuple[str, str, str | None, str | None, str]:
    return (run_id, r["case_id"], r.get("outcome"), (r.get("verdict") or {}).get("status"),
            json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, allow_nan=False))


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

    def add_run(self, run_id: str, profile: str, records: list[CaseRecord],
                meta: dict[str, Any] | None = None, created: float | None = None) -> int:
        """Insert a run and its case records in one transaction; returns the run's sequence number."""
        if not records:
            raise HistoryError(f"{self.path}: run {run_id} has no case records to store")
        prov = records[0].get("provenance", {})
        hw = prov.get("hardware", {})
        from ..resources import recorded_hardware_class

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
                        [_case_row(run_id, r) for r in records],
                    )
            except sqlite3.IntegrityError as exc:
                raise HistoryError(f"{self.path}: run {run_id} is already stored ({exc})") from exc
        return seq

    def runs(self, profile: str | None = None, grouped: bool = True) -> list[RunRow]:
        """The stored runs in the order they were stored. ``grouped`` (default): a run group is
        one row (at its newest member's place) and its member runs are not listed on their own."""
        q = "SELECT seq, run_id, created, profile, git_sha, hardware_class FROM runs"
        args: tuple = ()
        if profile:
            q, args = q + " WHERE profile = ?", (profile,)
        with closing(self._connect()) as con:
            rows = [RunRow(*row) for row in con.execute(q + " ORDER BY seq", args)]
            groups = self._groups(con)
        if not grouped or not groups:
            return rows
        by_id = {r.run_id: r for r in rows}
        grouped_ids = {rid for members in groups.values() for rid in members}
        out = [r for r in rows if r.run_id not in grouped_ids]
        for gid, members in groups.items():
            mem = [by_id[m] for m in members if m in by_id]  # members of another profile are filtered out
            if not mem:
                continue
            mem.sort(key=lambda r: r.seq)
            out.append(RunRow(seq=mem[-1].seq, run_id=gid, created=min(r.created for r in mem), profile=mem[0].profile,
                              git_sha=_joined(r.git_sha for r in mem), hardware_class=_joined(r.hardware_class for r in mem),
                              members=tuple(r.run_id for r in mem)))
        return sorted(out, key=lambda r: (r.seq, r.is_group, r.run_id))

    @staticmethod
    def _groups(con: sqlite3.Connection) -> dict[str, list[str]]:
        """group id -> member run ids (in the order they joined)."""
        out: dict[str, list[str]] = {}
        for gid, rid in con.execute("SELECT group_id, run_id FROM run_groups ORDER BY added, rowid"):
            out.setdefault(gid, []).append(rid)
        return out

    def groups(self) -> dict[str, list[str]]:
        """Every run group: group id -> its member run ids."""
        with closing(self._connect()) as con:
            return self._groups(con)

    def resolve(self, ref: str) -> str:
        """A run or group id from ``ref``: an exact run or group id, ``latest``, ``latest~N`` (N runs
        before; a group counts as one run), or a unique prefix of a listed run or group id."""
        runs = self.runs()
        if not runs:
            raise HistoryError(f"{self.path}: the history is empty")
        if ref == "latest" or ref.startswith("latest~"):
            back = int(ref.split("~", 1)[1]) if "~" in ref else 0
            if back >= len(runs):
                raise HistoryError(f"{self.path}: {ref}: only {len(runs)} run(s) stored")
            return runs[-1 - back].run_id
        every = {r.run_id for r in runs} | {r.run_id for r in self.runs(grouped=False)}
        if ref in every:
            return ref
        hits = [r.run_id for r in runs if r.run_id.startswith(ref)]
        if len(hits) != 1:
            raise HistoryError(f"{self.path}: run {ref!r} " + ("not found" if not hits else f"is ambiguous: {hits[:5]}"))
        return hits[0]

    def records(self, run_id: str) -> list[CaseRecord]:
        """The case records of a run, or of a run group (all its runs' cases; a case run twice
        in the group counts once, from the newest run)."""
        with closing(self._connect()) as con:
            members = self._groups(con).get(run_id)
            if members is None:
                rows = con.execute("SELECT record, outcome FROM cases WHERE run_id = ? ORDER BY case_id", (run_id,)).fetchall()
            else:
                marks = ",".join("?" * len(members))
                rows = con.execute(f"SELECT cases.record, cases.outcome, cases.case_id FROM cases JOIN runs "
                                   f"ON runs.run_id = cases.run_id WHERE cases.run_id IN ({marks}) ORDER BY runs.seq",
                                   members).fetchall()
                newest = {cid: (rec, outcome) for rec, outcome, cid in rows}  # later runs overwrite earlier ones
                rows = [newest[cid] for cid in sorted(newest)]
        out = []
        for rec, outcome in rows:
            r = json.loads(rec)
            r["outcome"] = outcome
            out.append(r)
        return out

    def case_rows(self, case_id: str, profile: str | None = None) -> list[tuple[str, str | None, dict[str, Any]]]:
        """(run id, hardware class, record) of every stored result of one case, in run order.

        The run id of a run in a group is the group's (its first group's, if it is in several),
        and a group contributes one row per case: its newest run's. The hardware class is the
        record's own (its provenance), else its run's."""
        q = ("SELECT runs.run_id, runs.hardware_class, cases.record, "
             "(SELECT g.group_id FROM run_groups g WHERE g.run_id = runs.run_id ORDER BY g.added, g.rowid LIMIT 1) "
             "FROM cases JOIN runs ON runs.run_id = cases.run_id WHERE cases.case_id = ?")
        args: list[str] = [case_id]
        if profile:
            q += " AND runs.profile = ?"
            args.append(profile)
        with closing(self._connect()) as con:
            rows = con.execute(q + " ORDER BY runs.seq", args).fetchall()
        out: list[tuple[str, str | None, dict[str, Any]]] = []
        where: dict[str, int] = {}
        for run_id, hw_class, rec, group in rows:
            label = group or run_id
            r = json.loads(rec)
            if label in where:  # the same case again in one group: the newer run stands for the group
                out[where[label]] = None  # type: ignore[call-overload]
            where[label] = len(out)
            out.append((label, record_hardware_class(r, hw_class), r))
        return [row for row in out if row is not None]

    def merge(self, group_id: str, runs: list[ImportRun]) -> MergeResult:
        """Import ``runs`` into the history as members of group ``group_id``, in one transaction:
        an error anywhere leaves the history as it was.

        Idempotent: a run already stored (under its run id, by pytest or an earlier merge) is not
        stored again; only its cases that are missing are added, and a stored case whose record
        differs from the one given is an error (the history is append-only). A run already in
        the group is not added to it twice."""
        if not runs:
            raise HistoryError(f"{self.path}: nothing to merge into group {group_id}")
        now = time.time()
        added_runs: list[str] = []
        added_cases: dict[str, int] = {}
        with closing(self._connect()) as con:
            try:
                with con:
                    con.execute("BEGIN IMMEDIATE")  # one writer: another merge waits, never interleaves
                    groups = self._groups(con)
                    if (any(r.run_id == group_id for r in runs)
                            or con.execute("SELECT 1 FROM runs WHERE run_id = ?", (group_id,)).fetchone()):
                        raise HistoryError(f"{self.path}: group id {group_id!r} is also a run id (stored or being "
                                           "merged); choose another --group")
                    profiles = {p for (p,) in con.execute(
                        "SELECT DISTINCT runs.profile FROM run_groups JOIN runs ON runs.run_id = run_groups.run_id "
                        "WHERE run_groups.group_id = ?", (group_id,))}
                    for run in runs:
                        if run.run_id in groups:
                            raise HistoryError(f"{run.source}: run id {run.run_id!r} is already the id of a run group "
                                               f"in {self.path}")
                        if profiles and run.profile not in profiles:
                            raise HistoryError(f"{run.source}: profile {run.profile!r}, but group {group_id} holds "
                                               f"profile {sorted(profiles)[0]!r}; one group is one profile")
                        profiles.add(run.profile)
                        n = self._import_run(con, run, now)
                        if n is None:
                            added_runs.append(run.run_id)
                            n = len(run.records)
                        added_cases[run.run_id] = added_cases.get(run.run_id, 0) + n
                        con.execute("INSERT OR IGNORE INTO run_groups (group_id, run_id, added) VALUES (?,?,?)",
                                    (group_id, run.run_id, now))
                    members = [r for (r,) in con.execute(
                        "SELECT run_id FROM run_groups WHERE group_id = ? ORDER BY added, rowid", (group_id,))]
            except sqlite3.DatabaseError as exc:
                raise HistoryError(f"{self.path}: merge into group {group_id} failed, nothing written ({exc})") from exc
        return MergeResult(group_id, added_runs, added_cases, members, runs[0].profile)

    @staticmethod
    def _import_run(con: sqlite3.Connection, run: ImportRun, now: float) -> int | None:
        """Store one run's missing rows; None when the run itself was new, else the cases added."""
        if not run.records:
            raise HistoryError(f"{run.source}: run {run.run_id} has no case records to store")
        stored = con.execute("SELECT profile FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
        if stored is None:
            prov = run.records[0].get("provenance") or {}
            con.execute(
                "INSERT INTO runs (run_id, created, profile, git_sha, hardware_class, meta) VALUES (?,?,?,?,?,?)",
                (run.run_id, run.created, run.profile, prov.get("git_sha"), record_hardware_class(run.records[0]),
                 json.dumps({"imported": now, "source": run.source}, sort_keys=True)))
            con.executemany("INSERT INTO cases (run_id, case_id, outcome, status, record) VALUES (?,?,?,?,?)",
                            [_case_row(run.run_id, {**r, "outcome": outcome_of(r)}) for r in run.records])
            return None
        if stored[0] != run.profile:
            raise HistoryError(f"{run.source}: run {run.run_id} is stored with profile {stored[0]!r}, these records "
                               f"say {run.profile!r}")
        have = {cid: json.loads(rec) for cid, rec in
                con.execute("SELECT case_id, record FROM cases WHERE run_id = ?", (run.run_id,))}
        new = []
        for r in run.records:
            old = have.get(r["case_id"])
            if old is None:
                new.append(r)
            elif comparable(old) != comparable(r):
                raise HistoryError(f"{r.get('_path') or run.source}: case {r['case_id']} of run {run.run_id} is already "
                                   "stored with a different record; the history is append-only (was the file edited?)")
        con.executemany("INSERT INTO cases (run_id, case_id, outcome, status, record) VALUES (?,?,?,?,?)",
                        [_case_row(run.run_id, {**r, "outcome": outcome_of(r)}) for r in new])
        return len(new)

    def case_ids(self, profile: str | None = None) -> list[str]:
        q = "SELECT DISTINCT cases.case_id FROM cases JOIN runs ON runs.run_id = cases.run_id"
        args: tuple = ()
        if profile:
            q, args = q + " WHERE runs.profile = ?", (profile,)
        with closing(self._connect()) as con:
            return sorted(r[0] for r in con.execute(q, args))


RESOURCE_KEYS = registry.RESOURCE_KEYS


def series_of(rows: list[tuple[str, str | None, dict[str, Any]]], metric: str,
              hardware_class: str | None = None) -> list[tuple[str, float]]:
    """(run id, value) of ``metric`` from :meth:`History.case_rows`, runs without the value left out."""
    out = []
    for run_id, hw_class, rec in rows:
        v = metric_value(rec, metric)
        if v is not None and (hardware_class is None or hw_class == hardware_class):
            out.append((run_id, v))
    return out


def metric_value(record: CaseRecord, metric: str) -> float | None:
    if metric in record.get("metrics", {}):
        return float(record["metrics"][metric])
    key = RESOURCE_KEYS.get(metric)
    if key and record.get("resources", {}).get(key) is not None:
        return float(record["resources"][key])
    return None


def _joined(values: Any) -> str | None:
    """Distinct non-empty values joined by ``+`` (sorted), None when there is none."""
    vals = sorted({v for v in values if v})
    return "+".join(vals) if vals else None
