"""Every command the docs show still exists as shown. The commands come from README.md,
CONTRIBUTING.md and docs/*.md, in code blocks and inline code: ``medqa-bench SUB ...``,
``pytest ...`` and ``python scripts/X.py ...``.

The check is dry: nothing is run. ``medqa-bench``: the subcommand exists and takes every
``--option`` shown (from its ``--help``). ``pytest``: every ``--option`` is one pytest, its
plugins or medqa-bench's plugin defines (from ``pytest --help`` in this repository), and every
path under benchmarks/, tests/ or scripts/ exists. ``python scripts/X.py``: the script exists and
declares every ``--option`` shown (its ``add_argument`` calls)."""
from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from medqa_core.cli import main

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
PROGRAM = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?(?:python3? -m (?=pytest))?(medqa-bench|pytest|python3? scripts/\S+\.py)(?=\s|$)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:benchmarks|tests|scripts)/[\w./-]*)")


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for each command line the docs show: one per line of a code block, one per
    inline code span, split at ``&&``, ``|`` and ``;``, a trailing ``# comment`` dropped."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        spans = [ln for m in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S) for ln in m.group(1).splitlines()]
        spans += [m.group(1) for m in re.finditer(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))]
        for span in spans:
            for part in re.split(r"\s*(?:&&|\|\||;|(?<!\\)\|)\s*", span.replace("\\|", "|")):
                cmd = re.sub(r"\s+#\s.*$", "", part).strip()
                if PROGRAM.match(cmd):
                    found.append((doc.relative_to(REPO_ROOT).as_posix(), cmd))
    return found


@cache
def cli_options(sub: str) -> frozenset[str] | None:
    """The long options of ``medqa-bench SUB`` (its --help), or None when there is no such subcommand."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as ended:
        main([sub, "--help"])
    return frozenset(OPTION.findall(out.getvalue())) if ended.value.code == 0 else None


@cache
def pytest_options() -> frozenset[str]:
    res = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return frozenset(OPTION.findall(res.stdout))


def script_options(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", path.read_text(encoding="utf-8")))


def problems(where: str, cmd: str) -> list[str]:
    m = PROGRAM.match(cmd)
    assert m is not None
    program, rest = m.group(1), cmd[m.end():]
    shown = set(OPTION.findall(rest)) - {"--help"}
    out: list[str] = []
    if program == "medqa-bench":
        words = [w for w in rest.split() if not w.startswith(("-", "[", "<"))]
        if not words:
            return []  # the program named alone
        known = cli_options(words[0])
        if known is None:
            return [f"{where}: `{cmd}`: no subcommand {words[0]!r}"]
        out += [f"{where}: `{cmd}`: medqa-bench {words[0]} has no {o}" for o in sorted(shown - known)]
    elif program == "pytest":
        out += [f"{where}: `{cmd}`: pytest has no {o}" for o in sorted(shown - pytest_options())]
        for p in REPO_PATH.findall(rest):
            target = p.split("::")[0].rstrip(".")
            if not (REPO_ROOT / target).exists():
                out.append(f"{where}: `{cmd}`: {target} does not exist")
    else:
        script = REPO_ROOT / program.split()[-1]
        if not script.is_file():
            return [f"{where}: `{cmd}`: {script.relative_to(REPO_ROOT)} does not exist"]
        out += [f"{where}: `{cmd}`: {script.name} declares no {o}" for o in sorted(shown - script_options(script))]
    return out


def test_the_docs_show_commands_of_each_kind():
    kinds = {PROGRAM.match(c).group(1).split()[-1].split("/")[0] for _, c in doc_commands()}  # type: ignore[union-attr]
    assert {"medqa-bench", "pytest", "scripts"} <= kinds, kinds
    assert len(doc_commands()) > 60


def test_every_command_in_the_docs_exists_as_shown():
    assert [p for where, cmd in doc_commands() for p in problems(where, cmd)] == []


def test_the_check_finds_a_stale_command():
    """The same check, on commands that went stale: each is reported."""
    assert problems("x.md", "medqa-bench reportz latest")
    assert problems("x.md", "medqa-bench report latest --no-such-option")
    assert problems("x.md", "pytest benchmarks/ --update-baseline")  # the option is --update-baselines
    assert problems("x.md", "pytest tests/test_gone.py -q")
    assert problems("x.md", "python scripts/plants.py --no-such-option")
    assert problems("x.md", "python scripts/no_such_script.py")
    assert problems("x.md", "medqa-bench report latest --out DIR") == []
    assert problems("x.md", "pytest benchmarks/ --profile small -m slow -k wikidoc") == []
