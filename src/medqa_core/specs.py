"""Frozen specs for models, datasets, training and profiles: data only.

A profile is data: a TOML file (``profiles/<name>.toml`` or any path) that lists the model
families, the datasets and the recipes; :mod:`medqa_core.profile` reads and checks it. Nothing
in the pipeline branches on a profile's name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import ScorerConfig
from .paths import FIXTURES_DIR, shipped

#: Architectural facts per family: transformers config class, the attention implementation
#: that family supports on every backend, and its LoRA target modules. The targets are all
#: linear projections of attention and MLP: with r=16 this gives Table 1's trainable-parameter
#: counts for Gemma 2 9B (54.0M) and Mistral 7B (41.9M); Llama 3.1 8B and Phi-3.5-mini come out
#: otherwise (docs/profiles.md, "Profiles").
_LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"config": "LlamaConfig", "attn": "sdpa", "targets": _LLAMA_LINEARS},
    "mistral": {"config": "MistralConfig", "attn": "sdpa", "targets": _LLAMA_LINEARS},
    # Gemma 2 soft-caps attention logits; transformers refuses sdpa for it.
    "gemma": {"config": "Gemma2Config", "attn": "eager", "targets": _LLAMA_LINEARS},
    # Phi-3 fuses q/k/v into one projection and gate/up into another.
    "phi": {"config": "Phi3Config", "attn": "sdpa", "targets": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]},
}


@dataclass(frozen=True)
class ModelSpec:
    """One model family in a profile: a tiny config built offline, a GGUF file, a local
    checkpoint directory or a hub id (or ``unavailable`` with a reason)."""

    name: str  # short id used in test ids: llama, mistral, gemma, phi
    family: str
    hub_id: str | None = None
    revision: str | None = None  # hub commit/tag to pin (recommended for nightly baselines)
    tiny_config: dict[str, Any] | None = None
    target_modules: tuple[str, ...] = ()
    attn_implementation: str = "sdpa"
    tokenizer: str | None = None  # dir of a tokenizer we ship (tiny); None = the hub model's own
    # Architecture numbers of the hub model (its config.json's shape fields), kept in the repo so the
    # model's skeleton can be built on the meta device and its LoRA parameters counted offline.
    arch_config: dict[str, Any] | None = None
    # A GGUF checkpoint shipped in an installed package ("package/file.gguf") or a file path; it is
    # converted once into a float32 safetensors checkpoint in the cache (see stages.base).
    gguf: str | None = None
    # Why this family has no model in the profile (e.g. no offline checkpoint at this size): its
    # cases are collected and skipped with this reason instead of silently missing.
    unavailable: str | None = None
    # A tiny model's pretrained checkpoint shipped in the repository (fixtures/make_tiny_bases.py
    # builds it from tiny_config): the base is then the same file on every machine, not pretrained
    # per run. Needs tiny_config (its architecture numbers count the LoRA parameters).
    checkpoint: str | None = None

    @property
    def is_tiny(self) -> bool:
        return self.tiny_config is not None

    # A ``hub_id`` that names a local checkpoint directory (relative to the profile, absolute, or
    # ``medqa:...``), resolved by the profile loader. Derived: not part of the spec's dict (its
    # written form ``hub_id`` is, so a profile hashes the same in every checkout).
    local_dir: str | None = field(default=None, metadata={"derived": True})

    @property
    def local(self) -> str | None:
        """The local checkpoint directory a ``hub_id`` names: as the profile loader resolved it, or
        an absolute path to an existing directory (a spec built in code); None for a hub id."""
        if self.local_dir is not None:
            return self.local_dir
        if self.hub_id is not None and Path(self.hub_id).is_absolute() and Path(self.hub_id).is_dir():
            return self.hub_id
        return None

    @property
    def needs_cuda(self) -> bool:
        """A full-size hub checkpoint; tiny and GGUF-converted small models run on CPU, and so
        does a ``hub_id`` naming a local checkpoint directory (e.g. a tiny checkpoint run with
        the paper recipe)."""
        return self.hub_id is not None and self.local is None


@dataclass(frozen=True)
class DatasetSpec:
    """A QA dataset: where it lives and which columns hold the question and the answer."""

    name: str
    file: str | None  # path relative to the data dir
    question: tuple[str, ...]  # columns joined (newline) into the question text
    answer: str
    hub_id: str | None = None
    format: str | None = None  # json | jsonl | csv | parquet; None = from the file suffix
    # Cleaning rules (names in cleaning.RULES) applied in order before empty/duplicate checks,
    # and length caps in characters (longer rows are dropped); see docs/data.md, "Data: files, cleaning, split, leakage".
    clean: tuple[str, ...] = ()
    max_question_chars: int | None = None
    max_answer_chars: int | None = None

    @property
    def env_var(self) -> str:
        """Environment variable that points this dataset at a file (overrides data dir + 'file')."""
        return "MEDQA_DATA_" + "".join(c if c.isalnum() else "_" for c in self.name).upper()


@dataclass(frozen=True)
class TrainConfig:
    """LoRA fine-tuning recipe (same for every case of a profile unless a model overrides it)."""

    steps: int = 300
    learning_rate: float = 3e-3
    batch_size: int = 16
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    optimizer: str = "adamw_torch"
    quantization: str = "none"  # none | nf4
    warmup_ratio: float = 0.05
    seed: int = 0
    trainer: str = "sft"  # sft (trl SFTTrainer) | lean (plain PyTorch loop, same recipe)
    packing: bool = False  # padding-free: a batch's rows back to back, position_ids restart per row
    # CPU training under bf16 autocast, only on a CPU with native bf16 (AVX512-BF16 / AMX; refused
    # elsewhere, never emulated): ~2.4x the fp32 tokens/s for SmolLM2 (docs/own-data.md), other numbers
    cpu_bf16: bool = False
    # > 1: one model trained data-parallel on this many processes (GPUs) via torchrun (launch.py);
    # the global batch stays batch_size
    num_processes: int = 1
    # > 0 (trainer = "lean"): the saved adapter is the uniform mean of the LoRA weights after each
    # of the last average_tail x steps optimizer steps (tail averaging), not the last step's
    # weights; 0 keeps the last step's (docs/performance.md, section 7)
    average_tail: float = 0.0


TRAINERS = ("sft", "lean")


@dataclass(frozen=True)
class PretrainConfig:
    """Short full-parameter pretraining that gives a tiny model some language before LoRA."""

    corpus: str = str(FIXTURES_DIR / "corpus" / "pretrain.txt")  # the shipped corpus
    steps: int = 300
    learning_rate: float = 3e-3
    batch_size: int = 16
    block_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    batch_size: int = 32
    repetition_penalty: float = 1.0
    cpu_bf16: bool = False  # greedy decoding under bf16 autocast on a CPU with native bf16 (refused elsewhere)


@dataclass(frozen=True)
class SplitConfig:
    """``test_size``: the N rows with the smallest seeded hash are the test set (fixed size; a new
    row can push an existing one from test to train). ``test_fraction``: a row is in the test set
    iff its seeded hash falls below the fraction (membership depends on that row alone, so adding
    rows never moves an existing one). Give one of the two."""

    test_size: int | None = None
    seed: int = 0
    test_fraction: float | None = None
    # Leakage check (train vs test questions): near-duplicate = Jaccard of character 5-gram
    # shingles >= near_dup_threshold and the same content words (data/leakage.py); the case fails
    # if more than max_leak_fraction of the test questions have an exact or near duplicate in
    # train (None = report only).
    near_dup_threshold: float = 0.8
    max_leak_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.test_size is None and self.test_fraction is None:
            object.__setattr__(self, "test_size", 40)


@dataclass(frozen=True)
class GateConfig:
    """How a case is judged against its baseline (gate/; docs/regression-gating.md)."""

    # minimum effect per metric (absolute, 0-1 scale; answer_words in words): smaller changes never fail
    metric_tolerance: dict[str, float] = field(default_factory=dict)
    # one-sided false-alarm level per metric and direction of the noise-model test
    alpha: float = 0.001
    # family / suite verdicts (Stouffer over cases): level, and minimum effect as a fraction of the case's
    aggregate_alpha: float = 0.001
    aggregate_min_effect_factor: float = 0.25
    # metrics where a move the better way beyond the band passes (reported as improvement) instead of
    # failing as `changed` (a rise for scores; a fall for degenerate)
    one_sided: tuple[str, ...] = ()
    # training runs (seeds) a baseline records per case with --update-baselines (override: --seeds)
    baseline_seeds: int = 5
    # training runs per case when gating (override: --seeds); init writes the R of its power plan
    gate_seeds: int = 1
    # controls each run computes (base | no_question | shuffled); the tuned-minus-control margins on
    # require_beats_base metrics are gated like scores (a margin that shrinks beyond the band fails)
    controls: tuple[str, ...] = ("base", "no_question", "shuffled")
    # controls the fine-tuned model must beat outright in every run (one-sided paired bootstrap at control_alpha)
    require_controls: tuple[str, ...] = ("base",)
    control_alpha: float = 0.01
    # time: seconds per unit of the session's reference workload must stay within factor x baseline
    time_factor: float = 3.0
    memory_factor: float = 1.5
    memory_slack_mib: float = 0.0  # memory limit = max(baseline x factor, baseline + slack)
    require_beats_base: tuple[str, ...] = ("bert_f1",)
    # A measured between-run sd per metric and the degrees of freedom it counts for: the variance
    # prior of a case whose baseline file holds no other case to pool with (a user's own single
    # case). Used where it is stronger than the baseline's own cross-case pool. `medqa-bench init`
    # writes the one measured for its model (scaffold.measured_prior; docs/own-data.md).
    prior_sd: dict[str, float] = field(default_factory=dict)
    prior_df: float = 0.0
    # tuned answers at or above this share degenerate (looping) fail the case, baseline or not
    max_degenerate: float | None = 0.10
    # also measure the tuned model's NLL of the reference answers (teacher-forced, nats per answer
    # token, stages.answer_nll) and gate it like a score, lower being better: no decoding, so it
    # sees a weakened adapter that BERTScore/USE of greedy answers miss (docs/own-data.md)
    answer_nll: bool = False


CONTROLS = ("base", "no_question", "shuffled")


def case_name(model: str, dataset: str) -> str:
    """The id of one benchmark case (``mistral-wikidoc``), used by pytest ids, records and baselines."""
    return f"{model}-{dataset}"


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str
    models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]
    train: TrainConfig
    generation: GenerationConfig
    split: SplitConfig
    gate: GateConfig
    pretrain: PretrainConfig | None
    data_dir: Path
    baseline: Path
    # A published baseline (paper.json) is never rewritten: --update-baselines then records
    # into the hardware-class file baselines/<profile>-<class>.json instead.
    baseline_readonly: bool = False
    # Cases of a slow profile carry the `slow` marker (deselected by the default addopts).
    slow: bool = False
    # The scorers (the [scorer] table): part of every score key and of a baseline's identity.
    scorer: ScorerConfig = field(default_factory=ScorerConfig)

    def hardware_baseline(self, hw_class: str) -> Path:
        """Resources (time, memory) recorded on one hardware class: baselines/<profile>-<class>.json."""
        main = self.resolve(str(self.baseline))
        return main.with_name(f"{self.name}-{hw_class}.json")

    def resolve(self, rel: str) -> Path:
        """Resolve a path written in the profile relative to the profile file's folder (so a
        profile kept next to its data works from any directory)."""
        packaged = shipped(rel)
        if packaged is not None:  # medqa:<path>: a file shipped with the package
            return packaged
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.path.parent / p


def as_dict(obj: Any) -> Any:
    """JSON-ready dict of a spec (for cache keys and result records)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("derived")}
    if isinstance(obj, (list, tuple)):
        return [as_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
