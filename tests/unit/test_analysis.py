"""results/analysis.py: the gate settings a run is analysed with (the profile's, or the defaults
when it is missing) and the aggregates + trends chain the plugin, `report` and `merge` share."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import bulk_history

from medqa_core.metrics.registry import DEFAULT_MIN_EFFECT
from medqa_core.profile import load_profile
from medqa_core.results.analysis import GateSettings, analyse_run, run_trends
from medqa_core.results.trend import TREND_EFFECT_FRACTION

CASE = "llama-wikidoc"


def test_without_a_profile_the_defaults_apply():
    s = GateSettings.of(None)
    assert (s.tolerances, s.memory_slack_mib, s.from_profile) == ({}, 0.0, False)


def test_a_profile_that_does_not_load_gives_the_defaults_with_a_warning_naming_it(caplog):
    with caplog.at_level(logging.WARNING):
        s = GateSettings.of_name("no-such-profile-xyz")
    assert s == GateSettings()
    assert "no-such-profile-xyz" in caplog.text and "default gate settings" in caplog.text


def test_the_profiles_gate_gives_tolerances_and_memory_slack():
    tiny = load_profile("tiny")
    s = GateSettings.of_name("tiny")
    assert s.gate == tiny.gate and s.from_profile
    assert s.tolerances == dict(tiny.gate.metric_tolerance) and s.memory_slack_mib == tiny.gate.memory_slack_mib


def test_the_settings_scale_what_counts_as_a_trend_step(tmp_path):
    """A 0.03 step in BERTScore F1: found under the defaults (minimum effect half of the registry's
    DEFAULT_MIN_EFFECT), not under a profile whose tolerance makes half of it 0.05."""
    rng = np.random.default_rng(5)
    vals = list(0.45 + rng.normal(0, 0.002, 30))
    vals[20:] = [v - 0.03 for v in vals[20:]]
    h = bulk_history(tmp_path / "h.sqlite", vals)
    assert TREND_EFFECT_FRACTION * DEFAULT_MIN_EFFECT["bert_f1"] < 0.03
    [sh] = run_trends(h, [CASE], "tiny", GateSettings())[CASE]["bert_f1"]
    assert sh.run_id == "r000020" and sh.delta == pytest.approx(-0.03, abs=0.006)
    tiny = load_profile("tiny")
    loose = GateSettings(tiny.gate.__class__(metric_tolerance={"bert_f1": 0.1}), True)
    assert "bert_f1" not in run_trends(h, [CASE], "tiny", loose).get(CASE, {})
    # analyse_run reads every record's case (an error record too) and only with a history
    records = [{"case_id": CASE, "verdict": {"status": "error", "checks": []}}]
    found = analyse_run(records, GateSettings(), h, "tiny")
    assert found.trends[CASE]["bert_f1"][0].run_id == "r000020" and found.aggregates == []
    assert analyse_run(records, GateSettings()).trends == {}
