"""Tests of mfr_outcomes.scale.summaries: multi-site fits from site summaries (no rows shared).

The independent answer is the fit on the union of the sites' rows (fit_mixed on the pooled
frame); the summaries must give the same fit to 1e-8, and hold no row or identifier.
"""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.cli import main
from mfr_outcomes.models.fast import profiled_deviance
from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.scale.summaries import (
    MIN_SITES_FOR_SITE_EFFECT,
    SummaryError,
    fit_from_summaries,
    read_summary,
    summarize_frame,
    write_summary,
)
from mfr_outcomes.study import analysis_frame
from mfr_outcomes.synthetic import generate_frames

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.MfrWarning")

FORMULA = "value ~ post + session_number + (post | patient_id)"
SHIFT = (0.0, 0.8, -0.6)  # site levels, so that a site variance is estimable


def _site(k: int, n: int = 50) -> pd.DataFrame:
    f, _ = generate_frames(n_patients=n, seed=100 + k, measures=["pain_nrs"])
    d = analysis_frame(f["patients"], f["sessions"], f["measurements"], "pain_nrs")
    d = d[d["technique"].astype(str) != "none"].copy()
    d["patient_id"] = f"s{k}-" + d["patient_id"].astype(str)
    d["session_id"] = f"s{k}-" + d["session_id"].astype(str)
    d["value"] = d["value"] + SHIFT[k]
    d["site"] = f"site{k}"
    return d


@pytest.fixture(scope="module")
def sites() -> list[pd.DataFrame]:
    return [_site(k) for k in range(3)]


@pytest.fixture(scope="module")
def files(sites, tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("summaries")
    return [write_summary(summarize_frame(d, FORMULA, site=f"site{k}"), folder / f"s{k}.npz")
            for k, d in enumerate(sites)]


def _same_fit(a, b) -> None:
    fa, fb = a.fixed_effects, b.fixed_effects
    assert fa["term"].tolist() == fb["term"].tolist()
    for col in ("estimate", "std_error"):
        np.testing.assert_allclose(fa[col], fb[col], rtol=0, atol=1e-8)
    # Satterthwaite df come from a finite-difference Hessian of the deviance, which turns
    # rounding differences of 1e-13 in the deviance into ~1e-7 relative in df (θ, β, SE agree to
    # 1e-12): df are compared to 1e-6 relative
    np.testing.assert_allclose(fa["df"], fb["df"], rtol=1e-6)
    va, vb = a.variance_components, b.variance_components
    np.testing.assert_allclose(va["variance"].astype(float), vb["variance"].astype(float),
                               rtol=0, atol=1e-8)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-8)
    assert a.nobs == b.nobs


def test_three_site_summaries_equal_the_fit_on_their_rows(sites, files):
    pooled = fit_from_summaries(files)
    direct = fit_mixed(pd.concat(sites, ignore_index=True), FORMULA)
    _same_fit(pooled, direct)
    assert pooled.ngroups["patient_id"] == direct.ngroups["patient_id"]
    assert any("no site random intercept: 3 sites" in n for n in pooled.notes)
    assert any("BLUPs" in n and "not available" in n for n in pooled.notes)


def test_site_random_intercept_equals_patients_nested_in_sites(sites, files):
    pooled = fit_from_summaries(files, site_effect=True)
    direct = fit_mixed(pd.concat(sites, ignore_index=True), FORMULA + " + (1 | site)")
    # the same REML criterion, θ by θ: the pooled statistics are those of the rows
    ps, pl = pooled.result.internals.stats, pooled.result.internals.layout
    ds, dl = direct.result.internals.stats, direct.result.internals.layout
    for theta in (direct.theta, direct.theta * 1.3, np.array([0.5, 0.2, 0.4, 1.5])):
        assert profiled_deviance(ps, pl, theta) == pytest.approx(
            profiled_deviance(ds, dl, theta), rel=1e-12)
    # the criterion is flat at its optimum (θ moving 3e-8 changes it by 1e-11), so where
    # L-BFGS-B stops differs by rounding: the fits agree to 1e-6 relative here
    fa, fb = pooled.fixed_effects, direct.fixed_effects
    np.testing.assert_allclose(fa[["estimate", "std_error", "df"]].to_numpy(),
                               fb[["estimate", "std_error", "df"]].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(pooled.variance_components["variance"].astype(float),
                               direct.variance_components["variance"].astype(float), rtol=1e-6)
    vc = pooled.variance_components
    assert vc.loc[vc["group"] == "site", "variance"].iloc[0] > 0.05


def test_site_term_is_automatic_from_enough_sites(sites):
    summaries = [summarize_frame(d, FORMULA, site=f"site{k}") for k, d in enumerate(sites)]
    # the same three sites split in halves: six summaries, enough for a site term
    halves = []
    for k, d in enumerate(sites):
        ids = sorted(d["patient_id"].unique())
        for h, part in enumerate((ids[: len(ids) // 2], ids[len(ids) // 2:])):
            halves.append(summarize_frame(d[d["patient_id"].isin(part)], FORMULA,
                                          site=f"site{k}{h}"))
    assert len(halves) >= MIN_SITES_FOR_SITE_EFFECT
    fit = fit_from_summaries(halves)
    assert "site" in fit.ngroups and fit.ngroups["site"] == 6
    assert "site" not in fit_from_summaries(summaries).ngroups


def test_a_summary_holds_no_row_and_no_identifier(sites, files):
    for d, path in zip(sites, files):
        n_rows, n_patients = len(d), d["patient_id"].nunique()
        ids = set(d["patient_id"].astype(str)) | set(d["session_id"].astype(str))
        raw_ids = {i.split("-", 1)[1] for i in ids}  # the clinic's own ids, unprefixed
        with zipfile.ZipFile(path) as z:
            blob = b"".join(z.read(name) for name in z.namelist())
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                arr = z[name]
                assert arr.dtype.kind in "fiuU", name  # no objects, nothing pickled
                assert n_rows not in arr.shape and n_patients not in arr.shape, (name, arr.shape)
                if arr.dtype.kind == "U":
                    text = str(arr)
                    assert not any(i in text for i in ids | raw_ids), name
        assert not any(i.encode() in blob for i in ids | raw_ids)
        # every value of the site's column of readings is absent as a row: no array is the y
        meta = json.loads(str(np.load(path)["meta"]))
        assert set(meta) >= {"formula", "fixed_names", "software", "checksum"}


def test_min_cell_withholds_small_classes_with_a_note(sites):
    full = summarize_frame(sites[0], FORMULA)
    small = summarize_frame(sites[0], FORMULA, min_cell=3)
    assert (small.count >= 3).all()
    assert small.n < full.n and small.n_patients < full.n_patients
    [note] = [n for n in small.notes if "withheld" in n]
    assert f"{full.n_patients - small.n_patients} patients, {full.n - small.n} readings" in note


def test_mismatched_or_edited_summaries_are_refused(sites, files, tmp_path):
    other = write_summary(summarize_frame(sites[1], "value ~ post + (post | patient_id)"),
                          tmp_path / "other.npz")
    with pytest.raises(SummaryError, match="differ in their formula"):
        fit_from_summaries([files[0], other])
    edited = tmp_path / "edited.npz"
    s = read_summary(files[0])
    s.XtX = s.XtX * 1.01
    write_summary(s, edited)  # a consistent file: accepted
    data = dict(np.load(edited))
    data["XtX"] = data["XtX"] * 2  # tampered after writing
    np.savez(tmp_path / "tampered.npz", **data)
    with pytest.raises(SummaryError, match="checksum does not match"):
        read_summary(tmp_path / "tampered.npz")


def test_command_line_summarize_and_fit(tmp_path, capsys):
    paths = []
    for k in range(3):
        f, _ = generate_frames(n_patients=25, seed=200 + k, measures=["pain_nrs"])
        folder = tmp_path / f"clinic{k}"
        folder.mkdir()
        for table, frame in f.items():
            frame.to_csv(folder / f"{table}.csv", index=False)
        out = tmp_path / f"c{k}.npz"
        assert main(["summarize", str(folder), "--out", str(out), "--min-cell", "1",
                     "--formula", FORMULA]) == 0
        paths.append(str(out))
    capsys.readouterr()
    assert main(["fit", "--from-summaries", *paths, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["term"] for r in data["fixed_effects"]] == ["(Intercept)", "post", "session_number"]
    assert main(["fit", "--from-summaries", paths[0], str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz is not a site summary" in capsys.readouterr().err
