"""The trend at every session end is bounded: a window of runs per series, PELT on cumulative sums.

A long history must not make the session end slower (issue 24: a warm one-case run went from
1.9 s to 33.5 s with 800 stored runs), and the window must keep the detection power of the
whole-series search on its recent runs. scripts/trend_simulation.py --scale times the same on
a 10,000-run history.
"""
from __future__ import annotations

import json
import sqlite3
import time
import zlib

import numpy as np
import pytest
from helpers import bulk_history, trend_record

from medqa_core.errors import MedQAError
from medqa_core.results import trend
from medqa_core.results.history import History
from medqa_core.results.trend import (
    DEFAULT_WINDOW,
    SCAN_FACTOR,
    TrendError,
    _pelt,
    case_trends,
    noise_sigma,
    regressions,
    trend_window,
)

CASE = "llama-wikidoc"


def noisy(n: int, seed: int, level: float = 0.45, sd: float = 0.004) -> list[float]:
    return list(level + np.random.default_rng(seed).normal(0, sd, n))


# ---------------------------------------------------------------- PELT: the same answers as ruptures


@pytest.mark.parametrize("shape", ["flat", "step", "rounded", "levels", "drift", "two_steps"])
def test_pelt_gives_ruptures_breakpoints(shape):
    """The same breakpoints as ruptures, ties in rounded (discrete) scores included."""
    import ruptures as rpt

    rng = np.random.default_rng(zlib.crc32(shape.encode()))
    for _ in range(25):
        n = int(rng.integers(4, 90))
        x = 0.45 + rng.normal(0, 0.005, n)
        if shape == "step":
            x[int(rng.integers(1, n)):] -= 0.03
        elif shape == "rounded":  # ties: many equal values
            x = np.round(x, 2)
        elif shape == "levels":
            x = np.r_[[10.0] * (n // 2), [20.0] * (n - n // 2)]
        elif shape == "drift":
            x = x - 0.002 * np.maximum(np.arange(n) - n // 3, 0)
        elif shape == "two_steps":
            x[n // 3:] -= 0.03
            x[2 * n // 3:] += 0.05
        pen = 6.0 * max(noise_sigma(x), 0.0025) ** 2 * np.log(n)
        want = rpt.Pelt(model="l2", min_size=2, jump=1).fit(x.reshape(-1, 1)).predict(pen=pen)[:-1]
        assert _pelt(x, pen) == want, (shape, n)


def test_pelt_ties_break_as_in_ruptures():
    """Two segmentations of equal cost (0.46 0.46 | 0.45 0.44 0.44 and 0.46 0.46 0.45 | 0.44 0.44):
    the float rounding of ruptures' own cost decides, and so it does here."""
    import ruptures as rpt

    x = np.array([0.46, 0.46, 0.45, 0.44, 0.44, 0.45, 0.45, 0.45, 0.46, 0.45, 0.45, 0.45, 0.45, 0.45, 0.45, 0.44,
                  0.45, 0.46, 0.45, 0.45, 0.45, 0.46, 0.45, 0.46, 0.46, 0.45, 0.45, 0.45, 0.45, 0.45, 0.44, 0.45,
                  0.46, 0.45, 0.45, 0.45, 0.45, 0.46, 0.46, 0.46, 0.45, 0.45, 0.45, 0.45, 0.46, 0.46, 0.45, 0.45])
    pen = 6.0 * max(noise_sigma(x), 0.0025) ** 2 * np.log(x.size)
    want = rpt.Pelt(model="l2", min_size=2, jump=1).fit(x.reshape(-1, 1)).predict(pen=pen)[:-1]
    assert _pelt(x, pen) == want == [2, 5]


def test_pelt_is_fast_on_a_long_series():
    x = np.asarray(noisy(5000, 1))
    t = time.perf_counter()
    _pelt(x, 6.0 * noise_sigma(x) ** 2 * np.log(x.size))
    assert time.perf_counter() - t < 5.0  # ruptures' Python loop: minutes at this length


# ---------------------------------------------------------------- the window


def test_window_setting(monkeypatch):
    monkeypatch.delenv("MEDQA_TREND_WINDOW", raising=False)
    assert trend_window() == DEFAULT_WINDOW and trend_window(50) == 50 and trend_window(0) == 0
    monkeypatch.setenv("MEDQA_TREND_WINDOW", "80")
    assert trend_window() == 80
    for bad in ("abc", "-1", "3"):
        monkeypatch.setenv("MEDQA_TREND_WINDOW", bad)
        with pytest.raises(TrendError, match="MEDQA_TREND_WINDOW|trend window"):
            trend_window()
    with pytest.raises(MedQAError):
        case_trends(History("/nonexistent/never-opened.sqlite"), [CASE], "tiny", {})


def test_window_keeps_detection_power_on_recent_runs(tmp_path):
    """400 runs, a 0.03 step 30 runs before the end: found at its run with a window of 100; a step
    300 runs back is the window's level, and only the whole series (window 0) reports it."""
    vals = noisy(400, 7)
    for i in range(100, 400):
        vals[i] -= 0.03  # an old step (run 100)
    for i in range(370, 400):
        vals[i] -= 0.03  # a recent one (run 370)
    h = bulk_history(tmp_path / "h.sqlite", vals)
    recent = case_trends(h, [CASE], "tiny", {"bert_f1": 0.02}, "cpu", window=100)
    [sh] = recent[CASE]["bert_f1"]
    assert sh.run_id == "r000370" and sh.start == 70 and sh.delta == pytest.approx(-0.03, abs=0.006)
    # the whole series reads both steps down as one shift from run 100 (-0.06): the recent step is
    # only seen as its own shift in the window
    whole = case_trends(h, [CASE], "tiny", {"bert_f1": 0.02}, "cpu", window=0)
    [old] = whole[CASE]["bert_f1"]
    assert old.run_id == "r000100" and old.delta == pytest.approx(-0.06, abs=0.01)
    # the same windowed answer as the search over exactly those runs
    [ref] = regressions(vals[-100:], 0.01, [f"r{i:06d}" for i in range(300, 400)])
    assert (ref.run_id, ref.start, ref.kind) == (sh.run_id, sh.start, sh.kind)


def test_each_hardware_class_gets_its_window(tmp_path):
    """Two runners alternate: the plugin's series (one class) still gets ``window`` runs."""
    h = History(tmp_path / "h.sqlite")
    h.runs()
    con = sqlite3.connect(h.path)
    with con:
        for i in range(120):
            gpu = "Tesla T4" if i % 2 else None
            f1 = 0.45 - (0.03 if gpu and i >= 100 else 0.0)
            con.execute("INSERT INTO runs (run_id, created, profile, git_sha, hardware_class, meta) VALUES (?,?,?,?,?,?)",
                        (f"r{i:03d}", 1e9 + i, "tiny", None, None, "{}"))
            con.execute("INSERT INTO cases (run_id, case_id, outcome, status, record) VALUES (?,?,?,?,?)",
                        (f"r{i:03d}", CASE, "passed", "pass", json.dumps(trend_record(CASE, f1, gpu))))
    con.close()
    seen: list[int] = []
    orig = trend.regressions

    def spy(values, *a, **k):
        seen.append(len(values))
        return orig(values, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trend, "regressions", spy)
        found = case_trends(h, [CASE], "tiny", {"bert_f1": 0.02}, "1x-tesla-t4", window=20)
    assert set(seen) == {20}  # 60 T4 runs stored; the window's 20 of them, every metric
    [sh] = found[CASE]["bert_f1"]
    assert sh.run_id == "r101" and sh.hardware_class == "1x-tesla-t4"


def test_session_end_work_is_bounded_by_the_window(tmp_path):
    """However long the history, a session end reads at most SCAN_FACTOR * window rows of a case
    and searches at most window values per series; its time stays flat (3000 runs vs 300)."""
    small = bulk_history(tmp_path / "small.sqlite", noisy(300, 1))
    big = bulk_history(tmp_path / "big.sqlite", noisy(3000, 2))
    reads: list[int] = []
    orig = History.trend_rows

    def spy(self, case_id, profile=None, last=None):
        rows = orig(self, case_id, profile, last)
        reads.append(len(rows))
        return rows

    def session_end(h: History, tag: str) -> float:
        t = time.perf_counter()
        h.add_run(tag, "tiny", [trend_record(CASE, 0.45)], {"exitstatus": 0})
        case_trends(h, [CASE], "tiny", {"bert_f1": 0.02}, "cpu", window=50)
        return time.perf_counter() - t

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(History, "trend_rows", spy)
        t_small = min(session_end(small, f"s{k}") for k in range(3))
        t_big = min(session_end(big, f"b{k}") for k in range(3))
    assert set(reads) == {SCAN_FACTOR * 50}
    assert t_big < 3 * t_small + 0.5, (t_small, t_big)  # the unbounded search took minutes at 3000


def test_trend_rows_read_what_a_trend_needs_and_nothing_more(tmp_path):
    h = bulk_history(tmp_path / "h.sqlite", [0.5, 0.4, 0.3])
    lean = h.trend_rows(CASE, "tiny", last=2)
    full = h.case_rows(CASE, "tiny", last=2)
    assert [r[0] for r in lean] == [r[0] for r in full] == ["r000001", "r000002"]
    assert [r[1] for r in lean] == [r[1] for r in full] == ["cpu", "cpu"]
    assert set(lean[0][2]) == {"metrics", "resources", "identity", "provenance"}
    for (_, _, a), (_, _, b) in zip(lean, full):
        assert a["metrics"] == b["metrics"] and a["identity"] == b["identity"]
        assert a["provenance"] == {"hardware": b["provenance"]["hardware"]}
    assert h.case_rows(CASE, "tiny") == h.case_rows(CASE, "tiny", last=10)


def test_case_trends_raises_only_medqa_errors():
    class Broken:
        def case_rows(self, case_id, profile=None):
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(TrendError, match=f"trend of case {CASE} not computed .*OperationalError: disk I/O error"):
        case_trends(Broken(), [CASE], "tiny", {})
