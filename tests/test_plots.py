"""Tests of mfr_outcomes.plots: the data behind each figure, not its pixels."""
from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from mfr_outcomes import plots, qi  # noqa: E402
from mfr_outcomes.measures import get_measure, important_change  # noqa: E402
from mfr_outcomes.warnings_ import DataWarning, ModelWarning  # noqa: E402


def _gid(ax, gid, kind=None):
    arts = [a for a in ax.get_children() if a.get_gid() == gid]
    if kind is not None:
        arts = [a for a in arts if isinstance(a, kind)]
    assert arts, f"no artist with gid {gid!r}"
    return arts


def _errorbar(ax, gid):
    """The ErrorbarContainer drawn with this gid: (x, y, error segments)."""
    for c in ax.containers:
        if c.lines[0] is not None and c.lines[0].get_gid() == gid:
            line = c.lines[0]
            segs = [np.asarray(s) for col in c.lines[2] for s in col.get_segments()]
            return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float), segs
    raise AssertionError(f"no errorbar {gid!r}")


@pytest.fixture(scope="module")
def pain(small_study):
    return small_study.frame("pain_nrs")


@pytest.fixture(scope="module")
def course_fit(pain):
    """Pre readings only: value ~ session_number + (1 | patient_id), so the population mean at
    session t is b0 + b1 t exactly."""
    import mfr_outcomes as mfr

    pre = pain[pain["phase"] == "pre"].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        return mfr.fit_mixed(pre, "value ~ session_number + (1 | patient_id)")


@pytest.fixture(scope="module")
def prepost_fit(pain):
    import mfr_outcomes as mfr

    treated = pain[pain["technique"].astype(str) != "none"].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        return mfr.fit_mixed(treated, "value ~ post * technique + (1 | patient_id)")


# --------------------------------------------------------------------------------------------
# study figures


def test_palette_is_the_colorblind_one():
    import seaborn as sns

    assert plots.PALETTE == "colorblind"
    assert plots.COLORS[:4] == list(sns.color_palette("colorblind", 10))[:4]
    assert plots.TECHNIQUE_COLORS["direct_pressure"] == plots.COLORS[0]


def test_prepost_slopes_means_and_line_count(small_study, pain):
    g = plots.prepost_slopes(small_study, "pain_nrs")
    # independent computation: visit means of pre and post, paired, then per patient × technique
    v = pain.groupby(["patient_id", "session_id", "technique", "phase"], observed=True)["value"]
    v = v.mean().unstack("phase").dropna(subset=["pre", "post"]).reset_index()
    per_patient = v.groupby(["patient_id", "technique"], observed=True)[["pre", "post"]].mean()
    per_patient = per_patient.reset_index()
    techs = [t for t in ("direct_pressure", "stretching", "massage", "combined")
             if t in set(per_patient["technique"].astype(str))]
    assert list(g.axes_dict) == techs
    for tech, ax in g.axes_dict.items():
        sub = per_patient[per_patient["technique"].astype(str) == tech]
        (mean_line,) = _gid(ax, "mean")
        np.testing.assert_allclose(mean_line.get_ydata(), [sub["pre"].mean(), sub["post"].mean()])
        (lc,) = _gid(ax, "individual", LineCollection)
        assert len(lc.get_segments()) == len(sub)
        assert ax.get_xticklabels()[0].get_text() == "pre"
        assert to_rgb(mean_line.get_color()) == plots.TECHNIQUE_COLORS[tech]
    assert g.axes.flat[0].get_ylabel() == get_measure("pain_nrs").axis_label
    # no patient identifier anywhere in the titles
    titles = " ".join(ax.get_title() for ax in g.axes.flat)
    assert not any(pid in titles for pid in small_study.patients["patient_id"])


def test_prepost_slopes_per_visit(pain):
    g = plots.prepost_slopes(pain, "pain_nrs", per="visit")
    total = sum(len(_gid(ax, "individual", LineCollection)[0].get_segments())
                for ax in g.axes.flat)
    # one line per visit with both a pre and a post reading ("none" visits have no post)
    paired = pain.groupby(["session_id", "phase"], observed=True)["value"].mean().unstack()
    assert total == paired.dropna().shape[0]
    with pytest.raises(ValueError, match="per must be"):
        plots.prepost_slopes(pain, "pain_nrs", per="site")


def test_trajectories_observed_mean_and_ci(small_study, pain):
    ax = plots.trajectories(small_study, "pain_nrs")
    pre = pain[pain["phase"] == "pre"]
    means = pre.groupby("session_number")["value"].mean()
    (line,) = _gid(ax, "mean")
    np.testing.assert_allclose(line.get_xdata(), means.index.to_numpy(dtype=float))
    np.testing.assert_allclose(line.get_ydata(), means.to_numpy())
    (lc,) = _gid(ax, "patients", LineCollection)
    assert len(lc.get_segments()) == pre["patient_id"].nunique()
    # the band is a t-interval of the mean: check session 1
    s1 = pre.loc[pre["session_number"] == 1, "value"].to_numpy()
    from scipy import stats

    half = stats.t.ppf(0.975, len(s1) - 1) * s1.std(ddof=1) / np.sqrt(len(s1))
    curve = ax.mfr_curve
    assert curve["ci_low"].iloc[0] == pytest.approx(s1.mean() - half)
    assert ax.get_ylabel().startswith(get_measure("pain_nrs").axis_label)


def test_trajectories_model_mean_is_population_prediction(small_study, course_fit):
    ax = plots.trajectories(small_study, "pain_nrs", fit=course_fit)
    b0, b1 = course_fit.coef["(Intercept)"], course_fit.coef["session_number"]
    (line,) = _gid(ax, "mean")
    t = np.asarray(line.get_xdata(), float)
    np.testing.assert_allclose(line.get_ydata(), b0 + b1 * t, rtol=1e-9)
    # band: the CI of b0 + b1 t from the fit's own linear_contrast (Satterthwaite df)
    lc = course_fit.linear_contrast(np.column_stack([np.ones_like(t), t]))
    np.testing.assert_allclose(ax.mfr_curve["ci_low"], lc["ci_low"], rtol=1e-9)
    np.testing.assert_allclose(ax.mfr_curve["ci_high"], lc["ci_high"], rtol=1e-9)
    with pytest.raises(ValueError, match="does not depend on 'weeks'"):
        plots.trajectories(small_study, "pain_nrs", fit=course_fit, time="weeks")


def test_rom_by_side_means(small_study):
    ax = plots.rom_by_side(small_study, "slr_deg")
    f = small_study.frame("slr_deg")
    f = f[f["affected_side"].notna()]
    affected = (f["side"].astype(str) == f["affected_side"].astype(str)) | (
        f["affected_side"].astype(str) == "bilateral")
    f = f.assign(grp=np.where(affected, "affected", "unaffected"), phase=f["phase"].astype(str))
    pm = f.groupby(["patient_id", "grp", "phase"])["value"].mean()
    for ph in ("pre", "post"):
        _, y, _ = _errorbar(ax, f"phase-{ph}")
        expected = [pm.xs((g, ph), level=("grp", "phase")).mean()
                    for g in ("affected", "unaffected")]
        np.testing.assert_allclose(y, expected)
    assert ax.get_ylabel() == get_measure("slr_deg").axis_label
    ax2 = plots.rom_by_side(small_study, "slr_deg", by="side")
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["left", "right"]
    with pytest.raises(ValueError, match="no left/right"):
        plots.rom_by_side(small_study, "pain_nrs")


def _responders(frame: pd.DataFrame, measure: str) -> pd.DataFrame:
    rows = []
    for pid, g in frame.groupby("patient_id"):
        base, last = g["value"].iloc[0], g["value"].iloc[-1]
        rows.append({"patient_id": pid, "baseline": base, "last": last, "change": last - base,
                     "responder": important_change(measure, base, last)})
    return pd.DataFrame(rows)


def test_responder_waterfall_bars_and_mcid(pain):
    resp = _responders(pain, "pain_nrs")
    ax = plots.responder_waterfall(resp, "pain_nrs")
    bars = [p for p in ax.patches if p.get_gid() == "waterfall"]
    assert len(bars) == len(resp)
    heights = np.array([b.get_height() for b in bars])
    # lower is better: sorted by improvement, so changes run from highest to lowest
    np.testing.assert_allclose(heights, np.sort(resp["change"].to_numpy())[::-1])
    (mcid,) = _gid(ax, "mcid")
    assert mcid.get_ydata()[0] == -2  # registry MCID of pain_nrs is 2 points, lower better
    blue = sum(to_rgb(b.get_facecolor()) == plots.COLORS[0] for b in bars)
    assert blue == int(resp["responder"].sum())
    assert ax.get_xticks().size == 0  # no patient labels


def test_responder_waterfall_mdc_line_for_higher_is_better(small_study):
    slr = small_study.frame("slr_deg", side="left")
    resp = _responders(slr, "slr_deg")
    ax = plots.responder_waterfall(resp, "slr_deg")
    (line,) = _gid(ax, "mcid")
    assert line.get_ydata()[0] == pytest.approx(5.7)
    heights = [p.get_height() for p in ax.patches if p.get_gid() == "waterfall"]
    assert heights == sorted(heights)  # higher is better: best on the right
    with pytest.raises(ValueError, match="lacks column"):
        plots.responder_waterfall(resp.drop(columns="responder"), "slr_deg")


# --------------------------------------------------------------------------------------------
# model figures


def test_marginal_means_from_fit(prepost_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        em = prepost_fit.emmeans("post", by="technique")
        ax = plots.marginal_means(prepost_fit, measure="pain_nrs")
    for level in (0, 1):
        sub = em[em["post"] == level].dropna(subset=["estimate"])
        _, y, segs = _errorbar(ax, f"emm-{level}")
        np.testing.assert_allclose(y, sub["estimate"])
        lows = [min(s[:, 1]) for s in segs]
        np.testing.assert_allclose(lows, sub["ci_low"])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["direct pressure", "stretching", "massage", "combined"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pre", "post"]
    assert ax.get_ylabel() == get_measure("pain_nrs").axis_label


def test_marginal_means_from_frame():
    em = pd.DataFrame({"post": [0, 1, 0, 1], "technique": ["massage", "massage", "stretching",
                                                           "stretching"],
                       "estimate": [5.0, 4.0, 5.5, 4.5], "ci_low": [4.5, 3.4, 5.0, 4.1],
                       "ci_high": [5.5, 4.6, 6.0, 4.9]})
    ax = plots.marginal_means(em)
    x, y, segs = _errorbar(ax, "emm-1")
    assert y.tolist() == [4.0, 4.5]
    # technique order follows the vocabulary: stretching before massage
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stretching", "massage"]
    assert x[1] < x[0]
    np.testing.assert_allclose(sorted(max(s[:, 1]) for s in segs), [4.6, 4.9])
    with pytest.raises(ValueError, match="lacks column"):
        plots.marginal_means(em.drop(columns="ci_low"))


def test_forest_fixed_effects(prepost_fit):
    ax = plots.forest(prepost_fit, measure="pain_nrs")
    fe = prepost_fit.fixed_effects
    fe = fe[fe["term"] != "(Intercept)"]
    x, y, segs = _errorbar(ax, "forest")
    np.testing.assert_allclose(x, fe["estimate"])
    assert y.tolist() == list(range(len(fe)))[::-1]  # first term on top
    np.testing.assert_allclose(sorted(min(s[:, 0]) for s in segs), sorted(fe["ci_low"]))
    assert len(ax.get_yticklabels()) == len(fe)
    assert ax.get_yticklabels()[0].get_text() == "post"  # first non-intercept term, at the top?
    ax2 = plots.forest(prepost_fit, include_intercept=True)
    assert len(ax2.get_yticks()) == len(prepost_fit.fixed_effects)


def test_caterpillar_random_intercepts(course_fit, small_study):
    ax = plots.caterpillar(course_fit)
    re = course_fit.random_effects()
    re = re[re["term"] == "(Intercept)"].sort_values("estimate")
    x, y, segs = _errorbar(ax, "caterpillar")
    assert len(y) == small_study.patients.shape[0] == len(re)
    np.testing.assert_allclose(y, re["estimate"])
    half = np.array([(s[:, 1].max() - s[:, 1].min()) / 2 for s in segs])
    np.testing.assert_allclose(half, 1.959964 * re["cond_sd"].to_numpy(), rtol=1e-5)
    assert ax.get_xticks().size == 0
    with pytest.raises(ValueError, match="no random effect 'post'"):
        plots.caterpillar(course_fit, term="post")


def test_residual_diagnostics_three_panels(course_fit):
    axes = plots.residual_diagnostics(course_fit)
    assert axes.shape == (3,)
    (sc,) = _gid(axes[0], "resid")
    off = sc.get_offsets()
    np.testing.assert_allclose(off[:, 0], course_fit.fitted())
    np.testing.assert_allclose(off[:, 1], course_fit.residuals())
    (qq,) = _gid(axes[1], "qq")
    np.testing.assert_allclose(np.sort(qq.get_offsets()[:, 1]), np.sort(course_fit.residuals()))
    (qq_re,) = _gid(axes[2], "qq")
    assert len(qq_re.get_offsets()) == course_fit.ngroups["patient_id"]
    # theoretical quantiles: R's ppoints(n) = (i - 1/2)/n for n > 10
    n = len(qq_re.get_offsets())
    from scipy import stats

    np.testing.assert_allclose(qq_re.get_offsets()[:, 0],
                               stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n))


# --------------------------------------------------------------------------------------------
# QI charts


SERIES_20 = [3, 7, 2, 8, 5, 6, 9, 7, 8, 6, 9, 7, 5, 4, 3, 2, 4, 1, 3, 2]


def test_run_chart_marks_the_long_run():
    r = qi.run_chart(SERIES_20, pd.period_range("2026-01", periods=20, freq="M"),
                     measure="pain_nrs")
    ax = plots.run_chart(r)
    (sc,) = _gid(ax, "signal-longest_run")
    off = sc.get_offsets()
    assert off[:, 0].tolist() == [3, 5, 6, 7, 8, 9, 10, 11]
    assert off[:, 1].tolist() == [SERIES_20[i] for i in (3, 5, 6, 7, 8, 9, 10, 11)]
    # concern (above the median on pain): orange
    assert tuple(sc.get_facecolors()[0][:3]) == pytest.approx(plots.ASSESSMENT_COLORS["concern"])
    (centre,) = _gid(ax, "centre")
    assert set(centre.get_ydata()) == {5}
    assert "too few crossings" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "unusually long run" in legend and "concern" in legend


def test_run_chart_without_rules_says_so():
    with pytest.warns(DataWarning):
        r = qi.run_chart([1, 2, 3, 4, 5])
    ax = plots.run_chart(r)
    assert "rules not applied" in ax.get_title()
    assert not [a for a in ax.get_children() if str(a.get_gid()).startswith("signal-")]


def test_xmr_chart_marks_each_rule():
    y = [10, 11, 10, 11, 10, 11, 10, 11, 10, 30]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        r = qi.xmr_chart(y, measure="pain_nrs")
    ax = plots.xmr_chart(r)
    (out,) = _gid(ax, "signal-outside_limits")
    assert out.get_offsets().tolist() == [[9, 30]]
    (shift,) = _gid(ax, "signal-shift")
    assert shift.get_offsets()[:, 0].tolist() == list(range(9))
    (ucl,) = _gid(ax, "ucl")
    assert ucl.get_ydata()[0] == pytest.approx(r.stats["ucl"])
    # shift below the mean on pain is an improvement (blue); the high point a concern (orange)
    assert tuple(shift.get_facecolors()[0][:3]) == pytest.approx(
        plots.ASSESSMENT_COLORS["improvement"])
    assert tuple(out.get_facecolors()[0][:3]) == pytest.approx(plots.ASSESSMENT_COLORS["concern"])
    axes = plots.xmr_chart(r, moving_range=True)
    assert axes.shape == (2,)
    (mr_out,) = _gid(axes[1], "signal-mr_outside_limit")
    assert mr_out.get_offsets().tolist() == [[9, 20]]


def test_p_chart_limits_and_signal():
    r = qi.p_chart([10] * 12 + [1], [20] * 13)
    ax = plots.p_chart(r)
    (ucl,) = _gid(ax, "ucl")
    # steps: each subgroup's limit held from x − 0.5 to x + 0.5
    assert len(ucl.get_ydata()) == 26
    np.testing.assert_allclose(ucl.get_ydata()[::2], r.points["ucl"])
    (out,) = _gid(ax, "signal-outside_limits")
    assert out.get_offsets().tolist() == [[12, 0.05]]
    (vals,) = _gid(ax, "values")
    np.testing.assert_allclose(vals.get_ydata(), r.points["value"])


def test_figures_save_without_error(tmp_path, small_study):
    agg = qi.aggregate(small_study, "pain_nrs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        r = qi.p_chart(agg["n_responders"], agg["n_completed"], agg["period"])
    ax = plots.p_chart(r)
    ax.figure.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    plt.close("all")


def test_responder_waterfall_from_effects_responders(small_study):
    from mfr_outcomes import effects

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        resp = effects.responders(small_study, "pain_nrs")
    ax = plots.responder_waterfall(resp, "pain_nrs")
    bars = [p for p in ax.patches if p.get_gid() == "waterfall"]
    assert len(bars) == len(resp)
    blue = sum(to_rgb(b.get_facecolor()) == plots.COLORS[0] for b in bars)
    assert blue == int(resp["responder"].sum())


def test_trajectories_model_mean_averages_over_covariates(small_study, pain):
    """With a technique term the population mean at t is b0 + b1 t + the average technique
    effect over the rows the fit used (the observed mix), i.e. the mean of predict()."""
    import mfr_outcomes as mfr

    pre = pain[pain["phase"] == "pre"].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = mfr.fit_mixed(pre, "value ~ weeks + technique + (1 | patient_id)")
    ax = plots.trajectories(small_study, "pain_nrs", fit=fit, time="weeks", n_grid=5)
    (line,) = _gid(ax, "mean")
    t = np.asarray(line.get_xdata(), float)
    assert len(t) == 5 and t[0] == pytest.approx(pre["weeks"].min())
    for tv, yv in zip(t, line.get_ydata()):
        nd = pre.assign(weeks=tv)
        assert yv == pytest.approx(np.mean(fit.predict(nd, include_random=False)))
    # the hand formula: b0 + b_weeks t + sum_k b_k × share of technique k
    share = pre["technique"].astype(str).value_counts(normalize=True)
    tech = sum(fit.coef.get(f"technique[T.{k}]", 0.0) * v for k, v in share.items())
    np.testing.assert_allclose(line.get_ydata(),
                               fit.coef["(Intercept)"] + fit.coef["weeks"] * t + tech)


def test_prepost_slopes_sided_measure_uses_affected_side(small_study):
    g = plots.prepost_slopes(small_study, "slr_deg")
    f = small_study.frame("slr_deg")
    aff = f["affected_side"].astype(str)
    f = f[(aff == f["side"].astype(str)) | ~aff.isin(["left", "right"])]
    v = (f.assign(phase=f["phase"].astype(str))
         .groupby(["patient_id", "session_id", "technique", "phase"], observed=True)["value"]
         .mean().unstack("phase").dropna(subset=["pre", "post"]).reset_index())
    pp = v.groupby(["patient_id", "technique"], observed=True)[["pre", "post"]].mean()
    pp = pp.reset_index()
    for tech, ax in g.axes_dict.items():
        sub = pp[pp["technique"].astype(str) == tech]
        (mean_line,) = _gid(ax, "mean")
        np.testing.assert_allclose(mean_line.get_ydata(), [sub["pre"].mean(), sub["post"].mean()])


def test_no_patient_identifier_in_any_text(small_study, pain, course_fit):
    ids = set(small_study.patients["patient_id"].astype(str))
    figs = [plots.caterpillar(course_fit).figure,
            plots.responder_waterfall(_responders(pain, "pain_nrs"), "pain_nrs").figure,
            plots.trajectories(small_study, "pain_nrs").figure,
            plots.residual_diagnostics(course_fit)[0].figure]
    for fig in figs:
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        assert texts and not any(pid in t for t in texts for pid in ids)


# --------------------------------------------------------------------------------------------
# Making Data Count charts, funnels and named comparisons


def _mdc_result():
    y = [5, 6, 5, 7, 6, 5, 6, 5, 7, 6, 5, 9, 9, 8, 9, 9, 9, 9, 9, 9]
    labels = [f"2026-{m:02d}" if m <= 12 else f"2027-{m - 12:02d}" for m in range(1, 21)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return qi.xmr_chart(y, labels, better="higher", rebase="2026-12", target=8.5,
                            annotations={"2026-06": "new protocol"})


def test_spc_chart_colours_points_by_type_and_draws_icons():
    res = _mdc_result()
    ax = plots.spc_chart(res)
    types = res.points["point_type"]
    for kind, colour in plots.MDC_COLORS.items():
        sc = [c for c in ax.collections if c.get_gid() == f"point-{kind}"]
        assert len(sc) == (1 if (types == kind).any() else 0)
        if sc:
            assert len(sc[0].get_offsets()) == int((types == kind).sum())
            assert np.allclose(sc[0].get_facecolor()[0][:3], to_rgb(colour))
    ucl = _gid(ax, "ucl")[0].get_ydata()
    assert np.isnan(ucl).sum() == 1  # a gap at the declared change
    assert _gid(ax, "target")[0].get_ydata()[0] == 8.5
    icons = {a.get_gid() for a in ax.get_children() if a.get_gid()}
    assert {f"icon-{res.variation}", f"icon-{res.assurance}"} <= icons
    assert any(t.get_text() == "new protocol" for t in ax.texts)
    plt.close(ax.figure)


def test_funnel_plot_limits_and_units():
    from mfr_outcomes import funnel

    fr = funnel.funnel_proportions([4, 9, 20, 6], [20, 20, 40, 12],
                                   ["Therapist A", "Therapist B", "Therapist C", "Therapist D"])
    ax = plots.funnel(fr, ylabel="responders")
    pts = [c for c in ax.collections if c.get_gid() == "units"][0].get_offsets()
    assert np.allclose(np.asarray(pts)[:, 0], fr["n"]) and np.allclose(np.asarray(pts)[:, 1],
                                                                       fr["value"])
    hi95 = [ln for ln in ax.lines if ln.get_gid() == "limit-95"][0]
    x, y = hi95.get_xdata(), hi95.get_ydata()
    k = int(np.argmin(np.abs(x - 20)))
    assert y[k] == pytest.approx(funnel.binomial_limits(x[k], 39 / 92, 0.975)[0])
    assert {t.get_text() for t in ax.texts} == set(fr["unit"])
    plt.close(ax.figure)


def test_funnel_labels_never_cover_each_other_and_stay_inside_the_axes():
    """Close and coincident units, and one at the right edge: every name readable."""
    from mfr_outcomes import funnel

    names = [f"Therapist {c}" for c in "ABCDEFGH"]
    fr = funnel.funnel_proportions([12, 9, 9, 8, 8, 10, 7, 8], [15, 15, 15, 16, 14, 15, 15, 15],
                                   names)
    ax = plots.funnel(fr, ylabel="responders")
    fig = ax.figure
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text().startswith("Therapist")]
    # B and C sit on the same point (9 of 15): one label names both
    assert sorted(t.get_text() for t in texts) == sorted(
        ["Therapist A", "Therapist B, Therapist C", "Therapist D", "Therapist E", "Therapist F",
         "Therapist G", "Therapist H"])
    inside = ax.get_window_extent(renderer)
    boxes = []
    for t in texts:  # the words' box, not the leader line's: the same text without the line
        bare = ax.annotate(t.get_text(), t.xy, xytext=t.xyann, textcoords="offset points",
                           fontsize=t.get_fontsize(), ha=t.get_ha(), va=t.get_va())
        boxes.append(bare.get_window_extent(renderer))
        bare.remove()
    for k, b in enumerate(boxes):
        assert inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
        for other in boxes[k + 1:]:
            assert not b.overlaps(other), (texts[k].get_text(), b, other)
    # the old placement (all labels up and to the right) did overlap here: the test can fail
    naive = []
    for x, y, nm in zip(fr["n"], fr["value"], fr["unit"]):
        t = ax.annotate(nm, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
        naive.append(t.get_window_extent(renderer))
        t.remove()
    assert any(a.overlaps(b) for k, a in enumerate(naive) for b in naive[k + 1:])
    plt.close(fig)


def test_named_caterpillar_and_count_bars_and_course_curves():
    eff = pd.DataFrame({"name": ["Therapist B", "Therapist A"], "estimate": [0.3, -0.2],
                        "cond_sd": [0.1, 0.1]})
    ax = plots.named_caterpillar(eff)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Therapist A", "Therapist B"]
    plt.close(ax.figure)
    ax = plots.count_bars(pd.DataFrame({"technique": ["massage", "stretching"],
                                        "sessions": [12, 30]}), "technique", "sessions")
    assert [p.get_width() for p in ax.patches if p.get_gid() == "bars"] == [12, 30]
    plt.close(ax.figure)
    obs = pd.DataFrame({"time": [0, 1, 2], "mean": [5, 4, 5]})
    cur = pd.DataFrame({"time": [0, 1, 2] * 2, "estimate": [4.8, 4.7, 4.6, 5, 4, 5],
                        "model": ["straight line"] * 3 + ["flexible curve"] * 3})
    ax = plots.course_curves(obs, cur, measure="pain_nrs")
    assert list(_gid(ax, "curve-flexible_curve")[0].get_ydata()) == [5, 4, 5]
    plt.close(ax.figure)
