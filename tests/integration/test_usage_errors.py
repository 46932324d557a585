"""Usage errors stop the benchmark at start with one line naming the option or file (issue 12,
item 6): a bad ``--profile``, ``--set``, ``--seeds``, a malformed baseline file and an
unwritable ``--cache-dir`` / ``--results-dir`` used to print 40-90 lines of traceback.

Each case runs the real benchmark module in a subprocess (``--collect-only``: nothing may train
even if the check were missing) and asserts pytest's usage-error exit code, the ``ERROR:`` line
and the absence of any traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _pytest(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for k in list(env):
        if k.startswith("MEDQA_"):  # the caller's MEDQA_* must not decide these runs
            del env[k]
    opts = {"--cache-dir": str(tmp_path / "cache"), "--results-dir": str(tmp_path / "results")}
    for i, a in enumerate(args):
        if a in opts and i + 1 < len(args):
            opts[a] = args[i + 1]
    rest = [a for i, a in enumerate(args) if a not in opts and (i == 0 or args[i - 1] not in opts)]
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_medqa.py", "-p", "no:cacheprovider", "--collect-only",
           "-q", "-k", "llama-wikidoc", "--history", "none", *[x for kv in opts.items() for x in kv], *rest]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return res.returncode, res.stdout + res.stderr


def _one_line(rc: int, out: str, *names: str) -> str:
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "raise " not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("ERROR: "), out
    for name in names:
        assert name in lines[0], out
    return lines[0]


def test_unknown_profile(tmp_path):
    line = _one_line(*_pytest(tmp_path, "--profile", "nosuch"), "--profile", "nosuch")
    assert "tiny" in line  # the known profiles are listed


def test_malformed_profile_file(tmp_path):
    prof = tmp_path / "broken.toml"
    prof.write_text('name = "x"\n[train\nsteps = 3\n')
    _one_line(*_pytest(tmp_path, "--profile", str(prof)), str(prof))


@pytest.mark.parametrize("value, fragment", [
    ("train.steps=abc", "train.steps=abc"),  # not TOML
    ("nodot", "nodot"),  # no SECTION.KEY
    ("train.stpes=5", "stpes"),  # unknown key
    ('train.steps="many"', "integer"),  # wrong type
])
def test_bad_set_value(tmp_path, value, fragment):
    _one_line(*_pytest(tmp_path, "--set", value), "--set", fragment)


@pytest.mark.parametrize("value", ["x", "0", "3-1", "1,1"])
def test_bad_seeds_value(tmp_path, value):
    _one_line(*_pytest(tmp_path, "--seeds", value), "--seeds", repr(value))


@pytest.mark.parametrize("content, fragment", [
    ('{"schema_version": 2, "cases": [', "invalid JSON"),
    ('{"schema_version": 99, "cases": {}}', "schema_version"),
    ('{"schema_version": 2, "cases": {"llama-wikidoc": {"metrics": {"bert_p": "high"}}}}', "cases.llama-wikidoc"),
])
def test_malformed_baseline_file(tmp_path, content, fragment):
    base = tmp_path / "base.json"
    base.write_text(content)
    _one_line(*_pytest(tmp_path, "--baseline", str(base)), str(base), fragment)


def test_undecodable_baseline_file(tmp_path):
    base = tmp_path / "base.json"
    base.write_bytes(b"\xff\xfe\x00garbage\x80")
    _one_line(*_pytest(tmp_path, "--baseline", str(base)), str(base))


def test_baseline_is_a_directory(tmp_path):
    _one_line(*_pytest(tmp_path, "--baseline", str(tmp_path)), str(tmp_path), "directory")


def test_malformed_baseline_while_recording(tmp_path):
    base = tmp_path / "base.json"
    base.write_text("[1, 2")
    _one_line(*_pytest(tmp_path, "--baseline", str(base), "--update-baselines"), str(base))


@pytest.mark.parametrize("opt", ["--cache-dir", "--results-dir"])
def test_unwritable_directory(tmp_path, opt):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a path inside a regular file: unwritable even for root
    _one_line(*_pytest(tmp_path, opt, str(blocker / "sub")), opt, str(blocker / "sub"))


def test_good_options_still_collect(tmp_path):
    rc, out = _pytest(tmp_path, "--seeds", "0,101-102", "--set", "train.steps=7")
    assert rc == 0, out
    assert "test_case[llama-wikidoc]" in out
