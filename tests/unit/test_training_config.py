"""[train] trainer / packing: parsed, defaulted, and rejected with a one-line error naming the option."""
from __future__ import annotations

import pytest
from helpers import MINIMAL_PROFILE

from medqa_core.errors import ConfigError
from medqa_core.profile import load_profile


def _load(tmp_path, train: str):
    p = tmp_path / "p.toml"
    p.write_text(MINIMAL_PROFILE + "[train]\n" + train)
    return load_profile(p)


def test_defaults_keep_trl(tmp_path):
    cfg = _load(tmp_path, "steps = 3\n").train
    assert cfg.trainer == "sft" and cfg.packing is False


def test_lean_and_packing_parse(tmp_path):
    cfg = _load(tmp_path, 'trainer = "lean"\npacking = true\n').train
    assert cfg.trainer == "lean" and cfg.packing is True


def test_tiny_profile_uses_the_lean_loop():
    assert load_profile("tiny").train.trainer == "lean"


@pytest.mark.parametrize("value", ['"trl"', '"LEAN"', '""'])
def test_bad_trainer(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f"trainer = {value}\n")
    msg = str(info.value)
    assert "trainer" in msg and "'sft'" in msg and "'lean'" in msg and "\n" not in msg


@pytest.mark.parametrize("value", ['"yes"', "1"])
def test_bad_packing(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f"packing = {value}\n")
    assert "packing" in str(info.value) and "true or false" in str(info.value)


def test_average_tail_defaults_off_and_parses_under_lean(tmp_path):
    assert _load(tmp_path, "steps = 3\n").train.average_tail == 0.0
    assert _load(tmp_path, 'trainer = "lean"\naverage_tail = 0.5\n').train.average_tail == 0.5


@pytest.mark.parametrize("train, words", [
    ('trainer = "sft"\naverage_tail = 0.5\n', ("average_tail = 0.5", "trainer = 'lean'")),
    ('trainer = "lean"\naverage_tail = 1.5\n', ("average_tail = 1.5", "must be a number in [0, 1]")),
    ('trainer = "lean"\naverage_tail = -0.1\n', ("average_tail = -0.1",)),
])
def test_bad_average_tail(tmp_path, train, words):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, train)
    msg = str(info.value)
    assert all(w in msg for w in words) and "\n" not in msg, msg
