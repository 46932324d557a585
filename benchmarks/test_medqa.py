"""The benchmark: one case per model x dataset of the active profile (ids like ``mistral-wikidoc``).

Each case fine-tunes (or reuses) a LoRA adapter per seed, generates answers for the held-out
split, scores them with their controls, records the result, and gates it (gate.py): scores
against the baseline's between-run noise band, exact invariants, controls the adapter must
beat, and time / memory against the baseline. The session adds family and suite verdicts.
"""
from __future__ import annotations

import pytest

from medqa_core import session
from medqa_core.errors import MedQAError
from medqa_core.pytest_plugin import RECORD_KEY


@pytest.mark.benchmark_case
def test_case(medqa_case, medqa_profile, medqa_context, medqa_baseline, medqa_hw_baseline, medqa_run_dir,
              medqa_seeds, record_property, request):
    spec = medqa_profile.models[medqa_case.model]
    if spec.needs_cuda and medqa_context.device != "cuda":
        pytest.skip(f"{medqa_case.id}: profile {medqa_profile.name!r} runs {spec.hub_id} and needs a CUDA GPU; none found")
    try:
        record, verdict = session.run_and_judge(medqa_profile, medqa_case.model, medqa_case.dataset, medqa_context,
                                                medqa_seeds, medqa_baseline, medqa_hw_baseline, medqa_run_dir,
                                                judge_resources=not request.config.getoption("--update-resources"))
    except Exception as exc:  # the case still ends as a record (status error) for history, summary and alerts
        err = session.error_record(medqa_profile, medqa_case.model, medqa_case.dataset, medqa_run_dir,
                                   f"{type(exc).__name__}: {exc}")
        record_property(RECORD_KEY, err["_path"])
        if isinstance(exc, MedQAError):  # bad input or config: the message says what to fix, no traceback
            pytest.fail(f"{medqa_case.id}: {exc}", pytrace=False)
        raise

    record_property(RECORD_KEY, record["_path"])
    for name, value in {**record["metrics"], **{f"base_{k}": v for k, v in record["base_metrics"].items()},
                        **record["resources"], "cached_train": record["cached"]["train"],
                        "verdict": verdict.status}.items():
        record_property(name, value)

    if request.config.getoption("--update-baselines"):  # recording: only the controls must hold
        assert not verdict.failures, verdict.explain()
        return
    assert verdict.status != "no-baseline", (
        f"{medqa_case.id}: no entry in {medqa_profile.baseline}; record it with `pytest benchmarks/ --profile "
        f"{medqa_profile.path} -k {medqa_case.id} --update-baselines" + (" -m slow" if medqa_profile.slow else "") + "`"
    )
    assert not verdict.failed and verdict.status != "incomparable", verdict.explain()
