"""One benchmark case as the session runs it: the seeds, the pipeline, the record, the verdict.

The test body in ``benchmarks/test_medqa.py`` calls the plugin's ``medqa_run`` fixture, which
asks :func:`run_and_judge` for a case (``.check()`` then fails the test on the verdict); the
pytest plugin collects the records for baselines, history, aggregate (family / suite) verdicts
and alerts.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import cast

import numpy as np

from . import gate, pipeline
from .baselines import resource_baseline
from .cache import content_key
from .resources import hardware_class
from .results.record import BaselineFile, CaseRecord, DataSource, Identity, RunRecord
from .specs import Profile, as_dict

log = logging.getLogger(__name__)


def parse_seeds(text: str | None, profile: Profile, recording: bool) -> list[int]:
    """``--seeds``: ``K`` (the profile's seed and the K-1 following), a list ``0,101-104``, or
    None: ``[gate] gate_seeds`` runs when gating (1 unless the profile sets it), ``[gate] baseline_seeds`` when recording."""
    from .errors import ConfigError

    base = profile.train.seed
    if text is None or text == "":
        k = profile.gate.baseline_seeds if recording else profile.gate.gate_seeds
        return list(range(base, base + k))
    try:
        if "," not in text and "-" not in text:
            k = int(text)
            if k < 1:
                raise ValueError
            return list(range(base, base + k))
        out: list[int] = []
        for part in text.split(","):
            a, dash, b = part.strip().partition("-")
            if dash and (not b or int(b) < int(a)):
                raise ValueError
            out.extend(range(int(a), int(b) + 1) if dash else [int(a)])
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count K >= 1 or a list like 0,101-104") from None
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"--seeds {text!r}: seeds must be distinct and at least one")
    return out


def identity(profile: Profile, result: pipeline.RunResult) -> Identity:
    """What a baseline must share with the run to be compared (gate.IDENTITY_KEYS), plus the
    recipe's hash and the hardware class for information."""
    # the scorer is an identity key of its own (and not part of the recipe hash baselines recorded)
    recipe = {k: v for k, v in as_dict(profile).items() if k not in ("path", "data_dir", "gate", "baseline", "scorer")}
    recipe["train"] = {k: v for k, v in recipe["train"].items() if k != "seed"}
    if recipe.get("pretrain"):
        recipe["pretrain"] = {k: v for k, v in recipe["pretrain"].items() if k != "seed"}
    return {
        "data": result.data["fingerprint"],
        "test_ids": result.invariants["test_ids"],
        "scorer": content_key(result.invariants["scorer"])[:16],
        # the scorer's models and settings without versions: what published numbers (paper.json) record
        **({"scorer_spec": result.invariants["scorer_spec"]} if "scorer_spec" in result.invariants else {}),
        "profile": content_key(recipe)[:16],
        "hardware_class": hardware_class(),
    }


def data_source(profile: Profile, dataset: str) -> DataSource:
    """Where a case's rows were read from, in the loader's order (datasets.load_examples): the file
    named by ``MEDQA_DATA_<NAME>``, else ``<data dir>/<file>``, else the hub id. Information for the
    reader of a record (which file was this?); the data's identity stays its fingerprint, so the
    same rows read from another path still compare with their baseline."""
    import os

    spec = profile.datasets.get(dataset)
    if spec is None:
        return {}
    env = os.environ.get(spec.env_var)
    if env:
        return {"kind": "file", "path": str(Path(env).expanduser().resolve()), "via": spec.env_var}
    if spec.file is not None and (profile.data_dir / spec.file).is_file():
        return {"kind": "file", "path": str((profile.data_dir / spec.file).resolve()), "via": "profile"}
    if spec.hub_id is not None:
        return {"kind": "hub", "hub_id": spec.hub_id, "revision": getattr(spec, "revision", None)}
    return {"kind": "missing", "path": str(profile.data_dir / spec.file) if spec.file else None}


def case_record(profile: Profile, ctx: pipeline.RunContext, results: list[pipeline.RunResult]) -> CaseRecord:
    """The case's record: the first run's fields, metrics averaged over the runs, every run kept."""
    runs = [r.to_json() for r in results]
    rec = cast(CaseRecord, dict(runs[0]))
    if len(runs) > 1:
        rec["metrics"] = {m: round(float(np.mean([r["metrics"][m] for r in runs])), 6) for m in runs[0]["metrics"]}
    rec["runs"] = [cast(RunRecord, {k: r[k] for k in ("seed", "metrics", "per_example", "controls", "invariants", "resources",
                                                      "base_metrics", "cached")})
                   for r in runs]
    for r in rec["runs"]:
        r["margins"] = gate.margins(r, profile.gate.require_beats_base)
    rec["seeds"] = [r.seed for r in results]
    rec["identity"] = identity(profile, results[0])
    rec["data_source"] = data_source(profile, results[0].dataset)  # beside data.fingerprint; not in the identity
    rec["provenance"] = pipeline.provenance(profile, ctx)
    for r in rec["runs"]:
        r["provenance"] = rec["provenance"]
        r["identity"] = rec["identity"]
    return rec


def run_and_judge(profile: Profile, model: str, dataset: str, ctx: pipeline.RunContext, seeds: list[int],
                  baseline: BaselineFile | None, hw: tuple[str, BaselineFile | None],
                  run_dir: Path, judge_resources: bool = True) -> tuple[CaseRecord, gate.Verdict]:
    """Run the case once per seed, judge it, write its record to ``run_dir``; (record, verdict)."""
    results = []
    for i, seed in enumerate(seeds):
        if len(seeds) > 1:
            log.info("%s-%s: run %d/%d (seed %d)", model, dataset, i + 1, len(seeds), seed)
        results.append(pipeline.run_case(pipeline.for_seed(profile, seed), model, dataset, ctx))
        if baseline is None and i + 1 < len(seeds):  # recording: a seed that fails its controls ends it
            last = case_record(profile, ctx, results[-1:])
            early = gate.judge_case(last["case_id"], last["runs"], None, {}, profile.gate, last["identity"])
            if early.failures:
                log.warning("%s-%s: seed %d fails %s; not training the other %d seed(s): the case cannot be recorded",
                            model, dataset, seed, ", ".join(c.name for c in early.failures), len(seeds) - i - 1)
                break
    rec = case_record(profile, ctx, results)
    cases = (baseline or {}).get("cases", {})
    base_case = cases.get(rec["case_id"])
    res = None
    if base_case is not None and judge_resources:
        hw_class, hw_file = hw
        res = resource_baseline(rec["case_id"], model, baseline, hw_file, hw_class)
    verdict = gate.judge_case(rec["case_id"], rec["runs"], base_case, cases, profile.gate, rec["identity"], res)
    rec["verdict"] = verdict.to_json()
    path = run_dir / f"{rec['case_id']}.json"
    path.write_text(json.dumps(rec, indent=1, allow_nan=False))
    rec["_path"] = str(path)
    return rec, verdict


def error_record(profile: Profile | str, model: str, dataset: str, run_dir: Path, reason: str,
                 case_id: str | None = None) -> CaseRecord:
    """The record of a case that failed before it could be judged (missing file, bad config,
    crash): status ``error`` with its one-line reason, so history, summary, JUnit and alerts
    count it like any other failure."""
    from .resources import git_sha, hardware, library_versions
    from .specs import case_name

    cid = case_id or case_name(model, dataset)
    name = profile if isinstance(profile, str) else profile.name
    line = " ".join(reason.split())[:500]
    rec: CaseRecord = {"case_id": cid, "model": model, "dataset": dataset, "profile": name, "metrics": {},
           "base_metrics": {}, "resources": {}, "cached": {}, "runs": [],
           "provenance": {"git_sha": git_sha(), "versions": library_versions(), "hardware": hardware(),
                          "profile": name},
           "verdict": {"status": "error", "note": line, "explain": f"{cid}: error ({line})", "checks": []},
           "data_source": {} if isinstance(profile, str) else data_source(profile, dataset)}
    path = run_dir / f"{cid}.json"
    rec["_path"] = str(path)
    try:  # a full or unwritable disk must not lose the record: it is kept in memory for the session end
        path.write_text(json.dumps({k: v for k, v in rec.items() if k != "_path"}, indent=1, allow_nan=False))
    except OSError as exc:
        rec["_unwritten"] = f"{path}: {exc.strerror or exc}"
    return rec
