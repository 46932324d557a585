"""Parameter accounting without weights: build a model skeleton on the meta device from its
architecture numbers and count what LoRA would train (compared with the study's Table 1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..specs import FAMILIES, ModelSpec, TrainConfig


@dataclass(frozen=True)
class ParamCount:
    total: int  # base model parameters
    trainable: int  # LoRA parameters for the given rank and targets


def skeleton(spec: ModelSpec, config: dict[str, Any] | None = None) -> Any:
    """The model of ``spec`` with every tensor on the meta device (no memory, no download)."""
    import torch
    import transformers

    cfg_dict = config if config is not None else (spec.arch_config or spec.tiny_config)
    if cfg_dict is None:
        raise ConfigError(f"model {spec.name!r}: needs 'arch_config' (or 'tiny_config') to build a skeleton offline")
    cls = getattr(transformers, FAMILIES[spec.family]["config"])
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cls(**cfg_dict), attn_implementation="eager")


def lora_param_count(spec: ModelSpec, train: TrainConfig, config: dict[str, Any] | None = None) -> ParamCount:
    from peft import get_peft_model


    model = skeleton(spec, config)
    total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, lora_config(spec, train))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return ParamCount(total=total, trainable=trainable)


def lora_param_formula(spec: ModelSpec, r: int, config: dict[str, Any] | None = None) -> int:
    """Independent closed form: r x (in + out) per targeted linear, summed over layers."""
    c = config if config is not None else (spec.arch_config or spec.tiny_config or {})
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or h // heads
    shapes = {
        "q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
        "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
        "qkv_proj": (h, (heads + 2 * kv) * hd), "gate_up_proj": (h, 2 * inter),
    }
    total: int = layers * sum(r * sum(shapes[t]) for t in spec.target_modules)
    return total


def real_param_count(model: Any) -> int:
    """Parameters of ``model`` as the architecture counts them, also when bitsandbytes packed its
    linear weights into 4 bits: a ``Params4bit`` holds two values per byte (``numel()`` is half the
    weight's size, in uint8), so its count comes from the original shape in its ``quant_state``
    (else from its bytes: 2 values per byte of the storage dtype)."""
    import math

    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None and getattr(state, "shape", None) is not None:
            total += math.prod(state.shape)
        elif type(p).__name__ == "Params4bit":
            total += p.numel() * 2 * p.element_size()
        else:
            total += p.numel()
    return total


def lora_config(spec: ModelSpec, cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
