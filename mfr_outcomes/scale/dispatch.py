"""Where ``fit_mixed`` sends data that is not a pandas DataFrame: Dask frames to the cluster,
DuckDB relations and Parquet sources into DuckDB."""
from __future__ import annotations

from typing import Any

__all__ = ["fit_elsewhere"]


def fit_elsewhere(data: Any, formula: str, *, reml: bool, engine: str, df_method: str,
                  options: dict | None) -> Any:
    """Fit *formula* on a Dask DataFrame, a DuckDB relation or a Parquet path (str ending in
    ``.parquet`` or a folder of them); ValueError naming the type otherwise."""
    from mfr_outcomes.scale.dask_fit import fit_mixed_dask, is_dask_frame

    if engine not in ("auto", "fast"):
        raise ValueError(f"out of memory only the fast engine is available, not {engine!r}")
    if is_dask_frame(data):
        return fit_mixed_dask(data, formula, reml=reml, df_method=df_method, options=options)
    from mfr_outcomes.scale.duckdb_source import fit_mixed_duckdb, is_duckdb_source

    if is_duckdb_source(data):
        return fit_mixed_duckdb(data, formula, reml=reml, df_method=df_method, options=options)
    raise ValueError(f"The data must be a pandas DataFrame, a Dask DataFrame, a DuckDB relation "
                     f"or a Parquet path; got {type(data).__name__}.")
