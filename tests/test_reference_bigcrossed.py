"""Crossed models too large for the "sparse" engine's dense trailing block, against lme4/lmerTest.

5,000 patients crossed with 4,459 therapists within sites (the trailing block would have 4,463
columns, over ``sparse.MAX_TRAILING``): engine="auto" must take "sparse_ldl". Fixtures:
tests/reference/make_reference_bigcrossed.R (lme4 with bobyqa, rhoend = 1e-10). Tolerances
(relative unless said): estimates 1e-4, standard errors 1e-3, variance components 1e-3,
Satterthwaite df 1e-2, criterion and log-likelihood 1e-6, modes and conditional SDs 1e-3.
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models import fit_mixed
from mfr_outcomes.models.sparse import MAX_TRAILING

pytestmark = pytest.mark.reference

REF = Path(__file__).parent / "reference"

CASES = {
    "intercepts": ("value ~ post + session_number + (1 | patient_id) + (1 | therapist_id)", True),
    "intercepts_ml": ("value ~ post + session_number + (1 | patient_id) + (1 | therapist_id)",
                      False),
    "slope": ("value ~ post + session_number + (post | patient_id) + (1 | therapist_id)", True),
}


def load_fixture(case: str) -> dict:
    return json.loads((REF / f"bigcrossed_{case}.json").read_text())


@functools.cache
def data() -> pd.DataFrame:
    return pd.read_csv(REF / "data" / "bigcrossed.csv.gz")


@functools.cache
def fitted(case: str):
    formula, reml = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cautions are not under test here
        return fit_mixed(data(), formula, reml=reml)


@pytest.mark.parametrize("case", list(CASES))
def test_auto_takes_sparse_ldl(case: str) -> None:
    fit = fitted(case)
    assert fit.engine == "sparse_ldl"
    assert f"handles at most {MAX_TRAILING}" in fit.diagnostics["engine_reason"]


@pytest.mark.parametrize("case", list(CASES))
def test_fixed_effects_match_lmertest(case: str) -> None:
    fx = load_fixture(case)
    fit = fitted(case)
    assert fit.nobs == fx["nobs"]
    ours, ref = fit.fixed_effects, pd.DataFrame(fx["fixef"])
    assert list(ours["term"]) == list(ref["term"])
    np.testing.assert_allclose(ours["estimate"], ref["estimate"], rtol=1e-4,
                               atol=1e-4 * ref["std_error"].min())
    np.testing.assert_allclose(ours["std_error"], ref["std_error"], rtol=1e-3)
    np.testing.assert_allclose(ours["df"], ref["df"], rtol=1e-2)


@pytest.mark.parametrize("case", list(CASES))
def test_variance_components_and_criterion_match_lme4(case: str) -> None:
    fx = load_fixture(case)
    fit = fitted(case)
    ref = {(r["grp"], r["var1"], r["var2"]): r["vcov"] for r in fx["varcorr"]}
    ours = fit.variance_components
    assert len(ours) == len(ref)
    for row in ours.itertuples():
        key = (row.group, row.term1, row.term2)
        np.testing.assert_allclose(row.variance, ref[key], rtol=1e-3, err_msg=str(key))
    np.testing.assert_allclose(fit.sigma, fx["sigma"], rtol=1e-4)
    np.testing.assert_allclose(fit.loglik, fx["loglik"], rtol=1e-6)
    crit = fit.reml_criterion if fx["reml"] else fit.deviance
    np.testing.assert_allclose(crit, fx["criterion"], rtol=1e-6)
    assert fit.diagnostics["converged"]
    assert dict(fit.ngroups) == fx["ngroups"]


@pytest.mark.parametrize("case", list(CASES))
def test_conditional_modes_and_sds_match_lme4(case: str) -> None:
    fx = load_fixture(case)
    fit = fitted(case)
    ours = {(r.group, str(r.level), r.term): r for r in fit.random_effects().itertuples()}
    assert len(fx["ranef"]) >= 10
    for r in fx["ranef"]:
        mine = ours[(r["grpvar"], r["level"], r["term"])]
        np.testing.assert_allclose(mine.estimate, r["estimate"], rtol=1e-3, atol=1e-4,
                                   err_msg=str(r))
        np.testing.assert_allclose(mine.cond_sd, r["cond_sd"], rtol=1e-3, err_msg=str(r))
