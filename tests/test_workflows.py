"""The nightly GPU workflow, parsed (issue 13, item 10): no expression pasted into a script
(dispatch inputs reach scripts through `env:`), a concurrency group, a preflight that fails
without a CUDA device, the nightly/weekly profile split, artifacts per family, and a merge job
after the matrix that runs scripts/merge_nightly.sh and opens at most one issue."""
from __future__ import annotations

import re
import subprocess
import textwrap

import pytest
from helpers import REPO_ROOT

from medqa_core.profile import load_profile

yaml = pytest.importorskip("yaml")

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "nightly-gpu.yml"


@pytest.fixture(scope="module")
def wf() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def all_runs(wf: dict) -> list[tuple[str, str, str]]:
    return [(jname, st.get("name", "?"), st["run"]) for jname, job in wf["jobs"].items() for st in steps(job) if "run" in st]


def test_no_expression_inside_a_run_script(wf):
    runs = all_runs(wf)
    assert runs
    for job, name, script in runs:
        assert "${{ github.event.inputs" not in script and "${{ inputs." not in script, (job, name)
        assert "${{" not in script, f"{job} / {name}: pass values through env:, not ${{{{ }}}} in the script"
    # the inputs do reach the jobs, through env
    env_text = yaml.safe_dump({j: wf["jobs"][j].get("env", {}) for j in wf["jobs"]})
    assert "inputs.select" in env_text and "inputs.record" in env_text


def test_detector_sees_a_pasted_input():
    """The check above can fail: the old workflow pasted the dispatch input into its script."""
    bad = yaml.safe_load('jobs:\n  a:\n    steps:\n      - run: sel="${{ github.event.inputs.select }}"\n')
    assert any("${{ github.event.inputs" in r for _, _, r in all_runs(bad))


def test_concurrency_group(wf):
    conc = wf.get("concurrency")
    assert isinstance(conc, dict) and conc.get("group") and conc.get("cancel-in-progress") is False


def test_nightly_and_weekly_schedules(wf):
    crons = [s["cron"] for s in wf["on"]["schedule"]]
    assert len(crons) == 2
    nightly = [c for c in crons if c.split()[4] != "6"]
    weekly = [c for c in crons if c.split()[4] == "6"]
    assert nightly and weekly
    pick = next(st for st in steps(wf["jobs"]["plan"]) if st.get("id") == "pick")
    # the weekly cron string selects the paper profile; anything else scheduled runs nightly
    assert f'"$SCHEDULE" = "{weekly[0]}" ]; then profile=paper' in pick["run"]
    assert "profile=nightly" in pick["run"]
    assert set(wf["on"]["workflow_dispatch"]["inputs"]["profile"]["options"]) == {"nightly", "paper"}


def test_gpu_matrix_preflight_cache_and_artifact(wf):
    gpu = wf["jobs"]["gpu"]
    names = [st.get("name", "") for st in steps(gpu)]
    pre = [i for i, n in enumerate(names) if n.lower().startswith("preflight")]
    assert pre, "no preflight step"
    pre_run = steps(gpu)[pre[0]]["run"]
    assert "nvidia-smi" in pre_run and "exit 1" in pre_run
    run_idx = next(i for i, st in enumerate(steps(gpu)) if "pytest" in st.get("run", ""))
    assert pre[0] < run_idx
    assert wf["env"]["HF_HOME"].startswith(wf["env"]["MEDQA_CACHE_DIR"] + "/")
    uploads = [st for st in steps(gpu) if str(st.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"].startswith("results") and uploads[0].get("if") == "always()"
    assert "matrix.model" in uploads[0]["with"]["name"]
    # an install failure, a crash or a case in error is classified as infra, not as regressed
    classify = next(st for st in steps(gpu) if "job-status" in st.get("run", "") and "infra" in st.get("run", ""))
    assert classify.get("if") == "always()" and '"error"' in classify["run"]


def test_merge_job_needs_the_matrix_and_runs_the_script(wf):
    merge = wf["jobs"]["merge"]
    needs = merge["needs"] if isinstance(merge["needs"], list) else [merge["needs"]]
    assert "gpu" in needs and "always()" in merge["if"]
    dl = [st for st in steps(merge) if str(st.get("uses", "")).startswith("actions/download-artifact")]
    assert dl and dl[0]["with"]["path"] == "artifacts"
    script = [st["run"] for st in steps(merge) if "merge_nightly.sh" in st.get("run", "")]
    assert script and re.search(r"scripts/merge_nightly\.sh artifacts \S+ merged", script[0])
    uses = [str(st.get("uses", "")) for st in steps(merge)]
    assert any(u.startswith("actions/cache/restore") for u in uses) and any(u.startswith("actions/cache/save") for u in uses)
    issue = next(st for st in steps(merge) if "gh issue" in st.get("run", ""))
    assert "command -v gh" in issue["run"] and "merged/issue.md" in issue["run"]
    assert "regressed" in issue["if"]
    assert issue["run"].count("gh issue create") == 1  # one issue for the night, updated on a rerun


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
