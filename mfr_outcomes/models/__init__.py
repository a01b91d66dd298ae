"""Mixed-effects models: lme4 formulas, fitting engines, MixedFit and lmerTest-style inference.

The engines (imported when first used, see ``spec.ENGINES``): "fast" (sufficient statistics, one grouping factor
and a nesting level), "sparse" (blocked sparse Cholesky, any random structure at scale), "pls"
(dense penalised least squares, any random structure; the reference) and "statsmodels" (MixedLM,
one grouping factor). ``engine="auto"`` takes the one of highest priority
that fits the model exactly. The layering is formula → ModelSpec → Engine → Fit; see
docs/model_layer.md.
"""
from __future__ import annotations

# registers the fast engine; the others load on first use (spec.ENGINES)
from mfr_outcomes.models import fast  # noqa: F401
from mfr_outcomes.models.base import MixedFitBase
from mfr_outcomes.models.checks import ModelCheckError
from mfr_outcomes.models.fit import LinearMixedFit, MixedFit, ModelFitError, fit_mixed
from mfr_outcomes.models.formula import build_spec, parse_formula
from mfr_outcomes.models.inference import compare
from mfr_outcomes.models.spec import AUTO_ORDER, ENGINES, ModelSpec, RandomBlock

__all__ = ["fit_mixed", "MixedFit", "LinearMixedFit", "MixedFitBase", "ModelCheckError",
           "ModelFitError", "compare", "build_spec", "parse_formula", "ENGINES",
           "AUTO_ORDER", "ModelSpec", "RandomBlock"]
