"""medqa-bench core: the pipeline behind the pytest benchmark cases.

Modules follow the pipeline order: specs -> datasets -> prompts -> models -> training ->
generation -> metrics -> baselines -> report, with cache/resources/errors as shared helpers.
"""
from __future__ import annotations

__version__ = "0.1.0"
