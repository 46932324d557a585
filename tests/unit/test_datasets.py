"""Dataset loaders (json/jsonl/csv/parquet), cleaning (empty/duplicate rows) and the
deterministic split, checked against independent re-computations."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import write_rows
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medqa_core.data.datasets import QAExample, load_examples, normalize
from medqa_core.data.split import Split, load_split, split
from medqa_core.errors import DatasetError, MedQAError
from medqa_core.profile import load_profile
from medqa_core.specs import DatasetSpec, SplitConfig


def spec(file: str | None, question=("q",), answer: str = "a", fmt: str | None = None, **kw) -> DatasetSpec:
    return DatasetSpec(name=kw.pop("name", "ds"), file=file, question=tuple(question), answer=answer, format=fmt, **kw)


def expect_dataset_error(s: DatasetSpec, data_dir: Path, *fragments: str) -> str:
    with pytest.raises(MedQAError) as info:
        load_examples(s, data_dir)
    assert isinstance(info.value, DatasetError)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def ref_id(question: str) -> str:
    """Independent id: sha256 of lower-cased, whitespace-collapsed question, 16 hex digits."""
    norm = " ".join(question.split()).lower()
    return hashlib.sha256(norm.encode()).hexdigest()[:16]


def ex(i: int, text: str | None = None) -> QAExample:
    q = text if text is not None else f"question number {i}?"
    return QAExample(ref_id(q), q, f"answer {i}.")


# ---------------------------------------------------------------- loaders per format

ROWS = [
    {"title": "Headache", "body": "I have had a headache for 3 days.", "reply": "Drink water and rest.", "x": 1},
    {"title": "Fever", "body": "My child has a fever.", "reply": "Check the temperature twice a day.", "x": 2},
    {"title": "", "body": "Only a body here.", "reply": "Fine.", "x": 3},
]
EXPECTED_Q = ["Headache\nI have had a headache for 3 days.", "Fever\nMy child has a fever.", "Only a body here."]
EXPECTED_A = [r["reply"] for r in ROWS]
MULTI = dict(question=("title", "body"), answer="reply")



@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_loader_multi_column_question(tmp_path, fmt):
    write_rows(tmp_path / f"d.{fmt}", ROWS, fmt)
    examples, stats = load_examples(spec(f"d.{fmt}", **MULTI), tmp_path)
    assert [e.question for e in examples] == EXPECTED_Q
    assert [e.answer for e in examples] == EXPECTED_A
    assert [e.id for e in examples] == [ref_id(q) for q in EXPECTED_Q]
    assert (stats.rows_read, stats.dropped_empty, stats.dropped_duplicate, stats.kept) == (3, 0, 0, 3)


def test_json_wrapped_list_and_absolute_path(tmp_path):
    p = tmp_path / "sub" / "w.json"
    p.parent.mkdir()
    p.write_text(json.dumps({"train": ROWS}))
    examples, _ = load_examples(spec(str(p), **MULTI), tmp_path / "elsewhere")
    assert [e.question for e in examples] == EXPECTED_Q


def test_csv_quoted_commas_and_newlines(tmp_path):
    raw = (
        'id,Patient,Doctor\r\n'
        '1,"Hello, doctor, I cough","Rest, fluids\nand honey."\r\n'
        '2,"Line one\nline two","He said ""stop""."\r\n'
        '3,plain,plain answer\r\n'
    )
    (tmp_path / "c.csv").write_bytes(raw.encode("utf-8"))
    examples, stats = load_examples(spec("c.csv", question=("Patient",), answer="Doctor"), tmp_path)
    assert [(e.question, e.answer) for e in examples] == [
        ("Hello, doctor, I cough", "Rest, fluids\nand honey."),
        ("Line one\nline two", 'He said "stop".'),
        ("plain", "plain answer"),
    ]
    assert stats.rows_read == 3


def test_format_override_and_uppercase_suffix(tmp_path):
    (tmp_path / "rows.txt").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    examples, _ = load_examples(spec("rows.txt", fmt="jsonl", **MULTI), tmp_path)
    assert [e.question for e in examples] == EXPECTED_Q
    (tmp_path / "UP.JSON").write_text(json.dumps(ROWS))
    examples, _ = load_examples(spec("UP.JSON", **MULTI), tmp_path)
    assert len(examples) == 3


def test_non_string_values_become_text(tmp_path):
    rows = [{"q": 12, "a": 3.5}, {"q": "why?", "a": True}]
    (tmp_path / "n.json").write_text(json.dumps(rows))
    examples, _ = load_examples(spec("n.json"), tmp_path)
    assert [(e.question, e.answer) for e in examples] == [("12", "3.5"), ("why?", "True")]


# ---------------------------------------------------------------- dropping rows


def test_drops_empty_none_nan_and_duplicates_parquet(tmp_path):
    rows = [
        {"q": "What is flu?", "a": "A viral infection."},
        {"q": "What is gout?", "a": None},  # None answer
        {"q": "What is acne?", "a": float("nan")},  # NaN answer (parquet double column)
        {"q": "   ", "a": "orphan answer"},  # blank question
        {"q": "  what   IS flu? ", "a": "duplicate after normalising"},
        {"q": "What is anemia?", "a": "   "},  # blank answer
        {"q": None, "a": "no question"},
        {"q": "What is anemia?", "a": "Low haemoglobin."},  # first non-empty anemia row: kept
    ]
    answers = [r["a"] if isinstance(r["a"], str) else None for r in rows]  # NaN row -> null string
    table = pa.table({
        "q": pa.array([r["q"] for r in rows], pa.string()),
        "a": pa.array(answers, pa.string()),
        "a_num": pa.array([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0, 1.0, 1.0], pa.float64()),  # a real NaN
    })
    pq.write_table(table, tmp_path / "d.parquet")
    examples, stats = load_examples(spec("d.parquet"), tmp_path)
    assert [(e.question, e.answer) for e in examples] == [
        ("What is flu?", "A viral infection."),
        ("What is anemia?", "Low haemoglobin."),
    ]
    # rows 2, 3 (None from str column), 4, 6, 7 empty; row 5 duplicate
    assert (stats.rows_read, stats.dropped_empty, stats.dropped_duplicate, stats.kept) == (8, 5, 1, 2)

    examples, stats = load_examples(spec("d.parquet", answer="a_num"), tmp_path)
    # a_num: row 3 is NaN, rows 4 and 7 have no question; rows 5 and 8 repeat rows 1 and 6
    assert [e.question for e in examples] == ["What is flu?", "What is gout?", "What is anemia?"]
    assert (stats.dropped_empty, stats.dropped_duplicate, stats.kept) == (3, 2, 3)
    assert all(e.answer == "1.0" for e in examples)


def test_json_nan_literal_answer_dropped(tmp_path):
    (tmp_path / "n.json").write_text('[{"q": "a?", "a": NaN}, {"q": "b?", "a": "yes"}]')
    examples, stats = load_examples(spec("n.json"), tmp_path)
    assert [e.question for e in examples] == ["b?"] and stats.dropped_empty == 1


def test_all_rows_empty_is_an_error(tmp_path):
    (tmp_path / "e.jsonl").write_text('{"q": "", "a": "x"}\n{"q": "y", "a": null}\n')
    expect_dataset_error(spec("e.jsonl"), tmp_path, str(tmp_path / "e.jsonl"), "all 2 rows")


WS_TEXT = st.text(alphabet="aAbB \t\n", max_size=6)


@given(st.lists(st.tuples(WS_TEXT, st.one_of(st.none(), WS_TEXT)), min_size=1, max_size=25))
@settings(max_examples=60, deadline=None)
def test_property_cleaning_counts(pairs):
    expected, seen, empty, dup = [], set(), 0, 0
    for q, a in pairs:
        qs, as_ = q.strip(), (a or "").strip()
        if not qs or not as_:
            empty += 1
            continue
        norm = " ".join(qs.split()).lower()
        if norm in seen:
            dup += 1
            continue
        seen.add(norm)
        expected.append((qs, as_))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.jsonl"
        path.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in pairs))
        if not expected:
            with pytest.raises(DatasetError, match="all"):
                load_examples(spec("p.jsonl"), Path(d))
            return
        examples, stats = load_examples(spec("p.jsonl"), Path(d))
    assert [(e.question, e.answer) for e in examples] == expected
    assert [e.id for e in examples] == [ref_id(q) for q, _ in expected]
    assert (stats.rows_read, stats.dropped_empty, stats.dropped_duplicate, stats.kept) == (
        len(pairs), empty, dup, len(expected))
    assert stats.rows_read == stats.dropped_empty + stats.dropped_duplicate + stats.kept


def test_normalize():
    assert normalize("  What\tIS \n\n flu? ") == "what is flu?"
    assert normalize("") == ""


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("fmt, content", [
    ("json", "[]"), ("json", '{"train": []}'), ("jsonl", ""), ("jsonl", "\n\n  \n"), ("csv", ""), ("csv", "q,a\n"),
])
def test_empty_file(tmp_path, fmt, content):
    p = tmp_path / f"empty.{fmt}"
    p.write_text(content)
    expect_dataset_error(spec(p.name, name="emptyset"), tmp_path, str(p), "no rows", "emptyset")


def test_empty_parquet(tmp_path):
    p = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"q": pa.array([], pa.string()), "a": pa.array([], pa.string())}), p)
    expect_dataset_error(spec(p.name), tmp_path, str(p), "no rows")


def test_zero_byte_json_names_file(tmp_path):
    p = tmp_path / "zero.json"
    p.write_bytes(b"")
    expect_dataset_error(spec(p.name), tmp_path, str(p))


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_missing_column_names_row_column_and_file(tmp_path, fmt):
    rows = [{"q": "one?", "a": "1", "extra": "e"}, {"q": "two?", "a": "2", "extra": "e"},
            {"q": "three?", "a": "3", "extra": "e"}]
    if fmt in ("json", "jsonl"):
        del rows[2]["a"]  # only row 3 lacks the answer column
        expected_row = "row 3"
    else:  # tabular formats: the column is absent from the header, so row 1 already lacks it
        rows = [{k: v for k, v in r.items() if k != "a"} for r in rows]
        expected_row = "row 1"
    p = tmp_path / f"m.{fmt}"
    write_rows(p, rows, fmt)
    msg = expect_dataset_error(spec(p.name, name="myset"), tmp_path, str(p), expected_row, "'a'", "myset")
    assert "extra" in msg  # lists the columns the row does have


def test_missing_question_column_of_multi_column_mapping(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps([{"title": "t", "reply": "r"}]))
    expect_dataset_error(spec(p.name, **MULTI), tmp_path, str(p), "row 1", "'body'")


def test_jsonl_invalid_line_names_row(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"q": "a", "a": "b"}\n{"q": "c", "a": "d"}\n{"q": "e", "a": \n{"q": "f", "a": "g"}\n')
    expect_dataset_error(spec(p.name), tmp_path, str(p), "row 3", "invalid JSON")


def test_json_invalid_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n {"q": "a", "a": "b"},\n {"q": "c" "a": "d"}\n]\n')
    expect_dataset_error(spec(p.name), tmp_path, str(p), "line 3")


@pytest.mark.parametrize("content, kind", [('"just a string"', "str"), ('{"a": [], "b": []}', "dict"),
                                           ("42", "int")])
def test_json_not_a_list(tmp_path, content, kind):
    p = tmp_path / "x.json"
    p.write_text(content)
    expect_dataset_error(spec(p.name), tmp_path, str(p), "list", kind)


def test_row_not_an_object(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"q": "a", "a": "b"}\n["q", "a"]\n')
    expect_dataset_error(spec(p.name), tmp_path, str(p), "row 2", "list")


def test_unknown_suffix(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"PK\x03\x04")
    expect_dataset_error(spec(p.name), tmp_path, str(p), "'.xlsx'", "format")


def test_unknown_explicit_format(tmp_path):
    p = tmp_path / "data.json"
    p.write_text("[]")
    expect_dataset_error(spec(p.name, fmt="yaml"), tmp_path, str(p), "format")


def test_unknown_explicit_format_is_named(tmp_path):
    p = tmp_path / "data.json"
    p.write_text("[]")
    expect_dataset_error(spec(p.name, fmt="yaml"), tmp_path, str(p), "yaml")


def test_missing_file(tmp_path):
    expect_dataset_error(spec("absent.json", name="ghost"), tmp_path, str(tmp_path / "absent.json"), "ghost",
                         "not found")


def test_hub_only_dataset(tmp_path):
    s = DatasetSpec(name="hubby", file=None, question=("q",), answer="a", hub_id="org/data")
    expect_dataset_error(s, tmp_path, "hubby", "org/data", "'file'")


def test_corrupt_parquet(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"this is not parquet at all")
    expect_dataset_error(spec(p.name), tmp_path, str(p), "parquet")


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_non_utf8_file_is_a_dataset_error(tmp_path, fmt):
    p = tmp_path / f"latin.{fmt}"
    rows = [{"q": "fi\u00e8vre?", "a": "repos."}]
    text = {"json": json.dumps(rows, ensure_ascii=False), "jsonl": json.dumps(rows[0], ensure_ascii=False) + "\n",
            "csv": "q,a\nfi\u00e8vre?,repos.\n"}[fmt]
    p.write_bytes(text.encode("latin-1"))
    expect_dataset_error(spec(p.name), tmp_path, str(p))


def test_jsonl_row_numbers_consistent_with_blank_lines(tmp_path):
    p = tmp_path / "gaps.jsonl"
    p.write_text('{"q": "a", "a": "b"}\n\n{"q": "c"}\n')  # line 3 lacks the answer
    expect_dataset_error(spec(p.name), tmp_path, str(p), "row 3")


# ---------------------------------------------------------------- split


def ref_test_ids(examples: list[QAExample], cfg: SplitConfig) -> set[str]:
    ranks = sorted(examples, key=lambda e: hashlib.sha256(f"{cfg.seed}:{e.id}".encode()).hexdigest())
    return {e.id for e in ranks[: cfg.test_size]}


EXAMPLES = [ex(i) for i in range(50)]


def test_split_sizes_disjoint_and_smallest_hash():
    cfg = SplitConfig(test_size=12, seed=3)
    s = split(EXAMPLES, cfg)
    assert len(s.test) == 12 and len(s.train) == 38
    test_ids, train_ids = {e.id for e in s.test}, {e.id for e in s.train}
    assert not test_ids & train_ids
    assert test_ids | train_ids == {e.id for e in EXAMPLES}
    assert test_ids == ref_test_ids(EXAMPLES, cfg)
    assert [e.id for e in s.test] == sorted(test_ids)
    assert [e.id for e in s.train] == sorted(train_ids)


def test_split_deterministic_and_seed_dependent():
    a, b = split(EXAMPLES, SplitConfig(10, 0)), split(list(EXAMPLES), SplitConfig(10, 0))
    assert a.test == b.test and a.train == b.train and a.fingerprint() == b.fingerprint()
    c = split(EXAMPLES, SplitConfig(10, 1))
    assert {e.id for e in c.test} != {e.id for e in a.test}
    assert c.fingerprint() != a.fingerprint()


def test_split_fingerprint_sees_answers():
    changed = [QAExample(e.id, e.question, e.answer + " more") if i == 0 else e for i, e in enumerate(EXAMPLES)]
    assert split(changed, SplitConfig(10, 0)).fingerprint() != split(EXAMPLES, SplitConfig(10, 0)).fingerprint()


@pytest.mark.parametrize("size", [0, -1, 5, 6])
def test_split_test_size_bounds(size):
    with pytest.raises(MedQAError) as info:
        split(EXAMPLES[:5], SplitConfig(test_size=size), name="tinyset")
    assert isinstance(info.value, DatasetError)
    msg = str(info.value)
    assert "tinyset" in msg and f"test_size={size}" in msg and "5" in msg


def test_split_largest_valid_test_size():
    s = split(EXAMPLES[:5], SplitConfig(test_size=4))
    assert len(s.test) == 4 and len(s.train) == 1


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=40, unique=True).flatmap(
    lambda ids: st.tuples(st.just(ids), st.permutations(ids), st.integers(1, len(ids) - 1), st.integers(0, 5))))
@settings(max_examples=60, deadline=None)
def test_property_split_independent_of_order(args):
    ids, perm, test_size, seed = args
    cfg = SplitConfig(test_size=test_size, seed=seed)
    a = split([ex(i) for i in ids], cfg)
    b = split([ex(i) for i in perm], cfg)
    assert a.test == b.test and a.train == b.train and a.fingerprint() == b.fingerprint()
    assert {e.id for e in a.test} == ref_test_ids([ex(i) for i in ids], cfg)
    assert len(a.test) == test_size and len(a.train) == len(ids) - test_size


@given(st.lists(st.integers(0, 10_000), min_size=3, max_size=40, unique=True),
       st.lists(st.integers(10_001, 20_000), min_size=1, max_size=20, unique=True),
       st.integers(0, 3), st.data())
@settings(max_examples=60, deadline=None)
def test_property_adding_rows_keeps_test_membership(base_ids, new_ids, seed, data):
    test_size = data.draw(st.integers(1, len(base_ids) - 1))
    cfg = SplitConfig(test_size=test_size, seed=seed)
    base = [ex(i) for i in base_ids]
    grown = base + [ex(i) for i in new_ids]
    old_test = {e.id for e in split(base, cfg).test}
    new_test = {e.id for e in split(grown, cfg).test}
    base_set = {e.id for e in base}
    # no original training example ever moves into the test set
    assert (new_test & base_set) <= old_test
    # the originals still in test are exactly those inside the new smallest-hash set
    assert new_test & old_test == ref_test_ids(grown, cfg) & old_test
    # at most one original is pushed out per added row
    assert len(old_test - new_test) <= len(new_ids)
    assert len(new_test) == test_size


# ---------------------------------------------------------------- the real fixture datasets


def read_file_rows(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    return pq.read_table(path).to_pylist()


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or not str(v).strip()


PROFILE = load_profile("tiny")


@pytest.mark.parametrize("name", list(PROFILE.datasets))
def test_fixture_dataset_loads_without_unexpected_drops(name):
    dspec = PROFILE.datasets[name]
    path = PROFILE.data_dir / dspec.file
    rows = read_file_rows(path)
    empty = sum(1 for r in rows if _blank(r[dspec.answer]) or all(_blank(r[c]) for c in dspec.question))
    norms = [" ".join("\n".join(str(r[c]).strip() for c in dspec.question if not _blank(r[c])).split()).lower()
             for r in rows if not (_blank(r[dspec.answer]) or all(_blank(r[c]) for c in dspec.question))]
    dups = len(norms) - len(set(norms))
    examples, stats = load_examples(dspec, PROFILE.data_dir)
    assert stats.rows_read == len(rows)
    assert stats.dropped_empty == empty
    assert stats.dropped_duplicate == dups
    assert stats.kept == len(examples) == len(rows) - empty - dups
    assert len({e.id for e in examples}) == len(examples)
    if len(dspec.question) > 1:
        assert any("\n" in e.question for e in examples)
    s = load_split(dspec, PROFILE.data_dir, PROFILE.split)
    assert isinstance(s, Split) and dataclasses.replace(s.stats, leak={}) == stats
    assert s.stats.leak["test"] == len(s.test) and s.stats.leak["exact"] == 0
    assert len(s.test) == PROFILE.split.test_size
    assert len(s.train) == stats.kept - PROFILE.split.test_size
    assert not {e.id for e in s.test} & {e.id for e in s.train}


@given(st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=20))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_split_has_no_leak_after_load(questions):
    assume(len({normalize(q) for q in questions if q.strip()}) >= 2)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "q.json").write_text(json.dumps([{"q": q, "a": "ans"} for q in questions]))
        examples, _ = load_examples(spec("q.json"), Path(d))
    s = split(examples, SplitConfig(test_size=1))
    assert not {normalize(e.question) for e in s.test} & {normalize(e.question) for e in s.train}


# ---------------------------------------------------------------- row-stable split (test_fraction)


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=60, unique=True),
       st.lists(st.integers(10_001, 20_000), min_size=1, max_size=40, unique=True),
       st.floats(0.05, 0.95), st.integers(0, 3))
@settings(max_examples=80, deadline=None)
def test_property_fraction_split_never_moves_existing_rows(base_ids, new_ids, fraction, seed):
    cfg = SplitConfig(test_fraction=fraction, seed=seed)
    base = [ex(i) for i in base_ids]
    grown = [ex(i) for i in new_ids] + base[::-1]  # new rows first, originals reversed
    ref = {e.id for e in base + grown if int(hashlib.sha256(f"{seed}:{e.id}".encode()).hexdigest()[:16], 16) / 2**64 < fraction}
    try:
        old = split(base, cfg)
    except DatasetError:
        assume(False)  # every row on one side: no split to compare
    try:
        new = split(grown, cfg)
    except DatasetError:
        assume(False)
    base_set = {e.id for e in base}
    assert {e.id for e in new.test} & base_set == {e.id for e in old.test}
    assert {e.id for e in new.train} & base_set == {e.id for e in old.train}
    assert {e.id for e in new.test} == ref & {e.id for e in grown}
    assert [e.id for e in new.test] == sorted(e.id for e in new.test)


def test_fraction_split_size_close_to_fraction_and_bounds():
    examples = [ex(i) for i in range(2000)]
    s = split(examples, SplitConfig(test_fraction=0.1, seed=0))
    assert 150 < len(s.test) < 250 and len(s.test) + len(s.train) == 2000
    with pytest.raises(DatasetError, match="test_fraction=0.01 puts 0 of 3 rows"):
        split([ex(i) for i in (1, 2, 3)], SplitConfig(test_fraction=0.01, seed=0))


def test_split_config_defaults_and_positional_order():
    assert SplitConfig().test_size == 40 and SplitConfig().test_fraction is None
    assert SplitConfig(10, 3) == SplitConfig(test_size=10, seed=3)
    assert SplitConfig(test_fraction=0.2).test_size is None


# ---------------------------------------------------------------- strict reading: one-line errors naming file and line

def one_line_error(s: DatasetSpec, data_dir: Path, *fragments: str) -> str:
    msg = expect_dataset_error(s, data_dir, *fragments)
    assert "\n" not in msg, msg
    return msg


CSV_100 = "q,a\n" + "".join(f"question {i}?,answer {i}.\n" for i in range(100))  # row i on line i + 2


def test_csv_unmatched_quote_is_an_error_not_lost_rows(tmp_path):
    p = tmp_path / "quote.csv"
    p.write_text(CSV_100.replace("question 5?,", '"question 5?,'), encoding="utf-8")  # used to load as 6 rows
    one_line_error(spec(p.name), tmp_path, str(p), "line 7", "never closed", "line 101")


@pytest.mark.parametrize("raw, fragments", [
    ('q,a\nok?,yes.\n"x"y,z\n', ("line 3", "malformed")),  # text after a closing quote
    ('q,a\nok?,yes.\nonly one field\n', ("line 3", "1 fields", "has 2")),
    ('q,a\nok?,yes.\nx,y,z\n', ("line 3", "3 fields")),
    ('q,a\nok?,"runs on\nfine?,yes.\nnext",x\nlast?,no.\n', ("lines 2-4", "3 fields")),  # a quote closed rows later
])
def test_csv_malformed_records_name_the_line(tmp_path, raw, fragments):
    p = tmp_path / "bad.csv"
    p.write_bytes(raw.encode("utf-8"))
    one_line_error(spec(p.name), tmp_path, str(p), *fragments)


def test_csv_multiline_quoted_fields_and_blank_lines_still_load(tmp_path):
    p = tmp_path / "ok.csv"
    p.write_bytes(b'q,a\r\n\r\n"two\r\nlines?","say ""hi""\nthen go."\r\n\r\nplain?,plain.\r\n')
    examples, stats = load_examples(spec(p.name), tmp_path)
    assert [(e.question, e.answer) for e in examples] == [("two\r\nlines?", 'say "hi"\nthen go.'), ("plain?", "plain.")]
    assert stats.rows_read == 2


def test_csv_field_over_128_kib_loads(tmp_path):
    big = "word " * 60_000  # 300 KB, over csv's default field limit of 131072 characters
    write_rows(tmp_path / "big.csv", [{"q": "long?", "a": big}, {"q": "short?", "a": "ok."}], "csv")
    limit = csv.field_size_limit()
    examples, _ = load_examples(spec("big.csv"), tmp_path)
    assert [e.answer for e in examples] == [big.strip(), "ok."]
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_utf8_bom_is_accepted(tmp_path, fmt):
    plain = write_rows(tmp_path / f"plain.{fmt}", ROWS, fmt)
    bom = tmp_path / f"bom.{fmt}"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    expected = load_examples(spec(plain.name, **MULTI), tmp_path)
    assert load_examples(spec(bom.name, **MULTI), tmp_path) == expected


@pytest.mark.parametrize("fmt, where", [("jsonl", "line 2"), ("csv", "line 3"), ("json", "line 1")])
def test_invalid_utf8_names_file_and_line(tmp_path, fmt, where):
    p = tmp_path / f"bad.{fmt}"
    body = {"jsonl": b'{"q": "a?", "a": "b."}\n{"q": "why\xed\xa0\x80?", "a": "b."}\n',  # an encoded surrogate
            "csv": b"q,a\na?,b.\nwhy\xff?,b.\n", "json": b'[{"q": "why\xc3?", "a": "b."}]'}[fmt]
    p.write_bytes(body)
    one_line_error(spec(p.name), tmp_path, str(p), where, "UTF-8")


@pytest.mark.parametrize("fmt, body, where", [
    ("json", '[{"q": "a?", "a": "b."}, {"q": "why\\ud800?", "a": "b."}]', "row 2"),
    ("jsonl", '{"q": "a?", "a": "b."}\n\n{"q": "why?", "a": "\\udc00"}\n', "line 3"),
])
def test_lone_surrogate_names_file_and_row(tmp_path, fmt, body, where):
    p = tmp_path / f"s.{fmt}"
    p.write_text(body, encoding="utf-8")  # valid UTF-8: the surrogate is a JSON escape
    one_line_error(spec(p.name), tmp_path, str(p), where, "surrogate")


@pytest.mark.parametrize("fmt, body, fragments", [
    ("json", "[" * 100_000 + "]" * 100_000, ("nested too deeply",)),
    ("jsonl", '{"q": "a?", "a": "b."}\n{"q": ' + "[" * 100_000 + "]" * 100_000 + ', "a": "x"}\n',
     ("line 2", "nested too deeply")),
])
def test_deeply_nested_json_names_file(tmp_path, fmt, body, fragments):
    p = tmp_path / f"deep.{fmt}"
    p.write_text(body, encoding="utf-8")
    one_line_error(spec(p.name), tmp_path, str(p), *fragments)


# ---------------------------------------------------------------- length caps and cleaning

def test_row_far_over_the_cap_is_dropped_before_cleaning(tmp_path):
    from medqa_core.data.datasets import CLEANING_SLACK
    cap = 100
    rows = [{"q": "Hi doctor, one?", "a": "Hi. " + "x " * (cap + CLEANING_SLACK) + "Take care."},  # far over: not cleaned
            {"q": "Hi doctor, two?", "a": "Hi. " + "y" * (cap - 10) + ". Take care. Hope this helps."},  # cleaned under the cap
            {"q": "", "a": "z" * (cap + CLEANING_SLACK + 1)},  # empty question: counted as empty, as before
            {"q": "Hi doctor, four?", "a": "Short. Take care."}]
    (tmp_path / "c.json").write_text(json.dumps(rows))
    s = spec("c.json", clean=("question_greeting", "answer_greeting", "answer_signoff"), max_answer_chars=cap)
    examples, stats = load_examples(s, tmp_path)
    assert [e.question for e in examples] == ["Two?", "Four?"]
    assert (stats.dropped_too_long, stats.dropped_empty, stats.kept) == (1, 1, 2)
    # the dropped row is not cleaned: each rule counts only rows 2 and 4 (and row 3 for nothing)
    assert stats.cleaned == {"question_greeting": 2, "answer_greeting": 1, "answer_signoff": 2}
