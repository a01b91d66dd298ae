"""Domain fits (fit_prepost, fit_course) on a study whose rows stay in DuckDB or on a Dask cluster
equal the in-memory domain fits of the same data.

The independent answer is the in-memory fit of the loaded Study: with the therapist level
(crossed with the patient where patients switched therapist: the sparse engine, out of memory
from Gram blocks aggregated by patient and therapist) and without it (``therapist=False``: the
fast engine's per-patient statistics). Formulas and notes must be equal; β̂ to 1e-8, standard
errors, df and variance components to 1e-6 relative, BLUPs to 1e-6, the REML criterion to 1e-8
relative. Data: the shipped synthetic study (with therapist switching), and a simulated
multi-site registry (three sites, their own patients and therapists, a site shift); Dask on a
LocalCluster of two worker processes.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from test_duckdb_fit import same_estimates

import mfr_outcomes as mfr
from mfr_outcomes.scale.study_scale import ScaleStudy
from mfr_outcomes.study import from_frames
from mfr_outcomes.synthetic import generate_frames
from mfr_outcomes.vocab import TABLES

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.MfrWarning")

CASES = [("prepost", "pain_nrs", {}), ("prepost", "slr_deg", {"side": "separate"}),
         ("course", "pain_nrs", {}), ("course", "leg_pain_nrs",
                                      {"time": "session_number", "by": "technique"}),
         ("prepost", "pain_nrs", {"by": None, "covariates": ["age_years"]}),
         ("followup", "pain_nrs", {}), ("followup", "slr_deg", {"side": "separate"})]
FIT = {"prepost": mfr.fit_prepost, "course": mfr.fit_course, "followup": mfr.fit_followup}


def registry_tables(n_sites: int = 3, n: int = 30) -> dict[str, pd.DataFrame]:
    """Raw tables of a simulated multi-site registry (each site its own patients and level)."""
    out: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    for k in range(n_sites):
        f, _ = generate_frames(n_patients=n, seed=300 + k,
                               measures=["pain_nrs", "leg_pain_nrs", "slr_deg"])
        p, s, m = f["patients"].copy(), f["sessions"].copy(), f["measurements"].copy()
        p["patient_id"] = f"s{k}-" + p["patient_id"]
        p["site_id"] = f"site-{k}"
        s["patient_id"] = f"s{k}-" + s["patient_id"]
        s["session_id"] = f"s{k}-" + s["session_id"]
        s["therapist_id"] = f"s{k}-" + s["therapist_id"]
        m["session_id"] = f"s{k}-" + m["session_id"]
        m["value"] = m["value"] + np.where(m["measure"] == "slr_deg", 2.0 * k, 0.3 * k)
        for t, frame in zip(TABLES, (p, s, m)):
            out[t].append(frame)
    return {t: pd.concat(v, ignore_index=True) for t, v in out.items()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (raw tables): the shipped synthetic study and the registry."""
    root = mfr.datasets.synthetic_path()
    shipped = {t: pd.read_csv(f"{root}/{t}.csv", dtype=str, keep_default_na=False)
               for t in TABLES}
    return {"shipped": shipped, "registry": registry_tables()}


def _parquet(tables: dict[str, pd.DataFrame], folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in tables.items():
        f.to_parquet(folder / f"{t}.parquet", index=False)
    return str(folder)


def _same(a, b) -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for k in a:
            _same(a[k], b[k])
        return
    assert a.formula == b.formula
    same_estimates(a, b)
    # the notes of the in-memory fit are all there; the statistics path adds its own
    assert set(a.notes) <= set(b.notes)
    assert any("need the rows" in n for n in b.notes)


@pytest.mark.parametrize("name", ["shipped", "registry"])
def test_duckdb_backed_domain_fits_equal_in_memory(sources, name, tmp_path):
    folder = _parquet(sources[name], tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = mfr.load_study(folder)
    big = ScaleStudy.from_duckdb(folder)
    try:
        assert big.report.to_dict()["accounting"] == mem.report.to_dict()["accounting"]
        assert big.measures == mem.measures
        for model, measure, kw in CASES:
            _same(FIT[model](mem, measure, **kw), FIT[model](big, measure, **kw))
        for model, measure, kw in (CASES[0], CASES[2]):
            _same(FIT[model](mem, measure, therapist=False, **kw),
                  FIT[model](big, measure, therapist=False, **kw))
        fit = mfr.fit_prepost(big, "pain_nrs")
        assert "(1 | therapist_id)" in fit.formula
        assert any("saw more than one therapist" in n for n in fit.notes)
        assert any("Gram blocks" in n for n in fit.notes)
    finally:
        big.close()


def test_followup_emmeans_and_contrasts_equal_in_memory(sources, tmp_path):
    """baseline → discharge → follow-up of the ODI (recorded at those visits only) with the
    therapist level: the stage means and the changes from baseline as in memory."""
    folder = _parquet(sources["shipped"], tmp_path / "s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = mfr.fit_followup(mfr.load_study(folder), "odi")
    big = ScaleStudy.from_duckdb(folder)
    try:
        fit = mfr.fit_followup(big, "odi")
    finally:
        big.close()
    _same(mem, fit)
    for a, b in ((mem.emmeans("stage"), fit.emmeans("stage")),
                 (mem.contrasts("stage", method="trt.vs.ctrl"),
                  fit.contrasts("stage", method="trt.vs.ctrl"))):
        assert a.iloc[:, 0].tolist() == b.iloc[:, 0].tolist()
        num = a.select_dtypes("number").columns
        np.testing.assert_allclose(a[num], b[num], rtol=1e-6)


def test_kenward_roger_and_unknown_measures_are_refused_with_a_sentence(sources, tmp_path):
    big = ScaleStudy.from_duckdb(_parquet(sources["shipped"], tmp_path / "s"))
    try:
        with pytest.raises(ValueError, match="Kenward-Roger df need the rows"):
            mfr.fit_prepost(big, "pain_nrs", df_method="kenward-roger")
        with pytest.raises(ValueError, match="unknown measure 'vas'"):
            mfr.fit_course(big, "vas")
    finally:
        big.close()


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.mark.parametrize("name", ["shipped", "registry"])
def test_dask_backed_domain_fits_equal_in_memory(client, sources, name):
    dd = pytest.importorskip("dask.dataframe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = from_frames(*(sources[name][t] for t in TABLES))
    big = ScaleStudy.from_dask(*(dd.from_pandas(getattr(mem, t), npartitions=3)
                                 for t in TABLES))
    for model, measure, kw in (CASES[0], CASES[2], CASES[5]) if name == "registry" else \
            CASES[:1]:
        _same(FIT[model](mem, measure, **kw), FIT[model](big, measure, **kw))
    _same(FIT["prepost"](mem, "pain_nrs", therapist=False),
          FIT["prepost"](big, "pain_nrs", therapist=False))


def test_cli_fit_on_a_large_source_keeps_the_rows_in_duckdb(sources, tmp_path, monkeypatch,
                                                            capsys):
    import json

    from mfr_outcomes.cli import main
    from mfr_outcomes.scale import sql_validate

    folder = _parquet(sources["shipped"], tmp_path / "s")
    monkeypatch.setattr(sql_validate, "SCALE_ROWS", 1000)  # "large" from 1,000 readings on
    assert main(["fit", folder, "--model", "course", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["formula"] == "value ~ weeks + (weeks | patient_id) + (1 | therapist_id)"
    assert any("fitted inside DuckDB" in n for n in got["notes"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = mfr.fit_course(mfr.load_study(folder), "pain_nrs")
    np.testing.assert_allclose([r["estimate"] for r in got["fixed_effects"]],
                               mem.fixed_effects["estimate"], rtol=0, atol=1e-8)
