"""Write the frozen input CSVs of the lme4 reference fixtures (run before make_reference.R).

    uv run python tests/reference/make_inputs.py

sleepstudy.csv and penicillin.csv are written by make_reference.R from lme4's own data sets; the
others come from the shipped synthetic data or from seeded numpy simulations below.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
OUT = HERE / "data"
ROOT = HERE.parent.parent


def prepost() -> pd.DataFrame:
    import mfr_outcomes as mfr

    study = mfr.load_study(ROOT / "data" / "synthetic")
    fr = study.frame("pain_nrs")
    fr = fr[fr["technique"] != "none"]
    cols = ["patient_id", "therapist_id", "session_number", "weeks", "technique", "post", "value"]
    out = fr[cols].copy()
    out["technique"] = out["technique"].astype(str)
    return out


def unbalanced(seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(30):
        arm = "b" if i % 2 else "a"
        age = float(rng.integers(25, 80))
        b0, b1 = rng.multivariate_normal([0, 0], [[1.2, -0.3], [-0.3, 0.5]])
        for s in range(int(rng.integers(2, 9))):
            for post in (0, 1):
                mu = 6 + b0 + 0.02 * (age - 50) + (-1.2 + b1 + (-0.6 if arm == "b" else 0)) * post
                rows.append({"id": f"id{i:02d}", "arm": arm, "age": age, "session": s + 1,
                             "post": post, "y": mu + rng.normal(0, 0.8)})
    df = pd.DataFrame(rows)
    miss = rng.random(len(df)) < 0.08
    df.loc[miss, "y"] = np.nan
    df.loc[df.index[rng.choice(len(df), 4, replace=False)], "age"] = np.nan
    return df


def singular(seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(12), 4)
    x = np.tile(np.arange(4), 12).astype(float)
    y = 3 + 0.5 * x + rng.normal(0, 1, g.size)  # no group variation at all
    return pd.DataFrame({"g": [f"g{k:02d}" for k in g], "x": x, "y": y})


def nested(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    techs = ["direct_pressure", "stretching", "massage"]
    for t in range(6):
        bt = rng.normal(0, 0.7)
        for k in range(7):
            pid = f"P{t}{k}"
            b0, b1 = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.4]])
            for s in range(5):
                tech = techs[int(rng.integers(0, 3))]
                eff = {"direct_pressure": 0.0, "stretching": 0.3, "massage": -0.4}[tech]
                for post in (0, 1):
                    mu = 6 + bt + b0 + (-1.5 + b1 + eff) * post - 0.1 * s
                    rows.append({"therapist_id": f"T{t}", "patient_id": pid, "session_number": s + 1,
                                 "technique": tech, "post": post, "value": mu + rng.normal(0, 0.9)})
    return pd.DataFrame(rows)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    prepost().to_csv(OUT / "prepost.csv", index=False)
    unbalanced().to_csv(OUT / "unbalanced.csv", index=False)
    singular().to_csv(OUT / "singular.csv", index=False)
    nested().to_csv(OUT / "nested.csv", index=False)


if __name__ == "__main__":
    main()
