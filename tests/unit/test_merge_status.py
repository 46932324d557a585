"""A merged night's status comes from the verdicts and the runs' exit codes (issue 24, item 4).

A night is ``ok`` only when every case passed and every run exited 0: a case the gate could not
judge (``incomparable``, ``no-baseline``), a case that ended in ``error`` or a run that exited
nonzero never merges as ``ok`` with "Failing cases: None". Attempts of a case are ordered by
when they ran, never by the folder their artifacts were downloaded to.
"""
from __future__ import annotations

import pytest
from helpers import merge_record as record
from helpers import run_dir

from medqa_core.results.history import History
from medqa_core.results.merge import merge, night_status, read_run_dir, write_issue
from medqa_core.results.summary import write_run_info


class Agg:
    def __init__(self, passed: bool) -> None:
        self.passed = passed


def recs(*statuses: str) -> list[dict]:
    return [record(f"{fam}-wikidoc", status=s) for fam, s in zip(("llama", "mistral", "phi"), statuses)]


@pytest.mark.parametrize(("statuses", "aggs", "exits", "want"), [
    (("pass", "improvement"), [True], {"a": 0, "b": 0}, "ok"),
    (("pass", "pass"), [], {"a": None}, "ok"),  # exit code unknown (an import from before run.toml had it)
    (("pass", "incomparable"), [True], {"a": 0}, "regressed"),
    (("pass", "no-baseline"), [True], {"a": 0}, "regressed"),
    (("error", "pass"), [True], {"a": 0}, "regressed"),
    (("regression", "pass"), [True], {"a": 1}, "regressed"),
    (("pass", "pass"), [False], {"a": 0}, "regressed"),
    (("pass", "pass"), [True], {"a": 0, "b": 1}, "regressed"),  # pytest failed, the records do not say why
    (("pass", "pass"), [True], {"a": 0, "b": 2}, "error"),  # interrupted: not the whole night
    (("regression", "pass"), [True], {"a": 4}, "error"),
    (("pass", "pass"), [True], {"a": 5}, "error"),
])
def test_a_night_is_ok_only_when_every_case_passed_and_every_run_exited_0(statuses, aggs, exits, want):
    assert night_status(recs(*statuses), [Agg(p) for p in aggs], exits) == want


def test_a_record_without_a_verdict_is_not_a_pass():
    r = record("llama-wikidoc")
    del r["verdict"]
    assert night_status([r], [], {}) == "regressed"
    assert night_status([], [], {}) == "error"


def _night(tmp_path, statuses: dict[str, str], exits: dict[str, int] | None = None):
    """One run directory per family (run.toml with its exit status where given), merged as group "night"."""
    dirs = []
    for i, (fam, status) in enumerate(sorted(statuses.items())):
        d = run_dir(tmp_path / "art" / f"medqa-paper-{fam}", f"20261110-02{i:02d}00-abcde{i}",
                    [record(f"{fam}-wikidoc", 0.5, status=status)])
        if exits and fam in exits:
            write_run_info(d, {"run_id": d.name, "profile": "tiny", "exitstatus": exits[fam]})
        dirs.append(d)
    hist = tmp_path / "h.sqlite"
    merge(dirs, hist, "night")
    out = tmp_path / "out"
    status = write_issue(hist, "night", out)
    return status, (out / "issue.md").read_text(), dirs


@pytest.mark.parametrize("status", ["incomparable", "no-baseline", "error"])
def test_a_case_the_gate_did_not_pass_never_merges_as_ok(tmp_path, status):
    got, issue, _ = _night(tmp_path, {"llama": status, "mistral": "pass"})
    assert got == "regressed"
    assert (tmp_path / "out" / "status").read_text() == "regressed\n"
    assert f"### llama-wikidoc: {status}" in issue and "## Failing cases\n\nNone." not in issue


@pytest.mark.parametrize(("code", "want"), [(1, "regressed"), (2, "error"), (3, "error")])
def test_a_run_that_exited_nonzero_never_merges_as_ok(tmp_path, code, want):
    got, issue, dirs = _night(tmp_path, {"llama": "pass", "mistral": "pass"}, {"llama": code})
    assert got == want
    assert read_run_dir(dirs[0]).meta == {"exitstatus": code}
    assert "## Failing cases\n\nNone." not in issue
    assert f"Runs that exited nonzero (pytest exit code): {dirs[0].name} {code}" in issue
    assert f"| {dirs[0].name} | llama | cpu | abc123 | 1 | {code} (" in issue


def test_the_exit_status_pytest_stored_counts_too(tmp_path):
    """A run pytest stored in the history (meta exitstatus) and then merged: its exit code is read."""
    hist = tmp_path / "h.sqlite"
    d = run_dir(tmp_path / "art", "20261110-020000-aaaaaa", [record("llama-wikidoc")])
    History(hist).add_run(d.name, "tiny", [record("llama-wikidoc")], {"exitstatus": 2})
    merge([d], hist, "night")
    assert write_issue(hist, "night", tmp_path / "out") == "error"


def test_an_ok_night_still_says_none(tmp_path):
    got, issue, _ = _night(tmp_path, {"llama": "pass", "mistral": "improvement"}, {"llama": 0, "mistral": 0})
    assert got == "ok" and "## Failing cases\n\nNone." in issue


def test_attempts_are_ordered_by_when_they_ran_not_by_their_artifact_folder(tmp_path):
    """A re-run job's artifacts in a folder that sorts first (``medqa-paper-llama-attempt2/`` before
    ``medqa-paper-llama/``, as ``find | sort`` lists them): the later attempt stands for the night."""
    art = tmp_path / "art"
    early = run_dir(art / "medqa-paper-llama", "20261110-020000-aaaaaa",
                    [record("llama-wikidoc", 0.40, status="regression")])
    late = run_dir(art / "medqa-paper-llama-attempt2", "20261110-031500-bbbbbb",
                   [record("llama-wikidoc", 0.50, status="pass")])
    listed = sorted([early, late], key=str)
    assert listed == [late, early]  # the folder order the nightly script merges in
    hist = tmp_path / "h.sqlite"
    merge(listed, hist, "night")
    [r] = History(hist).records("night")
    assert r["metrics"]["bert_f1"] == 0.50 and r["verdict"]["status"] == "pass"
    assert [x.run_id for x in History(hist).runs(grouped=False)] == [early.name, late.name]
    assert write_issue(hist, "night", tmp_path / "out") == "ok"


def test_run_info_time_orders_attempts_whose_names_say_nothing(tmp_path):
    """Run directories not named like run ids: run.toml's ``started`` decides, not the names."""
    art = tmp_path / "art"
    b = run_dir(art, "attempt-b", [record("llama-wikidoc", 0.40, status="regression")])
    a = run_dir(art, "attempt-a", [record("llama-wikidoc", 0.50, status="pass")])
    write_run_info(b, {"run_id": "attempt-b", "profile": "tiny", "started": 1_800_000_000.0, "exitstatus": 1})
    write_run_info(a, {"run_id": "attempt-a", "profile": "tiny", "started": "2027-01-15T09:00:00+00:00",
                       "exitstatus": 0})
    assert read_run_dir(a).created > read_run_dir(b).created
    hist = tmp_path / "h.sqlite"
    merge([a, b], hist, "night")
    [r] = History(hist).records("night")
    assert r["verdict"]["status"] == "pass"
    # the older attempt's exit 1 still belongs to the night: it is not ok
    assert write_issue(hist, "night", tmp_path / "out") == "regressed"


def test_a_group_trend_point_is_its_newest_attempt(tmp_path):
    art = tmp_path / "art"
    early = run_dir(art / "x-attempt2" / "p", "20261110-020000-aaaaaa", [record("llama-wikidoc", 0.40)])
    late = run_dir(art / "x" / "p", "20261110-031500-bbbbbb", [record("llama-wikidoc", 0.50)])
    hist = tmp_path / "h.sqlite"
    merge([late, early], hist, "night")  # stored in time order whatever the order given
    [(label, _, rec)] = History(hist).case_rows("llama-wikidoc")
    assert label == "night" and rec["metrics"]["bert_f1"] == 0.50
