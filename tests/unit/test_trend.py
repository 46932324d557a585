"""Change-point detection on planted histories (trend.py over ruptures)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.results.trend import breakpoints, regressions, shifts


def noisy(level: float, n: int, rng: np.random.Generator, sd: float = 0.004) -> np.ndarray:
    return level + rng.normal(0.0, sd, n)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("at", [6, 15, 24])
def test_planted_step_is_found_at_its_run(seed, at):
    rng = np.random.default_rng(seed)
    x = np.r_[noisy(0.45, at, rng), noisy(0.42, 30 - at, rng)]
    ids = [f"run{i:02d}" for i in range(30)]
    [s] = regressions(x, 0.02, ids)
    assert s.start == at and s.run_id == f"run{at:02d}" and s.kind == "step"
    assert s.delta == pytest.approx(-0.03, abs=0.006)
    assert f"run {at} (run{at:02d})" in s.explain("bert_f1")


@pytest.mark.parametrize("seed", range(5))
def test_flat_noisy_history_has_no_shift(seed):
    rng = np.random.default_rng(100 + seed)
    assert shifts(noisy(0.45, 30, rng), 0.02) == []


def test_bit_identical_history_never_splits():
    assert breakpoints([0.4512] * 20, 0.02) == []
    assert shifts([0.4512] * 19 + [0.4513], 0.02) == []  # float jitter below the noise floor


def test_shift_smaller_than_min_effect_is_not_reported():
    rng = np.random.default_rng(3)
    x = np.r_[noisy(0.45, 15, rng, 0.001), noisy(0.44, 15, rng, 0.001)]  # a clear but small 0.01 step
    assert breakpoints(x, 0.02) == [15]
    assert shifts(x, 0.02) == []
    assert [s.start for s in shifts(x, 0.005)] == [15]


def test_slow_drift_is_reported_as_one_shift_near_where_it_started():
    rng = np.random.default_rng(11)
    start = 12
    x = np.r_[noisy(0.45, start, rng, 0.002), 0.45 - 0.004 * np.arange(1, 19) + rng.normal(0, 0.002, 18)]
    [s] = regressions(x, 0.02)
    assert s.kind == "drift" and abs(s.start - start) <= 2, s
    assert s.delta < -0.04


def test_improvements_and_resource_direction():
    x = [10.0] * 8 + [20.0] * 8  # training time doubled
    assert regressions(x, 1.0, higher_is_better=True) == []  # for a score this would be better
    [s] = regressions(x, 1.0, higher_is_better=False)
    assert s.start == 8 and s.delta == pytest.approx(10.0)


def test_short_history_has_nothing_to_say():
    assert shifts([0.5, 0.1, 0.5], 0.02) == []


@given(at=st.integers(4, 16), drop=st.floats(0.03, 0.3), level=st.floats(0.2, 0.8))
@settings(max_examples=60, deadline=None)
def test_property_clean_step_found_exactly(at, drop, level):
    x = [level] * at + [level - drop] * (20 - at)
    [s] = shifts(x, 0.02)
    assert s.start == at and s.delta == pytest.approx(-drop)


def test_case_trends_memory_respects_the_gate_slack(tmp_path):
    from medqa_core.metrics import METRICS
    from medqa_core.results.history import History
    from medqa_core.results.trend import case_trends

    h = History(tmp_path / "h.sqlite")
    for i, mem in enumerate([10.0, 10.0, 86.0, 85.0, 86.0, 85.0, 86.0]):  # RSS growth after a cold first run
        h.add_run(f"r{i}", "tiny", [{"case_id": "llama-wikidoc", "metrics": {m: 0.3 for m in METRICS},
                                     "resources": {"train_seconds": 10.0, "peak_mem_mib": mem},
                                     "provenance": {"hardware": {"gpu": None}}}])
    [s] = case_trends(h, ["llama-wikidoc"], "tiny", {}, "cpu")["llama-wikidoc"]["mem_mib"]
    assert s.start == 2 and s.delta > 70
    assert case_trends(h, ["llama-wikidoc"], "tiny", {}, "cpu", memory_slack_mib=256) == {}


def test_series_never_spans_a_change_of_data_or_scorer(tmp_path):
    """A step in the scores that comes with new data is no trend: only runs on the newest run's
    inputs (data, test set, scorer) form the series."""
    from medqa_core.results.history import History
    from medqa_core.results.trend import case_trends, same_inputs

    hist = History(tmp_path / "h.sqlite")
    for i in range(16):
        data = "A" if i < 8 else "B"  # the data changes at run 8 and the scores move with it
        rec = {"case_id": "llama-wikidoc", "model": "llama", "dataset": "wikidoc",
               "metrics": {"bert_f1": 0.50 if data == "A" else 0.40, "use_f1": 0.3},
               "identity": {"data": data, "test_ids": "t", "scorer": "s"},
               "resources": {}, "provenance": {"hardware": {"gpu": None}}}
        hist.add_run(f"r{i}", "tiny", [rec])
    rows = hist.case_rows("llama-wikidoc", "tiny")
    kept = same_inputs(rows)
    assert [r[0] for r in kept] == [f"r{i}" for i in range(8, 16)]
    assert case_trends(hist, ["llama-wikidoc"], "tiny", {"bert_f1": 0.02}) == {}
    # the same step on unchanged inputs is a trend
    hist2 = History(tmp_path / "h2.sqlite")
    for i in range(16):
        rec = {"case_id": "llama-wikidoc", "model": "llama", "dataset": "wikidoc",
               "metrics": {"bert_f1": 0.50 if i < 8 else 0.40, "use_f1": 0.3},
               "identity": {"data": "A", "test_ids": "t", "scorer": "s"},
               "resources": {}, "provenance": {"hardware": {"gpu": None}}}
        hist2.add_run(f"r{i}", "tiny", [rec])
    found = case_trends(hist2, ["llama-wikidoc"], "tiny", {"bert_f1": 0.02})
    assert "bert_f1" in found.get("llama-wikidoc", {})


def test_a_series_is_one_case_on_one_hardware_class(tmp_path):
    """Runs stored by pytest on two machines (one history): a case whose scores differ between the
    two GPU models is two flat series, not a step; each shift names its class."""
    from medqa_core.results.history import History
    from medqa_core.results.trend import by_hardware_class, case_trends

    h = History(tmp_path / "h.sqlite")
    for i in range(12):
        gpu = "Tesla T4" if i % 2 else "NVIDIA L4"  # nights alternate between two runners
        f1 = (0.40 if gpu == "Tesla T4" else 0.50) - (0.05 if i >= 8 and gpu == "Tesla T4" else 0.0)
        h.add_run(f"r{i:02d}", "tiny", [{"case_id": "llama-wikidoc", "metrics": {"bert_f1": f1, "use_f1": 0.3},
                                         "identity": {"data": "A", "test_ids": "t", "scorer": "s"}, "resources": {},
                                         "provenance": {"hardware": {"gpu": gpu, "gpu_count": 1}}}])
    rows = h.case_rows("llama-wikidoc", "tiny")
    assert {k: len(v) for k, v in by_hardware_class(rows).items()} == {"1x-nvidia-l4": 6, "1x-tesla-t4": 6}
    found = case_trends(h, ["llama-wikidoc"], "tiny", {"bert_f1": 0.02})
    [sh] = found["llama-wikidoc"]["bert_f1"]  # only the T4's own drop at run 9 (its 5th run)
    assert sh.hardware_class == "1x-tesla-t4" and sh.run_id == "r09" and sh.start == 4
    assert sh.explain("bert_f1").endswith("on 1x-tesla-t4")
    assert case_trends(h, ["llama-wikidoc"], "tiny", {"bert_f1": 0.02}, "1x-nvidia-l4") == {}


def test_a_shift_as_json_is_every_field_then_its_delta():
    """Shift.to_json (the alert payload's ``trend`` entries) names each field of the dataclass, in
    field order, then ``delta``: a field added to Shift must be added to its JSON too."""
    import dataclasses
    import json

    from medqa_core.results.trend import Shift

    sh = Shift(start=3, run_id="r3", before=0.5, after=0.4, kind="step", breakpoints=(3, 5), hardware_class="cpu")
    out = sh.to_json()
    assert list(out) == [f.name for f in dataclasses.fields(Shift)] + ["delta"]
    assert out == {**dataclasses.asdict(sh), "delta": sh.delta}
    assert json.dumps(out) == json.dumps({**dataclasses.asdict(sh), "delta": sh.delta})
