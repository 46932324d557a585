"""The reference answers' likelihood (``[gate] answer_nll``): the batched, padded measure equals
transformers' own loss on one pair at a time; prompts that fill the token limit still get answer
tokens scored; the stage is cached and keyed; the gate judges it lower-is-better and only where
the baseline has it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import REPO_ROOT

from medqa_core import gate
from medqa_core.data.split import load_split
from medqa_core.model.bases import load_tokenizer
from medqa_core.model.params import lora_config
from medqa_core.model.pretrain import build_tiny
from medqa_core.model.prompts import training_rows
from medqa_core.profile import load_profile
from medqa_core.specs import GateConfig
from medqa_core.train.lean import encode_rows
from medqa_core.train.nll import MIN_ANSWER_TOKENS, encode_pairs, reference_nll


def _tiny(family: str = "llama"):
    torch = pytest.importorskip("torch")
    from peft import get_peft_model

    prof = load_profile("tiny")
    tok = load_tokenizer(REPO_ROOT / "fixtures" / "tokenizer")
    spec = prof.models[family]
    model = get_peft_model(build_tiny(spec, tok, seed=1), lora_config(spec, prof.train))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a non-zero adapter, so the LoRA path counts
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    data = load_split(prof.datasets["ai_medical_chatbot"], prof.data_dir, prof.split)
    return torch, prof, tok, model, [(e.question, e.answer) for e in data.test[:10]]


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_batched_nll_equals_the_library_loss_one_pair_at_a_time(family):
    """Independent path: ``model(input_ids, labels=...)`` on each pair alone, unpadded, is
    transformers' mean cross-entropy over the answer tokens; ours batches right-padded rows."""
    torch, prof, tok, model, pairs = _tiny(family)
    assert len({len(q) + len(a) for q, a in pairs}) > 5, "pairs of many lengths, so batches are padded"
    ours = reference_nll(model, tok, pairs, prof.train.max_length, False, "cpu", batch_size=4)
    model.eval()
    for (ids, labels), value in zip(encode_rows(tok, training_rows(tok, pairs), prof.train.max_length), ours, strict=True):
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert value == pytest.approx(float(loss), abs=2e-5)
    assert len(ours) == len(pairs) and len(set(ours)) > 1


def test_a_prompt_that_fills_the_limit_still_scores_answer_tokens():
    _, prof, tok, _, pairs = _tiny()
    question, answer = pairs[0]
    long_q = " ".join([question] * 40)
    [(full, full_labels)] = encode_rows(tok, training_rows(tok, [(long_q, answer)]), 10_000)
    prompt_len = next(i for i, t in enumerate(full_labels) if t != -100)
    assert prompt_len >= 32  # the prompt alone reaches the limit
    [(ids, labels)] = encode_pairs(tok, [(long_q, answer)], 32)
    assert len(ids) == len(labels) == 32  # never past the limit
    # the prompt's last 16 tokens, then the answer's first 16, as in the whole pair
    window = slice(prompt_len + MIN_ANSWER_TOKENS - 32, prompt_len + MIN_ANSWER_TOKENS)
    assert ids == full[window] and labels == full_labels[window]
    assert sum(t != -100 for t in labels) == MIN_ANSWER_TOKENS
    [(short_ids, _)] = encode_pairs(tok, [pairs[1]], 10_000)
    assert short_ids == encode_rows(tok, training_rows(tok, [pairs[1]]), 10_000)[0][0]  # otherwise as training


def test_nll_falls_when_the_adapter_learns_the_references():
    """Direction: a few optimizer steps of the adapter on the test pairs themselves (the library's
    own loss) lower their measured NLL; the measure reads the adapter it is given."""
    torch, prof, tok, model, pairs = _tiny()
    before = np.mean(reference_nll(model, tok, pairs, prof.train.max_length, False, "cpu"))
    rows = encode_rows(tok, training_rows(tok, pairs), prof.train.max_length)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(15):
        for ids, labels in rows:
            opt.zero_grad()
            model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()
            opt.step()
    after = np.mean(reference_nll(model, tok, pairs, prof.train.max_length, False, "cpu"))
    assert after < before - 0.2  # measured: 7.68 -> 7.19 nats


def _case(values: list[float]) -> dict:
    runs = [{"seed": s, "metrics": {"bert_f1": 0.5, "answer_nll": v}} for s, v in enumerate(values)]
    return {"metrics": {"bert_f1": 0.5, "answer_nll": float(np.mean(values))}, "runs": runs}


def test_gate_judges_answer_nll_lower_is_better_and_only_when_the_baseline_has_it():
    base = _case([2.000, 2.004, 1.996, 2.003, 1.997])
    cfg = GateConfig(require_controls=(), alpha=0.001, prior_sd={"bert_f1": 0.01}, prior_df=8)

    def judge(nll: float, baseline: dict = base) -> gate.Verdict:
        run = {"seed": 0, "metrics": {"bert_f1": 0.5, "answer_nll": nll}}
        return gate.judge_case("c", [run], baseline, {"c": baseline}, cfg, {})

    assert judge(2.001).status == "pass"
    worse = judge(2.15)
    check = next(c for c in worse.checks if c.name == "answer_nll")
    assert worse.status == "regression" and not check.passed and check.direction == "up"
    assert judge(1.85).status == "changed"  # two-sided: a fall beyond the band changed the recipe
    one_sided = dataclasses.replace(cfg, one_sided=("answer_nll",))
    run = {"seed": 0, "metrics": {"bert_f1": 0.5, "answer_nll": 1.85}}
    assert gate.judge_case("c", [run], base, {"c": base}, one_sided, {}).status == "improvement"
    old = {"metrics": {"bert_f1": 0.5}, "runs": [{"seed": s, "metrics": {"bert_f1": 0.5}} for s in range(5)]}
    assert not any(c.name == "answer_nll" for c in judge(9.0, old).checks)  # not recorded: not judged


def test_answer_nll_must_be_a_bool(tmp_path):
    from medqa_core.errors import ConfigError

    src = (REPO_ROOT / "profiles" / "tiny.toml").read_text()
    path = tmp_path / "p.toml"
    path.write_text(src.replace("[gate]", "[gate]\nanswer_nll = \"yes\"", 1))
    with pytest.raises(ConfigError, match=r"answer_nll"):
        load_profile(str(path))
