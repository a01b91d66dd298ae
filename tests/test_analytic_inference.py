"""Closed-form Hessian of the deviance in varpar and Jacobian of Var(β̂) (models/block_inference.py)
against finite differences of the deviance and Var(β̂) functions, on the lme4 fixtures and on
random designs; Satterthwaite df through them still match lmerTest (test_reference_lme4.py)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from test_reference_lme4 import CASES, load_data

from mfr_outcomes.models import block_inference, fit_mixed
from mfr_outcomes.models.dfmethods import richardson_hessian, richardson_jacobian
from mfr_outcomes.models.fast import FastEngine
from mfr_outcomes.models.spec import ModelSpec, RandomBlock

ONE_FACTOR = ["sleepstudy_slope", "sleepstudy_intercept_ml", "sleepstudy_uncorrelated",
              "prepost", "unbalanced", "singular"]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _check(res, varpar: np.ndarray, tol: float = 1e-6) -> None:
    H = res.hessian_varpar(varpar)
    J = res.jacobian_vcov_varpar(varpar)
    assert H.shape == (varpar.size, varpar.size)
    assert J.shape == (varpar.size,) + res.vcov_beta.shape
    assert _rel(H, richardson_hessian(res.devfun_varpar, varpar)) < tol
    assert _rel(J, np.stack(richardson_jacobian(res.vcov_varpar, varpar))) < tol


@pytest.mark.parametrize("case", ONE_FACTOR)
def test_closed_forms_match_differences_on_lme4_fixtures(case: str) -> None:
    formula, reml = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_mixed(load_data(case), formula, reml=reml, engine="fast")
    varpar = np.append(fit.theta, fit.sigma)
    if case == "singular":
        # at θ = 0 the differences themselves lose digits (a step of 1e-4 across the bound);
        # compare just inside it
        varpar = varpar + np.where(np.abs(varpar) < 1e-3, 0.05, 0.0)
    _check(fit.result, varpar)
    # and away from the optimum, where the score is not zero
    _check(fit.result, varpar * 1.15)


def _random_spec(rng: np.random.Generator, q: int, n_groups: int) -> ModelSpec:
    sizes = rng.integers(2, 9, n_groups)
    codes = np.repeat(np.arange(n_groups), sizes)
    n = codes.size
    Z = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(q - 1)])
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    lam = np.tril(rng.normal(size=(q, q)) * 0.5) + np.eye(q)
    b = rng.normal(size=(n_groups, q)) @ lam.T
    y = X @ np.array([1.0, -0.5, 0.3]) + np.einsum("ij,ij->i", Z, b[codes]) + rng.normal(size=n)
    block = RandomBlock(group="g", terms=["(Intercept)"] + [f"z{k}" for k in range(1, q)], Z=Z,
                        codes=codes, levels=pd.Index(np.arange(n_groups)))
    return ModelSpec(formula="y ~ x + (z | g)", response="y", y=y, X=X,
                     fixed_names=["(Intercept)", "x", "a"], blocks=[block],
                     data=pd.DataFrame({"g": codes}))


@pytest.mark.parametrize("q, reml, seed", [(1, True, 1), (2, True, 2), (2, False, 3),
                                           (3, True, 4)])
def test_closed_forms_match_differences_on_random_designs(q: int, reml: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = _random_spec(rng, q, 40)
    res = FastEngine().fit(spec, reml=reml)
    varpar = np.append(res.theta, res.sigma)
    _check(res, varpar)
    # a random point: the formulas hold anywhere, not only at the optimum
    _check(res, varpar + rng.uniform(0.05, 0.3, varpar.size))


def test_nested_layout_keeps_finite_differences() -> None:
    case = "nested_slope"
    formula, reml = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_mixed(load_data(case), formula, reml=reml, engine="fast")
    assert not block_inference.supports(fit.result.internals.layout)
    assert fit.result.hessian_varpar is None and fit.result.jacobian_vcov_varpar is None
    assert np.all(np.isfinite(fit.fixed_effects["df"]))


def test_pooled_classes_give_the_per_group_sums() -> None:
    """The engine's closures sum over classes of equal ZᵢᵀZᵢ when groups are pooled; the
    per-group sums give the same Hessian and Jacobian."""
    formula, reml = CASES["prepost"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_mixed(load_data("prepost"), formula, reml=reml, engine="fast")
    assert fit.result.n_classes is not None
    st, lay = fit.result.internals.stats, fit.result.internals.layout
    varpar = np.append(fit.theta, fit.sigma) * 1.1
    np.testing.assert_allclose(fit.result.hessian_varpar(varpar),
                               block_inference.hessian_varpar(st, lay, varpar, reml), rtol=1e-10)
    np.testing.assert_allclose(fit.result.jacobian_vcov_varpar(varpar),
                               block_inference.jacobian_vcov_varpar(st, lay, varpar),
                               rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("q, reml, seed", [(1, True, 5), (2, True, 6), (2, False, 7),
                                           (3, True, 8), (3, False, 9)])
def test_pooled_closed_forms_on_random_designs(q: int, reml: bool, seed: int) -> None:
    """Groups of few visit patterns (pooled by class, models/batched.py): the gradient, Hessian
    and Jacobian equal the per-group sums and Richardson differences, at the optimum and away."""
    rng = np.random.default_rng(seed)
    G = 60
    patterns = rng.normal(size=(3, 6, q - 1)) if q > 1 else None
    kind = rng.integers(0, 3, G)
    codes = np.repeat(np.arange(G), 6)
    n = codes.size
    Z = np.ones((n, 1)) if q == 1 else np.column_stack(
        [np.ones(n), patterns[kind].reshape(n, q - 1)])
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    lam = np.tril(rng.normal(size=(q, q)) * 0.4) + np.eye(q)
    b = rng.normal(size=(G, q)) @ lam.T
    y = X @ np.array([1.0, -0.5, 0.3]) + np.einsum("ij,ij->i", Z, b[codes]) + rng.normal(size=n)
    block = RandomBlock(group="g", terms=["(Intercept)"] + [f"z{k}" for k in range(1, q)], Z=Z,
                        codes=codes, levels=pd.Index(np.arange(G)))
    spec = ModelSpec(formula="y ~ x + (z | g)", response="y", y=y, X=X,
                     fixed_names=["(Intercept)", "x", "a"], blocks=[block],
                     data=pd.DataFrame({"g": codes}))
    res = FastEngine().fit(spec, reml=reml)
    assert res.n_classes is not None and res.n_classes <= 3
    st, lay = res.internals.stats, res.internals.layout
    for varpar in (np.append(res.theta, res.sigma),
                   np.append(res.theta, res.sigma) + rng.uniform(0.05, 0.3, res.theta.size + 1)):
        _check(res, varpar)
        np.testing.assert_allclose(res.hessian_varpar(varpar),
                                   block_inference.hessian_varpar(st, lay, varpar, reml),
                                   rtol=1e-9, atol=1e-9)
        g = res.gradient_varpar(varpar)
        h = 1e-5 * np.maximum(np.abs(varpar), 1.0)
        fd = np.array([(res.devfun_varpar(varpar + np.eye(varpar.size)[i] * h[i])
                        - res.devfun_varpar(varpar - np.eye(varpar.size)[i] * h[i])) / (2 * h[i])
                       for i in range(varpar.size)])
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)
