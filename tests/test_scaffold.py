"""``medqa-bench init`` (scaffold.py): a profile for one's own data file and model, written next
to the data and checked with the project's loader; no model is loaded here."""
from __future__ import annotations

import csv
import json
import shlex

import pytest

from medqa_core.cli import main
from medqa_core.profile import load_profile
from medqa_core.scaffold import InitError, init_profile
from medqa_core.specs import REPO_ROOT

TINY_LLAMA = REPO_ROOT / "fixtures" / "models" / "llama"
Q, A = 'Patient "Message"', "Clinician Reply"


def rows(n: int = 40) -> list[dict[str, str]]:
    return [{"id": str(i), Q: f"Question number {i} about condition {i % 7}?", A: f"Answer {i}: rest and fluids.",
             "Extra": "x"} for i in range(n)]


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
def test_profile_is_written_next_to_the_data_and_loads(tmp_path, fmt):
    data = tmp_path / "my data" / f"Clinic Export.{fmt}"
    write(data, fmt, rows())
    res = init_profile(data, Q, A, str(TINY_LLAMA))
    assert res.profile == data.parent / "clinic_export.toml" and res.profile.is_file()
    assert res.baseline == data.parent / "clinic_export.baseline.json" and not res.baseline.exists()
    prof = load_profile(res.profile)
    assert prof.name == "clinic_export" and prof.data_dir == data.parent
    assert prof.resolve(str(prof.baseline)) == res.baseline
    ds = prof.datasets["clinic_export"]
    assert ds.question == (Q,) and ds.answer == A and ds.file == data.name
    m = prof.models["llama"]
    assert m.hub_id == str(TINY_LLAMA) and m.family == "llama" and not m.needs_cuda
    assert not prof.slow and prof.train.trainer == "lean"  # a ~1M-parameter model gets the tiny recipe
    assert res.case_id == "llama-clinic_export" and res.rows == 40
    assert res.train_rows + res.test_rows == 40 and res.test_rows > 0
    # no temporary file left beside it
    assert sorted(p.name for p in data.parent.iterdir()) == sorted([data.name, res.profile.name])


def test_commands_record_then_gate(tmp_path):
    data = tmp_path / "qa.csv"
    write(data, "csv", rows())
    res = init_profile(data, Q, A, str(TINY_LLAMA), name="Mine")
    rec, gate_cmd = (shlex.split(c) for c in res.commands)
    assert rec[rec.index("--profile") + 1] == str(res.profile)
    assert rec[rec.index("--baseline") + 1] == str(tmp_path / "mine.baseline.json")
    assert "--update-baselines" in rec and "--update-baselines" not in gate_cmd
    assert rec[:-1] == gate_cmd and "slow" not in gate_cmd  # not a slow profile: no -m slow
    assert gate_cmd[1:3] == ["-m", "pytest"] and gate_cmd[3].endswith("benchmarks/test_medqa.py")
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
    assert prof.slow and res.slow and prof.train.steps == 60
    assert prof.models["qwen2_0_5b"].family == "llama"  # unknown model_type: the llama projection names
    assert any("qwen2" in n for n in res.notes)
    for cmd in res.commands:
        args = shlex.split(cmd)
        assert args[args.index("-m", 2) + 1] == "slow"


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
                          ("not a hub id!", "not a local directory")):
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
