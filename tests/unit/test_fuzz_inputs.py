"""Fuzzing every input reader (issue 12, "done means"): the dataset loaders (JSON, JSONL, CSV,
parquet) and the profile reader meet arbitrary bytes, arbitrary rows and arbitrary TOML. Each
input either loads or raises a :class:`MedQAError` whose message names the file and, where the
fault is in one place, the row or the key; never another exception, and never slower than a
bound linear in the input's size.

Rows written by a correct writer (csv.writer, json.dumps, pyarrow) must also load with nothing
lost: every record is read (``rows_read``) before cleaning.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqa_core.data.cleaning import RULES
from medqa_core.data.datasets import FORMATS, load_examples
from medqa_core.data.split import check_leakage, split
from medqa_core.errors import MedQAError
from medqa_core.paths import PROFILES_DIR
from medqa_core.profile import load_profile
from medqa_core.specs import DatasetSpec, SplitConfig

FUZZ = settings(max_examples=int(os.environ.get("MEDQA_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: the time bound: a fixed start-up allowance plus a generous cost per KiB of input. Quadratic
#: behaviour (e.g. a regex backtracking over a long field) breaks it on the scaled inputs below.
BASE_SECONDS = 2.0
SECONDS_PER_KIB = 0.05


def _bound(n_bytes: int) -> float:
    return BASE_SECONDS + SECONDS_PER_KIB * n_bytes / 1024


@contextmanager
def _workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="medqa-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("MEDQA_DATA_"):
            monkeypatch.delenv(k)


# ------------------------------------------------------------------ datasets

ALL_RULES = tuple(RULES)
ROW_NUMBER = re.compile(r"\b(row|line|lines) \d+")


def _spec(fmt: str, clean: tuple[str, ...] = (), caps: tuple[int | None, int | None] = (None, None),
          question: tuple[str, ...] = ("q",)) -> DatasetSpec:
    return DatasetSpec(name="fuzz", file=f"data.{fmt}", question=question, answer="a", format=fmt, clean=clean,
                       max_question_chars=caps[0], max_answer_chars=caps[1])


def _load(content: bytes, spec: DatasetSpec, then_split: bool = True) -> tuple[Any, str | None]:
    """(stats or None, error message or None); fails the test on any other exception or on time.
    ``then_split``: also split what loaded and run the leak check (their errors name the dataset)."""
    with _workdir() as d:
        path = d / spec.file
        path.write_bytes(content)
        t0 = time.perf_counter()
        try:
            examples, stats = load_examples(spec, d)
            # the split and leak check must hold the same contract on whatever loaded
            if then_split and len(examples) >= 2:
                try:
                    cfg = SplitConfig(seed=0, test_fraction=0.5, max_leak_fraction=0.0)
                    check_leakage(split(examples, cfg, spec.name), cfg, spec.name)
                except MedQAError as exc:
                    assert spec.name in str(exc), exc
            out: tuple[Any, str | None] = (stats, None)
        except MedQAError as exc:
            msg = str(exc)
            assert str(path) in msg, f"the error does not name the file: {msg!r}"
            assert "\n" not in msg.strip(), f"not one line: {msg!r}"
            out = (None, msg)
        elapsed = time.perf_counter() - t0
        assert elapsed < _bound(len(content)), f"{elapsed:.2f} s for {len(content)} bytes"
        return out


@given(fmt=st.sampled_from(FORMATS), content=st.binary(max_size=4096))
@FUZZ
def test_arbitrary_bytes_load_or_raise_medqa_error(fmt, content):
    _load(content, _spec(fmt))


_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), _text)
_json_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(_text, inner, max_size=4)), max_leaves=12)
_column = st.sampled_from(["q", "a", "x", "Q", ""])
_row = st.one_of(st.dictionaries(st.one_of(_column, _text), _json_value, max_size=5),
                 st.fixed_dictionaries({"q": _json_value, "a": _json_value}), _json_value)


def _json_bytes(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@given(rows=st.lists(_row, max_size=12), layout=st.sampled_from(["json", "wrapped", "jsonl", "jsonl-as-json"]),
       ascii_only=st.booleans(), clean=st.sampled_from([(), ALL_RULES]),
       caps=st.tuples(st.one_of(st.none(), st.integers(1, 50)), st.one_of(st.none(), st.integers(1, 50))),
       question=st.sampled_from([("q",), ("q", "x")]))
@FUZZ
def test_arbitrary_json_rows_load_or_raise_medqa_error(rows, layout, ascii_only, clean, caps, question):
    if layout in ("json", "wrapped"):
        body = _json_bytes(rows if layout == "json" else {"train": rows}, ascii_only)
        fmt = "json"
    else:
        body = b"\n".join(_json_bytes(r, ascii_only) for r in rows)
        fmt = "jsonl" if layout == "jsonl" else "json"
    stats, err = _load(body, _spec(fmt, clean=clean, caps=caps, question=question))
    if err is None:
        assert stats.rows_read == len(rows)  # nothing lost
    elif rows and not any(s in err for s in ("no rows", "all ", "invalid JSON", "expected a JSON list")):
        assert ROW_NUMBER.search(err), f"the error names no row: {err!r}"


_field = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)


@given(header=st.sampled_from([["q", "a"], ["a", "q", "x"], ["q", "a", ""]]),
       body=st.lists(st.lists(_field, min_size=3, max_size=3), max_size=15),
       dialect=st.sampled_from(["excel", "unix"]), crlf=st.booleans())
@FUZZ
def test_csv_written_by_csv_writer_loses_no_row(header, body, dialect, crlf):
    buf = io.StringIO(newline="")
    w = csv.writer(buf, dialect=dialect, lineterminator="\r\n" if crlf else "\n")
    w.writerow(header)
    records = [r[: len(header)] for r in body]
    if not crlf:  # csv.writer quotes only the terminator's characters: a bare \r would end the record
        records = [[f.replace("\r", "") for f in r] for r in records]
    records = [r for r in records if any(r)]  # csv writes an all-empty record of one field as a blank line
    w.writerows(records)
    stats, err = _load(buf.getvalue().encode(), _spec("csv"))
    if err is None:
        assert stats.rows_read == len(records)
    else:  # only a file whose rows are all empty may be refused
        assert "no rows" in err or "all " in err, err


@given(body=st.lists(st.lists(_field, min_size=2, max_size=2), min_size=1, max_size=10),
       where=st.floats(0, 1), junk=st.sampled_from(['"', 'x"', '"\n', ",", "\r", "\x00"]))
@FUZZ
def test_corrupted_csv_loads_every_record_or_names_a_line(body, where, junk):
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["q", "a"])
    w.writerows(body)
    text = buf.getvalue()
    cut = int(where * len(text))
    broken = text[:cut] + junk + text[cut:]
    stats, err = _load(broken.encode(), _spec("csv"))
    if err is not None and not ("no rows" in err or "all " in err):
        assert ROW_NUMBER.search(err), f"the error names no line: {err!r}"


_pa_column = st.one_of(
    st.lists(st.one_of(st.none(), _field), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.floats()), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.lists(_field, max_size=3)), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.binary(max_size=20)), min_size=3, max_size=3),
)


@given(columns=st.dictionaries(st.sampled_from(["q", "a", "x"]), _pa_column, max_size=3))
@FUZZ
def test_arbitrary_parquet_rows_load_or_raise_medqa_error(columns):
    sink = io.BytesIO()
    table = pa.table(columns) if columns else pa.table({"z": [1]})
    pq.write_table(table, sink)
    stats, err = _load(sink.getvalue(), _spec("parquet"))
    if err is None:
        assert stats.rows_read == table.num_rows


@pytest.mark.parametrize("fmt, unit", [
    ("csv", lambda i: f'"question {i} with ""quotes"" and, commas","{"answer " * 40}{i}"\n'),
    ("jsonl", lambda i: json.dumps({"q": f"question {i} " + "<b>x</b> " * 20, "a": "Thanks. " * 30 + str(i)}) + "\n"),
    ("csv", lambda i: '"' + "\n" * 50 + "x"),  # an unterminated quote that runs to the end of the file
    ("json", lambda i: "["),  # deep nesting
])
def test_time_is_linear_in_input_size(fmt, unit):
    """A 16x larger file may take at most ~16x longer (x4 slack): no quadratic path in a loader."""
    head = "q,a\n" if fmt == "csv" else ""
    spec = _spec(fmt, clean=ALL_RULES)

    def timed(n: int) -> tuple[float, int]:
        body = (head + "".join(unit(i) for i in range(n))).encode()
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            _load(body, spec, then_split=False)  # the leak check compares pairs: see its own tests
            best = min(best, time.perf_counter() - t0)
        return best, len(body)

    small, small_bytes = timed(500)
    large, large_bytes = timed(8000)
    ratio = large_bytes / small_bytes
    assert large < 4 * ratio * max(small, 0.01) + 1.0, (small, large, ratio)


# ------------------------------------------------------------------ profiles

TINY = tomllib.loads((PROFILES_DIR / "tiny.toml").read_text())


def _toml_key(k: str) -> str:
    return json.dumps(k)  # a quoted key is always valid TOML


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are TOML basic-string escapes (a lone surrogate is refused)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml(doc: dict[str, Any]) -> str:
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def _load_profile(text: bytes) -> tuple[Any, str | None]:
    with _workdir() as d:
        path = d / "fuzz.toml"
        path.write_bytes(text)
        t0 = time.perf_counter()
        try:
            out: tuple[Any, str | None] = (load_profile(path), None)
        except MedQAError as exc:
            msg = str(exc)
            assert str(path) in msg, f"the error does not name the file: {msg!r}"
            out = (None, msg)
        assert time.perf_counter() - t0 < _bound(len(text))
        return out


def test_shipped_profile_round_trips_through_the_fuzz_writer():
    """The writer below is sound: the tiny profile written by it loads as the original does."""
    prof, err = _load_profile(_toml({**TINY, "data_dir": str(PROFILES_DIR / TINY["data_dir"])}).encode())
    assert err is None, err
    assert prof.models.keys() == load_profile("tiny").models.keys()


@given(content=st.binary(max_size=4096))
@FUZZ
def test_arbitrary_bytes_as_a_profile(content):
    _load_profile(content)


_toml_scalar = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), _text)
_toml_any = st.recursive(_toml_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(_text, inner, max_size=3)), max_leaves=10)
_known_key = st.sampled_from(sorted({*TINY, *(k for t in TINY.values() if isinstance(t, dict) for k in t),
                                     *(k for t in TINY.values() if isinstance(t, dict) for s in t.values()
                                       if isinstance(s, dict) for k in s)}))


@given(doc=st.dictionaries(st.one_of(_known_key, _text), _toml_any, max_size=6))
@FUZZ
def test_arbitrary_toml_as_a_profile(doc):
    _load_profile(_toml(doc).encode("utf-8", "surrogatepass"))


def _paths(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(_paths(v, (*prefix, k)))
    return out


PATHS = _paths(TINY)


@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(_toml_any, st.just(None)),
                                 st.one_of(st.none(), _known_key)), min_size=1, max_size=3))
@FUZZ
def test_mutated_tiny_profile_loads_or_names_the_key(edits):
    """Replace, delete or add a key anywhere in the tiny profile: it loads, or the error names
    the file and a key or table on the path of an edit."""
    doc = json.loads(json.dumps(TINY))
    doc["data_dir"] = str(PROFILES_DIR / TINY["data_dir"])
    names: set[str] = set()
    for path, value, new_key in edits:
        parent = doc
        for k in path[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        key = path[-1] if new_key is None else new_key
        if value is None:
            parent.pop(key, None)
        else:
            parent[key] = value
        names.update(path[:-1])
        names.add(key)
    _, err = _load_profile(_toml(doc).encode("utf-8", "surrogatepass"))
    if err is not None and "invalid TOML" not in err:
        assert any(n and n in err for n in names), f"no edited key or table named in {err!r} (edits {sorted(names)})"
