"""Tests of mfr_outcomes.scale.dask_fit: fit_mixed on a Dask DataFrame on a local cluster of two
worker processes equals the in-memory fit (the independent answer) to 1e-8."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.study import analysis_frame
from mfr_outcomes.synthetic import generate_frames

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.MfrWarning")

FORMULA = "value ~ post * technique + session_number + (post | patient_id)"


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _registry(n_sites: int = 3, n: int = 40) -> pd.DataFrame:
    """A simulated multi-site registry: each site its own patients and level."""
    out = []
    for k in range(n_sites):
        f, _ = generate_frames(n_patients=n, seed=300 + k, measures=["pain_nrs"])
        d = analysis_frame(f["patients"], f["sessions"], f["measurements"], "pain_nrs")
        d = d[d["technique"].astype(str) != "none"].copy()
        d["patient_id"] = f"site{k}-" + d["patient_id"].astype(str)
        d["value"] = d["value"] + 0.5 * k
        out.append(d)
    return pd.concat(out, ignore_index=True)


def _assert_same(a, b) -> None:
    fa, fb = a.fixed_effects, b.fixed_effects
    assert fa["term"].tolist() == fb["term"].tolist()
    np.testing.assert_allclose(fa[["estimate", "std_error"]], fb[["estimate", "std_error"]],
                               rtol=0, atol=1e-8)
    np.testing.assert_allclose(fa["df"], fb["df"], rtol=1e-6)  # finite-difference Hessian
    np.testing.assert_allclose(a.variance_components["variance"].astype(float),
                               b.variance_components["variance"].astype(float), atol=1e-8)
    assert a.nobs == b.nobs and a.loglik == pytest.approx(b.loglik, abs=1e-7)


@pytest.mark.parametrize("source", ["shipped", "registry"])
def test_dask_fit_equals_in_memory(client, synthetic_study, source):
    if source == "shipped":
        frame = synthetic_study.frame("pain_nrs")
        frame = frame[frame["technique"].astype(str) != "none"].reset_index(drop=True)
    else:
        frame = _registry()
    ddf = dd.from_pandas(frame, npartitions=5)
    on_cluster = fit_mixed(ddf, FORMULA)
    in_memory = fit_mixed(frame, FORMULA)
    _assert_same(on_cluster, in_memory)
    assert any("Dask" in n for n in on_cluster.notes)
    # BLUPs by a second pass over the partitions equal the in-memory ones
    got = on_cluster.random_effects().sort_values(["term", "level"]).reset_index(drop=True)
    want = in_memory.random_effects().sort_values(["term", "level"]).reset_index(drop=True)
    assert got["level"].astype(str).tolist() == want["level"].astype(str).tolist()
    np.testing.assert_allclose(got["estimate"], want["estimate"], atol=1e-8)
    np.testing.assert_allclose(got["cond_sd"], want["cond_sd"], atol=1e-8)


def test_dask_crossed_fit_equals_in_memory(client):
    """Patients crossed with therapists on a Dask frame: per-partition cell tables (no
    shuffle) summed in a tree give the sparse engine's fit on the rows, BLUPs included."""
    from test_duckdb_fit import same_crossed

    frame = _registry()
    frame["therapist_id"] = frame["therapist_id"].astype(str)
    formula = "value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id)"
    on_cluster = fit_mixed(dd.from_pandas(frame, npartitions=5), formula)
    same_crossed(fit_mixed(frame, formula), on_cluster)
    assert any("Gram blocks" in n and "Dask" in n for n in on_cluster.notes)
