"""lme4's safety checks, triggered by lme4's own kind of examples (fixtures from
tests/reference/make_reference_checks.R): our sentences contain lme4's wording."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mfr_outcomes.models import ENGINES, ModelCheckError, fit_mixed
from mfr_outcomes.models.checks import verify_optimum
from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.warnings_ import ModelWarning

REF = Path(__file__).parent / "reference"
LME4 = json.loads((REF / "lme4_checks.json").read_text())


def data(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / "data" / name)


def quiet_fit(frame: pd.DataFrame, formula: str, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        return fit_mixed(frame, formula, **kw)


@pytest.mark.parametrize("engine", ["auto", "pls", "statsmodels"])
def test_as_many_random_effects_as_observations_is_refused(engine: str) -> None:
    """Single-session pre/post with (post | patient_id): lme4's check.nobs.vs.nRE, every engine."""
    case = LME4["nobs_vs_nRE"]
    with pytest.raises(ModelCheckError) as err:
        fit_mixed(data(case["data"]), case["formula"], engine=engine)
    assert case["error"] in str(err.value)
    assert err.value.check == "nobs.vs.nRE"
    assert "(1 | patient_id)" in str(err.value)  # and what to do instead


def test_random_intercept_on_single_session_is_the_paired_t_test() -> None:
    """(1 | patient_id) on pre/post pairs: lme4's estimate and SE, and the paired t closed form."""
    case = LME4["nobs_vs_nRE"]
    d = data(case["data"])
    fit = quiet_fit(d, case["intercept_formula"])
    fe = fit.fixed_effects.set_index("term").loc["post"]
    assert fe["estimate"] == pytest.approx(case["post_estimate"], rel=1e-6)
    assert fe["std_error"] == pytest.approx(case["post_se"], rel=1e-4)
    assert fit.reml_criterion == pytest.approx(case["reml_criterion"], rel=1e-8)
    wide = d.pivot(index="patient_id", columns="post", values="value")
    t = stats.ttest_rel(wide[1], wide[0])
    diff = (wide[1] - wide[0]).to_numpy()
    assert fe["std_error"] == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)), rel=1e-4)
    assert fe["statistic"] == pytest.approx(t.statistic, rel=1e-4)
    assert fe["df"] == pytest.approx(len(diff) - 1, rel=1e-3)
    assert fe["p_value"] == pytest.approx(t.pvalue, rel=1e-3)


def test_one_level_grouping_factor_is_refused() -> None:
    case = LME4["nlev_gtr_1"]
    with pytest.raises(ModelCheckError, match="Subject") as err:
        fit_mixed(data(case["data"]), case["formula"])
    assert case["error"] in str(err.value)


def test_as_many_levels_as_observations_is_refused() -> None:
    case = LME4["nobs_vs_nlev"]
    d = data(case["data"]).astype({"obs": str})
    with pytest.raises(ModelCheckError) as err:
        fit_mixed(d, case["formula"])
    assert case["error"] in str(err.value)


def test_fewer_than_five_levels_is_a_caution() -> None:
    case = LME4["nlev_gtr_5"]
    with pytest.warns(ModelWarning) as rec:
        fit = fit_mixed(data(case["data"]), case["formula"])
    lme4_says = case["warnings"]
    assert any(lme4_says.lower() in str(w.message).lower() for w in rec)
    assert any(lme4_says.lower() in w.lower() for w in fit.diagnostics["warnings"])


def test_singular_fit_uses_lme4s_words() -> None:
    case = LME4["singular"]
    lme4_says = case["warnings"].split(":")[0]  # "boundary (singular) fit"
    with pytest.warns(ModelWarning, match=r"boundary \(singular\) fit"):
        fit = fit_mixed(data(case["data"]), case["formula"])
    assert fit.diagnostics["singular"]
    assert any(lme4_says in w for w in fit.diagnostics["warnings"])


def sleepstudy_spec():
    case = LME4["conv"]
    return build_spec(data(case["data"]), case["formula"])


def test_a_fit_short_of_the_optimum_is_flagged_with_lme4s_words() -> None:
    """θ moved off the optimum: lme4's relative-gradient message, and a restart point."""
    spec = sleepstudy_spec()
    res = ENGINES["pls"].fit(spec)
    off = dataclasses.replace(res, theta=res.theta * np.array([1.3, 1.0, 0.8]), converged=True)
    check = verify_optimum(spec, off)
    assert not check.converged
    assert check.restart_from is not None
    lme4_words = LME4["conv"]["warnings"][-1].split(" = ")[0]  # "Model failed to converge with max|grad|"
    assert any(m.startswith(lme4_words) and "(tol = 0.002, component" in m
               for m in check.messages)


def _counting(res):
    """*res* with its deviance function counting its calls."""
    calls = []

    def devfun(v, _f=res.devfun_varpar):
        calls.append(v)
        return _f(v)
    return dataclasses.replace(res, devfun_varpar=devfun), calls


def test_closed_form_check_skips_the_polish_only_where_no_step_can_gain() -> None:
    """The fast engine's exact Hessian predicts the Newton step's gain: at its optimum the check
    evaluates nothing more; 1e-5 off it, where the gain is tiny but not negligible, it tries the
    step, and 1e-4 off (a gain above RESTART_RTOL, far below what the gradient test sees) it
    restarts from it."""
    spec = sleepstudy_spec()
    res = ENGINES["fast"].fit(spec)
    at, calls = _counting(res)
    check = verify_optimum(spec, at)
    assert check.converged and check.restart_from is None and calls == []
    near, calls = _counting(dataclasses.replace(res, theta=res.theta * (1 + 1e-5)))
    check = verify_optimum(spec, near)
    assert len(calls) == 4 and check.decrease > 0  # tried, though too small to restart for
    off, calls = _counting(dataclasses.replace(res, theta=res.theta * (1 + 1e-4)))
    check = verify_optimum(spec, off)
    assert len(calls) == 4 and check.restart_from is not None
    # one Newton step from 1e-4 off lands within ~1e-7 of θ's scale, not of each element: its
    # step's second-order error (~3e-9 here) is 2e-7 of the smallest element (0.015)
    scale = float(np.max(np.abs(res.theta)))
    assert check.restart_from == pytest.approx(res.theta, rel=1e-7, abs=1e-7 * scale)
    far, _ = _counting(dataclasses.replace(res, theta=res.theta * np.array([1.3, 1.0, 0.8])))
    check = verify_optimum(spec, far)
    assert not check.converged and check.restart_from is not None


def test_an_optimiser_stopped_early_is_sent_on_to_lme4s_optimum() -> None:
    """Two iterations of L-BFGS-B: the fit layer restarts from the polished point and ends at
    lme4's criterion (tight bobyqa), so "converged" never stands short of it."""
    case = LME4["conv"]
    fit = quiet_fit(data(case["data"]), case["formula"], engine="pls", options={"maxiter": 2})
    assert fit.reml_criterion == pytest.approx(case["reml_criterion"], rel=1e-8)
    assert fit.diagnostics["converged"]


def test_no_false_alarm_at_a_verified_optimum(monkeypatch) -> None:
    """An engine that says "not converged" at the optimum is not flagged (the criterion is
    verified), and the diagnostics say why."""
    eng = ENGINES["pls"]
    real = type(eng).fit

    def pessimist(self, spec, reml=True, **kw):
        res = real(self, spec, reml, **kw)
        return dataclasses.replace(res, converged=False, messages=["pretend failure"])

    monkeypatch.setattr(type(eng), "fit", pessimist)
    case = LME4["conv"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelWarning)  # no convergence caution may be raised
        fit = fit_mixed(data(case["data"]), case["formula"], engine="pls")
    assert fit.diagnostics["converged"]
    assert any("verified optimum" in m for m in fit.diagnostics["messages"])


def test_constant_outcome_is_a_sentence_not_a_linalg_error() -> None:
    """Issue 12: a constant outcome gave LinAlgError while printing the summary."""
    d = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(10)], 4),
                      "x": np.tile(np.arange(4.0), 10), "y": 3.0})
    with pytest.raises(ModelCheckError, match="'y' is constant .*all 40 values are 3"):
        fit_mixed(d, "y ~ x + (1 | g)")


def test_numerical_failure_in_the_summary_is_a_sentence(monkeypatch) -> None:
    case = LME4["conv"]
    fit = quiet_fit(data(case["data"]), case["formula"], engine="pls")

    def broken(*a, **k):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr("mfr_outcomes.models.inference.contest_1d", broken)
    monkeypatch.setattr("mfr_outcomes.models.inference.contest_1d_values", broken)
    text = fit.summary()
    assert "could not be computed (Eigenvalues did not converge)" in text
    assert "(Intercept)" in text  # the estimates are still shown
    assert "could not be computed" in fit._repr_html_()


def test_numerical_failure_in_the_engine_is_a_sentence(monkeypatch) -> None:
    from mfr_outcomes.models.fit import ModelFitError

    def broken(self, spec, reml=True, **kw):
        raise np.linalg.LinAlgError("Matrix is not positive definite")

    monkeypatch.setattr(type(ENGINES["pls"]), "fit", broken)
    case = LME4["conv"]
    with pytest.raises(ModelFitError, match="failed numerically .*not positive definite"):
        fit_mixed(data(case["data"]), case["formula"], engine="pls")


def test_factor_slope_is_not_called_missing_from_the_fixed_part() -> None:
    """(0 + f | g) with f in the fixed part: no "not fixed effects too" caution (issue 8)."""
    case = LME4["factor_slope"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fit = fit_mixed(data(case["data"]), case["formula"])
        fit.icc()
        fit.r2()
    assert not any("not fixed effects" in str(w.message) for w in rec)
    assert fit.reml_criterion == pytest.approx(case["reml_criterion"], rel=1e-7)


def test_factor_slope_icc_and_r2_match_performance_and_nakagawa_on_request() -> None:
    """performance 0.10.2 leaves out the variance of the reference-level dummy of (0 + f | g);
    definition="nakagawa2017" counts every column of Z (mean of diag(Z Σ Z'))."""
    case = LME4["factor_slope"]
    fit = quiet_fit(data(case["data"]), case["formula"])
    ic, r2 = fit.icc(), fit.r2()
    assert ic.definition == r2.definition == "performance"
    assert ic.adjusted == pytest.approx(case["icc_adjusted"], rel=1e-3)
    assert ic.unadjusted == pytest.approx(case["icc_unadjusted"], rel=1e-3)
    assert r2.marginal == pytest.approx(case["r2_marginal"], rel=1e-3)
    assert r2.conditional == pytest.approx(case["r2_conditional"], rel=1e-3)
    assert ic.parts.var_random == pytest.approx(case["var_random"], rel=1e-3)
    full = fit.r2(definition="nakagawa2017")
    S = fit.random_covariances[0][2]
    Z = fit.spec.blocks[0].Z
    by_hand = np.mean(np.einsum("ij,jk,ik->i", Z, S, Z))
    assert full.parts.var_random == pytest.approx(by_hand, rel=1e-12)
    assert full.parts.var_random > ic.parts.var_random
    assert any("nakagawa2017" in n for n in full.notes)


def test_cli_fit_on_a_constant_outcome_is_a_sentence(tmp_path, capsys) -> None:
    """Issue 12: `mfr-outcomes fit` on a constant outcome raised LinAlgError; now exit 2 and the
    sentence."""
    from mfr_outcomes.cli import main

    src = Path(__file__).resolve().parent.parent / "data" / "synthetic"
    p = pd.read_csv(src / "patients.csv").head(15)  # a small clinic keeps the test quick
    s = pd.read_csv(src / "sessions.csv")
    s = s[s["patient_id"].isin(p["patient_id"])]
    m = pd.read_csv(src / "measurements.csv")
    m = m[m["session_id"].isin(s["session_id"]) & (m["measure"] == "pain_nrs")].copy()
    m["value"] = 5
    for name, frame in (("patients", p), ("sessions", s), ("measurements", m)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    code = main(["fit", str(tmp_path), "--measure", "pain_nrs", "--formula",
                 "value ~ post + (1 | patient_id)"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'value' is constant" in err and "Traceback" not in err


GLMER = json.loads((Path(__file__).parent / "reference" / "glmer_checks.json").read_text())


def _glmer_data(name: str) -> pd.DataFrame:
    return pd.read_csv(Path(__file__).parent / "reference" / "data" / name)


def test_glmer_refuses_a_one_level_grouping_factor() -> None:
    case = GLMER["nlev_gtr_1"]
    with pytest.raises(ModelCheckError) as err:
        fit_mixed(_glmer_data(case["data"]).astype({"herd": str}), case["formula"],
                  family="binomial")
    assert case["error"] in str(err.value)


def test_glmer_refuses_more_random_effects_than_observations() -> None:
    case = GLMER["nobs_vs_nRE"]
    with pytest.raises(ModelCheckError) as err:
        fit_mixed(_glmer_data(case["data"]), case["formula"], family="poisson")
    assert case["error"] in str(err.value)


def test_glmer_allows_an_observation_level_random_effect() -> None:
    """As many levels as observations is glmer's overdispersion model, not an error."""
    case = GLMER["obs_level"]
    fit = fit_mixed(_glmer_data(case["data"]), case["formula"], family="poisson")
    assert fit.deviance == pytest.approx(case["minus2loglik"], rel=1e-6)
    fe = fit.fixed_effects.set_index("term")["estimate"]
    for term, value in case["fixef"].items():
        assert fe[term] == pytest.approx(value, rel=1e-4)


def test_probe_from_values_equals_the_probe_one_by_one() -> None:
    """probe_inside_bounds fed the deviances at probe_points (the stacked pass) chooses the
    same trial as when it evaluates them itself, in the same order, ties included."""
    from mfr_outcomes.models.spec import probe_inside_bounds, probe_points

    lower = np.array([0.0, -np.inf, 0.0])
    rng = np.random.default_rng(7)
    for theta in (np.array([0.8, 0.2, 0.0]), np.array([0.0, 0.3, 0.0]),
                  np.array([0.0, 0.0, 0.0]), np.array([1.2, -0.4, 0.5])):
        for _ in range(20):
            table = {}

            def f(t, table=table):
                return table.setdefault(t.tobytes(), float(rng.integers(0, 4)))

            pts = probe_points(theta, lower)
            assert len(pts) == 4 * int(np.sum((lower == 0) & (theta <= 0)))
            values = [f(t) for t in pts]
            got = probe_inside_bounds(f, theta, 2.0, lower, values=values)
            want = probe_inside_bounds(f, theta, 2.0, lower)
            assert (got[0] is None) == (want[0] is None) and got[1] == want[1]
            if got[0] is not None:
                assert np.array_equal(got[0], want[0])
