"""One home for what a metric is: the gate, trends, history and summary read the registry."""
from __future__ import annotations

import pytest

from medqa_core import gate
from medqa_core.errors import ConfigError
from medqa_core.metrics import METRICS, registry
from medqa_core.profile import _check_gate
from medqa_core.results import history, summary, trend
from medqa_core.specs import GateConfig


def test_every_score_is_gated_higher_is_better_and_resources_lower():
    assert set(METRICS) < set(registry.GATED)
    assert all(registry.higher_is_better(m) for m in METRICS)
    assert not registry.higher_is_better("train_s") and not registry.higher_is_better("peak_mem_mib")
    assert not registry.higher_is_better("degenerate") and "degenerate" in registry.GATED  # gated, lower is better
    with pytest.raises(KeyError, match="unknown measure"):
        registry.higher_is_better("bert_f2")


def test_consumers_share_the_registry_tables():
    assert gate.GATED is registry.GATED and gate.DEFAULT_MIN_EFFECT is registry.DEFAULT_MIN_EFFECT
    assert gate.POWER_CHECKED is registry.POWER_CHECKED == ("bert_f1", "use_f1")
    assert trend.RESOURCES == registry.RESOURCES
    assert history.RESOURCE_KEYS is registry.RESOURCE_KEYS
    assert set(registry.RESOURCES) <= set(summary.COLUMNS)
    # every resource short name resolves to the record key that pipeline records write
    assert registry.RESOURCE_KEYS["train_s"] == "train_seconds" and registry.RESOURCE_KEYS["mem_mib"] == "peak_mem_mib"


def test_every_gated_measure_is_two_sided_by_default():
    """A move the better way beyond the band fails ('changed') unless [gate] one_sided lists the
    measure: the registry marks none one-sided, and the gate asks it (gate.is_one_sided)."""
    assert all(registry.two_sided(m) for m in registry.GATED)
    assert not gate.is_one_sided("degenerate", GateConfig()) and gate.is_one_sided("degenerate", GateConfig(one_sided=("degenerate",)))
    assert gate.is_one_sided("margin:base:bert_f1", GateConfig())  # a margin over a control may always grow


def test_a_tolerance_for_an_ungated_measure_is_a_config_error():
    with pytest.raises(ConfigError, match="train_s"):
        _check_gate(GateConfig(metric_tolerance={"train_s": 0.1}), "p.toml [gate]")
    _check_gate(GateConfig(metric_tolerance={"answer_words": 2.0}), "p.toml [gate]")
