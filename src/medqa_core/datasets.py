"""Loaders: each dataset's own file layout -> ``QAExample`` rows, and a deterministic split.

Supported files: JSON (a list of objects), JSONL, CSV (header row) and parquet. The spec's
column mapping picks the question column(s) (joined with a newline) and the answer column.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import content_key
from .errors import DatasetError
from .specs import DatasetSpec, SplitConfig

FORMATS = ("json", "jsonl", "csv", "parquet")


@dataclass(frozen=True)
class QAExample:
    id: str  # stable: sha256 of the normalised question, first 16 hex digits
    question: str
    answer: str


@dataclass
class LoadStats:
    rows_read: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    kept: int = 0


@dataclass
class Split:
    train: list[QAExample]
    test: list[QAExample]
    stats: LoadStats = field(default_factory=LoadStats)

    def fingerprint(self) -> str:
        return content_key([[e.question, e.answer] for e in self.train] + ["|"] + [[e.question, e.answer] for e in self.test])


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace: the form used for ids and duplicate checks."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _read_rows(path: Path, fmt: str) -> list[tuple[int, Any]]:
    """(row number, row) pairs: JSONL rows by their line in the file, other formats by position."""
    try:
        return _read_rows_unchecked(path, fmt)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save the file as UTF-8") from exc


def _read_rows_unchecked(path: Path, fmt: str) -> list[tuple[int, Any]]:
    if fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"train": [...]} style
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return list(enumerate(data, start=1))
    if fmt == "jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}: row {i}: invalid JSON ({exc.msg}); fix or remove that line") from exc
        return rows
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(enumerate(csv.DictReader(fh), start=1))  # row 1 = first row after the header
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DatasetError(f"{path}: not a readable parquet file ({exc})") from exc
    raise DatasetError(f"{path}: unknown format {fmt!r}; use one of {FORMATS}")


def load_examples(spec: DatasetSpec, data_dir: Path) -> tuple[list[QAExample], LoadStats]:
    """Read a dataset file (or, online and without a local file, its hub id), map its columns,
    drop empty and duplicate questions."""
    path = data_dir / spec.file if spec.file is not None else Path("<none>")  # an absolute 'file' stays as is
    if spec.file is not None and path.is_file():
        if spec.format is not None and spec.format not in FORMATS:
            raise DatasetError(f"{path}: dataset {spec.name!r} has format={spec.format!r}; use one of {FORMATS}")
        fmt = spec.format or path.suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise DatasetError(f"{path}: cannot tell the format from suffix {path.suffix!r}; set format = one of {FORMATS}")
        rows = _read_rows(path, fmt)
    elif spec.hub_id is not None and not _offline():
        path = Path(f"hub:{spec.hub_id}")
        rows = _hub_rows(spec)
    else:
        where = f"file {path} not found" if spec.file is not None else "no local 'file' configured"
        hub = f"; hub id {spec.hub_id!r} needs network (HF_HUB_OFFLINE is set)" if spec.hub_id else ""
        raise DatasetError(
            f"dataset {spec.name!r}: {where}{hub}; put the file in --data-dir or set 'file' in the profile"
        )
    if not rows:
        raise DatasetError(f"{path}: file has no rows; dataset {spec.name!r} needs question/answer rows")
    needed = [*spec.question, spec.answer]
    for i, row in rows:
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: row {i} is {type(row).__name__}, expected an object with columns {needed}")
        missing = [c for c in needed if c not in row]
        if missing:
            raise DatasetError(
                f"{path}: row {i} lacks column(s) {missing} (has {sorted(map(str, row))}); "
                f"fix the file or the column mapping of dataset {spec.name!r}"
            )
    stats = LoadStats(rows_read=len(rows))
    seen: set[str] = set()
    out: list[QAExample] = []
    for _, row in rows:
        parts = [_text(row[c]) for c in spec.question]
        question = "\n".join(p for p in parts if p)
        answer = _text(row[spec.answer])
        if not question or not answer:
            stats.dropped_empty += 1
            continue
        norm = normalize(question)
        if norm in seen:
            stats.dropped_duplicate += 1
            continue
        seen.add(norm)
        out.append(QAExample(hashlib.sha256(norm.encode()).hexdigest()[:16], question, answer))
    if not out:
        raise DatasetError(f"{path}: all {len(rows)} rows have an empty question or answer")
    stats.kept = len(out)
    return out, stats


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_rows(spec: DatasetSpec) -> list[tuple[int, Any]]:
    """The train split of a hub dataset (machines with network only)."""
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(f"dataset {spec.name!r}: loading hub id {spec.hub_id!r} needs the 'hub' extra") from exc
    try:
        ds = datasets.load_dataset(spec.hub_id, split="train")
    except Exception as exc:  # network, auth and format errors all end here
        raise DatasetError(f"dataset {spec.name!r}: could not load hub id {spec.hub_id!r}: {exc}") from exc
    return list(enumerate(ds.to_list(), start=1))


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return str(value).strip()


def split(examples: list[QAExample], cfg: SplitConfig, name: str = "dataset") -> Split:
    """Deterministic split: the ``test_size`` examples with the smallest seeded hash are the test set.

    The order of the input rows does not matter, and adding rows moves an existing example
    from test to train only if the new rows push it out of the smallest-hash set (never the
    other way round).
    """
    if cfg.test_size <= 0 or cfg.test_size >= len(examples):
        raise DatasetError(
            f"dataset {name!r}: split.test_size={cfg.test_size} needs 0 < test_size < {len(examples)} (rows kept)"
        )

    def rank(e: QAExample) -> str:
        return hashlib.sha256(f"{cfg.seed}:{e.id}".encode()).hexdigest()

    ordered = sorted(examples, key=rank)
    test = sorted(ordered[: cfg.test_size], key=lambda e: e.id)
    train = sorted(ordered[cfg.test_size:], key=lambda e: e.id)
    leaked = {normalize(e.question) for e in train} & {normalize(e.question) for e in test}
    if leaked:  # cannot happen after dedup; guards future loaders
        raise DatasetError(f"dataset {name!r}: {len(leaked)} test questions also in train")
    return Split(train, test)


def load_split(spec: DatasetSpec, data_dir: Path, cfg: SplitConfig) -> Split:
    examples, stats = load_examples(spec, data_dir)
    s = split(examples, cfg, spec.name)
    s.stats = stats
    return s
