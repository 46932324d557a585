"""What a run adds up to after its cases are judged: the family and suite verdicts over its
records and the worsening trends of its cases in the history. One home for the chain the plugin
(after a run), ``medqa-bench report`` (a run again, or a merged group) and the nightly merge
(``results.merge.write_issue``) each need, including which gate settings apply when the profile
cannot be loaded.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import MedQAError
from ..specs import GateConfig

if TYPE_CHECKING:
    from ..gate import Aggregate
    from ..specs import Profile
    from .trend import Shift

log = logging.getLogger(__name__)

#: case id -> metric -> the worsening shifts found in its series
Trends = dict[str, dict[str, list["Shift"]]]


@dataclass(frozen=True)
class GateSettings:
    """The gate settings a run is analysed with: a profile's ``[gate]``, or the defaults (no
    tolerances, no memory slack) when there is no profile or it does not load."""

    gate: GateConfig = field(default_factory=GateConfig)
    from_profile: bool = False

    @classmethod
    def of(cls, profile: Profile | None) -> GateSettings:
        return cls() if profile is None else cls(profile.gate, True)

    @classmethod
    def of_name(cls, name: str | None) -> GateSettings:
        """The settings of the profile named ``name``; the defaults, with a warning, when it
        does not load here (a run's records name their profile, which another machine may lack)."""
        from ..profile import load_profile

        if not name:
            return cls()
        try:
            return cls.of(load_profile(name))
        except MedQAError as exc:
            log.warning("profile %s not loadable (%s): default gate settings", name, exc)
            return cls()

    @property
    def tolerances(self) -> dict[str, float]:
        """Per-metric tolerances that scale what counts as a trend step."""
        return dict(self.gate.metric_tolerance) if self.from_profile else {}

    @property
    def memory_slack_mib(self) -> float:
        return self.gate.memory_slack_mib if self.from_profile else 0.0


@dataclass
class Analysis:
    """The family/suite verdicts of a run's records and its cases' worsening trends."""

    aggregates: list[Aggregate]
    trends: Trends


def run_aggregates(records: Sequence[Mapping[str, Any]], settings: GateSettings) -> list[Aggregate]:
    """Family (per model) and suite verdicts recomputed from the records' checks
    (:func:`gate.aggregates`): one run or a merged group alike."""
    from ..gate import aggregates

    return aggregates(records, settings.gate)


def run_trends(history: Any, case_ids: Sequence[str], profile_name: str | None, settings: GateSettings,
               hardware_class: str | None = None) -> Trends:
    """Worsening shifts of these cases over ``history`` (:func:`trend.case_trends`), on one
    hardware class or (None) each class's series."""
    from .trend import case_trends

    return case_trends(history, case_ids, profile_name, settings.tolerances, hardware_class,
                       memory_slack_mib=settings.memory_slack_mib)


def analyse_run(records: Sequence[Mapping[str, Any]], settings: GateSettings, history: Any = None,
                profile_name: str | None = None) -> Analysis:
    """The aggregates of ``records`` and, with a history, the trends of every case they hold
    (every hardware class's series)."""
    ids = [str(r["case_id"]) for r in records]
    trends = run_trends(history, ids, profile_name, settings) if history is not None else {}
    return Analysis(run_aggregates(records, settings), trends)


__all__ = ["Analysis", "GateSettings", "Trends", "analyse_run", "run_aggregates", "run_trends"]
