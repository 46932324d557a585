"""summary / report / history / trend find the profile (a name or a .toml path), the baseline and
the history a run used from its run directory (run.toml), and say where they looked when not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medqa_core.cli import main
from medqa_core.results.summary import RUN_INFO, read_run_info, write_run_info

METRICS = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")
PROFILE = """
name = "mine"
baseline = "{baseline}"
[gate]
metric_tolerance = {{ bert_f1 = 0.01 }}
[models.llama]
tokenizer = "fixtures/tokenizer"
tiny_config = {{ hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2 }}
[datasets.clinic]
file = "clinic.csv"
question = "q"
answer = "a"
"""


def record(bert_f1: float, status: str = "pass", checks: list | None = None) -> dict:
    return {"case_id": "llama-clinic", "model": "llama", "dataset": "clinic", "profile": "mine",
            "metrics": {**{m: 0.5 for m in METRICS}, "bert_f1": bert_f1}, "base_metrics": {m: 0.3 for m in METRICS},
            "resources": {"train_seconds": 1.0, "peak_mem_mib": 10.0}, "provenance": {"hardware": {}},
            "verdict": {"status": status, "explain": f"llama-clinic: {status}", "checks": checks or []}}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A path profile outside the repository, its baseline, a history of 6 runs (a drop at run 3),
    and the run directories, the way the plugin leaves them."""
    for k in ("MEDQA_HISTORY", "MEDQA_CACHE_DIR", "MEDQA_RESULTS_DIR", "MEDQA_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # no ./.medqa-cache or ./.medqa-results here
    mine = tmp_path / "data"
    mine.mkdir()
    baseline = mine / "mine.baseline.json"
    baseline.write_text(json.dumps({"schema_version": 1, "profile": "mine", "cases": {
        "llama-clinic": {"metrics": {**{m: 0.5 for m in METRICS}, "bert_f1": 0.5}}}}))
    profile = mine / "mine.toml"
    profile.write_text(PROFILE.format(baseline=baseline))
    from medqa_core.results.history import History

    hist_path = tmp_path / "elsewhere" / "history.sqlite"
    hist = History(hist_path)
    results = tmp_path / "results"
    dirs = []
    for i, v in enumerate([0.5, 0.5, 0.5, 0.4, 0.4, 0.4]):
        run_id = f"2026110{i}-run"
        d = results / run_id
        d.mkdir(parents=True)
        checks = [] if v == 0.5 else [{"name": "beats_base:bert_f1", "kind": "control", "passed": False, "value": v,
                                      "baseline": 0.41, "delta": -0.01, "ci": [-0.03, 0.01]}]
        rec = record(v, "pass" if v == 0.5 else "regression", checks)
        (d / "llama-clinic.json").write_text(json.dumps(rec))
        write_run_info(d, {"run_id": run_id, "profile": str(profile), "profile_name": "mine",
                           "baseline": str(baseline), "history": str(hist_path), "set": [], "missing": None})
        hist.add_run(run_id, "mine", [rec])
        dirs.append(d)
    return {"profile": profile, "baseline": baseline, "history": hist_path, "results": results, "dirs": dirs}


def test_run_info_round_trip(tmp_path):
    write_run_info(tmp_path, {"profile": 'a "quoted" path.toml', "set": ["train.steps=3"], "slow": True, "n": 2,
                              "history": None})
    assert read_run_info(tmp_path) == {"profile": 'a "quoted" path.toml', "set": ["train.steps=3"], "slow": True, "n": 2}
    assert (tmp_path / RUN_INFO).name == "run.toml"  # not *.json: those are case records
    assert read_run_info(tmp_path / "nope") == {}


def test_summary_uses_the_runs_baseline_and_says_why(setup, capsys):
    assert main(["summary", str(setup["dirs"][-1])]) == 0
    out = capsys.readouterr().out
    assert "0.4000 (-0.1000)" in out  # delta against the baseline the run recorded, without --baseline
    why = [ln for ln in out.splitlines() if ln.strip().startswith("llama-clinic:")]
    assert len(why) == 1 and "regression: does not beat the base model on bert_f1" in why[0]
    base_row = next(ln for ln in out.splitlines() if ln.startswith("llama-clinic"))
    assert base_row.split()[1:4] == ["bert_f1", "0.4000", "0.3000"]  # tuned beside the base model


def test_report_finds_path_profile_baseline_and_history(setup, capsys):
    run = setup["dirs"][-1]
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    md = (run / "report.md").read_text()
    assert "medqa-bench report: profile mine, run 20261105-run" in html
    assert "(-0.1000)" in md  # the baseline of the path profile was found
    assert "step down by -0.1000" in md  # the history (elsewhere) was found, filtered by the profile's name
    assert html.count("<svg") == 1  # the case's sparkline


def test_history_and_trend_from_a_run_directory(setup, capsys):
    run = str(setup["dirs"][-1])
    assert main(["history", run]) == 0
    out = capsys.readouterr().out
    assert out.count("mine") == 6
    assert main(["trend", run]) == 1
    assert "llama-clinic: bert_f1: step down by -0.1000" in capsys.readouterr().out
    # a profile given as a path filters the history by that profile's name
    assert main(["trend", "--profile", str(setup["profile"]), "--history", str(setup["history"])]) == 1
    assert main(["history", "--profile", str(setup["profile"]), "--history", str(setup["history"])]) == 0
    assert capsys.readouterr().out.count("mine") == 6


def test_history_references_find_the_history_through_run_directories(setup, monkeypatch, capsys):
    monkeypatch.setenv("MEDQA_RESULTS_DIR", str(setup["results"]))
    assert main(["summary", "latest"]) == 0  # no --history: the run directories name it
    assert "0.4000 (-0.1000)" in capsys.readouterr().out


def test_errors_say_where_they_looked(setup, monkeypatch, capsys):
    assert main(["summary", "latest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "looked in:" in err
    assert str(Path.cwd() / ".medqa-cache" / "history.sqlite") in err
    monkeypatch.setenv("MEDQA_CACHE_DIR", "/nonexistent/cache")
    assert main(["trend"]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/cache/history.sqlite ($MEDQA_CACHE_DIR)" in err and "no run history found" in err
