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

Each stage has a ``*_payload`` function (what its cache key is made of) and a stage function
that returns an :class:`Artifact`, building the entry only when it is missing. A payload holds
*every* field of every dataclass the stage is given (``_keyed``: the whole spec, recipe,
generation or scorer config), minus the fields :data:`NOT_KEYED` declares irrelevant to that
stage, each with its reason. Nothing is picked by hand, so a setting the stage reads cannot be
left out of its key, and a field added later is keyed until someone declares it irrelevant
(``tests/integration/test_cache_keys.py`` perturbs every field of every one of these dataclasses). Fields
that name files (a checkpoint, tokenizer, GGUF file, corpus, local model directory) are keyed
by the digest of what they name, so a key is the same in every checkout.

Heavy objects (models, tokenizers, metric encoders) are loaded inside the build steps, so a
fully warm case reads a few JSON files and nothing else.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Mapping
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
#: so a changed template shows as a changed ``prompt_digest``; the tokens generation feeds for it
#: (``prompt_ids``) must be the tokens a training row starts with (gate: ``recipe:prompt_layout``)
from .model.prompts import CANARY_QUESTION  # noqa: E402


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


# --- what is keyed ---------------------------------------------------------------------------

#: the kinds of base model (:func:`base_kind`); each is a stage of its own in :data:`NOT_KEYED`
BASE_KINDS = ("tiny", "checkpoint", "local", "hub", "gguf")

#: the reason of a field that names where the base model comes from, for the stages after the
#: base: they load the base from ``base_art.source`` and key it by ``base_art.key``, which holds
#: what the field names (tests/integration/test_cache_keys.py checks that the base key changes with it)
VIA_BASE = ("names where the base model comes from: the base stage keys what it names (file digests or hub commit), "
            "and this stage loads the base from base_art.source and keys base_art.key")

_EVERY_MODEL_STAGE = {
    "ModelSpec.name": "a label (test ids, logs, error messages): the same model under another name is the same artefact",
    "ModelSpec.arch_config": "architecture numbers for counting LoRA parameters offline (model/params.py, the pipeline's "
                             "lora_closed_form invariant), outside every stage; a model is loaded with the architecture "
                             "of its own checkpoint, which the base key holds (files, GGUF digest or hub commit)",
    "ModelSpec.unavailable": "when set, stages.base raises before anything is keyed or built: no artefact is made with it",
    "ModelSpec.local_dir": "derived (metadata derived, not in as_dict): the profile loader's resolution of hub_id; the "
                           "base stage keys that directory by the digest of its files",
}

_PROFILE_NOT_BASE = {
    "Profile.name": "the profile's label (records, baselines): the same base in two profiles is one artefact",
    "Profile.path": "only resolves the profile's relative paths; what they name is keyed by content (file digests)",
    "Profile.description": "a description for people: no stage reads it",
    "Profile.models": "the profile's models: the stage is given its own ModelSpec, keyed field by field",
    "Profile.datasets": "data reaches the later stages as rows and texts, keyed by content (adapter rows, answers "
                        "questions, scores texts); no base reads a dataset",
    "Profile.train": "the LoRA recipe: read by the adapter stage, whose key has all of it",
    "Profile.generation": "read by the answers stage, whose key has all of it",
    "Profile.split": "chooses the rows, which the later stages key by content",
    "Profile.gate": "judges finished results (gate/): shapes no artefact",
    "Profile.data_dir": "where dataset files are found: the rows read from them are keyed by content",
    "Profile.baseline": "the baseline file: read and written after the run",
    "Profile.baseline_readonly": "whether --update-baselines may rewrite the baseline: after the run",
    "Profile.slow": "a pytest marker: which cases are selected, not what they compute",
    "Profile.scorer": "read by the scores stage, whose key has all of it",
}

_BASE = {
    **_EVERY_MODEL_STAGE,
    **_PROFILE_NOT_BASE,
    "ModelSpec.target_modules": "the LoRA targets: read by the adapter stage (keyed there), never by loading, "
                                "pretraining or converting a base",
}
_NOT_PRETRAINED = ("this base is a file or a hub commit, never pretrained: [pretrain] is not read (its seed follows the "
                   "run seed, so keying it would regenerate the base model's answers for every seed)")

_AFTER_BASE = {
    **_EVERY_MODEL_STAGE,
    "ModelSpec.hub_id": VIA_BASE,
    "ModelSpec.checkpoint": VIA_BASE,
    "ModelSpec.gguf": VIA_BASE,
    "ModelSpec.tokenizer": VIA_BASE,
    "Artifact.stage": "the name of the stage that made the artefact, fixed by the argument it is passed as",
    "Artifact.source": "where the artefact loads from: its key (keyed) names what is there",
    "Artifact.meta": "what was recorded when the artefact was built or resolved; its key (keyed) names the artefact",
    "Artifact.built": "whether this run built the artefact or read it from the cache: the same artefact either way",
    "Artifact.value": "the artefact's loaded content, named by its key (keyed)",
}

#: stage -> "Class.field" -> why that field of a dataclass the stage is given is not in its key.
#: Every field not listed is keyed. Stages: ``base:<kind>`` (:data:`BASE_KINDS`), ``adapter``,
#: ``answers``, ``scores``. The stages' other arguments are keyed whole (rows, questions, answers
#: and references by content; ``device`` by :func:`resources.numeric_env`; ``quantization``),
#: except what says how, not what, to build: the cache itself, ``label`` (progress output),
#: and ``distributed`` (the torchrun launcher that ``TrainConfig.num_processes``, keyed, asks for).
NOT_KEYED: dict[str, dict[str, str]] = {
    "base:tiny": dict(_BASE),
    **{f"base:{kind}": {**_BASE, "Profile.pretrain": _NOT_PRETRAINED} for kind in BASE_KINDS if kind != "tiny"},
    "adapter": dict(_AFTER_BASE),
    "answers": dict(_AFTER_BASE),
    "nll": dict(_AFTER_BASE),
    "scores": {},
}


def _keyed(obj: Any, stage: str, content: Mapping[str, Callable[[Any], Any]] | None = None) -> dict[str, Any]:
    """Every field of the dataclass ``obj`` (as :func:`specs.as_dict` writes it) except those
    :data:`NOT_KEYED` declares irrelevant to ``stage``; a field in ``content`` (set, not None) is
    keyed by what the function returns for it (the digest of the file it names) instead."""
    skip = NOT_KEYED[stage]
    cls = type(obj).__name__
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f"{cls}.{f.name}" in skip:
            continue
        value = getattr(obj, f.name)
        if content is not None and f.name in content and value is not None:
            value = content[f.name](value)
        out[f.name] = as_dict(value)
    return out


def _path_digest(p: Path) -> str:
    """sha256 of a file, digest of a directory's files, or ``absent`` (a field the stage does not read)."""
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        return dir_digest(p)
    return "absent"


# --- base model ------------------------------------------------------------------------------

def base_kind(spec: ModelSpec) -> str:
    """Which base ``spec`` has (:data:`BASE_KINDS`): a GGUF file converted in the cache, a hub
    model, a local checkpoint directory named by ``hub_id``, a shipped tiny checkpoint, or a tiny
    model pretrained in the cache."""
    if spec.gguf is not None:
        return "gguf"
    if not spec.is_tiny:
        return "local" if spec.local is not None else "hub"
    return "checkpoint" if spec.checkpoint is not None else "tiny"


def base_payload(profile: Profile, spec: ModelSpec) -> dict[str, Any]:
    """The key of the base of ``spec``: the whole spec (its path fields by the digests of what they
    name, a hub revision by the commit it resolves to) and, for a pretrained tiny base, the whole
    ``[pretrain]`` table (its corpus by digest). Raises ConfigError for a base that cannot load."""
    from .model import bases

    if spec.unavailable is not None:
        raise ConfigError(f"model {spec.name!r}: {spec.unavailable}")
    kind = base_kind(spec)
    stage = f"base:{kind}"
    if kind == "tiny":
        if spec.tokenizer is None or profile.pretrain is None:
            raise ConfigError(f"model {spec.name!r}: a tiny model needs 'tokenizer' and a [pretrain] table in {profile.path}")
        for p in (profile.resolve(spec.tokenizer), profile.resolve(profile.pretrain.corpus)):
            if not p.exists():
                raise ConfigError(f"model {spec.name!r}: {p} not found (listed in {profile.path})")
    if kind == "checkpoint":
        assert spec.checkpoint is not None
        ckpt = profile.resolve(spec.checkpoint)
        if not (ckpt / "config.json").is_file():
            raise ConfigError(f"model {spec.name!r}: checkpoint {ckpt} not found (listed in {profile.path}); "
                              "build it with `python fixtures/make_tiny_bases.py`")
    paths: dict[str, Callable[[Any], Any]] = {
        "tokenizer": lambda v: _path_digest(profile.resolve(v)),
        "checkpoint": lambda v: _path_digest(profile.resolve(v)),
        "gguf": lambda v: bases.gguf_digest(bases.resolve_gguf(spec, profile)),
        # a local checkpoint directory by its files (the same files anywhere are the same base)
        "hub_id": lambda v: {"files": dir_digest(Path(spec.local))} if spec.local is not None else v,
    }
    spec_key = _keyed(spec, stage, paths)
    if kind == "hub":  # the commit the revision stands for now ("main", a tag or None alike): a new upstream
        assert spec.hub_id is not None  # commit is a new base
        spec_key["revision"] = bases.resolve_revision(spec.hub_id, spec.revision)
    payload: dict[str, Any] = {
        "what": f"{kind}-base",
        "spec": spec_key,
        "profile": _keyed(profile, stage, {
            "pretrain": lambda pre: _keyed(pre, stage, {"corpus": lambda c: _path_digest(profile.resolve(c))})}),
        "code": code_digest(),
        "versions": library_versions(),
    }
    if kind == "tiny":
        payload["numeric"] = numeric_env("cpu")  # pretraining runs on the CPU
    return payload


def base(profile: Profile, spec: ModelSpec, cache: Cache) -> Artifact:
    """Where the base model loads from. A hub model is keyed on the commit its revision resolves
    to (``meta["revision"]``), so a warm cache never replays adapters, answers or times of an
    older upstream checkpoint; load that commit."""
    from .model import bases

    payload = base_payload(profile, spec)  # raises for an unavailable or missing base
    key = content_key(payload)
    kind = base_kind(spec)
    if kind == "gguf":
        path = bases.resolve_gguf(spec, profile)

        def convert(tmp: Path) -> dict[str, Any]:
            log.info("converting %s to safetensors", path.name)
            with Timer() as t:
                info = bases.convert_gguf(path, tmp)
            return {"source": path.name, "seconds": round(t.seconds, 3), **info}

        return _from_entry("base", cache.get_or_build("base", payload, convert))
    if kind == "hub":
        assert spec.hub_id is not None
        commit = payload["spec"]["revision"]
        return Artifact("base", key, spec.hub_id,
                        {"source": spec.hub_id, "revision": commit, "requested_revision": spec.revision}, False)
    if kind in ("local", "checkpoint"):  # read in place, keyed by its files
        src = spec.local if kind == "local" else str(profile.resolve(spec.checkpoint))  # type: ignore[arg-type]
        assert src is not None
        return Artifact("base", key, src, {"source": src}, False)
    pre = profile.pretrain
    assert pre is not None and spec.tokenizer is not None  # base_payload checked both

    tokenizer = spec.tokenizer  # narrowed for the closure below

    def build(tmp: Path) -> dict[str, Any]:
        from .model.pretrain import build_tiny, pretrain

        tok = bases.load_tokenizer(profile.resolve(tokenizer))
        model = build_tiny(spec, tok, pre.seed)
        log.info("pretraining tiny %s base (%d params)", spec.family, model.num_parameters())
        with Timer() as t:
            stats = pretrain(model, tok, profile.resolve(pre.corpus), pre)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return {"params": model.num_parameters(), "seconds": round(t.seconds, 3), **stats}

    return _from_entry("base", cache.get_or_build("base", payload, build))


# --- LoRA adapter ----------------------------------------------------------------------------

def adapter_payload(base_key: Any, spec: ModelSpec, train: list[QAExample], cfg: TrainConfig, device: str) -> dict[str, Any]:
    """``base_key``: the base artefact's key (the only field of the base Artifact that is keyed)."""
    return {
        "what": "lora-adapter",
        "base": base_key,
        "spec": _keyed(spec, "adapter"),
        # the exact rows handed to the trainer, not a fingerprint of the file they came from
        "rows": content_key([list(_keyed(e, "adapter").values()) for e in train]),
        "code": code_digest(),  # the whole pipeline (cache.POST_RUN_MODULES aside), prompts included
        "train": _keyed(cfg, "adapter"),
        "numeric": numeric_env(device),
        "versions": library_versions(),
    }


def adapter(
    cache: Cache, base_art: Artifact, spec: ModelSpec, train: list[QAExample], cfg: TrainConfig, device: str,
    distributed: Callable[[Path], dict[str, Any]] | None = None,
) -> Artifact:
    """The LoRA adapter of ``spec`` on ``base_art`` trained on ``train``; ``value`` holds the
    stats recorded when it was trained. ``source`` is the adapter directory (PEFT's format).

    The base and tokenizer load only when the adapter must be trained. With
    ``cfg.num_processes > 1`` the training
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
        model = load_base(base_art.source, spec, cfg.quantization, device)
        tok = tokenizer_of(base_art.source, spec.revision)
        stats = fine_tune(model, tok, spec, train, cfg, tmp / "adapter", device)
        del model
        free_memory()  # the trained model is unreachable now; give its memory back before generation
        return {"stats": asdict(stats)}

    entry = cache.get_or_build("adapter", adapter_payload(base_art.key, spec, train, cfg, device), build,
                               required=("stats",))
    return _from_entry("adapter", entry, entry.path / "adapter", TrainStats(**entry.meta["stats"]))


# --- answers ---------------------------------------------------------------------------------

#: what an answers entry's meta.json must hold (the pipeline reads them from a served entry)
ANSWERS_META = ("seconds", "cpu_seconds", "n", "settings", "prompt_digest")


def answers_payload(base_key: str, adapter_key: str | None, questions: list[str], gen: GenerationConfig, device: str,
                    quantization: str = "none", *, spec: ModelSpec) -> dict[str, Any]:
    """``base_key``, ``adapter_key``: the keys of the base and of the adapter (None: the base
    model's own answers), the only fields of the Artifacts that are keyed; ``questions`` are the
    distinct questions, in order; ``spec`` the model's spec (the base loads with its attention
    implementation, revision and family's float format)."""
    return {"what": "answers", "base": base_key, "adapter": adapter_key, "spec": _keyed(spec, "answers"),
            "generation": _keyed(gen, "answers"), "code": code_digest(), "numeric": numeric_env(device),
            "questions": content_key(questions), "quantization": quantization}


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
        from .model.generation import generate_answers, generation_prompt_ids
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
                "settings": settings, "prompt_digest": content_key(build_prompt(tok, CANARY_QUESTION))[:16],
                "prompt_ids": content_key(generation_prompt_ids(tok, CANARY_QUESTION))[:16]}

    adapter_key = adapter_art.key if adapter_art is not None else None
    payload = answers_payload(base_art.key, adapter_key, unique, gen, device, quantization, spec=spec)
    entry = cache.get_or_build("answers", payload, build, required=ANSWERS_META)
    by_q = dict(zip(unique, json.loads((entry.path / "answers.json").read_text())))
    return _from_entry("answers", entry, value=[by_q[q] for q in questions])


# --- scores ----------------------------------------------------------------------------------

def _portable(value: Any) -> Any:
    """A scorer setting that names a local model directory, by the directory's name (as
    :func:`metrics.fingerprint` writes it), so a score key is the same in every checkout."""
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return "local:" + Path(value).expanduser().resolve().name
    return value


def scores_payload(answers: list[str], refs: list[str], scorer: metrics_mod.ScorerConfig, device: str) -> dict[str, Any]:
    """Every field of ``scorer`` plus its fingerprint (library versions, the tfhub handle that
    ``$MEDQA_USE_TFHUB_HANDLE`` stands for)."""
    local = {"bertscore_model": _portable, "use_handle": _portable}
    return {"what": "scores", "answers": content_key(answers), "refs": content_key(refs),
            "scorer": _keyed(scorer, "scores", local), "metrics": metrics_mod.fingerprint(scorer),
            "code": code_digest(), "numeric": numeric_env(device)}


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

    entry = cache.get_or_build("scores", scores_payload(answers, refs, scorer, device), build,
                               required=("seconds", "cpu_seconds"))
    raw = json.loads((entry.path / "scores.json").read_text())
    return _from_entry("scores", entry, value={k: np.asarray(v) for k, v in raw.items()})


# --- reference-answer likelihood ---------------------------------------------------------------

def nll_payload(base_key: str, adapter_key: str, pairs: list[tuple[str, str]], max_length: int, bf16: bool,
                device: str, quantization: str = "none", *, spec: ModelSpec) -> dict[str, Any]:
    """The NLL stage's key: the base and adapter keys, the test pairs by content, the token limit,
    the number format (bf16 autocast or not) and the code and numeric environment."""
    return {"what": "nll", "base": base_key, "adapter": adapter_key, "spec": _keyed(spec, "nll"),
            "pairs": content_key([list(p) for p in pairs]), "max_length": max_length, "bf16": bf16,
            "code": code_digest(), "numeric": numeric_env(device), "quantization": quantization}


def answer_nll(
    cache: Cache, spec: ModelSpec, base_art: Artifact, adapter_art: Artifact, pairs: list[tuple[str, str]],
    max_length: int, bf16: bool, device: str, quantization: str = "none",
) -> Artifact:
    """Per test pair, the tuned model's mean negative log-likelihood per token (nats) of the
    reference answer given its question (``value``: an array, one per pair): teacher-forced, on
    the completion tokens only, tokenized and truncated as training tokenizes (the loss the
    trainer minimises, on the test set). ``bf16``: under bf16 autocast on a CPU (native bf16
    only: the caller checks). No decoding, so it moves with the adapter smoothly where a greedy
    answer jumps between wordings (docs/own-data.md, "The reference answers' likelihood")."""

    def build(tmp: Path) -> dict[str, Any]:
        from peft import PeftModel

        from .model.bases import free_memory, load_base, load_tokenizer
        from .train.nll import reference_nll

        tok = load_tokenizer(base_art.source, spec.revision)
        model = PeftModel.from_pretrained(load_base(base_art.source, spec, quantization, device), adapter_art.source)
        with Timer() as t:
            values = reference_nll(model, tok, pairs, max_length, bf16, device)
        del model
        free_memory()
        (tmp / "nll.json").write_text(json.dumps(values))
        return {"seconds": round(t.seconds, 3), "cpu_seconds": round(t.cpu, 3), "n": len(values)}

    payload = nll_payload(base_art.key, adapter_art.key, pairs, max_length, bf16, device, quantization, spec=spec)
    entry = cache.get_or_build("nll", payload, build, required=("seconds", "cpu_seconds", "n"))
    return _from_entry("nll", entry, value=np.asarray(json.loads((entry.path / "nll.json").read_text())))


__all__ = ["BASE_KINDS", "NOT_KEYED", "VIA_BASE", "Artifact", "adapter", "adapter_payload", "answer_nll", "answers",
           "answers_payload", "base", "base_kind", "base_payload", "nll_payload", "scores", "scores_payload"]
