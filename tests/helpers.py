"""Small helpers shared by the unit tests (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# The smallest valid profile: one tiny model, one dataset.
MINIMAL_PROFILE = """\
name = "mine"

[models.llama]
tiny_config = { hidden_size = 8, num_hidden_layers = 1 }

[datasets.d1]
file = "d1.json"
question = "q"
answer = "a"
"""


def write_rows(path: Path, rows: list[dict], fmt: str) -> Path:
    """Write ``rows`` as json (a list), jsonl, csv or parquet."""
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:  # pragma: no cover
        raise AssertionError(fmt)
    return path
