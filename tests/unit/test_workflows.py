"""The nightly GPU workflow, parsed and its embedded scripts run (issues 13 and 25): no expression
pasted into a script (dispatch inputs reach scripts through `env:`), a concurrency group, the plan
(nightly: one job per family; paper: one job per case, this week's dataset), a preflight that fails
without a CUDA device, the install from the lock file, a night where only a family or suite
verdict failed opening a regression issue (not `infra`), a `record = true` run ending green with
the recorded baseline files merged and uploaded, and a merge job after the matrix."""
from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from medqa_core.profile import load_profile

yaml = pytest.importorskip("yaml")

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "nightly-gpu.yml"
MERGE = REPO_ROOT / "scripts" / "merge_nightly.sh"
DAY_MINUTES = 24 * 60  # GITHUB_TOKEN lifetime on self-hosted runners, and their queue limit (docs/gpu.md)


@pytest.fixture(scope="module")
def wf() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def step(job: dict, pred) -> dict:
    found = [st for st in steps(job) if pred(st)]
    assert len(found) == 1, [st.get("name") for st in found]
    return found[0]


def named(job: dict, start: str) -> dict:
    return step(job, lambda st: st.get("name", "").startswith(start))


def all_runs(wf: dict) -> list[tuple[str, str, str]]:
    return [(jname, st.get("name", "?"), st["run"]) for jname, job in wf["jobs"].items() for st in steps(job) if "run" in st]


def embedded_python(script: str) -> str:
    [body] = re.findall(r"<<'PY'\n(.*?)\n\s*PY\n", script, flags=re.S)
    return textwrap.dedent(body)


def run_python(script: str, cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run a step's embedded Python as the runner would, with GITHUB_OUTPUT / GITHUB_STEP_SUMMARY."""
    out = cwd / "github_output"
    out.write_text("")
    full = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(cwd / "summary.md"), **env}
    res = subprocess.run([sys.executable, "-c", embedded_python(script)], cwd=cwd, env=full, capture_output=True,
                         text=True, timeout=60)
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    return res, outputs


# ---------------------------------------------------------------------- rules of the file

def test_no_expression_inside_a_run_script(wf):
    runs = all_runs(wf)
    assert runs
    for job, name, script in runs:
        assert "${{ github.event.inputs" not in script and "${{ inputs." not in script, (job, name)
        assert "${{" not in script, f"{job} / {name}: pass values through env:, not ${{{{ }}}} in the script"
    # the inputs do reach the jobs, through env
    env_text = yaml.safe_dump({j: wf["jobs"][j].get("env", {}) for j in wf["jobs"]})
    assert "inputs.select" in env_text and "inputs.record" in env_text
    plan_env = yaml.safe_dump(named(wf["jobs"]["plan"], "Pick")["env"])
    assert all(f"inputs.{i}" in plan_env for i in ("profile", "families", "paper_cases", "record"))


def test_detector_sees_a_pasted_input():
    """The check above can fail: the old workflow pasted the dispatch input into its script."""
    bad = yaml.safe_load('jobs:\n  a:\n    steps:\n      - run: sel="${{ github.event.inputs.select }}"\n')
    assert any("${{ github.event.inputs" in r for _, _, r in all_runs(bad))


def test_concurrency_group(wf):
    conc = wf.get("concurrency")
    assert isinstance(conc, dict) and conc.get("group") and conc.get("cancel-in-progress") is False


def test_run_scripts_are_valid_bash(wf, tmp_path):
    for job, name, script in all_runs(wf):
        path = tmp_path / "s.sh"
        path.write_text(script)
        res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{job} / {name}: {res.stderr}"
        for body in re.findall(r"<<'PY'\n(.*?)\n\s*PY\n", script, flags=re.S):  # embedded Python compiles
            compile(textwrap.dedent(body), f"{job}/{name}", "exec")


def test_both_profiles_the_workflow_names_exist():
    assert load_profile("nightly").train.steps < load_profile("paper").train.steps
    assert load_profile("nightly").split.test_size < load_profile("paper").split.test_size
    assert load_profile("nightly").scorer == load_profile("paper").scorer  # the study's scorers


# ---------------------------------------------------------------------- the plan: schedule and jobs

def plan(wf: dict, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    return run_python(named(wf["jobs"]["plan"], "Pick")["run"], tmp_path, env)


def test_plan_nightly_per_family_paper_per_case(wf, tmp_path):
    crons = [s["cron"] for s in wf["on"]["schedule"]]
    nightly_cron = next(c for c in crons if c.split()[4] != "6")
    weekly_cron = next(c for c in crons if c.split()[4] == "6")
    models = sorted(load_profile("paper").models)
    datasets = sorted(load_profile("paper").datasets)
    assert sorted(load_profile("nightly").models) == models and sorted(load_profile("nightly").datasets) == datasets

    res, out = plan(wf, tmp_path, EVENT="schedule", SCHEDULE=nightly_cron)
    assert res.returncode == 0, res.stderr
    jobs = json.loads(out["jobs"])["include"]
    assert out["profile"] == "nightly" and sorted(j["id"] for j in jobs) == models
    assert all(j["k"] == j["model"] for j in jobs)

    # Saturday: the paper profile split into one job per case, this ISO week's dataset
    res, out = plan(wf, tmp_path, EVENT="schedule", SCHEDULE=weekly_cron)
    assert res.returncode == 0, res.stderr
    jobs = json.loads(out["jobs"])["include"]
    assert out["profile"] == "paper" and len(jobs) == len(models)
    [dataset] = {j["id"].split("-", 1)[1] for j in jobs}
    assert dataset in datasets
    assert all(j["k"] == f"{j['model']} and {dataset}" for j in jobs)
    # every dataset comes round: the week number picks it
    week = datetime.datetime.now(datetime.UTC).date().isocalendar()[1]
    src = embedded_python(named(wf["jobs"]["plan"], "Pick")["run"])
    listed = json.loads(re.search(r"DATASETS = (\[.*?\])", src).group(1).replace("'", '"'))
    assert sorted(listed) == datasets and dataset == listed[week % len(listed)]

    res, out = plan(wf, tmp_path, EVENT="workflow_dispatch", PROFILE_INPUT="paper", PAPER_CASES_INPUT="all")
    assert res.returncode == 0 and len(json.loads(out["jobs"])["include"]) == len(models) * len(datasets)
    res, out = plan(wf, tmp_path, EVENT="workflow_dispatch", PROFILE_INPUT="nightly", FAMILIES_INPUT="gemma, phi")
    assert [j["id"] for j in json.loads(out["jobs"])["include"]] == ["gemma", "phi"]
    for bad in ({"FAMILIES_INPUT": "bert"}, {"PROFILE_INPUT": "tiny"}, {"PROFILE_INPUT": "paper", "PAPER_CASES_INPUT": "x"}):
        res, _ = plan(wf, tmp_path, EVENT="workflow_dispatch", **{"PROFILE_INPUT": "nightly", **bad})
        assert res.returncode != 0 and "::error::" in res.stderr


def test_every_job_fits_githubs_limits(wf, tmp_path):
    """Each job's timeout stays under 24 h (the GITHUB_TOKEN of a self-hosted job cannot be
    refreshed past it), and the torchrun timeout under the job's (docs/gpu.md, the arithmetic)."""
    gpu = wf["jobs"]["gpu"]
    assert gpu["timeout-minutes"] == "${{ fromJSON(needs.plan.outputs.timeout) }}"
    assert "needs.plan.outputs.torchrun_timeout" in gpu["env"]["MEDQA_TORCHRUN_TIMEOUT"]
    for profile in ("nightly", "paper"):
        for record in ("true", "false"):
            res, out = plan(wf, tmp_path, EVENT="workflow_dispatch", PROFILE_INPUT=profile, RECORD=record)
            assert res.returncode == 0, res.stderr
            minutes, torchrun = int(out["timeout"]), int(out["torchrun_timeout"])
            assert 0 < minutes < DAY_MINUTES and 0 < torchrun < minutes * 60, (profile, record, out)
    for job in ("plan", "merge"):  # GitHub-hosted: 6 h at most
        assert wf["jobs"][job]["timeout-minutes"] <= 360


# ---------------------------------------------------------------------- the GPU job

def test_gpu_job_preflight_pinned_install_and_artifact(wf):
    gpu = wf["jobs"]["gpu"]
    names = [st.get("name", "") for st in steps(gpu)]
    pre = [i for i, n in enumerate(names) if n.lower().startswith("preflight")]
    assert pre, "no preflight step"
    pre_run = steps(gpu)[pre[0]]["run"]
    assert "nvidia-smi" in pre_run and "exit 1" in pre_run
    run_idx = next(i for i, st in enumerate(steps(gpu)) if "pytest" in st.get("run", ""))
    assert pre[0] < run_idx
    assert wf["env"]["HF_HOME"].startswith(wf["env"]["MEDQA_CACHE_DIR"] + "/")
    # the install is the lock file, no resolver: every pip install line of the GPU job names it or --no-deps -e .
    install = named(gpu, "Install")["run"]
    pips = [ln.strip() for ln in install.splitlines() if "pip install" in ln]
    assert pips == [".venv/bin/pip install --no-deps -r constraints/gpu.txt",
                    ".venv/bin/pip install --no-deps --no-build-isolation -e ."]
    assert not [r for _, _, r in all_runs({"jobs": {"gpu": gpu}}) if "pip install" in r and r != install]
    uploads = [st for st in steps(gpu) if str(st.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"].startswith("results") and uploads[0].get("if") == "always()"
    assert "matrix.id" in uploads[0]["with"]["name"]
    classify = named(gpu, "Classify")
    assert classify.get("if") == "always()" and '"error"' in classify["run"]


def test_lock_file_covers_every_dependency_of_the_install():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from gpu_check import read_lock

    pins = read_lock(REPO_ROOT / "constraints" / "gpu.txt")
    assert "+cpu" not in pins["torch"] and any(n.startswith("nvidia-") for n in pins)  # the CUDA build and its libraries
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in ("dev", "gpu", "tfhub", "hub", "small")
                                      for r in project["optional-dependencies"][extra]]
    for req in reqs:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
        assert name in pins, f"{name} (pyproject.toml) is not pinned in constraints/gpu.txt"


def test_lock_file_serves_both_pythons_and_the_isolation_free_build():
    """One lock file for CPython 3.11 (the workflow) and 3.12 (the lent GPU machines; verified on
    3.12.1): its header says so. `pip install --no-deps --no-build-isolation -e .` builds with what
    the lock installed, and a 3.12 venv has no setuptools: the build-system requirements are pinned.
    Each package appears once (the name -> version map would hide a second pin)."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from gpu_check import read_lock

    lock = REPO_ROOT / "constraints" / "gpu.txt"
    text = lock.read_text()
    header = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    assert "CPython 3.11" in header and "3.12" in header and "3.12.1" in header
    pins = read_lock(lock)
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]
    assert len(lines) == len(pins), "a package is pinned twice in constraints/gpu.txt"
    build = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for req in build:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
        assert name in pins, f"{name} (build-system) is not pinned: --no-build-isolation needs it installed"


def classify(wf: dict, cwd: Path, rc: str, record: bool = False, job: str = "llama") -> tuple[str, str]:
    script = named(wf["jobs"]["gpu"], "Classify")["run"]
    assert script.startswith("mkdir -p results\n")
    (cwd / "results").mkdir(parents=True, exist_ok=True)
    res, _ = run_python(script, cwd, {"JOB_ID": job, "RC": rc, "PREFLIGHT": "success", "INSTALL": "success",
                                      "RECORD": "true" if record else "false"})
    assert res.returncode == 0, res.stderr
    status, why = (cwd / "results" / f"job-status-{job}.txt").read_text().splitlines()
    return status, why


def write_run(root: Path, cases: dict[str, str], aggregates: list[dict] | None = None) -> Path:
    run = root / "results" / "20261206-010000-abcdef"
    run.mkdir(parents=True)
    for case, status in cases.items():
        (run / f"{case}.json").write_text(json.dumps({"case_id": case, "verdict": {"status": status}}))
    if aggregates is not None:
        (run / "aggregates.json").write_text(json.dumps(aggregates))
    return run


def verdict(wf: dict, cwd: Path, statuses: dict[str, str], **env: str) -> dict[str, str]:
    for job, status in statuses.items():
        d = cwd / "artifacts" / f"medqa-nightly-{job}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"job-status-{job}.txt").write_text(f"{status}\nwhy\n")
    jobs = json.dumps({"include": [{"id": j} for j in statuses]})
    res, out = run_python(named(wf["jobs"]["merge"], "Verdict")["run"], cwd,
                          {"JOBS": jobs, "MEDQA_PROFILE": "nightly", "NIGHT": "2026-12-06", **env})
    assert res.returncode == 0, res.stderr
    return out


def test_a_night_where_only_an_aggregate_failed_opens_a_regression_issue(wf, tmp_path):
    # a family job whose five cases pass but whose family verdict fails: pytest exits 1
    job = tmp_path / "job"
    write_run(job, {f"llama-{d}": "pass" for d in ("wikidoc", "mental_health")},
              [{"scope": "family llama", "metric": "bert_f1", "passed": False}, {"scope": "suite", "metric": "use_f1",
                                                                               "passed": True}])
    status, why = classify(wf, job, rc="1")
    assert status == "regressed" and "aggregate family llama bert_f1" in why
    # the same exit with no verdict behind it is still an infrastructure failure
    other = tmp_path / "other"
    write_run(other, {"llama-wikidoc": "pass"}, [])
    assert classify(wf, other, rc="1")[0] == "infra"
    # a case in error stays infra even when an aggregate failed
    err = tmp_path / "err"
    write_run(err, {"llama-wikidoc": "error"}, [{"scope": "suite", "metric": "bert_f1", "passed": False}])
    assert classify(wf, err, rc="1")[0] == "infra"

    # the merge job: that family's status, or only the suite verdict recomputed over all families
    out = verdict(wf, tmp_path / "n1", {"gemma": "ok", "llama": "regressed", "mistral": "ok", "phi": "ok"},
                  MERGE_STATUS="regressed", MERGE_AGGREGATES_FAILED="1")
    assert out == {"night": "regressed", "infra": "false"}
    out = verdict(wf, tmp_path / "n2", {"gemma": "ok", "llama": "ok", "mistral": "ok", "phi": "ok"},
                  MERGE_STATUS="regressed", MERGE_AGGREGATES_FAILED="2")
    assert out == {"night": "regressed", "infra": "false"}
    # ... also when another family had no baseline yet
    out = verdict(wf, tmp_path / "n3", {"gemma": "unjudged", "llama": "ok"}, MERGE_STATUS="regressed",
                  MERGE_AGGREGATES_FAILED="1")
    assert out["night"] == "regressed"
    # a crash with nothing failing is infra, and opens no issue
    out = verdict(wf, tmp_path / "n4", {"gemma": "infra", "llama": "ok"}, MERGE_STATUS="regressed",
                  MERGE_AGGREGATES_FAILED="0")
    assert out == {"night": "infra", "infra": "true"}

    merge = wf["jobs"]["merge"]
    issue = named(merge, "Open or update")
    assert issue["if"] == "always() && steps.verdict.outputs.night == 'regressed'"
    assert "command -v gh" in issue["run"] and "merged/issue.md" in issue["run"]
    assert issue["run"].count("gh issue create") == 1  # one issue for the night, updated on a rerun
    infra_fail = named(merge, "Fail on an infrastructure")
    assert "'infra'" in infra_fail["if"] and "'regressed'" not in infra_fail["if"]
    # the merge step hands the recomputed aggregate count to the verdict
    assert "merged/aggregates_failed" in named(merge, "Merge runs")["run"]
    assert "steps.merge.outputs.aggregates_failed" in named(merge, "Verdict")["env"]["MERGE_AGGREGATES_FAILED"]


def test_merge_nightly_writes_the_failed_aggregate_count():
    """merge_nightly.sh's aggregates_failed is read from the issue body that
    medqa_core.results.merge writes ("N check(s), M failed ..."): the script's sed on that body."""
    from types import SimpleNamespace

    from medqa_core.results.merge import issue_body

    sed = re.search(r"agg=\$\(sed -n '([^']+)'", MERGE.read_text()).group(1)
    aggs = [SimpleNamespace(passed=p, line=lambda: "  [FAIL] suite bert_f1") for p in (False, True, False, True)]
    body = issue_body("g", "nightly", [], aggs, {}, [], "regressed")
    res = subprocess.run(["sed", "-n", sed], input=body, capture_output=True, text=True)
    assert res.stdout.strip() == "2"
    res = subprocess.run(["sed", "-n", sed], input=issue_body("g", "nightly", [], [], {}, [], "ok"),
                         capture_output=True, text=True)
    assert res.stdout.strip() == ""  # none computed: the script writes 0


def test_record_run_ends_green_and_uploads_the_recorded_baselines(wf, tmp_path):
    gpu, merge = wf["jobs"]["gpu"], wf["jobs"]["merge"]
    run = named(gpu, "Run the job")["run"]
    assert "--update-baselines" in run and "git ls-files -m -o --exclude-standard" in run
    assert "results/recorded-baselines" in run and "--seeds 1" in run

    # a recording job: its cases end no-baseline (nothing to judge against), pytest exits 0
    job = tmp_path / "job"
    write_run(job, {"llama-wikidoc": "no-baseline", "llama-mental_health": "no-baseline"})
    (job / "results" / "recorded-baselines").mkdir()
    (job / "results" / "recorded-baselines" / "paper-1x-nvidia-h100.json").write_text("{}")
    assert classify(wf, job, rc="0", record=True) == ("recorded", "paper-1x-nvidia-h100.json")
    # the job's last step passes on `recorded`
    fail = named(gpu, "Fail the job")["run"]
    res = subprocess.run(["bash", "-c", fail], cwd=job, env={**os.environ, "JOB_ID": "llama"}, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    # a recording that wrote nothing is not green
    empty = tmp_path / "empty"
    write_run(empty, {"llama-wikidoc": "no-baseline"})
    assert classify(wf, empty, rc="0", record=True)[0] == "infra"

    # the merge job: every job recorded and the files merged -> night `recorded`, no failing step
    out = verdict(wf, tmp_path / "m", {"gemma": "recorded", "llama": "recorded"}, RECORD="true", BASELINES_RC="0")
    assert out == {"night": "recorded", "infra": "false"}
    fails = [st for st in steps(merge) if st.get("name", "").startswith("Fail")]
    assert fails and all("'recorded'" not in st["if"] for st in fails)
    assert "regressed" not in verdict(wf, tmp_path / "m2", {"gemma": "recorded"}, RECORD="true", BASELINES_RC="1")["night"]

    # the recorded files are merged and uploaded; the history is left alone
    merge_step = named(merge, "Merge the recorded baseline")
    assert merge_step["if"] == "env.RECORD == 'true'" and "merge_nightly.sh --baselines artifacts merged-baselines" in merge_step["run"]
    upload = named(merge, "Upload the recorded baseline")
    assert upload["with"]["path"] == "merged-baselines/" and upload["with"]["if-no-files-found"] == "error"
    assert "always()" in upload["if"] and "env.RECORD == 'true'" in upload["if"]
    assert "env.RECORD != 'true'" in named(merge, "Merge runs")["if"]


def baseline(cases: dict[str, float], source: str = "s") -> dict:
    """A schema-2 baseline file whose entries are the shipped tiny llama-wikidoc one, bert_f1 set."""
    template = json.loads((REPO_ROOT / "baselines" / "tiny.json").read_text())["cases"]["llama-wikidoc"]

    def entry(v: float) -> dict:
        e = json.loads(json.dumps(template))
        e["metrics"]["bert_f1"] = v
        return e

    return {"schema_version": 2, "profile": "nightly", "source": source, "cases": {c: entry(v) for c, v in cases.items()}}


def test_merge_nightly_merges_per_job_recordings(tmp_path):
    art = tmp_path / "artifacts"
    for job, cases in (("gemma", {"gemma-wikidoc": 0.5}), ("llama", {"llama-wikidoc": 0.6, "llama-mental_health": 0.7})):
        d = art / f"medqa-nightly-{job}" / "recorded-baselines"
        d.mkdir(parents=True)
        # each job's file: the committed nightly.json (empty) plus its own cases
        (d / "nightly.json").write_text(json.dumps(baseline(cases, f"recorded {job}")))
        (d / "paper-1x-nvidia-h100.json").write_text(json.dumps(baseline({f"{job}-healthcaremagic": 0.4})))
    out = tmp_path / "merged"
    env = {**os.environ, "MEDQA_PYTHON": sys.executable}
    res = subprocess.run(["bash", str(MERGE), "--baselines", str(art), str(out)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    nightly = json.loads((out / "nightly.json").read_text())
    assert set(nightly["cases"]) == {"gemma-wikidoc", "llama-wikidoc", "llama-mental_health"}
    assert "recorded gemma" in nightly["source"] and "recorded llama" in nightly["source"]
    paper = json.loads((out / "paper-1x-nvidia-h100.json").read_text())  # a new hardware-class file
    assert set(paper["cases"]) == {"gemma-healthcaremagic", "llama-healthcaremagic"}
    assert "nightly.json: 3 case(s) recorded" in (out / "recorded.txt").read_text()

    # two jobs that recorded the same case differently: refused
    (art / "medqa-nightly-gemma" / "recorded-baselines" / "nightly.json").write_text(
        json.dumps(baseline({"gemma-wikidoc": 0.5, "llama-wikidoc": 0.9})))
    res = subprocess.run(["bash", str(MERGE), "--baselines", str(art), str(tmp_path / "m2")], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 1 and "llama-wikidoc recorded differently" in res.stderr
    # nothing recorded: refused
    (tmp_path / "none").mkdir()
    res = subprocess.run(["bash", str(MERGE), "--baselines", str(tmp_path / "none"), str(tmp_path / "m3")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "nothing was recorded" in res.stderr


def test_merge_job_needs_the_matrix_and_runs_the_script(wf):
    merge = wf["jobs"]["merge"]
    needs = merge["needs"] if isinstance(merge["needs"], list) else [merge["needs"]]
    assert "gpu" in needs and "always()" in merge["if"]
    dl = [st for st in steps(merge) if str(st.get("uses", "")).startswith("actions/download-artifact")]
    assert dl and dl[0]["with"]["path"] == "artifacts"
    script = [st["run"] for st in steps(merge) if "merge_nightly.sh artifacts" in st.get("run", "")]
    assert script and re.search(r"scripts/merge_nightly\.sh artifacts \S+ merged", script[0])
    uses = [str(st.get("uses", "")) for st in steps(merge)]
    assert any(u.startswith("actions/cache/restore") for u in uses) and any(u.startswith("actions/cache/save") for u in uses)
