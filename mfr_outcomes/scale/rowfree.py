"""A ModelSpec without rows, for fits computed from statistics (summaries, Dask, DuckDB)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.models.spec import ModelSpec

__all__ = ["RowFreeSpec", "rowfree_fit"]


@dataclass
class RowFreeSpec(ModelSpec):
    """A ModelSpec whose rows stayed elsewhere: the number of readings is stated, not counted."""

    n_rows: int = 0

    @property
    def n(self) -> int:  # type: ignore[override]
        return self.n_rows


def rowfree_fit(ref: Any, result: Any, merged: Any, reml: bool, df_method: str,
                notes: list[str], table: pd.DataFrame | None) -> Any:
    """A MixedFit around an engine result computed from statistics (``scale.chunks.ChunkStats``
    in *merged*), with the BLUP table of a second pass when there is one."""
    from mfr_outcomes.models.fit import MixedFit
    from mfr_outcomes.models.spec import RandomBlock

    G = merged.Zty.shape[1]
    codes = np.repeat(np.arange(G), merged.rows)
    levels = pd.RangeIndex(G)
    blups_list: list[np.ndarray] = []
    if table is not None:
        first = ref.blocks[0]
        levels = pd.Index(table.loc[(table["group"] == first.group)
                                    & (table["term"] == first.terms[0]), "level"].to_numpy())
        condvar = []
        for b in ref.blocks:
            sub = table[table["group"] == b.group]
            blups_list.append(np.column_stack([sub.loc[sub["term"] == t, "estimate"].to_numpy()
                                               for t in b.terms]))
            cv = np.full((len(levels), b.q, b.q), np.nan)  # conditional variances: diagonal
            for j, t in enumerate(b.terms):
                cv[:, j, j] = sub.loc[sub["term"] == t, "cond_sd"].to_numpy() ** 2
            condvar.append(cv)
        result.blups = blups_list
        result.blup_condvar = condvar
    blocks = [RandomBlock(group=b.group, terms=list(b.terms), Z=np.zeros((0, b.q)), codes=codes,
                          levels=levels, correlated=b.correlated) for b in ref.blocks]
    spec = RowFreeSpec(formula=ref.formula, response=ref.response, y=np.zeros(0),
                       X=np.zeros((0, ref.p)), fixed_names=list(ref.fixed_names), blocks=blocks,
                       data=pd.DataFrame(), design=ref.design, fixed_formula=ref.fixed_formula,
                       notes=list(ref.notes), n_rows=int(merged.n))
    fit = MixedFit(spec, result, reml=reml, df_method=df_method,
                   engine_reason="fast: sufficient statistics computed out of memory")
    fit.notes = notes
    fit.diagnostics["notes"] = list(notes)
    return fit
