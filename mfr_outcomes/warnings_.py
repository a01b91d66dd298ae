"""Warning classes: statistical cautions and data cautions that users can filter by category."""
from __future__ import annotations

__all__ = ["MfrWarning", "ModelWarning", "DataWarning"]


class MfrWarning(UserWarning):
    """Base class of every caution this package raises."""


class ModelWarning(MfrWarning):
    """A statistical caution about a fit: singular, not converged, too few groups, dropped level."""


class DataWarning(MfrWarning):
    """A caution about the data: rows excluded, readings missing, a measure absent."""
