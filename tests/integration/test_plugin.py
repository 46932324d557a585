"""Orchestration tests of the pytest layer: the real benchmark module and plugin, with the
pipeline's ``run_case`` replaced by a fake that returns scores from a JSON file (no model,
no metric). Checks parametrization ids, gating, the summary, and baseline recording."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# Imported once here: in-process pytest runs drop the modules they import, and scipy's numpy.fft
# extension (pulled in by ruptures for the trend check) cannot be loaded twice in one process.
import ruptures  # noqa: F401
from helpers import FAKE_CONFTEST, write_fake_profile

# Likewise the session and the pipeline it calls: imported here they are the same module objects
# in every in-process run. Otherwise a later run can get a fresh ``medqa_core.pipeline`` (patched
# by the fake below) while the benchmark's ``session`` still calls an older, unpatched copy.
import medqa_core.session  # noqa: F401

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
METRICS = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")



def _metrics(v: float) -> dict[str, float]:
    return {m: v for m in METRICS}


@pytest.fixture
def env(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    baseline = tmp_path / "base.json"
    write_fake_profile(tmp_path)
    scores = tmp_path / "scores.json"
    monkeypatch.setenv("FAKE_SCORES", str(scores))
    pytester.makeconftest(FAKE_CONFTEST)
    pytester.makepyfile(test_medqa_copy=(REPO / "benchmarks" / "test_medqa.py").read_text())

    def write_scores(table: dict) -> None:
        scores.write_text(json.dumps(table))

    def run(*args: str, subprocess: bool = False) -> pytest.RunResult:
        common = ["-p", "medqa_core.pytest_plugin", "--profile", str(tmp_path / "prof.toml"),
                  "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
                  "-p", "no:cacheprovider", *args]
        return pytester.runpytest_subprocess(*common) if subprocess else pytester.runpytest_inprocess(*common)

    return baseline, write_scores, run


GOOD = {"llama-wikidoc": {"tuned": _metrics(0.5), "base": _metrics(0.3)},
        "llama-mental_health": {"tuned": _metrics(0.6), "base": _metrics(0.4)}}


def test_ids_and_selection(env):
    _, write_scores, run = env
    write_scores(GOOD)
    res = run("--collect-only", "-q")
    assert "test_medqa_copy.py::test_case[llama-wikidoc]" in res.stdout.str()
    assert "test_medqa_copy.py::test_case[llama-mental_health]" in res.stdout.str()
    res = run("--collect-only", "-q", "-k", "mental")
    assert "1/2 tests collected" in res.stdout.str() or "1 test collected" in res.stdout.str()


def test_missing_baseline_fails_with_instruction(env):
    baseline, write_scores, run = env
    write_scores(GOOD)
    res = run()
    res.assert_outcomes(failed=2)  # each case fails with one line (no traceback) naming the file and the fix
    assert str(baseline) in res.stdout.str() and "--update-baselines" in res.stdout.str()
    assert "Traceback" not in res.stdout.str() and "baselines.py" not in res.stdout.str()
    assert not baseline.exists()


def test_record_then_gate(env):
    baseline, write_scores, run = env
    bad_base = {**GOOD, "llama-mental_health": {"tuned": _metrics(0.4), "base": _metrics(0.45)}}
    write_scores(bad_base)
    res = run("--update-baselines")
    res.assert_outcomes(passed=1, failed=1)
    assert "does not beat the base control" in res.stdout.str()
    data = json.loads(baseline.read_text())
    assert data["schema_version"] == 2
    assert set(data["cases"]) == {"llama-wikidoc"}  # the failing case is not recorded
    # ...and its recording stopped at the first seed that failed the control (no K-1 more trainings)
    failed_rec = json.loads(next((baseline.parent / "results").glob("*/llama-mental_health.json")).read_text())
    assert [r["seed"] for r in failed_rec["runs"]] == [0]
    case = data["cases"]["llama-wikidoc"]
    assert case["metrics"] == pytest.approx(_metrics(0.5))  # the mean of the K runs
    assert [r["seed"] for r in case["runs"]] == [0, 1, 2, 3, 4]  # [gate] baseline_seeds = 5 by default
    assert [r["metrics"]["bert_f1"] for r in case["runs"]] == pytest.approx([0.5, 0.504, 0.496, 0.502, 0.498])
    assert [r["tokens_seen"] for r in case["runs"]] == [10000, 10001, 10002, 10003, 10004]
    assert case["spread"]["bert_f1"] == pytest.approx(0.004 * (2.5 / 4) ** 0.5, abs=1e-6)
    assert "--seeds 0,1,2,3,4" in data["source"]

    write_scores(GOOD)
    res = run("--update-baselines")
    res.assert_outcomes(passed=2)
    recorded = baseline.read_bytes()
    assert set(json.loads(recorded)["cases"]) == {"llama-wikidoc", "llama-mental_health"}

    res = run()  # unchanged scores: pass, summary printed, baseline untouched
    res.assert_outcomes(passed=2)
    out = res.stdout.str()
    assert "medqa-bench summary" in out and "+0.0000" in out
    assert baseline.read_bytes() == recorded

    dropped = json.loads(json.dumps(GOOD))
    dropped["llama-wikidoc"]["tuned"]["bert_f1"] = 0.45  # -0.05, tolerance 0.02
    write_scores(dropped)
    res = run()
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    assert "llama-wikidoc: regression" in out and "bert_f1: 0.4500 vs 0.5000" in out and "K=5, R=1" in out
    assert baseline.read_bytes() == recorded

    risen = json.loads(json.dumps(GOOD))
    risen["llama-wikidoc"]["tuned"]["bert_p"] = 0.55  # a score that rises beyond its band is a change
    write_scores(risen)
    res = run()
    res.assert_outcomes(passed=1, failed=1)
    assert "llama-wikidoc: changed" in res.stdout.str()

    within = json.loads(json.dumps(GOOD))
    within["llama-wikidoc"]["tuned"]["bert_f1"] = 0.49  # -0.01 is within tolerance
    write_scores(within)
    run().assert_outcomes(passed=2)

    slow = json.loads(json.dumps(GOOD))
    slow["llama-wikidoc"]["train_work"] = 3.5  # seconds per reference workload: baseline 1.0 x factor 3
    write_scores(slow)
    res = run()
    res.assert_outcomes(passed=1, failed=1)
    assert "train_work: 3.5000 vs 1.0000" in res.stdout.str()

    write_scores(GOOD)
    one_seed = run("--seeds", "2")  # one run with seed 2: compared with the baseline's run of seed 2
    one_seed.assert_outcomes(passed=2)
    res = run("--seeds", "0")
    assert res.ret != 0 and "--seeds" in res.stdout.str() + res.stderr.str()


def test_uniform_small_drop_fails_the_family_verdict(env, tmp_path):
    baseline, write_scores, run = env
    write_scores(GOOD)
    run("--update-baselines").assert_outcomes(passed=2)
    both = json.loads(json.dumps(GOOD))
    both["llama-wikidoc"]["tuned"]["bert_f1"] = 0.488  # -0.012 each: within every case's minimum effect
    both["llama-mental_health"]["tuned"]["bert_f1"] = 0.588
    write_scores(both)
    res = run()
    res.assert_outcomes(passed=2)
    assert res.ret == 1  # ... but the family verdict fails the session
    out = res.stdout.str()
    assert "aggregate verdicts" in out and "[FAIL] family llama bert_f1: mean delta -0.0120 over 2 case(s)" in out
    [agg_file] = (tmp_path / "results").glob("*/aggregates.json")  # written by gating runs only
    failed = [a for a in json.loads(agg_file.read_text()) if not a["passed"]]
    assert [(a["scope"], a["metric"]) for a in failed] == [("family llama", "bert_f1")]


def test_update_baselines_under_xdist(env):
    baseline, write_scores, run = env
    write_scores(GOOD)
    res = run("-n", "2", "--update-baselines", subprocess=True)
    res.assert_outcomes(passed=2)
    assert set(json.loads(baseline.read_text())["cases"]) == {"llama-wikidoc", "llama-mental_health"}
    assert "medqa-bench summary" in res.stdout.str()


def test_unknown_profile_is_a_usage_error(env):
    _, write_scores, run = env
    write_scores(GOOD)
    res = run("--profile", "no-such-profile")
    assert res.ret != 0
    assert "no-such-profile" in res.stderr.str() + res.stdout.str()


def test_gpu_pinning_respects_caller_list(monkeypatch):
    from medqa_core import pytest_plugin as plug

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    gpus = plug.visible_gpus()
    assert gpus == ["2", "5"]
    assert plug.pin_worker_gpu("gw1", gpus) == "5"
    assert plug.pin_worker_gpu("gw2", gpus) == "2"  # more workers than GPUs: round robin
    assert plug.pin_worker_gpu("master", gpus) is None
    assert plug.pin_worker_gpu("gw0", []) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plug.visible_gpus() == []


def test_paper_profile_skips_without_cuda(pytester: pytest.Pytester):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: paper cases would run")
    pytester.makepyfile(test_medqa_copy=(REPO / "benchmarks" / "test_medqa.py").read_text())
    res = pytester.runpytest_inprocess("-p", "medqa_core.pytest_plugin", "--profile", "paper", "-p", "no:cacheprovider",
                                       "-rs", "--results-dir", str(pytester.path / "r"))
    res.assert_outcomes(skipped=20)
    out = res.stdout.str()
    assert "mistral-wikidoc: profile 'paper' runs mistralai/Mistral-7B-v0.3 and needs a CUDA GPU" in out
    # a gate that ran nothing is not a pass: one line, exit 1
    assert res.ret == 1
    assert len([ln for ln in out.splitlines() if "nothing judged: all 20 case(s) of profile 'paper'" in ln]) == 1
    res = pytester.runpytest_inprocess("-p", "medqa_core.pytest_plugin", "--profile", "paper", "-p", "no:cacheprovider",
                                       "--allow-empty", "--results-dir", str(pytester.path / "r"))
    assert res.ret == 0 and "nothing judged" not in res.stdout.str()


PLAIN_TEST = "def test_plain():\n    assert True\n"


def test_a_named_profile_with_no_case_run_fails(pytester: pytest.Pytester, tmp_path: Path):
    write_fake_profile(tmp_path)
    pytester.makepyfile(test_plain=PLAIN_TEST)
    common = ["-p", "medqa_core.pytest_plugin", "-p", "no:cacheprovider", "--results-dir", str(tmp_path / "r")]
    res = pytester.runpytest_inprocess(*common, "--profile", str(tmp_path / "prof.toml"))
    res.assert_outcomes(passed=1)
    assert res.ret == 1 and "nothing judged: --profile" in res.stdout.str()
    res = pytester.runpytest_inprocess(*common, "--profile", str(tmp_path / "prof.toml"), "--allow-empty")
    assert res.ret == 0
    # configured in pyproject.toml (not named for this run): other tests may run alone
    pytester.makepyprojecttoml(f'[tool.medqa-bench]\nprofile = "{tmp_path / "prof.toml"}"\n')
    res = pytester.runpytest_inprocess(*common)
    assert res.ret == 0 and "nothing judged" not in res.stdout.str()


def test_without_a_profile_the_plugin_is_inert(pytester: pytest.Pytester):
    pytester.makepyfile(test_plain=PLAIN_TEST)
    res = pytester.runpytest_inprocess("-p", "medqa_core.pytest_plugin", "-p", "no:cacheprovider", "-q")
    assert res.ret == 0 and "medqa" not in res.stdout.str()
    assert not (pytester.path / ".medqa-results").exists() and not (pytester.path / ".medqa-cache").exists()
    # a test asking for a case without a profile: a usage error naming the three ways to configure one
    pytester.makepyfile(test_case="def test_case(medqa_case, medqa_run):\n    medqa_run(medqa_case).check()\n")
    res = pytester.runpytest_inprocess("-p", "medqa_core.pytest_plugin", "-p", "no:cacheprovider")
    out = res.stdout.str() + res.stderr.str()
    assert res.ret != 0 and "no profile configured" in out and "[tool.medqa-bench]" in out


def test_the_profile_file_is_collected_as_cases(env, pytester: pytest.Pytester, tmp_path: Path):
    """No test module: the configured profile's TOML yields one item per case, gated as the benchmark."""
    baseline, write_scores, run = env
    write_scores(GOOD)
    (pytester.path / "test_medqa_copy.py").unlink()
    prof = pytester.path / "clinic.toml"
    prof.write_text((tmp_path / "prof.toml").read_text())
    pytester.makepyprojecttoml('[tool.medqa-bench]\nprofile = "clinic.toml"\n')
    # `--opt=value`: a value outside the rootdir is not taken for a path when pytest finds the rootdir
    common = ["-p", "medqa_core.pytest_plugin", "-p", "no:cacheprovider", f"--results-dir={tmp_path / 'results'}",
              f"--cache-dir={tmp_path / 'cache'}"]
    res = pytester.runpytest_inprocess(*common, "--collect-only", "-q")
    assert "clinic.toml::llama-wikidoc" in res.stdout.str() and "clinic.toml::llama-mental_health" in res.stdout.str()
    res = pytester.runpytest_inprocess(*common, "--update-baselines")
    res.assert_outcomes(passed=2)
    assert baseline.is_file()
    res = pytester.runpytest_inprocess(*common, "-k", "wikidoc")
    res.assert_outcomes(passed=1)
    write_scores({**GOOD, "llama-wikidoc": {"tuned": _metrics(0.40), "base": _metrics(0.3)}})
    res = pytester.runpytest_inprocess(*common, "-k", "wikidoc")
    res.assert_outcomes(failed=1)
    assert "llama-wikidoc: regression" in res.stdout.str() and "Traceback" not in res.stdout.str()


def test_inner_pytest_run_does_not_resplit_threads(env):
    """A pytester run inside an xdist worker must keep the worker's thread count."""
    torch = pytest.importorskip("torch")
    from medqa_core import resources

    before = torch.get_num_threads()
    _, write_scores, run = env
    write_scores(GOOD)
    run("--collect-only", "-q")
    assert torch.get_num_threads() == before
    assert resources.configure_threads(1) == resources.configure_threads(64)  # first call wins


def test_read_only_baseline_records_into_hardware_file(env, tmp_path):
    baseline, write_scores, run = env
    prof = tmp_path / "prof.toml"
    prof.write_text(prof.read_text().replace('name = "fake"', 'name = "fake"\nbaseline_readonly = true'))
    write_scores(GOOD)
    run("--update-baselines").assert_outcomes(passed=2)
    assert not baseline.exists()  # the published file is never written
    hw_file = baseline.with_name("fake-cpu.json")
    assert set(json.loads(hw_file.read_text())["cases"]) == {"llama-wikidoc", "llama-mental_health"}


def _serve(codes: list[int]):
    """A webhook receiver on 127.0.0.1 that stores each POSTed JSON body."""
    import http.server
    import threading

    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            n = int(self.headers["Content-Length"])
            bodies.append(json.loads(self.rfile.read(n)))
            self.send_response(codes[len(bodies) - 1] if len(bodies) <= len(codes) else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_port}/hook", bodies


def test_history_trend_and_webhook_alert(env, tmp_path):
    from medqa_core.results.history import History, series_of

    baseline, write_scores, run = env
    write_scores(GOOD)
    run("--update-baselines").assert_outcomes(passed=2)
    srv, url, bodies = _serve([200, 200, 500])
    try:
        run("--alert-webhook", url).assert_outcomes(passed=2)
        assert bodies == []  # everything passed: no alert unless asked
        res = run("--alert-webhook", url, "--alert-always")
        res.assert_outcomes(passed=2)
        assert bodies[-1]["status"] == "pass" and "all 2 case(s) pass" in bodies[-1]["text"]

        slid = json.loads(json.dumps(GOOD))
        slid["llama-wikidoc"]["tuned"]["bert_f1"] = 0.488  # within the gate (0.02), beyond the trend's 0.01
        write_scores(slid)
        for _ in range(3):
            res = run()
            res.assert_outcomes(passed=2)
        out = res.stdout.str()
        assert "trend llama-wikidoc bert_f1: step down by -0.0120 (0.5000 -> 0.4880) starting at run 3" in out

        dropped = json.loads(json.dumps(GOOD))
        dropped["llama-wikidoc"]["tuned"]["bert_f1"] = 0.45
        write_scores(dropped)
        res = run("--alert-webhook", url)
        res.assert_outcomes(passed=1, failed=1)
        body = bodies[-1]
        assert body["status"] == "regression" and body["exitstatus"] == 1
        assert "1 of 2 case(s) regressed" in body["text"]
        assert "llama-wikidoc bert_f1: 0.4500 vs baseline 0.5000" in body["text"] and "band +/-" in body["text"]
        [case] = [c for c in body["cases"] if c["case_id"] == "llama-wikidoc"]
        assert [f["name"] for f in case["failures"]] == ["bert_f1", "margin:base:bert_f1"]
        assert case["failures"][0]["value"] == pytest.approx(0.45) and case["status"] == "regression"

        res = run("--alert-webhook", url)  # the receiver answers 500 now: a warning, not a crash
        assert "WARNING alert to webhook failed: webhook answered HTTP 500" in res.stdout.str()
    finally:
        srv.shutdown()

    hist = History(tmp_path / "cache" / "history.sqlite")
    runs = hist.runs()
    assert len(runs) == 8 and all(r.profile == "fake" for r in runs)
    assert [v for _, v in series_of(hist.case_rows("llama-wikidoc"), "bert_f1")] == [0.5, 0.5, 0.5, 0.488, 0.488, 0.488, 0.45, 0.45]


def test_history_can_be_turned_off_or_moved(env, tmp_path):
    baseline, write_scores, run = env
    write_scores(GOOD)
    run("--update-baselines", "--history", "none").assert_outcomes(passed=2)
    assert not (tmp_path / "cache" / "history.sqlite").exists()
    run("--history", str(tmp_path / "h" / "runs.db")).assert_outcomes(passed=2)
    assert (tmp_path / "h" / "runs.db").is_file()


def test_small_profile_cases_are_slow_and_missing_families_skip_with_reason(pytester: pytest.Pytester):
    pytester.makepyfile(test_medqa_copy=(REPO / "benchmarks" / "test_medqa.py").read_text())
    common = ["-p", "medqa_core.pytest_plugin", "--profile", "small", "-p", "no:cacheprovider",
              "--results-dir", str(pytester.path / "r")]
    res = pytester.runpytest_inprocess(*common, "--collect-only", "-q", "-m", "not slow")
    assert "no tests collected (20 deselected)" in res.stdout.str() or "0/20 tests collected" in res.stdout.str()
    res = pytester.runpytest_inprocess(*common, "-m", "slow", "-k", "not llama", "-rs")
    res.assert_outcomes(skipped=15)
    out = res.stdout.str()
    for fam in ("mistral", "gemma", "phi"):
        assert f"{fam}-wikidoc: no offline checkpoint for {fam} at this size" in out
    res = pytester.runpytest_inprocess(*common, "--collect-only", "-q", "-m", "slow", "-k", "wikidoc")
    assert "4/20 tests collected" in res.stdout.str()


def test_alert_payload_formats_every_kind_of_failing_check():
    """A failing control (no limit) or invariant (values that are not numbers) must not crash the alert."""
    from medqa_core import gate
    from medqa_core.results.alerts import payload

    checks = [gate.judge_control("bert_f1", "base", [0.3, 0.31], [0.5, 0.52], 0.01),
              gate.Check("train_steps", 150, 200, False, "invariant", "(must be identical)"),
              gate.Check("test_ids", "abc", "abd", False, "invariant", "(must be identical)")]
    verdict = gate.Verdict("llama-wikidoc", gate.status_of(checks), checks)
    rec = {"case_id": "llama-wikidoc", "outcome": "failed", "verdict": verdict.to_json()}
    body = payload("run1", "tiny", [rec], 1)
    assert body["status"] == "regression"
    text = body["text"]
    assert "beats_base:bert_f1" in text and "train_steps" in text and "abc" in text and "abd" in text


def test_a_case_that_errors_before_judging_still_ends_as_a_record(env, tmp_path):
    """A case whose pipeline raises (a missing data file here) is recorded with status `error`
    and its one-line reason: the summary lists it, the history stores it, the alert counts it."""
    import http.server
    import threading

    baseline, write_scores, run = env
    write_scores(GOOD)
    assert run("--update-baselines", "--history", "none").ret == 0
    table = dict(GOOD)
    table.pop("llama-mental_health")  # the fake pipeline raises KeyError for it
    write_scores(table)
    got = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        res = run("--history", str(tmp_path / "h.sqlite"), "--alert-webhook", f"http://127.0.0.1:{srv.server_port}/")
    finally:
        srv.shutdown()
    assert res.ret == 1
    [run_dir] = [d for d in (tmp_path / "results").iterdir() if (d / "llama-mental_health.json").exists()
                 and json.loads((d / "llama-mental_health.json").read_text())["verdict"]["status"] == "error"]
    rec = json.loads((run_dir / "llama-mental_health.json").read_text())
    assert "KeyError" in rec["verdict"]["note"]
    assert "error" in (run_dir / "summary.md").read_text()
    from medqa_core.results.history import History

    rows = History(tmp_path / "h.sqlite").case_rows("llama-mental_health")
    assert rows and rows[-1][2]["verdict"]["status"] == "error"
    assert got and "1 of 2 case(s)" in got[0]["text"] and "llama-mental_health: error" in got[0]["text"]


def test_bad_webhook_url_is_a_usage_error_at_start_and_never_printed(env):
    _, write_scores, run = env
    write_scores(GOOD)
    res = run("--alert-webhook", "hooks.example.com/services/SECRET", "--history", "none", subprocess=True)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    out = res.stdout.str() + res.stderr.str()
    assert "not an absolute http(s) URL" in out and "SECRET" not in out


def test_ctrl_c_during_update_baselines_leaves_the_baseline_unchanged(env):
    baseline, write_scores, run = env
    write_scores(GOOD)
    assert run("--update-baselines", "--history", "none").ret == 0
    before = baseline.read_bytes()
    changed = {cid: {**row, "tuned": _metrics(0.9)} for cid, row in GOOD.items()}
    changed["llama-mental_health"]["interrupt"] = True
    write_scores(changed)
    res = run("--update-baselines", "--history", "none", subprocess=True)
    assert res.ret == pytest.ExitCode.INTERRUPTED
    assert baseline.read_bytes() == before


def test_misspelt_data_variable_is_a_usage_error(env, monkeypatch):
    _, write_scores, run = env
    write_scores(GOOD)
    monkeypatch.setenv("MEDQA_DATA_MENTALHEALTH", "/tmp/x.csv")  # the profile's dataset is mental_health
    res = run("--history", "none", subprocess=True)
    assert res.ret == pytest.ExitCode.USAGE_ERROR  # stopped at start: no case runs on the fixtures by mistake
    out = res.stdout.str() + res.stderr.str()
    assert "MEDQA_DATA_MENTALHEALTH" in out and "MEDQA_DATA_MENTAL_HEALTH" in out


# ---- a run that ended badly: every way ends as a record, a history row and an alert ----------

def _history_statuses(path: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(path) as con:
        return {cid: st for cid, st in con.execute("SELECT case_id, status FROM cases")}


@pytest.mark.parametrize("how", ["missing", "malformed", "hardware"])
def test_a_broken_baseline_is_alerted_and_stored(env, tmp_path, how):
    """A missing or malformed --baseline, and a malformed hardware baseline, used to end with no
    alert and no history row: each is now an ``error`` row in the history and a failing alert."""
    baseline, write_scores, run = env
    write_scores(GOOD)
    assert run("--update-baselines", "--history", "none").ret == 0
    args = []
    if how == "missing":
        args = ["--baseline", str(tmp_path / "nowhere.json")]
    elif how == "malformed":
        baseline.write_text('{"cases": ')
    else:
        from medqa_core.resources import hardware_class

        (tmp_path / f"fake-{hardware_class()}.json").write_text("not json")
    srv, url, bodies = _serve([200])
    try:
        res = run("--history", str(tmp_path / "h.sqlite"), "--alert-webhook", url, *args, subprocess=True)
    finally:
        srv.shutdown()
    assert res.ret != 0
    statuses = _history_statuses(tmp_path / "h.sqlite")
    assert statuses and set(statuses.values()) == {"error"}, statuses
    assert bodies and bodies[0]["status"] == "regression"
    if how == "malformed":  # refused at the start, before any case: one session-level row
        assert list(statuses) == ["session.start"] and "invalid JSON" in bodies[0]["text"]
    else:
        assert set(statuses) == set(GOOD)


def test_a_crashed_worker_is_alerted_and_stored(env, tmp_path):
    """`kill -9` of an xdist worker in the middle of a case: the case ends as an error record."""
    _, write_scores, run = env
    write_scores(GOOD)
    assert run("--update-baselines", "--history", "none").ret == 0
    write_scores({**GOOD, "llama-wikidoc": {**GOOD["llama-wikidoc"], "crash": True}})
    srv, url, bodies = _serve([200])
    try:
        res = run("-n", "2", "--history", str(tmp_path / "h.sqlite"), "--alert-webhook", url, subprocess=True)
    finally:
        srv.shutdown()
    assert res.ret == 1
    statuses = _history_statuses(tmp_path / "h.sqlite")
    assert statuses == {"llama-wikidoc": "error", "llama-mental_health": "pass"}, statuses
    assert "llama-wikidoc: error" in bodies[0]["text"] and "crashed" in bodies[0]["text"]


def test_a_full_results_disk_is_alerted_and_stored(env, tmp_path):
    """OSError 28 on the results dir: the records travel in the reports, the summary's failure is a
    session-level error, and the history (elsewhere) and the alert still get the run."""
    _, write_scores, run = env
    write_scores(GOOD)
    assert run("--update-baselines", "--history", "none").ret == 0
    write_scores({**GOOD, "llama-wikidoc": {**GOOD["llama-wikidoc"], "disk_full": True}})
    srv, url, bodies = _serve([200])
    try:
        res = run("-p", "no:xdist", "--history", str(tmp_path / "h.sqlite"), "--alert-webhook", url, subprocess=True)
    finally:
        srv.shutdown()
    assert res.ret == 1
    statuses = _history_statuses(tmp_path / "h.sqlite")
    assert statuses.get("session.summary") == "error" and statuses.get("llama-mental_health") == "error", statuses
    assert "No space left on device" in bodies[0]["text"]
    res.stdout.fnmatch_lines(["*ERROR summary: OSError*No space left*"])


def test_a_history_that_cannot_be_written_does_not_change_the_verdict(env, tmp_path):
    """The verdict and exit code come first; a history that fails is a warning in the output and
    in the alert, and a passing run still exits 0."""
    _, write_scores, run = env
    write_scores(GOOD)
    assert run("--update-baselines", "--history", "none").ret == 0
    bad = tmp_path / "hist"
    bad.write_text("not a database")
    srv, url, bodies = _serve([200])
    try:
        res = run("--history", str(bad), "--alert-webhook", url, "--alert-always", subprocess=True)
    finally:
        srv.shutdown()
    assert res.ret == 0, res.stdout.str()[-2000:]
    res.stdout.fnmatch_lines(["*WARNING history not updated*"])
    assert bodies and bodies[0]["status"] == "pass" and bodies[0]["warnings"]
