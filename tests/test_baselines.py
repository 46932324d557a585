"""Baseline files (validate/load/write/record) and the gate (compare, paired bootstrap)."""
from __future__ import annotations

import copy
import json
import math
import os
import stat

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from medqa_core import baselines
from medqa_core.baselines import (
    DEFAULT_TOLERANCE,
    SCHEMA_VERSION,
    compare,
    load,
    paired_bootstrap_ci,
    record_cases,
    validate,
    write,
)
from medqa_core.errors import BaselineError, MedQAError
from medqa_core.metrics import METRICS
from medqa_core.specs import GateConfig

METRIC_VALUES = dict(zip(METRICS, (0.61, 0.58, 0.595, 0.72, 0.41, 0.44, 0.425)))


def make_case(**over):
    case = {
        "metrics": dict(METRIC_VALUES),
        "base_metrics": {m: v - 0.1 for m, v in METRIC_VALUES.items()},
        "resources": {"train_seconds": 12.5, "peak_mem_mib": 300.0, "tokens_per_s": 900.0, "device": "cpu"},
        "per_example": {"ids": ["a", "b", "c"], **{m: [0.5, 0.6, 0.7] for m in METRICS}},
    }
    case.update(over)
    return case


def make_data():
    return {"schema_version": SCHEMA_VERSION, "profile": "tiny", "source": "test",
            "cases": {"llama-wikidoc": make_case(), "phi-wikidoc": {"metrics": dict(METRIC_VALUES)}}}


def expect_baseline_error(fn, *fragments):
    with pytest.raises(MedQAError) as info:
        fn()
    assert isinstance(info.value, BaselineError)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- validate


def test_validate_accepts_good_data():
    data = make_data()
    assert validate(data, "b.json") is data


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
    ("schema-2", _set(("schema_version",), 2), "schema_version"),
    ("schema-missing", _set(("schema_version",), DELETE), "schema_version"),
    ("schema-string", _set(("schema_version",), "1"), "schema_version"),
    ("cases-list", _set(("cases",), []), "'cases'"),
    ("cases-missing", _set(("cases",), DELETE), "'cases'"),
    ("resource-string", _set((*C, "resources", "train_seconds"), "fast"), "cases.llama-wikidoc.resources.train_seconds"),
    ("resource-nan", _set((*C, "resources", "peak_mem_mib"), math.nan), "cases.llama-wikidoc.resources.peak_mem_mib"),
    ("ids-not-list", _set((*C, "per_example", "ids"), "a,b,c"), "cases.llama-wikidoc.per_example.ids"),
    ("per-example-short", _set((*C, "per_example", "bert_f1"), [0.5, 0.6]), "cases.llama-wikidoc.per_example.bert_f1"),
    ("per-example-nan", _set((*C, "per_example", "use_f1"), [0.5, math.nan, 0.7]),
     "cases.llama-wikidoc.per_example.use_f1"),
    ("per-example-not-list", _set((*C, "per_example", "cosine"), 0.5), "cases.llama-wikidoc.per_example.cosine"),
]


@pytest.mark.parametrize("mutate, key", [v[1:] for v in BAD_VARIANTS], ids=[v[0] for v in BAD_VARIANTS])
def test_validate_rejects_with_key(mutate, key):
    data = make_data()
    mutate(data)
    expect_baseline_error(lambda: validate(data, "baselines/x.json"), "baselines/x.json", key)


@pytest.mark.parametrize("top", [[], [make_data()], "text", 1, None])
def test_validate_rejects_non_object_top_level(top):
    expect_baseline_error(lambda: validate(top, "b.json"), "b.json", "top level", type(top).__name__)


@pytest.mark.parametrize("key, value", [("resources", None), ("resources", [1, 2]), ("per_example", [0.5]),
                                        ("per_example", "x")])
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
    p.write_text('{\n "schema_version": 1,\n "cases": {,\n}\n')
    expect_baseline_error(lambda: load(p), str(p), "line 3")


def test_load_rejects_nan_literal(tmp_path):
    p = tmp_path / "b.json"
    text = json.dumps(make_data()).replace('"bert_p": 0.61', '"bert_p": NaN', 1)
    assert "NaN" in text
    p.write_text(text)
    expect_baseline_error(lambda: load(p), str(p), "metrics.bert_p")


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
def test_write_keeps_file_mode(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text("{}")
    os.chmod(p, 0o644)
    write(p, make_data())
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


# ---------------------------------------------------------------- compare

GATE = GateConfig(metric_tolerance={m: 0.02 for m in METRICS}, time_factor=3.0, memory_factor=1.5)
BASE = {"metrics": dict(METRIC_VALUES), "resources": {"train_seconds": 10.0, "peak_mem_mib": 200.0, "device": "cpu"}}


def shifted(**delta):
    return {m: v + delta.get(m, 0.0) for m, v in METRIC_VALUES.items()}


def test_compare_no_baseline():
    v = compare("llama-wikidoc", dict(METRIC_VALUES), None, GATE)
    assert v.status == "no-baseline" and v.checks == []
    assert "llama-wikidoc" in v.explain() and "no baseline" in v.explain()


def test_compare_identical_passes():
    v = compare("c", dict(METRIC_VALUES), BASE, GATE, {"train_seconds": 10.0, "peak_mem_mib": 200.0, "device": "cpu"})
    assert v.status == "pass" and not v.failures
    assert [c.name for c in v.checks] == [*METRICS, "train_seconds", "peak_mem_mib"]
    for c in v.checks[:7]:
        assert c.limit == pytest.approx(c.baseline - 0.02)


@pytest.mark.parametrize("metric", METRICS)
def test_compare_drop_beyond_tolerance_is_regression(metric):
    v = compare("mistral-wikidoc", shifted(**{metric: -0.05}), BASE, GATE)
    assert v.status == "regression"
    assert [c.name for c in v.failures] == [metric]
    text = v.explain()
    assert "mistral-wikidoc: regression" in text and metric in text and "FAIL" in text


def test_compare_drop_within_tolerance_passes():
    v = compare("c", shifted(**{m: -0.015 for m in METRICS}), BASE, GATE)
    assert v.status == "pass"


def test_compare_improvement():
    v = compare("c", shifted(bert_f1=+0.05), BASE, GATE)
    assert v.status == "improvement" and not v.failures
    v = compare("c", shifted(bert_f1=+0.015), BASE, GATE)
    assert v.status == "pass"


def test_compare_improvement_and_regression_is_regression():
    v = compare("c", shifted(bert_f1=+0.2, use_r=-0.2), BASE, GATE)
    assert v.status == "regression" and [c.name for c in v.failures] == ["use_r"]


def test_compare_default_tolerance():
    gate = GateConfig(metric_tolerance={})
    assert compare("c", shifted(cosine=-(DEFAULT_TOLERANCE + 0.01)), BASE, gate).status == "regression"
    assert compare("c", shifted(cosine=-(DEFAULT_TOLERANCE - 0.01)), BASE, gate).status == "pass"


def test_compare_per_metric_tolerance():
    gate = GateConfig(metric_tolerance={"bert_f1": 0.1})
    assert compare("c", shifted(bert_f1=-0.08), BASE, gate).status == "pass"
    assert compare("c", shifted(use_f1=-0.08), BASE, gate).status == "regression"


@pytest.mark.parametrize("res, status, failing", [
    ({"train_seconds": 35.0, "peak_mem_mib": 200.0, "device": "cpu"}, "regression", ["train_seconds"]),
    ({"train_seconds": 29.0, "peak_mem_mib": 200.0, "device": "cpu"}, "pass", []),
    ({"train_seconds": 10.0, "peak_mem_mib": 310.0, "device": "cpu"}, "regression", ["peak_mem_mib"]),
    ({"train_seconds": 10.0, "peak_mem_mib": 290.0, "device": "cpu"}, "pass", []),
    ({"train_seconds": 99.0, "peak_mem_mib": 999.0, "device": "cuda"}, "pass", []),  # other device: not compared
    ({"train_seconds": 99.0, "peak_mem_mib": 999.0}, "pass", []),  # no device given
    ({"peak_mem_mib": 999.0, "device": "cpu"}, "regression", ["peak_mem_mib"]),  # only what both sides have
])
def test_compare_resources(res, status, failing):
    v = compare("c", dict(METRIC_VALUES), BASE, GATE, res)
    assert v.status == status
    assert [c.name for c in v.failures] == failing
    if res.get("device") != "cpu":
        assert not any(c.name in ("train_seconds", "peak_mem_mib") for c in v.checks)
    for c in v.checks:
        if c.name == "train_seconds":
            assert c.limit == pytest.approx(30.0)
        if c.name == "peak_mem_mib":
            assert c.limit == pytest.approx(300.0)


def test_compare_without_resources_skips_resource_checks():
    v = compare("c", dict(METRIC_VALUES), BASE, GATE, None)
    assert [c.name for c in v.checks] == list(METRICS)
    v = compare("c", dict(METRIC_VALUES), {"metrics": dict(METRIC_VALUES)}, GATE, {"train_seconds": 1e9, "device": None})
    assert v.status == "pass"


def test_compare_paired_detail_only_with_same_ids():
    base = {**BASE, "per_example": {"ids": ["a", "b", "c", "d"], **{m: [0.5, 0.6, 0.7, 0.8] for m in METRICS}}}
    cur = {"ids": ["a", "b", "c", "d"], **{m: [0.6, 0.7, 0.8, 0.9] for m in METRICS}}
    v = compare("c", dict(METRIC_VALUES), base, GATE, None, cur)
    assert all("paired diff +0.1000" in c.detail and "95% CI" in c.detail for c in v.checks)
    assert all(c.basis == "paired" for c in v.checks)
    # other examples: not paired; this run's own CI against the threshold instead
    v = compare("c", dict(METRIC_VALUES), base, GATE, None, {**cur, "ids": ["a", "b", "c", "e"]})
    assert all(c.basis == "run-ci" and "paired" not in c.detail for c in v.checks)
    v = compare("c", dict(METRIC_VALUES), base, GATE, None, None)
    assert all(c.basis == "threshold" and c.detail == "" for c in v.checks)


TOL = st.floats(0.001, 0.1)
DELTA = st.floats(-0.3, 0.3)


@given(
    base=st.fixed_dictionaries({m: st.floats(0.0, 1.0) for m in METRICS}),
    delta=st.fixed_dictionaries({m: DELTA for m in METRICS}),
    tol=st.fixed_dictionaries({m: TOL for m in METRICS}),
    time_factor=st.floats(1.0, 4.0), mem_factor=st.floats(1.0, 4.0),
    t_ratio=st.floats(0.1, 6.0), m_ratio=st.floats(0.1, 6.0),
    same_device=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_property_compare_status(base, delta, tol, time_factor, mem_factor, t_ratio, m_ratio, same_device):
    for m in METRICS:
        assume(abs(abs(delta[m]) - tol[m]) > 1e-9)
    assume(abs(t_ratio - time_factor) > 1e-9 and abs(m_ratio - mem_factor) > 1e-9)
    gate = GateConfig(metric_tolerance=tol, time_factor=time_factor, memory_factor=mem_factor)
    base_case = {"metrics": base, "resources": {"train_seconds": 20.0, "peak_mem_mib": 512.0, "device": "cpu"}}
    current = {m: base[m] + delta[m] for m in METRICS}
    res = {"train_seconds": 20.0 * t_ratio, "peak_mem_mib": 512.0 * m_ratio,
           "device": "cpu" if same_device else "cuda"}
    v = compare("case", current, base_case, gate, res)

    metric_drop = any(delta[m] < -tol[m] for m in METRICS)
    resource_over = same_device and (t_ratio > time_factor or m_ratio > mem_factor)
    if metric_drop or resource_over:
        expected = "regression"
    elif any(delta[m] > tol[m] for m in METRICS):
        expected = "improvement"
    else:
        expected = "pass"
    assert v.status == expected
    assert {c.name for c in v.failures} == (
        {m for m in METRICS if delta[m] < -tol[m]}
        | ({"train_seconds"} if same_device and t_ratio > time_factor else set())
        | ({"peak_mem_mib"} if same_device and m_ratio > mem_factor else set())
    )


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_identical_is_zero():
    x = np.array([0.1, 0.5, 0.9, 0.3])
    assert paired_bootstrap_ci(x, x.copy()) == (0.0, 0.0, 0.0)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=50), st.floats(-0.5, 0.5))
@settings(max_examples=80, deadline=None)
def test_property_bootstrap_constant_shift(base, d):
    b = np.array(base)
    mean, lo, hi = paired_bootstrap_ci(b + d, b, n_boot=200)
    assert mean == pytest.approx(d, abs=1e-9)
    assert lo - 1e-9 <= d <= hi + 1e-9
    assert hi - lo <= 1e-9


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=60), st.integers(0, 100))
@settings(max_examples=80, deadline=None)
def test_property_bootstrap_ci_brackets_mean(pairs, seed):
    cur = np.array([p[0] for p in pairs])
    base = np.array([p[1] for p in pairs])
    mean, lo, hi = paired_bootstrap_ci(cur, base, n_boot=300, seed=seed)
    assert mean == pytest.approx(sum(c - b for c, b in pairs) / len(pairs), abs=1e-12)
    assert lo - 1e-12 <= mean <= hi + 1e-12
    diffs = [c - b for c, b in pairs]
    assert min(diffs) - 1e-12 <= lo and hi <= max(diffs) + 1e-12
    assert paired_bootstrap_ci(cur, base, n_boot=300, seed=seed) == (mean, lo, hi)  # seeded: reproducible


def test_bootstrap_width_matches_normal_theory():
    rng = np.random.default_rng(7)
    n = 400
    base = rng.uniform(size=n)
    cur = base + rng.normal(0.05, 1.0, size=n)
    d = cur - base
    mean, lo, hi = paired_bootstrap_ci(cur, base)
    se = d.std(ddof=1) / math.sqrt(n)
    assert (hi - lo) == pytest.approx(2 * 1.959964 * se, rel=0.15)
    assert (lo + hi) / 2 == pytest.approx(mean, abs=0.25 * se)


@pytest.mark.parametrize("cur, base", [([], []), ([[1.0, 2.0]], [[0.0, 1.0]])])
def test_bootstrap_rejects_bad_shapes(cur, base):
    with pytest.raises(ValueError):
        paired_bootstrap_ci(np.array(cur), np.array(base))


def test_bootstrap_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        paired_bootstrap_ci(np.ones(1), np.zeros(5))


# ---------------------------------------------------------------- record_cases

PROV = {"git_sha": "abc123", "versions": {"torch": "2.5"}, "hardware": {"cpu": "x"}, "profile_hash": "h",
        "seeds": {"train": 0}}


def record(case_id, outcome="passed", bump=0.0):
    return {"case_id": case_id, "outcome": outcome, "metrics": {m: v + bump for m, v in METRIC_VALUES.items()},
            "base_metrics": dict(METRIC_VALUES),
            "resources": {"train_seconds": 5.0, "peak_mem_mib": 100.0, "tokens_per_s": 1.0, "device": "cpu"},
            "per_example": {"ids": ["x"], **{m: [0.5] for m in METRICS}}, "provenance": PROV}


def test_record_cases_merges(tmp_path):
    p = tmp_path / "tiny.json"
    old = {"schema_version": 1, "profile": "tiny",
           "cases": {"llama-wikidoc": make_case(), "gemma-wikidoc": make_case(metrics=shifted(bert_f1=0.1))}}
    write(p, old)
    written, skipped = record_cases(p, "tiny", [
        record("gemma-wikidoc", bump=0.05), record("phi-wikidoc"), record("mistral-wikidoc", outcome="failed"),
        record("gemma-healthcaremagic", outcome="skipped"),
    ])
    assert written == ["gemma-wikidoc", "phi-wikidoc"]
    assert skipped == ["gemma-healthcaremagic", "mistral-wikidoc"]
    data = load(p)
    assert set(data["cases"]) == {"llama-wikidoc", "gemma-wikidoc", "phi-wikidoc"}
    assert data["cases"]["llama-wikidoc"] == json.loads(json.dumps(old["cases"]["llama-wikidoc"]))
    assert data["cases"]["gemma-wikidoc"]["metrics"] == pytest.approx(
        {m: v + 0.05 for m, v in METRIC_VALUES.items()})
    rec = data["cases"]["phi-wikidoc"]["recorded"]
    assert rec == {k: PROV[k] for k in ("git_sha", "versions", "hardware", "profile_hash")}
    assert "--profile tiny" in data["source"] and "--update-baselines" in data["source"]


def test_record_cases_creates_file(tmp_path):
    p = tmp_path / "new" / "b.json"
    written, skipped = record_cases(p, "myprof", [record("llama-d1")])
    assert written == ["llama-d1"] and skipped == []
    data = load(p)
    assert data["schema_version"] == SCHEMA_VERSION and data["profile"] == "myprof"
    assert list(data["cases"]) == ["llama-d1"]


def test_record_cases_nothing_passed_writes_nothing(tmp_path):
    p = tmp_path / "b.json"
    written, skipped = record_cases(p, "tiny", [record("a-b", outcome="failed")])
    assert (written, skipped) == ([], ["a-b"])
    assert not p.exists()


def test_record_cases_invalid_record_keeps_old_file(tmp_path):
    p = tmp_path / "b.json"
    write(p, make_data())
    before = p.read_bytes()
    bad = record("phi-wikidoc")
    bad["metrics"]["bert_f1"] = math.nan
    expect_baseline_error(lambda: record_cases(p, "tiny", [bad]), str(p), "phi-wikidoc", "bert_f1")
    assert p.read_bytes() == before


def test_record_cases_does_not_mutate_records(tmp_path):
    recs = [record("llama-x")]
    snapshot = copy.deepcopy(recs)
    record_cases(tmp_path / "b.json", "tiny", recs)
    assert recs == snapshot
    assert baselines.load(tmp_path / "b.json")["cases"]["llama-x"]["per_example"]["ids"] == ["x"]
