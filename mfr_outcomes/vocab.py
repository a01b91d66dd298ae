"""Vocabularies of the three tables: the category labels every module agrees on."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "TABLES",
    "SEX",
    "CONDITION",
    "AFFECTED_SIDE",
    "TECHNIQUE",
    "TREATMENT_TECHNIQUES",
    "TARGET_REGION",
    "ADVERSE_EVENT",
    "PHASE",
    "SIDE",
    "DEFAULT_SITE",
    "EXTENSIBLE",
    "Vocabulary",
    "DEFAULT_VOCABULARY",
]

TABLES = ("patients", "sessions", "measurements")

SEX = ("female", "male", "other", "unknown")
CONDITION = ("sciatica", "hip_pain", "both")
AFFECTED_SIDE = ("left", "right", "bilateral")
# Order matters: it is the factor order in models, so "direct_pressure" is the reference level.
TECHNIQUE = ("direct_pressure", "stretching", "massage", "combined", "none")
TREATMENT_TECHNIQUES = ("direct_pressure", "stretching", "massage", "combined")
TARGET_REGION = ("lower_back", "piriformis", "hip", "multiple")
ADVERSE_EVENT = ("none", "soreness", "bruising", "symptom_flare", "other")
PHASE = ("pre", "post")
SIDE = ("left", "right", "none")
DEFAULT_SITE = "site-1"


#: Columns whose vocabulary a clinic profile may extend, and the table each belongs to.
EXTENSIBLE = {
    "technique": "sessions",
    "condition": "patients",
    "target_region": "sessions",
    "adverse_event": "sessions",
    "arm": "patients",
}


@dataclass(frozen=True)
class Vocabulary:
    """The category labels of one load: the built-ins plus what a clinic profile adds.

    Nothing global is changed: a profile builds its own ``Vocabulary`` with :meth:`extend` and
    it is passed down to validation. Built-in labels come first, in their order (the first is
    the reference level of models); added labels follow in the order given.

    ``arm`` has no built-in labels. When a load declares none, any arm label is accepted and
    the arms are ordered alphabetically (the first is the reference level); when the profile
    lists arms, they are the only labels allowed, in the order listed.

    Examples
    --------
    >>> from mfr_outcomes.vocab import Vocabulary
    >>> v = Vocabulary().extend(technique=["dry_needling"], arm=["active", "placebo"])
    >>> v.technique[-2:]
    ('none', 'dry_needling')
    >>> v.categories("arm")
    ('active', 'placebo')
    """

    technique: tuple[str, ...] = TECHNIQUE
    condition: tuple[str, ...] = CONDITION
    target_region: tuple[str, ...] = TARGET_REGION
    adverse_event: tuple[str, ...] = ADVERSE_EVENT
    arm: tuple[str, ...] = ()

    def extend(self, **added: Iterable[str]) -> Vocabulary:
        """A new vocabulary with *added* labels appended (duplicates of known labels ignored).

        Raises
        ------
        KeyError
            When a keyword is not one of :data:`EXTENSIBLE`.
        """
        unknown = [k for k in added if k not in EXTENSIBLE]
        if unknown:
            raise KeyError(f"{unknown[0]!r} is not an extensible vocabulary "
                           f"({', '.join(EXTENSIBLE)})")
        new = {}
        for name, labels in added.items():
            current = list(getattr(self, name))
            current += [x for x in dict.fromkeys(labels) if x not in current]
            new[name] = tuple(current)
        return replace(self, **new)

    def categories(self, column: str) -> tuple[str, ...]:
        """Labels of one extensible column, in factor order."""
        if column not in EXTENSIBLE:
            raise KeyError(f"{column!r} is not an extensible vocabulary ({', '.join(EXTENSIBLE)})")
        return getattr(self, column)

    @property
    def treatment_techniques(self) -> tuple[str, ...]:
        """Every technique except ``none`` (the assessment-only visit)."""
        return tuple(t for t in self.technique if t != "none")


#: The built-in vocabulary (what a load without a profile uses).
DEFAULT_VOCABULARY = Vocabulary()
