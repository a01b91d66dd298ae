"""Vocabularies of the three tables: the category labels every module agrees on."""
from __future__ import annotations

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
