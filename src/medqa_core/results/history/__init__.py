"""Append-only run history in SQLite: one row per run, one row per case result.

:mod:`.store` is the SQLite file (schema, opening, locking and the spool, storing runs, merging
runs into a group, retention, reading runs and records back: :class:`History`); :mod:`.groups`
the run groups (several runs that form one logical run, and how a group reads as one run);
:mod:`.series` a metric's series out of the stored rows. Everything public is importable from
here, as it was when the history was one module.
"""

from __future__ import annotations

from .groups import RunRow
from .series import RESOURCE_KEYS, metric_value, series_of
from .store import (
    APPLICATION_ID,
    BULK_LOCK_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT,
    DELETE_TRIGGERS,
    KEEP_DAYS_ENV,
    KEEP_RUNS_ENV,
    LEAN_PATHS,
    LOCK_TIMEOUT_ENV,
    SCHEMA,
    SPOOL_VERSION,
    TRIGGERS,
    CaseRow,
    History,
    HistoryError,
    HistoryLocked,
    HistorySpooled,
    ImportRun,
    MergeResult,
    PruneResult,
    RunMeta,
    comparable,
    outcome_of,
    record_hardware_class,
)

__all__ = [
    "APPLICATION_ID",
    "BULK_LOCK_TIMEOUT",
    "DEFAULT_LOCK_TIMEOUT",
    "DELETE_TRIGGERS",
    "KEEP_DAYS_ENV",
    "KEEP_RUNS_ENV",
    "LEAN_PATHS",
    "LOCK_TIMEOUT_ENV",
    "RESOURCE_KEYS",
    "SCHEMA",
    "SPOOL_VERSION",
    "TRIGGERS",
    "CaseRow",
    "History",
    "HistoryError",
    "HistoryLocked",
    "HistorySpooled",
    "ImportRun",
    "MergeResult",
    "PruneResult",
    "RunMeta",
    "RunRow",
    "comparable",
    "metric_value",
    "outcome_of",
    "record_hardware_class",
    "series_of",
]
