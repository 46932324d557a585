"""medqa-bench core: the pipeline behind the pytest benchmark cases.

Subpackages follow the pipeline order: data (load, clean, split) -> model (bases, prompts,
generation) -> train -> metrics -> gate and baselines -> results (records, summary, report,
history), with cache/resources/paths/errors as shared helpers (docs/development.md, "Where things are").
"""
from __future__ import annotations

__version__ = "0.1.0"
