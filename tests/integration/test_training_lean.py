"""The lean trainer and padding-free packing, on randomly initialised tiny models (no pretraining).

- packed (one row, position ids restarting per example, no mask) and padded batches give the
  same loss, for every family (their attention masks differ: sliding window, soft-capping,
  fused qkv);
- the lean trainer tokenizes rows exactly as trl's SFTTrainer does;
- pad fraction is recorded, and packing brings it to zero;
- batches follow a seeded per-epoch permutation.
"""
from __future__ import annotations

import dataclasses

import pytest
from helpers import REPO_ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.data.split import load_split
from medqa_core.model.bases import load_tokenizer
from medqa_core.model.params import lora_config
from medqa_core.model.pretrain import build_tiny
from medqa_core.model.prompts import training_rows
from medqa_core.profile import load_profile
from medqa_core.train.finetune import fine_tune
from medqa_core.train.lean import batch_order, collate, encode_rows


@pytest.fixture(scope="module")
def prof():
    return load_profile("tiny")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(REPO_ROOT / "fixtures" / "tokenizer")


@pytest.fixture(scope="module")
def data(prof):
    return load_split(prof.datasets["wikidoc"], prof.data_dir, prof.split)


@pytest.fixture(scope="module")
def examples(tok, data):
    return encode_rows(tok, training_rows(tok, [(e.question, e.answer) for e in data.train]), 128)


def _peft(prof, family, tok, seed=0):
    torch = pytest.importorskip("torch")
    from peft import get_peft_model

    spec = prof.models[family]
    model = get_peft_model(build_tiny(spec, tok, seed), lora_config(spec, prof.train))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a non-zero adapter, so it takes part in the loss
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma", "phi"])
def test_packed_loss_equals_padded_loss(prof, tok, examples, family):
    torch = pytest.importorskip("torch")
    model = _peft(prof, family, tok)
    batch = [examples[i] for i in (0, 5, 9, 13, 21, 30, 2, 17)]
    assert len({len(a) for a, _ in batch}) > 3, "rows of different lengths, so padding happens"
    with torch.no_grad():
        padded = model(**collate(batch, tok.pad_token_id, packing=False), use_cache=False).loss.item()
        packed = model(**collate(batch, tok.pad_token_id, packing=True), use_cache=False).loss.item()
        # sanity: without position ids the packed row attends across examples and the loss moves
        flat = collate(batch, tok.pad_token_id, packing=True)
        leaky = model(input_ids=flat["input_ids"], labels=flat["labels"], use_cache=False).loss.item()
    assert packed == pytest.approx(padded, rel=1e-5, abs=1e-5)
    assert abs(leaky - padded) > max(5e-5, 10 * abs(packed - padded))


def test_collate_pad_counts(tok, examples):
    batch = examples[:8]
    real = sum(len(a) for a, _ in batch)
    padded = collate(batch, tok.pad_token_id, packing=False)
    packed = collate(batch, tok.pad_token_id, packing=True)
    assert int(padded["attention_mask"].sum()) == real
    assert padded["input_ids"].numel() > real  # this batch has rows of different lengths
    assert packed["input_ids"].numel() == real and packed["input_ids"].shape[0] == 1
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 8 and all(packed["labels"][0, s] == -100 for s in starts)
    # labels line up: the completion tokens of each example are the same in both layouts
    assert sorted(padded["labels"][padded["labels"] != -100].tolist()) == sorted(
        packed["labels"][packed["labels"] != -100].tolist())


def test_encode_rows_matches_trl(tok, data, prof):
    """Our tokenization equals what SFTTrainer trains on (ids and completion-only labels)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = training_rows(tok, [(e.question, e.answer) for e in data.train[:12]])
    spec = prof.models["llama"]
    tok.padding_side = "right"
    try:
        trainer = SFTTrainer(model=build_tiny(spec, tok, 0),
                             args=SFTConfig(output_dir="/tmp/unused-medqa", max_length=40, use_cpu=True, report_to="none",
                                            save_strategy="no"),
                             train_dataset=Dataset.from_list(rows), processing_class=tok)
    finally:
        tok.padding_side = "left"
    ours = encode_rows(tok, rows, 40)
    theirs = trainer.train_dataset
    for (ids, labels), row in zip(ours, theirs):
        assert ids == list(row["input_ids"])
        if "labels" in row:  # trl 1.16 turns the completion mask into labels
            assert labels == list(row["labels"])
        else:
            assert labels == [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"])]
        assert labels[0] == -100 and labels[-1] != -100 or len(ids) == 40
    assert any(len(ids) == 40 for ids, _ in ours), "some rows are truncated at max_length"


def test_batch_order_is_seeded_epochs():
    a = batch_order(20, 8, 7, seed=3)
    assert a == batch_order(20, 8, 7, seed=3) and a != batch_order(20, 8, 7, seed=4)
    assert [len(b) for b in a] == [8, 8, 4, 8, 8, 4, 8]
    assert sorted(i for b in a[:3] for i in b) == list(range(20))


@pytest.mark.parametrize("packing", [False, True])
def test_lean_fine_tune_records_pad_fraction(prof, tok, data, tmp_path, packing):
    spec = prof.models["llama"]
    cfg = dataclasses.replace(prof.train, steps=6, trainer="lean", packing=packing)
    stats = fine_tune(build_tiny(spec, tok, 0), tok, spec, data.train, cfg, tmp_path / "a", "cpu")
    assert stats.trainer == "lean" and stats.tokens_seen > 0
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    if packing:
        assert stats.pad_fraction < 0.05
    else:
        assert 0.05 < stats.pad_fraction < 0.9
    assert tok.padding_side == "left"


def test_packed_training_follows_padded_training(prof, tok, data, tmp_path):
    """Same rows, batches and seed: the packed run's logged losses track the padded run's."""
    spec = prof.models["mistral"]
    runs = {}
    for packing in (False, True):
        cfg = dataclasses.replace(prof.train, steps=10, trainer="lean", packing=packing)
        runs[packing] = fine_tune(build_tiny(spec, tok, 0), tok, spec, data.train, cfg, tmp_path / str(packing), "cpu")
    assert runs[True].loss_first == pytest.approx(runs[False].loss_first, abs=1e-3)
    assert runs[True].loss_last == pytest.approx(runs[False].loss_last, abs=1e-3)
    assert runs[True].tokens_seen == runs[False].tokens_seen


@given(st.integers(1, 12), st.floats(0.01, 1.0), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_property_tail_average_is_the_mean_of_the_last_iterates(steps, fraction, seed):
    """TailAverage against an independent mean: the weights after each of the last
    round(fraction x steps) steps (at least one), averaged with numpy."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from medqa_core.train.lean import TailAverage

    gen = torch.Generator().manual_seed(seed)
    params = [torch.zeros(3, 2), torch.zeros(5)]
    tail = TailAverage(params, steps, fraction)
    seen = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=gen))
        seen.append([p.clone().numpy().astype(np.float64) for p in params])
        tail.update(step)
    k = max(1, int(fraction * steps + 0.5))  # rounded half up (positive numbers: int truncates)
    tail.apply()
    assert tail.count == k
    for i, p in enumerate(params):
        want = np.mean([s[i] for s in seen[-k:]], axis=0)
        np.testing.assert_allclose(p.numpy(), want, rtol=0, atol=1e-6)


def test_tail_average_of_one_step_is_the_last_step_and_of_more_is_not(prof, tok, data, tmp_path):
    from safetensors.torch import load_file

    spec = prof.models["llama"]
    adapters = {}
    for tail in (0.0, 0.2, 0.5):  # 0.2 of 5 steps: one step averaged, i.e. the last step's weights
        cfg = dataclasses.replace(prof.train, steps=5, trainer="lean", average_tail=tail)
        stats = fine_tune(build_tiny(spec, tok, 0), tok, spec, data.train, cfg, tmp_path / str(tail), "cpu")
        adapters[tail] = load_file(str(tmp_path / str(tail) / "adapter_model.safetensors"))
        want = {0.0: 0, 0.2: 1, 0.5: 3}[tail]  # 2.5 steps round half up to 3
        assert stats.recipe["applied"]["average_tail_steps"] == stats.recipe["asked"]["average_tail_steps"] == want
    assert all(adapters[0.2][k].equal(v) for k, v in adapters[0.0].items())
    assert any(not adapters[0.5][k].equal(v) for k, v in adapters[0.0].items() if "lora_B" in k)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma", "phi"])
@pytest.mark.parametrize("packing", [False, True])
def test_answer_logits_only_give_the_full_loss_and_its_gradients(prof, tok, examples, family, packing):
    """``step_loss`` with the LM head at the supervised positions only against the model's own
    loss over every position: the same loss, and gradients equal to the last bit on every LoRA
    weight (each kept token's gradient does not depend on the others; a skipped one's is zero)."""
    pytest.importorskip("torch")
    from medqa_core.train.lean import keeps_answer_logits, step_loss

    model = _peft(prof, family, tok)
    assert keeps_answer_logits(model), f"{family}: the lever is off for a shipped family"
    batch = collate([examples[i] for i in (0, 5, 9, 13, 21, 30, 2, 17)], tok.pad_token_id, packing)
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < supervised < batch["labels"].numel() - 1, "a batch with prompt positions to skip"
    grads = {}
    losses = {}
    for answers_only in (False, True):
        model.zero_grad(set_to_none=True)
        loss = step_loss(model, batch, answers_only)
        loss.backward()
        losses[answers_only] = loss.item()
        grads[answers_only] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 0
    diff = max(float((grads[True][n] - g).abs().max()) for n, g in grads[False].items())
    assert diff == 0.0, f"{family}: largest gradient difference {diff:.3e}"


def test_answer_logits_only_off_for_a_forward_without_the_mask(prof, tok, monkeypatch):
    """The full loss path for a forward without ``logits_to_keep``, for one that takes it in a
    module without transformers' slicer, and for a slicer that takes positions, not a mask."""
    torch = pytest.importorskip("torch")
    import sys

    from medqa_core.train.lean import keeps_answer_logits

    class Plain(torch.nn.Module):
        def forward(self, input_ids, labels=None):  # pragma: no cover - never called
            raise AssertionError

    class Takes(torch.nn.Module):  # defined here: this test module has no slice_logits_to_keep
        def forward(self, input_ids, labels=None, logits_to_keep=0):  # pragma: no cover - never called
            raise AssertionError

    assert not keeps_answer_logits(Plain())
    assert not keeps_answer_logits(Takes())
    model = _peft(prof, "llama", tok)
    assert keeps_answer_logits(model)
    module = sys.modules[type(model.get_base_model()).__module__]
    monkeypatch.setattr(module, "slice_logits_to_keep", lambda h, keep: h[:, keep, :])  # positions only
    assert not keeps_answer_logits(model)


def test_lean_training_with_answer_logits_only_trains_the_same_adapter(prof, tok, data, tmp_path, monkeypatch):
    """Five steps of the lean loop with the lever (as the loop decides it) and with it forced off:
    the lever was used, and the saved adapters are equal to the last bit, the logged losses to 1e-6."""
    from safetensors.torch import load_file

    from medqa_core.train import lean

    spec = prof.models["gemma"]  # soft-capped final logits: the kept path goes through the model's own head
    cfg = dataclasses.replace(prof.train, steps=5, trainer="lean")
    real_step_loss, real_keeps = lean.step_loss, lean.keeps_answer_logits
    runs = {}
    for on in (False, True):
        used: list[bool] = []

        def spy(model, batch, answers_only, used=used):
            used.append(answers_only)
            return real_step_loss(model, batch, answers_only)

        monkeypatch.setattr(lean, "step_loss", spy)
        monkeypatch.setattr(lean, "keeps_answer_logits", real_keeps if on else (lambda _m: False))
        stats = fine_tune(build_tiny(spec, tok, 0), tok, spec, data.train, cfg, tmp_path / str(on), "cpu")
        assert used == [on] * 5, f"lever {'on' if on else 'off'}: step_loss saw answers_only={used}"
        runs[on] = (stats, load_file(str(tmp_path / str(on) / "adapter_model.safetensors")))
    (s0, w0), (s1, w1) = runs[False], runs[True]
    assert w0.keys() == w1.keys()
    assert all(w1[k].equal(v) for k, v in w0.items())
    assert s1.loss_first == pytest.approx(s0.loss_first, rel=1e-6)
    assert s1.loss_last == pytest.approx(s0.loss_last, rel=1e-6)
