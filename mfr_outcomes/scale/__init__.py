"""Registry scale: site summaries for multi-site fits, fits inside DuckDB and on Dask clusters.

Each module is imported only where it is used (DuckDB and Dask are heavy).
"""
from __future__ import annotations

__all__: list[str] = []
