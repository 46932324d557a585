"""Live progress (progress.py and its display in pytest_plugin.py).

- a Tracker throttles (first and last update always, otherwise one per interval), computes the
  ETA from the rate so far, and costs nothing without a sink (callable values never evaluated);
- in pytest, a fake stage's progress lines show with ``-v`` on a terminal (a real pty), and not
  under ``-q``, in CI, on a non-terminal, or with ``--progress off``; ``--progress on`` shows
  them in a pipe too;
- a small real case (tiny model, 3 steps) reports training steps with the loss, generation
  batches of each answer set, and scoring.
"""
from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_case_profile

from medqa_core import progress
from medqa_core.progress import Event, Tracker, fmt_seconds, wanted

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events():
    got: list[Event] = []
    progress.add_sink(got.append)
    yield got
    progress.remove_sink(got.append)


def test_throttle_first_last_and_one_per_interval(events):
    clock = FakeClock()
    t = Tracker("train", 100, "step", clock=clock, every=5.0)
    for step in range(1, 101):
        clock.now = float(step)  # one second per step
        t.update(step, loss=1.0 / step)
    shown = [e.done for e in events]
    assert shown[0] == 1 and shown[-1] == 100
    gaps = [b - a for a, b in zip(shown, shown[1:-1])]
    assert all(g >= 5 for g in gaps) and len(shown) == t.emitted
    assert len(shown) == len(range(1, 100, 5)) + 1  # steps 1, 6, ..., 96, then 100
    last = events[-1]
    assert last.finished and last.info["loss"] == pytest.approx(0.01) and "done in 1m40s" in last.line()


def test_eta_and_line():
    e = Event("train", 40, 200, "step", 10.0, {"loss": 2.314})
    assert e.eta == pytest.approx(40.0)
    assert e.line() == "train: step 40/200 (20%), loss 2.3140, 10s elapsed, ETA 40s"
    assert Event("score", 0, 30, "pair", 0.0).eta is None
    assert Event("score", 0, 30, "pair", 0.0).line() == "score: pair 0/30 (0%), 0s elapsed"
    assert Event("x", 3, None, "batch", 2.0).line() == "x: batch 3, 2s elapsed"
    assert [fmt_seconds(s) for s in (7, 125, 3720)] == ["7s", "2m05s", "1h02m"]


def test_no_sink_no_work():
    assert not progress.active()

    def expensive() -> float:
        raise AssertionError("evaluated without anyone watching")

    t = Tracker("train", 10, "step")
    assert not t.due(1) and not t.update(1, loss=expensive) and t.emitted == 0


def test_a_failing_sink_never_breaks_the_run(events, caplog):
    def broken(event: Event) -> None:
        raise RuntimeError("display gone")

    progress.add_sink(broken)
    try:
        assert Tracker("generate tuned", 2, "question").update(2)
    finally:
        progress.remove_sink(broken)
    assert events and "progress sink" in caplog.text


def test_interval_from_env(monkeypatch):
    monkeypatch.setenv(progress.ENV_INTERVAL, "0.5")
    assert progress.interval() == 0.5
    monkeypatch.setenv(progress.ENV_INTERVAL, "soon")
    assert progress.interval() == progress.DEFAULT_INTERVAL


@pytest.mark.parametrize("mode, verbosity, tty, env, shown", [
    ("auto", 1, True, {}, True),
    ("auto", 0, True, {}, False),  # plain run: the usual dots only
    ("auto", -1, True, {}, False),  # -q
    ("auto", 2, False, {}, False),  # piped
    ("auto", 1, True, {"CI": "true"}, False),
    ("auto", 1, True, {"CI": "0"}, True),
    ("on", 0, False, {"CI": "1"}, True),
    ("on", -1, True, {}, False),  # -q wins
    ("off", 2, True, {}, False),
])
def test_when_progress_is_shown(mode, verbosity, tty, env, shown):
    assert wanted(mode, verbosity, tty, env) is shown


# ---------------------------------------------------------------- in pytest

FAKE_STAGE = '''
from medqa_core import progress


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_fake_stage():
    clock = Clock()
    train = progress.Tracker("train", 50, "step", clock=clock, every=5.0)
    for step in range(1, 51):
        clock.now = step * 2.0
        train.update(step, loss=3.0 / step)
    gen = progress.Tracker("generate tuned", 120, "question", clock=clock, every=5.0)
    for done in (60, 120):
        clock.now += 30
        gen.update(done, batch=f"{done // 60}/2")
'''


def _in_pty(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command with a pseudo-terminal as stdout/stderr; its output as text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    proc.wait(timeout=120)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


#: the plugin shows progress only in a medqa-bench run (a profile configured); the fake stage is
#: no benchmark case, so the run may judge none
ACTIVE = ("--profile", "tiny", "--allow-empty")


def _pytest_args(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "medqa_core.pytest_plugin", "-p", "no:cacheprovider",
            *ACTIVE, "--results-dir", str(path / "r"), "--history", "none", str(path / "test_fake_stage.py"), *extra]


@pytest.fixture
def fake_stage(pytester: pytest.Pytester):
    pytester.makepyfile(test_fake_stage=FAKE_STAGE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MEDQA_PROGRESS", progress.ENV_INTERVAL,
                                                               "PYTEST_ADDOPTS")}
    env.update(PYTHONPATH=str(REPO / "src"), TERM="dumb", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return pytester.path, env


def test_verbose_run_on_a_terminal_shows_steps_and_eta(fake_stage):
    path, env = fake_stage
    out = _in_pty(_pytest_args(path, "-v"), path, env)
    assert "1 passed" in out, out[-2000:]
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(("train:", "generate tuned:"))]
    train = [ln for ln in lines if ln.startswith("train:")]
    assert train[0].startswith("train: step 1/50 (2%), loss 3.0000, 2s elapsed, ETA 1m38s"), lines
    assert train[-1] == "train: step 50/50 (100%), loss 0.0600, done in 1m40s"
    assert 3 <= len(train) <= 50 // 3 + 2  # throttled: one per 5 s of a 2 s step, plus the last
    assert any("ETA" in ln for ln in train[1:-1])
    assert lines[-1] == "generate tuned: question 120/120 (100%), batch 2/2, done in 1m00s"


@pytest.mark.parametrize("extra, env_extra", [(["-q"], {}), (["-v"], {"CI": "true"}), (["-v", "--progress", "off"], {})])
def test_quiet_ci_or_off_shows_no_progress_on_a_terminal(fake_stage, extra, env_extra):
    path, env = fake_stage
    out = _in_pty(_pytest_args(path, *extra), path, {**env, **env_extra})
    assert "1 passed" in out, out[-2000:]
    assert "train:" not in out and "ETA" not in out


def test_pipe_shows_progress_only_when_asked(fake_stage, pytester: pytest.Pytester):
    """In-process runs write to a capture buffer (not a terminal), as a pipe or CI log would."""
    path, _ = fake_stage
    common = ["-p", "medqa_core.pytest_plugin", "-p", "no:cacheprovider", *ACTIVE, "--results-dir", str(path / "r"),
              "--history", "none"]
    plain = pytester.runpytest_inprocess(*common, "-v")
    plain.assert_outcomes(passed=1)
    assert "train:" not in plain.stdout.str()
    on = pytester.runpytest_inprocess(*common, "-v", "--progress", "on")
    on.assert_outcomes(passed=1)
    on.stdout.fnmatch_lines(["*train: step 1/50 (2%)*ETA*", "*train: step 50/50 (100%), loss 0.0600, done in 1m40s"])
    quiet = pytester.runpytest_inprocess(*common, "-q", "--progress", "on")
    quiet.assert_outcomes(passed=1)
    assert "train:" not in quiet.stdout.str()
    assert not progress.active()  # every run took its display away at the end


# ---------------------------------------------------------------- the real pipeline reports



def test_a_case_reports_training_generation_and_scoring(tmp_path, events, monkeypatch):
    from medqa_core.cache import Cache
    from medqa_core.pipeline import RunContext, run_case
    from medqa_core.profile import load_profile

    monkeypatch.setenv(progress.ENV_INTERVAL, "0")  # every update: the count of lines is checked below
    prof = tmp_path / "progress.toml"
    prof.write_text(tiny_case_profile("progress", REPO, tmp_path, gen_batch=3))
    res = run_case(load_profile(prof), "llama", "wikidoc", RunContext(cache=Cache(tmp_path / "cache"), device="cpu"))
    by_stage: dict[str, list[Event]] = {}
    for e in events:
        by_stage.setdefault(e.stage, []).append(e)
    train = by_stage["train"]
    assert [e.done for e in train] == [1, 2, 3] and all(e.total == 3 and "loss" in e.info for e in train)
    assert train[-1].info["loss"] == pytest.approx(res.train.loss_last, abs=1e-4)
    # 4 test questions in batches of 3; the no-question control asks one (empty) question
    assert [(e.done, e.info["batch"]) for e in by_stage["generate tuned"]] == [(3, "1/2"), (4, "2/2")]
    assert [(e.done, e.info["batch"]) for e in by_stage["generate base"]] == [(3, "1/2"), (4, "2/2")]
    assert [e.done for e in by_stage["generate no_question"]] == [1]
    assert [e.done for e in by_stage["score"]][-2:] == [0, by_stage["score"][-1].total]
    # and the record carries the (ungated) degeneration share of each answer set
    flags = res.per_example["degenerate"]
    assert len(flags) == 4 and set(flags) <= {0.0, 1.0}
    assert res.metrics["degenerate"] == pytest.approx(sum(flags) / 4) and "degenerate" in res.base_metrics
