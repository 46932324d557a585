"""Builders shared by the tests of every tier (importable as ``helpers``: pytest puts tests/, the
directory of tests/conftest.py, on sys.path). A test never imports another test module."""
from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medqa_core.metrics import METRICS
from medqa_core.results.history import History

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


# ---- records and run directories (tests/integration/test_merge.py, tests/unit/test_merge_status.py)

def merge_record(case_id: str, bert_f1: float = 0.5, gpu: str | None = None, status: str = "pass",
           profile: str = "tiny", data: str = "D", train_s: float = 60.0) -> dict:
    """One case record as a run directory holds it (the fields merge and history read)."""
    model, dataset = case_id.split("-", 1)
    return {
        "case_id": case_id, "model": model, "dataset": dataset, "profile": profile,
        "metrics": {**{m: 0.4 for m in METRICS}, "bert_f1": bert_f1},
        "resources": {"train_seconds": train_s, "peak_mem_mib": 1000.0},
        "identity": {"data": data, "test_ids": "T", "scorer": "S"},
        "provenance": {"git_sha": "abc123", "profile": profile,
                       "hardware": {"gpu": gpu, "gpu_count": 1 if gpu else None}},
        "verdict": {"status": status, "note": "", "checks": [],
                    "explain": f"{case_id}: {status}" + ("\n  [FAIL] bert_f1: planted" if status == "regression" else "")},
    }


def run_dir(root: Path, run_id: str, records: list[dict]) -> Path:
    """A run directory as a pytest session leaves it."""
    d = root / run_id
    d.mkdir(parents=True)
    for r in records:
        (d / f"{r['case_id']}.json").write_text(json.dumps(r, indent=1))
    (d / "aggregates.json").write_text("[]")
    (d / "summary.md").write_text("# summary\n")
    return d



# ---- the fake pipeline the plugin tests run (tests/integration/test_plugin.py, test_merge.py)

FAKE_CONFTEST = '''
import json, os
import pytest
from medqa_core import session
from medqa_core.train.finetune import TrainStats

pipeline = session.pipeline  # the module whose run_case the benchmark's session calls

# per seed, a score moves by JITTER x this pattern (seeds 0-4 average to seed 0's value):
# the baseline's K runs then have a spread, as real training runs do
PATTERN = (0.0, 1.0, -1.0, 0.5, -0.5)


@pytest.fixture(autouse=True)
def _fake_pipeline(monkeypatch):
    install(monkeypatch)


_session_patch = pytest.MonkeyPatch()


def pytest_collection_finish(session):
    """A case collected from a profile file is a plain item (no fixtures): patch for the run."""
    if any(not hasattr(item, "fixturenames") for item in session.items):
        install(_session_patch)


def pytest_sessionfinish(session):
    _session_patch.undo()


def install(monkeypatch):
    table = json.loads(open(os.environ["FAKE_SCORES"]).read())

    def fake(profile, model, dataset, ctx):
        cid = f"{model}-{dataset}"
        row = table[cid]
        if row.get("interrupt"):
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        if row.get("crash"):
            import signal
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies as under `kill -9` or the OOM killer
        if row.get("disk_full"):  # from here on, nothing under the results dir can be written
            import errno, pathlib
            real = pathlib.Path.write_text

            def full(self, *a, **k):
                if "results" in self.parts:
                    raise OSError(errno.ENOSPC, "No space left on device", str(self))
                return real(self, *a, **k)
            pathlib.Path.write_text = full
        seed = profile.train.seed
        shift = row.get("jitter", 0.004) * PATTERN[seed % 5]
        tuned = {m: v + shift for m, v in row["tuned"].items()}
        stats = TrainStats(train_seconds=row.get("train_seconds", 10.0), tokens_per_s=1000.0, tokens_seen=10000 + seed,
                           trainable_params=10, total_params=100, peak_mem_mib=row.get("mem", 100.0),
                           peak_mem_abs_mib=500.0, loss_first=3.0, loss_last=2.0, device=ctx.device)
        ids = ["a", "b", "c"]
        per = {"ids": ids, **{m: [tuned[m]] * 3 for m in tuned}}
        controls = {"base": {"metrics": row["base"], "per_example": {m: [v] * 3 for m, v in row["base"].items()}}}
        invariants = {"test_ids": "t3", "train_rows": 30, "train_steps": 5, "tokens_seen": 10000 + seed,
                      "trainable_params": 10, "train_test_overlap": 0, "scorer": {"name": "fake"}}
        return pipeline.RunResult(
            case_id=cid, model=model, dataset=dataset, profile=profile.name, seed=seed,
            metrics=tuned, base_metrics=row["base"], per_example=per, controls=controls, invariants=invariants,
            train=stats, cached={"train": False}, seconds={}, work={"train": row.get("train_work", 1.0)}, keys={},
            data={"fingerprint": "fp-" + dataset}, answers_sample=[])

    monkeypatch.setattr(pipeline, "run_case", fake)
'''


def write_fake_profile(tmp_path: Path, models: tuple[str, ...] = ("llama",)) -> Path:
    """The profile the fake-pipeline plugin tests run: tiny-config models, two datasets, the
    baseline at tmp_path/base.json (also used by tests/integration/test_merge.py)."""
    tokenizer = REPO_ROOT / "fixtures" / "tokenizer"
    tables = "".join(f'[models.{m}]\ntiny_config = {{}}\ntokenizer = "{tokenizer}"\n' for m in models)
    path = tmp_path / "prof.toml"
    path.write_text(f'''
name = "fake"
baseline = "{tmp_path / 'base.json'}"
data_dir = "{tmp_path}"
[gate]
metric_tolerance = {{ bert_f1 = 0.02 }}
require_beats_base = ["bert_f1"]
{tables}[datasets.wikidoc]
file = "w.json"
question = "q"
answer = "a"
[datasets.mental_health]
file = "m.json"
question = "q"
answer = "a"
''')
    return path




# ---- histories for the trend tests (tests/unit/test_trend_scale.py, test_analysis.py)

def trend_record(case_id: str, f1: float, gpu: str | None = None) -> dict:
    """A stored case record with the fields a trend reads (one run of 40 per-example scores)."""
    model, dataset = case_id.split("-", 1)
    return {"case_id": case_id, "model": model, "dataset": dataset,
            "metrics": {**{m: 0.4 for m in METRICS}, "bert_f1": f1},
            "resources": {"train_seconds": 60.0, "peak_mem_mib": 900.0},
            "identity": {"data": "D", "test_ids": "T", "scorer": "S"},
            "runs": [{"seed": 0, "per_example": {"bert_f1": [0.5] * 40}}],
            "provenance": {"hardware": {"gpu": gpu, "gpu_count": 1 if gpu else None}},
            "verdict": {"status": "pass", "checks": []}, "outcome": "passed"}


def bulk_history(path: Path, values: list[float], cases: tuple[str, ...] = ("llama-wikidoc",)) -> History:
    """A history with one run per value (every case at that bert_f1), written in one transaction."""
    h = History(path)
    h.runs()  # the schema
    con = sqlite3.connect(path)
    with con:
        for i, v in enumerate(values):
            rid = f"r{i:06d}"
            con.execute("INSERT INTO runs (run_id, created, profile, git_sha, hardware_class, meta) "
                        "VALUES (?,?,?,?,?,?)", (rid, 1e9 + i, "tiny", None, "cpu", "{}"))
            con.executemany("INSERT INTO cases (run_id, case_id, outcome, status, record) VALUES (?,?,?,?,?)",
                            [(rid, c, "passed", "pass", json.dumps(trend_record(c, v))) for c in cases])
    con.close()
    return h




def history_record(case_id: str = "llama-wikidoc", f1: float = 0.5) -> dict:
    """A passing case record as the history stores it (tests/unit/test_history_lock.py,
    test_history_retention.py)."""
    model, dataset = case_id.split("-", 1)
    return {"case_id": case_id, "model": model, "dataset": dataset,
            "metrics": {**{m: 0.4 for m in METRICS}, "bert_f1": f1},
            "resources": {"train_seconds": 10.0, "peak_mem_mib": 100.0},
            "provenance": {"git_sha": "abc", "hardware": {"gpu": None}},
            "verdict": {"status": "pass", "checks": []}, "outcome": "passed", "_path": "/x.json"}
