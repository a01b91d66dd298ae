"""Write the inputs of make_reference_marginal.R under tests/reference/data/.

marginal_prepost.csv is simulated here; marginal_synthetic.csv is a snapshot of the shipped
synthetic pain frame.

A seeded pre/post NRS simulation (4 techniques, random intercept and post slope per patient,
patients nested in therapists, some post readings missing) so the R fixtures do not depend on the
package's own simulator. Run from the repo root: ``uv run python tests/reference/make_marginal_data.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TECHNIQUES = ["direct_pressure", "stretching", "massage", "combined"]


def simulate(seed: int = 20261125, n_patients: int = 48, n_sessions: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    post_effect = {"direct_pressure": -1.6, "stretching": -1.0, "massage": -1.3, "combined": -2.0}
    base_shift = {"direct_pressure": 0.0, "stretching": 0.3, "massage": -0.2, "combined": 0.1}
    n_therapists = 8
    therapist_effect = rng.normal(0.0, 0.5, n_therapists)
    for i in range(n_patients):
        pid = f"P{i + 1:03d}"
        therapist = i % n_therapists
        tech = TECHNIQUES[rng.integers(0, 4)]
        b0, b1 = rng.multivariate_normal([0.0, 0.0], [[1.2, -0.25], [-0.25, 0.4]])
        for s in range(1, n_sessions + 1):
            pre_mu = 6.5 + base_shift[tech] - 0.25 * s + b0 + therapist_effect[therapist]
            for post in (0, 1):
                if post == 1 and rng.random() < 0.12:
                    continue  # a missed post reading: unbalanced cells
                mu = pre_mu + post * (post_effect[tech] + b1)
                value = mu + rng.normal(0.0, 0.8)
                rows.append({
                    "patient_id": pid,
                    "therapist_id": f"T{therapist + 1:02d}",
                    "technique": tech,
                    "session_number": s,
                    "post": post,
                    "value": round(float(value), 3),
                })
    return pd.DataFrame(rows)


def synthetic_snapshot(study=None) -> pd.DataFrame:
    """The synthetic pain frame on treatment visits: what fit_prepost(study, "pain_nrs") fits.

    Default: the shipped data/synthetic. A snapshot of our own, so regenerating data/synthetic
    does not invalidate the fixture.
    """
    import mfr_outcomes as mfr

    if study is None:
        study = mfr.load_study("data/synthetic")
    fr = study.frame("pain_nrs")
    fr = fr[fr["technique"].astype(str) != "none"]
    cols = ["patient_id", "therapist_id", "session_number", "technique", "post", "value"]
    out = fr[cols].copy()
    out["technique"] = out["technique"].astype(str)
    return out


if __name__ == "__main__":
    out = Path("tests/reference/data/marginal_prepost.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    simulate().to_csv(out, index=False)
    synthetic_snapshot().to_csv(out.with_name("marginal_synthetic.csv"), index=False)
    # A boundary (singular) case: the simulator with visit-level noise that the (post | patient)
    # model does not have a term for (the simulator's defaults before 2026-11-25).
    from mfr_outcomes.synthetic import generate

    # (p_other_therapist=0: patients nested in therapists, as the simulator had it then)
    study, _ = generate(n_patients=120, seed=2026, session_sd=0.7, residual_sd=0.5,
                        p_other_therapist=0.0, measures=["pain_nrs"])
    synthetic_snapshot(study).to_csv(out.with_name("marginal_singular.csv"), index=False)
