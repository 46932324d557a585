"""Reading a profile: TOML in, a checked :class:`~medqa_core.specs.Profile` out.

Strict keys at every level (a misspelt table or key is an error with the closest allowed name),
types and ranges checked, paths resolved against the profile file, ``include`` files merged
(shared tables such as the public datasets live once in ``profiles/include/``), and ``--set``
overrides applied with the same checks.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .metrics import METRICS, ScorerConfig
from .paths import PROFILES_DIR, SHIPPED_PREFIX, shipped
from .specs import (
    CONTROLS,
    FAMILIES,
    TRAINERS,
    DatasetSpec,
    GateConfig,
    GenerationConfig,
    ModelSpec,
    PretrainConfig,
    Profile,
    SplitConfig,
    TrainConfig,
    as_dict,
)

TOP_LEVEL_KEYS = frozenset({"name", "description", "data_dir", "baseline", "baseline_readonly", "slow", "pretrain",
                            "train", "generation", "split", "gate", "models", "datasets", "scorer"})


def _check_keys(table: dict[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    """A misspelt key or table (`[trian]`, `[gates]`) is an error with the closest allowed name,
    never silently ignored (the run would use defaults)."""
    import difflib

    unknown = sorted(set(table) - set(allowed))
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, allowed, n=1)) else repr(k)
                 for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}; allowed: {sorted(allowed)}")


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, got {_toml_type(table)}")
    names = {f.name for f in dataclasses.fields(cls)}
    _check_keys(table, names, where)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            _check_type(kwargs[f.name], f.type, f"{where} {f.name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


#: Fields that must be > 0 (a zero here fails later, far from the profile line that caused it).
POSITIVE = {"steps", "num_processes", "batch_size", "max_length", "lora_r", "lora_alpha", "block_size", "max_new_tokens",
            "test_size", "learning_rate", "time_factor", "memory_factor", "repetition_penalty"}


def _toml_type(value: Any) -> str:
    """The TOML name of a parsed value's type, for messages (a value's repr can be huge)."""
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                    (dict, "a table"), (list, "an array"), (tuple, "an array")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def _check_type(value: Any, declared: Any, where: str) -> None:
    """Values must match the field's declared type (annotations are strings here)."""
    kind = str(declared)
    name = where.rsplit(" ", 1)[-1]
    if kind.endswith(" | None"):
        if value is None:
            return
        kind = kind.removesuffix(" | None")
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where} = {value!r}: must be an integer")
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r}: must be a finite number")
    if kind in ("str", "str | None") and not (isinstance(value, str) or (value is None and "None" in kind)):
        raise ConfigError(f"{where} = {value!r}: must be a string")
    if kind.startswith("tuple[str") and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{where} = {value!r}: must be a list of strings")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{where} = {value!r}: must be true or false")
    if kind.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"{where} = {value!r}: must be a table {{ key = value, ... }}")
    if name in POSITIVE and kind in ("int", "float") and value <= 0:
        raise ConfigError(f"{where} = {value!r}: must be > 0")


def _model_spec(name: str, table: dict[str, Any], where: str) -> ModelSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, got {_toml_type(table)}")
    family = table.get("family", name)
    if not isinstance(family, str) or family not in FAMILIES:
        raise ConfigError(f"{where}: unknown family {family!r}; known: {sorted(FAMILIES)}")
    facts = FAMILIES[family]
    sources = [k for k in ("hub_id", "tiny_config", "gguf") if k in table]
    if "unavailable" in table:
        if sources:
            raise ConfigError(f"{where}: 'unavailable' marks a family without a model; drop {sources} or 'unavailable'")
    elif len(sources) != 1:
        raise ConfigError(f"{where}: give exactly one of 'hub_id', 'tiny_config' or 'gguf' (or 'unavailable' with a reason)")
    if "checkpoint" in table and "tiny_config" not in table:
        raise ConfigError(f"{where}: 'checkpoint' (a shipped tiny base) needs the 'tiny_config' it was built from")
    spec: ModelSpec = _build(
        ModelSpec,
        {
            "name": name,
            "family": family,
            "target_modules": table.get("target_modules", facts["targets"]),
            "attn_implementation": table.get("attn_implementation", facts["attn"]),
            **{k: v for k, v in table.items() if k not in ("family", "target_modules", "attn_implementation")},
        },
        where,
    )
    return spec


def _dataset_spec(name: str, table: dict[str, Any], where: str) -> DatasetSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, got {_toml_type(table)}")
    table = dict(table)
    q = table.pop("question", None)
    if q is None or "answer" not in table:
        raise ConfigError(f"{where}: needs 'question' (column or list of columns) and 'answer'")
    if not (isinstance(q, str) or (isinstance(q, list) and q and all(isinstance(c, str) for c in q))):
        raise ConfigError(f"{where}: question = {q!r}: must be a column name or a list of column names")
    table["question"] = [q] if isinstance(q, str) else list(q)
    if table.get("file") is None and table.get("hub_id") is None:
        raise ConfigError(f"{where}: needs 'file' (relative to the data dir) or 'hub_id'")
    dspec: DatasetSpec = _build(DatasetSpec, {"name": name, "file": None, **table}, where)
    return dspec


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key (recursively), any other value of
    ``over`` replaces ``base``'s."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def _read_with_includes(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The profile's TOML with its ``include = [...]`` files merged underneath (paths relative to
    the including file; the including file's own values win; includes may include)."""
    if path in chain:
        raise ConfigError(f"{chain[-1]}: include {path} loops back ({' -> '.join(map(str, (*chain, path)))})")
    raw = _read_toml(path)
    inc = raw.pop("include", [])
    if isinstance(inc, str):
        inc = [inc]
    if not isinstance(inc, list) or not all(isinstance(x, str) for x in inc):
        raise ConfigError(f"{path}: include = {inc!r}: must be a file name or a list of them (relative to this file)")
    merged: dict[str, Any] = {}
    for rel in inc:
        target = (path.parent / rel).resolve()
        if not target.is_file():
            raise ConfigError(f"{path}: include {rel!r}: no file {target}")
        part = _read_with_includes(target, (*chain, path))
        merged = merge_tables(merged, part)
    return merge_tables(merged, raw)


def load_profile(name_or_path: str | Path, data_dir: str | Path | None = None) -> Profile:
    """Load ``profiles/<name>.toml`` or a TOML file path into a :class:`Profile`."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise ConfigError(f"--profile {name_or_path!r}: no file {path}; known profiles: {known} or a .toml path")
    path = path.absolute()
    raw = _read_with_includes(path, ())
    where = str(path)
    _check_keys(raw, TOP_LEVEL_KEYS, where)
    for key in ("name", "description", "data_dir", "baseline"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key} is {_toml_type(raw[key])}; it must be a string")
    for key in ("models", "datasets"):
        if key in raw and not isinstance(raw[key], dict):
            raise ConfigError(f"{where}: {key} is {_toml_type(raw[key])}; it must be tables [{key}.<name>]")
    try:
        pname = raw.get("name", path.stem)
        models = {n: _model_spec(n, t, f"{where} [models.{n}]") for n, t in raw["models"].items()}
        datasets = {n: _dataset_spec(n, t, f"{where} [datasets.{n}]") for n, t in raw["datasets"].items()}
    except KeyError as exc:
        raise ConfigError(f"{where}: missing table [{exc.args[0]}]") from exc
    if not models or not datasets:
        raise ConfigError(f"{where}: needs at least one [models.*] and one [datasets.*] table")
    gate_raw = raw.get("gate", {})  # _build checks it is a table
    pre = raw.get("pretrain")
    # --data-dir / MEDQA_DATA_DIR is relative to the working directory; data_dir in the file is
    # relative to the file (the default: a `data` folder beside it).
    ddir = (Path(data_dir).expanduser().absolute() if data_dir
            else shipped(raw.get("data_dir", "")) or Path(raw.get("data_dir", "data")).expanduser())
    prof = Profile(
        name=pname,
        path=path,
        description=raw.get("description", ""),
        models=models,
        datasets=datasets,
        train=_build(TrainConfig, raw.get("train", {}), f"{where} [train]"),
        generation=_build(GenerationConfig, raw.get("generation", {}), f"{where} [generation]"),
        split=_build(SplitConfig, raw.get("split", {}), f"{where} [split]"),
        gate=_build(GateConfig, gate_raw, f"{where} [gate]"),
        pretrain=_build(PretrainConfig, pre, f"{where} [pretrain]") if pre is not None else None,
        data_dir=ddir if ddir.is_absolute() else path.parent / ddir,
        baseline=Path(raw.get("baseline", f"baselines/{pname}.json")),
        baseline_readonly=_flag(raw, "baseline_readonly", where),
        slow=_flag(raw, "slow", where),
        scorer=_build(ScorerConfig, raw.get("scorer", {}), f"{where} [scorer]"),
    )
    prof = dataclasses.replace(prof, models={n: _locate_model(prof, m, f"{where} [models.{n}]")
                                             for n, m in prof.models.items()})
    _validate(prof, where)
    return prof


#: what a hub model id looks like: ``owner/name`` (letters, digits, ``-``, ``_``, ``.``)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _locate_model(prof: Profile, spec: ModelSpec, where: str) -> ModelSpec:
    """A ``hub_id`` is a local checkpoint directory (relative to the profile, absolute, ``~``, or
    ``medqa:...``) or a hub id ``owner/name``; anything else is refused here, at load, instead of
    being tried as a hub id (and skipped for want of a GPU) at run time."""
    hub = spec.hub_id
    if hub is None:
        return spec
    local = prof.resolve(hub)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{where} hub_id = {hub!r}: {local} is a directory without config.json; "
                              "name a transformers checkpoint directory or a hub id owner/name")
        return dataclasses.replace(spec, local_dir=str(local.resolve()))
    looks_local = hub.startswith((".", "/", "~", SHIPPED_PREFIX)) or "\\" in hub or hub.count("/") > 1
    if looks_local or not HUB_ID.fullmatch(hub):
        raise ConfigError(f"{where} hub_id = {hub!r}: no directory {local} and not a hub id (owner/name); "
                          "local paths are relative to the profile file")
    return spec


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric profile key allows: ``lo``/``hi`` bounds (None = unbounded), open or
    closed, and whether it must be an integer."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def holds(self, value: Any) -> bool:
        if not _number(value) or (self.integer and not isinstance(value, int)):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def text(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = (None if b is None else str(b) if isinstance(b, int) else f"{b:g}" for b in (self.lo, self.hi))
        if lo is not None and hi is not None:
            return f"{kind} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {lo}"
        if hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {hi}"
        return f"a finite {kind.removeprefix('a ').removeprefix('an ')}"


_COUNT = Range(1, integer=True)
_POSITIVE = Range(0, lo_open=True)
#: numpy's seeds (the Trainer seeds numpy too) are 32-bit unsigned integers
_SEED = Range(0, 2**32 - 1, integer=True)
#: Allowed values of every numeric key, per table (the attribute of Profile holding it). Keys
#: checked elsewhere (split fractions, gate alphas and tolerances, the scorer's layer) are not
#: repeated here.
RANGES: dict[str, dict[str, Range]] = {
    "train": {"steps": _COUNT, "learning_rate": _POSITIVE, "batch_size": _COUNT, "max_length": _COUNT,
              "lora_r": _COUNT, "lora_alpha": _COUNT, "lora_dropout": Range(0, 1, hi_open=True),
              "warmup_ratio": Range(0, 1), "seed": _SEED, "num_processes": _COUNT, "average_tail": Range(0, 1)},
    "pretrain": {"steps": _COUNT, "learning_rate": _POSITIVE, "batch_size": _COUNT, "block_size": _COUNT,
                 "seed": _SEED},
    "generation": {"max_new_tokens": _COUNT, "batch_size": _COUNT, "repetition_penalty": _POSITIVE},
    # a factor below 1 would fail a run that is exactly as fast/small as its baseline
    "gate": {"time_factor": Range(1), "memory_factor": Range(1), "memory_slack_mib": Range(0)},
}

#: The optimizers each trainer builds. ``lean``: train/lean.py's ``_optimizer``. ``sft``: the
#: Trainer's ``optim`` names (transformers' ``OptimizerNames``, transformers 5; the test suite
#: checks each is still known to the installed transformers).
LEAN_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit")
SFT_OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
    "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise",
    "stable_adamw",
)
QUANTIZATIONS = ("none", "nf4")


def _choice(value: Any, allowed: tuple[str, ...], where: str, hint: str = "") -> None:
    """``value`` must be one of ``allowed``: else one line naming the key, the value, the closest
    allowed name and the choices."""
    if isinstance(value, str) and value in allowed:
        return
    import difflib

    close = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{where} = {value!r}{guess}: choose one of {list(allowed)}{hint}")


def _check_ranges(prof: Profile, where: str) -> None:
    for section, ranges in RANGES.items():
        table = getattr(prof, section)
        if table is None:  # no [pretrain]
            continue
        for key, rng in ranges.items():
            value = getattr(table, key)
            if not rng.holds(value):
                raise ConfigError(f"{where} [{section}] {key} = {value!r}: must be {rng.text()}")


def _check_train(train: TrainConfig, where: str) -> None:
    _choice(train.quantization, QUANTIZATIONS, f"{where} quantization")
    _choice(train.trainer, TRAINERS, f"{where} trainer", " ('sft': trl SFTTrainer, 'lean': the plain loop)")
    if train.trainer == "lean":
        _choice(train.optimizer, LEAN_OPTIMIZERS, f"{where} optimizer",
                " under trainer = 'lean' (or trainer = 'sft' for the Trainer's others)")
    else:
        _choice(train.optimizer, SFT_OPTIMIZERS, f"{where} optimizer", " (the Trainer's optim names)")
    if train.num_processes > 1 and train.trainer != "sft":
        raise ConfigError(f"{where} num_processes={train.num_processes} needs trainer = 'sft' "
                          "(data-parallel training goes through the Trainer)")
    if train.batch_size % train.num_processes:
        raise ConfigError(f"{where} batch_size = {train.batch_size}: must be divisible by num_processes = "
                          f"{train.num_processes} (each process takes batch_size / num_processes rows)")
    if train.average_tail and train.trainer != "lean":
        raise ConfigError(f"{where} average_tail = {train.average_tail}: tail averaging is built into trainer = 'lean' "
                          "only; set trainer = \"lean\" or average_tail = 0")
    if train.packing and train.trainer == "sft":
        # trl's padding_free does not truncate rows to max_length, so SFTTrainer refuses it at
        # run time ("When `padding_free=True` without packing, `max_length` is not enforced").
        raise ConfigError(f"{where} packing = true needs trainer = 'lean' (trl's padding_free under trainer = "
                          "'sft' cannot enforce max_length and fails at run time); set trainer = \"lean\" or "
                          "packing = false")


def _validate(prof: Profile, where: str) -> None:
    """Checks that span tables (run on load and after --set overrides)."""
    _check_ranges(prof, where)
    _check_gate(prof.gate, f"{where} [gate]")
    prof.scorer.check(f"{where} [scorer]")
    _check_split(prof.split, f"{where} [split]")
    for d in prof.datasets.values():
        _check_dataset(d, f"{where} [datasets.{d.name}]")
    _check_train(prof.train, f"{where} [train]")


def _flag(raw: dict[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} = {value!r}: must be true or false")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_split(split: SplitConfig, where: str) -> None:
    if split.test_fraction is not None and split.test_size is not None:  # both were set in the profile
        raise ConfigError(f"{where}: give test_size or test_fraction, not both")
    if split.test_size is not None and (not isinstance(split.test_size, int) or isinstance(split.test_size, bool) or split.test_size <= 0):
        raise ConfigError(f"{where} test_size = {split.test_size!r}: must be an integer > 0")
    if split.test_fraction is not None and not (_number(split.test_fraction) and 0 < split.test_fraction < 1):
        raise ConfigError(f"{where} test_fraction = {split.test_fraction!r}: must be a number between 0 and 1")
    if not (_number(split.near_dup_threshold) and 0 < split.near_dup_threshold <= 1):
        raise ConfigError(f"{where} near_dup_threshold = {split.near_dup_threshold!r}: must be a number in (0, 1]")
    if split.max_leak_fraction is not None and not (_number(split.max_leak_fraction) and 0 <= split.max_leak_fraction <= 1):
        raise ConfigError(f"{where} max_leak_fraction = {split.max_leak_fraction!r}: must be a number in [0, 1]")


def _check_dataset(d: DatasetSpec, where: str) -> None:
    from .data.cleaning import RULES
    from .data.datasets import FORMATS

    if d.format is not None:
        _choice(d.format, FORMATS, f"{where} format", " (or leave it out: the file's suffix decides)")
    unknown = [r for r in d.clean if r not in RULES]
    if unknown:
        known = "; ".join(f"{name} ({RULES[name].doc})" for name in sorted(RULES))
        raise ConfigError(f"{where} clean = {list(d.clean)!r}: unknown rule(s) {unknown}; the rules: {known}")
    for key in ("max_question_chars", "max_answer_chars"):
        v = getattr(d, key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ConfigError(f"{where} {key} = {v!r}: must be an integer > 0")


def _check_gate(gate: GateConfig, where: str) -> None:
    if not isinstance(gate.metric_tolerance, dict):
        raise ConfigError(f"{where} metric_tolerance = {gate.metric_tolerance!r}: must be a table {{ metric = tolerance }}")
    from .metrics.registry import GATED as gated
    bad = sorted((set(gate.metric_tolerance) | set(gate.one_sided)) - set(gated)) + sorted(set(gate.require_beats_base) - set(METRICS))
    if bad:
        raise ConfigError(f"{where}: unknown metric name(s) {bad}; metrics are {list(gated)}")
    unknown = sorted((set(gate.controls) | set(gate.require_controls)) - set(CONTROLS))
    if unknown:
        raise ConfigError(f"{where} controls: unknown control(s) {unknown}; use {list(CONTROLS)}")
    for name in ("alpha", "aggregate_alpha", "control_alpha"):
        v = getattr(gate, name)
        if not isinstance(v, float) or not 0 < v < 0.5:
            raise ConfigError(f"{where} {name} = {v!r}: must be a number in (0, 0.5)")
    f = gate.aggregate_min_effect_factor
    if not isinstance(f, (int, float)) or isinstance(f, bool) or not math.isfinite(f) or f < 0:
        raise ConfigError(f"{where} aggregate_min_effect_factor = {f!r}: must be a finite number >= 0")
    if not isinstance(gate.baseline_seeds, int) or gate.baseline_seeds < 1:
        raise ConfigError(f"{where} baseline_seeds = {gate.baseline_seeds!r}: must be an integer >= 1")
    if not isinstance(gate.gate_seeds, int) or isinstance(gate.gate_seeds, bool) or gate.gate_seeds < 1:
        raise ConfigError(f"{where} gate_seeds = {gate.gate_seeds!r}: must be an integer >= 1")
    for m, tol in gate.metric_tolerance.items():
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not math.isfinite(tol) or tol < 0:
            raise ConfigError(f"{where} metric_tolerance.{m} = {tol!r}: must be a finite number >= 0")
    if not isinstance(gate.prior_sd, dict) or any(m not in gated for m in gate.prior_sd):
        raise ConfigError(f"{where} prior_sd = {gate.prior_sd!r}: must be a table {{ metric = sd }} of {list(gated)}")
    for m, sd in gate.prior_sd.items():
        if not _number(sd) or sd <= 0:
            raise ConfigError(f"{where} prior_sd.{m} = {sd!r}: must be a finite number > 0")
    if not _number(gate.prior_df) or gate.prior_df < 0:
        raise ConfigError(f"{where} prior_df = {gate.prior_df!r}: must be a finite number >= 0")
    if not isinstance(gate.answer_nll, bool):
        raise ConfigError(f"{where} answer_nll = {gate.answer_nll!r}: must be true or false")
    if gate.max_degenerate is not None and not (_number(gate.max_degenerate) and 0 < gate.max_degenerate <= 1):
        raise ConfigError(f"{where} max_degenerate = {gate.max_degenerate!r}: must be a share in (0, 1]")


_OVERRIDABLE = {"train": "train", "generation": "generation", "split": "split", "pretrain": "pretrain", "scorer": "scorer"}


def with_overrides(profile: Profile, assignments: list[str] | tuple[str, ...]) -> Profile:
    """A copy of ``profile`` with ``section.key=value`` assignments applied (value in TOML syntax,
    e.g. ``train.seed=3``, ``train.learning_rate=1e-3``); an unknown section or key is an error
    naming it. Used by ``--set`` and the sweep scripts."""
    for text in assignments:
        lhs, sep, value = text.partition("=")
        section, dot, key = lhs.strip().partition(".")
        if not sep or not dot or section not in _OVERRIDABLE:
            raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE with SECTION one of {sorted(_OVERRIDABLE)}")
        current = getattr(profile, _OVERRIDABLE[section])
        if current is None or key not in {f.name for f in dataclasses.fields(current)}:
            allowed = sorted(f.name for f in dataclasses.fields(current)) if current is not None else []
            raise ConfigError(f"--set {text!r}: [{section}] has no key {key!r}; allowed: {allowed}")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--set {text!r}: value is not TOML ({exc})") from exc
        table = {**as_dict(current), key: parsed}
        new = _build(type(current), table, f"--set {text!r}")
        profile = dataclasses.replace(profile, **{_OVERRIDABLE[section]: new})
    if assignments:
        _validate(profile, "--set " + " ".join(assignments))
    return profile
