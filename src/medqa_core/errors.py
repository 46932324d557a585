"""One exception family for every user-facing failure.

Messages name the file, row, column or option at fault and say what to do, so a failing
benchmark case reads as an instruction rather than a traceback.
"""
from __future__ import annotations


class MedQAError(Exception):
    """Base class of every error medqa-bench raises on purpose."""


class ConfigError(MedQAError):
    """A profile, option or spec is invalid (unknown name, bad value)."""


class DatasetError(MedQAError):
    """A dataset file is missing, empty, malformed or lacks a mapped column."""


class LeakageError(DatasetError):
    """Too many test questions have an exact or near duplicate in the training split."""


class CacheError(MedQAError):
    """The content-addressed cache is unusable (unwritable dir, corrupt entry)."""


class BaselineError(MedQAError):
    """A baseline file is missing a case, malformed, or fails schema validation."""


class MetricError(MedQAError):
    """A metric produced NaN/inf or could not be computed."""


class TrainingError(MedQAError):
    """Fine-tuning or pretraining diverged (non-finite loss) or produced nothing."""
