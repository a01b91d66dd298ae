"""Mixed-effects models: lme4 formulas, fitting engines, MixedFit and lmerTest-style inference.

Importing this package registers the engines: "pls" (dense penalised least squares, any random
structure), "sparse" (blocked sparse Cholesky, any random structure at scale),
"statsmodels" (MixedLM, one grouping factor) and, when its module is present, "fast".
"""
from __future__ import annotations

from mfr_outcomes.models import pls, sparse, statsmodels_engine  # noqa: F401  (register engines)
from mfr_outcomes.models.spec import AUTO_ORDER, ENGINES, ModelSpec, RandomBlock

try:  # the fast engine is written separately; it plugs in when present
    from mfr_outcomes.models import fast  # noqa: F401
except ImportError:  # pragma: no cover
    pass

from mfr_outcomes.models.fit import MixedFit, fit_mixed  # noqa: E402
from mfr_outcomes.models.formula import build_spec, parse_formula  # noqa: E402
from mfr_outcomes.models.inference import compare  # noqa: E402

__all__ = ["fit_mixed", "MixedFit", "compare", "build_spec", "parse_formula", "ENGINES",
           "AUTO_ORDER", "ModelSpec", "RandomBlock"]
