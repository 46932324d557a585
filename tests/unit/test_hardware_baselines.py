"""Hardware-class resource baselines: which time/memory record a case is gated against."""
from __future__ import annotations

import pytest

from medqa_core.baselines import resource_baseline
from medqa_core.profile import load_profile
from medqa_core.resources import hardware_class

PAPER_LIKE = {
    "hardware": {"class": "2x-tesla-t4"},
    "models": {"mistral": {"training_minutes": 370.67}},
    "cases": {"mistral-wikidoc": {"metrics": {}}},
}


@pytest.mark.parametrize("name, count, want", [
    (None, None, "cpu"),
    ("Tesla T4", 2, "2x-tesla-t4"),
    ("NVIDIA H100 80GB HBM3", 1, "1x-nvidia-h100-80gb-hbm3"),
])
def test_hardware_class_slug(name, count, want):
    if name is None:
        assert hardware_class("", 0) == want
    else:
        assert hardware_class(name, count) == want


def test_published_minutes_apply_only_on_their_hardware_class():
    on_t4 = resource_baseline("mistral-wikidoc", "mistral", PAPER_LIKE, None, "2x-tesla-t4")
    assert on_t4 == {"train_seconds": pytest.approx(370.67 * 60), "device": "cuda"}
    assert resource_baseline("mistral-wikidoc", "mistral", PAPER_LIKE, None, "1x-nvidia-h100-80gb-hbm3") is None


def test_hardware_file_wins_over_published_minutes():
    hw = {"cases": {"mistral-wikidoc": {"resources": {"train_seconds": 900.0, "device": "cuda"}}}}
    got = resource_baseline("mistral-wikidoc", "mistral", PAPER_LIKE, hw, "2x-tesla-t4")
    assert got == {"train_seconds": 900.0, "device": "cuda"}


def test_recorded_profile_uses_its_own_case_resources():
    main = {"cases": {"llama-wikidoc": {"metrics": {}, "resources": {"train_seconds": 20.0, "device": "cpu"}}}}
    assert resource_baseline("llama-wikidoc", "llama", main, None, "cpu") == {"train_seconds": 20.0, "device": "cpu"}
    assert resource_baseline("phi-wikidoc", "phi", main, None, "cpu") is None


def test_paper_profile_is_read_only_and_names_its_hardware_file():
    paper = load_profile("paper")
    assert paper.baseline_readonly
    assert paper.hardware_baseline("1x-nvidia-h100-80gb-hbm3").name == "paper-1x-nvidia-h100-80gb-hbm3.json"
    assert not load_profile("tiny").baseline_readonly
