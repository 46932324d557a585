"""Loaders: each dataset's own file layout -> ``QAExample`` rows, cleaning, a deterministic
split and the train/test leakage check.

Supported files: JSON (a list of objects), JSONL, CSV (header row) and parquet. The spec's
column mapping picks the question column(s) (joined with a newline) and the answer column.
The file is ``MEDQA_DATA_<NAME>`` when that environment variable is set, else ``<data dir>/<file>``;
without a local file and when online, the hub id is loaded with ``datasets``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cache import content_key
from .cleaning import clean_row
from .errors import DatasetError, LeakageError
from .leakage import LeakReport, leakage
from .specs import DatasetSpec, SplitConfig

FORMATS = ("json", "jsonl", "csv", "parquet")


@dataclass(frozen=True)
class QAExample:
    id: str  # stable: sha256 of the normalised question, first 16 hex digits
    question: str
    answer: str


@dataclass
class LoadStats:
    """Row counts of each loading step, in order (part of every result record)."""

    rows_read: int = 0
    cleaned: dict[str, int] = field(default_factory=dict)  # cleaning rule -> rows it changed
    dropped_empty: int = 0  # empty question or answer (also after cleaning)
    dropped_too_long: int = 0  # over max_question_chars / max_answer_chars
    dropped_duplicate: int = 0  # same normalized question as an earlier row
    kept: int = 0
    leak: dict[str, Any] = field(default_factory=dict)  # train/test overlap (LeakReport), set by load_split


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
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON Lines under a .json name
                return _read_rows_unchecked(path, "jsonl")
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
    clean, and drop empty, over-long and duplicate rows (each step counted in the stats)."""
    path = data_dir / spec.file if spec.file is not None else Path("<none>")  # an absolute 'file' stays as is
    override = os.environ.get(spec.env_var)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise DatasetError(f"{spec.env_var}={override}: no such file for dataset {spec.name!r}; "
                               "point it at a json/jsonl/csv/parquet file or unset it")
    if (override or spec.file is not None) and path.is_file():
        if spec.format is not None and spec.format not in FORMATS:
            raise DatasetError(f"{path}: dataset {spec.name!r} has format={spec.format!r}; use one of {FORMATS}")
        # the profile's format describes its own file; a file named by the env var goes by its suffix
        fmt = (None if override else spec.format) or path.suffix.lstrip(".").lower()
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
        answer = _text(row[spec.answer])
        if spec.clean:
            parts, answer = clean_row(parts, answer, spec.clean, stats.cleaned)
        question = "\n".join(p for p in parts if p)
        if not question or not answer:
            stats.dropped_empty += 1
            continue
        if (spec.max_question_chars is not None and len(question) > spec.max_question_chars) or (
            spec.max_answer_chars is not None and len(answer) > spec.max_answer_chars
        ):
            stats.dropped_too_long += 1
            continue
        norm = normalize(question)
        if norm in seen:
            stats.dropped_duplicate += 1
            continue
        seen.add(norm)
        out.append(QAExample(hashlib.sha256(norm.encode()).hexdigest()[:16], question, answer))
    if not out:
        raise DatasetError(f"{path}: all {len(rows)} rows have an empty question or answer or are over the length "
                           f"caps (empty {stats.dropped_empty}, too long {stats.dropped_too_long}); dataset {spec.name!r}")
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


def _hash01(seed: int, example_id: str) -> float:
    """Seeded hash of an example id, uniform in [0, 1)."""
    return int(hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()[:16], 16) / 2**64


def split(examples: list[QAExample], cfg: SplitConfig, name: str = "dataset") -> Split:
    """Deterministic split by a seeded hash of each example's id (the normalized question).

    ``test_fraction``: an example is in the test set iff its hash is below the fraction, a fact
    about that example alone: adding or removing other rows never moves it. ``test_size``: the
    N examples with the smallest hash (fixed size; a new row can push one from test to train,
    never the other way round). Input order never matters.
    """
    if cfg.test_fraction is not None:
        test = [e for e in examples if _hash01(cfg.seed, e.id) < cfg.test_fraction]
        if not test or len(test) == len(examples):
            raise DatasetError(f"dataset {name!r}: split.test_fraction={cfg.test_fraction} puts {len(test)} of "
                               f"{len(examples)} rows in the test set; pick a fraction that leaves both sides non-empty")
        ids = {e.id for e in test}
        train = [e for e in examples if e.id not in ids]
    else:
        assert cfg.test_size is not None
        if cfg.test_size <= 0 or cfg.test_size >= len(examples):
            raise DatasetError(
                f"dataset {name!r}: split.test_size={cfg.test_size} needs 0 < test_size < {len(examples)} (rows kept)"
            )
        ordered = sorted(examples, key=lambda e: hashlib.sha256(f"{cfg.seed}:{e.id}".encode()).hexdigest())
        test, train = ordered[: cfg.test_size], ordered[cfg.test_size:]
    test = sorted(test, key=lambda e: e.id)
    train = sorted(train, key=lambda e: e.id)
    leaked = {normalize(e.question) for e in train} & {normalize(e.question) for e in test}
    if leaked:  # cannot happen after dedup; guards future loaders
        raise DatasetError(f"dataset {name!r}: {len(leaked)} test questions also in train")
    return Split(train, test)


def check_leakage(s: Split, cfg: SplitConfig, name: str) -> LeakReport:
    """Exact and near-duplicate questions shared by train and test; raises LeakageError over the limit."""
    report = leakage([e.question for e in s.train], [e.question for e in s.test], cfg.near_dup_threshold)
    if cfg.max_leak_fraction is not None and report.fraction > cfg.max_leak_fraction:
        raise LeakageError(
            f"dataset {name!r}: {report.leaked} of {report.test} test questions ({report.fraction:.1%}) have a "
            f"duplicate in train ({report.exact} exact, {report.near} near, Jaccard >= {cfg.near_dup_threshold}); "
            f"limit [split] max_leak_fraction = {cfg.max_leak_fraction}"
        )
    return report


def load_split(spec: DatasetSpec, data_dir: Path, cfg: SplitConfig) -> Split:
    examples, stats = load_examples(spec, data_dir)
    s = split(examples, cfg, spec.name)
    report = check_leakage(s, cfg, spec.name)
    stats.leak = {**asdict(report), "leaked": report.leaked, "fraction": round(report.fraction, 4)}
    s.stats = stats
    return s
