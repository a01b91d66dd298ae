"""Linear mixed models on data larger than memory: the fast engine's statistics inside DuckDB.

A DuckDB relation, a Parquet file or a folder of Parquet files is never read into pandas: the
model-matrix columns are written as SQL from the reference design (``scale.chunks``), and two
aggregate queries compute the per-patient sums (``GROUP BY`` the grouping factor) and the global
cross-products. Only those sums reach Python; the fit is then the fast engine's, exactly as in
memory. A small sample (the first rows, plus a row for any factor level they lack) fixes the
design, and the SQL columns are checked against the formula library's on that sample.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.scale import chunks, gram

__all__ = ["is_duckdb_source", "sql_columns", "fit_mixed_duckdb", "SAMPLE_ROWS"]

#: Rows read into pandas to fix the design (plus one a missing factor level).
SAMPLE_ROWS = 20_000


def is_duckdb_source(data: Any) -> bool:
    """A DuckDB relation, or a path to a Parquet file or a folder of Parquet files."""
    if type(data).__module__.split(".")[0] == "duckdb":
        return True
    if isinstance(data, (str, Path)) and "://" not in str(data):
        p = Path(data)
        return p.suffix.lower() in (".parquet", ".pq") or (p.is_dir() and any(p.glob("*.parquet")))
    return False


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_LEVEL = re.compile(r"^(?:C\()?([A-Za-z_][A-Za-z0-9_.]*)\)?\[T\.(.+)\]$")


def sql_columns(names: list[str], numeric: set[str]) -> list[str]:
    """SQL expressions of model-matrix columns named as the formula library names them.

    ``(Intercept)`` → 1; ``x`` → x as a double; ``f[T.a]`` (treatment coding) → 1 where f = 'a';
    ``a:b`` → the product. Anything else is a ValueError naming the column.
    """
    out = []
    for name in names:
        factors = []
        for part in name.split(":"):
            if part == "(Intercept)":
                factors.append("1.0")
                continue
            m = _LEVEL.match(part)
            if m:
                col, level = m.groups()
                factors.append(f"(CASE WHEN CAST({_quote(col)} AS VARCHAR) = {_literal(level)} "
                               f"THEN 1.0 ELSE 0.0 END)")
            elif part in numeric:
                factors.append(f"CAST({_quote(part)} AS DOUBLE)")
            else:
                raise ValueError(f"the model-matrix column {name!r} cannot be computed inside "
                                 f"DuckDB yet (plain columns, treatment-coded factors and their "
                                 f"products can); fit a sample in memory instead")
        out.append(" * ".join(factors))
    return out


def _relation(con: Any, data: Any) -> tuple[Any, str]:
    """(relation, label) for a relation or a Parquet path."""
    if type(data).__module__.split(".")[0] == "duckdb":
        return data, "a DuckDB relation"
    p = Path(data)
    pattern = str(p / "*.parquet") if p.is_dir() else str(p)
    return con.read_parquet(pattern), str(p)


def _sample(rel: Any, formula: str, categories: dict[str, list[str]] | None = None
            ) -> pd.DataFrame:
    """The first rows, plus a row for each factor level they lack; *categories* (column ->
    levels in order) makes those columns categoricals, so that the reference level is the
    one an in-memory fit of the Study's frame takes."""
    out = _sample_rows(rel, formula)
    return chunks.with_categories(out, categories)


def _sample_rows(rel: Any, formula: str) -> pd.DataFrame:
    head = rel.limit(SAMPLE_ROWS).df()
    ref = chunks.reference_spec(head, formula)
    extra = []
    for col in chunks.factors_of(ref):
        seen = set(head[col].dropna().astype(str))
        levels = {str(r[0]) for r in rel.select(_quote(col)).distinct().fetchall()
                  if r[0] is not None}
        for level in sorted(levels - seen):
            extra.append(rel.filter(f"CAST({_quote(col)} AS VARCHAR) = {_literal(level)}")
                         .limit(1).df())
    return pd.concat([head, *extra], ignore_index=True) if extra else head


def _design_sql(ref: Any, sample: pd.DataFrame) -> tuple[list[str], list[str], str, list[str]]:
    """SQL of X's and Z's columns and of y, checked against the formula library on *sample*."""
    import duckdb

    numeric = {c for c in sample.columns if pd.api.types.is_numeric_dtype(sample[c])
               or pd.api.types.is_bool_dtype(sample[c])}
    xs = sql_columns(ref.fixed_names, numeric)
    zs = sql_columns([t for b in ref.blocks for t in b.terms], numeric)
    y = f"CAST({_quote(ref.response)} AS DOUBLE)"
    used = list(ref.design.variables)
    where = " AND ".join(f"{_quote(c)} IS NOT NULL" for c in used)
    con = duckdb.connect()
    try:
        con.register("sample_rows", sample)
        got = con.sql(f"SELECT {', '.join(xs)} FROM sample_rows WHERE {where}").fetchnumpy()
    finally:
        con.close()
    arrays = chunks.chunk_arrays(ref, sample)
    X = np.column_stack([np.asarray(v, float) for v in got.values()]) if got else \
        np.zeros((0, 0))
    if X.shape != arrays["X"].shape or not np.allclose(X, arrays["X"], rtol=0, atol=0):
        raise ValueError("the SQL model matrix differs from the formula library's on the sample; "
                         "this formula cannot be fitted inside DuckDB")
    return xs, zs, y, used


def _aggregates(rel: Any, ref: Any, xs: list[str], zs: list[str], y: str, used: list[str],
                group: str) -> tuple[chunks.ChunkStats, int]:
    p, q = len(xs), len(zs)
    where = " AND ".join(f"{_quote(c)} IS NOT NULL" for c in used)
    cols = [f"{_quote(group)} AS g", f"{y} AS y"] + [f"{e} AS x{i}" for i, e in enumerate(xs)] + \
        [f"{e} AS z{i}" for i, e in enumerate(zs)]
    inner = rel.filter(where).select(", ".join(cols))
    _keys, _cells, glob = gram.cells_sql(0, 0, p)
    XtX, Xty, yty, n = gram.global_from_row(inner.aggregate(glob).fetchall()[0], p)
    per = [f"SUM(z{a} * z{b}) AS zz_{a}_{b}" for a in range(q) for b in range(a, q)] + \
        [f"SUM(z{a} * x{b}) AS zx_{a}_{b}" for a in range(q) for b in range(p)] + \
        [f"SUM(z{a} * y) AS zy_{a}" for a in range(q)] + ["COUNT(*) AS n_rows"]
    grp = inner.aggregate(", ".join(["g"] + per), "g").order("g").fetchnumpy()
    G = len(grp["n_rows"])
    labels = pd.Index(np.asarray(grp["g"], dtype=object))
    ZtZ = np.empty((q, q, G))
    for a in range(q):
        for b in range(a, q):
            ZtZ[a, b] = ZtZ[b, a] = grp[f"zz_{a}_{b}"]
    ZtX = np.empty((q, p, G))
    for a in range(q):
        for b in range(p):
            ZtX[a, b] = grp[f"zx_{a}_{b}"]
    Zty = np.vstack([grp[f"zy_{a}"] for a in range(q)]) if q else np.zeros((0, G))
    total = int(rel.aggregate("COUNT(*)").fetchall()[0][0])
    stats = chunks.ChunkStats(n=n, XtX=XtX, Xty=Xty, yty=yty, ZtZ=ZtZ, ZtX=ZtX, Zty=Zty,
                              rows=np.asarray(grp["n_rows"], np.int64), excluded=total - n)
    stats.labels = labels
    return stats, G


def _fit_crossed(rel: Any, ref: Any, xs: list[str], zs: list[str], y: str, used: list[str],
                 label: str, *, reml: bool, df_method: str, options: dict | None) -> Any:
    """Several grouping factors: the cell table (``GROUP BY`` every factor) and the global sums
    inside DuckDB, the sparse engine's fit from the Gram blocks they add up to."""
    groups, _owner = gram.random_groups(ref)
    p, q = len(xs), len(zs)
    where = " AND ".join(f"{_quote(c)} IS NOT NULL" for c in used)
    cols = [f"CAST({_quote(g)} AS VARCHAR) AS g{k}" for k, g in enumerate(groups)] + \
        [f"{y} AS y"] + [f"{e} AS x{i}" for i, e in enumerate(xs)] + \
        [f"{e} AS z{i}" for i, e in enumerate(zs)]
    inner = rel.filter(where).select(", ".join(cols))
    keys, cell_aggs, glob = gram.cells_sql(len(groups), q, p)
    cells = inner.aggregate(cell_aggs, keys).fetchnumpy()
    XtX, Xty, yty, n = gram.global_from_row(inner.aggregate(glob).fetchall()[0], p)
    total = int(rel.aggregate("COUNT(*)").fetchall()[0][0])
    g = gram.gram_from_cells(cells, (XtX, Xty, yty, n, total - n), ref)
    n_cells = len(cells["n_rows"])
    del cells  # the cell table (one row per patient and therapist) is not needed in the fit
    sizes = ", ".join(f"{len(lab)} {grp}" for grp, lab in zip(g.groups, g.labels))
    notes = [f"fitted inside DuckDB from {label}: the sparse engine's Gram blocks of [Z X y] by "
             f"GROUP BY {', '.join(groups)} ({sizes}; {n_cells} cells, {n} rows); "
             f"no row entered pandas beyond a {SAMPLE_ROWS}-row design sample"]
    return gram.fit_gram(g, ref, reml=reml, df_method=df_method, options=options, notes=notes)


def fit_mixed_duckdb(data: Any, formula: str, *, reml: bool = True,
                     df_method: str = "satterthwaite", options: dict | None = None,
                     categories: dict[str, list[str]] | None = None, label: str | None = None,
                     blups: bool = False) -> Any:
    """Fit *formula* with the sums computed inside DuckDB (rows never enter pandas).

    Parameters
    ----------
    data : duckdb.DuckDBPyRelation, str or Path
        A relation, a Parquet file, or a folder of Parquet files.
    formula : str
        lme4 syntax; random terms on one grouping factor (the fast engine's per-group sums) or
        on several plain columns, crossed or nested (the sparse engine's Gram blocks, summed
        by ``GROUP BY`` of all of them: ``scale.gram``); fixed columns plain numbers,
        treatment-coded factors and their interactions.
    reml, df_method, options
        As :func:`~mfr_outcomes.models.fit.fit_mixed` (Kenward-Roger needs rows in memory).
    categories : dict, optional
        Factor column -> levels in order (the first is the reference level), as the in-memory
        Study's categoricals have them; else the formula library's order.
    label : str, optional
        How the source is named in the notes.
    blups : bool
        Compute the groups' conditional modes from the per-group statistics (no second pass
        over the rows is needed: ZᵢᵀZᵢ, ZᵢᵀX and Zᵢᵀy are all they depend on).

    Returns
    -------
    MixedFit
        Fixed effects (Satterthwaite df from the statistics) and variance components; ``notes``
        says what needs rows (BLUPs, fitted values) and is not computed.
    """
    import duckdb

    from mfr_outcomes.models.fast import FastEngine
    from mfr_outcomes.models.spec import theta_lower_bounds, theta_start
    from mfr_outcomes.scale.rowfree import rowfree_fit

    if df_method == "kenward-roger":
        raise ValueError("Kenward-Roger df need the rows in memory; use satterthwaite")
    crossed = len(chunks.group_names(formula)) > 1
    group = "" if crossed else chunks.single_group(formula)
    con = duckdb.connect()
    try:
        rel, where = _relation(con, data)
        label = label or where
        sample = _sample(rel, formula, categories)
        ref = chunks.reference_spec(sample, formula)
        xs, zs, y, used = _design_sql(ref, sample)
        if crossed:
            return _fit_crossed(rel, ref, xs, zs, y, used, label, reml=reml,
                                df_method=df_method, options=options)
        merged, G = _aggregates(rel, ref, xs, zs, y, used, group)
    finally:
        con.close()
    stats, lay = chunks.to_engine(merged, ref)
    result = FastEngine().fit_stats(stats, lay, reml=reml, options=options,
                                    lower=theta_lower_bounds(ref), theta0=theta_start(ref),
                                    light=True)
    notes = [f"fitted inside DuckDB from {label}: per-{group} sums by GROUP BY ({G} groups, "
             f"{merged.n} rows); no row entered pandas beyond a {SAMPLE_ROWS}-row design sample"]
    if merged.excluded:
        notes.append(f"{merged.excluded} row(s) with a missing value in the model's variables "
                     f"excluded")
    table = None
    if blups:
        table = chunks.stats_blups(merged, ref, result.theta, result.beta, result.sigma)
        notes.append("BLUPs (conditional modes) computed from the per-group statistics; fitted "
                     "values, residuals and Kenward-Roger df need the rows and are not computed")
    else:
        notes.append("BLUPs, fitted values, residuals and Kenward-Roger df need the rows and are "
                     "not computed; fixed effects (Satterthwaite df from the statistics) and "
                     "variance components are")
    return rowfree_fit(ref, result, merged, reml, df_method, notes, table)
