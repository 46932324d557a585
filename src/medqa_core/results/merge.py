"""One history for many runners: import the run directories of several machines as one run group.

The nightly GPU workflow runs one job per model family, each on its own self-hosted runner with
its own cache and history. Each job uploads its run directory (``results/<run id>/``: one JSON
record per case, plus ``summary.md`` and ``aggregates.json``); the final job downloads them all
and calls ``medqa-bench merge`` (``scripts/merge_nightly.sh``), which stores every run with its
records, as they were written, in one history and ties them together under one group id. The
group is then one run for ``history``, ``report`` and ``trend`` (docs/multi-runner.md).

This module reads and checks run directories (:func:`read_run_dir`), picks the default group id
(:func:`default_group`), and sums a night up for the regression issue (:func:`night_status`,
:func:`issue_body`). ``python -m medqa_core.results.merge issue ...`` writes ``issue.md`` and ``status``.

A night's status comes from the case verdicts and the runs' pytest exit codes, never from the
mere absence of a failing verdict: ``ok`` only when every case passed (``pass`` or
``improvement``), every family/suite verdict passed and no run exited nonzero. Attempts of
the same case (a re-run job) are ordered by their recorded time (``run.toml``'s ``started`` /
``finished``, else the records' own time stamps, else the start time in the run id), never
by the artifact folder they were downloaded to; the newest attempt stands for the night.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import MedQAError
from .history import History, ImportRun, MergeResult, RunMeta
from .record import CaseRecord, Status, check_record

log = logging.getLogger(__name__)

#: run ids as the pytest plugin makes them: local start time and six hex digits
RUN_ID_RE = re.compile(r"^(\d{8})-(\d{6})-[0-9a-f]{6}$")
#: a group id: letters, digits, ``.``, ``_`` and ``-`` (it goes into file names and report titles)
GROUP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: JSON files of a run directory that are not case records
NOT_RECORDS = frozenset({"aggregates.json"})
#: verdict statuses a night passes with; any other (regression, changed, error, incomparable,
#: no-baseline, or none at all) keeps the night from ``ok``
PASSING = frozenset({Status.PASS, Status.IMPROVEMENT})
#: pytest's exit codes other than 0
EXIT_NAMES = {1: "tests failed", 2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}
#: run.toml / record keys holding when a run (or case) ran: epoch seconds or an ISO 8601 time
TIME_KEYS: tuple[Literal["started", "finished", "timestamp", "created"], ...] = ("started", "finished", "timestamp", "created")


class MergeError(MedQAError):
    """A run directory cannot be merged (missing, no records, malformed record, bad group id)."""


def read_run_dir(path: Path | str) -> ImportRun:
    """The case records of one run directory, checked: every ``*.json`` but ``aggregates.json``
    must be a JSON object with ``case_id``, ``model`` and ``dataset``, and all must name one profile.
    The run id is the directory's name (the one the pytest plugin gave the run)."""
    d = Path(path)
    if not d.exists():
        raise MergeError(f"{d}: no such run directory")
    if not d.is_dir():
        raise MergeError(f"{d}: not a directory (give a run directory, .medqa-results/<run id>)")
    files = sorted(p for p in d.glob("*.json") if p.name not in NOT_RECORDS)
    if not files:
        raise MergeError(f"{d}: no case records (*.json) in this run directory")
    records: list[CaseRecord] = []
    seen: dict[str, Path] = {}
    profiles: dict[str, Path] = {}
    for f in files:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MergeError(f"{f}: not a readable case record ({' '.join(str(exc).split())})") from None
        try:
            rec = check_record(rec, str(f))
        except MedQAError as exc:
            raise MergeError(str(exc)) from None
        if rec["case_id"] in seen:
            raise MergeError(f"{f}: case {rec['case_id']} is also in {seen[rec['case_id']].name}")
        profile = rec.get("profile") or (rec.get("provenance") or {}).get("profile")
        if not isinstance(profile, str) or not profile:
            raise MergeError(f"{f}: case record without a profile")
        try:
            json.dumps(rec, allow_nan=False)
        except ValueError:
            raise MergeError(f"{f}: case record holds NaN or infinity; the history stores finite numbers only") from None
        seen[rec["case_id"]] = f
        profiles.setdefault(profile, f)
        rec["_path"] = str(f)
        records.append(rec)
    if len(profiles) > 1:
        (p1, f1), (p2, f2) = list(profiles.items())[:2]
        raise MergeError(f"{f2}: profile {p2!r}, but {f1.name} of the same run says {p1!r}")
    from .summary import read_run_info

    info = read_run_info(d)
    meta: RunMeta = {}
    code = info.get("exitstatus")
    if isinstance(code, int) and not isinstance(code, bool):
        meta["exitstatus"] = code
    for k in TIME_KEYS:
        t = _epoch(info.get(k))
        if t is not None:
            meta[k] = t
    return ImportRun(run_id=d.name, profile=next(iter(profiles)), records=records,
                     created=_created(d, files, info, records), source=str(d), meta=meta)


def _epoch(value: Any) -> float | None:
    """Epoch seconds from a number, an ISO 8601 string or a TOML date-time; None if it is none of these."""
    import datetime as dt

    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        try:
            return value.timestamp()  # a naive time is local time, as the plugin's run ids
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _created(d: Path, files: list[Path], info: Mapping[str, object] | None = None,
             records: list[CaseRecord] | None = None) -> float:
    """When the run ran, for ordering attempts: ``run.toml``'s ``started`` (else ``finished``, ...),
    else the earliest time stamp in its records (``started`` / ``timestamp`` / ... at the top or in
    ``provenance``), else the start time in its id (the plugin's local time), else the oldest
    record file's mtime (a download's, when nothing better is known)."""
    for k in TIME_KEYS:
        t = _epoch((info or {}).get(k))
        if t is not None:
            return t
    stamps = [t for r in records or [] for src in (r, r.get("provenance") or {}) for k in TIME_KEYS
              if (t := _epoch(src.get(k) if isinstance(src, dict) else None)) is not None]
    if stamps:
        return min(stamps)
    m = RUN_ID_RE.match(d.name)
    if m:
        try:
            return time.mktime(time.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S"))
        except (ValueError, OverflowError):
            pass
    return min(f.stat().st_mtime for f in files)


def default_group(run_dirs: Sequence[Path | str]) -> str:
    """A group id derived from the run directories alone, so merging the same directories again
    lands in the same group: ``group-<date of the earliest run>-<hash of the sorted run ids>``
    (``group-<hash>`` when a directory's name is not a plugin run id)."""
    ids = sorted({Path(d).name for d in run_dirs})
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:8]
    dates = [m.group(1) for m in map(RUN_ID_RE.match, ids) if m]
    return f"group-{min(dates)}-{digest}" if len(dates) == len(ids) else f"group-{digest}"


def check_group_id(group: str) -> str:
    if not GROUP_ID_RE.match(group):
        raise MergeError(f"--group {group!r}: use letters, digits, '.', '_' and '-' only (at most 100, "
                         "starting with a letter or digit)")
    return group


def merge(run_dirs: Sequence[Path | str], history: Path | str, group: str | None = None) -> MergeResult:
    """Import ``run_dirs`` into ``history`` as one run group (default id: :func:`default_group`).

    Every directory is read and checked before anything is written, and the import is one
    transaction: bad input leaves the history as it was. Merging the same records again adds
    nothing (see :meth:`History.merge`)."""
    if not run_dirs:
        raise MergeError("no run directories given")
    unique: dict[Path, Path] = {}
    for d in run_dirs:  # the same directory twice on the command line is read once
        unique.setdefault(Path(d).resolve(), Path(d))
    runs = [read_run_dir(d) for d in unique.values()]
    gid = check_group_id(group) if group else default_group(list(unique.values()))
    names: dict[str, str] = {}
    for r in runs:
        if r.run_id in names:
            raise MergeError(f"{r.source}: run id {r.run_id} is also the name of {names[r.run_id]}; "
                             "one run, one directory")
        names[r.run_id] = r.source
    result = History(history).merge(gid, runs)
    log.info("merged %d run(s) into group %s of %s: %d case(s) added", len(runs), gid, history, result.total_added)
    return result


# ---------------------------------------------------------------- the night as one issue body


def case_problem(record: CaseRecord) -> str | None:
    """Why a case keeps the night from ``ok`` (its verdict status, ``failed`` for a failed pytest
    outcome, ``not judged`` without a verdict), or None when it passed."""
    status = (record.get("verdict") or {}).get("status")
    if record.get("outcome") == "failed":
        return status if status and status not in PASSING else "failed"
    if status in PASSING:
        return None
    return status or "not judged"


def failing_cases(records: list[CaseRecord]) -> list[CaseRecord]:
    """Records that did not pass: a failing verdict (gate.FAILING), a verdict the gate could not
    give (``incomparable``, ``no-baseline``), none at all, or a failed pytest outcome."""
    return [r for r in records if case_problem(r) is not None]


def _exit_code(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def bad_exits(exits: dict[str, int | None] | None) -> dict[str, int]:
    """The runs that exited nonzero: run id -> pytest exit code (unknown codes are left out)."""
    return {rid: int(c) for rid, c in (exits or {}).items() if isinstance(c, int) and c != 0}


def night_status(records: list[CaseRecord], aggs: list[Any], exits: dict[str, int | None] | None = None) -> str:
    """The night in one word, from the verdicts and the runs' pytest exit codes (``exits``: run id
    -> code, None where unknown):

    * ``error``: a run did not complete (exit code other than 0 and 1: interrupted, internal or
      usage error, no tests collected), or no case record at all; its numbers are not the night's;
    * ``regressed``: a case did not pass (``regression``, ``changed``, ``error``, ``incomparable``,
      ``no-baseline``, no verdict, or a failed pytest outcome), a family/suite verdict failed, or
      a run exited 1 (tests failed);
    * ``ok``: none of these."""
    codes = bad_exits(exits)
    if not records or any(c != 1 for c in codes.values()):
        return "error"
    if failing_cases(records) or any(not a.passed for a in aggs) or codes:
        return "regressed"
    return "ok"


def issue_body(group: str, profile: str, records: list[CaseRecord], aggs: list[Any],
               trends: dict[str, dict[str, list[Any]]], runs: list[Any], status: str,
               exits: dict[str, int | None] | None = None) -> str:
    """The regression-issue body of one night: every family in one text (``exits``: run id ->
    pytest exit code, shown per run; a nonzero one is named under the failing cases)."""
    from .summary import md_cell, md_fence

    counts: dict[str, int] = {}
    for r in records:
        s = (r.get("verdict") or {}).get("status", "unknown")
        counts[s] = counts.get(s, 0) + 1
    families = sorted({r["model"] for r in records})
    bad = failing_cases(records)
    exits = exits or {}
    codes = bad_exits(exits)
    out = [f"# medqa-bench nightly, profile {profile}: {status} (group {group})", "",
           f"{len(records)} case(s) from {len(runs)} run(s), families {', '.join(families)}: "
           + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", ""]
    out += ["## Runs", "", "| run | families | hardware | git sha | cases | exit |", "|---|---|---|---|---|---|"]
    for run in runs:
        recs = [r for r in records if r.get("_run") == run.run_id]
        code = exits.get(run.run_id)
        out.append("| " + " | ".join(md_cell(c) for c in (
            run.run_id, ", ".join(sorted({r["model"] for r in recs})) or "-", run.hardware_class or "-",
            (run.git_sha or "-")[:12], str(len(recs)),
            "-" if code is None else f"{code}" + (f" ({EXIT_NAMES[code]})" if code in EXIT_NAMES else ""))) + " |")
    out += ["", "## Failing cases", ""]
    if bad:
        for r in bad:
            v = r.get("verdict") or {}
            problem = case_problem(r) or "failed"
            out += [f"### {md_cell(r['case_id'])}: {md_cell(problem)}", ""]
            out += md_fence(v.get("explain") or f"{r['case_id']}: {problem}") + [""]
    elif status == "ok":
        out += ["None.", ""]
    else:
        out += ["No case record failed, but the night is not ok (see below).", ""]
    if codes:
        out += ["Runs that exited nonzero (pytest exit code): " + ", ".join(
            f"{md_cell(rid)} {c}" + (f" ({EXIT_NAMES[c]})" if c in EXIT_NAMES else "") for rid, c in codes.items())
            + ".", ""]
    out += ["## Family and suite verdicts", ""]
    if aggs:
        failed = [a for a in aggs if not a.passed]
        out += [f"{len(aggs)} check(s), {len(failed)} failed (recomputed over the merged records):", ""]
        out += md_fence("\n".join(a.line() for a in (failed or aggs)))
    else:
        out += ["None computed (fewer than two judged cases per family, or the profile could not be loaded)."]
    out += ["", "## Worsening trends (per case and hardware class)", ""]
    lines = [f"- {md_cell(cid)}: {md_cell(sh.explain(m))}" for cid in sorted(trends) for m, found in trends[cid].items()
             for sh in found]
    out += lines or ["None found."]
    out += ["", "Full report: report.md / report.html in this run's artifacts.", ""]
    return "\n".join(out)


def write_issue(history: Path | str, group: str, out_dir: Path | str) -> str:
    """Write ``issue.md`` and ``status`` for group ``group`` into ``out_dir``; returns the status."""
    from .analysis import GateSettings, analyse_run

    hist = History(history)
    gid = hist.resolve(group)
    members = hist.groups().get(gid, [gid])
    meta = hist.run_meta(members)
    # in the order they ran (recorded time), not the order their artifact folders were listed in
    runs = sorted((r for r in hist.runs(grouped=False) if r.run_id in members), key=lambda r: (r.created, r.seq))
    exits = {r.run_id: _exit_code(meta.get(r.run_id, {}).get("exitstatus")) for r in runs}
    records: list[CaseRecord] = []
    for run in runs:  # keep which run each case came from (a case twice: the newest attempt's)
        for rec in hist.records(run.run_id):
            rec["_run"] = run.run_id
            records = [r for r in records if r["case_id"] != rec["case_id"]] + [rec]
    records.sort(key=lambda r: (r["dataset"], r["model"]))
    profile_name = runs[0].profile if runs else "?"
    # the family / suite verdicts recomputed over the merged records: a single job could not
    # compute them for the whole suite
    found = analyse_run(records, GateSettings.of_name(profile_name), hist, profile_name)
    aggs, trends = found.aggregates, found.trends
    status = night_status(records, aggs, exits)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "issue.md").write_text(issue_body(gid, profile_name, records, aggs, trends, runs, status, exits))
    (out / "status").write_text(status + "\n")
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m medqa_core.results.merge issue --history H --group G --out DIR`` (used by scripts/merge_nightly.sh)."""
    ap = argparse.ArgumentParser(prog="python -m medqa_core.results.merge")
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("issue", help="write DIR/issue.md and DIR/status for a merged group")
    i.add_argument("--history", required=True)
    i.add_argument("--group", required=True)
    i.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        print(write_issue(args.history, args.group, args.out))
    except MedQAError as exc:
        print(f"medqa-bench: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
