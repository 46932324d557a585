"""The deterministic train/test split of a dataset's rows and its train/test leak check."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cache import content_key
from ..errors import DatasetError, LeakageError
from ..specs import DatasetSpec, SplitConfig
from .cleaning import normalise_question
from .datasets import LoadStats, QAExample, load_examples
from .leakage import LeakReport, leakage


@dataclass
class Split:
    train: list[QAExample]
    test: list[QAExample]
    stats: LoadStats = field(default_factory=LoadStats)

    def __post_init__(self) -> None:
        # taken when the loader hands the split over: the data's identity for baselines and history,
        # whatever later code does to the lists (a row moved into train shows up as an invariant)
        self._fingerprint = content_key([[e.question, e.answer] for e in self.train] + ["|"]
                                        + [[e.question, e.answer] for e in self.test])

    def fingerprint(self) -> str:
        return self._fingerprint


def _hash01(seed: int, example_id: str) -> float:
    """Seeded hash of an example id, uniform in [0, 1)."""
    return int(hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()[:16], 16) / 2**64


def split(examples: list[QAExample], cfg: SplitConfig, name: str = "dataset") -> Split:
    """Deterministic split by a seeded hash of each example's id (the normalized question).

    ``test_fraction``: an example is in the test set iff its hash is below the fraction, a fact
    about that example alone: adding or removing other rows never moves it. ``test_size``: the
    N examples with the smallest hash (fixed size; a new row can push one from test to train,
    never the other way round). Input order never matters.
    """
    if cfg.test_fraction is not None:
        test = [e for e in examples if _hash01(cfg.seed, e.id) < cfg.test_fraction]
        if not test or len(test) == len(examples):
            raise DatasetError(f"dataset {name!r}: split.test_fraction={cfg.test_fraction} puts {len(test)} of "
                               f"{len(examples)} rows in the test set; pick a fraction that leaves both sides non-empty")
        ids = {e.id for e in test}
        train = [e for e in examples if e.id not in ids]
    else:
        assert cfg.test_size is not None
        if cfg.test_size <= 0 or cfg.test_size >= len(examples):
            raise DatasetError(
                f"dataset {name!r}: split.test_size={cfg.test_size} needs 0 < test_size < {len(examples)} (rows kept)"
            )
        ordered = sorted(examples, key=lambda e: hashlib.sha256(f"{cfg.seed}:{e.id}".encode()).hexdigest())
        test, train = ordered[: cfg.test_size], ordered[cfg.test_size:]
    test = sorted(test, key=lambda e: e.id)
    train = sorted(train, key=lambda e: e.id)
    leaked = {normalise_question(e.question) for e in train} & {normalise_question(e.question) for e in test}
    if leaked:  # cannot happen after dedup; guards future loaders
        raise DatasetError(f"dataset {name!r}: {len(leaked)} test questions also in train")
    return Split(train, test)


def check_leakage(s: Split, cfg: SplitConfig, name: str) -> LeakReport:
    """Exact and near-duplicate questions shared by train and test; raises LeakageError over the limit."""
    report = leakage([e.question for e in s.train], [e.question for e in s.test], cfg.near_dup_threshold)
    if cfg.max_leak_fraction is not None and report.fraction > cfg.max_leak_fraction:
        raise LeakageError(
            f"dataset {name!r}: {report.leaked} of {report.test} test questions ({report.fraction:.1%}) have a "
            f"duplicate in train ({report.exact} exact, {report.near} near, Jaccard >= {cfg.near_dup_threshold}); "
            f"limit [split] max_leak_fraction = {cfg.max_leak_fraction}"
        )
    return report


def load_split(spec: DatasetSpec, data_dir: Path, cfg: SplitConfig) -> Split:
    """Load and clean the dataset's rows, split them and check the split for leaks."""
    examples, stats = load_examples(spec, data_dir)
    s = split(examples, cfg, spec.name)
    report = check_leakage(s, cfg, spec.name)
    stats.leak = {**asdict(report), "leaked": report.leaked, "fraction": round(report.fraction, 4)}
    s.stats = stats
    return s
