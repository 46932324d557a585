"""The GPU path of the paper profile, checked on the CPU (issue 13): generation with the
training's quantization and the unmerged adapter, the device a 4-bit model loads on, fp32 LoRA
weights under trl, stop tokens, the choice of bf16/fp16/fp32, memory freed between stages, and
local checkpoints that need no CUDA. CUDA itself is stood in for by monkeypatched
``torch.cuda`` functions, set only after the libraries are imported (bitsandbytes and
transformers probe CUDA at import)."""
from __future__ import annotations

import dataclasses
import gc
import sys
import weakref

import pytest
from helpers import REPO_ROOT

from medqa_core.cache import Cache
from medqa_core.data.datasets import QAExample
from medqa_core.model import bases as models
from medqa_core.model import generation
from medqa_core.model.bases import load_base, load_tokenizer
from medqa_core.model.generation import generate_answers
from medqa_core.model.params import lora_config
from medqa_core.profile import load_profile
from medqa_core.specs import GenerationConfig, ModelSpec, TrainConfig
from medqa_core.stages import Artifact
from medqa_core.stages import adapter as adapter_stage
from medqa_core.stages import answers as answers_stage
from medqa_core.train import common, lean
from medqa_core.train import finetune as training


@pytest.fixture(scope="module", autouse=True)
def _libraries():
    """The heavy libraries, imported when the module's first test runs (not at collection) and
    before any fixture fakes CUDA; every test skips where torch or bitsandbytes is absent."""
    global torch, bnb, transformers, PeftModel, get_peft_model, LoraLayer
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    import transformers
    from peft import PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer


GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
QUESTIONS = ["What helps a sprained ankle?", "How is asthma treated?", "What causes a fever?",
             "When should a cough be checked by a doctor?", "Is rest good for a cold?"]
ROWS = [QAExample(f"id{i}", f"What helps condition {i}?", f"Rest and fluids help condition {i}.") for i in range(16)]


def _tokenizer():
    return load_tokenizer(REPO_ROOT / "fixtures" / "tokenizer")


def _tiny_llama(tok, seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def _spec(**kw) -> ModelSpec:
    base = load_profile("tiny").models["llama"]
    return dataclasses.replace(base, checkpoint=None, tiny_config={"hidden_size": 64, "num_hidden_layers": 2}, **kw)


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A tiny fp32 Llama checkpoint (with tokenizer) and a LoRA adapter with non-zero B."""
    tok = _tokenizer()
    model = _tiny_llama(tok)
    with torch.no_grad():  # keep EOS out of reach so the answers run long
        model.get_output_embeddings().weight[tok.eos_token_id].zero_()
    d = tmp_path_factory.mktemp("gpu-path")
    model.save_pretrained(d / "base")
    tok.save_pretrained(d / "base")
    spec = _spec()
    lora = get_peft_model(_tiny_llama(tok), lora_config(spec, TrainConfig(lora_r=4, lora_alpha=8)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    lora.save_pretrained(d / "adapter")
    return str(d / "base"), d / "adapter", spec


def _answers(cache, spec, src, adapter, questions, gen, quantization="none"):
    """The answers stage on a local base directory and adapter directory (or None)."""
    base = Artifact("base", "base:" + src, src, {}, False)
    tuned = None if adapter is None else Artifact("adapter", "adapter:" + str(adapter), str(adapter), {}, False)
    return answers_stage(cache, spec, base, tuned, questions, gen, "cpu", quantization)


def _capture_generate(monkeypatch):
    """Record the model the answers stage generates with, then generate for real."""
    seen: list = []

    def spy(model, *args, **kwargs):
        seen.append(model)
        return generate_answers(model, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_answers", spy)
    return seen


# ---- 1. generation: the training's quantization, the adapter unmerged -------------------

def test_nf4_generation_keeps_4bit_base_and_unmerged_adapter(base_and_adapter, tmp_path, monkeypatch):
    src, adapter, spec = base_and_adapter
    seen = _capture_generate(monkeypatch)
    cache = Cache(tmp_path / "cache")
    gen = GenerationConfig(max_new_tokens=6, batch_size=4)
    art = _answers(cache, spec, src, adapter, QUESTIONS, gen, "nf4")
    assert len(art.value) == len(QUESTIONS) and art.built
    (model,) = seen
    assert isinstance(model, PeftModel), "the adapter is not merged into a 4-bit base"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()), "the base is generated from in NF4"
    lora = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert lora and not any(m.merged for m in lora)
    # the key knows the quantization: the fp32 answers are another entry
    assert _answers(cache, spec, src, adapter, QUESTIONS, gen, "none").built


def test_fp32_generation_merges_and_is_bit_identical_to_the_merged_recipe(base_and_adapter, tmp_path, monkeypatch):
    """The tiny CPU profile's path (float32, no quantization): the adapter is merged as before
    and the answers are exactly those of load + PeftModel + merge_and_unload + generate."""
    src, adapter, spec = base_and_adapter
    gen = GenerationConfig(max_new_tokens=12, batch_size=2)
    merged = PeftModel.from_pretrained(load_base(src, spec, "none", "cpu"), str(adapter)).merge_and_unload()
    expected = generate_answers(merged, load_tokenizer(src), QUESTIONS, gen, "cpu")
    assert sum(len(a) > 10 for a in expected) >= 3, expected
    seen = _capture_generate(monkeypatch)
    art = _answers(Cache(tmp_path / "cache"), spec, src, adapter, QUESTIONS, gen)
    assert art.value == expected
    assert not isinstance(seen[0], PeftModel) and not any(isinstance(m, LoraLayer) for m in seen[0].modules())
    assert art.meta["settings"]["eos_token_id"] == load_tokenizer(src).eos_token_id  # an int, as recorded before


# ---- 2. a 4-bit model loads onto this process's GPU --------------------------------------

class _Loaded:
    def eval(self):
        return self

    def to(self, *_):
        return self


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA present, of a kind set by the test: ``native_bf16`` (A100/H100) or not (a T4, where
    ``is_bf16_supported()`` is true through emulation)."""
    state = {"native_bf16": True, "current": 0, "count": 1}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return state["native_bf16"] or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state["count"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return state


@pytest.fixture
def load_kwargs(monkeypatch):
    calls: list[dict] = []

    def from_pretrained(source, **kwargs):
        calls.append(kwargs)
        return _Loaded()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return calls


def test_nf4_loads_on_the_current_device(fake_cuda, load_kwargs, monkeypatch):
    spec = _spec()
    fake_cuda.update(current=3, count=4)  # e.g. torch.cuda.set_device(3) done by the caller
    load_base("x", spec, "nf4", "cuda")
    assert load_kwargs[-1]["device_map"] == {"": 3}
    monkeypatch.setenv("LOCAL_RANK", "2")  # torchrun rank 2
    fake_cuda.update(current=0)
    load_base("x", spec, "nf4", "cuda")
    assert load_kwargs[-1]["device_map"] == {"": 2}
    load_base("x", spec, "nf4", "cpu")
    assert "device_map" not in load_kwargs[-1]


# ---- 5. bf16 only where native; fp16 with loss scaling; fp32 for Gemma 2 -----------------

def test_precision_on_a_t4_and_on_native_bf16(fake_cuda, load_kwargs):
    llama, gemma = _spec(), _spec(family="gemma")
    fake_cuda["native_bf16"] = False  # a T4: bf16 only emulated
    load_base("x", llama, "none", "cuda")
    assert load_kwargs[-1]["dtype"] == torch.float16
    load_base("x", gemma, "none", "cuda")
    assert load_kwargs[-1]["dtype"] == torch.float32
    load_base("x", llama, "nf4", "cuda")
    assert load_kwargs[-1]["quantization_config"].bnb_4bit_compute_dtype == torch.float16
    assert models.cuda_precision("llama") == "fp16" and models.cuda_precision("gemma") == "fp32"
    assert common.mixed_precision("cuda", "llama") == "fp16"
    assert common.mixed_precision("cuda", "gemma") == "fp32"
    assert common.mixed_precision("cpu", "llama") == "fp32"
    amp, scaler = lean._amp("cuda", "llama")
    assert amp.fast_dtype == torch.float16 and scaler is not None, "fp16 trains with a GradScaler"
    assert lean._amp("cuda", "gemma") == (None, None)

    fake_cuda["native_bf16"] = True  # A100/H100
    assert common.mixed_precision("cuda", "gemma") == "bf16"
    load_base("x", gemma, "nf4", "cuda")
    assert load_kwargs[-1]["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    load_base("x", llama, "none", "cuda")
    assert load_kwargs[-1]["dtype"] == torch.bfloat16
    amp, scaler = lean._amp("cuda", "llama")
    assert amp.fast_dtype == torch.bfloat16 and scaler is None
    assert lean._amp("cpu", "llama") == (None, None)


def test_lean_loop_unscales_before_clipping(base_and_adapter, tmp_path, monkeypatch):
    """With a GradScaler (fp16 on CUDA; here a CPU scaler on fp32, where scaling by a power of two
    is exact) the lean loop trains exactly as without one: gradients are unscaled before the
    clipping at 1.0 and the optimizer steps through the scaler."""
    from safetensors.torch import load_file

    src, _, spec = base_and_adapter
    tok = load_tokenizer(src)
    cfg = TrainConfig(steps=4, batch_size=4, max_length=48, lora_r=4, lora_alpha=8, learning_rate=1e-2,
                      trainer="lean")
    training.fine_tune(load_base(src, spec), tok, spec, ROWS, cfg, tmp_path / "plain", "cpu")
    scalers = []

    def amp(device, family, cfg=None):
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0**12))
        return None, scalers[-1]

    monkeypatch.setattr(lean, "_amp", amp)
    training.fine_tune(load_base(src, spec), tok, spec, ROWS, cfg, tmp_path / "scaled", "cpu")
    assert scalers and scalers[0].get_scale() == 2.0**12  # used (a skipped step would halve it)
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("plain", "scaled"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k for k in a if "lora_B" in k and a[k].abs().sum() > 0)


# ---- 3. trainable LoRA weights stay fp32 while training ----------------------------------

def _record_trainable_dtypes(model):
    seen: set = set()

    def hook(module, args, output):
        seen.update(p.dtype for p in module.parameters() if p.requires_grad)

    model.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("trainer", ["sft", "lean"])
def test_lora_weights_stay_fp32_on_a_bf16_4bit_model(base_and_adapter, tmp_path, trainer):
    """trl casts a quantized model's LoRA weights to bf16 (and peft would make them the base's
    dtype): at the paper's lr 2e-5 bf16 weights swallow most updates."""
    src, _, spec = base_and_adapter
    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_compute_dtype=torch.bfloat16)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, quantization_config=q, dtype=torch.bfloat16)
    seen = _record_trainable_dtypes(model)
    cfg = TrainConfig(steps=2, batch_size=4, max_length=48, lora_r=4, lora_alpha=8, quantization="nf4",
                      learning_rate=2e-5, trainer=trainer, optimizer="adamw_torch")
    stats = training.fine_tune(model, load_tokenizer(src), spec, ROWS, cfg, tmp_path / "a", "cpu")
    assert stats.steps_run == 2
    assert seen == {torch.float32}, f"trainable parameter dtypes during training: {seen}"


# ---- 4. stop tokens ------------------------------------------------------------------------

def _scripted(model, script: list[int], tail: int):
    """Make greedy decoding emit ``script`` then ``tail`` forever (a forward hook on the logits)."""
    step = {"n": 0}

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        step["n"] = 0 if ids is not None and ids.shape[1] > 1 else step["n"] + 1
        target = script[step["n"]] if step["n"] < len(script) else tail
        output.logits[:, -1, :] = -1e4
        output.logits[:, -1, target] = 1e4
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    return model


def test_stops_on_the_chat_templates_end_of_turn():
    tok = _tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA_TEMPLATE
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    word, other = tok.encode(" rest", add_special_tokens=False)[0], tok.encode(" fever", add_special_tokens=False)[0]
    model = _scripted(_tiny_llama(tok), [word, word, eot], other)
    settings: dict = {}
    answers = generate_answers(model, tok, QUESTIONS[:3], GenerationConfig(max_new_tokens=10, batch_size=2),
                               settings=settings)
    assert all(a == tok.decode([word, word]).strip() for a in answers), answers
    assert settings["eos_token_id"] == [tok.eos_token_id, eot]
    assert generation.stop_token_ids(model, tok) == [tok.eos_token_id, eot]
    assert "<end_of_turn>" in generation.END_OF_TURN


def test_stops_on_the_models_configured_eos_ids():
    tok = _tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|stop|>"]})
    stop = tok.convert_tokens_to_ids("<|stop|>")
    word, other = tok.encode(" rest", add_special_tokens=False)[0], tok.encode(" fever", add_special_tokens=False)[0]
    model = _scripted(_tiny_llama(tok), [word, stop], other)
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    answers = generate_answers(model, tok, QUESTIONS[:2], GenerationConfig(max_new_tokens=10, batch_size=2))
    assert answers == [tok.decode([word]).strip()] * 2
    # and on EOS itself
    model = _scripted(_tiny_llama(tok), [word, word, tok.eos_token_id], other)
    assert generate_answers(model, tok, QUESTIONS[:1], GenerationConfig(max_new_tokens=10)) == [tok.decode([word, word]).strip()]


def test_plain_prompt_stop_id_is_eos_alone():
    """The tiny profile: no chat template, no other configured stop id: EOS, passed as before."""
    tok = _tokenizer()
    src = REPO_ROOT / "fixtures" / "models" / "llama"
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    settings: dict = {}
    generate_answers(model, tok, QUESTIONS[:1], GenerationConfig(max_new_tokens=2), settings=settings)
    assert settings["eos_token_id"] == tok.eos_token_id and isinstance(settings["eos_token_id"], int)
    assert generation.stop_token_ids(model, tok) == [tok.eos_token_id]
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"  # not in this vocab
    assert generation.stop_token_ids(model, tok) == [tok.eos_token_id]


# ---- 6. memory freed between stages ------------------------------------------------------

@pytest.fixture
def empty_cache_calls(monkeypatch):
    """Counts ``torch.cuda.empty_cache()`` calls; CUDA shows as present to the code that frees
    memory only (model loading on a CUDA-less torch would fail if it believed it too)."""
    calls = []
    free = getattr(getattr(models, "free_memory", None), "__code__", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: sys._getframe(1).f_code is free)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


def test_memory_freed_after_generation(base_and_adapter, tmp_path, monkeypatch, empty_cache_calls):
    src, adapter, spec = base_and_adapter
    refs = []

    def spy(model, *args, **kwargs):
        refs.append(weakref.ref(model))
        return generate_answers(model, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_answers", spy)
    cache = Cache(tmp_path / "cache")
    gen = GenerationConfig(max_new_tokens=4, batch_size=8)
    for a in (adapter, None):
        before = len(empty_cache_calls)
        _answers(cache, spec, src, a, QUESTIONS, gen)
        assert len(empty_cache_calls) > before, "empty_cache() after each generation"
        assert refs[-1]() is None, "the model is gone once its answers are written"


def test_memory_freed_after_training(base_and_adapter, tmp_path, empty_cache_calls, monkeypatch):
    src, _, spec = base_and_adapter
    refs = []

    def load(*args, **kwargs):
        m = load_base(src, spec)
        refs.append(weakref.ref(m))
        return m

    monkeypatch.setattr(models, "load_base", load)  # the stage loads through medqa_core.model.bases

    cfg = TrainConfig(steps=2, batch_size=4, max_length=48, lora_r=4, lora_alpha=8, trainer="sft")
    adapter_stage(Cache(tmp_path / "cache"), Artifact("base", "b", src, {}, False), spec, ROWS, cfg, "cpu")
    assert empty_cache_calls, "empty_cache() after training"
    gc.disable()  # what is gone must have been freed by the code under test, not by a collection now
    try:
        assert refs and refs[0]() is None, "the trained model is freed before generation"
    finally:
        gc.enable()


# ---- 8. a local checkpoint directory runs on the CPU ---------------------------------------

def test_local_checkpoint_dir_does_not_need_cuda(tmp_path):
    assert not ModelSpec("llama", "llama", hub_id=str(tmp_path)).needs_cuda
    assert ModelSpec("llama", "llama", hub_id="meta-llama/Llama-3.1-8B").needs_cuda
    assert ModelSpec("llama", "llama", hub_id=str(tmp_path / "missing")).needs_cuda
    assert not ModelSpec("llama", "llama", tiny_config={"hidden_size": 8}).needs_cuda

