"""lme4 formulas on data frames: ``y ~ fixed + (terms | group)`` becomes a :class:`ModelSpec`.

The fixed part goes through formulaic (factor order, ``C()``, interactions, term names such as
``technique[T.massage]``); the random part is parsed here, as lme4's ``findbars``/``mkReTrms`` do:
``(a + b | g)`` is one correlated block, ``(a + b || g)`` one uncorrelated block per term,
``(1 | a/b)`` expands to ``(1 | a) + (1 | a:b)``. Blocks are ordered by decreasing number of levels,
as lme4 orders them, so that θ has lme4's order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix

from mfr_outcomes.models.spec import ModelSpec, RandomBlock

__all__ = ["ParsedFormula", "RandomTerm", "parse_formula", "build_spec", "fixed_matrix",
           "prepare_newdata"]

INTERCEPT = "(Intercept)"


@dataclass(frozen=True)
class RandomTerm:
    """One ``(expr | group)`` term as written (before ``||`` splitting and ``/`` expansion)."""

    expr: str
    group: str
    correlated: bool


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed right-hand side and random terms."""

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def fixed_formula(self) -> str:
        return f"{self.response} ~ {self.fixed}"


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split *text* on *sep* outside parentheses (a leading sign of a term stays with it)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"The formula has an unmatched ')' in {text!r}.")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"The formula has an unmatched '(' in {text!r}.")
    parts.append("".join(cur))
    return parts


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into its response, fixed part and random-effects terms.

    Parameters
    ----------
    formula : str
        For example ``"value ~ post * technique + (post | patient_id)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    ValueError
        When the formula has no ``~``, no response, unbalanced parentheses or an empty random term.

    Examples
    --------
    >>> p = parse_formula("y ~ x + (1 | a/b) + (x || g)")
    >>> p.fixed, [(t.expr, t.group, t.correlated) for t in p.random]
    ('x', [('1', 'a/b', True), ('x', 'g', False)])
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"A model formula needs a response and '~', as in 'value ~ post + "
                         f"(1 | patient_id)'; got {formula!r}.")
    lhs, _, rhs = formula.partition("~")
    response = lhs.strip()
    if not response:
        raise ValueError(f"The formula {formula!r} has no response to the left of '~'.")
    if "~" in rhs:
        raise ValueError(f"The formula {formula!r} has more than one '~'.")
    # A leading '-' in "y ~ x - 1" belongs to the term; turn "- t" into "+ -t" before splitting.
    rhs_norm = re.sub(r"-\s*", "+-", rhs)
    terms = [t.strip() for t in _split_top_level(rhs_norm, "+")]
    fixed_terms: list[str] = []
    random_terms: list[RandomTerm] = []
    for term in terms:
        if not term:
            continue
        inner = term
        if term.startswith("(") and term.endswith(")") and "|" in term:
            inner = term[1:-1]
            if "||" in inner:
                expr, _, group = inner.partition("||")
                correlated = False
            else:
                bits = _split_top_level(inner, "|")
                if len(bits) != 2:
                    raise ValueError(f"The random term {term!r} must look like '(terms | group)'.")
                expr, group = bits
                correlated = True
            expr, group = expr.strip().replace("+-", "- "), group.strip()
            if not expr or not group:
                raise ValueError(f"The random term {term!r} needs terms before '|' and a grouping "
                                 f"factor after it.")
            random_terms.append(RandomTerm(expr, group, correlated))
        elif "|" in term:
            raise ValueError(f"The term {term!r} has '|' outside parentheses; write random terms "
                             f"as '(terms | group)'.")
        else:
            fixed_terms.append(term)
    fixed = " + ".join(fixed_terms).replace("+ -", "- ").replace("+-", "- ") or "1"
    if fixed.startswith("- "):
        fixed = "1 " + fixed
    return ParsedFormula(formula, response, fixed, tuple(random_terms))


def _group_parts(group: str) -> list[str]:
    """Expand ``a/b/c`` to ``[a, a:b, a:b:c]``; a plain or ``a:b`` group stays itself."""
    pieces = [p.strip() for p in group.split("/")]
    if any(not p for p in pieces):
        raise ValueError(f"The grouping factor {group!r} has an empty part around '/'.")
    return [":".join(pieces[: i + 1]) for i in range(len(pieces))]


def _group_variables(group: str) -> list[str]:
    return [v.strip() for v in re.split(r"[/:]", group) if v.strip()]


def _rename_intercept(names: list[str]) -> list[str]:
    return [INTERCEPT if n == "Intercept" else n for n in names]


def _expr_variables(expr: str) -> set[str]:
    try:
        return set(Formula(expr).required_variables)
    except Exception as exc:  # formulaic raises many types for syntax errors
        raise ValueError(f"The model formula part {expr!r} could not be read: {exc}.") from None


def prepare_newdata(spec: ModelSpec, newdata: pd.DataFrame) -> pd.DataFrame:
    """New rows coded as the fit's data were: the fit's categories, booleans as 0/1.

    Raises ValueError naming a level the model was not fitted on.
    """
    nd = newdata.copy()
    for col, cats in spec.design["categories"].items():
        if col in nd.columns:
            bad = set(pd.Series(nd[col]).dropna().astype(str).unique()) - {str(c) for c in cats}
            if bad:
                raise ValueError(f"Column {col!r} has level(s) {sorted(bad)} that the model was not "
                                 f"fitted on (known: {list(cats)}).")
            nd[col] = pd.Categorical(nd[col].astype(object).where(nd[col].notna()),
                                     categories=cats)
    for col in spec.design.get("bool_cols", ()):
        if col in nd.columns:
            nd[col] = nd[col].astype(float)
    return nd


def fixed_matrix(spec: ModelSpec, newdata: pd.DataFrame) -> np.ndarray:
    """The fixed-effects model matrix of *spec* evaluated on *newdata* (same columns as ``spec.X``).

    Categorical columns are given the categories seen in the fit, so that a new frame with one level
    only still produces every column.
    """
    nd = prepare_newdata(spec, newdata)
    mm = spec.design["model_spec"].get_model_matrix(nd, na_action="ignore")
    names = _rename_intercept(list(mm.columns))
    frame = pd.DataFrame(np.asarray(mm, dtype=float), columns=names, index=nd.index)
    return frame[spec.fixed_names].to_numpy()


def _exclusion_reasons(na: pd.DataFrame, any_na: np.ndarray, used: list[str]) -> pd.DataFrame:
    """One row per excluded observation: its index label and "missing value in a, b"."""
    rows = np.flatnonzero(any_na)
    if rows.size == 0:
        return pd.DataFrame([], columns=["row", "reason"])
    pattern = na.to_numpy()[rows]
    # One sentence per distinct pattern of missing columns, not one per row.
    uniq, inverse = np.unique(pattern, axis=0, return_inverse=True)
    texts = np.array([f"missing value in {', '.join(c for c, m in zip(used, u) if m)}"
                      for u in uniq], dtype=object)
    return pd.DataFrame({"row": list(na.index[rows]), "reason": list(texts[inverse.ravel()])})


def _full_rank_columns(X: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the columns of *X* kept by a column-pivoted QR rank check.

    The reference is LAPACK's pivoted QR (``geqp3``) of the n×p matrix *X*: rank = number of
    |R_kk| above ``max|R_kk| · max(n, p) · eps · 10``, keep the first *rank* pivots. That costs
    O(n p²) and dominated :func:`build_spec` on large data, so it is only run when needed: first
    the p×p Gram matrix XᵀX (one BLAS pass) gives the eigenvalues λ of XᵀX = σ(X)². For any QR of
    a column permutation of X, σ_min(X) ≤ |R_kk| ≤ max |R_kk| ≤ σ_max(X), so when
    λ_min / λ_max ≥ δ the QR ratio min|R_kk| / max|R_kk| is at least √δ, far above the QR
    tolerance, and every column is kept: the QR would keep them all. δ = max(1e-8, 1e3 n eps)
    exceeds the rounding error of the computed Gram eigenvalues (≲ n eps relative to λ_max) by
    orders of magnitude, so the shortcut is never taken for a matrix the QR would call
    deficient. Otherwise (rank deficient, ill-conditioned or non-finite) the pivoted QR of X is
    run as before, so which columns are dropped is unchanged.
    """
    n, p = X.shape
    if p == 0:
        return np.arange(0)
    eps = np.finfo(float).eps
    G = X.T @ X
    if np.isfinite(G).all():
        lam = np.linalg.eigvalsh(G)
        delta = max(1e-8, 1e3 * n * eps)
        if lam[-1] > 0 and lam[0] >= delta * lam[-1]:
            return np.arange(p)
    import scipy.linalg as sla

    _, r, piv = sla.qr(X, mode="economic", pivoting=True)
    d = np.abs(np.diag(r))
    tol = d.max() * max(X.shape) * eps * 10 if d.size else 0.0
    rank = int((d > tol).sum())
    return np.sort(piv[:rank])


def build_spec(data: pd.DataFrame, formula: str) -> ModelSpec:
    """Evaluate an lme4 formula on a data frame.

    Parameters
    ----------
    data : DataFrame
        One row an observation. Categorical columns keep their category order (the first category
        is the reference level); string columns are treated as factors with sorted levels, as R does.
    formula : str
        lme4 syntax, e.g. ``"value ~ post * technique + session_number + (post | patient_id)"``.

    Returns
    -------
    ModelSpec
        ``y``, ``X`` and one :class:`RandomBlock` per random term, for the rows without missing
        values in any variable used; the other rows are in ``spec.excluded`` (columns row, reason).
        ``spec.notes`` lists levels dropped because no used row has them and rank-deficient columns.

    Raises
    ------
    ValueError
        Bad formula, unknown column, non-numeric response, no usable rows, no random term.
    """
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"The data must be a pandas DataFrame, got {type(data).__name__}.")
    parsed = parse_formula(formula)
    if not parsed.random:
        raise ValueError(f"The formula {formula!r} has no random-effects term such as "
                         f"'(1 | patient_id)'; a mixed model needs at least one.")
    response = parsed.response
    if response not in data.columns:
        raise ValueError(f"The response {response!r} is not a column of the data (columns: "
                         f"{', '.join(map(str, data.columns))}).")
    fixed_vars = _expr_variables(parsed.fixed)
    random_vars: set[str] = set()
    group_vars: list[str] = []
    for rt in parsed.random:
        random_vars |= _expr_variables(rt.expr)
        group_vars += _group_variables(rt.group)
    used = [response] + sorted((fixed_vars | random_vars | set(group_vars)) - {response})
    missing_cols = [v for v in used if v not in data.columns]
    if missing_cols:
        raise ValueError(f"The formula {formula!r} names column(s) {missing_cols} that the data do "
                         f"not have (columns: {', '.join(map(str, data.columns))}).")
    y_col = data[response]
    if not (pd.api.types.is_numeric_dtype(y_col) or pd.api.types.is_bool_dtype(y_col)) or \
            isinstance(y_col.dtype, pd.CategoricalDtype):
        raise ValueError(f"The response {response!r} must be numeric; it has type {y_col.dtype} "
                         f"(first values: {list(y_col.head(3))}).")

    # Rows with missing values in any used variable are excluded, each with its reason.
    na = data[used].isna()
    any_na = na.to_numpy().any(axis=1)
    excluded = _exclusion_reasons(na, any_na, used)
    df = data.loc[~any_na].copy()
    if len(df) == 0:
        raise ValueError(f"No row of the data has all of {used} present, so nothing can be fitted.")

    notes: list[str] = []
    categories: dict[str, list] = {}
    bool_cols: list[str] = []
    for col in sorted(fixed_vars | random_vars):
        s = df[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            codes = s.cat.codes.to_numpy()
            counts = np.bincount(codes[codes >= 0], minlength=len(s.cat.categories))
            unused = [c for c, k in zip(s.cat.categories, counts) if k == 0]
            if unused:
                notes.append(f"level(s) {unused} of {col!r} have no data among the rows used and "
                             f"were dropped")
                df[col] = s.cat.remove_unused_categories()
            categories[col] = list(df[col].cat.categories)
        elif s.dtype == object or pd.api.types.is_string_dtype(s) or pd.api.types.is_bool_dtype(s):
            if pd.api.types.is_bool_dtype(s):
                df[col] = s.astype(int)
                bool_cols.append(col)
                continue
            df[col] = pd.Categorical(s.astype(str))
            categories[col] = list(df[col].cat.categories)

    y = df[response].to_numpy(dtype=float)
    try:
        mm = model_matrix(parsed.fixed, df, na_action="raise")
    except Exception as exc:
        raise ValueError(f"The fixed part {parsed.fixed!r} could not be evaluated on the data: "
                         f"{exc}.") from None
    X = np.asarray(mm, dtype=float)
    names = _rename_intercept(list(mm.columns))
    # lme4 drops rank-deficient fixed columns with a message; so do we (pivoted QR).
    keep = _full_rank_columns(X)
    if keep.size < X.shape[1]:
        kept = set(keep.tolist())
        dropped = [names[i] for i in range(X.shape[1]) if i not in kept]
        notes.append(f"fixed-effect model matrix is rank deficient, so dropping "
                     f"{len(dropped)} column(s): {', '.join(dropped)}")
        X = X[:, keep]
        names = [names[i] for i in keep]

    blocks: list[RandomBlock] = []
    random_exprs: dict[tuple[str, tuple[str, ...]], str] = {}
    for rt in parsed.random:
        try:
            zmm = model_matrix(rt.expr, df, na_action="raise")
        except Exception as exc:
            raise ValueError(f"The random term ({rt.expr} | {rt.group}) could not be evaluated: "
                             f"{exc}.") from None
        Zfull = np.asarray(zmm, dtype=float)
        znames = _rename_intercept(list(zmm.columns))
        if Zfull.shape[1] == 0:
            raise ValueError(f"The random term ({rt.expr} | {rt.group}) has no columns.")
        for group in _group_parts(rt.group):
            gvars = group.split(":")
            if len(gvars) == 1:
                labels = df[gvars[0]].astype(str)
            else:
                labels = df[gvars].astype(str).agg(":".join, axis=1)
            codes, levels = pd.factorize(labels, sort=True)
            parts = [(Zfull, znames)] if rt.correlated else \
                [(Zfull[:, [j]], [znames[j]]) for j in range(Zfull.shape[1])]
            for Z, tn in parts:
                random_exprs[(group, tuple(tn))] = rt.expr
                blocks.append(RandomBlock(group=group, terms=list(tn), Z=np.ascontiguousarray(Z),
                                          codes=codes.astype(np.int64), levels=pd.Index(levels),
                                          correlated=rt.correlated))
    # lme4 (mkReTrms) orders terms by decreasing number of levels; the sort is stable.
    blocks.sort(key=lambda b: -b.n_levels)

    design = {"model_spec": mm.model_spec, "categories": categories, "used": used,
              "parsed": parsed, "random_exprs": random_exprs, "bool_cols": bool_cols}
    return ModelSpec(formula=formula, response=response, y=y, X=X, fixed_names=names,
                     blocks=blocks, data=df, excluded=excluded, design=design,
                     fixed_formula=parsed.fixed_formula, notes=notes)
