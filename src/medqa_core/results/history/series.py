"""A metric's series out of the history's case rows: what the report's history plots and the
trends read (:meth:`History.case_rows <medqa_core.results.history.store.History.case_rows>`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...metrics import registry
from ..record import RunRecord

if TYPE_CHECKING:
    from .store import CaseRow

RESOURCE_KEYS = registry.RESOURCE_KEYS


def series_of(rows: list[CaseRow], metric: str, hardware_class: str | None = None) -> list[tuple[str, float]]:
    """(run id, value) of ``metric`` from :meth:`History.case_rows
    <medqa_core.results.history.store.History.case_rows>`, runs without the value left out."""
    out = []
    for run_id, hw_class, rec in rows:
        v = metric_value(rec, metric)
        if v is not None and (hardware_class is None or hw_class == hardware_class):
            out.append((run_id, v))
    return out


def metric_value(record: RunRecord, metric: str) -> float | None:
    """``metric`` of a case record or one of its runs: a score, else a resource (by its
    record key, :data:`RESOURCE_KEYS`); None when the record has no such value."""
    if metric in record.get("metrics", {}):
        return float(record["metrics"][metric])
    key = RESOURCE_KEYS.get(metric)
    if key and record.get("resources", {}).get(key) is not None:
        return float(record["resources"][key])
    return None
