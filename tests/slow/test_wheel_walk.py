"""The product as a user gets it (slow, run by .ci/run): the wheel built from this tree,
installed non-editable into a fresh venv by the README's "Use it in your own project" lines,
then used from an empty git repository holding one CSV, with this source tree hidden (a
private tmpfs mounted over it where the machine allows, so nothing can be read from it).

Every step's exit code and output are checked: ``medqa-bench init``, recording the baseline,
a gated run that passes, a planted drop (``--set train.steps=50``) that fails on a score,
``report``, ``history``, ``trend``, ``compare latest latest~1`` and ``params`` with no options,
and that everything a run writes lands inside the user's repository. A second repository that
never mentions medqa-bench collects exactly what it collects without the plugin, with no
warning and no torch import.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
PLACEHOLDER = "/path/to/medqa-bench"


def readme_lines() -> list[str]:
    """The two command lines of the README's "Use it in your own project" block."""
    text = README.read_text()
    section = text.split("## Use it in your own project", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: no bash block under 'Use it in your own project'"
    lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    return lines


def _can_hide_source() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {shlex.quote(str(REPO_ROOT))}"],
                           capture_output=True)
    return probe.returncode == 0


class User:
    """Runs shell lines as a user would: in ``cwd``, with the venv first on PATH, no PYTHONPATH,
    and (where possible) this source tree replaced by an empty tmpfs."""

    def __init__(self, venv: Path, home: Path, hide: bool) -> None:
        self.venv, self.hide = venv, hide
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MEDQA_", "PYTEST_", "VIRTUAL_ENV", "PYTHON")) and k != "CI"}
        self.env.update(PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}", HOME=str(home),
                        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                        MEDQA_THREADS="1")

    def run(self, line: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
        cmd = ["bash", "-c", line]
        if self.hide:
            cmd = ["unshare", "-m", "bash", "-c", f"mount -t tmpfs none {shlex.quote(str(REPO_ROOT))} && {line}"]
        return subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)


def ok(res: subprocess.CompletedProcess[str], code: int = 0) -> str:
    out = res.stdout + res.stderr
    assert res.returncode == code, f"exit {res.returncode} (wanted {code}):\n{out[-4000:]}"
    return out


def files_under(root: Path, skip: Path | None = None) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and (skip is None or not p.is_relative_to(skip))}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[User, Path]:
    """The wheel and a fresh venv installed by the README's first line (the placeholder path
    replaced by this tree's constraints file and the built wheel)."""
    root = tmp_path_factory.mktemp("user")
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO_ROOT)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("medqa_bench-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    install = readme_lines()[0]
    install = install.replace(f"'{PLACEHOLDER}[small]'", f"'{wheel}[small]'").replace(PLACEHOLDER, str(REPO_ROOT))
    assert PLACEHOLDER not in install
    user = User(root / "venv", root / "home", hide=False)  # pip reads the constraints file from this tree
    (root / "home").mkdir()
    ok(user.run(install, root, timeout=1800))
    user.hide = _can_hide_source()
    where = ok(user.run("python -c 'import medqa_core, sys; print(medqa_core.__file__)'", root))
    assert str(root / "venv") in where and str(REPO_ROOT) not in where, where
    return user, root


def test_readme_path_in_an_empty_repository(installed: tuple[User, Path]) -> None:
    user, root = installed
    repo = root / "clinic"
    (repo / "data").mkdir(parents=True)
    # a CSV with the README's column names (synthetic rows the tiny stand-in can learn)
    with (REPO_ROOT / "fixtures" / "data" / "ai_medical_chatbot.csv").open(newline="") as f, \
            (repo / "data" / "questions.csv").open("w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["question", "answer"])
        for row in csv.DictReader(f):
            w.writerow([row["Description"], row["Doctor"]])
    ok(user.run("git init -q && git add -A && git -c user.email=u@x -c user.name=u commit -qm data", repo))
    outside_before = files_under(root, skip=repo)

    init, record, gate = (part.strip() for part in readme_lines()[1].split("&&"))
    # the tiny stand-in and K = 2 keep this test to minutes; the rest is the README's line
    out = ok(user.run(f"{init} --model tiny-llama --set gate.baseline_seeds=2", repo))
    assert "wrote " in out and "questions.toml" in out
    profile = (repo / "questions.toml").read_text()
    assert str(root) not in profile and 'hub_id = "medqa:fixtures/models/llama"' in profile
    assert (repo / "pyproject.toml").read_text().count('profile = "questions.toml"') == 1
    ok(user.run("git add -A && git -c user.email=u@x -c user.name=u commit -qm medqa", repo))

    out = ok(user.run(record, repo))
    assert "recorded 1 case(s)" in out and (repo / "baselines" / "questions.json").is_file()
    ok(user.run("git add baselines && git -c user.email=u@x -c user.name=u commit -qm baseline", repo))
    head = ok(user.run("git rev-parse HEAD", repo)).strip()  # the records carry the user's commit
    out = ok(user.run(gate, repo))
    assert "1 passed" in out and re.search(r"questions\s+tiny_llama .* pass\b", out), out[-3000:]
    out = ok(user.run(f"{gate} --set train.steps=50", repo), code=1)
    assert re.search(r"\[FAIL\] (bert_f1|use_f1|bert_p|bert_r)\b.*down", out), out[-3000:]

    runs = sorted((repo / ".medqa-results").iterdir())
    record_file = next(p for p in runs[-2].glob("*.json") if p.name != "aggregates.json")
    assert json.loads(record_file.read_text())["provenance"]["git_sha"].startswith(head)

    out = ok(user.run("medqa-bench report latest", repo))
    assert (runs[-1] / "report.html").is_file() and (runs[-1] / "report.md").is_file(), out
    out = ok(user.run("medqa-bench history", repo))
    assert len([ln for ln in out.splitlines() if ln.startswith("#")]) == 3 and "questions" in out
    res = user.run("medqa-bench trend", repo)
    assert res.returncode in (0, 1) and "Traceback" not in res.stderr and "questions" in res.stdout + res.stderr
    out = ok(user.run("medqa-bench compare latest latest~1", repo), code=1)  # the passing run against the plant
    assert "train_steps" in out and "Traceback" not in out
    out = ok(user.run("medqa-bench params", repo))
    assert "tiny_llama" in out

    # everything the runs wrote is inside the repository (cache, results, baseline); nothing
    # beside it, and the outputs are ignored by git
    assert files_under(root, skip=repo) - outside_before <= {p for p in files_under(root, skip=repo)
                                                             if p.startswith(("home/", "venv/"))}
    status = ok(user.run("git status --porcelain", repo))
    assert status.strip() == "", status


def test_a_repository_that_never_mentions_medqa_is_untouched(installed: tuple[User, Path]) -> None:
    user, root = installed
    repo = root / "other"
    repo.mkdir()
    (repo / "test_plain.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    with_plugin = user.run("python -X importtime -m pytest --collect-only -q -p no:cacheprovider", repo)
    without = user.run("python -m pytest --collect-only -q -p no:cacheprovider -p no:medqa_core.pytest_plugin", repo)
    out = ok(with_plugin)
    ok(without)
    def items(out: str) -> str:  # the collected items and the count, not the time taken
        return re.sub(r" in [0-9.]+s", "", out)

    assert items(with_plugin.stdout) == items(without.stdout)
    assert "warning" not in with_plugin.stdout.lower()
    imported = [ln for ln in with_plugin.stderr.splitlines() if ln.startswith("import time:")]
    # the plugin was loaded (pytest imports an entry-point plugin through its assertion rewriter,
    # which importtime does not list; the package modules it imports are listed)...
    assert any(ln.rstrip().endswith("| medqa_core.paths") for ln in imported)
    assert not any(ln.rstrip().endswith(("| torch", "| transformers")) for ln in imported), "torch imported"
    # ...and wrote nothing (pytest's own __pycache__ aside)
    assert sorted(p.name for p in repo.iterdir() if p.name != "__pycache__") == ["test_plain.py"], out
