"""Power by simulation: type I error, a closed-form power, determinism across workers, the CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mfr_outcomes import power
from mfr_outcomes.models.spec import ModelSpec, RandomBlock


def _mc_band(p: float, n: int, k: float = 3.5) -> float:
    return k * np.sqrt(p * (1 - p) / n)


# A balanced two-arm design with a random intercept per patient (compound symmetry):
# the REML t test of the arm effect is the two-sample t test on patient means, df = N - 2.
M_OBS, SIGMA_B, SIGMA_E = 4, 1.0, 1.0
ARM_FORMULA = "value ~ arm + (1 | patient_id)"


def arm_study(n_patients: int, sessions: int, effect: float, rng: np.random.Generator):
    """The design as a ready ModelSpec (``value ~ arm + (1 | patient_id)``): no formula step."""
    pid = np.repeat(np.arange(n_patients), M_OBS)
    arm = (pid % 2).astype(float)
    b = rng.normal(0, SIGMA_B, n_patients)[pid]
    y = 1.0 + effect * arm + b + rng.normal(0, SIGMA_E, pid.size)
    block = RandomBlock(group="patient_id", terms=["(Intercept)"], Z=np.ones((pid.size, 1)),
                        codes=pid.astype(np.int64), levels=pd.Index(np.arange(n_patients)))
    return ModelSpec(formula=ARM_FORMULA, response="value", y=y,
                     X=np.column_stack([np.ones(pid.size), arm]),
                     fixed_names=["(Intercept)", "arm"], blocks=[block],
                     data=pd.DataFrame({"patient_id": pid, "arm": arm, "value": y}))


def arm_frame(n_patients: int, sessions: int, effect: float, rng: np.random.Generator):
    spec = arm_study(n_patients, sessions, effect, rng)
    return spec.data.assign(patient_id=lambda d: "p" + d["patient_id"].astype(str))


def closed_form_power(n_patients: int, effect: float, alpha: float) -> float:
    n_arm = n_patients / 2
    tau = SIGMA_B ** 2 + SIGMA_E ** 2 / M_OBS  # variance of a patient's mean
    ncp = effect / np.sqrt(tau * 2 / n_arm)
    df = n_patients - 2
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


def test_matches_noncentral_t_power():
    n, eff, sims = 24, 1.0, 300
    res = power.simulate(effect=eff, n_patients=[n], sessions=1, n_sims=sims, seed=11, n_jobs=1,
                         progress=False, parameter="arm", formula=ARM_FORMULA,
                         generator=arm_study)
    row = res.iloc[0]
    expected = closed_form_power(n, eff, 0.05)
    assert 0.3 < expected < 0.9  # an informative point of the curve
    assert row["n_sims"] == sims and row["n_failed"] == 0
    assert abs(row["power"] - expected) < _mc_band(expected, sims)
    assert row["ci_low"] <= row["power"] <= row["ci_high"]
    # Satterthwaite df of a between-patient contrast in a balanced design: N - 2
    assert row["median_df"] == pytest.approx(n - 2, rel=0.02)


def test_zero_effect_gives_alpha():
    """With no effect the rejection rate is α, within Monte Carlo error (correctly specified
    model: no course of care, so the linear session term is right)."""
    sims = 150
    res = power.simulate(effect=0.0, n_patients=[30], sessions=4, n_sims=sims, seed=5, n_jobs=1,
                         progress=False, course_reduction=0.0, course_reduction_sd=0.0)
    row = res.iloc[0]
    assert row["n_failed"] == 0
    assert abs(row["power"] - 0.05) < _mc_band(0.05, sims)
    assert abs(row["mean_estimate"]) < 4 * row["sd_estimate"] / np.sqrt(sims)


@pytest.mark.slow  # starting two joblib workers takes 10-30 s on a loaded 2-core machine
def test_same_answer_for_any_number_of_workers():
    kw = dict(effect=[0.0, -0.4], n_patients=[12, 16], sessions=3, n_sims=4, seed=3,
              progress=False)
    one = power.simulate(n_jobs=1, **kw)
    two = power.simulate(n_jobs=2, **kw)
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 4 and set(one["n_sims"]) == {4}


def test_formula_path_equals_spec_path():
    """A generator returning a frame goes through build_spec; returning the ModelSpec skips it:
    same studies, same answer."""
    kw = dict(effect=0.8, n_patients=[10], sessions=1, n_sims=5, seed=4, n_jobs=1,
              progress=False, parameter="arm", formula=ARM_FORMULA)
    via_spec = power.simulate(generator=arm_study, **kw)
    via_formula = power.simulate(generator=arm_frame, **kw)
    pd.testing.assert_frame_equal(via_spec, via_formula, rtol=1e-6)


def test_lean_path_equals_build_spec_path():
    """The NumPy frame and model matrix of the power loop give the same fits as the package's
    analysis_frame + build_spec."""
    kw = dict(effect=-0.3, n_patients=[15], sessions=3, n_sims=4, seed=8, n_jobs=1,
              progress=False, parameter="post:technique[T.massage]")
    lean = power.simulate(**kw)
    cfg = power._Config(parameter=kw["parameter"], formula=power._FORMULAS["interaction"],
                        measure="pain_nrs", alpha=0.05, generator=None)
    for sim, ss in enumerate(power._children(np.random.SeedSequence(8).spawn(1)[0], 2)):
        d_full = power._synthetic_study(cfg, 15, 3, -0.3, np.random.default_rng(ss))
        cfg_lean = power._Config(**{**cfg.__dict__, "lean": True})
        d_lean = power._synthetic_study(cfg_lean, 15, 3, -0.3,
                                        np.random.default_rng(
                                            power._children(
                                                np.random.SeedSequence(8).spawn(1)[0], 2)[sim]))
        np.testing.assert_allclose(power._fit_one(cfg, d_full), power._fit_one(cfg_lean, d_lean),
                                   rtol=1e-6)
    assert lean["n_sims"].iloc[0] + lean["n_failed"].iloc[0] == 4


def test_minimum_detectable_effect_brackets_target():
    res = power.minimum_detectable_effect(
        n_patients=[20], target=0.8, max_effect=2.0, steps=4, n_sims=60, seed=2, n_jobs=1,
        parameter="arm", formula=ARM_FORMULA, generator=arm_study)
    row = res.iloc[0]
    assert row["power"] >= 0.8
    assert 0 < row["mde"] <= 2.0 and row["bracket_low"] < row["mde"]
    # the closed-form MDE lies within the search's resolution plus Monte Carlo slack
    grid = np.linspace(0.2, 2.5, 200)
    mde_exact = grid[np.argmax([closed_form_power(20, g, 0.05) >= 0.8 for g in grid])]
    assert abs(row["mde"] - mde_exact) < 0.45


def test_bad_input_is_a_sentence():
    with pytest.raises(ValueError, match="n_patients must be at least 2"):
        power.simulate(n_patients=[1], n_sims=2, progress=False)
    with pytest.raises(ValueError, match="must be one of"):
        power.simulate(parameter="post:technique[T.yoga]", n_sims=2, progress=False)
    with pytest.raises(ValueError, match="no default model"):
        power.simulate(parameter="age", n_sims=2, progress=False)


def test_wilson_interval():
    lo, hi = power.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert power.wilson_interval(0, 20)[0] == 0.0


def test_plot_power_curve():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = pd.DataFrame({"effect": [-0.5] * 3, "n_patients": [20, 40, 80], "sessions": 6,
                        "parameter": "post", "power": [0.3, 0.6, 0.9],
                        "ci_low": [0.2, 0.5, 0.85], "ci_high": [0.4, 0.7, 0.95], "alpha": 0.05})
    ax = power.plot_power_curve(res)
    ys = ax.get_lines()[0].get_ydata()
    np.testing.assert_allclose(ys, [0.3, 0.6, 0.9])
    plt.close(ax.figure)


def test_cli_power(tmp_path, capsys):
    from mfr_outcomes.cli import main

    status = main(["power", "--effect", "-0.5", "--patients", "10", "14", "--sessions", "3",
                   "--sims", "4", "--seed", "1", "--jobs", "1", "--out", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "power" in out and "n_patients" in out
    table = pd.read_csv(tmp_path / "power.csv")
    assert list(table["n_patients"]) == [10, 14]
    assert (tmp_path / "power_curve.png").stat().st_size > 1000
    assert main(["power", "--patients", "1", "--sims", "2", "--jobs", "1"]) == 2


def test_failed_and_unconverged_fits_are_reported(monkeypatch):
    """Studies that cannot be fitted are left out of the power, counted and warned about."""
    from mfr_outcomes.warnings_ import ModelWarning

    real = power._fit_one
    calls = {"n": 0}

    def flaky(cfg, data):
        calls["n"] += 1
        if calls["n"] % 4 == 0:  # every fourth study fails
            return (np.nan, np.nan, np.nan, False)
        return real(cfg, data)

    monkeypatch.setattr(power, "_fit_one", flaky)
    with pytest.warns(ModelWarning, match="could not be fitted"):
        res = power.simulate(effect=-0.5, n_patients=[20], sessions=4, n_sims=20, seed=3,
                             n_jobs=1, progress=False, batch_size=0)
    row = res.iloc[0]
    assert row["n_failed"] == 5 and row["n_sims"] == 15


# ---------------------------------------------------------------------------------------------
# Batched fits (models/batched.py): the same studies, the same answers, any batch size
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def post_fit():
    import warnings

    from mfr_outcomes.models import fit_mixed

    cfg = power._Config(parameter="post", formula=power._FORMULAS["post"], measure="pain_nrs",
                        alpha=0.05, generator=None, lean=True)
    d = power._synthetic_study(cfg, 40, 4, -0.5, np.random.default_rng(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_mixed(d, power._FORMULAS["post"])


def test_simulate_from_batched_equals_unbatched(post_fit):
    kw = dict(parameter="post", effect=[-0.3, 0.0], n_sims=24, seed=9, return_studies=True)
    _, one = power.simulate_from(post_fit, batch_size=1, **kw)
    res, many = power.simulate_from(post_fit, batch_size=10, **kw)
    assert len(one) == len(many) == 48 and many["converged"].all()
    for col in ("estimate", "std_error", "df"):
        np.testing.assert_allclose(many[col], one[col], rtol=1e-8)
    assert list(res["n_sims"]) == [24, 24]


def test_simulate_from_matches_the_engine_study_by_study(post_fit):
    """Rebuild study i from its seed, fit it with the fast engine (L-BFGS-B) and lmerTest-style
    Satterthwaite df: the batched Newton fit gives the same estimate, SE and df."""
    import copy

    from mfr_outcomes.models.dfmethods import satterthwaite_data
    from mfr_outcomes.models.fast import FastEngine

    _, st = power.simulate_from(post_fit, parameter="post", effect=-0.2, n_sims=6, seed=4,
                                batch_size=6, return_studies=True)
    spec = post_fit.spec
    j = spec.fixed_names.index("post")
    beta = post_fit.result.beta.copy()
    beta[j] = -0.2
    lam = np.array([[post_fit.theta[0], 0.0], [post_fit.theta[1], post_fit.theta[2]]])
    b = spec.blocks[0]
    for i, ss in enumerate(power._children(np.random.SeedSequence(4), 6)):
        rng = np.random.default_rng(ss)
        u = rng.standard_normal((b.n_levels, 2)) @ lam.T
        y = spec.X @ beta + post_fit.sigma * (np.einsum("ij,ij->i", b.Z, u[b.codes])
                                              + rng.standard_normal(spec.n))
        sp = copy.copy(spec)
        sp.y = y
        r = FastEngine().fit(sp)
        sd = satterthwaite_data(r.devfun_varpar, r.vcov_varpar, np.r_[r.theta, r.sigma],
                                r.vcov_beta)
        assert st["estimate"].iloc[i] == pytest.approx(r.beta[j], rel=1e-6, abs=1e-8)
        assert st["std_error"].iloc[i] == pytest.approx(np.sqrt(r.vcov_beta[j, j]), rel=1e-6)
        assert st["df"].iloc[i] == pytest.approx(sd.df_1d(np.eye(spec.p)[j]), rel=1e-5)


def test_simulate_from_zero_effect_gives_alpha(post_fit):
    sims = 400
    res = power.simulate_from(post_fit, parameter="post", effect=0.0, n_sims=sims, seed=12)
    row = res.iloc[0]
    assert row["n_failed"] == 0 and row["n_not_converged"] == 0
    assert abs(row["power"] - 0.05) < _mc_band(0.05, sims)
    assert abs(row["mean_estimate"]) < 4 * row["sd_estimate"] / np.sqrt(sims)


def test_simulator_batched_equals_unbatched():
    """New clinics each time: studies of one design fitted side by side give the same table
    for any batch size, and the engine's one-by-one fits agree."""
    kw = dict(effect=-0.4, n_patients=[14], sessions=3, n_sims=12, seed=6, n_jobs=1,
              progress=False, course_reduction=0.0, course_reduction_sd=0.0)
    a = power.simulate(batch_size=5, **kw)
    b = power.simulate(batch_size=64, **kw)
    pd.testing.assert_frame_equal(a, b, rtol=1e-8)
    c = power.simulate(batch_size=0, **kw)
    pd.testing.assert_frame_equal(a.drop(columns="median_df"), c.drop(columns="median_df"),
                                  rtol=1e-6)
    # finite differences (engine path) against the closed-form df (batched path)
    assert a["median_df"].iloc[0] == pytest.approx(c["median_df"].iloc[0], rel=1e-3)


@pytest.mark.slow  # two joblib workers
def test_simulate_from_same_answer_for_any_n_jobs(post_fit):
    kw = dict(parameter="post", effect=-0.3, n_sims=16, seed=2, batch_size=5)
    pd.testing.assert_frame_equal(power.simulate_from(post_fit, n_jobs=1, **kw),
                                  power.simulate_from(post_fit, n_jobs=2, **kw))


def test_simulate_from_bad_input(post_fit):
    with pytest.raises(ValueError, match="not a fixed effect"):
        power.simulate_from(post_fit, parameter="age", effect=0.1, n_sims=2)
