"""Loaders: each dataset's own file layout -> cleaned ``QAExample`` rows (the split and the
leak check are in ``data.split``).

Supported files: JSON (a list of objects), JSONL, CSV (header row) and parquet. The spec's
column mapping picks the question column(s) (joined with a newline) and the answer column.
The file is ``MEDQA_DATA_<NAME>`` when that environment variable is set, else ``<data dir>/<file>``;
without a local file and when online, the hub id is loaded with ``datasets``.

Text files are read as UTF-8 (a leading byte-order mark is dropped). A file that cannot be read
as rows is a one-line ``DatasetError`` naming the file and, where known, the line: bytes that are
not UTF-8, a lone surrogate (a ``\\udXXX`` escape in JSON), JSON nested too deeply to parse, and
for CSV an unterminated or stray quote or a record whose field count differs from the header's
(an unmatched quote otherwise swallows the rows after it without an error). CSV fields may be of
any size.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..specs import DatasetSpec
from .cleaning import clean_row, normalise_question

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
    # over max_question_chars / max_answer_chars after cleaning; a row whose raw question or
    # answer is over its cap by more than CLEANING_SLACK characters is dropped (and counted here)
    # before cleaning, so its rule changes are not in ``cleaned``
    dropped_too_long: int = 0
    dropped_duplicate: int = 0  # same question as an earlier row after cleaning.normalise_question
    kept: int = 0
    leak: dict[str, Any] = field(default_factory=dict)  # train/test overlap (LeakReport), set by load_split


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace: the form hashed into an example's id (and so into the
    split). Duplicates are found with :func:`cleaning.normalise_question`, the leak check's form,
    which also ignores punctuation; ids keep this form so that existing splits do not move."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _read_rows(path: Path, fmt: str) -> list[tuple[int, Any]]:
    """(row number, row) pairs: JSONL rows by their line in the file, other formats by position."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DatasetError(f"{path}: not a readable parquet file ({exc})") from exc
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: unknown format {fmt!r}; use one of {FORMATS}")
    text = _read_text(path)
    if fmt == "csv":
        return _csv_rows(path, text)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON Lines under a .json name
                return _jsonl_rows(path, text)
            raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        except RecursionError as exc:
            raise DatasetError(f"{path}: JSON nested too deeply to parse; rows must be flat objects") from exc
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"train": [...]} style
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return list(enumerate(data, start=1))
    return _jsonl_rows(path, text)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, without a leading byte-order mark."""
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line = data.count(b"\n", 0, at) + 1
        raise DatasetError(f"{path}: line {line}: not UTF-8 text ({exc.reason} at byte {at}); "
                           "re-save the file as UTF-8") from exc


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    rows = []
    # lines as reading the file in text mode gives them (\r\n and \r end a line too)
    for i, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((i, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: row {i}: invalid JSON ({exc.msg}); fix or remove that line") from exc
        except RecursionError as exc:
            raise DatasetError(f"{path}: line {i}: JSON nested too deeply to parse; "
                               "rows must be flat objects") from exc
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header row, parsed strictly: a quote that is never closed, text
    after a closing quote, or a record with more or fewer fields than the header is an error
    naming the line its record starts on. Blank lines are skipped; fields may be of any size."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, min(len(text) + 1, 2**31 - 1)))  # no field is longer than the file
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: list[str] | None = None
        header_line = 1
        rows: list[tuple[int, dict[str, str]]] = []
        while True:
            start = reader.line_num + 1  # the line this record starts on
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                span = f" (the record runs to line {reader.line_num})" if reader.line_num > start else ""
                what = ("a quoted field is never closed" if "unexpected end of data" in str(exc)
                        else f"malformed CSV: {exc}")
                raise DatasetError(f"{path}: line {start}: {what}{span}; check for an unmatched '\"' quote") from exc
            if not record:
                continue  # blank line
            if header is None:
                header, header_line = record, start
                continue
            if len(record) != len(header):
                lines = f"lines {start}-{reader.line_num}" if reader.line_num > start else f"line {start}"
                raise DatasetError(f"{path}: {lines}: record has {len(record)} fields but the header (line {header_line}) has "
                                   f"{len(header)}; check for an unmatched '\"' quote or a missing/extra delimiter")
            rows.append((len(rows) + 1, dict(zip(header, record))))  # row 1 = first row after the header
        return rows
    finally:
        csv.field_size_limit(old_limit)


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
        path, fmt = Path(f"hub:{spec.hub_id}"), "hub"
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
    where = "line" if fmt == "jsonl" else "row"  # JSONL rows are numbered by their line
    for i, row in rows:
        parts = [_column_text(row, c, path, f"{where} {i}") for c in spec.question]
        answer = _column_text(row, spec.answer, path, f"{where} {i}")
        if spec.clean and _far_over_cap(parts, answer, spec):
            stats.dropped_too_long += 1  # cleaning cannot bring it under the cap: skip cleaning it
            continue
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
        key = normalise_question(question)  # the leak check's form: its variants are one question
        if key in seen:
            stats.dropped_duplicate += 1
            continue
        seen.add(key)
        out.append(QAExample(hashlib.sha256(normalize(question).encode()).hexdigest()[:16], question, answer))
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


# Cleaning removes boilerplate openers and sign-offs: a few hundred characters on real data, and
# it never lengthens a text by more than 2 (capitalizing "ß..." gives "SS..."). A row whose raw
# question or answer is over its cap by more than this is dropped as too long before cleaning,
# so a huge scraped row costs no cleaning time. Such a row is counted in ``dropped_too_long``
# even where cleaning would have emptied its other field, and its rule changes are not counted.
CLEANING_SLACK = 4096


def _far_over_cap(parts: list[str], answer: str, spec: DatasetSpec) -> bool:
    """Both fields non-empty before cleaning and one is over its cap by more than CLEANING_SLACK."""
    question_len = sum(len(p) + 1 for p in parts if p) - 1
    if question_len <= 0 or not answer:
        return False  # empty rows go the usual way and are counted as empty
    return (spec.max_question_chars is not None and question_len > spec.max_question_chars + CLEANING_SLACK) or (
        spec.max_answer_chars is not None and len(answer) > spec.max_answer_chars + CLEANING_SLACK)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _column_text(row: dict[str, Any], column: str, path: Path, where: str) -> str:
    try:
        text = _text(row[column])
    except RecursionError as exc:  # str() of a deeply nested list or object
        raise DatasetError(f"{path}: {where}: column {column!r} is nested too deeply; expected text") from exc
    bad = _SURROGATE.search(text)
    if bad:
        raise DatasetError(f"{path}: {where}: column {column!r} holds a lone surrogate (\\u{ord(bad.group()):04x}), "
                           "which is not valid Unicode text; fix or remove that row")
    return text


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return str(value).strip()
