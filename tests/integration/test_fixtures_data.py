"""Checks on the committed synthetic fixtures and on their generator.

The fixtures are produced by ``fixtures/make_fixtures.py``; regenerate them with
``python fixtures/make_fixtures.py`` after changing it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
SCRIPT = FIXTURES / "make_fixtures.py"

EXPECTED: dict[str, tuple[str, tuple[str, ...], str, tuple[str, ...]]] = {
    # name: (path, columns, question column, answer columns)
    "wikidoc": ("data/wikidoc.json", ("instruction", "input", "output"), "input", ("output",)),
    "mental_health": ("data/mental_health.jsonl", ("Context", "Response"), "Context", ("Response",)),
    "medical_dataset": (
        "data/medical_dataset.parquet",
        ("input", "answer_chatdoctor", "answer_icliniq"),
        "input",
        ("answer_chatdoctor", "answer_icliniq"),
    ),
    "ai_medical_chatbot": (
        "data/ai_medical_chatbot.csv", ("Description", "Patient", "Doctor"), "Patient", ("Doctor",),
    ),
    "healthcaremagic": ("data/healthcaremagic.json", ("instruction", "input", "output"), "input", ("output",)),
}


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_fixtures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Return (column names, rows) using only the stdlib and pyarrow."""
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(rows, list)
        return list(rows[0]), rows
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return list(rows[0]), rows
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.column_names, table.to_pylist()
    raise AssertionError(path)


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_module()


@pytest.fixture(scope="module")
def all_rows() -> dict[str, list[dict[str, str]]]:
    return {name: load_rows(FIXTURES / spec[0])[1] for name, spec in EXPECTED.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_dataset_file(name: str) -> None:
    rel, columns, qcol, acols = EXPECTED[name]
    path = FIXTURES / rel
    assert path.is_file(), path
    names, rows = load_rows(path)
    assert tuple(names) == columns
    assert 300 <= len(rows) <= 600
    for row in rows:
        assert tuple(row) == columns
        assert all(isinstance(v, str) and v.strip() for v in row.values()), row
        assert len(row[qcol].split()) <= 40
        for acol in acols:
            assert len(row[acol].split()) <= 60
    questions = [" ".join(row[qcol].split()).lower() for row in rows]
    assert len(set(questions)) == len(questions)  # unique even after case/space normalisation


def test_csv_quoting_is_exercised() -> None:
    text = (FIXTURES / EXPECTED["ai_medical_chatbot"][0]).read_text(encoding="utf-8")
    assert '""' in text  # escaped quotes inside quoted fields
    _, rows = load_rows(FIXTURES / EXPECTED["ai_medical_chatbot"][0])
    assert any('"' in r["Patient"] and "," in r["Patient"] for r in rows)


def test_fixed_instructions(all_rows: dict[str, list[dict[str, str]]]) -> None:
    assert {r["instruction"] for r in all_rows["wikidoc"]} == {"Answer this question truthfully"}
    assert {r["instruction"] for r in all_rows["healthcaremagic"]} == {
        "If you are a doctor, please answer the medical questions based on the patient's description."
    }
    assert all(r["output"].startswith("Hello, thanks for your query.") for r in all_rows["healthcaremagic"])


def test_corpus_has_no_qa_text(all_rows: dict[str, list[dict[str, str]]]) -> None:
    corpus = (FIXTURES / "corpus" / "pretrain.txt").read_text(encoding="utf-8")
    lines = corpus.splitlines()
    # one paragraph per line: three sentence groups about one condition, or one general line
    assert 800 <= len(lines) <= 3000
    assert all(line.strip() for line in lines)
    for name, (_, _, qcol, acols) in EXPECTED.items():
        for row in all_rows[name]:
            for col in (qcol, *acols):
                assert row[col] not in corpus, (name, col, row[col])


def test_tokenizer_loads_offline() -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(FIXTURES / "tokenizer"), local_files_only=True)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 2048
    for text in (
        "Hi doctor, I have had wheezing and a tight chest for a month. What should I do?",
        "Hello, thanks for your query. It looks like gout. Take care.",
    ):
        ids = tok(text)["input_ids"]
        assert ids and all(i >= 4 for i in ids)
        assert tok.decode(ids) == text


def test_committed_rows_match_generator(gen: ModuleType, all_rows: dict[str, list[dict[str, str]]]) -> None:
    built = gen.build_datasets(gen.SEED)
    assert list(built) == list(EXPECTED)
    for name, rows in built.items():
        assert rows == all_rows[name], f"{name} is stale: rerun fixtures/make_fixtures.py"


def test_generator_is_deterministic(gen: ModuleType) -> None:
    a = gen.build_datasets(7)
    b = gen.build_datasets(7)
    c = gen.build_datasets(8)
    assert a == b
    for name in a:
        assert a[name] != c[name], name
    forbidden = gen.qa_texts(a)[:50]
    assert gen.build_corpus(7, forbidden) == gen.build_corpus(7, forbidden)
    assert gen.build_corpus(7, forbidden) != gen.build_corpus(8, forbidden)
