"""The README's promises hold: its two commands are the ones CI runs, it stays short, and every
relative link in README.md and docs/*.md points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_the_install_and_test_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    head = readme.split("\n## ", 1)[0]
    blocks = _blocks(head)
    assert len(blocks) == 2, "README must start with exactly two commands"
    install_run, test = blocks
    assert "pip install -c constraints/cpu.txt -e '.[dev]'" in install_run and "pytest benchmarks/" in install_run
    ci = (REPO / ".ci" / "run").read_text()
    assert test.startswith(".venv/bin/pytest")
    assert re.search(rf"^{re.escape(test)}$", ci, flags=re.M), f"{test!r} is not run verbatim by .ci/run"
    install = install_run.split("&&")[1].strip()
    assert install in ci.replace(" -q ", " "), f"{install!r} is not the install command of .ci/run"


def test_readme_is_short():
    assert len((REPO / "README.md").read_bytes()) < 6 * 1024


def test_every_relative_link_resolves():
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not missing, missing
