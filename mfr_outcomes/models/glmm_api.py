"""The formula-level entry of generalised mixed models, behind ``fit_mixed(..., family=)``.

Builds the model frame, reads prior weights and offsets (arrays or column names, or
``spec.weights``/``spec.offset`` when the formula grammar supplies them, e.g. from
``cbind(s, f)`` and ``offset(expr)``), checks the response against the family, fits by
:func:`~mfr_outcomes.models.glmm.fit_glmm` and wraps the result in a
:class:`~mfr_outcomes.models.glmm_fit.GeneralizedMixedFit`.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.models.checks import (
    check_model,
    gaussian_response_caution,  # noqa: F401 (re-exported)
)
from mfr_outcomes.models.families import get_family
from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.glmm import fit_glmm
from mfr_outcomes.models.glmm_fit import GeneralizedMixedFit
from mfr_outcomes.warnings_ import ModelWarning

__all__ = ["fit_generalized", "check_response", "gaussian_response_caution"]

_WEIGHTS_COL = "__glmm_weights__"
_OFFSET_COL = "__glmm_offset__"


def _attach(data: pd.DataFrame, value: Any, name: str, column: str) -> tuple[pd.DataFrame, str]:
    """Put weights/offset given as values into a column, so that row exclusion follows them."""
    if isinstance(value, str):
        if value not in data.columns:
            raise ValueError(f"{name}={value!r} is not a column of the data (columns: "
                             f"{', '.join(map(str, data.columns))}).")
        return data, value
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size != len(data):
        raise ValueError(f"{name} has {arr.size} values but the data have {len(data)} rows.")
    return data.assign(**{column: arr}), column


def _values(spec, column: str | None, name: str) -> np.ndarray | None:
    if column is None:
        return None
    vals = pd.to_numeric(spec.data[column], errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        rows = list(spec.data.index[bad[:5]])
        raise ValueError(f"{name} is missing or not a number in {bad.size} used row(s) (rows "
                         f"{rows}); give every row a value or drop those rows.")
    return vals


def check_response(y: np.ndarray, family: str, weights: np.ndarray, index: pd.Index,
                   response: str) -> None:
    """Raise on a response the family cannot take; warn on a non-integer count.

    Binomial: 0/1, or proportions in [0, 1] with ``weights`` the trials (m·y must be whole).
    Poisson: counts ≥ 0 (whole numbers).
    """
    def rows(mask):
        pos = np.flatnonzero(mask)[:5]
        return ", ".join(f"row {index[i]}: {y[i]:g}" for i in pos)

    if np.any(weights < 0):
        raise ValueError(f"Prior weights must be ≥ 0; found {np.sum(weights < 0)} negative.")
    if family == "binomial":
        out = (y < 0) | (y > 1)
        if out.any():
            raise ValueError(f"A binomial response must be 0/1 or a proportion in [0, 1] (with "
                             f"weights = trials); {response!r} has {out.sum()} value(s) outside "
                             f"({rows(out)}). For counts of successes write cbind(successes, "
                             f"failures) or pass the proportion with weights=trials.")
        k = y * weights
        frac = np.abs(k - np.round(k)) > 1e-8
        if frac.any():
            warnings.warn(f"Non-integer number of successes in a binomial model ({frac.sum()} "
                          f"row(s), {rows(frac)}): a proportion needs weights=trials so that "
                          f"proportion × trials is a whole number.", ModelWarning, stacklevel=4)
    elif family == "poisson":
        neg = y < 0
        if neg.any():
            raise ValueError(f"A Poisson response must be a count ≥ 0; {response!r} has "
                             f"{neg.sum()} negative value(s) ({rows(neg)}).")
        frac = np.abs(y - np.round(y)) > 1e-8
        if frac.any():
            warnings.warn(f"Non-integer counts in a Poisson model ({frac.sum()} row(s), "
                          f"{rows(frac)}): the Poisson likelihood is for whole counts; use an "
                          f"offset for rates or a Gaussian model for continuous values.",
                          ModelWarning, stacklevel=4)


def fit_generalized(data: pd.DataFrame, formula: str, *, family: str, link: str | None = None,
                    nagq: int = 1, weights: Any = None, offset: Any = None,
                    options: dict | None = None) -> GeneralizedMixedFit:
    """Fit a binomial or Poisson mixed model by glmer's method (see ``fit_mixed``)."""
    fam = get_family(family, link)
    w_col = o_col = None
    if weights is not None:
        data, w_col = _attach(data, weights, "weights", _WEIGHTS_COL)
    if offset is not None:
        data, o_col = _attach(data, offset, "offset", _OFFSET_COL)
    spec = build_spec(data, formula)
    w = _values(spec, w_col, "weights")
    off = _values(spec, o_col, "offset")
    spec_w, spec_off = getattr(spec, "weights", None), getattr(spec, "offset", None)
    if spec_w is not None:
        if w is not None:
            raise ValueError("The formula gives binomial trials (cbind) and weights= is set too; "
                             "give the trials one way.")
        w = np.asarray(spec_w, float)
    if spec_off is not None:
        off = np.asarray(spec_off, float) + (0.0 if off is None else off)
    w = np.ones(spec.n) if w is None else w
    off = np.zeros(spec.n) if off is None else off
    check_response(spec.y, fam.name, w, spec.data.index, spec.response)
    cautions = check_model(spec, allow_n=True)  # glmer's checks (glmerControl's defaults)
    result = fit_glmm(spec, fam, nagq=nagq, weights=w, offset=off, options=options)
    offset_column = o_col if isinstance(offset, str) else None
    return GeneralizedMixedFit(spec, result, weights=w, offset=off, data=data,
                               offset_column=offset_column, cautions=cautions)
