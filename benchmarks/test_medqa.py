"""The benchmark: one case per model x dataset of the active profile (ids like ``mistral-wikidoc``).

A thin user of the plugin's documented fixtures, as a user's own test would be: ``medqa_case``
is parametrized over the profile's cases and ``medqa_run`` fine-tunes (or reuses) a LoRA
adapter per seed, generates answers for the held-out split, scores them with their controls,
records the result and judges it (gate.py): scores against the baseline's between-run noise
band, exact invariants, controls the adapter must beat, and time / memory against the baseline.
The session adds family and suite verdicts.
"""
from __future__ import annotations


def test_case(medqa_case, medqa_run):
    medqa_run(medqa_case).check()
