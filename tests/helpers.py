"""Small helpers shared by the unit tests (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: the repository root (tests read its profiles/, fixtures/ and baselines/ links)
REPO_ROOT = Path(__file__).resolve().parents[1]

# The smallest valid profile: one tiny model, one dataset.
MINIMAL_PROFILE = """\
name = "mine"

[models.llama]
tiny_config = { hidden_size = 8, num_hidden_layers = 1 }

[datasets.d1]
file = "d1.json"
question = "q"
answer = "a"
"""


# One tiny case (a 2-layer llama, 3 pretraining and 3 training steps, 4 test questions) on the
# fixture data: fast enough for tests that run the whole pipeline in a subprocess.
TINY_CASE_PROFILE = """
name = "{name}"
data_dir = "{repo}/fixtures/data"
baseline = "{tmp}/baseline.json"
[pretrain]
corpus = "{repo}/fixtures/corpus/pretrain.txt"
steps = 3
batch_size = 2
block_size = 32
[train]
steps = 3
batch_size = 2
max_length = 64
trainer = "lean"
[generation]
max_new_tokens = 4
batch_size = {gen_batch}
[split]
test_size = 4
[models.llama]
tokenizer = "{repo}/fixtures/tokenizer"
tiny_config = {{ hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1, max_position_embeddings = 128, tie_word_embeddings = true }}
[datasets.wikidoc]
file = "wikidoc.json"
question = "input"
answer = "output"
"""


def tiny_case_profile(name: str, repo: Path, tmp: Path, gen_batch: int = 4) -> str:
    return TINY_CASE_PROFILE.format(name=name, repo=repo, tmp=tmp, gen_batch=gen_batch)


def small_tiny_llama(tmp_path_factory) -> tuple[str, object, int]:
    """A 2-layer, 64-wide tiny llama saved with its tokenizer: (directory, spec, parameter count)."""
    import dataclasses

    from medqa_core.model.bases import load_tokenizer
    from medqa_core.model.pretrain import build_tiny
    from medqa_core.profile import load_profile

    prof = load_profile("tiny")
    spec = prof.models["llama"]
    tok = load_tokenizer(prof.resolve(spec.tokenizer))
    small = dataclasses.replace(spec, tiny_config={**spec.tiny_config, "hidden_size": 64, "intermediate_size": 128,
                                                   "num_hidden_layers": 2})
    model = build_tiny(small, tok, seed=0)
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d), small, sum(p.numel() for p in model.parameters())


def expect_error(fn, cls: type, *fragments: str) -> str:
    """Call ``fn``; it must raise a MedQAError of class ``cls`` whose message holds every fragment."""
    import pytest

    from medqa_core.errors import MedQAError

    with pytest.raises(MedQAError) as info:
        fn()
    assert isinstance(info.value, cls), type(info.value)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def write_rows(path: Path, rows: list[dict], fmt: str) -> Path:
    """Write ``rows`` as json (a list), jsonl, csv or parquet."""
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:  # pragma: no cover
        raise AssertionError(fmt)
    return path
