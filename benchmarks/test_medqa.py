"""The benchmark: one case per model x dataset of the active profile (ids like ``mistral-wikidoc``).

Each case fine-tunes (or reuses) a LoRA adapter, generates answers for the held-out split,
scores them, records the result, and gates it: every metric against the baseline minus its
tolerance, training time and peak memory against the baseline times a factor, and the adapter
against the same base model without it.
"""
from __future__ import annotations

import json

import pytest

from medqa_core import pipeline
from medqa_core.baselines import compare, resource_baseline
from medqa_core.errors import MedQAError
from medqa_core.pytest_plugin import RECORD_KEY


@pytest.mark.benchmark_case
def test_case(medqa_case, medqa_profile, medqa_context, medqa_baseline, medqa_hw_baseline, medqa_run_dir,
              record_property, request):
    profile = medqa_profile
    spec = profile.models[medqa_case.model]
    if spec.needs_cuda and medqa_context.device != "cuda":
        pytest.skip(f"{medqa_case.id}: profile {profile.name!r} runs {spec.hub_id} and needs a CUDA GPU; none found")

    try:
        result = pipeline.run_case(profile, medqa_case.model, medqa_case.dataset, medqa_context)
    except MedQAError as exc:  # bad input or config: the message says what to fix, no traceback
        pytest.fail(f"{medqa_case.id}: {exc}", pytrace=False)

    baseline_case = (medqa_baseline or {}).get("cases", {}).get(result.case_id)
    if baseline_case is not None:  # time/memory come from this hardware class's record when there is one
        hw_class, hw_baseline = medqa_hw_baseline
        res = resource_baseline(result.case_id, result.model, medqa_baseline, hw_baseline, hw_class)
        baseline_case = {**baseline_case, "resources": res or {}}
    verdict = compare(result.case_id, result.metrics, baseline_case, profile.gate, result.resources, result.per_example)
    record = {**result.to_json(), "provenance": pipeline.provenance(profile, medqa_context),
              "verdict": verdict.to_json()}
    path = medqa_run_dir / f"{result.case_id}.json"
    path.write_text(json.dumps(record, indent=1, allow_nan=False))
    record_property(RECORD_KEY, str(path))
    for name, value in {**result.metrics, **{f"base_{k}": v for k, v in result.base_metrics.items()},
                        **result.resources, "cached_train": result.cached["train"], "verdict": verdict.status}.items():
        record_property(name, value)

    not_better = [m for m in profile.gate.require_beats_base if result.metrics[m] <= result.base_metrics[m]]
    assert not not_better, (
        f"{result.case_id}: the fine-tuned adapter does not beat the base model on {not_better}: "
        + ", ".join(f"{m} tuned {result.metrics[m]:.4f} vs base {result.base_metrics[m]:.4f}" for m in not_better)
    )
    if request.config.getoption("--update-baselines"):
        return
    assert baseline_case is not None, (
        f"{result.case_id}: no entry in {profile.baseline}; record it with "
        f"`pytest benchmarks/ --profile {profile.name} -k {result.case_id} --update-baselines`"
    )
    assert verdict.status in ("pass", "improvement"), verdict.explain()
