"""The benchmark proves itself: each planted regression (benchmarks/plants.py) must fail the real
benchmark case with one of its named checks.

``pytest -m mutation`` runs the cheap plants (profile overrides reuse the cached base model; one
source patch); ``pytest -m "mutation and slow"`` adds every other plant (each source patch
retrains the case, since the code is in every cache key; a rerun reads the plant's own entries).
That a plant is never served an entry of the clean code is checked by ``python
scripts/plants.py`` (clean and planted runs on one cache, then cold, then clean again) and by
tests/unit/test_plants_defs.py (every patch changes the code digest).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.plants import PLANTS, judge, run

CASE = os.environ.get("MEDQA_PLANT_CASE", "llama-wikidoc")


def _param(p):
    marks = [pytest.mark.mutation] + ([] if p.cheap else [pytest.mark.slow])
    return pytest.param(p, id=p.name, marks=marks)


@pytest.mark.parametrize("plant", [_param(p) for p in PLANTS])
def test_plant_is_caught(plant, tmp_path: Path, request):
    profile = request.config.getoption("--profile")
    if profile not in (None, "tiny"):  # `pytest benchmarks/ --profile small -m slow` records small, not plants
        pytest.skip(f"plants are defined on the tiny profile (this run: --profile {profile})")
    cache = Path(request.config.getoption("--cache-dir") or request.config.rootpath / ".medqa-cache")
    result = run(plant, tmp_path, CASE, cache)  # one run per case: benchmarks.plants.PLANT_SEEDS
    outcome = judge(plant, result)
    assert outcome.caught, (
        f"plant {plant.name} ({plant.what}) was NOT caught on {CASE}: status {outcome.status}, "
        f"failing {outcome.failing}, expected one of {list(plant.expect)}\n{outcome.explain}"
    )
