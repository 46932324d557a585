"""The case records of a run: reported by each case (xdist workers too) through its test report,
gathered once at the session end with an ``error`` record for each case that left none, and
whether the run judged anything at all."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from ..results.record import CaseRecord
from .state import INLINE_RECORD_KEY, RECORD_KEY, case_models, profile_or_name, run_state


class RecordCollector:
    """Per-session list of (record path, outcome), fed by the reports the controller receives
    (from xdist workers too). One per config, so a pytest run inside a test keeps its own."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.cases: dict[str, str] = {}  # nodeid of each benchmark case -> passed / failed / skipped
        self.skip_reasons: list[str] = []
        self.inline: list[tuple[CaseRecord, str]] = []  # records that could not be written to disk
        self.recorded: set[str] = set()  # nodeids whose case left a record
        self.unrecorded: dict[str, str] = {}  # nodeid -> why a failed case left no record

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        """An xdist worker died (``kill -9``, a segfault, out of memory) while running a case."""
        self.unrecorded.setdefault(crashitem, str(getattr(report, "longrepr", "") or "worker crashed"))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if RECORD_KEY in props:
            self.recorded.add(report.nodeid)
        elif report.failed and ("benchmark_case" in report.keywords or "crashed while running" in str(report.longrepr)):
            self.unrecorded.setdefault(report.nodeid, first_line(report.longrepr))
        if "benchmark_case" in report.keywords:
            if report.failed:
                self.cases[report.nodeid] = "failed"
            elif report.skipped and self.cases.get(report.nodeid) != "failed":
                self.cases[report.nodeid] = "skipped"
                if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
                    self.skip_reasons.append(str(report.longrepr[2]).removeprefix("Skipped: "))
            elif report.when == "call" and report.passed:
                self.cases[report.nodeid] = "passed"
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == RECORD_KEY:
                self.records.append((str(value), report.outcome))
            elif name == INLINE_RECORD_KEY:
                self.inline.append((cast(CaseRecord, json.loads(str(value))), report.outcome))


def first_line(longrepr: Any) -> str:
    """The reason a report gives, in one line: the ``E`` line of a traceback, else its last line."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    text = str(crash.message if crash is not None and crash.message else (longrepr or "failed"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    err = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    return " ".join((err[:1] or lines[-1:] or ["failed"])[0].split())[:300]


def case_of(nodeid: str) -> str:
    """``test_medqa.py::test_case[llama-wikidoc]`` or ``clinic.toml::llama-wikidoc`` -> the case id."""
    if nodeid.endswith("]") and "[" in nodeid:
        return nodeid[nodeid.rindex("[") + 1:-1]
    return nodeid.rsplit("::", 1)[-1]


COLLECTOR_KEY = pytest.StashKey[RecordCollector]()


def collected(config: pytest.Config) -> list[CaseRecord]:
    """Every record of this run, gathered once: the files the cases wrote, the records a full disk
    kept in memory, and an ``error`` record for each case that failed without leaving one (a
    crashed worker, a setup error such as an unreadable baseline) - one path for what ended badly."""
    st = run_state(config)
    if st.records is not None:
        return st.records
    from ..results.summary import load_records
    from ..session import error_record

    seen = config.stash[COLLECTOR_KEY]
    outcome = {str(Path(p)): o for p, o in seen.records}
    recs = load_records([Path(p) for p in outcome])
    for r in recs:
        r["outcome"] = outcome.get(r["_path"], "unknown")
    have = {r["case_id"] for r in recs}
    for rec, out in seen.inline:
        if rec["case_id"] not in have:
            recs.append(cast(CaseRecord, {**rec, "_path": "", "outcome": out}))
            have.add(rec["case_id"])
    models = case_models(config)
    for nodeid, reason in sorted(seen.unrecorded.items()):
        cid = case_of(nodeid)
        if nodeid in seen.recorded or cid in have:
            continue
        model, dataset = models.get(cid, ("", ""))
        rec = error_record(profile_or_name(config), model, dataset, st.run_dir, reason, case_id=cid)
        recs.append(cast(CaseRecord, {**rec, "outcome": "failed"}))
        have.add(cid)
    st.records = recs
    return recs


def session_problem(config: pytest.Config, records: list[CaseRecord], where: str, exc: BaseException) -> None:
    """A step after the cases failed (disk full, a locked history, a broken baseline file): counted
    as a ``(session)`` error record, so the summary, history, exit code and alert all see it."""
    from ..session import error_record

    reason = f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    run_state(config).problems.append((where, reason))
    run_dir = run_state(config).run_dir
    records.append({**error_record(profile_or_name(config), "(session)", "(session)", run_dir, reason,
                                   case_id=f"session.{where}"), "outcome": "failed"})


def judged_nothing(config: pytest.Config) -> str:
    """Why this run judged no case ('' when it judged one, or need not): every case it ran was
    skipped, or the profile was named (--profile, MEDQA_PROFILE) and no case of it ran."""
    if config.getoption("--allow-empty") or config.getoption("--collect-only", default=False):
        return ""
    seen = config.stash[COLLECTOR_KEY]
    judged = sum(1 for o in seen.cases.values() if o != "skipped")
    if judged:
        return ""
    name = run_state(config).profile_ref
    if seen.cases:
        reasons = sorted(set(seen.skip_reasons))
        shown = "; ".join(reasons[:3]) + (f"; ... ({len(reasons) - 3} more)" if len(reasons) > 3 else "")
        return (f"medqa-bench: nothing judged: all {len(seen.cases)} case(s) of profile {name!r} were skipped "
                f"({shown}); a gate that ran nothing is not a pass (--allow-empty accepts it)")
    if run_state(config).ref_source in ("option", "env"):
        how = "--profile" if run_state(config).ref_source == "option" else "MEDQA_PROFILE"
        return (f"medqa-bench: nothing judged: {how} {name!r} was given but no case of it ran (none collected, or "
                f"all deselected by -k/-m; collect the profile file or a test using medqa_case; --allow-empty accepts it)")
    return ""
