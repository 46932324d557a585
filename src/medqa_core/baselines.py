"""Baseline files: the format only (read, validate, write atomically, record). Judging is gate/.

Schema 2 (recorded baselines, ``--update-baselines [--seeds K]``)::

    {"schema_version": 2, "profile": "tiny", "source": "...",
     "cases": {"mistral-wikidoc": {
         "metrics": {"bert_p": .., ..., "answer_words": ..},   # mean over the K runs
         "spread": {"bert_p": .., ...},                          # between-run standard deviation
         "runs": [{"seed": 0, "metrics": {...}, "per_example": {"ids": [...], "bert_f1": [...], ...},
                   "tokens_seen": .., "resources": {...}}, ...],  # K independent training runs
         "base_metrics": {...}, "controls": {"no_question": {...}, ...},
         "invariants": {"train_steps": .., "trainable_params": .., "test_ids": .., ...},
         "identity": {"data": .., "test_ids": .., "profile": .., "scorer": .., "hardware_class": ..},
         "resources": {"train_seconds": .., "peak_mem_mib": .., "train_work": .., "device": "cpu"},
         "recorded": {"git_sha": .., "versions": {...}, "hardware": {...}}}}}

Schema 1 (aggregates only, e.g. ``paper.json``, the study's Table 2) is read as it is: no runs,
so its gate cannot see training noise (docs/regression-gating.md).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from .errors import BaselineError
from .metrics import METRICS
from .results.record import BaselineCase, BaselineFile, CaseRecord, Invariants, Resources, RunRecord

#: resource fields that are text, not measurements: the device, and the CPU's identity
#: (resources.cpu_identity: time is judged like for like only)
TEXT_RESOURCES = ("device", "cpu")
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


#: float rounding an encoder's cosine may carry past +/-1
_EPS = 1e-6
#: no time (s), memory (MiB), throughput or mean answer length reaches this: a larger number in a
#: baseline is a typo or an edit, and its factor limit (x time_factor) could overflow
MAX_MAGNITUDE = 1e12


def value_range(name: str, bert_rescaled: bool = False) -> tuple[float | None, float | None, str]:
    """(low, high, what it is) of a number a baseline records under ``name``: a score, a margin
    (``margin:<control>:<metric>``, tuned minus control), ``answer_words``, ``degenerate`` or a
    resource key. Scores are cosine similarities (BERTScore, USE): [-1, 1]; bert-score's
    baseline rescaling (``bertscore_rescale``) maps them below -1, so rescaled BERTScore has no
    lower bound. A name the registry does not know: any finite number."""
    from .metrics.registry import MEASURES, RESOURCE_KEYS

    if name.startswith("margin:"):
        lo, hi, what = value_range(name.rsplit(":", 1)[1], bert_rescaled)
        if lo is not None and hi is not None:
            return lo - hi, hi - lo, f"margin of {what}"
        return None, None, f"margin of {what}"
    m = MEASURES.get(name)
    if m is None and name in RESOURCE_KEYS:
        m = next(x for x in MEASURES.values() if x.source[1] == RESOURCE_KEYS[name])
    if m is None:
        if name.endswith(("_seconds", "_work", "_busy", "_mib", "_per_s")):  # resources the registry does not gate
            return 0.0, MAX_MAGNITUDE, "resource"
        return None, None, name
    if m.kind == "score":
        return (None if bert_rescaled and name.startswith("bert_") else -1.0), 1.0, m.label
    if m.kind == "rate":
        return 0.0, 1.0, m.label
    return 0.0, MAX_MAGNITUDE, m.label  # length, resource


def _check_value(v: Any, name: str, where: str, rescaled: bool) -> None:
    if not _num(v):
        raise BaselineError(f"{where}: {v!r} is not a finite number")
    lo, hi, what = value_range(name, rescaled)
    if (lo is not None and v < lo - _EPS) or (hi is not None and v > hi + _EPS):
        span = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
        raise BaselineError(f"{where} = {v!r}: outside {span}, the range of {what}; restore the file from git "
                            "or record it again with --update-baselines")


def _check_values(table: Any, where: str, rescaled: bool, skip: tuple[str, ...] = ()) -> None:
    if table is None:
        return
    if not isinstance(table, dict):
        raise BaselineError(f"{where}: must be an object, got {type(table).__name__}")
    for k, v in table.items():
        if k not in skip:
            _check_value(v, k, f"{where}.{k}", rescaled)


def _check_spread(runs: Sequence[Mapping[str, Any]], section: str, where: str) -> None:
    """The between-run variance of each metric over the runs must be a finite number: it is the
    gate's noise band, and an inf or nan there would switch the check off."""
    names = {k for r in runs for k in (r.get(section) or {})}
    for k in sorted(names):
        y = np.asarray([r[section][k] for r in runs if k in (r.get(section) or {})], dtype=np.float64)
        if y.size < 2:
            continue
        with np.errstate(all="ignore"):
            var = float(np.var(y, ddof=1))
        if not math.isfinite(var):
            raise BaselineError(f"{where}.runs[*].{section}.{k}: the runs' variance is not finite ({var}); "
                                "the values are too large to be real scores")


def _rescaled(case: Mapping[str, Any]) -> bool:
    """Whether the case's BERTScore was rescaled (its recorded scorer invariant says so)."""
    inv = case.get("invariants")
    scorer = inv.get("scorer") if isinstance(inv, dict) else None
    bert = scorer.get("bertscore", "") if isinstance(scorer, dict) else ""
    return isinstance(bert, str) and "|rescale" in bert


def validate(data: Any, path: Path | str) -> BaselineFile:
    """Check the schema; raise :class:`BaselineError` naming the file and the offending key."""
    if not isinstance(data, dict):
        raise BaselineError(f"{path}: top level must be an object, got {type(data).__name__}")
    if data.get("schema_version") not in READABLE_SCHEMAS:
        raise BaselineError(f"{path}: schema_version must be one of {READABLE_SCHEMAS}, got {data.get('schema_version')!r}")
    cases = data.get("cases")
    if not isinstance(cases, dict):
        raise BaselineError(f"{path}: 'cases' must be an object mapping case ids to results")
    models = data.get("models")
    if models is not None:  # published training minutes (paper.json): a time limit is minutes x time_factor
        if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
            raise BaselineError(f"{path}: models must be an object of objects")
        for name, m in models.items():
            if "training_minutes" in m:
                _check_value(m["training_minutes"], "train_seconds", f"{path}: models.{name}.training_minutes", False)
    spec = (data.get("scorer") or {}).get("spec") if isinstance(data.get("scorer"), dict) else None
    file_rescaled = isinstance(spec, dict) and spec.get("bertscore_rescale") is True
    for cid, case in cases.items():
        where = f"{path}: cases.{cid}"
        if not isinstance(case, dict) or not isinstance(case.get("metrics"), dict):
            raise BaselineError(f"{where}: needs a 'metrics' object")
        for m in METRICS:
            if not _num(case["metrics"].get(m)):
                raise BaselineError(f"{where}.metrics.{m}: missing or not a finite number")
        for section in ("resources", "per_example", "base_metrics", "spread", "invariants", "identity", "controls"):
            if section in case and not isinstance(case[section], dict):
                raise BaselineError(f"{where}.{section}: must be an object, got {type(case[section]).__name__}")
        rescaled = file_rescaled or _rescaled(case)
        _check_values(case["metrics"], f"{where}.metrics", rescaled)
        _check_values(case.get("base_metrics"), f"{where}.base_metrics", rescaled)
        for name, ctl in (case.get("controls") or {}).items():
            _check_values(ctl, f"{where}.controls.{name}", rescaled)
        for k, v in (case.get("spread") or {}).items():
            if not (_num(v) and v >= 0):
                raise BaselineError(f"{where}.spread.{k} = {v!r}: must be a finite number >= 0 (a standard deviation)")
        for k, v in case.get("resources", {}).items():
            if k == "cpu" and not isinstance(v, str):
                raise BaselineError(f"{where}.resources.cpu = {v!r}: must be text (the CPU's identity)")
            if k not in TEXT_RESOURCES:
                if not _num(v):
                    raise BaselineError(f"{where}.resources.{k}: not a finite number")
                _check_value(v, k, f"{where}.resources.{k}", rescaled)
        runs = case.get("runs", [])
        if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("metrics"), dict) for r in runs):
            raise BaselineError(f"{where}.runs: must be a list of objects with 'metrics'")
        for i, r in enumerate(runs):
            for m, v in r["metrics"].items():
                if not _num(v):
                    raise BaselineError(f"{where}.runs[{i}].metrics.{m}: not a finite number")
            _check_values(r["metrics"], f"{where}.runs[{i}].metrics", rescaled)
            _check_values(r.get("margins"), f"{where}.runs[{i}].margins", rescaled)
            _check_values(r.get("resources"), f"{where}.runs[{i}].resources", rescaled, skip=TEXT_RESOURCES)
            tokens = r.get("tokens_seen")
            if tokens is not None and not (_num(tokens) and tokens >= 0):
                raise BaselineError(f"{where}.runs[{i}].tokens_seen = {tokens!r}: must be a number >= 0")
            _check_per(r.get("per_example"), f"{where}.runs[{i}]", rescaled)
        _check_spread(runs, "metrics", where)
        _check_spread(runs, "margins", where)
        _check_per(case.get("per_example"), where, rescaled)
    return cast(BaselineFile, data)


def _check_per(per: Any, where: str, rescaled: bool = False) -> None:
        if per is not None:
            ids = per.get("ids") if isinstance(per, dict) else None
            if not isinstance(ids, list):
                raise BaselineError(f"{where}.per_example.ids: must be a list")
            for m, vals in per.items():
                if m != "ids" and (not isinstance(vals, list) or len(vals) != len(ids) or not all(map(_num, vals))):
                    raise BaselineError(f"{where}.per_example.{m}: must be {len(ids)} finite numbers")
                if m != "ids" and vals:
                    lo, hi, _ = value_range(m, rescaled)
                    arr = np.asarray(vals, dtype=np.float64)
                    bad = np.flatnonzero(((arr < lo - _EPS) if lo is not None else False)
                                         | ((arr > hi + _EPS) if hi is not None else False))
                    if bad.size:
                        j = int(bad[0])
                        _check_value(vals[j], m, f"{where}.per_example.{m}[{j}]", rescaled)


def load(path: Path) -> BaselineFile:
    if not path.is_file():
        raise BaselineError(f"{path}: baseline file not found; record one with --update-baselines")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}; restore it from git") from exc
    return validate(data, path)


def write(path: Path, data: Mapping[str, Any]) -> None:
    """Validate, then write atomically (temp file + rename): a crash never leaves half a file.

    A baseline reached through a symlink (a linked file, or this repository's ``baselines/``,
    a link into ``src/medqa_core/shipped/baselines/``) is written through the link: the temp file
    goes beside the real file and replaces it, so the link stays a link and the file it names
    gets the new values."""
    validate(data, path)
    path = Path(os.path.realpath(path))  # every link in the path followed; a dangling one: its target
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


def resource_baseline(
    case_id: str, model: str, main: BaselineFile | None, hw: BaselineFile | None, hw_class: str
) -> Resources | None:
    """Which recorded training time/memory a case is gated against, in order of preference:
    the hardware-class file's entry for the case; the main baseline's per-model published
    training minutes when this machine is of the class they were measured on (paper.json:
    2x Tesla T4); the main baseline case's own resources. None = resources are not gated."""
    res: Resources | None
    if hw and case_id in hw.get("cases", {}):
        res = hw["cases"][case_id].get("resources")
        return res
    if main:
        published = main.get("models", {}).get(model, {})
        if "training_minutes" in published and main.get("hardware", {}).get("class") == hw_class:
            return {"train_seconds": 60.0 * float(published["training_minutes"]), "device": "cuda"}
        case = main.get("cases", {}).get(case_id)
        if case:
            res = case.get("resources")
            return res
    return None


def case_entry(runs: Sequence[RunRecord]) -> BaselineCase:
    """A baseline case from the records of its K runs (each a passing case record's run)."""
    first = runs[0]
    gated = [m for m in first["metrics"] if all(m in r["metrics"] for r in runs)]
    vals = {m: np.asarray([float(r["metrics"][m]) for r in runs]) for m in gated}
    with np.errstate(all="ignore"):  # an overflowing mean or spread is inf here; write()'s validate refuses it
        means = {m: round(float(v.mean()), 6) for m, v in vals.items()}
        spreads = {m: round(float(v.std(ddof=1)), 6) if v.size > 1 else 0.0 for m, v in vals.items()}
    res_keys = [k for k, v in first["resources"].items() if k not in TEXT_RESOURCES and _num(v)
                and all(_num(r["resources"].get(k)) for r in runs)]
    # the device, and which CPU the work was measured on (gate: time judged like for like only)
    text = {k: first["resources"][k] for k in TEXT_RESOURCES if k in first["resources"]}
    return {
        "metrics": means,
        "spread": spreads,
        "runs": [{"seed": r["seed"], "metrics": r["metrics"], "margins": r.get("margins", {}),
                  "per_example": r["per_example"],
                  "tokens_seen": r["invariants"].get("tokens_seen"),
                  "resources": {k: r["resources"][k] for k in res_keys}} for r in runs],
        "base_metrics": first["base_metrics"],
        "controls": {name: c["metrics"] for name, c in first.get("controls", {}).items()},
        "invariants": _seedless(first["invariants"]),
        "identity": first["identity"],
        "resources": {**{k: round(float(np.mean([r["resources"][k] for r in runs])), 3) for k in res_keys},
                      "device": None, **text},
        "recorded": {k: first["provenance"][k] for k in ("git_sha", "versions", "hardware")},
    }


def _seedless(invariants: Invariants) -> Invariants:
    """A run's invariants without ``tokens_seen``: it depends on the seed, so a baseline keeps it
    per run (``runs[i].tokens_seen``), not with the case's."""
    out = invariants.copy()
    out.pop("tokens_seen", None)
    return out


def record_cases(path: Path, profile_name: str, records: Sequence[CaseRecord]) -> tuple[list[str], list[str]]:
    """Merge the records of passing cases into the baseline file at ``path`` (other cases kept).

    A record holds one case's runs (``runs``: one per seed). Returns (recorded case ids, skipped
    case ids). Called only under ``--update-baselines``.
    """
    with _lock(path):  # two recording runs at once: each merges into what the other wrote
        return _record_cases(path, profile_name, records)


def _lock(path: Path) -> Any:
    """A lock per baseline file, kept outside the user's repository (the temp dir, named by a
    hash of the file's real path), so recording leaves no lock file beside the baseline."""
    import hashlib
    import tempfile

    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    locks = Path(tempfile.gettempdir()) / "medqa-bench-locks"
    locks.mkdir(exist_ok=True)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return FileLock(str(locks / f"baseline-{digest}.lock"))


def _record_cases(path: Path, profile_name: str, records: Sequence[CaseRecord]) -> tuple[list[str], list[str]]:
    data: BaselineFile = load(path) if path.is_file() else {"schema_version": SCHEMA_VERSION, "profile": profile_name, "cases": {}}
    if data.get("schema_version") != SCHEMA_VERSION:  # an old recorded file is rewritten whole in the new schema
        data = {"schema_version": SCHEMA_VERSION, "profile": profile_name, "cases": {}}
    written, skipped = [], []
    for rec in records:
        if rec.get("outcome") != "passed" or not rec.get("runs"):
            skipped.append(rec["case_id"])
            continue
        data["cases"][rec["case_id"]] = case_entry(rec["runs"])
        written.append(rec["case_id"])
    seeds = sorted({r["seed"] for rec in records for r in rec.get("runs", [])})
    data["source"] = (f"recorded by `pytest benchmarks/ --profile {profile_name} --update-baselines --seeds "
                      f"{','.join(map(str, seeds))}`")
    if written:
        write(path, data)
    return written, sorted(skipped)


def record_resources(path: Path, records: Sequence[CaseRecord]) -> list[str]:
    """``--update-resources``: replace only the time and memory of the baseline's cases with this
    run's (stages built in this run; scores, runs and invariants stay). For a time baseline taken
    on a quiet machine after the scores were recorded under load, or on a new hardware class."""
    with _lock(path):
        return _record_resources(path, records)


def _record_resources(path: Path, records: Sequence[CaseRecord]) -> list[str]:
    data = load(path)
    done = []
    for rec in records:
        case = data["cases"].get(rec["case_id"])
        res = rec.get("resources") or {}
        if case is None or rec.get("outcome") != "passed" or "train_work" not in res:
            continue
        case["resources"] = {k: v for k, v in res.items() if k in TEXT_RESOURCES or _num(v)}
        # the gate compares a run's work with the median over the baseline runs that measured it
        # (gate.like_for_like): this run's measurements replace every run's, matched by seed, and a
        # baseline run this recording did not repeat keeps no time of its own (its measurement was
        # taken on another occasion, perhaps another CPU)
        fresh = {r.get("seed"): r.get("resources") or {} for r in rec.get("runs") or []}
        for run in case.get("runs", []):
            new = fresh.get(run.get("seed"), {})
            run["resources"] = {k: v for k, v in new.items() if k not in TEXT_RESOURCES and _num(v)}
        done.append(rec["case_id"])
    if done:
        write(path, data)
    return done
