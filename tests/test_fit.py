"""fit_mixed and MixedFit: attributes, contrasts, prediction, cautions, compare, CLI."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mfr_outcomes.models import ENGINES, ModelCheckError, compare, fit_mixed
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

REF = Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return pd.read_csv(REF / "data" / "sleepstudy.csv")


@pytest.fixture(scope="module")
def fit(sleep: pd.DataFrame):
    return fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", engine="pls")


def sim(n_groups: int = 20, per: int = 6, seed: int = 0, slope_sd: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    x = np.tile(np.arange(per), n_groups).astype(float)
    b0 = rng.normal(0, 1, n_groups)
    b1 = rng.normal(0, slope_sd, n_groups)
    y = 2 + 0.3 * x + b0[g] + b1[g] * x + rng.normal(0, 1, g.size)
    return pd.DataFrame({"g": [f"g{k:02d}" for k in g], "x": x, "y": y})


def test_fixed_effects_columns_and_identities(fit) -> None:
    fe = fit.fixed_effects
    assert list(fe.columns) == ["term", "estimate", "std_error", "df", "statistic", "p_value",
                                "ci_low", "ci_high"]
    np.testing.assert_allclose(fe["std_error"], np.sqrt(np.diag(fit.vcov)))
    np.testing.assert_allclose(fe["statistic"], fe["estimate"] / fe["std_error"])
    q = stats.t.ppf(0.975, fe["df"])
    np.testing.assert_allclose(fe["ci_high"] - fe["estimate"], q * fe["std_error"])
    np.testing.assert_allclose(fe["p_value"], 2 * stats.t.sf(np.abs(fe["statistic"]), fe["df"]))
    assert list(fit.coef.index) == ["(Intercept)", "Days"]


def test_fixed_effects_is_the_identity_contrast_and_each_read_a_frame_of_its_own(sleep) -> None:
    """The table is linear_contrast of the identity, bit for bit; a write to one read reaches
    neither the next read nor the fit's numbers."""
    fresh = fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", engine="pls")
    first = fresh.fixed_effects
    want = fresh.linear_contrast(np.eye(2), names=["(Intercept)", "Days"])
    pd.testing.assert_frame_equal(first, want, check_exact=True)
    first.loc[0, "estimate"] = -1.0
    first.loc[1, "term"] = "changed"
    pd.testing.assert_frame_equal(fresh.fixed_effects, want, check_exact=True)


def test_linear_contrast_matrix_and_dict(fit) -> None:
    one = fit.linear_contrast({"Days": 1.0}, names=["Days"])
    row = fit.fixed_effects.iloc[1]
    assert one["estimate"][0] == pytest.approx(row["estimate"])
    assert one["df"][0] == pytest.approx(row["df"])
    L = np.array([[1.0, 5.0], [0.0, 2.0]])
    out = fit.linear_contrast(L, names=["day 5", "two days"], level=0.9)
    V = fit.vcov.to_numpy()
    np.testing.assert_allclose(out["estimate"], L @ fit.coef.to_numpy())
    np.testing.assert_allclose(out["std_error"], np.sqrt(np.diag(L @ V @ L.T)))
    # doubling a contrast doubles estimate and SE but leaves Satterthwaite df unchanged
    assert out["df"][1] == pytest.approx(row["df"], rel=1e-8)
    q = stats.t.ppf(0.95, out["df"])
    np.testing.assert_allclose(out["ci_high"], out["estimate"] + q * out["std_error"])
    with pytest.raises(ValueError, match="2 columns"):
        fit.linear_contrast([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="Unknown term"):
        fit.linear_contrast({"days": 1.0})


def test_df_methods(sleep: pd.DataFrame) -> None:
    res = fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", df_method="residual")
    assert (res.fixed_effects["df"] == 180 - 2).all()
    asy = fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", df_method="asymptotic")
    fe = asy.fixed_effects
    assert np.isinf(fe["df"]).all()
    np.testing.assert_allclose(fe["p_value"], 2 * stats.norm.sf(np.abs(fe["statistic"])))
    with pytest.raises(ValueError, match="kenward-roger.*REML"):
        fit_mixed(sleep, "Reaction ~ Days + (1 | Subject)", reml=False,
                  df_method="kenward-roger")
    kr = fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", df_method="kenward-roger")
    assert "Kenward-Roger" in kr.summary()
    # balanced design: KR df equal the Satterthwaite df (17) here, as for lmerTest
    np.testing.assert_allclose(kr.fixed_effects["df"], 17.0, rtol=1e-6)
    with pytest.raises(ValueError, match="df_method"):
        fit_mixed(sleep, "Reaction ~ Days + (1 | Subject)", df_method="bogus")


def test_likelihood_quantities_consistent(fit) -> None:
    assert fit.loglik == pytest.approx(-fit.reml_criterion / 2)
    assert fit.aic == pytest.approx(-2 * fit.loglik + 2 * 6)
    assert fit.bic == pytest.approx(-2 * fit.loglik + np.log(180) * 6)
    assert fit.nobs == 180 and fit.ngroups == {"Subject": 18}


def test_variance_components_and_covariances(fit) -> None:
    vc = fit.variance_components
    assert list(vc.columns) == ["group", "term1", "term2", "variance", "sd", "corr"]
    assert vc.iloc[-1]["group"] == "Residual"
    assert vc.iloc[-1]["variance"] == pytest.approx(fit.sigma ** 2)
    (group, terms, cov), = fit.random_covariances
    assert group == "Subject" and terms == ["(Intercept)", "Days"]
    np.testing.assert_allclose(vc["variance"][:2], np.diag(cov))
    assert vc["corr"][2] == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))


def test_fitted_residuals_predict(fit, sleep: pd.DataFrame) -> None:
    np.testing.assert_allclose(fit.fitted() + fit.residuals(), sleep["Reaction"])
    np.testing.assert_allclose(fit.predict(sleep), fit.fitted())
    np.testing.assert_allclose(fit.predict(sleep, include_random=False),
                               fit.coef["(Intercept)"] + fit.coef["Days"] * sleep["Days"])
    new = pd.DataFrame({"Subject": [308, 999], "Days": [2.0, 2.0]})
    pred = fit.predict(new)
    re = fit.random_effects().set_index(["level", "term"])["estimate"]
    expected0 = (fit.coef["(Intercept)"] + re[("308", "(Intercept)")]
                 + 2.0 * (fit.coef["Days"] + re[("308", "Days")]))
    assert pred[0] == pytest.approx(expected0)
    # a subject not seen in the fit gets random effects 0
    assert pred[1] == pytest.approx(fit.coef["(Intercept)"] + 2.0 * fit.coef["Days"])
    np.testing.assert_allclose(fit.model_matrix(new), [[1.0, 2.0], [1.0, 2.0]])


def test_random_effects_frame(fit) -> None:
    re = fit.random_effects()
    assert list(re.columns) == ["group", "level", "term", "estimate", "cond_sd"]
    assert len(re) == 36
    # conditional modes of the intercepts average 0 (they are shrunken deviations)
    assert abs(re[re.term == "(Intercept)"]["estimate"].mean()) < 1e-6
    assert (re["cond_sd"] > 0).all()


def test_summary_and_html(fit) -> None:
    text = fit.summary()
    assert "REML criterion at convergence: 1743.6" in text
    assert "Satterthwaite" in text and "Subject" in text and "Residual" in text
    html = fit._repr_html_()
    assert "<table" in html and "Reaction ~ Days" in html


def test_engine_auto_reason_and_errors(sleep: pd.DataFrame) -> None:
    f = fit_mixed(sleep, "Reaction ~ Days + (1 | Subject)")
    assert f.diagnostics["engine"] in ENGINES
    assert "chosen" in f.diagnostics["engine_reason"]
    with pytest.raises(ValueError, match="Unknown engine"):
        fit_mixed(sleep, "Reaction ~ Days + (1 | Subject)", engine="nope")
    crossed = sleep.assign(day_f=sleep["Days"].astype(str))
    with pytest.raises(ValueError, match="statsmodels.*crossed"):
        fit_mixed(crossed, "Reaction ~ 1 + (1 | Subject) + (1 | day_f)", engine="statsmodels")


# ---------------------------------------------------------------------------- cautions


def test_singular_fit_warns_with_advice() -> None:
    d = pd.read_csv(REF / "data" / "singular.csv")
    with pytest.warns(ModelWarning, match="singular.*Simplify the random part"):
        f = fit_mixed(d, "y ~ x + (x | g)", engine="pls")
    assert f.diagnostics["singular"]
    assert any("singular" in w for w in f.diagnostics["warnings"])


def test_nonconvergence_warns(sleep: pd.DataFrame) -> None:
    with pytest.warns(ModelWarning, match="may not have converged"):
        f = fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", engine="pls",
                      options={"maxiter": 1})
    assert not f.diagnostics["converged"]


def test_too_few_groups_for_random_slope_warns() -> None:
    d = sim(n_groups=3, per=10)
    with pytest.warns(ModelWarning, match="Only 3 levels of 'g'.*too few groups"):
        f = fit_mixed(d, "y ~ x + (x | g)", engine="pls")
    assert any("too few groups" in w for w in f.diagnostics["warnings"])


def test_fewer_observations_than_random_terms_is_refused_as_lme4_does() -> None:
    """60 rows, 50 patients × (intercept, slope) = 100 random effects: lme4's check.nobs.vs.nRE."""
    d = sim(n_groups=40, per=1)
    d = pd.concat([d, sim(n_groups=10, per=2, seed=3).assign(g=lambda t: t.g + "b")])
    with pytest.raises(ModelCheckError, match=r"number of observations \(=60\) <= number of "
                                              r"random effects \(=100\) for term \(x \| g\)"):
        fit_mixed(d, "y ~ x + (x | g)", engine="pls")


def test_fewer_observations_per_level_than_random_terms_warns() -> None:
    """Enough rows overall, but the median group has one row for two random terms."""
    d = sim(n_groups=30, per=1)
    d = pd.concat([d, sim(n_groups=8, per=12, seed=3).assign(g=lambda t: t.g + "b")])
    with pytest.warns(ModelWarning, match="Fewer observations per level of 'g'"):
        fit_mixed(d, "y ~ x + (x | g)", engine="pls")


def test_factor_level_without_data_warns() -> None:
    d = sim()
    d["arm"] = pd.Categorical(np.where(d["g"] < "g10", "a", "b"), categories=["a", "b", "c"])
    with pytest.warns(ModelWarning, match="Factor level without data.*'c'"):
        f = fit_mixed(d, "y ~ x + arm + (1 | g)", engine="pls")
    assert "arm[T.c]" not in f.coef.index


def test_excluded_rows_warn_and_are_counted() -> None:
    d = sim()
    d.loc[[0, 5, 9], "y"] = np.nan
    with pytest.warns(DataWarning, match="3 row"):
        f = fit_mixed(d, "y ~ x + (1 | g)", engine="pls")
    assert f.nobs + len(f.spec.excluded) == len(d)
    assert f.diagnostics["excluded_rows"] == 3


def test_clean_fit_has_no_warnings(recwarn) -> None:
    f = fit_mixed(sim(n_groups=30), "y ~ x + (x | g)", engine="pls")
    assert f.diagnostics["warnings"] == []
    assert not [w for w in recwarn if issubclass(w.category, ModelWarning)]


# ---------------------------------------------------------------------------- inference extras


def test_compare_refits_ml_and_orders_models(sleep: pd.DataFrame) -> None:
    big = fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)")
    small = fit_mixed(sleep, "Reaction ~ Days + (1 | Subject)")
    out = compare(big, small)
    assert list(out.columns) == ["model", "npar", "aic", "bic", "loglik", "deviance", "chisq",
                                 "df", "p_value"]
    assert list(out["npar"]) == [4, 6]
    ml_big = fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", reml=False)
    assert out["loglik"][1] == pytest.approx(ml_big.loglik, rel=1e-8)
    assert out["p_value"][1] == pytest.approx(stats.chi2.sf(out["chisq"][1], 2))
    with pytest.raises(ValueError, match="different numbers"):
        compare(big, fit_mixed(sleep.iloc[:170], "Reaction ~ Days + (1 | Subject)"))


def test_bootstrap_variance_ci_is_seeded(fit) -> None:
    a = fit.confint_variance("boot", nsim=10, seed=4)
    b = fit.confint_variance("boot", nsim=10, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["parameter"]) == ["sd", "corr", "sd", "sigma"]
    assert (a["ci_low"] <= a["ci_high"]).all()
    sig = a.iloc[-1]
    assert sig["ci_low"] < fit.sigma < sig["ci_high"]
    with pytest.raises(ValueError, match="method"):
        fit.confint_variance("wald")


def test_delegates_call_the_marginal_modules(fit, monkeypatch) -> None:
    from mfr_outcomes.models import emmeans as em
    from mfr_outcomes.models import r2

    seen = {}
    monkeypatch.setattr(em, "emmeans", lambda f, specs, **kw: seen.setdefault("em", (f, specs)))
    monkeypatch.setattr(em, "contrasts", lambda f, specs, **kw: seen.setdefault("co", specs))
    monkeypatch.setattr(r2, "icc", lambda f, **kw: seen.setdefault("icc", f))
    monkeypatch.setattr(r2, "r2_nakagawa", lambda f, **kw: seen.setdefault("r2", f))
    fit.emmeans("Days")
    fit.contrasts("Days")
    fit.icc()
    fit.r2()
    assert seen["em"] == (fit, "Days") and seen["co"] == "Days"
    assert seen["icc"] is fit and seen["r2"] is fit


# ---------------------------------------------------------------------------- CLI


def test_cli_fit_json_and_csv(capsys) -> None:
    from mfr_outcomes.cli import main

    root = Path(__file__).resolve().parent.parent
    formula = "value ~ post + session_number + (post | patient_id)"
    assert main(["fit", str(root / "data" / "synthetic"), "--formula", formula,
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["formula"] == formula
    assert [r["term"] for r in out["fixed_effects"]] == ["(Intercept)", "post", "session_number"]
    assert main(["fit", str(root / "data" / "synthetic"), "--formula", formula,
                 "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0] == "term,estimate,std_error,df,statistic,p_value,ci_low,ci_high"
    assert main(["fit", str(root / "data" / "synthetic"), "--formula",
                 "value ~ post + (1 | nobody)"]) == 2
    assert "nobody" in capsys.readouterr().err


def test_satterthwaite_hessian_caution(monkeypatch) -> None:
    """A deviance Hessian in (θ, σ) with a negative eigenvalue (a saddle, not an optimum): lmerTest
    warns ("Model failed to converge with 1 negative eigenvalue") and inverts H on its positive
    eigen-space only; so do we, and the caution reaches the fit's warnings."""
    from mfr_outcomes.models import dfmethods

    def devfun(v):  # Hessian diag(2, -1, 2): one negative eigenvalue
        return v[0] ** 2 - 0.5 * v[1] ** 2 + v[2] ** 2

    def vcovfun(v):
        return np.array([[1.0 + v[0] + v[1] + v[2]]])

    sd = dfmethods.satterthwaite_data(devfun, vcovfun, np.array([0.3, 0.2, 0.1]),
                                      np.array([[1.6]]))
    assert any("1 negative eigenvalue" in m for m in sd.messages)
    np.testing.assert_allclose(sd.A, np.diag([1.0, 0.0, 1.0]), atol=1e-6)
    # df = 2 V² / (g' A g) with g = (1, 1, 1): 2 · 1.6² / 2
    np.testing.assert_allclose(sd.df_1d(np.array([1.0])), 1.6 ** 2, rtol=1e-6)

    real = dfmethods.satterthwaite_data
    monkeypatch.setattr(dfmethods, "satterthwaite_data",
                        lambda d, v, vp, vc, hessian=None, jacobian=None: real(
                            lambda x: x[0] ** 2 - 0.5 * x[1] ** 2, v, vp, vc))
    f = fit_mixed(sim(n_groups=20, per=6, seed=4), "y ~ x + (1 | g)", engine="pls")
    with pytest.warns(ModelWarning, match="negative eigenvalue"):
        fe = f.fixed_effects
    assert np.isfinite(fe["df"]).all()
    assert any("negative eigenvalue" in w for w in f.diagnostics["warnings"])


def test_predict_with_factor_slope_and_boolean() -> None:
    d = sim(n_groups=25, per=8, seed=2)
    rng = np.random.default_rng(2)
    d["arm"] = pd.Categorical(rng.choice(["a", "b"], len(d)), categories=["a", "b"])
    d["home"] = rng.random(len(d)) < 0.5
    d["y"] = d["y"] + 0.4 * (d["arm"] == "b") + 0.3 * d["home"]
    with pytest.warns(ModelWarning, match="singular"):  # no true arm-slope variance here
        f = fit_mixed(d, "y ~ x + arm + home + (arm | g)", engine="pls")
    assert "home" in f.coef.index and "arm[T.b]" in f.coef.index
    np.testing.assert_allclose(f.predict(d), f.fitted(), atol=1e-10)
    np.testing.assert_allclose(f.predict(d, include_random=False), f.fitted(False), atol=1e-10)
    with pytest.raises(ValueError, match="not fitted on"):
        f.predict(d.assign(arm=["c"] * len(d)))


def test_auto_takes_the_engine_of_highest_priority_and_says_why() -> None:
    from mfr_outcomes.models.fit import auto_order

    assert auto_order()[:5] == ["fast", "sparse", "sparse_ldl", "pls", "statsmodels"]
    d = sim(n_groups=20, per=6, seed=4)
    f = fit_mixed(d, "y ~ x + (1 | g)")
    assert f.engine == "fast" and "fast: chosen" in f.diagnostics["engine_reason"]
    d["h"] = (np.arange(len(d)) % 7).astype(str)  # crossed with g
    f = fit_mixed(d, "y ~ x + (1 | g) + (1 | h)")
    assert f.engine == "sparse"
    assert "fast: refused" in f.diagnostics["engine_reason"]
    assert "sparse: chosen" in f.diagnostics["engine_reason"]


def test_an_engine_that_cannot_supply_says_so(monkeypatch) -> None:
    """statsmodels on a model too large for the dense code (MAX_Q lowered here): no deviance
    function, so the result lists it as unavailable, Satterthwaite df become z tests with a
    caution, profile CIs refuse; its conditional modes come from MixedLM and match lme4's
    (the pls engine's) to MixedLM's optimiser tolerance."""
    from mfr_outcomes.models import pls

    d = sim(n_groups=30, per=8, seed=6)
    ref = fit_mixed(d, "y ~ x + (x | g)", engine="pls")
    monkeypatch.setattr(pls, "MAX_Q", 10)
    with pytest.warns(ModelWarning, match="cannot supply the deviance function"):
        f = fit_mixed(d, "y ~ x + (x | g)", engine="statsmodels")
    assert f.result.cannot("deviance_function") is not None
    assert f.result.cannot("conditional_modes") is None
    with pytest.warns(ModelWarning, match="normal approximation"):
        fe = f.fixed_effects
    assert np.isinf(fe["df"]).all()
    with pytest.raises(ValueError, match="method='boot'"):
        f.confint_variance("profile")
    ours = f.random_effects()["estimate"].to_numpy()
    theirs = ref.random_effects()["estimate"].to_numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3 * np.abs(theirs).max())
    np.testing.assert_allclose(f.fitted(), ref.fitted(), rtol=1e-3)


def test_fitted_without_conditional_modes_is_a_sentence(monkeypatch) -> None:
    """Nested intercepts through MixedLM's variance components, too large for the dense code:
    its modes are not mapped to lme4's blocks, so fitted() with random effects refuses."""
    from mfr_outcomes.models import pls

    d = sim(n_groups=24, per=8, seed=8)
    d["site"] = "s" + (d["g"].str[1:].astype(int) % 6).astype(str)
    monkeypatch.setattr(pls, "MAX_Q", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        f = fit_mixed(d, "y ~ x + (1 | site) + (1 | site:g)", engine="statsmodels")
    assert f.result.cannot("conditional_modes")
    with pytest.raises(ValueError, match="cannot supply .*include_random=False"):
        f.fitted()
    with pytest.raises(ValueError, match="conditional modes"):
        f.random_effects()
    np.testing.assert_allclose(f.fitted(include_random=False), f.spec.X @ f.result.beta)


def test_auto_order_falls_back_to_auto_order_list_for_engines_without_priority(monkeypatch
                                                                               ) -> None:
    from mfr_outcomes.models import spec
    from mfr_outcomes.models.fit import auto_order

    class Plain:  # registered the older way: no priority attribute
        name = "plain"

    monkeypatch.setitem(spec.ENGINES, "plain", Plain())
    monkeypatch.setattr(spec, "AUTO_ORDER", ["fast", "plain", "pls", "statsmodels"])
    import mfr_outcomes.models.fit as fit_module

    monkeypatch.setattr(fit_module, "AUTO_ORDER", spec.AUTO_ORDER)
    assert auto_order() == ["fast", "plain", "pls", "statsmodels", "sparse", "sparse_ldl"]
