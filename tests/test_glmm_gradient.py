"""The exact Laplace gradient of the general (any random structure) backend against central
differences of the Laplace deviance: crossed factors (eliminated factorisation), a correlated
random slope (dense factorisation), canonical and non-canonical links."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.families import get_family
from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.glmm import make_backend
from mfr_outcomes.models.glmm_pirls import GlmmData

DATA = Path(__file__).parent / "reference" / "data"

CASES = {
    "crossed": ("glmer_verbagg.csv",
                "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
                [1.1, 0.6]),
    "slope": ("glmer_slope.csv", "y ~ x + trt + (x | g)", [0.8, 0.2, 0.4]),
}


def _backend(case: str, link: str):
    file, formula, theta = CASES[case]
    d = pd.read_csv(DATA / file)
    spec = build_spec(d, formula)
    data = GlmmData(spec.y, spec.X, np.ones(spec.n), np.zeros(spec.n),
                    get_family("binomial", link))
    be = make_backend(spec, data, force_general=True)
    rng = np.random.default_rng(7)
    x = np.concatenate([theta, rng.normal(0.0, 0.3, spec.p)])
    return be, data, x, len(theta)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("link", ["logit", "probit", "cloglog"])
def test_general_laplace_gradient_matches_finite_differences(case, link):
    be, data, x, nt = _backend(case, link)
    assert be.has_gradient

    def f(v):
        return be.modes(v[:nt], v[nt:], None).laplace(data.const)

    h = 1e-5
    fd = np.array([(f(x + e) - f(x - e)) / (2 * h) for e in np.eye(x.size) * h])
    exact = be.laplace_gradient(x[:nt], be.modes(x[:nt], x[nt:], None))
    np.testing.assert_allclose(exact, fd, rtol=1e-5, atol=1e-4)


def test_crossed_model_is_eliminated_and_slope_dense():
    crossed, *_ = _backend("crossed", "logit")
    slope, *_ = _backend("slope", "logit")
    assert crossed._eliminate and not slope._eliminate and slope.dense


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_one_factor_vector_gradient_and_sensitivity(link):
    """The one-factor backend's q×q-block gradient of a correlated random slope equals central
    differences and the general backend's; its mode sensitivities equal differences of û."""
    file, formula, theta = CASES["slope"]
    d = pd.read_csv(DATA / file)
    spec = build_spec(d, formula)
    data = GlmmData(spec.y, spec.X, np.ones(spec.n), np.zeros(spec.n),
                    get_family("binomial", link))
    one, gen = make_backend(spec, data), make_backend(spec, data, force_general=True)
    assert type(one).__name__ == "OneFactorPirls" and one.has_gradient
    x = np.concatenate([theta, np.random.default_rng(3).normal(0.0, 0.3, spec.p)])
    nt = len(theta)
    m = one.modes(x[:nt], x[nt:], None)

    def f(v):
        return one.modes(v[:nt], v[nt:], None).laplace(data.const)

    h = 1e-5
    fd = np.array([(f(x + e) - f(x - e)) / (2 * h) for e in np.eye(x.size) * h])
    exact = one.laplace_gradient(x[:nt], m)
    np.testing.assert_allclose(exact, fd, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(exact, gen.laplace_gradient(x[:nt], gen.modes(x[:nt], x[nt:], None)),
                               rtol=1e-7, atol=1e-7)
    if link != "logit":  # PIRLS's Fisher scoring converges linearly: û too loose to difference
        return
    dU = one.mode_sensitivity(x[:nt], m)
    for j in range(x.size):
        xa = x.copy()
        xa[j] += 1e-6
        fd_u = (one.modes(xa[:nt], xa[nt:], m.u).u - m.u) / 1e-6
        np.testing.assert_allclose(dU[:, j], fd_u, rtol=1e-3, atol=1e-4)
