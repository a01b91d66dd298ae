"""The measure registry: one place that says what each outcome measure is and what change matters.

Every figure of an important change carries its source, so that a report can cite it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Measure",
    "MEASURES",
    "get_measure",
    "register_measure",
    "unregister_measure",
    "measure_codes",
    "is_builtin",
    "important_change",
]

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Measure:
    """One outcome measure.

    Attributes
    ----------
    code : str
        Short code used in the ``measure`` column of the measurements table.
    label : str
        Human label for axes and tables.
    unit : str
        Unit shown after the label ("points", "degrees", "kg/cm²", ...).
    low, high : float
        Valid range, inclusive; a reading outside it is a validation finding.
    integer : bool
        True when readings must be whole numbers (NRS, 0/1 flags).
    better : {"lower", "higher"}
        Which direction is improvement.
    mcid_points : float or None
        Minimal clinically important difference in the measure's units.
    mcid_percent : float or None
        Important change as a percentage of baseline (30 for "30 %").
    mdc : float or None
        Minimal detectable change, used when no MCID is published.
    source : str
        Where the figure comes from; "none published" when nothing is.
    binary : bool
        True for 0/1 measures (analysed with GEE logistic, not a linear model).
    """

    code: str
    label: str
    unit: str
    low: float
    high: float
    integer: bool = False
    better: Better = "lower"
    mcid_points: float | None = None
    mcid_percent: float | None = None
    mdc: float | None = None
    source: str = "none published"
    binary: bool = False
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.code or not self.code.replace("_", "").isalnum():
            raise ValueError(f"measure code {self.code!r} must be letters, digits and underscores")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"measure {self.code!r}: valid range {self.low}–{self.high} is empty")
        if self.better not in ("lower", "higher"):
            raise ValueError(f"measure {self.code!r}: better must be 'lower' or 'higher'")
        for name in ("mcid_points", "mcid_percent", "mdc"):
            value = getattr(self, name)
            if value is not None and not (value > 0):
                raise ValueError(f"measure {self.code!r}: {name} must be positive, got {value}")

    @property
    def axis_label(self) -> str:
        """Label with unit, for plot axes."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    @property
    def threshold_points(self) -> float | None:
        """The absolute change that counts as important: MCID when published, else MDC."""
        return self.mcid_points if self.mcid_points is not None else self.mdc

    def improvement(self, change: float) -> float:
        """Signed change turned so that positive always means better."""
        return -change if self.better == "lower" else change

    def in_range(self, value: float) -> bool:
        """True when *value* is a valid reading of this measure."""
        if not math.isfinite(value) or value < self.low or value > self.high:
            return False
        return not (self.integer and value != round(value))

    def range_text(self) -> str:
        """The valid range as people write it ("0–10", "0 or 1")."""
        if self.binary:
            return "0 or 1"
        return f"{_fmt(self.low)}–{_fmt(self.high)}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_PAIN_SOURCE = (
    "Farrar JT et al. Pain 2001;94:149-158; Ostelo RWJG et al. Spine 2008;33:90-94"
)

_BUILTIN = (
    Measure("pain_nrs", "Pain intensity (NRS)", "points", 0, 10, integer=True, better="lower",
            mcid_points=2, mcid_percent=30, source=_PAIN_SOURCE),
    Measure("leg_pain_nrs", "Radiating leg pain (NRS)", "points", 0, 10, integer=True,
            better="lower", mcid_points=2, mcid_percent=30, source=_PAIN_SOURCE),
    Measure("odi", "Oswestry Disability Index", "%", 0, 100, better="lower",
            mcid_points=10, mcid_percent=30, source="Ostelo RWJG et al. Spine 2008;33:90-94"),
    Measure("slr_deg", "Straight-leg raise", "degrees", 0, 120, better="higher", mdc=5.7,
            source="Ekedahl H et al. J Rehabil Med 2012;44:1081-1087 (MDC)"),
    Measure("hip_ir_deg", "Hip internal rotation", "degrees", 0, 70, better="higher",
            source="none published: report MDC-free"),
    Measure("hip_flexion_deg", "Hip flexion", "degrees", 0, 150, better="higher",
            source="none published"),
    Measure("ppt_kgcm2", "Pressure pain threshold", "kg/cm²", 0, 15, better="higher", mdc=1.21,
            source="MDC from pressure-algometry test-retest studies (design value; check it against your algometer)"),
    Measure("paresthesia", "Numbness or tingling present", "0/1", 0, 1, integer=True,
            better="lower", binary=True, source="— (binary)"),
)

#: The registry: code -> Measure. Change it through register_measure, not by hand.
MEASURES: dict[str, Measure] = {m.code: m for m in _BUILTIN}
_BUILTIN_CODES = frozenset(MEASURES)


def measure_codes() -> list[str]:
    """Codes of every registered measure, built-ins first."""
    return list(MEASURES)


def is_builtin(code: str) -> bool:
    """True when *code* is one of the package's own measures (which cannot be replaced)."""
    return code in _BUILTIN_CODES


def get_measure(code: str) -> Measure:
    """Look a measure up by code, with a sentence naming the known codes when it is missing."""
    try:
        return MEASURES[code]
    except KeyError:
        known = ", ".join(MEASURES)
        raise KeyError(f"unknown measure {code!r}; registered measures are: {known}") from None


def register_measure(measure: Measure | None = None, /, *, replace: bool = False, **fields) -> Measure:
    """Add a clinic's own measure to the registry.

    Either pass a :class:`Measure` or its fields as keywords.

    Examples
    --------
    >>> from mfr_outcomes.measures import register_measure, unregister_measure
    >>> rmdq = register_measure(code="rmdq", label="Roland-Morris Disability Questionnaire",
    ...                         unit="points", low=0, high=24, integer=True, better="lower",
    ...                         mcid_points=5, source="Ostelo RWJG et al. Spine 2008;33:90-94")
    >>> rmdq.in_range(25)
    False
    >>> unregister_measure("rmdq")
    """
    if measure is None:
        measure = Measure(**fields)
    elif fields:
        raise TypeError("pass either a Measure or keyword fields, not both")
    if measure.code in MEASURES and not replace:
        raise ValueError(f"measure {measure.code!r} is already registered; pass replace=True")
    if measure.code in _BUILTIN_CODES and replace:
        raise ValueError(f"measure {measure.code!r} is built in and cannot be replaced")
    MEASURES[measure.code] = measure
    return measure


def unregister_measure(code: str) -> None:
    """Remove a measure added with :func:`register_measure` (built-ins stay)."""
    if code in _BUILTIN_CODES:
        raise ValueError(f"measure {code!r} is built in and cannot be removed")
    MEASURES.pop(code, None)


def important_change(code: str, baseline: float, last: float) -> bool:
    """True when the change from *baseline* to *last* is clinically important.

    Met when the improvement reaches the absolute threshold (MCID, else MDC) or the percent
    threshold of baseline, whichever the registry gives (Ostelo 2008 recommends either).
    A measure with neither threshold has no important change: returns False.
    """
    m = get_measure(code)
    gain = m.improvement(last - baseline)
    points = m.threshold_points
    met = points is not None and gain >= points - 1e-9
    if m.mcid_percent is not None and baseline != 0:
        met = met or 100.0 * gain / abs(baseline) >= m.mcid_percent - 1e-9
    return bool(met)
