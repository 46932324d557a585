"""After the cases: the post-run chain. Record baselines or judge the family/suite aggregates,
write the summary and ``run.toml``, store the run in the history and look for trends, post the
alert; each step guarded so that one failing still lets the others run and fails the session."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from ..errors import MedQAError
from ..results.record import CaseRecord
from .records import collected, judged_nothing, session_problem
from .state import active, active_profile, history_path, is_worker, profile_or_name, run_state, write_run_info


def ended_before_start(config: pytest.Config, reason: str) -> None:
    """A run refused at the start (an unreadable baseline, a bad option) never reaches the session
    end: it still leaves a ``session.start`` error record, a history row and an alert, so a nightly
    job whose baseline broke is not silent. Best effort: the usage error itself is what pytest prints."""
    if config.option.collectonly:
        return
    from ..session import error_record

    try:
        run_dir = run_state(config).run_dir
        rec = cast(CaseRecord, {**error_record(profile_or_name(config), "(session)", "(session)", run_dir, reason,
                                               case_id="session.start"), "outcome": "failed"})
        run_state(config).records = [rec]
        lines: list[str] = []
        trends = store_history(config, [rec], int(pytest.ExitCode.USAGE_ERROR), lines)
        url = config.getoption("--alert-webhook")
        if url:
            alert(config, url, [rec], int(pytest.ExitCode.USAGE_ERROR), trends, lines)
    except Exception:  # nothing more can be said than the usage error pytest is about to print
        pass


def finish_session(session: pytest.Session, exitstatus: int) -> None:
    """After the cases: record or judge aggregates, write the summary, store the history, alert.
    Each step is guarded: one that fails (disk full, a locked history, a broken baseline file)
    becomes a ``session.<step>`` error record and fails the run, and the steps after it still run,
    so the summary, history (or its spool) and the alert all count it."""
    config = session.config
    if is_worker(config) or not active(config):
        return
    if judged_nothing(config) and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    records = collected(config)
    if not records:
        return
    lines: list[str] = []
    run_state(config).finish_lines = lines  # printed by the terminal summary

    def step(where: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            session_problem(config, records, where, exc)
            lines.append(f"medqa-bench: ERROR {run_state(config).problems[-1][1]}")
            return None

    if config.getoption("--update-baselines"):
        if int(exitstatus) == pytest.ExitCode.INTERRUPTED:  # Ctrl-C: a partial run never rewrites a baseline
            lines.append("medqa-bench: interrupted; the baseline file was not changed")
        else:
            done = step("baseline", lambda: record_baselines(config, records))
            if done:
                lines.append(done)
    else:
        step("aggregates", lambda: judge_aggregates(session, records, lines))
        if config.getoption("--update-resources"):
            step("resources", lambda: lines.append(record_resources(config, records)))
    step("summary", lambda: write_summary(config, records))
    ended_badly = any(r.get("verdict", {}).get("status") == "error" for r in records)
    if ended_badly and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if run_state(config).problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    step("run-info", lambda: write_run_info(config, int(session.exitstatus)))  # with the exit code, for merge
    if run_state(config).problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # The verdict and exit code are final here: the history is a log of them, and a history that
    # cannot be written (locked past its deadline, a full disk) is a warning (its run spooled), not a failure.
    try:
        trends = store_history(config, records, int(session.exitstatus), lines)
    except Exception as exc:
        trends = {}
        lines.append(f"medqa-bench: WARNING history not updated: {type(exc).__name__}: {' '.join(str(exc).split())}")
    url = config.getoption("--alert-webhook")
    if url:
        alert(config, url, records, int(session.exitstatus), trends, lines)


def record_resources(config: pytest.Config, records: list[CaseRecord]) -> str:
    from ..baselines import record_resources

    path = active_profile(config).resolve(str(active_profile(config).baseline))
    done = record_resources(path, records)
    return f"medqa-bench: time and memory of {len(done)} case(s) recorded into {path}"


def write_summary(config: pytest.Config, records: list[CaseRecord]) -> None:
    from ..results.summary import markdown_table

    profile = profile_or_name(config)
    name = profile if isinstance(profile, str) else profile.name
    run_dir = run_state(config).run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.md").write_text(
        f"# medqa-bench run {run_state(config).run_id} (profile {name})\n\n"
        + markdown_table(records, run_state(config).baseline_before) + "\n")


def judge_aggregates(session: pytest.Session, records: list[CaseRecord], lines: list[str]) -> None:
    """Family and suite verdicts (gate.aggregates); a failing one fails the session like a case."""
    import json

    from ..results.analysis import GateSettings, run_aggregates

    config = session.config
    aggs = run_aggregates(records, GateSettings.of(active_profile(config)))
    if not aggs:
        return
    (run_state(config).run_dir / "aggregates.json").write_text(
        json.dumps([a.__dict__ for a in aggs], indent=1, allow_nan=False))
    failed = [a for a in aggs if not a.passed]
    lines.append(f"medqa-bench: aggregate verdicts ({len(aggs)} family/suite x metric checks, {len(failed)} failed):")
    shown = failed or [a for a in aggs if a.scope == "suite" and a.metric in ("bert_f1", "use_f1")]
    lines.extend(a.line() for a in shown)
    if failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def record_baselines(config: pytest.Config, records: list[CaseRecord]) -> str:
    from ..baselines import record_cases
    from ..resources import recorded_hardware_class

    profile = active_profile(config)
    path = profile.resolve(str(profile.baseline))
    if profile.baseline_readonly:  # published numbers stay; this hardware's results go beside them
        path = profile.hardware_baseline(recorded_hardware_class(records[0]["provenance"]["hardware"]))
    written, skipped = record_cases(path, profile.name, records)
    return (f"medqa-bench: recorded {len(written)} case(s) into {path}"
            + (f"; not recorded (failed): {skipped}" if skipped else ""))


def store_history(config: pytest.Config, records: list[CaseRecord], exitstatus: int,
                   lines: list[str]) -> dict[str, Any]:
    """Append the run to the history and look for worsening trends in the cases just run."""
    path = history_path(config)
    if path is None:
        return {}
    from ..resources import recorded_hardware_class
    from ..results.analysis import GateSettings, run_trends
    from ..results.history import History

    profile = profile_or_name(config)
    name = profile if isinstance(profile, str) else profile.name
    hist = History(path, keep_runs=config.getoption("--history-keep-runs"),
                   keep_days=config.getoption("--history-keep-days"))
    try:
        seq = hist.add_run(run_state(config).run_id, name, records, {"exitstatus": exitstatus})
        if isinstance(profile, str):  # the profile did not load: the run is stored, no trend to look for
            lines.append(f"medqa-bench: run {run_state(config).run_id} stored as #{seq} in {path}")
            return {}
        hw_class = recorded_hardware_class(records[0].get("provenance", {}).get("hardware", {}))
        trends = run_trends(hist, [r["case_id"] for r in records if r.get("metrics")], profile.name,
                            GateSettings.of(profile), hw_class)
    except MedQAError as exc:
        lines.append(f"medqa-bench: WARNING history not updated: {exc}")
        return {}
    lines.append(f"medqa-bench: run {run_state(config).run_id} stored as #{seq} in {path}")
    for cid, per_metric in sorted(trends.items()):
        for metric, found in per_metric.items():
            for sh in found:
                lines.append(f"medqa-bench: trend {cid} {sh.explain(metric)}")
    return trends


def alert(config: pytest.Config, url: str, records: list[CaseRecord], exitstatus: int,
           trends: dict[str, Any], lines: list[str]) -> None:
    from ..results.alerts import payload, post

    profile = profile_or_name(config)
    body = payload(run_state(config).run_id, profile if isinstance(profile, str) else profile.name, records, exitstatus, trends,
                   str(run_state(config).run_dir / "summary.md"))
    warnings = [ln.removeprefix("medqa-bench: ") for ln in lines if ln.startswith("medqa-bench: WARNING")]
    if warnings:
        body["text"] += "\n" + "\n".join(warnings)
        body["warnings"] = warnings
    if body["status"] == "pass" and not config.getoption("--alert-always"):
        return
    try:
        code = post(url, body)
        lines.append(f"medqa-bench: alert ({body['status']}) posted to webhook, HTTP {code}")
    except (OSError, ValueError) as exc:
        lines.append(f"medqa-bench: WARNING alert to webhook failed: {exc}")
