"""mfr_outcomes: outcomes analytics for myofascial release therapy of sciatica and hip pain."""
from __future__ import annotations

__version__ = "0.1.0"
