"""docs/reliability.md names the test behind each promise: every ``tests/<file>.py::<test>`` it
cites must exist, so a renamed or deleted test cannot leave a promise unbacked."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def test_every_cited_test_exists():
    doc = (REPO / "docs" / "reliability.md").read_text()
    cites = CITE.findall(doc)
    assert len(cites) > 30
    missing = []
    for path, name in cites:
        f = REPO / path
        if not f.is_file():
            missing.append(path)
        elif name and not re.search(rf"^def {name}\(", f.read_text(), flags=re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing
