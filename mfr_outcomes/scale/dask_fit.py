"""Linear mixed models on a Dask DataFrame: map the fast engine's statistics, reduce, fit.

The frame is shuffled so that every patient sits in one partition; each partition is turned into
the fast engine's per-patient sufficient statistics (``scale.chunks``); a tree of ``merge`` steps
brings them to the client, which fits θ, β and σ exactly as ``fit_mixed`` does in memory. The
rows never leave the workers. The patients' conditional modes (BLUPs) need each patient's rows
with the final estimates: a second pass over the partitions computes them there.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from mfr_outcomes.scale import chunks
from mfr_outcomes.scale.rowfree import rowfree_fit

__all__ = ["is_dask_frame", "fit_mixed_dask", "tree_reduce"]


def is_dask_frame(data: Any) -> bool:
    """True for a Dask DataFrame (without importing Dask for other data)."""
    return type(data).__module__.split(".")[0] in ("dask", "dask_expr") and \
        hasattr(data, "npartitions")


def _sample(ddf: Any, formula: str, categories: dict[str, list[str]] | None = None
            ) -> pd.DataFrame:
    """The first partition, plus rows for any factor level it lacks; *categories* (column ->
    levels in order) makes those columns categoricals (the first level the reference)."""
    out = _sample_rows(ddf, formula)
    return chunks.with_categories(out, categories)


def _sample_rows(ddf: Any, formula: str) -> pd.DataFrame:
    import dask

    head = ddf.get_partition(0).compute()
    ref = chunks.reference_spec(head, formula)
    extra = []
    for col in chunks.factors_of(ref):
        if col not in ddf.columns:
            continue
        seen = set(head[col].dropna().astype(str))
        levels = ddf[col].dropna().astype(str).unique()
        (levels,) = dask.compute(levels)
        missing = sorted(set(levels) - seen)
        if missing:
            rows = ddf[ddf[col].astype(str).isin(missing)]
            extra.append(rows.drop_duplicates(subset=[col]).compute())
    return pd.concat([head, *extra], ignore_index=True) if extra else head


def tree_reduce(parts: list[Any], combine: Any, fan_in: int = 8) -> Any:
    """Reduce delayed *parts* by *combine* (a function of a list) in a tree of fan-in *fan_in*."""
    import dask

    level = list(parts)
    while len(level) > 1:
        level = [dask.delayed(combine)(level[i:i + fan_in])
                 for i in range(0, len(level), fan_in)]
    return level[0]


def _fit_crossed(ddf: Any, ref: Any, *, reml: bool, df_method: str,
                 options: dict | None) -> Any:
    """Several grouping factors: cell tables per partition, summed in a tree, fitted by the
    sparse engine from the Gram blocks (``scale.gram``); the BLUPs come with it."""
    import dask

    from mfr_outcomes.scale import gram

    used = [c for c in ref.design.variables if c in ddf.columns]
    parts = [dask.delayed(gram.frame_cells)(p, ref) for p in ddf[used].to_delayed()]
    (cells, glob), = dask.compute(tree_reduce(parts, gram.merge_cells))
    g = gram.gram_from_cells({c: cells[c].to_numpy() for c in cells.columns}, glob, ref)
    sizes = ", ".join(f"{len(lab)} {grp}" for grp, lab in zip(g.groups, g.labels))
    notes = [f"fitted on a Dask DataFrame: {ddf.npartitions} partitions, each giving the sparse "
             f"engine's Gram blocks of [Z X y] by {', '.join(g.groups)} ({sizes}; {len(cells)} "
             f"cells), summed in a tree; {g.n} rows used"]
    return gram.fit_gram(g, ref, reml=reml, df_method=df_method, options=options, notes=notes)


def fit_mixed_dask(ddf: Any, formula: str, *, reml: bool = True,
                   df_method: str = "satterthwaite", options: dict | None = None,
                   blups: bool = True, categories: dict[str, list[str]] | None = None) -> Any:
    """Fit *formula* on a Dask DataFrame, on whatever cluster its scheduler is.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        One row a reading; the formula's grouping factor (the patient) is the partition key.
    formula : str
        lme4 syntax with random terms on one grouping factor (the partition key), or on several
        plain columns, crossed or nested: then each partition (no shuffle) gives its cell table
        of the sparse engine's Gram blocks (``scale.gram``), summed in a tree.
    reml, df_method, options
        As :func:`~mfr_outcomes.models.fit.fit_mixed` (Kenward-Roger needs the rows in memory).
    blups : bool
        Compute the patients' conditional modes by a second pass over the partitions.
    categories : dict, optional
        Factor column -> levels in order (the first is the reference level).

    Returns
    -------
    MixedFit
        ``fit.notes`` says how it was computed and what is not available without rows.
    """
    import dask

    from mfr_outcomes.models.fast import FastEngine
    from mfr_outcomes.models.spec import theta_lower_bounds, theta_start

    if df_method == "kenward-roger":
        raise ValueError("Kenward-Roger df need the rows in memory; use satterthwaite on Dask")
    crossed = len(chunks.group_names(formula)) > 1
    group = "" if crossed else chunks.single_group(formula)
    ref = chunks.reference_spec(_sample(ddf, formula, categories), formula)
    if crossed:
        return _fit_crossed(ddf, ref, reml=reml, df_method=df_method, options=options)
    used = [c for c in ref.design.variables if c in ddf.columns]
    by_patient = ddf[used].shuffle(on=group, method="tasks")
    parts = [dask.delayed(chunks.chunk_stats)(p, ref) for p in by_patient.to_delayed()]
    (merged,) = dask.compute(tree_reduce(parts, chunks.merge))
    stats, lay = chunks.to_engine(merged, ref)
    result = FastEngine().fit_stats(stats, lay, reml=reml, options=options,
                                    lower=theta_lower_bounds(ref), theta0=theta_start(ref),
                                    light=True)
    notes = [f"fitted on a Dask DataFrame: {by_patient.npartitions} partitions by {group}, "
             f"per-patient statistics mapped and reduced in a tree; {merged.n} rows used"]
    if merged.excluded:
        notes.append(f"{merged.excluded} row(s) with a missing value in the model's variables "
                     f"excluded")
    table = None
    if blups:
        passes = [dask.delayed(chunks.chunk_blups)(p, ref, result.theta, result.beta,
                                                   result.sigma)
                  for p in by_patient.to_delayed()]
        (frames,) = dask.compute(passes)
        table = pd.concat(frames, ignore_index=True)
        notes.append("BLUPs (conditional modes) computed by a second pass over the partitions")
    notes.append("Kenward-Roger df, fitted values and residuals need the rows in memory and are "
                 "not available; fixed effects (Satterthwaite df from the statistics) and "
                 "variance components are")
    return rowfree_fit(ref, result, merged, reml, df_method, notes, table)
