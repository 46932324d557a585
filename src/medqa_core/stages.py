"""Every cache entry of a case, in one shape and with its key in one place.

A case makes four artefacts, in this order:

=========  ==========================================================  ============================
stage      what it is                                                  ``Artifact.value``
=========  ==========================================================  ============================
base       the base model: a tiny model pretrained from the corpus or   ``None`` (``source`` loads)
           a GGUF checkpoint converted to safetensors (both cached); a
           hub id or local checkpoint (not cached, keyed by its commit
           or its files)
adapter    the LoRA adapter trained on the case's training rows         ``TrainStats`` of the run
                                                                        that trained it
answers    one model's answers to a list of questions                   answers, in question order
scores     per-pair scores of answers against references                ``{metric: np.ndarray}``
=========  ==========================================================  ============================

Each stage has a ``*_payload`` function (what its cache key is made of: every input that can
change the artefact, and nothing that cannot) and a stage function that returns an
:class:`Artifact`, building the entry only when it is missing. Heavy objects (models,
tokenizers, metric encoders) are loaded inside the build steps, so a fully warm case reads a
few JSON files and nothing else.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as metrics_mod
from . import progress
from .cache import Cache, Entry, code_digest, content_key, dir_digest, file_digest
from .data.datasets import QAExample
from .errors import ConfigError, TrainingError
from .resources import Timer, library_versions, numeric_env
from .specs import GenerationConfig, ModelSpec, Profile, TrainConfig, as_dict
from .train.finetune import TrainStats

log = logging.getLogger(__name__)

#: a question rendered through the prompt template on every generation: its digest is recorded,
#: so a changed template shows as a changed ``prompt_digest``
CANARY_QUESTION = "What is the usual treatment for a mild sprained ankle?"


@dataclass(frozen=True)
class Artifact:
    """One stage's artefact, served from the cache or built by this call."""

    stage: str  # "base", "adapter", "answers" or "scores"
    key: str  # its cache key: content_key of its payload (the config hash of the artefact)
    source: str  # where it loads from: the entry's directory, or a hub id / local checkpoint (base)
    meta: dict[str, Any]  # what was recorded when it was built (seconds, stats, settings)
    built: bool  # built by this call (False: read from the cache, or nothing to build)
    value: Any = None  # the content, loaded (see the module's table)


def _from_entry(stage: str, entry: Entry, source: Path | None = None, value: Any = None) -> Artifact:
    return Artifact(stage, entry.key, str(source or entry.path), dict(entry.meta), entry.built, value)


# --- base model ------------------------------------------------------------------------------

def base_payload(profile: Profile, spec: ModelSpec) -> dict[str, Any]:
    """The key of a cached base: a GGUF file's conversion, or a tiny model's pretraining."""
    if spec.gguf is not None:
        from .model.bases import gguf_digest, resolve_gguf

        return {"what": "gguf-base", "gguf": gguf_digest(resolve_gguf(spec, profile)), "code": code_digest(),
                "versions": library_versions()}
    if spec.tokenizer is None or profile.pretrain is None:
        raise ConfigError(f"model {spec.name!r}: a tiny model needs 'tokenizer' and a [pretrain] table in {profile.path}")
    tok_dir, corpus = profile.resolve(spec.tokenizer), profile.resolve(profile.pretrain.corpus)
    for p in (tok_dir, corpus):
        if not p.exists():
            raise ConfigError(f"model {spec.name!r}: {p} not found (listed in {profile.path})")
    return {
        "what": "tiny-base",
        "family": spec.family,
        "config": spec.tiny_config,
        "attn": spec.attn_implementation,
        "tokenizer": dir_digest(tok_dir),
        "corpus": file_digest(corpus),
        "pretrain": {k: v for k, v in vars(profile.pretrain).items() if k != "corpus"},
        "code": code_digest(),
        "numeric": numeric_env("cpu"),  # pretraining runs on the CPU
        "versions": library_versions(),
    }


def base(profile: Profile, spec: ModelSpec, cache: Cache) -> Artifact:
    """Where the base model loads from. A hub model is keyed on the commit its revision resolves
    to (``meta["revision"]``), so a warm cache never replays adapters, answers or times of an
    older upstream checkpoint; load that commit."""
    from .model import bases

    if spec.unavailable is not None:
        raise ConfigError(f"model {spec.name!r}: {spec.unavailable}")
    if spec.gguf is not None:
        path = bases.resolve_gguf(spec, profile)

        def convert(tmp: Path) -> dict[str, Any]:
            log.info("converting %s to safetensors", path.name)
            with Timer() as t:
                info = bases.convert_gguf(path, tmp)
            return {"source": path.name, "seconds": round(t.seconds, 3), **info}

        return _from_entry("base", cache.get_or_build("base", base_payload(profile, spec), convert))
    if not spec.is_tiny:
        assert spec.hub_id is not None
        ident = {"what": "hub-base", "hub_id": spec.hub_id, "revision": spec.revision,
                 "attn": spec.attn_implementation, "versions": library_versions()}
        if spec.local is not None:  # a local checkpoint directory: keyed by its files, no hub revision
            local = Path(spec.local)
            key = content_key({**ident, "hub_id": None, "files": dir_digest(local)})
            return Artifact("base", key, str(local), {"source": str(local)}, False)
        commit = bases.resolve_revision(spec.hub_id, spec.revision)
        ident["revision"] = commit
        return Artifact("base", content_key(ident), spec.hub_id,
                        {"source": spec.hub_id, "revision": commit, "requested_revision": spec.revision}, False)
    if spec.checkpoint is not None:
        ckpt = profile.resolve(spec.checkpoint)
        if not (ckpt / "config.json").is_file():
            raise ConfigError(f"model {spec.name!r}: checkpoint {ckpt} not found (listed in {profile.path}); "
                              "build it with `python fixtures/make_tiny_bases.py`")
        return Artifact("base", content_key({"what": "checkpoint", "files": dir_digest(ckpt)}), str(ckpt),
                        {"source": str(ckpt)}, False)
    payload = base_payload(profile, spec)
    pre = profile.pretrain
    assert pre is not None and spec.tokenizer is not None  # base_payload checked both

    def build(tmp: Path) -> dict[str, Any]:
        from .model.pretrain import build_tiny, pretrain

        tok = bases.load_tokenizer(profile.resolve(spec.tokenizer))
        model = build_tiny(spec, tok, pre.seed)
        log.info("pretraining tiny %s base (%d params)", spec.family, model.num_parameters())
        with Timer() as t:
            stats = pretrain(model, tok, profile.resolve(pre.corpus), pre)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return {"params": model.num_parameters(), "seconds": round(t.seconds, 3), **stats}

    return _from_entry("base", cache.get_or_build("base", payload, build))


# --- LoRA adapter ----------------------------------------------------------------------------

def adapter_payload(base_key: Any, spec: ModelSpec, train: list[QAExample], cfg: TrainConfig, device: str) -> dict:
    return {
        "what": "lora-adapter",
        "base": base_key,
        "targets": list(spec.target_modules),
        # the exact rows handed to the trainer, not a fingerprint of the file they came from
        "rows": content_key([[e.id, e.question, e.answer] for e in train]),
        "code": code_digest(),  # the whole pipeline (cache.POST_RUN_MODULES aside), prompts included
        "train": asdict(cfg),
        "numeric": numeric_env(device),
        "versions": library_versions(),
    }


def adapter(
    cache: Cache, base_art: Artifact, spec: ModelSpec, train: list[QAExample], cfg: TrainConfig, device: str,
    distributed: Callable[[Path], dict[str, Any]] | None = None,
    load_model: Callable[[], Any] | None = None, load_tokenizer: Callable[[], Any] | None = None,
) -> Artifact:
    """The LoRA adapter of ``spec`` on ``base_art`` trained on ``train``; ``value`` holds the
    stats recorded when it was trained. ``source`` is the adapter directory (PEFT's format).

    The base and tokenizer load only when the adapter must be trained (``load_model`` and
    ``load_tokenizer`` replace the loaders, for tests). With ``cfg.num_processes > 1`` the training
    runs under torchrun instead: ``distributed(work_dir)`` (the pipeline binds
    :func:`medqa_core.train.launch.run_distributed` to the job) leaves the adapter in
    ``work_dir / "adapter"`` and returns process 0's stats.
    """
    from .model.bases import free_memory, load_base
    from .model.bases import load_tokenizer as tokenizer_of
    from .train.finetune import fine_tune

    def build(tmp: Path) -> dict[str, Any]:
        log.info("fine-tuning %s on %d examples (%d steps, %d process(es))", spec.name, len(train), cfg.steps,
                 cfg.num_processes)
        if cfg.num_processes > 1:
            if distributed is None:
                raise TrainingError(f"model {spec.name!r}: num_processes={cfg.num_processes} needs a torchrun launcher")
            raw = distributed(tmp / "launch")
            (tmp / "launch" / "adapter").rename(tmp / "adapter")
            shutil.rmtree(tmp / "launch")
            world = raw.pop("world_size")
            return {"stats": raw, "world_size": world}
        model = load_model() if load_model else load_base(base_art.source, spec, cfg.quantization, device)
        tok = load_tokenizer() if load_tokenizer else tokenizer_of(base_art.source, spec.revision)
        stats = fine_tune(model, tok, spec, train, cfg, tmp / "adapter", device)
        del model
        free_memory()  # the trained model is unreachable now; give its memory back before generation
        return {"stats": asdict(stats)}

    entry = cache.get_or_build("adapter", adapter_payload(base_art.key, spec, train, cfg, device), build)
    return _from_entry("adapter", entry, entry.path / "adapter", TrainStats(**entry.meta["stats"]))


# --- answers ---------------------------------------------------------------------------------

def answers_payload(model_key: str, questions: list[str], gen: GenerationConfig, device: str,
                    quantization: str = "none") -> dict[str, Any]:
    """``model_key``: the adapter's key, or the base's for the base model's own answers;
    ``questions`` are the distinct questions, in order."""
    return {"what": "answers", "model": model_key, "generation": as_dict(gen), "code": code_digest(),
            "numeric": numeric_env(device), "questions": content_key(questions), "quantization": quantization}


def answers(
    cache: Cache, spec: ModelSpec, base_art: Artifact, adapter_art: Artifact | None, questions: list[str],
    gen: GenerationConfig, device: str, quantization: str = "none", label: str = "tuned",
) -> Artifact:
    """The answers of the base model (``adapter_art`` None) or of base + adapter to ``questions``
    (``value``, one per question). Identical questions are generated once (the no-question
    control asks the same empty question for every test row).

    The base loads as training loaded it (``quantization``: a 4-bit base stays 4-bit, so a 9B
    model generates on a 16 GB GPU) and the adapter stays unmerged beside it; only a float32
    base gets the adapter merged into its weights (in bf16 or 4-bit, merging rounds most LoRA
    updates away). ``label`` names the stage in progress output."""
    unique = list(dict.fromkeys(questions))

    def build(tmp: Path) -> dict[str, Any]:
        import torch

        from .model.bases import free_memory, load_base, load_tokenizer
        from .model.generation import generate_answers
        from .model.prompts import build_prompt

        tok = load_tokenizer(base_art.source, spec.revision)
        model = load_base(base_art.source, spec, quantization, device)  # on this process's device
        if adapter_art is not None:
            from peft import PeftModel

            exact = quantization == "none" and model.dtype == torch.float32
            model = PeftModel.from_pretrained(model, adapter_art.source)  # LoRA weights on their base layers' device
            if exact:
                model = model.merge_and_unload()
        settings: dict[str, Any] = {}
        with Timer() as t:
            out = generate_answers(model, tok, unique, gen, device, settings, progress_stage=f"generate {label}")
        del model
        free_memory()
        (tmp / "answers.json").write_text(json.dumps(out, ensure_ascii=False, indent=0))
        return {"seconds": round(t.seconds, 3), "cpu_seconds": round(t.cpu, 3), "n": len(out),
                "settings": settings, "prompt_digest": content_key(build_prompt(tok, CANARY_QUESTION))[:16]}

    model_key = adapter_art.key if adapter_art is not None else base_art.key
    entry = cache.get_or_build("answers", answers_payload(model_key, unique, gen, device, quantization), build)
    by_q = dict(zip(unique, json.loads((entry.path / "answers.json").read_text())))
    return _from_entry("answers", entry, value=[by_q[q] for q in questions])


# --- scores ----------------------------------------------------------------------------------

def scores_payload(answers: list[str], refs: list[str], scorer: metrics_mod.ScorerConfig, device: str) -> dict[str, Any]:
    return {"what": "scores", "answers": content_key(answers), "refs": content_key(refs),
            "metrics": metrics_mod.fingerprint(scorer), "code": code_digest(), "numeric": numeric_env(device)}


def scores(cache: Cache, answers: list[str], refs: list[str], scorer: metrics_mod.ScorerConfig, device: str) -> Artifact:
    """Per-pair scores of ``answers[i]`` against ``refs[i]`` (``value``: metric -> array)."""

    def build(tmp: Path) -> dict[str, Any]:
        tracker = progress.Tracker("score", len(answers), "pair")  # live progress (pytest -v)
        tracker.update(0)
        with Timer() as t:
            out = metrics_mod.score_all(answers, refs, scorer)
        tracker.update(len(answers))
        (tmp / "scores.json").write_text(json.dumps({k: v.tolist() for k, v in out.items()}))
        return {"seconds": round(t.seconds, 3), "cpu_seconds": round(t.cpu, 3)}

    entry = cache.get_or_build("scores", scores_payload(answers, refs, scorer, device), build)
    raw = json.loads((entry.path / "scores.json").read_text())
    return _from_entry("scores", entry, value={k: np.asarray(v) for k, v in raw.items()})


__all__ = ["Artifact", "adapter", "adapter_payload", "answers", "answers_payload", "base", "base_payload", "scores",
           "scores_payload"]
