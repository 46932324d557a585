"""The history's SQLite store: one row per run, one row per case result, append-only.

Default location ``<cache dir>/history.sqlite`` (``--history PATH`` / ``MEDQA_HISTORY``). Rows are
only ever inserted: triggers make UPDATE and DELETE fail, so a nightly series can be trusted
as it was written. A run is added by the pytest controller at the end of a session with the
case records it collected (the same JSON records that sit in the run directory).

Run groups (``medqa-bench merge``, :meth:`History.merge`): what a group is and how it reads as
one run (listing, ``latest``, a group's records, a case's rows, retention) are the rules of
:mod:`.groups`; this module stores the groups (the ``run_groups`` table) and applies those rules
to what it reads.

Retention (:meth:`History.prune`, docs/history-and-reports.md): rows leave the history only
through an explicit prune, ``keep_runs`` newest runs per profile and/or ``keep_days`` days; a
``History(path, keep_runs=..., keep_days=...)`` (or ``MEDQA_HISTORY_KEEP_RUNS`` /
``MEDQA_HISTORY_KEEP_DAYS``) prunes after every stored run. The append-only triggers stay in
place for every other writer.

A locked history (another process writing): :meth:`History.add_run` waits at most
``lock_timeout`` seconds (default 5, ``MEDQA_HISTORY_LOCK_TIMEOUT``), then writes the run to
``<history>.spool/<run id>.json`` and raises :class:`HistorySpooled` (a one-line
:class:`~medqa_core.errors.MedQAError`); the next write that gets the history (``add_run``,
``merge``, ``prune``, :meth:`History.replay_spool`) stores the spooled runs first, each once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar, cast

from ...errors import MedQAError
from ..record import CaseRecord
from .groups import FIRST_GROUP, RunRow, fold, newest_attempts, newest_per_label, read_groups, retired

log = logging.getLogger(__name__)
T = TypeVar("T")

#: seconds a write (``add_run``) waits for another process's lock before spooling the run
DEFAULT_LOCK_TIMEOUT = 5.0
LOCK_TIMEOUT_ENV = "MEDQA_HISTORY_LOCK_TIMEOUT"
KEEP_RUNS_ENV = "MEDQA_HISTORY_KEEP_RUNS"
KEEP_DAYS_ENV = "MEDQA_HISTORY_KEEP_DAYS"
#: explicit bulk writes (merge, prune) wait at least this long for a lock
BULK_LOCK_TIMEOUT = 30.0
SPOOL_VERSION = 1



def _trigger(table: str, op: str) -> tuple[str, str]:
    name = f"{table}_append_only_{op[0].lower()}"
    return name, (f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {op} ON {table}\n"
                  "    BEGIN SELECT RAISE(ABORT, 'medqa history is append-only'); END;")


#: the append-only triggers by name: UPDATE and DELETE fail on every table
TRIGGERS = dict(_trigger(t, op) for t in ("run_groups", "runs", "cases") for op in ("UPDATE", "DELETE"))
#: the delete triggers :meth:`History.prune` lifts inside its own transaction (and puts back)
DELETE_TRIGGERS = ("run_groups_append_only_d", "runs_append_only_d", "cases_append_only_d")

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
-- a case's results without scanning every case row; a run's groups without scanning every group
CREATE INDEX IF NOT EXISTS cases_by_case ON cases(case_id, run_id);
CREATE INDEX IF NOT EXISTS run_groups_by_run ON run_groups(run_id);
""" + "\n".join(TRIGGERS.values()) + "\n"


#: marks a SQLite file as a medqa history ("MQBH")
APPLICATION_ID = 0x4D514248


class HistoryError(MedQAError):
    """The history database cannot be read or written."""


class HistoryLocked(HistoryError):
    """Another process held the history's lock past the deadline."""


class HistorySpooled(HistoryError):
    """The history was locked past the deadline; the run was written to the spool instead
    (``spool_file``) and is stored by the next write that gets the history."""

    def __init__(self, message: str, spool_file: Path) -> None:
        super().__init__(message)
        self.spool_file = spool_file


def _is_lock_error(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED (any extended code): another connection holds the lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class RunMeta(TypedDict, total=False):
    """What the history stores with a run (``runs.meta``, JSON; :meth:`History.run_meta` reads it
    back): the pytest session's ``exitstatus``; for a run imported by :meth:`History.merge` also
    when it was ``imported``, its ``source`` and the times its ``run.toml`` gives. A meta stored
    by an older version may hold other keys, or none."""

    exitstatus: int
    imported: float
    source: str
    started: float
    finished: float
    timestamp: float
    created: float


class SpooledRun(TypedDict):
    """A run waiting in the spool (``<history>.spool/<run id>.json``) while the history is locked."""

    medqa_history_spool: int  # SPOOL_VERSION
    run_id: str
    profile: str
    created: float
    meta: RunMeta
    records: list[CaseRecord]  # without their in-memory ``_`` keys


#: one stored result of a case (:meth:`History.case_rows`): (run id, or the id of the group the run
#: is listed under; hardware class; the case record)
CaseRow = tuple[str, str | None, CaseRecord]


@dataclass(frozen=True)
class ImportRun:
    """A run to import into a group (:meth:`History.merge`): its id (the run directory's name),
    profile, case records (each may carry ``_path``, the file it was read from, for errors)."""

    run_id: str
    profile: str
    records: list[CaseRecord]
    created: float
    source: str  # where it was read from, for messages and the run's meta
    meta: RunMeta = field(default_factory=lambda: RunMeta())  # stored in the run's meta (e.g. exitstatus from run.toml)


@dataclass(frozen=True)
class PruneResult:
    runs_removed: list[str]  # run ids deleted (members of a removed group included)
    groups_removed: list[str]
    cases_removed: int


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


def comparable(record: CaseRecord) -> dict[str, object]:
    """A record as compared for idempotence: without the pytest outcome and without the
    in-memory ``_`` keys (neither is part of what the case measured)."""
    return {k: v for k, v in record.items() if k != "outcome" and not k.startswith("_")}


def outcome_of(record: CaseRecord) -> str:
    """The pytest outcome of a record read from a run directory (the file does not hold it):
    the one stored with it, else ``failed`` for a failing verdict (gate.FAILING) and ``passed``."""
    from ...gate import FAILING

    if record.get("outcome"):
        return str(record["outcome"])
    return "failed" if (record.get("verdict") or {}).get("status") in FAILING else "passed"


def record_hardware_class(record: Mapping[str, Any], fallback: str | None = None) -> str | None:
    """The hardware class the record was measured on (its own provenance), else ``fallback``."""
    from ...resources import recorded_hardware_class

    hw = (record.get("provenance") or {}).get("hardware")
    return recorded_hardware_class(hw) if isinstance(hw, dict) and hw else fallback


def _case_row(run_id: str, r: CaseRecord) -> tuple[str, str, str | None, str | None, str]:
    return (run_id, r["case_id"], r.get("outcome"), (r.get("verdict") or {}).get("status"),
            json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, allow_nan=False))


def _setting(given: Any, env: str, cast: Callable[[str], T], ok: Callable[[T], bool], what: str) -> T | None:
    """A history setting: ``given`` if not None, else ``$env`` (empty = unset), checked by ``ok``."""
    raw: Any = given
    if raw is None:
        raw = os.environ.get(env, "").strip() or None
        if raw is None:
            return None
    try:
        value = cast(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or not ok(value):
        src = f"{env}={raw!r}" if given is None else f"{what}={raw!r}"
        raise HistoryError(f"{src}: give {what} as a positive number")
    return value


def _spool_name(run_id: str) -> str:
    """A file name for a run id: the id itself when it is a plain name, else a safe name plus a hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id).lstrip(".")[:120] or "run"
    if safe != run_id:
        safe += "-" + hashlib.sha256(run_id.encode()).hexdigest()[:10]
    return safe


def _strip(record: CaseRecord) -> CaseRecord:
    """The record without its in-memory ``_`` keys (a TypedDict cannot be built by a comprehension: cast)."""
    return cast(CaseRecord, {k: v for k, v in record.items() if not k.startswith("_")})


def _insert_run(con: sqlite3.Connection, run_id: str, profile: str, records: list[CaseRecord],
                meta: RunMeta, created: float) -> int:
    """Insert one run and its case rows (inside the caller's transaction); its sequence number."""
    from ...resources import recorded_hardware_class

    prov = records[0].get("provenance") or {}
    hw = prov.get("hardware") or {}
    cur = con.execute(
        "INSERT INTO runs (run_id, created, profile, git_sha, hardware_class, meta) VALUES (?,?,?,?,?,?)",
        (run_id, created, profile, prov.get("git_sha"), recorded_hardware_class(hw) if hw else None,
         json.dumps(meta, sort_keys=True)))
    con.executemany("INSERT INTO cases (run_id, case_id, outcome, status, record) VALUES (?,?,?,?,?)",
                    [_case_row(run_id, r) for r in records])
    assert cur.lastrowid is not None  # set by the INSERT above
    return cur.lastrowid


#: what a trend reads of a record (History.trend_rows): scores, resources, inputs, hardware
LEAN_PATHS = ("metrics", "resources", "identity", "provenance.hardware")


def _lean(payload: str) -> CaseRecord:
    """The parts of a record a trend needs, from ``json_extract(record, LEAN_PATHS...)``."""
    metrics, resources, identity, hardware = json.loads(payload)
    rec: CaseRecord = {}
    if metrics is not None:
        rec["metrics"] = metrics
    if resources is not None:
        rec["resources"] = resources
    if identity is not None:
        rec["identity"] = identity
    if hardware is not None:
        rec["provenance"] = {"hardware": hardware}
    return rec


class History:
    """The run history at ``path``.

    ``lock_timeout`` (seconds; default ``$MEDQA_HISTORY_LOCK_TIMEOUT`` else 5): how long a write
    waits for another process's lock before :meth:`add_run` spools the run, and how long a read
    waits. ``keep_runs`` / ``keep_days`` (default ``$MEDQA_HISTORY_KEEP_RUNS`` /
    ``$MEDQA_HISTORY_KEEP_DAYS``, else unset): retention applied after every stored run (see
    :meth:`prune`). The constructor never raises; a bad setting is a :class:`HistoryError` at use.
    """

    def __init__(self, path: Path | str, lock_timeout: float | None = None, keep_runs: int | None = None,
                 keep_days: float | None = None) -> None:
        self.path = Path(path)
        self._lock_timeout = lock_timeout
        self._keep_runs = keep_runs
        self._keep_days = keep_days

    # ------------------------------------------------------------------ settings and connections

    @property
    def spool_dir(self) -> Path:
        """Where runs wait while the history is locked: ``<history>.spool/``."""
        return self.path.with_name(self.path.name + ".spool")

    @property
    def lock_timeout(self) -> float:
        t = _setting(self._lock_timeout, LOCK_TIMEOUT_ENV, float, lambda v: 0 < v < 1e6, "lock_timeout (seconds)")
        return DEFAULT_LOCK_TIMEOUT if t is None else t

    def retention(self) -> tuple[int | None, float | None]:
        """(keep_runs, keep_days) applied after every stored run; (None, None) keeps everything."""
        runs = _setting(self._keep_runs, KEEP_RUNS_ENV, int, lambda v: v >= 1, "keep_runs (runs per profile)")
        days = _setting(self._keep_days, KEEP_DAYS_ENV, float, lambda v: 0 < v < 1e7, "keep_days (days)")
        return runs, days

    def _connect(self, timeout: float | None = None) -> sqlite3.Connection:
        """Open (creating) the history. A path that is a directory or a file inside a regular file,
        or another application's SQLite database, is refused before anything is written to it."""
        wait = self.lock_timeout if timeout is None else timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise HistoryError(f"--history {self.path}: is a directory; give a file path (or 'none')")
            con = sqlite3.connect(self.path, timeout=wait)
            try:
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                ours = app_id == APPLICATION_ID or (app_id == 0 and (not tables or {"runs", "cases"} <= tables))
                if not ours:
                    raise HistoryError(f"--history {self.path}: a SQLite database of another application "
                                       f"(application_id {app_id}, tables {sorted(tables)[:5]}); not touching it, "
                                       "give another path")
                con.executescript(SCHEMA)
                if app_id == 0:
                    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            except BaseException:
                con.close()
                raise
        except sqlite3.DatabaseError as exc:
            if _is_lock_error(exc):
                raise HistoryLocked(f"{self.path}: locked by another process (waited {wait:.1f} s)") from exc
            raise HistoryError(f"--history {self.path}: not a usable medqa history database ({exc})") from exc
        except OSError as exc:
            raise HistoryError(f"--history {self.path}: not a usable medqa history database ({exc})") from exc
        return con

    @contextmanager
    def _open(self, timeout: float | None = None) -> Iterator[sqlite3.Connection]:
        """A connection whose SQLite errors come out as :class:`HistoryError` (a lock held past the
        deadline as :class:`HistoryLocked`), closed afterwards."""
        con = self._connect(timeout)
        try:
            yield con
        except sqlite3.Error as exc:
            if _is_lock_error(exc):
                wait = self.lock_timeout if timeout is None else timeout
                raise HistoryLocked(f"{self.path}: locked by another process (waited {wait:.1f} s)") from exc
            raise HistoryError(f"{self.path}: {' '.join(str(exc).split())}") from exc
        finally:
            con.close()

    def _write(self, body: Callable[[sqlite3.Connection, dict[str, int]], T], timeout: float | None = None,
               retention: tuple[int | None, float | None] = (None, None)) -> T:
        """Run ``body(con, replayed)`` in one write transaction (``BEGIN IMMEDIATE``: one writer at a
        time), after storing the spooled runs (``replayed``: their run id -> seq) and before applying
        ``retention``; the spool files stored are removed once the transaction is committed."""
        with self._open(timeout) as con:
            with con:
                con.execute("BEGIN IMMEDIATE")
                done, replayed = self._replay(con)
                result = body(con, replayed)
                if retention != (None, None):
                    _prune_rows(con, retention[0], retention[1], time.time())
        for f in done:
            try:
                f.unlink()
            except OSError:
                pass  # another writer removed it first, or it stays and is skipped as stored next time
        return result

    # ------------------------------------------------------------------ adding runs, spool, retention

    def add_run(self, run_id: str, profile: str, records: list[CaseRecord],
                meta: RunMeta | None = None, created: float | None = None) -> int:
        """Insert a run and its case records in one transaction; returns the run's sequence number.

        Waits at most :attr:`lock_timeout` seconds for another process's lock; past that the run is
        written to :attr:`spool_dir` and :class:`HistorySpooled` says where (it is stored by the next
        write). Spooled runs of earlier sessions are stored first. Raises nothing but
        :class:`~medqa_core.errors.MedQAError`."""
        try:
            if not records:
                raise HistoryError(f"{self.path}: run {run_id} has no case records to store")
            recs = [_strip(r) for r in records]
            try:
                json.dumps(recs, allow_nan=False)
            except ValueError as exc:
                raise HistoryError(f"{self.path}: run {run_id} not stored: a case record holds NaN or infinity "
                                   f"({exc}); the history stores finite numbers only") from None
            run: SpooledRun = {"medqa_history_spool": SPOOL_VERSION, "run_id": run_id, "profile": profile,
                               "created": time.time() if created is None else float(created),
                               "meta": RunMeta(**(meta or {})), "records": recs}
            timeout, retention = self.lock_timeout, self.retention()

            def body(con: sqlite3.Connection, replayed: dict[str, int]) -> int:
                if run_id in replayed:  # this very run was spooled before: stored now, once
                    return replayed[run_id]
                try:
                    return _insert_run(con, run_id, profile, recs, run["meta"], run["created"])
                except sqlite3.IntegrityError as exc:
                    raise HistoryError(f"{self.path}: run {run_id} is already stored ({exc})") from exc

            deadline = time.monotonic() + timeout
            while True:
                try:
                    return self._write(body, timeout=max(deadline - time.monotonic(), 0.01), retention=retention)
                except HistoryLocked as exc:
                    left = deadline - time.monotonic()
                    if left > 0.05:  # locked without waiting out the busy timeout: try again
                        time.sleep(min(0.1, left))
                        continue
                    raise self._spool(run, timeout) from exc
        except MedQAError:
            raise
        except Exception as exc:  # the session end gets one line, never a traceback
            raise HistoryError(f"{self.path}: run {run_id} not stored ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:300]})") from exc

    def _spool(self, run: SpooledRun, waited: float) -> HistoryError:
        """Write ``run`` to the spool (atomically); the error to raise, saying where it went."""
        where = self.spool_dir / f"{_spool_name(run['run_id'])}.json"
        tmp = where.with_name(f".{where.name}.{os.getpid()}.tmp")
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(run, allow_nan=False), encoding="utf-8")
            os.replace(tmp, where)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return HistoryError(f"{self.path}: locked by another process for {waited:.1f} s and the run could not be "
                                f"spooled to {where} ({exc.strerror or exc}); run {run['run_id']} not stored")
        return HistorySpooled(f"{self.path}: locked by another process for {waited:.1f} s; run {run['run_id']} "
                              f"spooled to {where}, stored at the next write to the history", where)

    def spooled(self) -> list[Path]:
        """The spool files waiting to be stored."""
        d = self.spool_dir
        return sorted(d.glob("*.json")) if d.is_dir() else []

    def _replay(self, con: sqlite3.Connection) -> tuple[list[Path], dict[str, int]]:
        """Store the spooled runs (oldest first) inside the caller's write transaction: (the files
        done, to remove after the commit; run id -> seq). A run already stored is not stored again.
        An unreadable or unstorable spool file is set aside as ``*.json.bad`` with a warning."""
        items = []
        for f in self.spooled():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
                if not (isinstance(data, dict) and isinstance(data.get("run_id"), str) and data["run_id"]
                        and isinstance(data.get("profile"), str) and isinstance(data.get("records"), list)
                        and data["records"] and all(isinstance(r, dict) and r.get("case_id") for r in data["records"])):
                    raise ValueError("not a spooled medqa run")
                items.append((float(data.get("created") or 0.0), f.name, f, data))
            except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
                self._set_aside(f, exc)
        done: list[Path] = []
        replayed: dict[str, int] = {}
        for created, _, f, data in sorted(items, key=lambda t: (t[0], t[1])):
            rid = data["run_id"]
            stored = con.execute("SELECT seq FROM runs WHERE run_id = ?", (rid,)).fetchone()
            if stored is None:
                con.execute("SAVEPOINT medqa_replay")
                try:
                    meta = cast(RunMeta, dict(data.get("meta") or {}))  # the spool file's, as written by add_run
                    seq = _insert_run(con, rid, data["profile"], data["records"], meta, created)
                except (sqlite3.IntegrityError, ValueError, TypeError, KeyError) as exc:
                    con.execute("ROLLBACK TO medqa_replay")
                    con.execute("RELEASE medqa_replay")
                    self._set_aside(f, exc)
                    continue
                con.execute("RELEASE medqa_replay")
                log.info("history %s: stored spooled run %s from %s", self.path, rid, f)
            else:
                seq = int(stored[0])
            replayed[rid] = seq
            done.append(f)
        return done, replayed

    def _set_aside(self, f: Path, exc: BaseException) -> None:
        bad = f.with_name(f.name + ".bad")
        log.warning("history %s: spool file %s cannot be stored (%s); kept as %s", self.path, f,
                    " ".join(str(exc).split())[:200], bad)
        try:
            os.replace(f, bad)
        except OSError:
            pass

    def replay_spool(self) -> list[str]:
        """Store the spooled runs now (waiting up to :attr:`lock_timeout`); their run ids."""
        return self._write(lambda con, replayed: list(replayed))

    def prune(self, keep_runs: int | None = None, keep_days: float | None = None, vacuum: bool = False,
              now: float | None = None) -> PruneResult:
        """Delete old runs: per profile, keep the newest ``keep_runs`` runs and/or the runs of the last
        ``keep_days`` days (a run is kept only if it passes every limit given). A run group counts as
        one run (its newest member's place and time) and goes as a whole; a run that is also in a
        kept group stays. Only this method deletes: it lifts the append-only triggers inside its own
        transaction and puts them back before the commit. ``vacuum`` returns the freed pages to the
        file system afterwards (rewrites the file; slow on a large history)."""
        runs = _setting(keep_runs, "-", int, lambda v: v >= 1, "keep_runs") if keep_runs is not None else None
        days = _setting(keep_days, "-", float, lambda v: v > 0, "keep_days") if keep_days is not None else None
        if runs is None and days is None:
            raise HistoryError(f"{self.path}: prune: give keep_runs and/or keep_days")
        stamp = time.time() if now is None else now
        result = self._write(lambda con, _: _prune_rows(con, runs, days, stamp),
                             timeout=max(self.lock_timeout, BULK_LOCK_TIMEOUT))
        if vacuum and result.runs_removed:
            with self._open(max(self.lock_timeout, BULK_LOCK_TIMEOUT)) as con:
                con.execute("VACUUM")
        return result

    # ------------------------------------------------------------------ reading

    def runs(self, profile: str | None = None, grouped: bool = True) -> list[RunRow]:
        """The stored runs in the order they were stored. ``grouped`` (default): a run group is
        one row (at its newest member's place) and its member runs are not listed on their own."""
        q = "SELECT seq, run_id, created, profile, git_sha, hardware_class FROM runs"
        args: tuple[str, ...] = ()
        if profile:
            q, args = q + " WHERE profile = ?", (profile,)
        with self._open() as con:
            rows = [RunRow(*row) for row in con.execute(q + " ORDER BY seq", args)]
            groups = read_groups(con)
        if not grouped or not groups:
            return rows
        return fold(rows, groups)

    def groups(self) -> dict[str, list[str]]:
        """Every run group: group id -> its member run ids."""
        with self._open() as con:
            return read_groups(con)

    def run_meta(self, run_ids: list[str]) -> dict[str, RunMeta]:
        """The stored meta of runs (``exitstatus`` of a pytest session, ``source`` of an import, ...)."""
        out: dict[str, RunMeta] = {}
        ids = list(dict.fromkeys(run_ids))
        with self._open() as con:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for rid, meta in con.execute(f"SELECT run_id, meta FROM runs WHERE run_id IN ({','.join('?' * len(chunk))})",
                                             chunk):
                    try:
                        value = json.loads(meta)
                    except ValueError:
                        value = {}
                    out[rid] = cast(RunMeta, value) if isinstance(value, dict) else {}  # JSON as stored, not checked
        return out

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
        in the group counts once, from the newest attempt: latest recorded time, then the
        latest stored)."""
        with self._open() as con:
            members = read_groups(con).get(run_id)
            if members is None:
                rows = con.execute("SELECT record, outcome FROM cases WHERE run_id = ? ORDER BY case_id", (run_id,)).fetchall()
            else:
                marks = ",".join("?" * len(members))
                rows = con.execute(f"SELECT cases.record, cases.outcome, cases.case_id FROM cases JOIN runs "
                                   f"ON runs.run_id = cases.run_id WHERE cases.run_id IN ({marks}) "
                                   "ORDER BY runs.created, runs.seq", members).fetchall()
                rows = newest_attempts((cid, (rec, outcome)) for rec, outcome, cid in rows)
        out = []
        for rec, outcome in rows:
            r = json.loads(rec)
            r["outcome"] = outcome
            out.append(r)
        return out

    def case_rows(self, case_id: str, profile: str | None = None,
                  last: int | None = None) -> list[CaseRow]:
        """(run id, hardware class, record) of every stored result of one case, in run order
        (``last``: only the newest ``last`` stored results).

        The run id of a run in a group is the group's (its first group's, if it is in several),
        and a group contributes one row per case: its newest attempt's (latest recorded time,
        then latest stored). The hardware class is the record's own (its provenance), else its run's."""
        return self._case_select(case_id, profile, last, lean=False)

    def trend_rows(self, case_id: str, profile: str | None = None,
                   last: int | None = None) -> list[CaseRow]:
        """:meth:`case_rows` with each record cut to what a trend reads (``metrics``, ``resources``,
        ``identity``, ``provenance.hardware``; SQLite extracts them, the per-example data is never
        decoded): the read :func:`~medqa_core.results.trend.case_trends` does at every session end."""
        return self._case_select(case_id, profile, last, lean=True)

    def _case_select(self, case_id: str, profile: str | None, last: int | None,
                     lean: bool) -> list[CaseRow]:
        rec_col = ("json_extract(cases.record, " + ", ".join(f"'$.{p}'" for p in LEAN_PATHS) + ")" if lean
                   else "cases.record")
        cols = f"runs.seq, runs.run_id, runs.hardware_class, runs.created, {rec_col}, {FIRST_GROUP}"
        where = "cases.case_id = ?" + (" AND runs.profile = ?" if profile else "")
        args: list[Any] = [case_id, *([profile] if profile else [])]
        if last is not None:  # pick the newest rows by their keys first, then read only their records
            q = (f"SELECT {cols} FROM (SELECT cases.rowid AS rid, runs.seq AS pseq FROM cases JOIN runs "
                 f"ON runs.run_id = cases.run_id WHERE {where} ORDER BY runs.seq DESC LIMIT ?) AS pick "
                 "JOIN cases ON cases.rowid = pick.rid JOIN runs ON runs.seq = pick.pseq ORDER BY runs.seq")
            args.append(max(int(last), 0))
        else:
            q = f"SELECT {cols} FROM cases JOIN runs ON runs.run_id = cases.run_id WHERE {where} ORDER BY runs.seq"
        with self._open() as con:
            rows = con.execute(q, args).fetchall()
        found: list[tuple[str, tuple[float, int], CaseRow]] = []
        for seq, run_id, hw_class, created, rec, group in rows:
            label = group or run_id
            r = _lean(rec) if lean else json.loads(rec)
            found.append((label, (float(created), int(seq)), (label, record_hardware_class(r, hw_class), r)))
        return newest_per_label(found)

    def merge(self, group_id: str, runs: list[ImportRun]) -> MergeResult:
        """Import ``runs`` into the history as members of group ``group_id``, in one transaction:
        an error anywhere leaves the history as it was.

        Idempotent: a run already stored (under its run id, by pytest or an earlier merge) is not
        stored again; only its cases that are missing are added, and a stored case whose record
        differs from the one given is an error (the history is append-only). A run already in
        the group is not added to it twice."""
        if not runs:
            raise HistoryError(f"{self.path}: nothing to merge into group {group_id}")
        runs = sorted(runs, key=lambda r: r.created)  # stored (and so listed) in the order they ran
        now = time.time()
        added_runs: list[str] = []
        added_cases: dict[str, int] = {}

        def body(con: sqlite3.Connection, _: dict[str, int]) -> list[str]:
            try:
                groups = read_groups(con)
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
                return [r for (r,) in con.execute(
                    "SELECT run_id FROM run_groups WHERE group_id = ? ORDER BY added, rowid", (group_id,))]
            except (sqlite3.DatabaseError, ValueError) as exc:
                raise HistoryError(f"{self.path}: merge into group {group_id} failed, nothing written "
                                   f"({' '.join(str(exc).split())})") from exc

        try:  # one writer: another merge waits (BEGIN IMMEDIATE), never interleaves
            members = self._write(body, timeout=max(self.lock_timeout, BULK_LOCK_TIMEOUT), retention=self.retention())
        except HistoryLocked as exc:
            raise HistoryError(f"{exc}; merge into group {group_id} failed, nothing written") from exc
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
                 json.dumps({**run.meta, "imported": now, "source": run.source}, sort_keys=True)))
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
        args: tuple[str, ...] = ()
        if profile:
            q, args = q + " WHERE runs.profile = ?", (profile,)
        with self._open() as con:
            return sorted(r[0] for r in con.execute(q, args))


def _prune_rows(con: sqlite3.Connection, keep_runs: int | None, keep_days: float | None, now: float) -> PruneResult:
    """Delete, inside the caller's write transaction, the runs :meth:`History.prune` lets go."""
    runs = {rid: (seq, created, profile) for seq, rid, created, profile in
            con.execute("SELECT seq, run_id, created, profile FROM runs")}
    gone_groups, gone_runs = retired(runs, read_groups(con), keep_runs, keep_days, now)
    if not gone_groups and not gone_runs:
        return PruneResult([], [], 0)
    for name in DELETE_TRIGGERS:  # only here, inside this transaction; put back below
        con.execute(f"DROP TRIGGER IF EXISTS {name}")
    con.executemany("DELETE FROM run_groups WHERE group_id = ?", [(g,) for g in gone_groups])
    cases = 0
    for rid in gone_runs:
        con.execute("DELETE FROM run_groups WHERE run_id = ?", (rid,))
        cases += con.execute("DELETE FROM cases WHERE run_id = ?", (rid,)).rowcount
        con.execute("DELETE FROM runs WHERE run_id = ?", (rid,))
    for name in DELETE_TRIGGERS:
        con.execute(TRIGGERS[name])
    return PruneResult(gone_runs, sorted(gone_groups), cases)
