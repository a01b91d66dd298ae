"""Tests of mfr_outcomes.scale.duckdb_source: the fast engine's statistics computed inside DuckDB.

The independent answer is fit_mixed on the same rows materialised in pandas.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.fast import profiled_deviance
from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.scale.duckdb_source import sql_columns

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.MfrWarning")

FORMULA = "value ~ post * technique + session_number + (post | patient_id)"


def _same(a, b) -> None:
    """The same model: the REML criterion equal θ by θ (the statistics are those of the rows),
    and the fits equal: β to 1e-8; θ-dependent quantities (SE, variances, df) to 1e-5 relative,
    because where L-BFGS-B stops on a flat criterion moves with rounding in the sums (seen: 4e-6
    on 200k simulated rows, with the criterion equal to 1e-12 at every θ)."""
    sa, la = a.result.internals.stats, a.result.internals.layout
    sb, lb = b.result.internals.stats, b.result.internals.layout
    for theta in (b.theta, b.theta * 1.2 + 0.05):
        assert profiled_deviance(sa, la, theta) == pytest.approx(
            profiled_deviance(sb, lb, theta), rel=1e-12)
    fa, fb = a.fixed_effects, b.fixed_effects
    assert fa["term"].tolist() == fb["term"].tolist()
    np.testing.assert_allclose(fa["estimate"], fb["estimate"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(fa[["std_error", "df"]], fb[["std_error", "df"]], rtol=1e-5)
    np.testing.assert_allclose(a.variance_components["variance"].astype(float),
                               b.variance_components["variance"].astype(float), rtol=1e-5,
                               atol=1e-7)  # a covariance near 0 (-0.003) moves by ~6e-8
    assert a.nobs == b.nobs


@pytest.fixture(scope="module")
def shipped(synthetic_study, tmp_path_factory):
    frame = synthetic_study.frame("pain_nrs")
    frame = frame[frame["technique"].astype(str) != "none"]
    frame = frame[["patient_id", "post", "technique", "session_number", "value"]].copy()
    frame["technique"] = frame["technique"].astype(str)
    folder = tmp_path_factory.mktemp("shipped")
    half = frame["patient_id"].isin(frame["patient_id"].unique()[:60])
    frame[half].to_parquet(folder / "part-0.parquet", index=False)  # a folder of two files
    frame[~half].to_parquet(folder / "part-1.parquet", index=False)
    return folder


def test_parquet_folder_fit_equals_in_memory(shipped):
    in_db = fit_mixed(str(shipped), FORMULA)
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{shipped}/*.parquet')").df()
    _same(in_db, fit_mixed(rows, FORMULA))
    assert any("inside DuckDB" in n for n in in_db.notes)


def test_relation_with_missing_values_equals_in_memory(shipped):
    con = duckdb.connect()
    rel = con.sql(f"SELECT patient_id, post, technique, session_number, "
                  f"CASE WHEN session_number % 7 = 0 AND post = 1 THEN NULL ELSE value END "
                  f"AS value FROM read_parquet('{shipped}/*.parquet')")
    in_db = fit_mixed(rel, FORMULA)
    _same(in_db, fit_mixed(rel.df(), FORMULA))
    assert any("missing value" in n for n in in_db.notes)


CROSSED = ["value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id)",
           "value ~ post + (1 | patient_id) + (post | therapist_id)",
           "value ~ post + (1 | patient_id) + (1 | therapist_id) + (1 | site_id)",
           "value ~ post + (post || patient_id) + (1 | therapist_id)"]


def same_crossed(a, b) -> None:
    """Fits of several grouping factors (the sparse engine, from rows and from Gram blocks):
    the REML criterion equal at the optimum and away from it (θ, σ scaled by 1.1) to 1e-10
    relative, and :func:`same_estimates`."""
    vp = np.append(a.result.theta, a.result.sigma)
    for x in (vp, 1.1 * vp):
        assert b.result.devfun_varpar(x) == pytest.approx(a.result.devfun_varpar(x), rel=1e-10)
    same_estimates(a, b)


def same_estimates(a, b) -> None:
    """The optimum's criterion to 1e-8 relative, β to 1e-8 plus 1e-5 of its standard error;
    θ-dependent quantities to 1e-6 relative (SE, df) and 1e-5 (variances and correlations: the
    same fit's correlation, -0.0651, 1.2e-6 apart) — where the optimiser stops on a
    flat criterion moves with rounding in the sums (seen: 5.6e-8 relative on an SE of the
    registry's course fit; β of the registry's leg-pain course fit 1.25e-7 apart on one machine,
    its criterion equal to 3e-15 relative, within 1e-8 on earlier machines: BLAS kernels differ
    by CPU) —
    and BLUPs to 1e-6 with their levels."""
    assert b.result.objective == pytest.approx(a.result.objective, rel=1e-8)
    fa, fb = a.fixed_effects, b.fixed_effects
    assert fa["term"].tolist() == fb["term"].tolist()
    gap = np.abs(fa["estimate"].to_numpy() - fb["estimate"].to_numpy())
    assert np.all(gap <= 1e-8 + 1e-5 * fa["std_error"].to_numpy()), gap
    np.testing.assert_allclose(fa[["std_error", "df"]], fb[["std_error", "df"]], rtol=1e-6)
    np.testing.assert_allclose(a.variance_components["variance"].astype(float),
                               b.variance_components["variance"].astype(float), rtol=1e-5,
                               atol=1e-8)
    assert a.nobs == b.nobs
    ra = a.random_effects().sort_values(["group", "term", "level"], ignore_index=True)
    rb = b.random_effects().sort_values(["group", "term", "level"], ignore_index=True)
    assert ra["level"].astype(str).tolist() == rb["level"].astype(str).tolist()
    np.testing.assert_allclose(ra[["estimate", "cond_sd"]], rb[["estimate", "cond_sd"]],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("formula", CROSSED)
def test_crossed_and_nested_fits_from_gram_blocks_equal_in_memory(synthetic_study, formula):
    """Patients crossed with therapists (the shipped study has therapist switching), a random
    slope on the smaller factor, three factors (site too), uncorrelated terms: the Gram blocks
    summed by GROUP BY inside DuckDB give the sparse engine's fit on the rows."""
    frame = synthetic_study.frame("pain_nrs")
    frame = frame[frame["technique"].astype(str) != "none"]
    frame = frame[["patient_id", "therapist_id", "site_id", "post", "technique",
                   "session_number", "value"]].copy()
    for c in ("patient_id", "therapist_id", "site_id", "technique"):
        frame[c] = frame[c].astype(str)
    in_db = fit_mixed(duckdb.connect().from_df(frame), formula)
    mem = fit_mixed(frame, formula)
    assert mem.result.engine == in_db.result.engine == "sparse"
    same_crossed(mem, in_db)
    assert any("Gram blocks" in n and "GROUP BY" in n for n in in_db.notes)


def test_terms_without_sql_are_refused_with_a_sentence():
    assert sql_columns(["(Intercept)", "post:technique[T.massage]"], {"post"}) == [
        "1.0", "CAST(\"post\" AS DOUBLE) * (CASE WHEN CAST(\"technique\" AS VARCHAR) = "
        "'massage' THEN 1.0 ELSE 0.0 END)"]
    with pytest.raises(ValueError, match="cannot be computed inside DuckDB"):
        sql_columns(["I(session_number ** 2)"], {"session_number"})


_MAKE = """
COPY (
  SELECT 'P' || lpad(CAST(pid AS VARCHAR), 7, '0') AS patient_id, post, session_number,
         ['direct_pressure', 'stretching', 'massage', 'combined'][1 + CAST(hash(pid) % 4 AS INTEGER)]
           AS technique,
         5.0 + 2.0 * (hash(pid * 3 + 1) % 10000 / 10000.0 - 0.5)
           + (-0.8 + 0.6 * (hash(pid * 3 + 2) % 10000 / 10000.0 - 0.5)) * post
           - 0.03 * session_number
           + (hash(i * 7 + 11) % 10000 + hash(i * 7 + 12) % 10000 + hash(i * 7 + 13) % 10000)
             / 10000.0 - 1.5 AS value
  FROM (SELECT i, i // 100 AS pid, i % 2 AS post, (i % 100) // 2 + 1 AS session_number
        FROM range({n}) t(i))
) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)
"""


@pytest.mark.slow
def test_twenty_million_readings_fit_in_little_memory(tmp_path):
    big = tmp_path / "registry"
    big.mkdir()
    duckdb.sql(_MAKE.format(n=20_000_000, path=big / "readings.parquet"))
    script = textwrap.dedent(f"""
        import json, resource, warnings
        warnings.simplefilter("ignore")
        from mfr_outcomes.models.fit import fit_mixed
        fit = fit_mixed({str(big)!r}, {FORMULA!r})
        print(json.dumps({{"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "nobs": fit.nobs, "ngroups": fit.ngroups["patient_id"],
                          "post": float(fit.coef["post"])}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=600)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["nobs"] == 20_000_000 and got["ngroups"] == 200_000
    assert got["rss_mb"] < 2048, got
    assert got["post"] == pytest.approx(-0.8, abs=0.02)  # the simulated truth
    # the same generator, 200k rows: the DuckDB fit equals the in-memory fit of those rows
    small = tmp_path / "small.parquet"
    duckdb.sql(_MAKE.format(n=200_000, path=small))
    rows = pd.read_parquet(small)
    _same(fit_mixed(str(small), FORMULA), fit_mixed(rows, FORMULA))
