"""Inputs refused where they enter, with one line naming where (issue 24, item 5):

- profile values out of range or not among the choices (``lora_dropout = 2.0``,
  ``warmup_ratio = -3``, ``optimizer = "sgdx"``, ``packing`` under trl) at load and under ``--set``;
- ``MEDQA_THREADS=abc`` as a usage error, not an INTERNALERROR;
- baselines: recording through a symlink writes the real file; a hand-edited baseline with
  impossible numbers (two runs at 1e308 overflow the variance and switched the gate off) is
  refused at load, naming the file, case and field;
- report.md holds no raw HTML in its title and ``Verdicts:`` line.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MINIMAL_PROFILE, expect_error

from medqa_core import resources
from medqa_core.baselines import load, record_cases, validate, write
from medqa_core.errors import BaselineError, ConfigError
from medqa_core.metrics import METRICS
from medqa_core.profile import LEAN_OPTIMIZERS, SFT_OPTIMIZERS, load_profile, with_overrides

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- profile values


def _profile(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "prof.toml"
    p.write_text(MINIMAL_PROFILE + "\n" + extra)
    return p


def _one_line_config_error(path: Path, *fragments: str) -> str:
    msg = expect_error(lambda: load_profile(path), ConfigError, str(path), *fragments)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("table, line, fragments", [
    # the three the issue found accepted
    ("train", "lora_dropout = 2.0", ["[train] lora_dropout = 2.0", "[0, 1)"]),
    ("train", "warmup_ratio = -3", ["[train] warmup_ratio = -3", "[0, 1]"]),
    ("train", 'optimizer = "sgdx"', ["[train] optimizer = 'sgdx'", "did you mean 'sgd'", "adamw_torch"]),
    # every other numeric / choice key of [train]
    ("train", "lora_dropout = 1.0", ["lora_dropout", "[0, 1)"]),
    ("train", "lora_dropout = -0.1", ["lora_dropout", "[0, 1)"]),
    ("train", "warmup_ratio = 1.5", ["warmup_ratio", "[0, 1]"]),
    ("train", "seed = -1", ["[train] seed = -1", "integer in [0, 4294967295]"]),
    ("train", "seed = 4294967296", ["[train] seed", "4294967295"]),
    ("train", "lora_r = 0", ["lora_r", "> 0"]),
    ("train", "lora_alpha = -4", ["lora_alpha", "> 0"]),
    ("train", "max_length = 0", ["max_length", "> 0"]),
    ("train", "learning_rate = 0.0", ["learning_rate", "> 0"]),
    ("train", "num_processes = 0", ["num_processes", "> 0"]),
    ("train", 'quantization = "nf8"', ["[train] quantization = 'nf8'", "did you mean 'nf4'", "'none'"]),
    ("train", 'trainer = "lean"\noptimizer = "sgd"', ["[train] optimizer = 'sgd'", "trainer = 'lean'", "paged_adamw_8bit"]),
    ("train", 'trainer = "sft"\nnum_processes = 3\nbatch_size = 8', ["batch_size = 8", "num_processes = 3", "divisible"]),
    # [pretrain]
    ("pretrain", "seed = -5", ["[pretrain] seed = -5", "[0, 4294967295]"]),
    ("pretrain", "block_size = 0", ["block_size", "> 0"]),
    # [generation]
    ("generation", "repetition_penalty = 0.0", ["repetition_penalty", "> 0"]),
    ("generation", "max_new_tokens = -1", ["max_new_tokens", "> 0"]),
    # [gate] resource factors: below 1 a run exactly as fast as its baseline fails
    ("gate", "time_factor = 0.5", ["[gate] time_factor = 0.5", ">= 1"]),
    ("gate", "memory_factor = 0.9", ["[gate] memory_factor = 0.9", ">= 1"]),
    ("gate", "memory_slack_mib = -1.0", ["[gate] memory_slack_mib = -1.0", ">= 0"]),
])
def test_out_of_range_values_are_refused_at_load(tmp_path, table, line, fragments):
    _one_line_config_error(_profile(tmp_path, f"[{table}]\n{line}\n"), *fragments)


def test_dataset_format_must_be_known(tmp_path):
    path = _profile(tmp_path, "").read_text().replace('answer = "a"', 'answer = "a"\nformat = "jsonn"')
    (tmp_path / "prof.toml").write_text(path)
    _one_line_config_error(tmp_path / "prof.toml", "[datasets.d1] format = 'jsonn'", "did you mean 'json'", "parquet")


def test_packing_with_the_sft_trainer_is_refused_at_load(tmp_path):
    """trl's padding_free does not enforce max_length, so SFTTrainer raised at run time."""
    msg = _one_line_config_error(_profile(tmp_path, "[train]\npacking = true\n"), "[train] packing = true",
                                 "trainer = 'lean'", "max_length")
    assert "sft" in msg
    assert load_profile(_profile(tmp_path, '[train]\npacking = true\ntrainer = "lean"\n')).train.packing is True


@pytest.mark.parametrize("line", ["lora_dropout = 0.0", "lora_dropout = 0.5", "warmup_ratio = 0.0", "warmup_ratio = 1.0",
                                  "seed = 0", "seed = 4294967295", 'optimizer = "adafactor"', 'optimizer = "adamw_8bit"',
                                  'trainer = "lean"\noptimizer = "paged_adamw_8bit"'])
def test_values_inside_the_ranges_load(tmp_path, line):
    load_profile(_profile(tmp_path, f"[train]\n{line}\n"))


@pytest.mark.parametrize("name", ["tiny", "small", "nightly", "paper"])
def test_shipped_profiles_are_inside_the_ranges(name):
    load_profile(name)


@pytest.mark.parametrize("assignment, fragment", [
    ("train.lora_dropout=2.0", "lora_dropout"), ("train.warmup_ratio=-3", "warmup_ratio"),
    ('train.optimizer="sgdx"', "optimizer"), ("train.packing=true", "packing"), ("train.seed=-1", "seed"),
    ("generation.repetition_penalty=0", "repetition_penalty"),
])
def test_set_overrides_are_range_checked_too(tmp_path, assignment, fragment):
    prof = load_profile(_profile(tmp_path, ""))
    msg = expect_error(lambda: with_overrides(prof, [assignment]), ConfigError, "--set", fragment)
    assert "\n" not in msg


def test_optimizer_lists_match_what_the_trainers_build():
    """lean: train/lean.py's _optimizer names each one; sft: transformers knows each one."""
    from transformers.training_args import OptimizerNames

    known = {o.value for o in OptimizerNames}
    assert set(SFT_OPTIMIZERS) <= known, sorted(set(SFT_OPTIMIZERS) - known)
    assert set(LEAN_OPTIMIZERS) <= set(SFT_OPTIMIZERS)
    lean_src = (REPO / "src" / "medqa_core" / "train" / "lean.py").read_text()
    for name in LEAN_OPTIMIZERS:
        assert f'"{name}"' in lean_src, name


# ---------------------------------------------------------------- MEDQA_THREADS


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "2 threads"])
def test_bad_medqa_threads_is_a_config_and_usage_error(monkeypatch, value):
    monkeypatch.setenv("MEDQA_THREADS", value)
    with pytest.raises(ConfigError) as info:
        resources.thread_count(1)
    assert isinstance(info.value, pytest.UsageError)  # read in pytest_configure: one ERROR line, exit 4
    msg = str(info.value)
    assert "MEDQA_THREADS" in msg and repr(value.strip()) in msg and "\n" not in msg


@pytest.mark.parametrize("value, expected", [("3", 3), (" 2 ", 2), ("1", 1)])
def test_good_medqa_threads(monkeypatch, value, expected):
    monkeypatch.setenv("MEDQA_THREADS", value)
    assert resources.thread_count(4) == expected


def test_unset_medqa_threads_splits_the_cores(monkeypatch):
    monkeypatch.delenv("MEDQA_THREADS", raising=False)
    assert resources.thread_count(1) == max(1, os.cpu_count() or 1)


def test_medqa_threads_abc_stops_pytest_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQA_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MEDQA_THREADS="abc")
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_medqa.py", "-p", "no:cacheprovider", "--collect-only", "-q",
           "-k", "llama-wikidoc", "--history", "none", "--cache-dir", str(tmp_path / "c"),
           "--results-dir", str(tmp_path / "r")]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "MEDQA_THREADS='abc'" in lines[0], out


# ---------------------------------------------------------------- baselines

SCORES = dict(zip(METRICS, (0.61, 0.58, 0.595, 0.72, 0.41, 0.44, 0.425)))


def _run(seed: int, bump: float = 0.0) -> dict:
    return {"seed": seed, "metrics": {**{m: v + bump for m, v in SCORES.items()}, "answer_words": 20.0 + seed,
                                      "degenerate": 0.0},
            "margins": {"margin:base:bert_f1": 0.1 + bump}, "tokens_seen": 1000,
            "per_example": {"ids": ["a", "b"], **{m: [0.5, 0.6] for m in METRICS}},
            "resources": {"train_seconds": 12.5, "peak_mem_mib": 300.0}}


def _data(**case_over) -> dict:
    case = {"metrics": dict(SCORES), "spread": {m: 0.01 for m in METRICS}, "runs": [_run(0), _run(1, 0.01)],
            "base_metrics": {m: v - 0.1 for m, v in SCORES.items()},
            "controls": {"base": {m: v - 0.1 for m, v in SCORES.items()}},
            "invariants": {"train_steps": 20}, "identity": {"data": "d"},
            "resources": {"train_seconds": 12.5, "peak_mem_mib": 300.0, "device": "cpu"}}
    case.update(case_over)
    return {"schema_version": 2, "profile": "tiny", "cases": {"llama-wikidoc": case}}


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_two_runs_at_1e308_are_refused_at_load(tmp_path):
    """Their variance overflowed to inf, the band became infinite and a planted -0.30 drop passed."""
    data = _data()
    for r in data["cases"]["llama-wikidoc"]["runs"]:
        r["metrics"]["bert_f1"] = 1e308
    path = _write_json(tmp_path / "base.json", data)
    msg = expect_error(lambda: load(path), BaselineError, str(path), "cases.llama-wikidoc.runs[0].metrics.bert_f1",
                       "1e+308", "[-1, 1]")
    assert "\n" not in msg


@pytest.mark.parametrize("edit, fragments", [
    (lambda c: c["metrics"].__setitem__("bert_f1", 1.5), ["cases.llama-wikidoc.metrics.bert_f1 = 1.5", "[-1, 1]"]),
    (lambda c: c["metrics"].__setitem__("use_f1", -1.2), ["metrics.use_f1 = -1.2", "[-1, 1]"]),
    (lambda c: c["base_metrics"].__setitem__("cosine", 7.0), ["base_metrics.cosine = 7.0"]),
    (lambda c: c["controls"]["base"].__setitem__("bert_p", -3.0), ["controls.base.bert_p = -3.0"]),
    (lambda c: c["runs"][1]["metrics"].__setitem__("degenerate", 1.5), ["runs[1].metrics.degenerate = 1.5", "[0, 1]"]),
    (lambda c: c["runs"][0]["metrics"].__setitem__("answer_words", -1.0), ["runs[0].metrics.answer_words = -1.0"]),
    (lambda c: c["runs"][0]["metrics"].__setitem__("answer_words", 1e300), ["runs[0].metrics.answer_words"]),
    (lambda c: c["runs"][0]["margins"].__setitem__("margin:base:bert_f1", 5.0), ["runs[0].margins.margin:base:bert_f1"]),
    (lambda c: c["runs"][1]["per_example"]["use_p"].__setitem__(1, 2.0), ["runs[1].per_example.use_p[1] = 2.0"]),
    (lambda c: c["resources"].__setitem__("train_seconds", -4.0), ["resources.train_seconds = -4.0", "[0, "]),
    (lambda c: c["resources"].__setitem__("peak_mem_mib", 1e300), ["resources.peak_mem_mib = 1e+300"]),
    (lambda c: c["runs"][0]["resources"].__setitem__("train_seconds", -1.0), ["runs[0].resources.train_seconds"]),
    (lambda c: c["spread"].__setitem__("bert_f1", -0.01), ["spread.bert_f1 = -0.01"]),
    (lambda c: c["runs"][0].__setitem__("tokens_seen", -5), ["runs[0].tokens_seen = -5"]),
])
def test_impossible_numbers_name_the_file_case_and_field(tmp_path, edit, fragments):
    data = _data()
    edit(data["cases"]["llama-wikidoc"])
    path = _write_json(tmp_path / "base.json", data)
    msg = expect_error(lambda: load(path), BaselineError, str(path), "llama-wikidoc", *fragments)
    assert "\n" not in msg


def test_an_unknown_metric_whose_runs_overflow_the_variance_is_refused():
    """No range is known for it, but its runs' variance is the gate's band: it must be finite."""
    data = _data()
    runs = data["cases"]["llama-wikidoc"]["runs"]
    runs[0]["metrics"]["custom"], runs[1]["metrics"]["custom"] = 1e308, -1e308
    expect_error(lambda: validate(data, "b.json"), BaselineError, "b.json", "llama-wikidoc", "custom", "variance")


def test_rescaled_bertscore_may_go_below_minus_one():
    data = _data()
    case = data["cases"]["llama-wikidoc"]
    case["runs"][0]["per_example"]["bert_f1"] = [-1.7, 0.5]
    with pytest.raises(BaselineError):
        validate(copy.deepcopy(data), "b.json")
    case["invariants"]["scorer"] = {"bertscore": "bert-score==0.3.13|roberta-large|L17|no-idf|rescale"}
    validate(data, "b.json")
    case["runs"][0]["per_example"]["use_f1"] = [-1.7, 0.5]  # USE is never rescaled
    expect_error(lambda: validate(data, "b.json"), BaselineError, "per_example.use_f1[0]")


def test_published_training_minutes_must_be_a_real_time():
    """paper.json's minutes x time_factor is the time limit: 1e308 minutes made it inf (never fails)."""
    data = {"schema_version": 1, "models": {"llama": {"training_minutes": 1e308}},
            "cases": {"llama-wikidoc": {"metrics": dict(SCORES)}}}
    expect_error(lambda: validate(data, "paper.json"), BaselineError, "paper.json", "models.llama.training_minutes")
    data["models"]["llama"]["training_minutes"] = 312.41
    validate(data, "paper.json")


def test_schema_1_rescaled_scorer_allows_bertscore_below_minus_one():
    data = {"schema_version": 1, "scorer": {"spec": {"bertscore_rescale": True}},
            "cases": {"c": {"metrics": {**SCORES, "bert_f1": -1.3}}}}
    validate(data, "p.json")
    data["scorer"]["spec"]["bertscore_rescale"] = False
    expect_error(lambda: validate(data, "p.json"), BaselineError, "cases.c.metrics.bert_f1 = -1.3")


def test_shipped_baselines_still_load():
    for path in sorted((REPO / "baselines").glob("*.json")):
        load(path)


def test_recording_an_overflowing_case_is_refused_not_written(tmp_path):
    rec = {"case_id": "llama-wikidoc", "outcome": "passed",
           "runs": [{"seed": s, "metrics": {**SCORES, "answer_words": 1e308}, "per_example": None, "margins": {},
                     "invariants": {"tokens_seen": 1}, "resources": {"device": "cpu"}, "base_metrics": {},
                     "identity": {}, "provenance": {"git_sha": "x", "versions": {}, "hardware": {}}}
                    for s in (0, 1)]}
    path = tmp_path / "b.json"
    with pytest.raises(BaselineError):
        record_cases(path, "tiny", [rec])
    assert not path.exists()


def test_writing_through_a_symlinked_baseline_updates_the_real_file(tmp_path):
    real_dir = tmp_path / "shared"
    real_dir.mkdir()
    real = real_dir / "tiny.json"
    write(real, _data())
    real.chmod(0o640)
    repo = tmp_path / "repo" / "baselines"
    repo.mkdir(parents=True)
    link = repo / "tiny.json"
    link.symlink_to(os.path.relpath(real, repo))
    new = _data()
    new["cases"]["llama-wikidoc"]["metrics"]["bert_f1"] = 0.777
    write(link, new)
    assert link.is_symlink(), "the link was replaced by a plain file"
    assert json.loads(real.read_text())["cases"]["llama-wikidoc"]["metrics"]["bert_f1"] == 0.777
    assert (real.stat().st_mode & 0o777) == 0o640  # the real file's mode kept
    assert sorted(p.name for p in real_dir.iterdir()) == ["tiny.json"]  # no temp file left beside it
    assert sorted(p.name for p in repo.iterdir()) == ["tiny.json"]


def test_recording_through_a_chain_of_links_keeps_the_links(tmp_path):
    real = tmp_path / "real.json"
    write(real, _data())
    hop = tmp_path / "hop.json"
    hop.symlink_to(real)
    link = tmp_path / "link.json"
    link.symlink_to(hop)
    rec_runs = []
    for s in (0, 1):
        r = _run(s)
        rec_runs.append({**r, "invariants": {"tokens_seen": 1000, "train_steps": 20},
                         "resources": {**r["resources"], "device": "cpu"}, "base_metrics": {}, "identity": {},
                         "provenance": {"git_sha": "x", "versions": {}, "hardware": {}}})
    written, _ = record_cases(link, "tiny", [{"case_id": "phi-wikidoc", "outcome": "passed", "runs": rec_runs}])
    assert written == ["phi-wikidoc"]
    assert link.is_symlink() and hop.is_symlink()
    assert set(json.loads(real.read_text())["cases"]) == {"llama-wikidoc", "phi-wikidoc"}


# ---------------------------------------------------------------- report.md


def test_report_markdown_title_and_verdicts_line_hold_no_html():
    from medqa_core.results.report import Report, to_markdown

    evil = "<script>alert(1)</script>"
    recs = [{"case_id": "llama-wikidoc", "model": "llama", "dataset": "wikidoc", "metrics": dict(SCORES),
             "verdict": {"status": "<img src=x onerror=alert(2)>", "explain": "x"}},
            {"case_id": "phi-wikidoc", "model": "phi", "dataset": "wikidoc", "metrics": dict(SCORES),
             "verdict": {"status": "pass", "explain": "ok"}}]
    md = to_markdown(Report(f"report {evil}", recs, None), {})
    lines = md.splitlines()
    verdicts = next(ln for ln in lines if ln.startswith("Verdicts: "))
    assert not re.search(r"<[A-Za-z/!]", verdicts), verdicts
    assert "pass 1" in verdicts and "img src=x" in verdicts  # the status survives, as text
    assert lines[0].startswith("# ") and not re.search(r"<[A-Za-z/!]", lines[0]) and "script" in lines[0]
    # nothing outside a fenced block is an HTML tag
    fenced = False
    for ln in lines:
        if ln.startswith("```"):
            fenced = not fenced
        elif not fenced:
            assert not re.search(r"<[A-Za-z/!]", ln), ln


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true", '"2"'])
def test_gate_seeds_out_of_range_is_refused_naming_it(tmp_path, value):
    with pytest.raises(ConfigError, match=r"\[gate\] gate_seeds = .*: must be an integer"):
        load_profile(_profile(tmp_path, f"[gate]\ngate_seeds = {value}\n"))


def test_gate_seeds_is_the_gating_default_and_baseline_seeds_the_recording_one(tmp_path):
    from medqa_core.session import parse_seeds

    prof = load_profile(_profile(tmp_path, "[gate]\ngate_seeds = 3\nbaseline_seeds = 4\n"))
    base = prof.train.seed
    assert parse_seeds(None, prof, recording=False) == [base, base + 1, base + 2]
    assert parse_seeds(None, prof, recording=True) == list(range(base, base + 4))
    assert parse_seeds("1", prof, recording=False) == [base]  # --seeds overrides
