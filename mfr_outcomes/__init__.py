"""mfr_outcomes: outcomes analytics for myofascial release therapy of sciatica and hip pain.

Load and check clinic tables, fit mixed-effects models of the change in pain and range of motion
(agreeing with lme4/lmerTest/emmeans/performance), and write reproducible QI reports.

Public verbs are imported lazily, so ``import mfr_outcomes`` stays fast for the command line.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "load_study": ("mfr_outcomes.io", "load_study"),
    "validate": ("mfr_outcomes.io", "validate"),
    "Study": ("mfr_outcomes.study", "Study"),
    "ValidationReport": ("mfr_outcomes.findings", "ValidationReport"),
    "DataValidationError": ("mfr_outcomes.findings", "DataValidationError"),
    "fit_mixed": ("mfr_outcomes.models.fit", "fit_mixed"),
    "MixedFit": ("mfr_outcomes.models.fit", "MixedFit"),
    "LinearMixedFit": ("mfr_outcomes.models.fit", "LinearMixedFit"),
    "ModelCheckError": ("mfr_outcomes.models.checks", "ModelCheckError"),
    "ModelFitError": ("mfr_outcomes.models.fit", "ModelFitError"),
    "fit_from_summaries": ("mfr_outcomes.scale.summaries", "fit_from_summaries"),
    "compare": ("mfr_outcomes.models.inference", "compare"),
    "fit_prepost": ("mfr_outcomes.models.domain", "fit_prepost"),
    "fit_course": ("mfr_outcomes.models.domain", "fit_course"),
    "fit_followup": ("mfr_outcomes.models.domain", "fit_followup"),
    "fit_binary": ("mfr_outcomes.models.binary", "fit_binary"),
    "fit_adverse_events": ("mfr_outcomes.models.binary", "fit_adverse_events"),
    "GeneralizedMixedFit": ("mfr_outcomes.models.glmm_fit", "GeneralizedMixedFit"),
    "responders": ("mfr_outcomes.effects", "responders"),
    "register_measure": ("mfr_outcomes.measures", "register_measure"),
    "get_measure": ("mfr_outcomes.measures", "get_measure"),
    "ModelWarning": ("mfr_outcomes.warnings_", "ModelWarning"),
    "DataWarning": ("mfr_outcomes.warnings_", "DataWarning"),
    "synthetic": ("mfr_outcomes.synthetic", None),
    "datasets": ("mfr_outcomes.datasets", None),
    "measures": ("mfr_outcomes.measures", None),
    "effects": ("mfr_outcomes.effects", None),
    "qi": ("mfr_outcomes.qi", None),
    "plots": ("mfr_outcomes.plots", None),
    "power": ("mfr_outcomes.power", None),
    "report": ("mfr_outcomes.report", None),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'mfr_outcomes' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
