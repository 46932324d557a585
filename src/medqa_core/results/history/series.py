"""A metric's series out of the history's case rows: what the report's history plots and the
trends read (:meth:`History.case_rows <medqa_core.results.history.store.History.case_rows>`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...metrics import registry

RESOURCE_KEYS = registry.RESOURCE_KEYS


def series_of(
    rows: list[tuple[str, str | None, dict[str, Any]]], metric: str, hardware_class: str | None = None
) -> list[tuple[str, float]]:
    """(run id, value) of ``metric`` from :meth:`History.case_rows
    <medqa_core.results.history.store.History.case_rows>`, runs without the value left out."""
    out = []
    for run_id, hw_class, rec in rows:
        v = metric_value(rec, metric)
        if v is not None and (hardware_class is None or hw_class == hardware_class):
            out.append((run_id, v))
    return out


def metric_value(record: Mapping[str, Any], metric: str) -> float | None:
    if metric in record.get("metrics", {}):
        return float(record["metrics"][metric])
    key = RESOURCE_KEYS.get(metric)
    if key and record.get("resources", {}).get(key) is not None:
        return float(record["resources"][key])
    return None
