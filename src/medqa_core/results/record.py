"""The case record: what one case of a run leaves behind (``<run dir>/<case id>.json``), typed.

Written by :mod:`medqa_core.session` (``case_record``, ``error_record``); read by the summary,
the report, the history, trends, alerts and ``merge``. The types describe the JSON as it is
stored, so readers get names and shapes checked by a type checker instead of guessing keys;
:func:`check_record` is the one place that decides whether a JSON object is a record.
"""
from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple, Required, TypedDict

from ..errors import MedQAError


class Status(StrEnum):
    """A case verdict's status (``gate.Verdict.status``, ``verdict.status`` of a record). A ``str``
    whose value is the text stored in records and history and shown in reports, so JSON output
    and comparisons with the plain strings of records read back are unchanged."""

    PASS = "pass"
    IMPROVEMENT = "improvement"  # an allowed (one-sided) move the better way
    REGRESSION = "regression"
    CHANGED = "changed"  # a move the better way beyond the band, or a changed invariant
    INCOMPARABLE = "incomparable"  # the baseline cannot judge this case (other inputs, no power)
    NO_BASELINE = "no-baseline"
    ERROR = "error"  # the case failed before it could be judged (session.error_record)


class CheckRecord(TypedDict, total=False):
    """A :class:`gate.Check` as JSON (one entry of a verdict's ``checks``). ``metric``, ``control``
    and ``seed`` exist in records written since checks carry them: read them through
    :func:`check_fields`, never out of the name."""

    name: str
    value: Any
    baseline: Any
    passed: bool
    kind: str  # noise | invariant | control | ceiling | power | time | memory
    detail: str
    limit: float | None
    delta: float | None
    se: float | None
    t: float | None
    df: float | None
    p: float | None
    mde: float | None
    direction: str  # down | up | ""
    ci: list[float] | None
    metric: str | None
    control: str | None
    seed: int | None


class VerdictRecord(TypedDict, total=False):
    """A :class:`gate.Verdict` as JSON (``Verdict.to_json``): the ``verdict`` of a case record."""

    status: str  # a Status value
    note: str
    explain: str
    checks: list[CheckRecord]


#: A JSON object whose keys and values are not fixed by this package (user-edited TOML, a library's
#: settings, a provenance blob read by probing for keys): the one name for the record's free-form
#: parts, so every spot that is still untyped is spelled this way and can be found.
JsonObject = dict[str, Any]

#: A run's resources: numbers (``train_seconds``, ``peak_mem_mib``, ``tokens_per_s``, ``threads``,
#: ``<stage>_work``, ``<stage>_busy``) and text (``device``, ``cpu``; a recorded baseline's
#: ``device`` may be None). Its keys are open (one ``_work``/``_busy`` pair per stage built) and
#: readers index it by computed names, so it stays a JSON object: values are as JSON gives them.
Resources = JsonObject


class ControlRecord(TypedDict):
    """One control of a run (``controls`` of a record: ``no_question``, ``shuffled``, ...): its
    scores, means and per test question (pipeline.run_case). A baseline keeps only the means
    (:class:`BaselineCase` ``controls``)."""

    metrics: dict[str, float]
    per_example: dict[str, list[Any]]


class Identity(TypedDict, total=False):
    """What a baseline must share with a run to be compared (session.identity; the gate's
    IDENTITY_KEYS and SPEC_IDENTITY_KEYS), plus the recipe's hash and the hardware class. Every
    key is optional: a published baseline (paper.json) records ``scorer_spec`` only."""

    data: str  # fingerprint of the cleaned rows
    test_ids: str
    scorer: str
    scorer_spec: str
    profile: str  # hash of the recipe (the profile without seeds, paths, gate, baseline, scorer)
    hardware_class: str


class Invariants(TypedDict, total=False):
    """The exact quantities of a run the gate compares with its baseline (pipeline.run_case,
    gate.judge_invariants and judge_recipe). Optional keys: older records and baselines lack the
    newer ones, and a baseline keeps its runs' ``tokens_seen`` per run, not here."""

    test_ids: str
    train_rows: int
    train_rows_digest: str
    train_test_overlap: int
    train_steps: int
    tokens_seen: int
    trainable_params: int
    lora_closed_form: int | None
    generation: JsonObject | None  # the generation settings (model/generation.py)
    prompt_digest: str | None
    recipe: JsonObject  # the recipe as applied (train/applied.py): its settings are open-ended
    recipe_asked: JsonObject
    generation_prompt_ids: list[int]
    scorer: dict[str, str]  # metric -> scorer fingerprint (metrics.fingerprint)
    scorer_spec: str
    scorer_canary: dict[str, float]
    base_revision: str


class DataSource(TypedDict, total=False):
    """Where a case's rows were read from (session.data_source): {} when the profile does not
    know the dataset."""

    kind: str  # file | hub | missing
    path: str | None
    via: str  # the environment variable, or "profile"
    hub_id: str
    revision: str | None


class RunRecord(TypedDict, total=False):
    """One training run (seed) of the case."""

    seed: int
    metrics: dict[str, float]
    per_example: dict[str, list[Any]]
    controls: dict[str, ControlRecord]
    invariants: Invariants
    resources: Resources
    base_metrics: dict[str, float]
    cached: dict[str, bool]
    margins: dict[str, float]
    # git sha, versions, hardware, profile, seeds, scorer spec (pipeline.provenance); left open:
    # the CLI and merge probe it for keys by name (run ids, time stamps) it may or may not hold
    provenance: JsonObject
    identity: Identity


class CaseRecord(RunRecord, total=False):
    """The case: the first run's fields, metrics averaged over the runs, every run kept."""

    case_id: str
    model: str
    dataset: str
    profile: str
    runs: list[RunRecord]
    seeds: list[int]
    # the training statistics (train.common.TrainStats as JSON), the data's sizes and cleaning
    # statistics, and what the scorers cut: information for the reader of a record, open-ended
    train: JsonObject
    seconds: dict[str, float]
    work: dict[str, float]
    keys: dict[str, str]
    data: JsonObject
    data_source: DataSource
    answers_sample: list[dict[str, str]]
    scoring: JsonObject
    verdict: VerdictRecord
    # in memory only, never in the record's file: the pytest outcome (passed, failed, ...) where it
    # is known, the file it was (to be) written to or read from, why that write failed (a full
    # disk: session.error_record), and the run (merge) it came from
    outcome: str
    _path: str
    _unwritten: str
    _run: str


class BaselineRun(TypedDict, total=False):
    """One of the K recorded runs of a baseline case (baselines.case_entry)."""

    seed: int
    metrics: dict[str, float]
    margins: dict[str, float]
    per_example: dict[str, list[Any]]
    tokens_seen: int | None
    resources: Resources  # its measurements only (no text fields)


class BaselineCase(TypedDict, total=False):
    """One case of a baseline file (``cases.<case id>``), as :func:`medqa_core.baselines.case_entry`
    writes it. Only ``metrics`` is required (:func:`medqa_core.baselines.validate`): a schema-1
    file (paper.json) has metrics and identity and nothing else."""

    metrics: Required[dict[str, float]]  # the mean over the K runs
    spread: dict[str, float]  # between-run standard deviation
    runs: list[BaselineRun]
    base_metrics: dict[str, float]
    controls: dict[str, dict[str, float]]  # per control its metrics' means (the first run's)
    invariants: Invariants
    identity: Identity
    resources: Resources
    per_example: dict[str, list[Any]]  # a hand-made or aggregates-only case may carry one
    recorded: JsonObject  # git_sha, versions, hardware: the provenance it was recorded with


class BaselineFile(TypedDict, total=False):
    """A baseline file as :func:`medqa_core.baselines.load` returns it, validated: its schema
    version, the profile it was recorded for, where its numbers come from (``source``) and per
    case id the recorded entry (a :class:`BaselineCase`: the case's means, every run, resources by
    seed)."""

    schema_version: int
    profile: str
    source: str
    cases: dict[str, BaselineCase]
    # a published baseline (paper.json) also says how its numbers were made: free-form text and
    # numbers of the study, read by key where used (models' training_minutes, hardware's class)
    models: dict[str, JsonObject]  # per model: published training minutes, parameters
    hardware: JsonObject  # the hardware class the published times were measured on
    recipe: JsonObject
    scorer: JsonObject


REQUIRED = ("case_id", "model", "dataset")


def is_record(obj: Any) -> bool:
    """A case record (not ``aggregates.json`` or another JSON file of a run directory):
    what :func:`check_record` accepts."""
    try:
        check_record(obj, "")
    except MedQAError:
        return False
    return True


def check_record(obj: Any, where: str) -> CaseRecord:
    """``obj`` as a :class:`CaseRecord`, or a one-line error naming ``where`` and what is missing
    (an empty ``case_id``, ``model`` or ``dataset`` counts as missing)."""
    if not isinstance(obj, dict):
        raise MedQAError(f"{where}: not a case record (a JSON {type(obj).__name__}, expected an object)")
    missing = [k for k in REQUIRED if not isinstance(obj.get(k), str) or not obj.get(k)]
    if missing:
        raise MedQAError(f"{where}: not a case record (no {', '.join(missing)})")
    return obj  # type: ignore[return-value]


# ---- what a check judged: its metric, control and seed -------------------------------------------

class CheckFields(NamedTuple):
    """What one check judged: the ``metric`` (a score, or the score under a margin over a
    control; None for invariants, time and memory), the ``control`` it is compared with (a
    ``beats_<control>`` check or a ``margin:<control>:<metric>`` score; else None), and the
    ``seed`` of the one run it judged when the case had several runs (None: all of the case's
    runs together, or its only run)."""

    metric: str | None
    control: str | None
    seed: int | None


FIELDS = CheckFields._fields


def check_fields(check: Mapping[str, Any]) -> CheckFields:
    """A check's (``gate.Check`` as JSON) metric, control and seed: its own fields, which the gate
    writes into every record; for a check of an older record, which has none of them, what its
    name says (:func:`_legacy_fields`). Readers of records take these from here."""
    if any(k in check for k in FIELDS):
        seed = check.get("seed")
        return CheckFields(check.get("metric"), check.get("control"),
                           seed if isinstance(seed, int) and not isinstance(seed, bool) else None)
    return _legacy_fields(str(check.get("name", "")), str(check.get("kind", "")))


def _legacy_fields(name: str, kind: str) -> CheckFields:
    """The fields of a check recorded before checks carried them, read out of its name as the
    gate wrote it: ``beats_<control>:<metric>`` (kind control), ``margin:<control>:<metric>`` or
    ``<metric>`` (noise), ``max_<metric>`` (ceiling), ``power:<metric>`` (power), each with
    ``@seed<n>`` appended when the case had several runs. This is the one place that reads these
    fields out of a name (records, history and baselines written before keep being read the same);
    every other reader uses :func:`check_fields`, and the gate sets the fields on every check it
    makes (it still maps a noise check's name to its measure for the direction: ``gate._scored``)."""
    base, at, seed_text = name.partition("@seed")
    try:
        seed = int(seed_text) if at else None
    except ValueError:
        base, seed = name, None
    metric: str | None = None
    control: str | None = None
    if kind == "control":
        control, _, metric = base.partition("beats_")[2].partition(":")
    elif kind == "noise":
        parts = base.split(":", 2)
        if len(parts) == 3 and parts[0] == "margin":
            control, metric = parts[1], parts[2]
        else:
            metric = base
    elif kind == "ceiling" and base.startswith("max_"):
        metric = base[len("max_"):]
    elif kind == "power" and base.startswith("power:"):
        metric = base[len("power:"):]
    return CheckFields(metric or None, control or None, seed)


def judges_score(check: Mapping[str, Any], metric: str) -> bool:
    """The noise check of ``metric`` itself over the case's runs (not a margin over a control,
    not one run's): the check a report shows in that metric's column."""
    if check.get("kind") != "noise":
        return False
    f = check_fields(check)
    return f.metric == metric and f.control is None and f.seed is None
