"""The planted-regression list itself: every source patch applies to today's code exactly once,
changes the code digest (so no cache entry of the clean code can serve it), and a patch whose
text moved away is an error, not a silently clean "plant"."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from benchmarks.plants import PLANTS, Plant, materialize


def _digest(tree: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((tree / "src" / "medqa_core").rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_every_source_plant_applies_once_and_changes_the_code(tmp_path):
    clean = _digest(materialize(None, tmp_path / "clean"))
    seen = set()
    for p in PLANTS:
        if p.file is None:
            assert p.overrides, f"{p.name}: neither a patch nor overrides"
            continue
        d = _digest(materialize(p, tmp_path / p.name))
        assert d != clean, f"{p.name}: the patch changed nothing"
        assert d not in seen, f"{p.name}: same code as another plant"
        seen.add(d)


def test_a_patch_that_no_longer_matches_is_an_error(tmp_path):
    stale = Plant("stale", "text gone", ("x",), "model/prompts.py", "this text is not in model/prompts.py", "y")
    with pytest.raises(RuntimeError, match="occurs 0 times"):
        materialize(stale, tmp_path / "t")


def test_at_least_three_plants_run_on_every_commit():
    assert sum(p.cheap for p in PLANTS) >= 3
    assert len({p.name for p in PLANTS}) == len(PLANTS)
