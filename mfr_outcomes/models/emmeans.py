"""Estimated marginal means and their contrasts on emmeans' reference grid, for a MixedFit.

The numbers agree with R's emmeans (``emm_options(lmer.df = "satterthwaite")``) on an lmerTest fit:
the grid, the weighting of cells (equal by default), the contrast families and their
multiplicity adjustments.
"""
from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mfr_outcomes.warnings_ import ModelWarning

__all__ = [
    "reference_grid",
    "emmeans",
    "contrasts",
    "adjust_p_values",
    "ADJUST_METHODS",
    "CONTRAST_METHODS",
    "WEIGHTS",
]

ADJUST_METHODS = ("tukey", "holm", "bonferroni", "sidak", "none")
CONTRAST_METHODS = ("revpairwise", "pairwise", "trt.vs.ctrl")

_C_WRAPPED = re.compile(r"\bC\(\s*([A-Za-z_][A-Za-z0-9_.]*)")


# --------------------------------------------------------------------------------------------
# Reference grid
# --------------------------------------------------------------------------------------------

def _as_list(x: str | Sequence[str] | None) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        # emmeans-style "a * b" or "a + b" or "a:b"
        return [p.strip() for p in re.split(r"[*+:]", x.replace("~", "")) if p.strip()]
    return [str(v) for v in x]


def _fixed_variables(fit: Any) -> list[str]:
    spec = fit.spec
    design = getattr(spec, "design", None)
    names: list[str] = []
    if design is not None:
        names = sorted(design.fixed_variables)
    if not names:
        text = getattr(spec, "fixed_formula", "") or fit.formula
        rhs = text.split("~", 1)[-1]
        tokens = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", rhs))
        names = sorted(t for t in tokens if t in spec.data.columns and t != spec.response)
    return [n for n in names if n in spec.data.columns]


def _factor_levels(fit: Any, var: str) -> list | None:
    """Levels when *var* enters the fixed part as a factor, else None (a numeric covariate)."""
    spec = fit.spec
    design = getattr(spec, "design", None)
    cats = design.categories if design is not None else {}
    col = spec.data[var]
    if var in cats:
        present = set(col.dropna().astype(str).unique())  # distinct first: millions of rows
        return [c for c in cats[var] if str(c) in present]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [c for c in col.cat.categories if (col == c).any()]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return sorted(col.dropna().unique().tolist())
    text = getattr(spec, "fixed_formula", "") or getattr(fit, "formula", "")
    if var in _C_WRAPPED.findall(text):
        return sorted(col.dropna().unique().tolist())
    return None


def reference_grid(fit: Any, specs: str | Sequence[str], *, by: str | Sequence[str] | None = None,
                   at: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, list]]:
    """emmeans' reference grid of a fit.

    Every factor of the fixed part contributes all its levels (crossed); every numeric covariate
    contributes its mean over the rows used, unless ``at`` gives values. A numeric covariate with
    at most two distinct values (a 0/1 indicator such as ``post``) contributes those values, like a
    factor, as emmeans does by default (``emm_options(cov.keep = "2")``).

    Returns
    -------
    grid : DataFrame
        One row a grid cell, one column a fixed-effect variable.
    values : dict
        variable -> the values it takes on the grid (in order).
    """
    spec_vars = _as_list(specs)
    by_vars = _as_list(by)
    at = dict(at or {})
    variables = _fixed_variables(fit)
    data = fit.spec.data
    unknown = [v for v in spec_vars + by_vars if v not in variables]
    if unknown:
        raise ValueError(f"{unknown} not among the fixed-effect variables of the model "
                         f"({', '.join(variables) or 'none'}); formula: {fit.formula}")
    bad_at = [k for k in at if k not in variables]
    if bad_at:
        raise ValueError(f"at= names {bad_at}, which are not fixed-effect variables of the model "
                         f"({', '.join(variables)})")
    values: dict[str, list] = {}
    for v in variables:
        levels = _factor_levels(fit, v)
        if v in at:
            given = at[v]
            given = list(given) if isinstance(given, (list, tuple, np.ndarray, pd.Index)) \
                else [given]
            if levels is not None:
                wrong = [g for g in given if str(g) not in {str(x) for x in levels}]
                if wrong:
                    raise ValueError(f"at={{{v!r}: {given}}}: level(s) {wrong} are not levels of "
                                     f"{v!r} in the fitted data ({levels})")
                given = [x for x in levels if str(x) in {str(g) for g in given}]
            values[v] = given
        elif levels is not None:
            values[v] = levels
        elif pd.to_numeric(data[v]).nunique() <= 2:
            # emmeans' cov.keep = "2": a covariate with two values is kept as those two levels
            vals = sorted(pd.to_numeric(data[v]).dropna().unique().tolist())
            values[v] = [int(x) if float(x).is_integer() else x for x in vals]
        else:
            values[v] = [float(pd.to_numeric(data[v]).mean())]
    combos = list(itertools.product(*[values[v] for v in variables]))
    grid = pd.DataFrame(combos, columns=variables)
    for v in variables:
        col = data[v]
        if isinstance(col.dtype, pd.CategoricalDtype):
            grid[v] = pd.Categorical(grid[v], categories=col.cat.categories)
    return grid, values


def _grid_matrix(fit: Any, grid: pd.DataFrame) -> np.ndarray:
    X = np.asarray(fit.model_matrix(grid), dtype=float)
    if X.shape != (len(grid), len(fit.coef)):
        raise RuntimeError(f"model_matrix returned shape {X.shape}; expected "
                           f"({len(grid)}, {len(fit.coef)})")
    return X


def _nonestimable(fit: Any, grid: pd.DataFrame, L: np.ndarray, groups: np.ndarray,
                  wts: np.ndarray) -> np.ndarray:
    """True for rows of L (one a group) that are not estimable because fixed columns were dropped."""
    spec = fit.spec
    design = getattr(spec, "design", None)
    out = np.zeros(L.shape[0], dtype=bool)
    if design is None or not design.dropped:
        return out
    full = design.fixed_matrix(spec.data, full=True)
    nd = grid.copy()
    for col, cats in design.categories.items():
        if col in nd.columns:
            nd[col] = pd.Categorical(nd[col].astype(object), categories=list(cats))
    G = design.fixed_matrix(nd, full=True)
    _, s, vt = np.linalg.svd(full, full_matrices=True)
    rank = int((s > s.max() * max(full.shape) * np.finfo(float).eps * 10).sum())
    null = vt[rank:].T
    if null.size == 0:
        return out
    for g in range(L.shape[0]):
        if not np.isfinite(wts[groups == g]).all():
            continue
        row = wts[groups == g] @ G[groups == g]
        out[g] = np.abs(row @ null).max() > 1e-6 * max(1.0, np.abs(row).max())
    return out


WEIGHTS = ("equal", "proportional", "cells")


def _cell_counts(fit: Any, grid: pd.DataFrame, variables: list[str]) -> np.ndarray:
    """Number of rows of the fitted data in each grid row, matching on *variables*."""
    if not variables:
        return np.full(len(grid), float(len(fit.spec.data)))
    data = fit.spec.data

    def canon(col: pd.Series) -> list:
        if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
            return [float(x) for x in col]
        return [str(x) for x in col]

    data_keys = list(zip(*[canon(data[v]) for v in variables]))
    counts: dict[tuple, int] = {}
    for k in data_keys:
        counts[k] = counts.get(k, 0) + 1
    grid_keys = zip(*[canon(grid[v]) if not isinstance(data[v].dtype, pd.CategoricalDtype)
                      and pd.api.types.is_numeric_dtype(data[v]) else
                      [str(x) for x in grid[v]] for v in variables])
    return np.asarray([float(counts.get(k, 0)) for k in grid_keys])


def _weights(fit: Any, grid: pd.DataFrame, values: dict[str, list], keys: list[str],
             groups: np.ndarray, n_cells: int, weights: str) -> np.ndarray:
    """Weight of each grid row within its emmeans cell (rows of a cell sum to 1)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    w = np.ones(len(grid))
    if weights != "equal":
        multi = [v for v in values if len(values[v]) > 1]
        if weights == "cells":
            w = _cell_counts(fit, grid, multi)
        else:  # proportional: frequencies of the averaged-over combinations in the whole data
            w = _cell_counts(fit, grid, [v for v in multi if v not in keys])
    out = np.zeros(len(grid))
    for g in range(n_cells):
        m = groups == g
        tot = w[m].sum()
        out[m] = w[m] / tot if tot > 0 else np.nan
    return out


def _emm_design(fit: Any, specs, by, at, weights: str = "equal"):
    if isinstance(specs, str) and "|" in specs:  # emmeans' "~ post | technique"
        specs, extra = specs.split("|", 1)
        by = _as_list(by) + _as_list(extra)
    spec_vars = _as_list(specs)
    by_vars = _as_list(by)
    if not spec_vars:
        raise ValueError("specs must name at least one fixed-effect variable, e.g. 'post'")
    overlap = set(spec_vars) & set(by_vars)
    if overlap:
        raise ValueError(f"{sorted(overlap)} appear in both specs and by")
    grid, values = reference_grid(fit, spec_vars, by=by_vars, at=at)
    X = _grid_matrix(fit, grid)
    keys = by_vars + spec_vars
    # emmeans order: by groups outermost, the first spec variable varying fastest
    order_vars = by_vars[::-1] + spec_vars[::-1]
    level_index = {v: {str(x): i for i, x in enumerate(values[v])} for v in keys}
    cells = grid[keys].astype(object).drop_duplicates()
    sort_key = cells.apply(lambda r: tuple(level_index[v][str(r[v])] for v in order_vars), axis=1)
    cells = cells.loc[sort_key.sort_values().index].reset_index(drop=True)
    cell_id = {tuple(str(x) for x in row): i for i, row in enumerate(cells.itertuples(index=False))}
    groups = np.array([cell_id[tuple(str(x) for x in row)]
                       for row in grid[keys].astype(object).itertuples(index=False)])
    wts = _weights(fit, grid, values, keys, groups, len(cells), weights)
    L = np.vstack([wts[groups == g] @ X[groups == g] for g in range(len(cells))])
    nonest = _nonestimable(fit, grid, L, groups, wts)
    empty = ~np.isfinite(L).all(axis=1)
    if empty.any():
        nonest = nonest | empty
        L[empty] = 0.0
    averaged = [v for v in values if v not in keys and len(values[v]) > 1]
    held = {v: values[v][0] for v in values if v not in keys and len(values[v]) == 1}
    return cells, L, spec_vars, by_vars, values, averaged, held, nonest


def _contrast_rows(fit: Any, L: np.ndarray, names: list[str], level: float) -> pd.DataFrame:
    res = fit.linear_contrast(L, names=names, level=level)
    res = pd.DataFrame(res).reset_index(drop=True)
    for col in ("estimate", "std_error", "df"):
        if col not in res.columns:
            raise RuntimeError(f"linear_contrast did not return column {col!r}")
    return res


def _warn(notes: list[str], text: str) -> None:
    notes.append(text)
    warnings.warn(text, ModelWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# Multiplicity adjustment
# --------------------------------------------------------------------------------------------

def adjust_p_values(t: np.ndarray, df: np.ndarray, method: str, *, n_means: int | None = None
                    ) -> np.ndarray:
    """Two-sided p-values of t statistics in one family, adjusted by *method*.

    ``tukey`` uses the studentized range with ``n_means`` means and each contrast's own df
    (emmeans: ``ptukey(sqrt(2) * |t|, n_means, df, lower.tail = FALSE)``); ``holm`` is
    statsmodels' ``multipletests``; ``sidak`` is ``1 - (1 - p)^k``; ``bonferroni`` is ``min(1, k p)``.
    """
    t = np.asarray(t, dtype=float)
    df = np.asarray(df, dtype=float)
    raw = 2.0 * stats.t.sf(np.abs(t), df)
    k = len(t)
    if method == "none" or k == 0:
        return raw
    if method == "tukey":
        if n_means is None:
            raise ValueError("tukey adjustment needs n_means")
        if n_means <= 2:
            return raw  # the studentized range of two means is the t test
        return np.array([float(stats.studentized_range.sf(np.sqrt(2.0) * abs(ti), n_means, di))
                         for ti, di in zip(t, df)])
    if method == "bonferroni":
        return np.minimum(1.0, raw * k)
    if method == "sidak":
        return 1.0 - (1.0 - raw) ** k
    if method == "holm":
        from statsmodels.stats.multitest import multipletests

        ok = np.isfinite(raw)
        out = np.full(k, np.nan)
        if ok.any():
            out[ok] = multipletests(raw[ok], method="holm")[1]
        return out
    raise ValueError(f"adjust must be one of {', '.join(ADJUST_METHODS)}; got {method!r}")


def _qtukey(level: float, n_means: int, df: np.ndarray) -> np.ndarray:
    """Studentized-range quantiles for each df.

    scipy's ppf costs ~0.2 s a call; when the family's df lie within 5 % of each other (the usual
    case with Satterthwaite df) the quantile is interpolated linearly in 1/df between the two
    extremes; q is smooth in 1/df, so this agrees with scipy's own ppf to about 1e-6.
    """
    df = np.asarray(df, dtype=float)
    finite = np.isfinite(df)
    out = np.full(df.shape, np.nan)

    def q(d: float) -> float:
        return float(stats.studentized_range.ppf(level, n_means, d))

    infinite = np.isposinf(df)  # asymptotic (z) inference
    if infinite.any():
        out[infinite] = q(np.inf)
    if not finite.any():
        return out
    lo, hi = float(df[finite].min()), float(df[finite].max())

    if hi - lo < 1e-9:
        out[finite] = q(lo)
    elif hi / lo < 1.05:
        q_lo, q_hi = q(lo), q(hi)
        w = (1.0 / df[finite] - 1.0 / hi) / (1.0 / lo - 1.0 / hi)
        out[finite] = q_hi + w * (q_lo - q_hi)
    else:
        out[finite] = [q(d) for d in df[finite]]
    return out


def _critical_values(df: np.ndarray, level: float, method: str, k: int,
                     n_means: int | None) -> np.ndarray:
    df = np.asarray(df, dtype=float)
    if method == "tukey" and n_means is not None and n_means > 2:
        return _qtukey(level, n_means, df) / np.sqrt(2.0)
    if method in ("bonferroni", "holm"):
        alpha = (1.0 - level) / k
    elif method == "sidak":
        alpha = 1.0 - level ** (1.0 / k)
    else:
        alpha = 1.0 - level
    return stats.t.ppf(1.0 - alpha / 2.0, df)


def _finish(res: pd.DataFrame, family: np.ndarray, method: str, level: float,
            n_means: dict[int, int] | None) -> pd.DataFrame:
    est = res["estimate"].to_numpy(dtype=float)
    se = res["std_error"].to_numpy(dtype=float)
    df = res["df"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = est / se
    p = np.full(len(est), np.nan)
    lo = np.full(len(est), np.nan)
    hi = np.full(len(est), np.nan)
    for fam in np.unique(family):
        idx = np.flatnonzero(family == fam)
        ok = idx[np.isfinite(t[idx])]
        if ok.size == 0:
            continue
        nm = None if n_means is None else n_means.get(int(fam))
        p[ok] = adjust_p_values(t[ok], df[ok], method, n_means=nm)
        crit = _critical_values(df[ok], level, method, len(ok), nm)
        lo[ok] = est[ok] - crit * se[ok]
        hi[ok] = est[ok] + crit * se[ok]
    res = res.copy()
    res["statistic"] = t
    res["p_value"] = p
    res["ci_low"] = lo
    res["ci_high"] = hi
    return res


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------

def _level_label(var: str, value: Any, numeric_var: bool) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{var}{value}" if numeric_var else str(value)


def emmeans(fit: Any, specs: str | Sequence[str], *, by: str | Sequence[str] | None = None,
            at: Mapping[str, Any] | None = None, level: float = 0.95,
            adjust: str | None = None, weights: str = "equal") -> pd.DataFrame:
    """Estimated marginal means (least-squares means) of a mixed model.

    Parameters
    ----------
    fit : MixedFit
        A fitted model (``mfr_outcomes.models.fit.fit_mixed``).
    specs : str or list of str
        Variables whose levels are reported ("post", ["post", "technique"], "post * technique";
        "post | technique" is the same as ``specs="post", by="technique"``).
    by : str or list of str, optional
        Variables that split the table into groups (``~ post | technique`` is
        ``specs="post", by="technique"``).
    at : dict, optional
        Values at which to hold covariates (numeric covariates default to their mean; factors to
        all their levels), e.g. ``{"session_number": 3}``.
    level : float
        Confidence level of the intervals.
    adjust : {"none", "bonferroni", "sidak", "holm"}, optional
        Simultaneous intervals and p-values within each ``by`` group (default none; "holm" gives
        Bonferroni intervals, as emmeans does, because Holm has no interval).
    weights : {"equal", "proportional", "cells"}
        How grid cells are averaged (emmeans' ``weights``): equally (default); in proportion to
        how often each combination of the averaged-over factors occurs in the data; or by the
        number of rows in each cell (the raw cell means' weighting).

    Returns
    -------
    DataFrame
        Columns: the spec and by variables, estimate, std_error, df (Satterthwaite, or the fit's
        df method), statistic (t against 0), p_value, ci_low, ci_high. ``.attrs`` holds ``notes``
        (what was averaged over and where covariates were held), ``averaged_over``, ``at``,
        ``level`` and ``adjust``.

    Notes
    -----
    The reference grid is emmeans': every factor in the model crossed, numeric covariates at
    their mean, cells weighted equally when averaging over factors not in specs/by. A numeric
    covariate with at most two values (``post``, 0/1) is kept at both values like a factor
    (emmeans' default ``cov.keep = "2"``), so averaging over it weights pre and post equally.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_prepost(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs")
    >>> emm = emmeans(fit, "post", by="technique")
    >>> list(emm.columns)
    ['post', 'technique', 'estimate', 'std_error', 'df', 'statistic', 'p_value', 'ci_low', 'ci_high']
    >>> len(emm)  # pre and post for each of the four techniques
    8
    """
    _check_level(level)
    cells, L, spec_vars, by_vars, values, averaged, held, nonest = _emm_design(
        fit, specs, by, at, weights)
    numeric = {v: _factor_levels(fit, v) is None for v in spec_vars + by_vars}
    names = [", ".join(f"{v}={_level_label('', r[v], False)}" for v in by_vars + spec_vars)
             for _, r in cells.iterrows()]
    res = _contrast_rows(fit, L, names, level)
    out = cells.copy()
    for v in spec_vars + by_vars:
        if numeric[v]:
            out[v] = pd.to_numeric(out[v])
    out = out[spec_vars + by_vars]
    for col in ("estimate", "std_error", "df"):
        out[col] = res[col].to_numpy(dtype=float)
    notes: list[str] = []
    if nonest.any():
        out.loc[nonest, ["estimate", "std_error", "df"]] = np.nan
        _warn(notes, f"{int(nonest.sum())} marginal mean(s) are not estimable (the model dropped "
                     f"rank-deficient fixed-effect columns) and are reported as missing")
    method = "none" if adjust is None else adjust
    if method not in ADJUST_METHODS:
        raise ValueError(f"adjust must be one of {', '.join(ADJUST_METHODS)}; got {adjust!r}")
    if method == "tukey":
        notes.append("adjust='tukey' is for pairwise comparisons; sidak used for the means, as "
                     "emmeans does")
        method = "sidak"
    family = _families(cells, by_vars)
    out = _finish(out, family, method, level, None)
    notes += _grid_notes(fit, method, spec_vars, by_vars, averaged, weights, held)
    out.attrs.update({"notes": notes, "averaged_over": averaged, "at": held, "level": level,
                      "adjust": method, "specs": spec_vars, "by": by_vars})
    return out


def _grid_notes(fit: Any, method: str, spec_vars: list[str], by_vars: list[str],
                averaged: Sequence[str], weights: str, held: dict) -> list[str]:
    """What a reader of marginal means or contrasts must know about how they were formed."""
    notes = []
    if method == "holm":
        notes.append("holm has no confidence interval; intervals are bonferroni-adjusted, as in "
                     "emmeans")
    if averaged:
        notes.append(f"results are averaged over the levels of: {', '.join(averaged)} "
                     f"({weights} weights)")
    if held:
        notes.append("covariates held at: " + ", ".join(f"{k} = {_fmt(v)}"
                                                        for k, v in held.items()))
    inter = _interactions_note(fit, spec_vars + by_vars, list(averaged) + list(held))
    if inter:
        notes.append(inter)
    return notes


def _interactions_note(fit: Any, shown: list[str], other: list[str]) -> str:
    """emmeans' caution when a shown variable interacts with one averaged over or held fixed."""
    hits = set()
    for name in map(str, fit.coef.index):
        parts = [re.sub(r"\[.*\]$", "", p).strip() for p in name.split(":")]
        parts = [_C_WRAPPED.sub(lambda m: m.group(1), p).rstrip(")") for p in parts]
        if len(parts) > 1:
            for a in shown:
                for b in other:
                    if a in parts and b in parts:
                        hits.add(b)
    if not hits:
        return ""
    return (f"results may be misleading because the variables shown interact with "
            f"{', '.join(sorted(hits))}, which is averaged over or held fixed")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _check_level(level: float) -> None:
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95); got {level!r}")


def _families(cells: pd.DataFrame, by_vars: list[str]) -> np.ndarray:
    if not by_vars:
        return np.zeros(len(cells), dtype=int)
    keys = cells[by_vars].astype(str).agg("\x1f".join, axis=1)
    return pd.factorize(keys)[0]


def _contrast_weights(method: str | Mapping[str, Sequence[float]], labels: list[str]
                      ) -> list[tuple[str, np.ndarray]]:
    k = len(labels)
    out: list[tuple[str, np.ndarray]] = []
    if isinstance(method, Mapping):
        for name, w in method.items():
            w = np.asarray(w, dtype=float)
            if w.shape != (k,):
                raise ValueError(f"custom contrast {name!r} has {w.size} weights; it needs {k}, "
                                 f"one per level in this order: {labels}")
            out.append((str(name), w))
        return out
    if method == "pairwise":
        for i, j in itertools.combinations(range(k), 2):
            w = np.zeros(k)
            w[i], w[j] = 1.0, -1.0
            out.append((f"{labels[i]} - {labels[j]}", w))
    elif method == "revpairwise":
        for j in range(1, k):
            for i in range(j):
                w = np.zeros(k)
                w[j], w[i] = 1.0, -1.0
                out.append((f"{labels[j]} - {labels[i]}", w))
    elif method == "trt.vs.ctrl":
        for j in range(1, k):
            w = np.zeros(k)
            w[j], w[0] = 1.0, -1.0
            out.append((f"{labels[j]} - {labels[0]}", w))
    else:
        raise ValueError(f"method must be one of {', '.join(CONTRAST_METHODS)} or a dict of "
                         f"custom weights; got {method!r}")
    return out


def _interaction_weights(sub: pd.DataFrame, spec_vars: list[str], values: dict[str, list],
                         methods: list[str]) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Products of one contrast family per spec variable, over the cells of one by group."""
    per_var = []
    for v, m in zip(spec_vars, methods):
        labels = [_level_label(v, x, False) for x in values[v]]
        per_var.append(_contrast_weights(m, labels))
    index = {v: {str(x): i for i, x in enumerate(values[v])} for v in spec_vars}
    pos = [tuple(index[v][str(r[v])] for v in spec_vars) for _, r in sub.iterrows()]
    out = []
    # the first variable's contrasts vary fastest, as emmeans lists them
    for combo in itertools.product(*per_var[::-1]):
        combo = combo[::-1]
        w = np.array([np.prod([combo[k][1][p[k]] for k in range(len(spec_vars))]) for p in pos])
        out.append((tuple(c[0] for c in combo), w))
    return out


def contrasts(fit: Any, specs: str | Sequence[str], *, by: str | Sequence[str] | None = None,
              method: str | Mapping[str, Sequence[float]] = "revpairwise",
              adjust: str | None = None, at: Mapping[str, Any] | None = None,
              level: float = 0.95, interaction: Sequence[str] | None = None,
              weights: str = "equal") -> pd.DataFrame:
    """Contrasts among estimated marginal means, within each ``by`` group.

    Parameters
    ----------
    fit : MixedFit
    specs, by, at, weights
        As in :func:`emmeans`. ``contrasts(fit, "post", by="technique")`` gives post − pre within
        each technique.
    method : {"revpairwise", "pairwise", "trt.vs.ctrl"} or dict
        emmeans' contrast families: ``revpairwise`` (later − earlier level), ``pairwise`` (earlier −
        later), ``trt.vs.ctrl`` (each level − the first), or ``{name: weights}`` with one weight
        per level of the specs (in the order of :func:`emmeans`' rows within a group).
    adjust : {"tukey", "holm", "bonferroni", "sidak", "none"}, optional
        Multiplicity adjustment within each by group. Default: "tukey" for pairwise families
        (as emmeans), "holm" for trt.vs.ctrl (emmeans' default there is "dunnettx", an
        approximation not implemented here), "none" for custom weights. Tukey uses the
        studentized range with each contrast's own df; applied to a family that is not all
        pairwise comparisons it becomes "sidak", as in emmeans. Holm adjusts p-values; its
        intervals are Bonferroni's (emmeans does the same).
    level : float
        Confidence level.
    interaction : sequence of str, optional
        Interaction contrasts (emmeans' ``contrast(emm, interaction = c(...))``): one contrast
        family per spec variable, e.g. ``contrasts(fit, ["post", "technique"],
        interaction=["revpairwise", "pairwise"])`` compares the post − pre change between every
        pair of techniques. ``method`` is then ignored and the default ``adjust`` is "none", as
        in emmeans.

    Returns
    -------
    DataFrame
        Columns: contrast, the by variables, estimate, std_error, df, statistic, p_value, ci_low,
        ci_high, adjust; ``.attrs["notes"]`` explains averaging and adjustment changes. With
        ``interaction``, one column ``<variable>_<method>`` per spec variable instead of
        ``contrast`` (as emmeans labels them).

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_prepost(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs")
    >>> change = contrasts(fit, "post", by="technique")  # post − pre per technique
    >>> change[["contrast", "technique"]].iloc[0].tolist()
    ['post1 - post0', 'direct_pressure']
    >>> bool((change["estimate"] < 0).all())  # pain is lower after a session
    True
    """
    _check_level(level)
    cells, L, spec_vars, by_vars, values, averaged, held, nonest = _emm_design(
        fit, specs, by, at, weights)
    numeric = {v: _factor_levels(fit, v) is None for v in spec_vars}
    family_of_cell = _families(cells, by_vars)
    if interaction is not None:
        interaction = [interaction] if isinstance(interaction, str) else list(interaction)
        if len(interaction) != len(spec_vars) or \
                any(m not in CONTRAST_METHODS for m in interaction):
            raise ValueError(f"interaction needs one of {', '.join(CONTRAST_METHODS)} for each "
                             f"spec variable ({', '.join(spec_vars)}); got {interaction!r}")
        if adjust is None:
            adjust = "none"
    if adjust is None:
        if isinstance(method, Mapping):
            adjust = "none"
        elif method == "trt.vs.ctrl":
            adjust = "holm"
        else:
            adjust = "tukey"
    if adjust not in ADJUST_METHODS:
        raise ValueError(f"adjust must be one of {', '.join(ADJUST_METHODS)}; got {adjust!r}")
    notes: list[str] = []
    method_used = adjust
    if adjust == "tukey" and (isinstance(method, Mapping) or method == "trt.vs.ctrl"
                              or (interaction is not None and len(spec_vars) > 1)):
        method_used = "sidak"
        notes.append("adjust='tukey' is only for one set of pairwise comparisons; sidak used "
                     "instead, as emmeans does")

    rows, weights, fam_index, by_values = [], [], [], []
    n_means: dict[int, int] = {}
    for fam in np.unique(family_of_cell):
        idx = np.flatnonzero(family_of_cell == fam)
        sub = cells.iloc[idx]
        labels = [" ".join(_level_label(v, r[v], numeric[v] and len(spec_vars) == 1)
                           for v in spec_vars) for _, r in sub.iterrows()]
        if len(idx) < 2 and not isinstance(method, Mapping):
            continue
        pairs = _interaction_weights(sub, spec_vars, values, interaction) \
            if interaction is not None else _contrast_weights(method, labels)
        for name, w in pairs:
            full = np.zeros(len(cells))
            full[idx] = w
            weights.append(full)
            rows.append(name)
            fam_index.append(int(fam))
            by_values.append({v: sub.iloc[0][v] for v in by_vars})
        n_means[int(fam)] = len(idx)
    if not rows:
        raise ValueError(f"{spec_vars} has fewer than two levels on the grid, so there is "
                         f"nothing to contrast")
    W = np.vstack(weights)
    C = W @ L
    res = _contrast_rows(fit, C, [" : ".join(r) if isinstance(r, tuple) else r for r in rows],
                         level)
    if interaction is not None:
        out = pd.DataFrame({f"{v}_{m}": [r[i] for r in rows]
                            for i, (v, m) in enumerate(zip(spec_vars, interaction))})
    else:
        out = pd.DataFrame({"contrast": rows})
    for v in by_vars:
        out[v] = [b[v] for b in by_values]
    for col in ("estimate", "std_error", "df"):
        out[col] = res[col].to_numpy(dtype=float)
    bad = (np.abs(W[:, nonest]) > 0).any(axis=1) if nonest.any() else np.zeros(len(W), bool)
    if bad.any():
        out.loc[bad, ["estimate", "std_error", "df"]] = np.nan
        _warn(notes, f"{int(bad.sum())} contrast(s) involve non-estimable marginal means and are "
                     f"reported as missing")
    fam_arr = np.asarray(fam_index)
    out = _finish(out, fam_arr, method_used, level, n_means if method_used == "tukey" else None)
    notes += _grid_notes(fit, method_used, spec_vars, by_vars, averaged, weights, held)
    out["adjust"] = method_used
    out.attrs.update({"notes": notes, "averaged_over": averaged, "at": held, "level": level,
                      "adjust": method_used, "specs": spec_vars, "by": by_vars,
                      "method": ("interaction" if interaction is not None else
                                 method if isinstance(method, str) else "custom")})
    return out
