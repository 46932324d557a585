"""Our batched generation (length-sorted, left-padded batches, adapter merged, KV cache) gives
the same greedy answers as ``generate`` on one question at a time with the unmerged adapter."""
from __future__ import annotations

import dataclasses

import pytest

from benchmarks.plain import generate_one_by_one
from medqa_core.datasets import load_split
from medqa_core.generation import generate_answers
from medqa_core.models import build_tiny, load_tokenizer
from medqa_core.specs import REPO_ROOT, load_profile
from medqa_core.training import lora_config

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma", "phi"])
def test_batched_merged_equals_one_by_one_unmerged(family):
    from peft import PeftModel, get_peft_model

    prof = load_profile("tiny")
    tok = load_tokenizer(REPO_ROOT / "fixtures" / "tokenizer")
    spec = prof.models[family]
    base = build_tiny(spec, tok, seed=1)
    with torch.no_grad():
        # A random model's first pick is often EOS; keep EOS out of reach so answers run long
        # and every step of the KV cache and of the left padding is exercised.
        base.get_output_embeddings().weight[tok.eos_token_id].zero_()
        bias = getattr(base.get_output_embeddings(), "bias", None)
        assert bias is None
    model = get_peft_model(base, lora_config(spec, prof.train))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    data = load_split(prof.datasets["ai_medical_chatbot"], prof.data_dir, prof.split)
    questions = [e.question for e in data.test[:12]]
    assert len({len(q) for q in questions}) > 6, "prompts of many lengths, so batches are padded"
    cfg = dataclasses.replace(prof.generation, max_new_tokens=24, batch_size=5)

    plain = generate_one_by_one(model, tok, questions, cfg)
    assert isinstance(model, PeftModel)
    merged = model.merge_and_unload()
    ours = generate_answers(merged, tok, questions, cfg)
    assert sum(len(a) > 20 for a in plain) >= 8, plain
    assert ours == plain
