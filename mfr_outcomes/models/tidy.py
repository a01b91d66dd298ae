"""Tidy tables and predictions that every mixed fit shares, linear or generalised: lme4's VarCorr
as a frame, and the random part Zb̂ of predictions for new rows."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mfr_outcomes.models.formula import prepare_newdata
from mfr_outcomes.models.spec import ModelSpec

__all__ = ["variance_components_table", "random_part"]


def variance_components_table(random_covariances: Sequence[tuple[str, list[str], np.ndarray]],
                              residual_sd: float | None = None) -> pd.DataFrame:
    """lme4's ``VarCorr`` as a frame: group, term1, term2, variance, sd, corr (one row a variance,
    one a correlation; a Residual row when *residual_sd* is given)."""
    rows = []
    for group, terms, cov in random_covariances:
        sd = np.sqrt(np.diag(cov))
        for i, t in enumerate(terms):
            rows.append({"group": group, "term1": t, "term2": None, "variance": cov[i, i],
                         "sd": sd[i], "corr": np.nan})
        for j in range(len(terms)):
            for i in range(j + 1, len(terms)):
                denom = sd[i] * sd[j]
                rows.append({"group": group, "term1": terms[j], "term2": terms[i],
                             "variance": cov[i, j], "sd": np.nan,
                             "corr": cov[i, j] / denom if denom > 0 else np.nan})
    if residual_sd is not None:
        rows.append({"group": "Residual", "term1": None, "term2": None,
                     "variance": residual_sd ** 2, "sd": residual_sd, "corr": np.nan})
    out = pd.DataFrame(rows, columns=["group", "term1", "term2", "variance", "sd", "corr"])
    for col in ("term1", "term2"):  # None (not NaN) where lme4's VarCorr has NA
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


def random_part(spec: ModelSpec, blups: Sequence[np.ndarray], newdata: pd.DataFrame) -> np.ndarray:
    """Zb̂ for new rows: each block's conditional modes at the row's level (0 for levels not seen
    in the fit)."""
    out = np.zeros(len(newdata))
    design = spec.design
    for k, (b, blup) in enumerate(zip(spec.blocks, blups)):
        gvars = b.group.split(":")
        if any(g not in newdata.columns for g in gvars):
            continue
        labels = (newdata[gvars[0]].astype(str) if len(gvars) == 1 else
                  newdata[gvars].astype(str).agg(":".join, axis=1))
        pos = b.levels.get_indexer(labels)
        known = pos >= 0
        if not known.any():
            continue
        if design is not None:
            Z = design.random_matrix(k, prepare_newdata(spec, newdata))
        else:  # a spec built by hand: the terms are plain column names
            Z = np.column_stack([np.ones(len(newdata)) if t == "(Intercept)" else
                                 newdata[t].to_numpy(dtype=float) for t in b.terms])
        out[known] += np.einsum("ij,ij->i", Z[known], blup[pos[known]])
    return out
