"""Our batched generation (length-sorted, left-padded batches, adapter merged, KV cache) gives
the same greedy answers as ``generate`` on one question at a time with the unmerged adapter.

``benchmarks/plain.py`` builds its prompts, training rows, batches and LoRA config on its own
(it imports nothing from ``medqa_core``); the checks below hold those equal to the package's, so
the speed benchmark's plain loop trains on the same batches, and a change on either side shows."""
from __future__ import annotations

import dataclasses

import pytest
from helpers import REPO_ROOT

from benchmarks import plain
from benchmarks.plain import generate_one_by_one
from medqa_core.data.split import load_split
from medqa_core.model.bases import load_tokenizer
from medqa_core.model.generation import generate_answers
from medqa_core.model.params import lora_config
from medqa_core.model.pretrain import build_tiny
from medqa_core.model.prompts import add_special_tokens, build_prompt, training_rows
from medqa_core.profile import load_profile
from medqa_core.train.lean import batch_order, collate, encode_rows

# A minimal chat template for the fixture tokenizer (which has none), to cover the chat path.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma", "phi"])
def test_batched_merged_equals_one_by_one_unmerged(family):
    torch = pytest.importorskip("torch")
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

    plain_answers = generate_one_by_one(model, tok, questions, cfg)
    assert isinstance(model, PeftModel)
    merged = model.merge_and_unload()
    ours = generate_answers(merged, tok, questions, cfg)
    assert sum(len(a) > 20 for a in plain_answers) >= 8, plain_answers
    assert ours == plain_answers


@pytest.mark.parametrize(("n", "batch_size", "steps", "seed"),
                         [(40, 8, 200, 0), (10, 3, 20, 0), (7, 8, 5, 3), (33, 4, 50, 42), (5, 5, 1, 1)])
def test_plain_batch_order_equals_package(n, batch_size, steps, seed):
    """The Trainer's seeded sampler (accelerate, reseeded per epoch; short last batch kept) vs
    the package's re-implementation of it, over several epochs."""
    ours = batch_order(n, batch_size, steps, seed)
    assert plain.batch_order(n, batch_size, steps, seed) == ours
    assert len(ours) == steps and all(0 < len(b) <= batch_size for b in ours)


@pytest.mark.parametrize("chat", [False, True], ids=["plain-layout", "chat-template"])
def test_plain_prompts_and_training_batches_equal_package(chat):
    torch = pytest.importorskip("torch")
    prof = load_profile("tiny")
    tok = load_tokenizer(REPO_ROOT / "fixtures" / "tokenizer")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    pairs = []
    for dspec in prof.datasets.values():
        split = load_split(dspec, prof.data_dir, prof.split)
        pairs += [(e.question, e.answer) for e in split.train[:20] + split.test[:4]]
    pairs.append((pairs[0][0], " ".join([pairs[0][1]] * 20)))  # longer than max_length: truncated
    max_length = prof.train.max_length

    for q, _ in pairs:
        assert plain.prompt_text(tok, q) == build_prompt(tok, q)
        assert plain.prompt_ids(tok, q) == tok(build_prompt(tok, q), add_special_tokens=add_special_tokens(tok))["input_ids"]
    ours = encode_rows(tok, training_rows(tok, pairs), max_length)
    mine = [plain.training_example(tok, q, a, max_length) for q, a in pairs]
    assert mine == ours
    assert len(mine[-1][0]) == max_length
    if not chat:
        assert mine[0][0][-1] == tok.eos_token_id and mine[0][1][-1] == tok.eos_token_id

    for idx in batch_order(len(mine), 8, 6, prof.train.seed):
        a = plain.pad_batch([mine[i] for i in idx], tok.pad_token_id)
        b = collate([ours[i] for i in idx], tok.pad_token_id, packing=False)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k

    for spec in prof.models.values():
        assert plain.lora_config(spec, prof.train).to_dict() == lora_config(spec, prof.train).to_dict()


def test_cpu_bf16_decodes_under_autocast_only_where_native(monkeypatch):
    """``[generation] cpu_bf16``: refused (one line naming the section) on a CPU without native
    bf16, never emulated; where allowed, decoding runs under bf16 autocast and the settings (an
    exact invariant of the gate) say so, so bf16 answers never pass for fp32 ones."""
    torch = pytest.importorskip("torch")
    from medqa_core import resources
    from medqa_core.errors import TrainingError

    prof = load_profile("tiny")
    tok = load_tokenizer(REPO_ROOT / "fixtures" / "tokenizer")
    model = build_tiny(prof.models["llama"], tok, seed=1)
    questions = ["What is anaemia?", "How is a sprain treated?"]
    cfg = dataclasses.replace(prof.generation, max_new_tokens=6, batch_size=2, cpu_bf16=True)
    monkeypatch.setattr(resources, "native_cpu_bf16", lambda: False)
    with pytest.raises(TrainingError, match=r"\[generation\] cpu_bf16"):
        generate_answers(model, tok, questions, cfg)
    monkeypatch.setattr(resources, "native_cpu_bf16", lambda: True)  # autocast runs anywhere; speed needs native
    seen: list[torch.dtype] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    settings: dict = {}
    answers = generate_answers(model, tok, questions, cfg, settings=settings)
    hook.remove()
    assert len(answers) == 2 and settings["autocast"] == "bfloat16" and set(seen) == {torch.bfloat16}
    fp32: dict = {}
    generate_answers(model, tok, questions, dataclasses.replace(cfg, cpu_bf16=False), settings=fp32)
    assert "autocast" not in fp32 and {k: v for k, v in settings.items() if k != "autocast"} == fp32
