"""The case record: what one case of a run leaves behind (``<run dir>/<case id>.json``), typed.

Written by :mod:`medqa_core.session` (``case_record``, ``error_record``); read by the summary,
the report, the history, trends, alerts and ``merge``. The types describe the JSON as it is
stored, so readers get names and shapes checked by a type checker instead of guessing keys;
:func:`check_record` is the one place that decides whether a JSON object is a record.
"""
from __future__ import annotations

from typing import Any, TypedDict

from ..errors import MedQAError


class Verdict(TypedDict, total=False):
    status: str  # pass | improvement | regression | changed | incomparable | no-baseline | error
    note: str
    explain: str
    checks: list[dict[str, Any]]  # gate.Check as JSON: name, value, baseline, passed, kind, detail, ...


class RunRecord(TypedDict, total=False):
    """One training run (seed) of the case."""

    seed: int
    metrics: dict[str, float]
    per_example: dict[str, list[Any]]
    controls: dict[str, dict[str, Any]]
    invariants: dict[str, Any]
    resources: dict[str, Any]  # train_seconds, peak_mem_mib, tokens_per_s, device, <stage>_work
    base_metrics: dict[str, float]
    cached: dict[str, bool]
    margins: dict[str, float]
    provenance: dict[str, Any]
    identity: dict[str, Any]


class CaseRecord(RunRecord, total=False):
    """The case: the first run's fields, metrics averaged over the runs, every run kept."""

    case_id: str
    model: str
    dataset: str
    profile: str
    runs: list[RunRecord]
    seeds: list[int]
    train: dict[str, Any]
    seconds: dict[str, float]
    work: dict[str, float]
    keys: dict[str, str]
    data: dict[str, Any]
    data_source: dict[str, Any]
    answers_sample: list[dict[str, str]]
    scoring: dict[str, Any]
    verdict: Verdict


REQUIRED = ("case_id", "model", "dataset")


def is_record(obj: Any) -> bool:
    """A case record (not ``aggregates.json`` or another JSON file of a run directory):
    what :func:`check_record` accepts."""
    try:
        check_record(obj, "")
    except MedQAError:
        return False
    return True


def check_record(obj: Any, where: str) -> CaseRecord:
    """``obj`` as a :class:`CaseRecord`, or a one-line error naming ``where`` and what is missing
    (an empty ``case_id``, ``model`` or ``dataset`` counts as missing)."""
    if not isinstance(obj, dict):
        raise MedQAError(f"{where}: not a case record (a JSON {type(obj).__name__}, expected an object)")
    missing = [k for k in REQUIRED if not isinstance(obj.get(k), str) or not obj.get(k)]
    if missing:
        raise MedQAError(f"{where}: not a case record (no {', '.join(missing)})")
    return obj  # type: ignore[return-value]
