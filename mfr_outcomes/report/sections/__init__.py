"""One module a report section; :data:`SECTIONS` lists them in report order."""
from __future__ import annotations

from collections.abc import Callable

from mfr_outcomes.report.sections import (
    cohort,
    comparisons,
    data_quality,
    intervention,
    methods,
    outcomes,
    safety,
    trends,
)

__all__ = ["SECTIONS", "SECTION_TITLES"]

#: Section key -> (title, builder(ctx, section)), in report order.
SECTIONS: dict[str, tuple[str, Callable]] = {
    "data_quality": ("Data quality", data_quality.build),
    "cohort": ("Cohort", cohort.build),
    "intervention": ("The intervention as delivered", intervention.build),
    "outcomes": ("Outcomes", outcomes.build),
    "trends": ("Trends", trends.build),
    "comparisons": ("Therapists and sites", comparisons.build),
    "safety": ("Safety: adverse events", safety.build),
    "methods": ("Methods", methods.build),
}

#: Section key -> title, in report order.
SECTION_TITLES: dict[str, str] = {k: v[0] for k, v in SECTIONS.items()}
