"""A ModelSpec without rows, for fits computed from statistics (summaries, Dask, DuckDB)."""
from __future__ import annotations

from dataclasses import dataclass

from mfr_outcomes.models.spec import ModelSpec

__all__ = ["RowFreeSpec"]


@dataclass
class RowFreeSpec(ModelSpec):
    """A ModelSpec whose rows stayed elsewhere: the number of readings is stated, not counted."""

    n_rows: int = 0

    @property
    def n(self) -> int:  # type: ignore[override]
        return self.n_rows
