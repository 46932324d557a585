"""Cache corruption (issue 12, "done means"): one byte flipped in each kind of cache entry (base,
adapter, answers, scores) is detected on the next run (a warning naming the entry), the entry is
rebuilt, and the case's scores come out as before.

The real pipeline runs one tiny case (llama-wikidoc) with its cache in tmp_path. The tiny
profile's shipped bases are fixture files, not cache entries, so this case pretrains its base
(``checkpoint`` dropped, a short pretraining) to have a ``base`` entry; training and the test
split are shortened too. Every stage is the real code.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from medqa_core import pipeline
from medqa_core.cache import META, Cache
from medqa_core.profile import load_profile

# slow by location (tests/conftest.py): ~1-3 minutes on 2 cores: the nightly CPU job runs it


def _small_tiny_profile():
    p = load_profile("tiny")
    llama = dataclasses.replace(p.models["llama"], checkpoint=None)
    return dataclasses.replace(
        p, models={"llama": llama},
        pretrain=dataclasses.replace(p.pretrain, steps=40),
        train=dataclasses.replace(p.train, steps=30),
        split=dataclasses.replace(p.split, test_size=16),
    )


def _entries(cache: Cache, kind: str) -> list[Path]:
    return sorted(p for p in (cache.root / kind).glob("*/*") if p.is_dir() and (p / META).is_file())


def _flip_one_byte(entry: Path) -> str:
    """Flip one bit of one byte in the middle of the entry's largest file (same size, same mtime
    resolution aside); returns the file's name."""
    files = json.loads((entry / META).read_text())["files"]
    rel = max(files, key=lambda r: files[r][0])
    f = entry / rel
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    return rel


def _scores(r: pipeline.RunResult) -> dict:
    return {"metrics": r.metrics, "base_metrics": r.base_metrics, "per_example": r.per_example,
            "controls": r.controls, "canary": r.invariants["scorer_canary"]}


def test_flipped_byte_in_each_kind_of_entry_is_detected_rebuilt_and_scores_unchanged(tmp_path, caplog):
    profile = _small_tiny_profile()
    ctx = pipeline.RunContext(cache=Cache(tmp_path / "cache"), device="cpu")
    first = pipeline.run_case(profile, "llama", "wikidoc", ctx)
    assert not any(first.cached.values())  # cold: every stage built
    assert first.base_metrics["bert_f1"] > 0  # real answers to compare
    base_f1 = first.controls["base"]["per_example"]["bert_f1"]  # rounded to 1e-6

    cache = ctx.cache
    targets = {
        "base": cache.path_for("base", first.keys["base"]),
        "adapter": cache.path_for("adapter", first.keys["adapter"]),
        # the base model's answers and their scores: rebuilding them regenerates and rescores
        # real text (this short recipe's tuned model answers little)
        "answers": cache.path_for("answers", first.keys["answers_base"]),
        "scores": next(p for p in _entries(cache, "scores")
                       if [round(x, 6) for x in json.loads((p / "scores.json").read_text())["bert_f1"]] == base_f1),
    }
    for kind, entry in targets.items():
        assert entry.is_dir(), kind
        _flip_one_byte(entry)

    caplog.clear()
    with caplog.at_level("WARNING", logger="medqa_core.cache"):
        second = pipeline.run_case(profile, "llama", "wikidoc", ctx)
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    for kind, entry in targets.items():
        named = [w for w in warnings if f"{kind}/{entry.name[:12]}" in w]
        assert len(named) == 1, (kind, warnings)
        assert "sha256" in named[0]
    assert len(warnings) == len(targets), warnings
    # rebuilt, not served: the stages that read the damaged entries were built again
    assert second.cached["train"] is False and second.cached["generate_base"] is False
    assert second.keys == first.keys  # same inputs, same entries
    assert _scores(second) == _scores(first)

    # and the rebuilt entries are sound: a third run serves every stage from the cache
    caplog.clear()
    with caplog.at_level("WARNING", logger="medqa_core.cache"):
        third = pipeline.run_case(profile, "llama", "wikidoc", ctx)
    assert not any("damaged" in r.getMessage() for r in caplog.records)
    assert all(third.cached.values()), third.cached
    assert _scores(third) == _scores(first)
    assert not list(cache.root.glob("*/*/.*-*"))  # no temporary build directory left behind
