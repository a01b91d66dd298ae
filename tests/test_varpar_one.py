"""The one-study closed-form derivatives in (θ, σ) (models/varpar_one.py) against the general
batched formulas (``batched._blocks`` / ``_hessian``, study axis and σ's row by the general
sums) and against finite differences of the deviance and of Var(β̂), on random designs (seeded):
q = 1, 2, 3, REML and ML, at the optimum, away from it and at a singular fit."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models import batched, fast, varpar_one
from mfr_outcomes.models.formula import build_spec


def _clinic(G: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    visits = rng.integers(2, 8, G)
    pid = np.repeat(np.arange(G), 2 * visits)
    session = np.concatenate([np.repeat(np.arange(1, v + 1), 2) for v in visits])
    post = np.tile([0.0, 1.0], int(visits.sum()))
    post[rng.random(post.size) < 0.1] = 0.0
    b = rng.standard_normal((G, 3)) * np.array([1.0, 0.5, 0.1])
    y = (5.0 - 0.2 * session - 1.5 * post + b[pid, 0] + b[pid, 1] * post
         + b[pid, 2] * session + rng.standard_normal(pid.size))
    return pd.DataFrame({"patient_id": [f"p{i:04d}" for i in pid], "session_number": session,
                         "post": post, "value": y})


FORMULAS = [
    "value ~ session_number + post + (1 | patient_id)",
    "value ~ session_number * post + (post | patient_id)",
    "value ~ session_number + post + (1 + post + session_number | patient_id)",
]


def _setup(formula: str, seed: int, reml: bool):
    spec = build_spec(_clinic(90, seed), formula)
    eng = fast.FastEngine()
    res = eng.fit(spec, reml=reml)
    stats, lay = eng.prepare(spec)
    P = fast.pooled_of_classes(fast._classes(stats, lay), stats, lay)
    return P, res


def _general(P, vp, reml):
    core = batched._core_one(P, vp[None, :-1], reml)
    bl = batched._blocks(P, core, vp[-1:])
    H, g, Pm = batched._hessian(bl, P, reml)
    Phi = bl["Phi"][0]
    return g[0], H[0], Phi @ Pm[0] @ Phi


def _points(res):
    th, s = np.asarray(res.theta, float), float(res.sigma)
    rng = np.random.default_rng(len(th))
    singular = th.copy()
    singular[-1] = 0.0  # the last diagonal of Λ at its bound
    return [np.append(th, s), np.append(th * rng.uniform(0.5, 1.5, th.size), 1.2 * s),
            np.append(singular, s)]


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("seed", [1, 2])
def test_equal_to_the_general_batched_formulas(formula, seed, reml) -> None:
    P, res = _setup(formula, seed, reml)
    for vp in _points(res):
        core = batched._core_one(P, vp[None, :-1], reml)
        g, H, J = varpar_one.derivatives(P, core, float(vp[-1]), reml)
        g0, H0, J0 = _general(P, vp, reml)
        hs = float(np.abs(H0).max())
        np.testing.assert_allclose(H, H0, rtol=1e-10, atol=1e-12 * hs)
        np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-11 * hs)
        np.testing.assert_allclose(J, J0, rtol=1e-10, atol=1e-12 * float(np.abs(J0).max()))
        # and what batched.varpar_derivatives returns for one study is this
        g1, H1, J1 = batched.varpar_derivatives(P, vp, reml)
        np.testing.assert_array_equal(H1, H)
        np.testing.assert_array_equal(J1, J)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", FORMULAS)
def test_equal_to_finite_differences(formula, reml) -> None:
    """Gradient and Hessian against central differences of the deviance in (θ, σ)
    (``batched.deviance_varpar``), the Jacobian against differences of σ²(XᵀV⁻¹X)⁻¹; relative
    1e-6 of each derivative's scale."""
    P, res = _setup(formula, 3, reml)
    vp = _points(res)[1]
    core = batched._core_one(P, vp[None, :-1], reml)
    g, H, J = varpar_one.derivatives(P, core, float(vp[-1]), reml)

    def dev(v):
        return batched.deviance_varpar(P, v, reml)

    def vcov(v):
        c = batched._core_one(P, v[None, :-1], reml)
        return float(v[-1]) ** 2 * np.linalg.inv(c["XtKX"][0])

    k1 = vp.size
    fd_g, fd_H = np.empty(k1), np.empty((k1, k1))
    fd_J = np.empty_like(J)
    for i in range(k1):
        h = 1e-5 * max(1.0, abs(vp[i]))
        up, dn = vp.copy(), vp.copy()
        up[i] += h
        dn[i] -= h
        fd_g[i] = (dev(up) - dev(dn)) / (2 * h)
        fd_J[i] = (vcov(up) - vcov(dn)) / (2 * h)
        gu = batched.varpar_derivatives(P, up, reml)[0]
        gd = batched.varpar_derivatives(P, dn, reml)[0]
        fd_H[i] = (gu - gd) / (2 * h)
    np.testing.assert_allclose(g, fd_g, rtol=1e-6, atol=1e-6 * float(np.abs(g).max()))
    np.testing.assert_allclose(H, fd_H, rtol=1e-6, atol=1e-6 * float(np.abs(H).max()))
    np.testing.assert_allclose(J, fd_J, rtol=1e-6, atol=1e-6 * float(np.abs(J).max()))
