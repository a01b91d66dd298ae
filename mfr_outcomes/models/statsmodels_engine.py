"""Engine "statsmodels": ``statsmodels.MixedLM``, with its estimates put on lme4's conventions.

MixedLM has one grouping factor with correlated (or, via ``free``, uncorrelated) random terms, plus
independent variance components inside each group (``vc_formula``). It is used only where that is
exactly the lme4 model:

- every random block on one grouping factor (``(a + b | g)``, or ``(a + b || g)``), or
- ``(1 | outer) + (1 | outer:inner)`` style structures: an intercept for the outer factor and
  intercept-only blocks of factors nested in it (variance components within the outer group).

θ is the Cholesky factor of cov_re / σ² (lme4's relative covariance factor); the REML criterion or
deviance is evaluated on lme4's scale from that θ by the dense PLS code when the model is small
enough, else from MixedLM's log-likelihood; then the result says that it has no deviance
function (``EngineResult.unavailable``) and takes the conditional modes from MixedLM.
"""
from __future__ import annotations

import warnings

import numpy as np

from mfr_outcomes.models.spec import (
    EngineResult,
    ModelSpec,
    RandomBlock,
    Unavailable,
    register_engine,
)

__all__ = ["StatsmodelsEngine"]


def _structure(spec: ModelSpec) -> tuple[str, RandomBlock | list[RandomBlock], list[RandomBlock]]:
    """("single", blocks_on_factor, []) or ("vc", outer_block, inner_blocks) or ("", why, [])."""
    groups = {b.group for b in spec.blocks}
    if len(groups) == 1:
        blocks = spec.blocks
        if len(blocks) > 1:
            names = [t for b in blocks for t in b.terms]
            if len(set(names)) != len(names):
                return "", "the same term appears in two blocks of one grouping factor", []
            if any(b.q > 1 for b in blocks):
                return "", ("a mix of correlated and uncorrelated blocks on one grouping factor "
                            "cannot be expressed by MixedLM"), []
        return "single", list(blocks), []
    intercept_only = [b for b in spec.blocks if b.terms == ["(Intercept)"]]
    if len(intercept_only) != len(spec.blocks):
        slopes = [b for b in spec.blocks if b.terms != ["(Intercept)"]]
        b = slopes[0]
        return "", (f"a random slope ({', '.join(b.terms)} | {b.group}) alongside another grouping "
                    f"factor cannot be expressed by MixedLM: its variance components are "
                    f"independent intercept-like terms, so a correlated slope nested under a "
                    f"second factor has no MixedLM form"), []
    # The outer factor: the one whose levels every other factor is nested in.
    for outer in sorted(spec.blocks, key=lambda b: b.n_levels):
        inner = [b for b in spec.blocks if b is not outer]
        ok = True
        for b in inner:
            pairs = np.unique(np.c_[b.codes, outer.codes], axis=0)
            if len(pairs) != b.n_levels:  # some inner level sits in two outer levels: crossed
                ok = False
                break
        if ok:
            return "vc", outer, inner
    return "", ("crossed grouping factors (not nested in one another) cannot be expressed by "
                "MixedLM"), []


class StatsmodelsEngine:
    """statsmodels' MixedLM for the structures it can express exactly."""

    name = "statsmodels"
    priority = 10  # an option: slower, and expresses fewer structures

    def supports(self, spec: ModelSpec) -> tuple[bool, str]:
        kind, why, _ = _structure(spec)
        if not kind:
            return False, why
        return True, ""

    def fit(self, spec: ModelSpec, reml: bool = True, *, start: np.ndarray | None = None,
            options: dict | None = None) -> EngineResult:
        from statsmodels.regression.mixed_linear_model import MixedLM

        kind, blocks, inner = _structure(spec)
        if not kind:
            raise ValueError(f"The statsmodels engine cannot fit this model: {blocks}.")
        messages: list[str] = []
        if kind == "single":
            groups = blocks[0].codes
            Zre = np.column_stack([b.Z for b in blocks])
            free = None
            if len(blocks) > 1:  # (a + b || g): a diagonal cov_re
                from statsmodels.regression.mixed_linear_model import MixedLMParams

                free = MixedLMParams.from_components(np.ones(spec.p), np.eye(Zre.shape[1]))
            model = MixedLM(spec.y, spec.X, groups=groups, exog_re=Zre)
            fit_kw = {"free": free} if free is not None else {}
        else:
            outer = blocks
            groups = outer.codes
            exog_vc: dict[str, dict] = {}
            for b in inner:
                mats = {}
                for g in range(outer.n_levels):
                    rows = groups == g
                    lev = np.unique(b.codes[rows])
                    mats[g] = (b.codes[rows][:, None] == lev[None, :]).astype(float)
                exog_vc[b.group] = mats
            from statsmodels.regression.mixed_linear_model import VCSpec

            names = list(exog_vc)
            colnames = [[[f"{k}[{j}]" for j in range(m.shape[1])] for m in exog_vc[k].values()]
                        for k in names]
            mats = [[exog_vc[k][g] for g in range(outer.n_levels)] for k in names]
            model = MixedLM(spec.y, spec.X, groups=groups, exog_re=outer.Z,
                            exog_vc=VCSpec(names, colnames, mats))
            fit_kw = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = model.fit(reml=reml, method=["lbfgs", "bfgs", "nm"], **fit_kw)
        for w in caught:
            msg = str(w.message).strip().splitlines()[0]
            if msg not in messages:
                messages.append(f"statsmodels: {msg}")
        scale = float(res.scale)
        sigma = np.sqrt(scale)
        theta_by_block: dict[int, np.ndarray] = {}
        cov_re = np.asarray(res.cov_re, dtype=float) / scale
        if kind == "single":
            k = 0
            for b in blocks:
                sub = cov_re[k:k + b.q, k:k + b.q]
                k += b.q
                theta_by_block[id(b)] = _chol_theta(sub)
        else:
            theta_by_block[id(blocks)] = _chol_theta(cov_re)
            vcomp = np.asarray(res.vcomp, dtype=float) / scale
            for b, v in zip(inner, vcomp):
                theta_by_block[id(b)] = np.array([np.sqrt(max(v, 0.0))])
        theta = np.concatenate([theta_by_block[id(b)] for b in spec.blocks])
        p = spec.p
        beta = np.asarray(res.fe_params, dtype=float)
        vcov = np.asarray(res.cov_params(), dtype=float)[:p, :p]
        from mfr_outcomes.models import pls

        blups: list[np.ndarray] = []
        condvar = None
        unavailable: list[Unavailable] = []
        ok_dense, why_dense = pls.PLSEngine().supports(spec)
        if ok_dense:
            m = pls.pls_model(spec)
            messages.append("objective, Var(β̂) and conditional modes evaluated on lme4's "
                            "definitions at MixedLM's estimates")
            objective = _objective_at(m, theta, beta, sigma, reml)
            blups, condvar = m.random_modes(theta, sigma)
            # lme4's Var(β̂) = σ²(R_X'R_X)⁻¹ at θ̂; MixedLM's cov_params inverts the joint observed
            # information of (β, θ), whose cross terms differ in unbalanced data.
            vcov = m.vcov_beta(np.append(theta, sigma))
            devf = lambda vp, _m=m, _r=reml: _m.deviance_varpar(vp, _r)  # noqa: E731
            vcf = m.vcov_beta
        else:
            objective = -2.0 * float(res.llf)
            devf = vcf = None
            reason = (f"lme4's deviance is evaluated by the dense code, and {why_dense}; MixedLM "
                      f"exposes no deviance function of lme4's (θ, σ)")
            unavailable += [Unavailable("deviance_function", reason),
                            Unavailable("vcov_function", reason)]
            if kind == "single":
                blups, condvar = _mixedlm_modes(res, blocks)
            else:
                unavailable.append(Unavailable(
                    "conditional_modes", f"MixedLM's variance-component modes are not mapped to "
                                         f"lme4's blocks, and {why_dense}"))
        return EngineResult(
            engine=self.name, reml=reml, theta=theta, beta=beta, sigma=float(sigma),
            vcov_beta=vcov, objective=float(objective), converged=bool(res.converged),
            messages=messages, optimizer="statsmodels MixedLM (lbfgs/bfgs/nm)",
            n_evaluations=0, blups=blups, blup_condvar=condvar, devfun_varpar=devf,
            vcov_varpar=vcf, unavailable=unavailable,
            objective_source=("lme4's criterion at MixedLM's estimates" if ok_dense else
                              "MixedLM's log-likelihood (-2 llf)"),
        )


def _mixedlm_modes(res, blocks: list[RandomBlock]) -> tuple[list, list]:
    """Conditional modes and covariances from MixedLM (groups coded 0..G-1), split by block."""
    n_levels = blocks[0].n_levels
    q_all = sum(b.q for b in blocks)
    modes = np.zeros((n_levels, q_all))
    covs = np.zeros((n_levels, q_all, q_all))
    re, re_cov = res.random_effects, res.random_effects_cov
    for g in range(n_levels):
        if g in re:
            modes[g] = np.asarray(re[g], dtype=float)[:q_all]
            covs[g] = np.asarray(re_cov[g], dtype=float)[:q_all, :q_all]
    blups, condvar, k = [], [], 0
    for b in blocks:
        blups.append(np.ascontiguousarray(modes[:, k:k + b.q]))
        condvar.append(np.ascontiguousarray(covs[:, k:k + b.q, k:k + b.q]))
        k += b.q
    return blups, condvar


def _objective_at(model, theta: np.ndarray, beta: np.ndarray, sigma: float, reml: bool) -> float:
    """lme4's REML criterion / deviance at MixedLM's estimates (profiled over β and σ by the PLS
    equations, which MixedLM's optimum satisfies)."""
    return float(model.profiled_deviance(theta, reml))


def _chol_theta(cov: np.ndarray) -> np.ndarray:
    """Lower-triangular Cholesky factor elements (column-major), diagonal ≥ 0, of a PSD matrix."""
    q = cov.shape[0]
    cov = (cov + cov.T) / 2
    try:
        L = np.linalg.cholesky(cov + 0.0)
    except np.linalg.LinAlgError:
        # On the boundary: LDL-like fallback via eigen-decomposition, then QR to lower-triangular.
        w, V = np.linalg.eigh(cov)
        half = V * np.sqrt(np.clip(w, 0, None))
        _, r = np.linalg.qr(half.T)
        L = r.T
        L = L * np.sign(np.where(np.diag(L) == 0, 1.0, np.diag(L)))
    return np.array([L[i, j] for j in range(q) for i in range(j, q)])


register_engine(StatsmodelsEngine())
