"""``medqa-bench init`` (scaffold.py): a profile for one's own data file and model, written into
the repository with relative paths and checked with the project's loader; no model is loaded here."""
from __future__ import annotations

import csv
import json
import shlex
import shutil
import tomllib

import pytest
from helpers import REPO_ROOT

from medqa_core.cli import main
from medqa_core.profile import load_profile
from medqa_core.scaffold import InitError, init_profile

TINY_LLAMA = REPO_ROOT / "fixtures" / "models" / "llama"
Q, A = 'Patient "Message"', "Clinician Reply"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """The command writes into the repository it runs in: run it in an empty folder."""
    monkeypatch.chdir(tmp_path)


def _fixture_pairs() -> list[tuple[str, str]]:
    with (REPO_ROOT / "fixtures" / "data" / "ai_medical_chatbot.csv").open(newline="", encoding="utf-8") as f:
        return [(r["Description"], r["Doctor"]) for r in csv.DictReader(f)]


def rows(n: int = 40) -> list[dict[str, str]]:
    """n rows of fixture text (text the tiny stand-ins' tokenizer was built on: init's fit check
    accepts them) under the user's own column names."""
    pairs = _fixture_pairs()
    return [{"id": str(i), Q: pairs[i][0], A: pairs[i][1], "Extra": "x"} for i in range(n)]


def write(path, fmt: str, data: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    elif fmt == "json":
        path.write_text(json.dumps({"train": data}))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(data), path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "parquet"])
def test_profile_is_written_into_the_repository_with_relative_paths_and_loads(tmp_path, fmt):
    repo = tmp_path / "my repo"
    data = repo / "data" / f"Clinic Export.{fmt}"
    write(data, fmt, rows())
    res = init_profile(data, Q, A, str(TINY_LLAMA), root=repo)
    assert res.profile == repo / "clinic_export.toml" and res.profile.is_file()
    assert res.baseline == repo / "baselines" / "clinic_export.json" and not res.baseline.exists()
    raw = tomllib.loads(res.profile.read_text())
    # committable: nothing absolute, the shipped tiny base named as medqa:...
    assert raw["data_dir"] == "data" and raw["baseline"] == "baselines/clinic_export.json"
    assert raw["models"]["llama"]["hub_id"] == "medqa:fixtures/models/llama"
    assert str(tmp_path) not in res.profile.read_text()
    prof = load_profile(res.profile)
    assert prof.name == "clinic_export" and prof.data_dir.resolve() == data.parent
    assert prof.resolve(str(prof.baseline)) == res.baseline
    ds = prof.datasets["clinic_export"]
    assert ds.question == (Q,) and ds.answer == A and ds.file == data.name
    m = prof.models["llama"]
    assert m.local_dir == str(TINY_LLAMA.resolve()) and m.family == "llama" and not m.needs_cuda
    assert not prof.slow and prof.train.trainer == "lean"  # a ~1M-parameter model gets the tiny recipe
    assert prof.gate.answer_nll is False  # (and no answer_nll stage: the pipeline's own smoke test)
    assert res.case_id == "llama-clinic_export" and res.rows == 40
    assert res.train_rows + res.test_rows == 40 and res.test_rows > 0
    # the repository's pyproject.toml now names the profile; no temporary file left
    assert tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["medqa-bench"]["profile"] == "clinic_export.toml"
    assert sorted(p.name for p in repo.iterdir()) == sorted([".gitignore", "data", res.profile.name, "pyproject.toml"])
    assert {".medqa-cache/", ".medqa-results/"} <= set((repo / ".gitignore").read_text().splitlines())


def test_profile_moves_with_the_repository(tmp_path):
    """Relative paths: the repository copied elsewhere loads the same data and baseline."""
    repo = tmp_path / "a"
    write(repo / "qa.csv", "csv", rows())
    res = init_profile(repo / "qa.csv", Q, A, "tiny", root=repo)
    moved = tmp_path / "b"
    shutil.copytree(repo, moved)
    shutil.rmtree(repo)
    prof = load_profile(moved / res.profile.name)
    assert prof.data_dir.resolve() == moved.resolve() and prof.resolve(str(prof.baseline)).parent == moved / "baselines"


def test_pyproject_naming_another_profile_is_left_alone(tmp_path):
    write(tmp_path / "qa.csv", "csv", rows())
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.medqa-bench]\nprofile = "other.toml"\n')
    before = (tmp_path / "pyproject.toml").read_text()
    res = init_profile(tmp_path / "qa.csv", Q, A, "tiny", root=tmp_path)
    assert (tmp_path / "pyproject.toml").read_text() == before
    assert any("already runs profile" in n and "--profile qa.toml" in n for n in res.notes)
    # a pyproject.toml without the table gets it appended, the rest unchanged
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    init_profile(tmp_path / "qa.csv", Q, A, "tiny", root=tmp_path, force=True)
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.startswith('[project]\nname = "x"\n') and tomllib.loads(text)["tool"]["medqa-bench"]["profile"] == "qa.toml"


def test_ci_workflow_is_written_on_request(tmp_path):
    write(tmp_path / "qa.csv", "csv", rows())
    res = init_profile(tmp_path / "qa.csv", Q, A, "tiny", root=tmp_path, ci="github")
    wf = tmp_path / ".github" / "workflows" / "medqa-bench.yml"
    assert wf in res.also_written and "python -m pytest qa.toml --profile qa.toml" in wf.read_text()
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(wf.read_text())["jobs"]["gate"]["steps"]


def test_commands_record_then_gate(tmp_path):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    res = init_profile(data, Q, A, str(TINY_LLAMA), name="Mine", root=tmp_path)
    rec, gate_cmd = (shlex.split(c) for c in res.commands)
    assert rec[rec.index("--profile") + 1] == "mine.toml" == gate_cmd[3]  # relative to the repository root
    assert "--update-baselines" in rec and "--update-baselines" not in gate_cmd
    assert rec[:-1] == gate_cmd and "slow" not in gate_cmd  # not a slow profile: no -m slow
    assert gate_cmd[1:3] == ["-m", "pytest"]
    text = res.text()
    assert res.commands[0] in text and res.commands[1] in text and str(res.profile) in text


def test_a_large_model_gets_the_slow_recipe_and_minus_m_slow(tmp_path):
    big = tmp_path / "models" / "Qwen2-0.5B"
    big.mkdir(parents=True)
    (big / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
                                                 "intermediate_size": 4864, "num_attention_heads": 14,
                                                 "num_key_value_heads": 2, "vocab_size": 151936}))
    data = tmp_path / "qa.jsonl"
    write(data, "jsonl", rows())
    res = init_profile(data, Q, A, str(big))
    prof = load_profile(res.profile)
    assert prof.slow and res.slow and prof.train.steps == 20 and prof.generation.repetition_penalty == 1.2
    assert prof.gate.answer_nll is True  # a real model's gate also judges the reference answers' likelihood
    assert prof.models["qwen2_0_5b"].family == "llama"  # unknown model_type: the llama projection names
    assert any("qwen2" in n for n in res.notes)
    for cmd in res.commands:
        args = shlex.split(cmd)
        assert args[args.index("-m", 2) + 1] == "slow"


@pytest.mark.parametrize("native", [True, False])
def test_a_real_model_trains_lean_on_a_larger_test_set_and_in_bf16_only_where_native(tmp_path, monkeypatch, native):
    from medqa_core import resources, scaffold

    monkeypatch.setattr(resources, "native_cpu_bf16", lambda: native)
    data = tmp_path / "qa.jsonl"
    write(data, "jsonl", rows(300 if native else 100))
    res = init_profile(data, Q, A, "microsoft/Phi-3.5-mini-instruct")
    prof = load_profile(res.profile)
    assert prof.train.trainer == "lean"
    assert prof.train.cpu_bf16 is native and prof.generation.cpu_bf16 is native
    # up to REAL_TEST_ROWS test questions, never more than REAL_TEST_SHARE of the rows
    assert res.test_rows == min(scaffold.REAL_TEST_ROWS, int(res.rows * scaffold.REAL_TEST_SHARE))
    assert any(("natively" if native else "no native bf16") in n for n in res.notes)
    # --set wins over the detection, either way
    other = init_profile(data, Q, A, "microsoft/Phi-3.5-mini-instruct", name="other",
                         sets=[f"train.cpu_bf16={str(not native).lower()}"])
    assert load_profile(other.profile).train.cpu_bf16 is (not native)


def test_hub_id_and_several_question_columns(tmp_path):
    data = tmp_path / "chat.csv"
    write(data, "csv", [{**r, "Subject": f"s{i}"} for i, r in enumerate(rows())])
    res = init_profile(data, ["Subject", Q], A, "microsoft/Phi-3.5-mini-instruct")
    prof = load_profile(res.profile)
    spec = next(iter(prof.models.values()))
    assert spec.hub_id == "microsoft/Phi-3.5-mini-instruct" and spec.family == "phi" and spec.needs_cuda
    assert prof.slow and prof.datasets["chat"].question == ("Subject", Q)
    assert any("CUDA" in n for n in res.notes)


def test_set_writes_values_into_the_profile(tmp_path):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    res = init_profile(data, Q, A, str(TINY_LLAMA), sets=["train.steps=7", "gate.baseline_seeds=2", "split.test_size=5"])
    prof = load_profile(res.profile)
    assert prof.train.steps == 7 and prof.gate.baseline_seeds == 2
    assert prof.split.test_size == 5 and prof.split.test_fraction is None and res.test_rows == 5


@pytest.mark.parametrize("sets, needle", [
    (["train.steps=0"], "must be > 0"),
    (["trian.steps=3"], "SECTION one of"),
    (["train.steps=[oops"], "not TOML"),
    (["train.stepz=3"], "did you mean 'steps'"),
])
def test_bad_values_leave_no_file(tmp_path, sets, needle):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    with pytest.raises(InitError) as exc:
        init_profile(data, Q, A, str(TINY_LLAMA), sets=sets)
    assert needle in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.csv"]


def test_missing_column_lists_the_columns_found(tmp_path, capsys):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    rc = main(["init", str(data), "--question", "patient message", "--answer", A, "--model", str(TINY_LLAMA)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "no column 'patient message'" in err and str(data) in err
    assert "columns found: ['id', 'Patient \"Message\"', 'Clinician Reply', 'Extra']" in err
    assert main(["init", str(data), "--question", Q, "--answer", "Reply", "--model", str(TINY_LLAMA)]) == 2
    assert "no column 'Reply' for --answer" in capsys.readouterr().err
    assert not (tmp_path / "qa.toml").exists()


def test_unreadable_or_missing_files_are_named(tmp_path, capsys):
    bad = tmp_path / "broken.csv"
    bad.write_bytes(b"q,a\n\xff\xfe,x\n")
    missing = tmp_path / "nope.csv"
    other = tmp_path / "qa.xlsx"
    other.write_text("x")
    for path, needle in ((bad, "not UTF-8"), (missing, "no such file"), (other, "cannot tell the format")):
        assert main(["init", str(path), "--question", "q", "--answer", "a", "--model", str(TINY_LLAMA)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and needle in err


def test_bad_model_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    empty = tmp_path / "empty_model"
    empty.mkdir()
    for model, needle in ((str(empty), "without config.json"), ("./no/such/dir", "no such directory"),
                          ("not a hub id!", "not a shipped model")):
        assert main(["init", str(data), "--question", Q, "--answer", A, "--model", model]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err


def test_existing_output_is_not_overwritten_without_force(tmp_path, capsys):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    out = tmp_path / "elsewhere" / "p.toml"
    args = ["init", str(data), "--question", Q, "--answer", A, "--model", str(TINY_LLAMA), "--out", str(out)]
    assert main(args) == 0 and out.is_file()
    out.write_text("# mine\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and out.read_text() == "# mine\n"
    assert main([*args, "--force"]) == 0
    assert load_profile(out).name == "qa"


def test_data_env_var_that_would_replace_the_file_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    monkeypatch.setenv("MEDQA_DATA_QA", str(tmp_path / "other.csv"))
    with pytest.raises(InitError, match="MEDQA_DATA_QA"):
        init_profile(data, Q, A, str(TINY_LLAMA))
    assert not (tmp_path / "qa.toml").exists()


def test_too_few_rows_to_split_is_reported_before_writing(tmp_path):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows(1))
    with pytest.raises(InitError, match="test"):
        init_profile(data, Q, A, str(TINY_LLAMA))
    assert not (tmp_path / "qa.toml").exists()


def test_a_tiny_stand_in_is_refused_on_real_text_but_not_on_fixture_text(tmp_path):
    """The tiny bases' vocabulary was learned on the fixtures: on real medical text (realdata/,
    MedQuAD) its tokenizer fragments everyday words and init refuses, with the numbers; on fixture
    text it is accepted. --allow-misfit writes the profile with the findings as notes."""
    real = REPO_ROOT / "realdata" / "medquad.csv"
    with pytest.raises(InitError) as exc:
        init_profile(real, "question", "answer", "tiny", root=tmp_path)
    msg = str(exc.value)
    assert "fragments" in msg and "tokens/word" in msg and "--allow-misfit" in msg and "\n" not in msg
    assert not list(tmp_path.glob("*.toml"))
    res = init_profile(real, "question", "answer", "tiny", root=tmp_path, allow_misfit=True)
    assert any(n.startswith("error: tokenizer splits real words") for n in res.notes)
    write(tmp_path / "fx" / "qa.csv", "csv", rows())
    ok = init_profile(tmp_path / "fx" / "qa.csv", Q, A, "tiny", root=tmp_path / "fx")
    assert not any(n.startswith("error:") for n in ok.notes)


def test_mde_target_sets_the_baseline_runs_from_the_power_plan(tmp_path):
    from medqa_core import power, scaffold

    write(tmp_path / "qa.csv", "csv", rows())
    res = init_profile(tmp_path / "qa.csv", Q, A, "tiny", root=tmp_path, mde=0.05)
    gate = tomllib.loads(res.profile.read_text())["gate"]
    k, r = gate["baseline_seeds"], gate.get("gate_seeds", 1)
    assert "--seeds" not in res.commands[1]  # the profile holds R: plain `pytest` gates with it
    sd, d0 = gate["prior_sd"]["bert_f1"], gate["prior_df"]
    prof = load_profile(res.profile)
    alpha, tol = prof.gate.alpha, prof.gate.metric_tolerance["bert_f1"]

    def reaches(k_: int, r_: int) -> bool:  # the plan aims PLAN_MARGIN under the target
        return power.mde(sd, k_, r_, alpha, df=k_ - 1 + d0, min_effect=tol) <= 0.05 * scaffold.PLAN_MARGIN

    # the chosen (K, R) reaches the target with the fewest seeds in all (record + one gate run),
    # then the fewest gate runs: checked against every smaller pair
    assert reaches(k, r)
    assert not any(reaches(k2, r2) for k2 in range(1, 11) for r2 in range(1, 4)
                   if (k2 + r2, r2) < (k + r, r))
    assert any("baseline_seeds = " in n for n in res.notes)
    # a model without a measured prior gets the advice instead of a plan
    big = tmp_path / "models" / "big"
    big.mkdir(parents=True)
    (big / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 896, "num_hidden_layers": 24,
                                                 "intermediate_size": 4864, "num_attention_heads": 14,
                                                 "vocab_size": 32000}))
    other = init_profile(tmp_path / "qa.csv", Q, A, str(big), root=tmp_path, name="other", mde=0.05)
    assert any("no measured variance prior" in n for n in other.notes)
