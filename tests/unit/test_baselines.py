"""Baseline files (medqa_core.baselines): validate, load, write atomically, record K-run cases.

Judging a run against a baseline is gate/ (tests/unit/test_gate.py).
"""
from __future__ import annotations

import copy
import json
import math
import os
import stat
import statistics
from pathlib import Path

import pytest
from helpers import expect_error

from medqa_core import baselines
from medqa_core.baselines import SCHEMA_VERSION, case_entry, load, record_cases, validate, write
from medqa_core.errors import BaselineError, MedQAError
from medqa_core.metrics import METRICS

REPO = Path(__file__).resolve().parents[2]
METRIC_VALUES = dict(zip(METRICS, (0.61, 0.58, 0.595, 0.72, 0.41, 0.44, 0.425)))
PER_EXAMPLE = {"ids": ["a", "b", "c"], **{m: [0.5, 0.6, 0.7] for m in METRICS}}


def make_run(seed, bump=0.0):
    return {"seed": seed, "metrics": {m: v + bump for m, v in METRIC_VALUES.items()},
            "margins": {"margin:base:bert_f1": 0.1 + bump},
            "per_example": copy.deepcopy(PER_EXAMPLE), "tokens_seen": 1000 + seed,
            "resources": {"train_seconds": 12.5, "peak_mem_mib": 300.0}}


def make_case(**over):
    """A schema-2 case: means, spread and three runs."""
    case = {
        "metrics": dict(METRIC_VALUES),
        "spread": {m: 0.01 for m in METRICS},
        "runs": [make_run(0, -0.01), make_run(1), make_run(2, 0.01)],
        "base_metrics": {m: v - 0.1 for m, v in METRIC_VALUES.items()},
        "controls": {"base": {m: v - 0.1 for m, v in METRIC_VALUES.items()}},
        "invariants": {"train_steps": 200, "trainable_params": 1000, "test_ids": "abc"},
        "identity": {"data": "d", "test_ids": "abc", "scorer": "s"},
        "resources": {"train_seconds": 12.5, "peak_mem_mib": 300.0, "tokens_per_s": 900.0, "device": "cpu"},
        "per_example": copy.deepcopy(PER_EXAMPLE),
    }
    case.update(over)
    return case


def make_data():
    return {"schema_version": SCHEMA_VERSION, "profile": "tiny", "source": "test",
            "cases": {"llama-wikidoc": make_case(), "phi-wikidoc": {"metrics": dict(METRIC_VALUES)}}}


def expect_baseline_error(fn, *fragments):
    return expect_error(fn, BaselineError, *fragments)


# ---------------------------------------------------------------- validate


def test_schema_version_is_2():
    assert SCHEMA_VERSION == 2


def test_validate_accepts_good_data():
    data = make_data()
    assert validate(data, "b.json") is data


def test_validate_accepts_schema_1_aggregates_only():
    """paper.json style: schema 1, metrics only, extra top-level tables."""
    data = {"schema_version": 1, "profile": "paper", "source": "Table 2",
            "hardware": {"gpu": "2x Tesla T4", "class": "2x-tesla-t4"},
            "models": {"llama": {"training_minutes": 312.41}},
            "cases": {"llama-wikidoc": {"metrics": dict(METRIC_VALUES)}}}
    assert validate(data, "paper.json") is data


def test_shipped_paper_baseline_loads():
    data = load(REPO / "baselines" / "paper.json")
    assert data["schema_version"] == 1 and data["cases"]
    assert all("runs" not in c for c in data["cases"].values())


def _set(path, value):
    def mutate(d):
        *head, last = path
        for k in head:
            d = d[k]
        if value is DELETE:
            del d[last]
        else:
            d[last] = value
    return mutate


DELETE = object()
C = ("cases", "llama-wikidoc")
R1 = (*C, "runs", 1)
BAD_VARIANTS = [
    ("missing-metric", _set((*C, "metrics", "use_f1"), DELETE), "cases.llama-wikidoc.metrics.use_f1"),
    ("nan-metric", _set((*C, "metrics", "bert_p"), math.nan), "cases.llama-wikidoc.metrics.bert_p"),
    ("inf-metric", _set((*C, "metrics", "cosine"), math.inf), "cases.llama-wikidoc.metrics.cosine"),
    ("string-metric", _set((*C, "metrics", "bert_r"), "0.5"), "cases.llama-wikidoc.metrics.bert_r"),
    ("bool-metric", _set((*C, "metrics", "use_p"), True), "cases.llama-wikidoc.metrics.use_p"),
    ("null-metric", _set((*C, "metrics", "use_r"), None), "cases.llama-wikidoc.metrics.use_r"),
    ("no-metrics", _set((*C, "metrics"), DELETE), "cases.llama-wikidoc"),
    ("metrics-list", _set((*C, "metrics"), [0.5] * 7), "cases.llama-wikidoc"),
    ("case-not-object", _set(C, 0.5), "cases.llama-wikidoc"),
    ("schema-3", _set(("schema_version",), 3), "schema_version"),
    ("schema-0", _set(("schema_version",), 0), "schema_version"),
    ("schema-missing", _set(("schema_version",), DELETE), "schema_version"),
    ("schema-string", _set(("schema_version",), "2"), "schema_version"),
    ("cases-list", _set(("cases",), []), "'cases'"),
    ("cases-missing", _set(("cases",), DELETE), "'cases'"),
    ("resource-string", _set((*C, "resources", "train_seconds"), "fast"), "cases.llama-wikidoc.resources.train_seconds"),
    ("resource-nan", _set((*C, "resources", "peak_mem_mib"), math.nan), "cases.llama-wikidoc.resources.peak_mem_mib"),
    ("ids-not-list", _set((*C, "per_example", "ids"), "a,b,c"), "cases.llama-wikidoc.per_example.ids"),
    ("per-example-short", _set((*C, "per_example", "bert_f1"), [0.5, 0.6]), "cases.llama-wikidoc.per_example.bert_f1"),
    ("per-example-nan", _set((*C, "per_example", "use_f1"), [0.5, math.nan, 0.7]),
     "cases.llama-wikidoc.per_example.use_f1"),
    ("per-example-not-list", _set((*C, "per_example", "cosine"), 0.5), "cases.llama-wikidoc.per_example.cosine"),
    # schema 2: the runs
    ("runs-not-list", _set((*C, "runs"), {"0": make_run(0)}), "cases.llama-wikidoc.runs"),
    ("run-not-object", _set(R1, 0.5), "cases.llama-wikidoc.runs"),
    ("run-without-metrics", _set((*R1, "metrics"), DELETE), "cases.llama-wikidoc.runs"),
    ("run-metric-nan", _set((*R1, "metrics", "bert_f1"), math.nan), "cases.llama-wikidoc.runs[1].metrics.bert_f1"),
    ("run-metric-inf", _set((*R1, "metrics", "use_r"), -math.inf), "cases.llama-wikidoc.runs[1].metrics.use_r"),
    ("run-metric-string", _set((*R1, "metrics", "cosine"), "0.7"), "cases.llama-wikidoc.runs[1].metrics.cosine"),
    ("run-extra-metric-nan", _set((*R1, "metrics", "answer_words"), math.nan),
     "cases.llama-wikidoc.runs[1].metrics.answer_words"),
    ("run-per-example-short", _set((*R1, "per_example", "use_f1"), [0.5]),
     "cases.llama-wikidoc.runs[1].per_example.use_f1"),
    ("run-per-example-ids", _set((*R1, "per_example", "ids"), None), "cases.llama-wikidoc.runs[1].per_example.ids"),
]


@pytest.mark.parametrize("mutate, key", [v[1:] for v in BAD_VARIANTS], ids=[v[0] for v in BAD_VARIANTS])
def test_validate_rejects_with_key(mutate, key):
    data = make_data()
    mutate(data)
    expect_baseline_error(lambda: validate(data, "baselines/x.json"), "baselines/x.json", key)


def test_run_errors_name_the_run_index():
    data = make_data()
    data["cases"]["llama-wikidoc"]["runs"][2]["metrics"]["bert_p"] = math.nan
    msg = expect_baseline_error(lambda: validate(data, "b.json"), "runs[2].metrics.bert_p")
    assert "runs[1]" not in msg and "runs[0]" not in msg


@pytest.mark.parametrize("top", [[], [make_data()], "text", 1, None])
def test_validate_rejects_non_object_top_level(top):
    expect_baseline_error(lambda: validate(top, "b.json"), "b.json", "top level", type(top).__name__)


@pytest.mark.parametrize("key, value", [("resources", None), ("resources", [1, 2]), ("per_example", [0.5]),
                                        ("per_example", "x"), ("spread", [0.1]), ("invariants", "x"),
                                        ("identity", 3), ("controls", []), ("base_metrics", 0.5)])
def test_validate_non_object_sections(key, value):
    data = make_data()
    data["cases"]["llama-wikidoc"][key] = value
    expect_baseline_error(lambda: validate(data, "b.json"), "b.json", f"cases.llama-wikidoc.{key}")


# ---------------------------------------------------------------- load / write


def test_load_missing_file(tmp_path):
    p = tmp_path / "none.json"
    expect_baseline_error(lambda: load(p), str(p), "--update-baselines")


def test_load_invalid_json_names_file_and_line(tmp_path):
    p = tmp_path / "b.json"
    p.write_text('{\n "schema_version": 2,\n "cases": {,\n}\n')
    expect_baseline_error(lambda: load(p), str(p), "line 3")


def test_load_rejects_nan_literal(tmp_path):
    p = tmp_path / "b.json"
    text = json.dumps(make_data()).replace('"bert_p": 0.61', '"bert_p": NaN', 1)
    assert "NaN" in text
    p.write_text(text)
    expect_baseline_error(lambda: load(p), str(p), "metrics.bert_p")


def test_load_rejects_nan_in_a_run(tmp_path):
    p = tmp_path / "b.json"
    data = make_data()
    data["cases"]["llama-wikidoc"]["runs"][0]["metrics"]["use_p"] = 12345.5
    p.write_text(json.dumps(data).replace("12345.5", "Infinity"))
    expect_baseline_error(lambda: load(p), str(p), "cases.llama-wikidoc.runs[0].metrics.use_p")


def test_write_then_load_round_trips(tmp_path):
    p = tmp_path / "nested" / "dir" / "tiny.json"
    data = make_data()
    write(p, data)
    assert load(p) == data
    assert p.read_text().endswith("\n")
    assert json.loads(p.read_text()) == data
    assert sorted(x.name for x in p.parent.iterdir()) == ["tiny.json"]  # no temp files left


def test_write_invalid_leaves_old_file_untouched(tmp_path):
    p = tmp_path / "tiny.json"
    write(p, make_data())
    before = p.read_bytes()
    bad = make_data()
    bad["cases"]["phi-wikidoc"]["metrics"]["use_f1"] = math.nan
    expect_baseline_error(lambda: write(p, bad), str(p), "phi-wikidoc", "use_f1")
    bad = make_data()
    bad["cases"]["llama-wikidoc"]["runs"][1]["metrics"]["use_f1"] = math.inf
    expect_baseline_error(lambda: write(p, bad), str(p), "llama-wikidoc.runs[1].metrics.use_f1")
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tiny.json"]


@pytest.mark.parametrize("extra", [{"provenance": {"seed": math.nan}}, {"provenance": {"tags": {"a", "b"}}}],
                         ids=["nan-outside-metrics", "unserialisable"])
def test_write_failing_midway_leaves_old_file_untouched(tmp_path, extra):
    p = tmp_path / "tiny.json"
    write(p, make_data())
    before = p.read_bytes()
    data = {**make_data(), **extra}  # passes validate(), fails in json.dump
    with pytest.raises((ValueError, TypeError, MedQAError)):
        write(p, data)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tiny.json"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o600, 0o664])
def test_write_keeps_file_mode(tmp_path, mode):
    p = tmp_path / "tiny.json"
    p.write_text("{}")
    os.chmod(p, mode)
    write(p, make_data())
    assert stat.S_IMODE(p.stat().st_mode) == mode


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_write_new_file_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write(tmp_path / "new.json", make_data())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640  # not mkstemp's 0600


# ---------------------------------------------------------------- record_cases (K runs per case)

PROV = {"git_sha": "abc123", "versions": {"torch": "2.5"}, "hardware": {"cpu": "x"}, "profile_hash": "h",
        "seeds": {"train": 0}}
IDENTITY = {"data": "fp", "test_ids": "t1", "scorer": "sc", "profile": "p", "hardware_class": "cpu"}


def run_record(seed, metrics, tokens_seen=None, margin=0.2, train_seconds=5.0, mem=100.0):
    """One run as session.case_record keeps it."""
    return {"seed": seed, "metrics": dict(metrics),
            "margins": {"margin:base:bert_f1": margin},
            "per_example": {"ids": ["x", "y"], **{m: [metrics[m]] * 2 for m in metrics}},
            "controls": {"base": {"metrics": {m: 0.3 for m in metrics}, "per_example": {m: [0.3, 0.3] for m in metrics}}},
            "invariants": {"train_steps": 200, "trainable_params": 4096, "test_ids": "t1",
                           "tokens_seen": 1000 + seed if tokens_seen is None else tokens_seen},
            "resources": {"train_seconds": train_seconds, "peak_mem_mib": mem, "tokens_per_s": 1.0,
                          "train_work": train_seconds / 10, "device": "cpu"},
            "base_metrics": {m: 0.3 for m in metrics}, "provenance": PROV, "identity": IDENTITY}


def record(case_id, outcome="passed", bump=0.0, seeds=(0,)):
    runs = [run_record(s, {m: v + bump for m, v in METRIC_VALUES.items()}) for s in seeds]
    return {"case_id": case_id, "outcome": outcome, "metrics": dict(runs[0]["metrics"]), "runs": runs,
            "seeds": list(seeds), "identity": IDENTITY, "provenance": PROV}


def test_case_entry_from_k_runs():
    values = {"bert_f1": [0.50, 0.53, 0.49, 0.52], "use_f1": [0.40, 0.40, 0.41, 0.43]}
    runs = []
    for i, seed in enumerate((0, 101, 102, 103)):
        metrics = {**METRIC_VALUES, "bert_f1": values["bert_f1"][i], "use_f1": values["use_f1"][i],
                   "answer_words": 10.0 + i}
        runs.append(run_record(seed, metrics, tokens_seen=5000 + i, margin=0.1 * i, train_seconds=4.0 + i, mem=100 + 10 * i))
    entry = case_entry(runs)
    for m in ("bert_f1", "use_f1"):
        assert entry["metrics"][m] == pytest.approx(statistics.fmean(values[m]), abs=1e-6)
        assert entry["spread"][m] == pytest.approx(statistics.stdev(values[m]), abs=1e-6)  # sample sd (n-1)
    assert entry["metrics"]["answer_words"] == pytest.approx(11.5)
    assert entry["spread"]["answer_words"] == pytest.approx(statistics.stdev([10, 11, 12, 13]), abs=1e-6)
    assert entry["spread"]["bert_p"] == 0.0  # every run the same
    assert [r["seed"] for r in entry["runs"]] == [0, 101, 102, 103]
    assert [r["metrics"]["bert_f1"] for r in entry["runs"]] == values["bert_f1"]
    assert [r["tokens_seen"] for r in entry["runs"]] == [5000, 5001, 5002, 5003]
    assert [r["margins"]["margin:base:bert_f1"] for r in entry["runs"]] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert entry["runs"][2]["per_example"] == runs[2]["per_example"]
    assert entry["invariants"] == {"train_steps": 200, "trainable_params": 4096, "test_ids": "t1"}  # no tokens_seen
    assert entry["identity"] == IDENTITY
    assert entry["resources"]["train_seconds"] == pytest.approx(5.5)
    assert entry["resources"]["peak_mem_mib"] == pytest.approx(115.0)
    assert entry["resources"]["device"] == "cpu"
    assert entry["controls"] == {"base": runs[0]["controls"]["base"]["metrics"]}
    assert entry["recorded"] == {k: PROV[k] for k in ("git_sha", "versions", "hardware")}
    validate({"schema_version": 2, "cases": {"c": entry}}, "x.json")


def test_case_entry_one_run_has_zero_spread():
    entry = case_entry([run_record(7, METRIC_VALUES)])
    assert entry["spread"] == {m: 0.0 for m in METRICS}
    assert entry["metrics"] == pytest.approx(METRIC_VALUES)
    assert [r["seed"] for r in entry["runs"]] == [7]


def test_record_cases_merges_into_schema_2(tmp_path):
    p = tmp_path / "tiny.json"
    old = {"schema_version": 2, "profile": "tiny",
           "cases": {"llama-wikidoc": make_case(), "gemma-wikidoc": make_case()}}
    write(p, old)
    written, skipped = record_cases(p, "tiny", [
        record("gemma-wikidoc", bump=0.05, seeds=(0, 1, 2)), record("phi-wikidoc", seeds=(0, 1, 2)),
        record("mistral-wikidoc", outcome="failed", seeds=(0, 1, 2)),
        record("gemma-healthcaremagic", outcome="skipped", seeds=(0, 1, 2)),
    ])
    assert written == ["gemma-wikidoc", "phi-wikidoc"]
    assert skipped == ["gemma-healthcaremagic", "mistral-wikidoc"]
    data = load(p)
    assert data["schema_version"] == 2
    assert set(data["cases"]) == {"llama-wikidoc", "gemma-wikidoc", "phi-wikidoc"}
    assert data["cases"]["llama-wikidoc"] == json.loads(json.dumps(old["cases"]["llama-wikidoc"]))  # untouched
    gemma = data["cases"]["gemma-wikidoc"]
    assert gemma["metrics"] == pytest.approx({m: v + 0.05 for m, v in METRIC_VALUES.items()})
    assert [r["seed"] for r in gemma["runs"]] == [0, 1, 2]
    assert [r["tokens_seen"] for r in gemma["runs"]] == [1000, 1001, 1002]
    assert data["cases"]["phi-wikidoc"]["recorded"] == {k: PROV[k] for k in ("git_sha", "versions", "hardware")}
    assert "--profile tiny" in data["source"] and "--update-baselines" in data["source"]
    assert "--seeds 0,1,2" in data["source"]


def test_record_cases_rewrites_a_schema_1_file_in_schema_2(tmp_path):
    p = tmp_path / "tiny.json"
    write(p, {"schema_version": 1, "profile": "tiny", "cases": {"llama-wikidoc": {"metrics": dict(METRIC_VALUES)}}})
    written, _ = record_cases(p, "tiny", [record("phi-wikidoc", seeds=(0, 1))])
    assert written == ["phi-wikidoc"]
    data = load(p)
    assert data["schema_version"] == 2
    assert list(data["cases"]) == ["phi-wikidoc"]  # the old file's cases had no runs: not carried over


def test_record_cases_creates_file(tmp_path):
    p = tmp_path / "new" / "b.json"
    written, skipped = record_cases(p, "myprof", [record("llama-d1", seeds=(3, 4))])
    assert written == ["llama-d1"] and skipped == []
    data = load(p)
    assert data["schema_version"] == SCHEMA_VERSION and data["profile"] == "myprof"
    assert list(data["cases"]) == ["llama-d1"]
    assert [r["seed"] for r in data["cases"]["llama-d1"]["runs"]] == [3, 4]


def test_record_cases_skips_records_without_runs(tmp_path):
    p = tmp_path / "b.json"
    rec = record("a-b")
    rec["runs"] = []
    assert record_cases(p, "tiny", [rec]) == ([], ["a-b"])
    assert not p.exists()


def test_record_cases_nothing_passed_writes_nothing(tmp_path):
    p = tmp_path / "b.json"
    written, skipped = record_cases(p, "tiny", [record("a-b", outcome="failed")])
    assert (written, skipped) == ([], ["a-b"])
    assert not p.exists()


def test_record_cases_invalid_record_keeps_old_file(tmp_path):
    p = tmp_path / "b.json"
    write(p, make_data())
    before = p.read_bytes()
    bad = record("phi-wikidoc", seeds=(0, 1))
    bad["runs"][1]["metrics"]["bert_f1"] = math.nan
    expect_baseline_error(lambda: record_cases(p, "tiny", [bad]), str(p), "phi-wikidoc", "bert_f1")
    assert p.read_bytes() == before


def test_record_cases_does_not_mutate_records(tmp_path):
    recs = [record("llama-x", seeds=(0, 1))]
    snapshot = copy.deepcopy(recs)
    record_cases(tmp_path / "b.json", "tiny", recs)
    assert recs == snapshot
    case = baselines.load(tmp_path / "b.json")["cases"]["llama-x"]
    assert case["runs"][0]["per_example"]["ids"] == ["x", "y"]
    assert "tokens_seen" in recs[0]["runs"][0]["invariants"]  # moved into the run, not popped from the record


def test_record_resources_replaces_only_time_and_memory(tmp_path):
    path = tmp_path / "b.json"
    write(path, make_data())
    before = load(path)
    cid = next(iter(before["cases"]))
    new_res = {"train_seconds": 3.0, "train_work": 20.5, "generate_work": 1.5, "peak_mem_mib": 12.0, "device": "cpu"}
    recs = [{"case_id": cid, "outcome": "passed", "resources": new_res},
            {"case_id": cid + "-other", "outcome": "passed", "resources": new_res},  # not in the file: ignored
            ]
    assert baselines.record_resources(path, recs) == [cid]
    after = load(path)
    assert after["cases"][cid]["resources"] == new_res
    for k in before["cases"][cid]:
        if k not in ("resources", "runs"):
            assert after["cases"][cid][k] == before["cases"][cid][k]
    # the runs keep everything but their time: no run of this recording, no time of their own
    for b_run, a_run in zip(before["cases"][cid]["runs"], after["cases"][cid]["runs"], strict=True):
        assert {k: v for k, v in a_run.items() if k != "resources"} == {k: v for k, v in b_run.items() if k != "resources"}
        assert a_run["resources"] == {}
    # a failed record or one without built stages (warm cache) changes nothing
    assert baselines.record_resources(path, [{"case_id": cid, "outcome": "failed", "resources": {"train_work": 1.0}},
                                             {"case_id": cid, "outcome": "passed", "resources": {"train_seconds": 1.0}}]) == []
    assert load(path) == after


def test_record_resources_replaces_each_runs_time_by_seed(tmp_path):
    """The gate compares with the median over the baseline runs' work (gate.like_for_like), so a
    time re-recording replaces each run's time (matched by seed, text fields such as the CPU kept
    on the case only); a run it did not repeat keeps none, and the gate then reads the new times."""
    from medqa_core import gate

    path = tmp_path / "b.json"
    data = make_data()
    cid = next(iter(data["cases"]))
    case = data["cases"][cid]
    case["runs"] = [{**case["runs"][0], "seed": s, "resources": {"generate_work": w, "peak_mem_mib": 9.0}}
                    for s, w in ((0, 2.0), (1, 2.2), (2, 9.0))]
    write(path, data)
    runs = [{"seed": 0, "resources": {"train_work": 50.0, "generate_work": 4.0, "peak_mem_mib": 10.0, "cpu": "X", "threads": 1}},
            {"seed": 1, "resources": {"train_work": 52.0, "generate_work": 4.4, "peak_mem_mib": 8.0, "cpu": "X", "threads": 1}}]
    rec = {"case_id": cid, "outcome": "passed", "resources": {**runs[0]["resources"], "device": "cpu"}, "runs": runs}
    assert baselines.record_resources(path, [rec]) == [cid]
    after = load(path)["cases"][cid]
    assert [r["resources"] for r in after["runs"]] == [
        {"train_work": 50.0, "generate_work": 4.0, "peak_mem_mib": 10.0, "threads": 1},
        {"train_work": 52.0, "generate_work": 4.4, "peak_mem_mib": 8.0, "threads": 1}, {}]
    assert after["resources"]["cpu"] == "X"
    used = gate.like_for_like(after["resources"], after)
    assert used["generate_work"] == pytest.approx(4.2) and used["peak_mem_mib"] == 10.0 and used["cpu"] == "X"


def test_a_cpu_identity_that_is_not_text_is_refused(tmp_path):
    data = make_data()
    cid = next(iter(data["cases"]))
    data["cases"][cid]["resources"] = {"device": "cpu", "cpu": 3, "train_work": 1.0}
    with pytest.raises(baselines.BaselineError, match=r"resources\.cpu = 3: must be text"):
        baselines.validate(data, "b.json")


def test_concurrent_recordings_both_land(tmp_path):
    """Two processes recording different cases into one file at once: both cases end up in it
    (the read-modify-write is under a file lock)."""
    import multiprocessing

    path = tmp_path / "b.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_one, args=(str(path), cid)) for cid in ("llama-wikidoc", "phi-wikidoc", "gemma-wikidoc")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(load(path)["cases"]) == ["gemma-wikidoc", "llama-wikidoc", "phi-wikidoc"]


def _record_one(path: str, cid: str) -> None:
    import time as _t

    from medqa_core import baselines as b

    real_load = b.load

    def slow_load(p):  # widen the read-modify-write window
        d = real_load(p)
        _t.sleep(0.3)
        return d

    b.load = slow_load
    rec = {"case_id": cid, "outcome": "passed", "runs": [_full_run(s) for s in (0, 1)]}
    b.record_cases(Path(path), "tiny", [rec])


def _full_run(seed):
    r = make_run(seed)
    return {**r, "controls": {}, "invariants": {"train_steps": 200, "tokens_seen": 1000 + seed},
            "identity": {"data": "d", "test_ids": "t", "scorer": "s"}, "base_metrics": dict(METRIC_VALUES),
            "provenance": {"git_sha": "x", "versions": {}, "hardware": {}}}
