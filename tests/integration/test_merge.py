"""One history for many runners (medqa-bench merge, scripts/merge_nightly.sh, docs/multi-runner.md).

Run directories are built the way the matrix jobs leave them: one JSON record per case, plus
``aggregates.json`` and ``summary.md``; different jobs on different hardware classes. One test
makes them with the real pytest plugin (pipeline faked as in test_plugin.py) and checks that
two partial runs, merged, report exactly like one run of all cases.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

# see test_plugin.py: imported once here for the in-process pytest runs below
import ruptures  # noqa: F401
from helpers import FAKE_CONFTEST, run_dir, write_fake_profile
from helpers import merge_record as record

import medqa_core.session  # noqa: F401
from medqa_core.cli import main
from medqa_core.errors import MedQAError
from medqa_core.metrics import METRICS
from medqa_core.results.history import History, series_of
from medqa_core.results.merge import MergeError, default_group, merge, read_run_dir

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
A100, H100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"


def counts(path: Path) -> tuple[int, int, int]:
    con = sqlite3.connect(path)
    try:
        return tuple(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "cases", "run_groups"))
    finally:
        con.close()


def night(root: Path, day: int, families: dict[str, tuple[str | None, float]]) -> list[Path]:
    """One night: one run directory per family (its runner's GPU, its cases' bert_f1)."""
    dirs = []
    for i, (fam, (gpu, f1)) in enumerate(sorted(families.items())):
        rid = f"202611{day:02d}-02{i:02d}00-" + hashlib.sha1(f"{day}-{fam}".encode()).hexdigest()[:6]
        dirs.append(run_dir(root / f"night{day}" / f"medqa-paper-{fam}", rid,
                            [record(f"{fam}-wikidoc", f1, gpu), record(f"{fam}-mental_health", f1 + 0.1, gpu)]))
    return dirs


def test_merge_stores_every_run_once_with_its_own_hardware_class(tmp_path):
    dirs = night(tmp_path, 1, {"gemma": (A100, 0.5), "llama": (H100, 0.45), "phi": (None, 0.3)})
    hist = tmp_path / "h.sqlite"
    res = merge(dirs, hist)
    assert res.group_id == default_group(dirs) and res.group_id.startswith("group-20261101-")
    assert sorted(res.runs_added) == sorted(d.name for d in dirs) and res.total_added == 6
    assert counts(hist) == (3, 6, 3)

    h = History(hist)
    [row] = h.runs()  # the three runs are one logical run
    assert row.run_id == res.group_id and row.is_group and sorted(row.members) == sorted(d.name for d in dirs)
    assert row.hardware_class == "+".join(sorted(["1x-nvidia-a100-sxm4-80gb", "1x-nvidia-h100-80gb-hbm3", "cpu"]))
    assert len(h.runs(grouped=False)) == 3
    assert h.resolve("latest") == res.group_id
    recs = h.records(res.group_id)
    assert sorted(r["case_id"] for r in recs) == sorted(f"{f}-{d}" for f in ("gemma", "llama", "phi")
                                                      for d in ("wikidoc", "mental_health"))
    by_case = {r["case_id"]: r for r in recs}
    assert by_case["llama-wikidoc"]["provenance"]["hardware"]["gpu"] == H100  # provenance kept as recorded
    assert by_case["phi-wikidoc"]["outcome"] == "passed"
    [(label, hw, _)] = h.case_rows("gemma-wikidoc")
    assert label == res.group_id and hw == "1x-nvidia-a100-sxm4-80gb"


def test_merging_again_adds_nothing(tmp_path, capsys):
    dirs = night(tmp_path, 2, {"gemma": (A100, 0.5), "llama": (H100, 0.45)})
    hist = tmp_path / "h.sqlite"
    assert main(["merge", *map(str, dirs), "--history", str(hist)]) == 0
    first = counts(hist)
    assert first == (2, 4, 2)
    out = capsys.readouterr().out
    assert f"group {default_group(dirs)} (profile tiny): 2 run(s), 4 case(s) added" in out

    # the same directories again, in another order and one of them twice: the same group, no new row
    assert main(["merge", *map(str, reversed(dirs)), str(dirs[0]), "--history", str(hist)]) == 0
    assert counts(hist) == first
    assert "0 case(s) added" in capsys.readouterr().out

    # the runs already stored by pytest itself (their own history) are not stored twice either
    own = tmp_path / "own.sqlite"
    for d in dirs:
        run = read_run_dir(d)
        History(own).add_run(run.run_id, "tiny", run.records)
    assert counts(own) == (2, 4, 0)
    merge(dirs, own, "night-2")
    assert counts(own) == (2, 4, 2)
    assert [r.run_id for r in History(own).runs()] == ["night-2"]

    # a group merged in two steps (a late artifact) is still one group
    late = night(tmp_path / "late", 2, {"mistral": (A100, 0.5), "phi": (A100, 0.5)})
    merge(dirs, tmp_path / "inc.sqlite", "night-2")
    merge([*dirs, *late], tmp_path / "inc.sqlite", "night-2")
    assert counts(tmp_path / "inc.sqlite") == (4, 8, 4)
    assert [len(r.members) for r in History(tmp_path / "inc.sqlite").runs()] == [4]


def test_a_changed_record_is_refused_and_nothing_of_the_merge_is_written(tmp_path):
    dirs = night(tmp_path, 3, {"gemma": (A100, 0.5)})
    hist = tmp_path / "h.sqlite"
    merge(dirs, hist, "n3")
    before = counts(hist)
    edited = dirs[0] / "gemma-wikidoc.json"
    rec = json.loads(edited.read_text())
    rec["metrics"]["bert_f1"] = 0.9
    edited.write_text(json.dumps(rec))
    new = night(tmp_path / "more", 3, {"llama": (H100, 0.4)})
    with pytest.raises(MedQAError, match=re.escape(str(edited))):
        merge([*new, *dirs], hist, "n3")  # the new run comes first: it must be rolled back
    assert counts(hist) == before


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = night(tmp_path, 4, {"gemma": (A100, 0.5)})[0]
    empty = tmp_path / "20261104-020000-eeeeee"
    empty.mkdir()
    (empty / "summary.md").write_text("x")
    malformed = run_dir(tmp_path / "m", "20261104-030000-aaaaaa", [record("llama-wikidoc")])
    (malformed / "llama-wikidoc.json").write_text('{"case_id": "llama-wikidoc", "metrics": {')
    listed = run_dir(tmp_path / "l", "20261104-040000-bbbbbb", [record("llama-wikidoc")])
    (listed / "extra.json").write_text("[1, 2]")
    nocase = run_dir(tmp_path / "n", "20261104-050000-cccccc", [record("llama-wikidoc")])
    (nocase / "llama-wikidoc.json").write_text(json.dumps({"model": "llama"}))
    return {
        "missing": (tmp_path / "nope", f"{tmp_path / 'nope'}: no such run directory"),
        "no records": (empty, f"{empty}: no case records"),
        "malformed": (malformed, f"{malformed / 'llama-wikidoc.json'}: not a readable case record"),
        "not an object": (listed, f"{listed / 'extra.json'}: not a case record (a JSON list"),
        "no case id": (nocase, f"{nocase / 'llama-wikidoc.json'}: not a case record (no case_id, dataset)"),
        "good": (good, ""),
    }


@pytest.mark.parametrize("kind", ["missing", "no records", "malformed", "not an object", "no case id"])
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, capsys, kind):
    cases = _bad_inputs(tmp_path)
    bad, message = cases[kind]
    hist = tmp_path / "h.sqlite"
    assert main(["merge", str(cases["good"][0]), str(bad), "--history", str(hist)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medqa-bench: ") and message in err, err
    assert not hist.exists()  # every directory is checked before the history is opened
    with pytest.raises(MergeError):
        merge([bad], hist)


def test_bad_group_ids_and_clashes(tmp_path, capsys):
    dirs = night(tmp_path, 5, {"gemma": (A100, 0.5)})
    hist = tmp_path / "h.sqlite"
    assert main(["merge", str(dirs[0]), "--history", str(hist), "--group", "a b/c"]) == 2
    assert "--group 'a b/c'" in capsys.readouterr().err
    with pytest.raises(MedQAError, match="is also a run id"):
        merge(dirs, hist, dirs[0].name)
    assert not History(hist).runs()  # the clash left nothing behind
    other = night(tmp_path / "o", 5, {"llama": (A100, 0.5)})
    for r in (other[0] / "llama-wikidoc.json", other[0] / "llama-mental_health.json"):
        r.write_text(r.read_text().replace('"tiny"', '"paper"'))
    merge(dirs, hist, "n5")
    with pytest.raises(MedQAError, match="one group is one profile"):
        merge(other, hist, "n5")


def _nights(tmp_path: Path, hist: Path, levels: list[tuple[str | None, float]]) -> list[str]:
    """One group per night; llama on the given (GPU, bert_f1), mistral always on the CPU at 0.3."""
    groups = []
    for day, (gpu, f1) in enumerate(levels, start=1):
        dirs = night(tmp_path / hist.stem, day, {"llama": (gpu, f1), "mistral": (None, 0.3)})
        groups.append(merge(dirs, hist, f"night-{day:02d}").group_id)
    return groups


def test_trend_sees_one_point_per_night_and_a_hardware_change_is_no_step(tmp_path, capsys):
    from medqa_core.results.trend import case_trends

    # llama moves from the A100 runner (0.50) to the H100 runner (0.40) at night 7; each class is flat
    moved = tmp_path / "moved.sqlite"
    _nights(tmp_path, moved, [(A100, 0.50)] * 6 + [(H100, 0.40)] * 6)
    h = History(moved)
    assert len(h.runs()) == 12 and len(h.runs(grouped=False)) == 24
    labels = [label for label, _, _ in h.case_rows("llama-wikidoc")]
    assert labels == [f"night-{d:02d}" for d in range(1, 13)]
    assert case_trends(h, h.case_ids(), None, {"bert_f1": 0.02}) == {}
    assert main(["trend", "--history", str(moved), "--profile", "tiny"]) == 0
    assert "no worsening shift in 12 stored run(s) of profile tiny" in capsys.readouterr().out

    # the same values on one class are a step, dated at the first night of the new level
    same = tmp_path / "same.sqlite"
    _nights(tmp_path, same, [(H100, 0.50)] * 6 + [(H100, 0.40)] * 6)
    found = case_trends(History(same), ["llama-wikidoc", "mistral-wikidoc"], None, {"bert_f1": 0.02})
    assert set(found) == {"llama-wikidoc"}
    [sh] = found["llama-wikidoc"]["bert_f1"]
    assert sh.run_id == "night-07" and sh.hardware_class == "1x-nvidia-h100-80gb-hbm3" and sh.delta < -0.05
    assert main(["trend", "--history", str(same), "--profile", "tiny"]) == 1
    assert "starting at run 6 (night-07) on 1x-nvidia-h100-80gb-hbm3" in capsys.readouterr().out

    # a step inside the new class after the move is still found, in that class's own series
    both = tmp_path / "both.sqlite"
    _nights(tmp_path, both, [(A100, 0.50)] * 5 + [(H100, 0.40)] * 5 + [(H100, 0.30)] * 5)
    [sh] = case_trends(History(both), ["llama-wikidoc"], None, {"bert_f1": 0.02})["llama-wikidoc"]["bert_f1"]
    assert sh.run_id == "night-11" and sh.start == 5 and sh.hardware_class == "1x-nvidia-h100-80gb-hbm3"
    only_a100 = case_trends(History(both), ["llama-wikidoc"], None, {"bert_f1": 0.02}, "1x-nvidia-a100-sxm4-80gb")
    assert only_a100 == {}


def test_a_night_run_twice_counts_once(tmp_path):
    """A re-run job of the same workflow run lands in the same group: the newer record stands for the night."""
    hist = tmp_path / "h.sqlite"
    _nights(tmp_path, hist, [(A100, 0.5)] * 3)
    retry = run_dir(tmp_path / "retry", "20261103-090000-ffffff", [record("llama-wikidoc", 0.47, A100)])
    merge([retry], hist, "night-03")
    h = History(hist)
    assert [v for _, v in series_of(h.case_rows("llama-wikidoc"), "bert_f1")] == [0.5, 0.5, 0.47]
    assert {r["case_id"]: r["metrics"]["bert_f1"] for r in h.records("night-03")}["llama-wikidoc"] == 0.47
    assert len(h.records("night-03")) == 4


# ------------------------------------------------------------- real plugin runs (pipeline faked)


@pytest.fixture
def plugin_env(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):

    prof = write_fake_profile(tmp_path, ("llama", "mistral"))
    scores = tmp_path / "scores.json"
    monkeypatch.setenv("FAKE_SCORES", str(scores))
    pytester.makeconftest(FAKE_CONFTEST)
    pytester.makepyfile(test_medqa_copy=(REPO / "benchmarks" / "test_medqa.py").read_text())

    def run(results: Path, *args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess("-p", "medqa_core.pytest_plugin", "--profile", str(prof),
                                            "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"),
                                            "-p", "no:cacheprovider", *args)

    return prof, scores, run


def _table(level: float) -> dict:
    return {f"{m}-{d}": {"tuned": {k: level for k in METRICS}, "base": {k: level - 0.2 for k in METRICS}}
            for m in ("llama", "mistral") for d in ("wikidoc", "mental_health")}


def test_two_partial_runs_merged_report_like_one_run_of_all_cases(plugin_env, tmp_path):
    from medqa_core.gate import aggregates
    from medqa_core.profile import load_profile

    prof, scores, run = plugin_env
    scores.write_text(json.dumps(_table(0.5)))
    run(tmp_path / "rec", "--update-baselines", "--history", "none").assert_outcomes(passed=4)
    night_scores = _table(0.5)
    for d in ("wikidoc", "mental_health"):  # each llama case within its own gate, the family beyond it
        night_scores[f"llama-{d}"]["tuned"]["bert_f1"] = 0.488
    scores.write_text(json.dumps(night_scores))
    run(tmp_path / "a", "-k", "llama").assert_outcomes(passed=2)
    run(tmp_path / "b", "-k", "mistral").assert_outcomes(passed=2)
    run(tmp_path / "c").assert_outcomes(passed=4)
    [a], [b], [c] = (list((tmp_path / x).iterdir()) for x in "abc")

    merged, single = tmp_path / "merged.sqlite", tmp_path / "single.sqlite"
    assert main(["merge", str(a), str(b), "--history", str(merged), "--group", "night"]) == 0
    assert main(["merge", str(c), "--history", str(single), "--group", "night"]) == 0
    assert counts(merged) == (2, 4, 2) and counts(single) == (1, 4, 1)

    reports = {}
    for name, hist in (("merged", merged), ("single", single)):
        out = tmp_path / f"report-{name}"
        assert main(["report", "night", "--history", str(hist), "--profile", str(prof), "--out", str(out)]) == 0
        reports[name] = (out / "report.md").read_text()
    assert reports["merged"] == reports["single"]
    assert "## Family and suite verdicts" in reports["merged"] and "[FAIL] family llama bert_f1" in reports["merged"]
    for case in ("llama-wikidoc", "llama-mental_health", "mistral-wikidoc", "mistral-mental_health"):
        assert f"{case}: pass" in reports["merged"]

    # the recomputed family/suite verdicts are the ones the single run of all cases wrote
    gate = load_profile(prof).gate
    recomputed = [vars(x) for x in aggregates(History(merged).records("night"), gate)]
    written = json.loads((c / "aggregates.json").read_text())
    assert [(x["scope"], x["metric"], x["passed"], x["n"]) for x in recomputed] == \
           [(x["scope"], x["metric"], x["passed"], x["n"]) for x in written]
    assert [x["z"] for x in recomputed] == pytest.approx([x["z"] for x in written])
    assert not all(x["passed"] for x in written)
    # neither partial run could see the suite: it has one family each
    assert not any(x["scope"] == "suite" for f in (a, b) for x in json.loads(
        (f / "aggregates.json").read_text() if (f / "aggregates.json").exists() else "[]"))

    # the runs pytest stored in its own history are not stored again by a merge into it
    own = tmp_path / "cache" / "history.sqlite"
    before = counts(own)
    assert main(["merge", str(a), str(b), "--history", str(own)]) == 0
    assert counts(own) == (before[0], before[1], before[2] + 2)

    # and the report of a plain run directory (aggregates.json beside the records) works too
    assert main(["report", str(c), "--profile", str(prof), "--out", str(tmp_path / "rc")]) == 0


# ---------------------------------------------------------------------- scripts/merge_nightly.sh


def _script(art: Path, hist: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_RUN_ID", "MEDQA_RUN_GROUP", "MEDQA_HISTORY")}
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(["bash", str(REPO / "scripts" / "merge_nightly.sh"), str(art), str(hist), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)


def _artifacts(root: Path, day: int, llama_status: str = "pass") -> Path:
    """Downloaded matrix artifacts: per family results/ with its run dir, report/ and junit XML."""
    for i, (fam, gpu) in enumerate((("llama", A100), ("mistral", H100))):
        base = root / f"medqa-paper-{fam}"
        status = llama_status if fam == "llama" else "pass"
        run_dir(base, f"202611{day:02d}-02{i:02d}00-{day:04x}{i:02x}",
                [record(f"{fam}-wikidoc", 0.5, gpu, status), record(f"{fam}-mental_health", 0.6, gpu)])
        (base / "report").mkdir()
        (base / "report" / "report.md").write_text("# per-job report\n")
        (base / f"junit-{fam}.xml").write_text("<testsuites/>")
    return root


def test_merge_nightly_script(tmp_path):
    hist = tmp_path / "hist" / "history.sqlite"
    out = tmp_path / "out1"
    res = _script(_artifacts(tmp_path / "art1", 10), hist, out)
    assert res.returncode == 0, res.stderr
    assert (out / "status").read_text().strip() == "ok"
    for f in ("report.md", "report.html", "trend.txt", "issue.md", "merge.log"):
        assert (out / f).is_file(), f
    assert counts(hist) == (2, 4, 2)
    issue = (out / "issue.md").read_text()
    assert "families llama, mistral" in issue and "1x-nvidia-a100-sxm4-80gb" in issue and "1x-nvidia-h100" in issue
    assert "## Failing cases\n\nNone." in issue
    report = (out / "report.md").read_text()
    assert all(c in report for c in ("llama-wikidoc", "mistral-mental_health"))

    # the same artifacts again: nothing added, same status
    assert _script(tmp_path / "art1", hist, tmp_path / "out1b").returncode == 0
    assert counts(hist) == (2, 4, 2)

    # the next night llama regressed: one issue body for the night, status regressed
    out2 = tmp_path / "out2"
    res = _script(_artifacts(tmp_path / "art2", 11, llama_status="regression"), hist, out2)
    assert res.returncode == 0, res.stderr
    assert (out2 / "status").read_text().strip() == "regressed"
    issue = (out2 / "issue.md").read_text()
    assert "### llama-wikidoc: regression" in issue and "[FAIL] bert_f1: planted" in issue
    assert "mistral" in issue and counts(hist) == (4, 8, 4)
    assert len(History(hist).runs()) == 2

    # a malformed record: the merge fails, exit 1, status error, the history is unchanged
    art3 = _artifacts(tmp_path / "art3", 12)
    [bad] = art3.glob("medqa-paper-mistral/*/mistral-wikidoc.json")
    bad.write_text("{not json")
    out3 = tmp_path / "out3"
    res = _script(art3, hist, out3)
    assert res.returncode == 1
    assert (out3 / "status").read_text().strip() == "error"
    assert str(bad) in (out3 / "issue.md").read_text() and str(bad) in res.stderr
    assert counts(hist) == (4, 8, 4)

    # nothing to merge is an error too
    (tmp_path / "empty").mkdir()
    res = _script(tmp_path / "empty", hist, tmp_path / "out4")
    assert res.returncode == 1 and (tmp_path / "out4" / "status").read_text().strip() == "error"
