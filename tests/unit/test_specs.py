"""Profile loading (medqa_core.specs): the shipped tiny profile, user TOML files, and every
way a profile can be wrong (each must raise a ConfigError naming the file and the key)."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from helpers import MINIMAL_PROFILE, REPO_ROOT, expect_error
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from medqa_core.cache import content_key
from medqa_core.errors import ConfigError
from medqa_core.paths import PROFILES_DIR
from medqa_core.profile import load_profile
from medqa_core.specs import (
    FAMILIES,
    GateConfig,
    GenerationConfig,
    PretrainConfig,
    SplitConfig,
    TrainConfig,
    as_dict,
    case_name,
)


def case_ids(prof):
    return [case_name(m, d) for m in prof.models for d in prof.datasets]


TINY_TOML = PROFILES_DIR / "tiny.toml"

MINIMAL = MINIMAL_PROFILE


def write_profile(tmp_path: Path, text: str, name: str = "prof.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def expect_config_error(path: Path | str, *fragments: str) -> str:
    return expect_error(lambda: load_profile(path), ConfigError, *fragments)


# ---------------------------------------------------------------- the shipped profile


def test_tiny_profile_has_four_models_and_five_datasets():
    prof = load_profile("tiny")
    raw = tomllib.loads(TINY_TOML.read_text())
    assert prof.name == "tiny"
    assert list(prof.models) == ["llama", "mistral", "gemma", "phi"] == list(raw["models"])
    assert list(prof.datasets) == list(raw["datasets"])
    assert len(prof.datasets) == 5
    ids = case_ids(prof)
    assert len(ids) == 20 == len(set(ids))
    assert "mistral-wikidoc" in ids and "phi-ai_medical_chatbot" in ids
    assert ids == [f"{m}-{d}" for m in raw["models"] for d in raw["datasets"]]


def test_tiny_profile_values_match_the_toml_file():
    prof = load_profile("tiny")
    raw = tomllib.loads(TINY_TOML.read_text())
    for key, value in raw["train"].items():
        assert getattr(prof.train, key) == value, key
    for key, value in raw["generation"].items():
        assert getattr(prof.generation, key) == value, key
    assert prof.split == SplitConfig(**raw["split"])
    for key, value in raw["gate"].items():
        assert getattr(prof.gate, key) == (tuple(value) if isinstance(value, list) else value), key
    assert prof.gate.require_beats_base == tuple(raw["gate"]["require_beats_base"])
    assert prof.pretrain is not None and prof.pretrain.steps == raw["pretrain"]["steps"]
    for name, table in raw["datasets"].items():
        spec = prof.datasets[name]
        q = table["question"]
        assert spec.question == ((q,) if isinstance(q, str) else tuple(q))
        assert spec.answer == table["answer"]
        assert spec.file == table["file"]
        assert (prof.data_dir / spec.file).is_file()
    assert prof.data_dir.resolve() == (prof.path.parent / raw["data_dir"]).resolve() == (REPO_ROOT / "fixtures" / "data").resolve()


def test_relative_paths_resolve_against_the_profile_file(tmp_path, monkeypatch):
    """A profile kept beside its data works from any working directory; --data-dir is relative
    to the working directory (it is typed there)."""
    src = (PROFILES_DIR / "tiny.toml").read_text()
    own = tmp_path / "mine"
    (own / "rows").mkdir(parents=True)
    text = src.replace('data_dir = "../fixtures/data"', 'data_dir = "rows"').replace(
        'baseline = "../baselines/tiny.json"', 'baseline = "base.json"')
    assert text != src
    (own / "p.toml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    prof = load_profile(Path("..") / "mine" / "p.toml")
    assert prof.data_dir.resolve() == (own / "rows").resolve()
    assert prof.resolve(str(prof.baseline)).resolve() == (own / "base.json").resolve()
    assert prof.path.is_absolute()
    via_option = load_profile(own / "p.toml", data_dir="somewhere")
    assert via_option.data_dir == elsewhere / "somewhere"


def test_tiny_models_take_family_facts():
    prof = load_profile("tiny")
    for name, spec in prof.models.items():
        assert spec.is_tiny and spec.hub_id is None
        assert spec.family == name
        assert spec.target_modules == tuple(FAMILIES[name]["targets"])
        assert spec.attn_implementation == FAMILIES[name]["attn"]
    assert prof.models["gemma"].attn_implementation == "eager"  # soft-capping: no sdpa
    assert "qkv_proj" in prof.models["phi"].target_modules  # fused projection


def test_profile_as_dict_is_json_and_key_is_stable():
    a, b = load_profile("tiny"), load_profile(TINY_TOML)
    assert content_key(as_dict(a)) == content_key(as_dict(b))
    assert content_key(as_dict(a.train)) != content_key(as_dict(TrainConfig()))


# ---------------------------------------------------------------- user TOML files


def test_user_toml_loads_with_defaults(tmp_path):
    path = write_profile(tmp_path, MINIMAL)
    prof = load_profile(path)
    assert prof.name == "mine" and prof.path == path
    assert case_ids(prof) == ["llama-d1"]
    assert prof.train == TrainConfig()
    assert prof.generation == GenerationConfig()
    assert prof.split == SplitConfig()
    assert prof.gate == GateConfig()
    assert prof.pretrain is None
    spec = prof.models["llama"]
    assert spec.tiny_config == {"hidden_size": 8, "num_hidden_layers": 1}
    assert spec.target_modules == tuple(FAMILIES["llama"]["targets"])
    assert prof.datasets["d1"].question == ("q",)
    assert prof.baseline == Path("baselines/mine.json")


def test_user_toml_as_string_path_and_data_dir_override(tmp_path):
    path = write_profile(tmp_path, MINIMAL)
    prof = load_profile(str(path), data_dir=tmp_path)
    assert prof.data_dir == tmp_path


def test_user_toml_overrides(tmp_path):
    text = MINIMAL + """
[models.big]
family = "mistral"
hub_id = "org/some-model"
target_modules = ["q_proj"]

[datasets.d2]
file = "d2.csv"
question = ["title", "body"]
answer = "reply"
format = "csv"

[train]
steps = 7
quantization = "nf4"

[gate]
metric_tolerance = { bert_f1 = 0.5 }
time_factor = 9.0
"""
    prof = load_profile(write_profile(tmp_path, text))
    big = prof.models["big"]
    assert big.family == "mistral" and big.hub_id == "org/some-model" and not big.is_tiny
    assert big.target_modules == ("q_proj",)
    assert prof.datasets["d2"].question == ("title", "body")
    assert prof.datasets["d2"].format == "csv"
    assert prof.train.steps == 7 and prof.train.quantization == "nf4"
    assert prof.train.learning_rate == TrainConfig().learning_rate
    assert prof.gate.time_factor == 9.0 and prof.gate.metric_tolerance == {"bert_f1": 0.5}
    assert case_ids(prof) == ["llama-d1", "llama-d2", "big-d1", "big-d2"]


# ---------------------------------------------------------------- errors


def test_unknown_profile_name_lists_known_profiles():
    msg = expect_config_error("no-such-profile", "no-such-profile", "known profiles")
    known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
    assert "tiny" in known
    for k in known:
        assert k in msg


def test_missing_toml_path_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    expect_config_error(missing, str(missing))


def test_invalid_toml_names_file(tmp_path):
    path = write_profile(tmp_path, MINIMAL + "\n[train\nsteps = 3\n")
    expect_config_error(path, str(path), "invalid TOML")


@pytest.mark.parametrize(
    "table, key",
    [("train", "stepz"), ("generation", "top_k"), ("split", "test_fraction"), ("gate", "tolerance"),
     ("pretrain", "epochs")],
)
def test_unknown_key_in_section_names_key_and_file(tmp_path, table, key):
    path = write_profile(tmp_path, MINIMAL + f"\n[{table}]\n{key} = 3\n")
    expect_config_error(path, str(path), f"[{table}]", key)


def test_unknown_key_in_model_table(tmp_path):
    path = write_profile(tmp_path, MINIMAL.replace("[models.llama]\n", "[models.llama]\nlora_rank = 4\n"))
    expect_config_error(path, str(path), "[models.llama]", "lora_rank")


def test_unknown_family_names_model_and_known_families(tmp_path):
    path = write_profile(tmp_path, MINIMAL + '\n[models.gpt]\nhub_id = "x/y"\n')
    msg = expect_config_error(path, str(path), "[models.gpt]", "'gpt'")
    for fam in FAMILIES:
        assert fam in msg


def test_unknown_explicit_family(tmp_path):
    path = write_profile(tmp_path, MINIMAL + '\n[models.m2]\nfamily = "falcon"\nhub_id = "x/y"\n')
    expect_config_error(path, str(path), "[models.m2]", "falcon")


@pytest.mark.parametrize(
    "body",
    ['hub_id = "org/m"\ntiny_config = { hidden_size = 8 }\n', 'tokenizer = "fixtures/tokenizer"\n'],
    ids=["both", "neither"],
)
def test_hub_id_xor_tiny_config(tmp_path, body):
    path = write_profile(tmp_path, MINIMAL + "\n[models.mistral]\n" + body)
    expect_config_error(path, str(path), "[models.mistral]", "hub_id", "tiny_config")


@pytest.mark.parametrize(
    "body, fragments",
    [
        ('file = "x.json"\nanswer = "a"\n', ("question",)),
        ('file = "x.json"\nquestion = "q"\n', ("answer",)),
        ('question = "q"\nanswer = "a"\n', ("file", "hub_id")),
        ('file = "x.json"\nquestion = "q"\nanswer = "a"\nsplit = "train"\n', ("split",)),
    ],
    ids=["no-question", "no-answer", "no-source", "unknown-key"],
)
def test_bad_dataset_table(tmp_path, body, fragments):
    path = write_profile(tmp_path, MINIMAL + "\n[datasets.d9]\n" + body)
    expect_config_error(path, str(path), "[datasets.d9]", *fragments)


@pytest.mark.parametrize("value", ["nf8", "int4", "NONE"])
def test_bad_quantization(tmp_path, value):
    path = write_profile(tmp_path, MINIMAL + f'\n[train]\nquantization = "{value}"\n')
    expect_config_error(path, str(path), "quantization", value)


@pytest.mark.parametrize("drop", ["models", "datasets"])
def test_missing_table(tmp_path, drop):
    prof = load_profile(write_profile(tmp_path, MINIMAL))  # sanity: the full text loads
    assert prof.models and prof.datasets
    if drop == "models":
        text = MINIMAL.split("[models.llama]")[0] + "[datasets" + MINIMAL.split("[datasets")[1]
    else:
        text = MINIMAL.split("[datasets.d1]")[0]
    path = write_profile(tmp_path, text, "cut.toml")
    expect_config_error(path, str(path), drop)


def test_empty_models_table(tmp_path):
    text = "[models]\n" + "[datasets" + MINIMAL.split("[datasets")[1]
    path = write_profile(tmp_path, text)
    expect_config_error(path, str(path), "[models.*]")


@given(st.sampled_from(["train", "generation", "split", "gate", "pretrain"]),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
@settings(max_examples=30, deadline=None)
def test_property_any_unknown_key_is_rejected(tmp_path_factory, table, key):
    cls = {"train": TrainConfig, "generation": GenerationConfig, "split": SplitConfig, "gate": GateConfig,
           "pretrain": PretrainConfig}[table]
    assume(key not in {f.name for f in dataclasses.fields(cls)})
    path = write_profile(tmp_path_factory.mktemp("p"), MINIMAL + f"\n[{table}]\n{key} = 1\n")
    expect_config_error(path, str(path), f"[{table}]", key)


# ---------------------------------------------------------------- bugs: values not validated


@pytest.mark.parametrize("line, key", [("steps = \"many\"", "steps"), ("learning_rate = nan", "learning_rate")])
def test_bad_value_type_in_train(tmp_path, line, key):
    path = write_profile(tmp_path, MINIMAL + f"\n[train]\n{line}\n")
    expect_config_error(path, str(path), "[train]", key)


@pytest.mark.parametrize("line, bad", [("metric_tolerance = { bert_F1 = 0.5 }", "bert_F1"),
                                       ("require_beats_base = [\"bleu\"]", "bleu")])
def test_gate_names_unknown_metric(tmp_path, line, bad):
    path = write_profile(tmp_path, MINIMAL + f"\n[gate]\n{line}\n")
    expect_config_error(path, str(path), "[gate]", bad)


# ---------------------------------------------------------------- values that would fail far from their line


@pytest.mark.parametrize("section, line, key", [
    ("train", "steps = 0", "steps"),
    ("train", "batch_size = -2", "batch_size"),
    ("generation", "batch_size = 0", "batch_size"),
    ("gate", "time_factor = -1.0", "time_factor"),
    ("split", "test_size = 0", "test_size"),
])
def test_non_positive_values_are_rejected(tmp_path, section, line, key):
    path = write_profile(tmp_path, MINIMAL + f"\n[{section}]\n{line}\n")
    expect_config_error(path, str(path), f"[{section}]", key, "> 0")


def test_question_must_name_columns(tmp_path):
    path = write_profile(tmp_path, MINIMAL.replace('question = "q"', "question = 5"))
    expect_config_error(path, str(path), "[datasets.d1]", "question = 5")


def test_file_must_be_a_string(tmp_path):
    path = write_profile(tmp_path, MINIMAL.replace('file = "d1.json"', "file = 5"))
    expect_config_error(path, str(path), "[datasets.d1]", "file = 5")


def test_gate_noise_model_fields_load(tmp_path):
    text = MINIMAL + """
[gate]
alpha = 0.01
aggregate_alpha = 0.005
aggregate_min_effect_factor = 0.5
one_sided = ["bert_f1", "answer_words"]
baseline_seeds = 3
controls = ["base", "shuffled"]
require_controls = ["base"]
control_alpha = 0.05
"""
    g = load_profile(write_profile(tmp_path, text)).gate
    assert (g.alpha, g.aggregate_alpha, g.aggregate_min_effect_factor, g.control_alpha) == (0.01, 0.005, 0.5, 0.05)
    assert g.one_sided == ("bert_f1", "answer_words") and g.controls == ("base", "shuffled")
    assert g.require_controls == ("base",) and g.baseline_seeds == 3
    d = GateConfig()
    assert d.baseline_seeds >= 2 and 0 < d.alpha < 0.5 and d.require_controls == ("base",)


@pytest.mark.parametrize("line, fragments", [
    ("alpha = 0.7", ["alpha", "(0, 0.5)"]),
    ("alpha = 0.0", ["alpha"]),
    ("aggregate_alpha = 1", ["aggregate_alpha"]),
    ("control_alpha = -0.01", ["control_alpha"]),
    ('alpha = "0.01"', ["alpha"]),
    ("baseline_seeds = 0", ["baseline_seeds", ">= 1"]),
    ("baseline_seeds = 2.5", ["baseline_seeds"]),
    ('one_sided = ["bleu"]', ["bleu"]),
    ('controls = ["base", "oracle"]', ["oracle", "controls"]),
    ('require_controls = ["nobody"]', ["nobody"]),
    ("metric_tolerance = { answer_words = -1.0 }", ["answer_words", ">= 0"]),
])
def test_gate_noise_model_fields_are_validated(tmp_path, line, fragments):
    path = write_profile(tmp_path, MINIMAL + f"\n[gate]\n{line}\n")
    expect_config_error(path, str(path), "[gate]", *fragments)


def test_metric_tolerance_must_be_a_table(tmp_path):
    path = write_profile(tmp_path, MINIMAL + "\n[gate]\nmetric_tolerance = 5\n")
    expect_config_error(path, str(path), "metric_tolerance", "table")


# ---------------------------------------------------------------- small profile, gguf, unavailable, split, cleaning


def test_small_profile_shape():
    prof = load_profile("small")
    assert prof.slow is True
    llama = prof.models["llama"]
    assert llama.gguf and llama.gguf.endswith(".gguf") and llama.family == "llama" and not llama.needs_cuda
    for fam in ("mistral", "gemma", "phi"):
        assert prof.models[fam].unavailable == f"no offline checkpoint for {fam} at this size"
    assert set(prof.datasets) == {"wikidoc", "mental_health", "medical_dataset", "ai_medical_chatbot", "healthcaremagic"}
    assert prof.split.test_fraction is not None and prof.split.test_size is None
    assert 50 <= prof.train.steps <= 100 and prof.train.max_length <= 256
    assert prof.split.max_leak_fraction is not None
    assert not load_profile("tiny").slow
    assert load_profile("paper").models["llama"].needs_cuda


@pytest.mark.parametrize("body", ['gguf = "x/y.gguf"\nhub_id = "a/b"\n', 'unavailable = "none"\ngguf = "x/y.gguf"\n'],
                         ids=["gguf+hub", "unavailable+gguf"])
def test_model_source_conflicts(tmp_path, body):
    path = write_profile(tmp_path, MINIMAL + "\n[models.mistral]\n" + body)
    expect_config_error(path, str(path), "[models.mistral]")


@pytest.mark.parametrize("line, key", [
    ("test_fraction = 1.5", "test_fraction"),
    ("test_fraction = 0.1\ntest_size = 10", "not both"),
    ("near_dup_threshold = 0", "near_dup_threshold"),
    ("max_leak_fraction = -0.1", "max_leak_fraction"),
    ("test_size = 2.5", "test_size"),
])
def test_bad_split_values(tmp_path, line, key):
    path = write_profile(tmp_path, MINIMAL + f"\n[split]\n{line}\n")
    expect_config_error(path, str(path), "[split]", key)


def test_slow_must_be_boolean(tmp_path):
    path = write_profile(tmp_path, 'slow = "yes"\n' + MINIMAL)
    expect_config_error(path, str(path), "slow")


@pytest.mark.parametrize("line, frag", [('clean = ["bogus"]', "bogus"), ("max_answer_chars = 0", "max_answer_chars")])
def test_bad_dataset_cleaning_options(tmp_path, line, frag):
    path = write_profile(tmp_path, MINIMAL + line + "\n")
    expect_config_error(path, str(path), "[datasets.d1]", frag)


def test_dataset_env_var_name():
    from medqa_core.specs import DatasetSpec

    assert DatasetSpec("ai-medical.chatbot", "x", ("q",), "a").env_var == "MEDQA_DATA_AI_MEDICAL_CHATBOT"


@pytest.mark.parametrize("typo, expected", [("[trian]\nsteps = 3\n", "did you mean 'train'"),
                                            ("[gates]\nalpha = 0.01\n", "did you mean 'gate'"),
                                            ("descripton = 'x'\n", "did you mean 'description'")])
def test_misspelt_table_or_key_is_an_error_with_a_suggestion(tmp_path, typo, expected):
    path = write_profile(tmp_path, typo + MINIMAL_PROFILE)
    with pytest.raises(ConfigError, match=expected):
        load_profile(path)


def test_an_unknown_cleaning_rule_names_every_rule_with_what_it_strips(tmp_path):
    from medqa_core.data.cleaning import RULES

    path = write_profile(tmp_path, MINIMAL_PROFILE.replace('answer = "a"\n', 'answer = "a"\nclean = ["answer_greting"]\n'))
    msg = expect_config_error(path, "unknown rule(s) ['answer_greting']")
    for name, rule in RULES.items():
        assert f"{name} ({rule.doc})" in msg
