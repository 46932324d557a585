"""Baseline files: read, validate, write (atomically), and compare a case against its baseline.

Schema (``schema_version`` 1)::

    {"schema_version": 1, "profile": "tiny", "source": "...", "provenance": {...},
     "cases": {"mistral-wikidoc": {
         "metrics": {"bert_p": .., "bert_r": .., "bert_f1": .., "cosine": .., "use_p": .., "use_r": .., "use_f1": ..},
         "base_metrics": {...},                      # optional: the base model without adapter
         "resources": {"train_seconds": .., "peak_mem_mib": .., "tokens_per_s": .., "device": "cpu"},  # optional
         "per_example": {"ids": [...], "bert_f1": [...], ...}}}}                                       # optional
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BaselineError
from .metrics import METRICS
from .specs import GateConfig

SCHEMA_VERSION = 1
DEFAULT_TOLERANCE = 0.02


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate(data: Any, path: Path | str) -> dict[str, Any]:
    """Check the schema; raise :class:`BaselineError` naming the file and the offending key."""
    if not isinstance(data, dict):
        raise BaselineError(f"{path}: top level must be an object, got {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BaselineError(f"{path}: schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    cases = data.get("cases")
    if not isinstance(cases, dict):
        raise BaselineError(f"{path}: 'cases' must be an object mapping case ids to results")
    for cid, case in cases.items():
        where = f"{path}: cases.{cid}"
        if not isinstance(case, dict) or not isinstance(case.get("metrics"), dict):
            raise BaselineError(f"{where}: needs a 'metrics' object")
        for m in METRICS:
            if not _num(case["metrics"].get(m)):
                raise BaselineError(f"{where}.metrics.{m}: missing or not a finite number")
        for section in ("resources", "per_example", "base_metrics"):
            if section in case and not isinstance(case[section], dict):
                raise BaselineError(f"{where}.{section}: must be an object, got {type(case[section]).__name__}")
        for k, v in case.get("resources", {}).items():
            if k != "device" and not _num(v):
                raise BaselineError(f"{where}.resources.{k}: not a finite number")
        per = case.get("per_example")
        if per is not None:
            ids = per.get("ids")
            if not isinstance(ids, list):
                raise BaselineError(f"{where}.per_example.ids: must be a list")
            for m, vals in per.items():
                if m != "ids" and (not isinstance(vals, list) or len(vals) != len(ids) or not all(map(_num, vals))):
                    raise BaselineError(f"{where}.per_example.{m}: must be {len(ids)} finite numbers")
    return data


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BaselineError(f"{path}: baseline file not found; record one with --update-baselines")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}; restore it from git") from exc
    return validate(data, path)


def write(path: Path, data: dict[str, Any]) -> None:
    """Validate, then write atomically (temp file + rename): a crash never leaves half a file."""
    validate(data, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        # mkstemp creates 0600; keep the old file's mode, or the umask default for a new one.
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def paired_bootstrap_ci(
    current: np.ndarray, baseline: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``current - baseline`` over paired examples and its percentile bootstrap CI."""
    a, b = np.asarray(current, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap_ci: shapes differ {a.shape} vs {b.shape}; the examples must be paired")
    return bootstrap_ci(a - b, n_boot, alpha, seed)


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap CI (resampling examples with replacement)."""
    d = np.asarray(values, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("bootstrap needs a non-empty 1-d array of per-example values")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # Resample means lie within [min, max] of the data, but quantile interpolation can step a
    # rounding error outside the sample mean for constant data: clamp so lo <= mean <= hi.
    mean = float(d.mean())
    return mean, min(float(lo), mean), max(float(hi), mean)


@dataclass
class Check:
    name: str
    value: float
    baseline: float
    limit: float
    passed: bool
    detail: str = ""
    basis: str = "threshold"  # paired | run-ci | threshold | ratio
    ci: tuple[float, float] | None = None  # 95% CI of the paired difference (paired) or of the run's mean (run-ci)
    improved: bool = False


@dataclass
class Verdict:
    case_id: str
    status: str  # pass | regression | improvement | no-baseline
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def explain(self) -> str:
        if self.status == "no-baseline":
            return f"{self.case_id}: no baseline entry"
        lines = [f"{self.case_id}: {self.status}"]
        for c in self.failures or self.checks:
            mark = "ok " if c.passed else "FAIL"
            lines.append(f"  [{mark}] {c.name}: {c.value:.4f} vs baseline {c.baseline:.4f} (limit {c.limit:.4f}) {c.detail}".rstrip())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "explain": self.explain(), "checks": [asdict(c) for c in self.checks]}


def judge_metric(
    name: str, value: float, baseline: float, min_effect: float,
    current_per: list[float] | None = None, baseline_per: list[float] | None = None,
) -> Check:
    """One metric's verdict, telling a real drop from noise.

    * paired (both sides have per-example scores on the same examples): a regression needs the
      95% bootstrap CI of the mean paired difference to exclude zero *and* the mean drop to
      exceed ``min_effect``; an improvement mirrors it.
    * run-ci (only this run has per-example scores, e.g. against published aggregates): the
      whole CI of this run's mean must lie below ``baseline - min_effect``.
    * threshold (no per-example scores anywhere): ``value < baseline - min_effect``.
    """
    limit = baseline - min_effect
    if current_per is not None and baseline_per is not None:
        mean, lo, hi = paired_bootstrap_ci(np.asarray(current_per), np.asarray(baseline_per))
        regressed = hi < 0 and mean < -min_effect
        improved = lo > 0 and mean > min_effect
        detail = f"paired diff {mean:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}], min effect {min_effect:g}"
        return Check(name, value, baseline, limit, not regressed, detail, "paired", (lo, hi), improved)
    if current_per is not None:
        mean, lo, hi = bootstrap_ci(np.asarray(current_per))
        regressed = hi < limit
        improved = lo > baseline + min_effect
        detail = f"run mean {mean:.4f} [95% CI {lo:.4f}, {hi:.4f}] vs limit"
        return Check(name, value, baseline, limit, not regressed, detail, "run-ci", (lo, hi), improved)
    return Check(name, value, baseline, limit, value >= limit, "", "threshold", None, value > baseline + min_effect)


def compare(
    case_id: str,
    metrics: dict[str, float],
    baseline_case: dict[str, Any] | None,
    gate: GateConfig,
    resources: dict[str, Any] | None = None,
    per_example: dict[str, list[float]] | None = None,
) -> Verdict:
    """Judge a case: each metric with :func:`judge_metric` (its tolerance is the minimum effect);
    training time and peak memory against the baseline times a factor (same device only)."""
    if baseline_case is None:
        return Verdict(case_id, "no-baseline")
    checks: list[Check] = []
    base_per = baseline_case.get("per_example") or {}
    paired = bool(per_example and base_per.get("ids") and per_example.get("ids") == base_per["ids"])
    for m in METRICS:
        tol = gate.metric_tolerance.get(m, DEFAULT_TOLERANCE)
        cur = per_example.get(m) if per_example and per_example.get("ids") else None
        ref = base_per.get(m) if paired else None
        checks.append(judge_metric(m, float(metrics[m]), float(baseline_case["metrics"][m]), tol, cur, ref))
    base_res = baseline_case.get("resources") or {}
    if resources and base_res and base_res.get("device") == resources.get("device"):
        for key, factor, slack in (("train_seconds", gate.time_factor, 0.0),
                                   ("peak_mem_mib", gate.memory_factor, gate.memory_slack_mib)):
            if key in base_res and key in resources:
                b = float(base_res[key])
                v = float(resources[key])
                limit = max(b * factor, b + slack)
                why = f"(x{factor}" + (f" or +{slack:g}" if slack else "") + " allowed)"
                checks.append(Check(key, v, b, limit, v <= limit, why, "ratio"))
    if any(not c.passed for c in checks):
        status = "regression"
    else:
        status = "improvement" if any(c.improved for c in checks) else "pass"
    return Verdict(case_id, status, checks)


def resource_baseline(
    case_id: str, model: str, main: dict[str, Any] | None, hw: dict[str, Any] | None, hw_class: str
) -> dict[str, Any] | None:
    """Which recorded training time/memory a case is gated against, in order of preference:
    the hardware-class file's entry for the case; the main baseline's per-model published
    training minutes when this machine is of the class they were measured on (paper.json:
    2x Tesla T4); the main baseline case's own resources. None = resources are not gated."""
    if hw and case_id in hw.get("cases", {}):
        return hw["cases"][case_id].get("resources")
    if main:
        published = main.get("models", {}).get(model, {})
        if "training_minutes" in published and main.get("hardware", {}).get("class") == hw_class:
            return {"train_seconds": 60.0 * float(published["training_minutes"]), "device": "cuda"}
        case = main.get("cases", {}).get(case_id)
        if case:
            return case.get("resources")
    return None


def record_cases(path: Path, profile_name: str, records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Merge the records of passing cases into the baseline file at ``path`` (other cases kept).

    Returns (recorded case ids, skipped case ids). Called only under ``--update-baselines``.
    """
    data = load(path) if path.is_file() else {"schema_version": SCHEMA_VERSION, "profile": profile_name, "cases": {}}
    written, skipped = [], []
    for rec in records:
        if rec.get("outcome") != "passed":
            skipped.append(rec["case_id"])
            continue
        data["cases"][rec["case_id"]] = {
            "metrics": rec["metrics"],
            "base_metrics": rec["base_metrics"],
            "resources": rec["resources"],
            "per_example": rec["per_example"],
            "recorded": {k: rec["provenance"][k] for k in ("git_sha", "versions", "hardware", "profile_hash")},
        }
        written.append(rec["case_id"])
    data["source"] = f"recorded by `pytest benchmarks/ --profile {profile_name} --update-baselines`"
    if written:
        write(path, data)
    return written, sorted(skipped)
