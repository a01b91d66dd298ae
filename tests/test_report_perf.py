"""The fast paths of the QI report against plain answers: the analysis frames a Study keeps
against frames built afresh, and ``qi.aggregate`` and ``effects.responders`` against
per-patient Python written the straightforward way, on seeded random studies."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes import effects, qi
from mfr_outcomes.rules import (
    affected_side_rows,
    can_show_important_change,
    important_change_mask,
)
from mfr_outcomes.study import Study, analysis_frame
from mfr_outcomes.synthetic import generate_frames
from mfr_outcomes.vocab import TECHNIQUE, TREATMENT_TECHNIQUES
from mfr_outcomes.warnings_ import DataWarning

SEEDS = range(3)
MEASURES = ("pain_nrs", "slr_deg", "odi", "ppt_kgcm2")


def _fresh(study: Study, measure: str, side: str | None = None) -> pd.DataFrame:
    return analysis_frame(study.patients, study.sessions, study.measurements, measure, side=side,
                          covariates=study.covariates)


def _random_study(seed: int) -> Study:
    """A small simulated study with a third of its readings dropped at random (patients with
    no pre reading, one visit, or no post reading all occur)."""
    frames, _ = generate_frames(n_patients=40, seed=seed)
    rng = np.random.default_rng(seed)
    m = frames["measurements"]
    m = m[rng.random(len(m)) > 0.35].reset_index(drop=True)
    return Study(frames["patients"], frames["sessions"], m)


# --------------------------------------------------------------------------------------------
# cached analysis frames


def test_cached_frames_equal_fresh(synthetic_study):
    study = Study(synthetic_study.patients, synthetic_study.sessions,
                  synthetic_study.measurements)
    cases = [(m, None) for m in study.measures] + [("slr_deg", "left"), ("slr_deg", "right"),
                                                    ("slr_deg", "none"), ("pain_nrs", "none")]
    for measure, side in cases:
        try:
            want = _fresh(study, measure, side)
        except KeyError:
            with pytest.raises(KeyError):
                study.frame(measure, side=side)
            continue
        pd.testing.assert_frame_equal(study.frame(measure, side=side), want)
        pd.testing.assert_frame_equal(study.frame(measure, side=side), want)  # from cache


def test_cache_follows_edits_in_place_and_assignments(synthetic_study):
    study = Study(synthetic_study.patients.copy(), synthetic_study.sessions.copy(),
                  synthetic_study.measurements.copy())
    first = study.frame("pain_nrs")
    first.loc[0, "value"] = 99.0  # a caller's edit never reaches the cache
    assert study.frame("pain_nrs").loc[0, "value"] != 99.0

    row = study.measurements.index[study.measurements["measure"] == "pain_nrs"][0]
    study.measurements.loc[row, "value"] = 42.5
    pd.testing.assert_frame_equal(study.frame("pain_nrs"), _fresh(study, "pain_nrs"))
    assert (study.frame("pain_nrs")["value"] == 42.5).sum() == 1

    study.sessions.loc[0, "session_date"] = pd.Timestamp("2025-01-01")
    pd.testing.assert_frame_equal(study.frame("pain_nrs"), _fresh(study, "pain_nrs"))
    study.patients.loc[0, "site_id"] = "site-9"
    assert "site-9" in set(study.frame("pain_nrs")["site_id"])
    study.sessions.fillna({"target_region": "multiple"}, inplace=True)
    pd.testing.assert_frame_equal(study.frame("pain_nrs"), _fresh(study, "pain_nrs"))

    study.measurements = study.measurements[study.measurements["measure"] != "odi"]
    assert "odi" not in study.measures
    with pytest.raises(KeyError):
        study.frame("odi")
    study.patients = study.patients.assign(bmi=np.linspace(18, 35, len(study.patients)))
    study.covariates = ("bmi",)
    pd.testing.assert_frame_equal(study.frame("slr_deg", side="left"),
                                  _fresh(study, "slr_deg", "left"))
    assert "bmi" in study.frame("pain_nrs").columns


def test_pickled_study_rebuilds_its_frames(synthetic_study):
    study = Study(synthetic_study.patients, synthetic_study.sessions,
                  synthetic_study.measurements)
    study.frame("pain_nrs")
    again = pickle.loads(pickle.dumps(study))
    pd.testing.assert_frame_equal(again.frame("pain_nrs"), _fresh(study, "pain_nrs"))


def test_summary_equals_one_measure_at_a_time():
    for seed in SEEDS:
        study = _random_study(seed)
        got = study.summary()
        m = study.measurements.merge(study.sessions[["session_id", "patient_id"]],
                                     on="session_id", how="left")
        for r, code in enumerate(study.measures):
            sub = m[m["measure"] == code]
            pre = sub.loc[sub["phase"] == "pre", "value"]
            post = sub.loc[sub["phase"] == "post", "value"]
            row = got.iloc[r]
            assert (row["measure"], row["patients"], row["sessions"], row["readings"]) == (
                code, sub["patient_id"].nunique(), sub["session_id"].nunique(), len(sub))
            assert (row["pre_n"], row["post_n"]) == (len(pre), len(post))
            for got_mean, values in ((row["pre_mean"], pre), (row["post_mean"], post)):
                assert (np.isnan(got_mean) and values.empty) or got_mean == values.mean()


# --------------------------------------------------------------------------------------------
# qi.aggregate: finished care and responders per period, patient by patient


def _reference_completed(frame: pd.DataFrame, measure: str, by: str | None,
                         period: str) -> dict[tuple, tuple[int, int]]:
    """(by, period) -> (patients finishing care, responders), one patient at a time."""
    from mfr_outcomes.measures import get_measure

    m = get_measure(measure)
    has_threshold = m.threshold_points is not None or m.mcid_percent is not None
    df = frame[affected_side_rows(frame) & (frame["phase"].astype(str) == "pre")]
    visits: dict[str, list] = {}
    for (pid, _), g in df.groupby(["patient_id", "session_id"], observed=True):
        value = g["value"].mean()
        if np.isnan(value):
            continue
        date = pd.Timestamp(g["session_date"].iloc[0])
        visits.setdefault(pid, []).append(
            ((str(g[by].iloc[0]) if by else ""), int(g["session_number"].iloc[0]), date,
             value))
    out: dict[tuple, list[int]] = {}
    for pid in sorted(visits):
        rows = sorted(visits[pid], key=lambda v: (v[0], v[1], v[2]))
        first, last = rows[0], rows[-1]
        if len(rows) < 2 or first[1] == last[1]:
            continue
        if has_threshold and not can_show_important_change(measure, first[3]):
            continue
        key = ((last[0],) if by else ()) + (last[2].to_period("M" if period == "month"
                                                              else "Q"),)
        cell = out.setdefault(key, [0, 0])
        cell[0] += 1
        cell[1] += int(has_threshold and important_change_mask(measure, first[3], last[3]))
    return {k: (v[0], v[1]) for k, v in out.items()}


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregate_equals_patient_by_patient(seed):
    study = _random_study(seed)
    rng = np.random.default_rng(100 + seed)
    for measure in MEASURES:
        frame = study.frame(measure)
        by = [None, "site_id", "therapist_id"][int(rng.integers(3))]
        period = ["month", "quarter"][int(rng.integers(2))]
        agg = qi.aggregate(frame, measure, by=by, period=period, fill_gaps=False)
        want = _reference_completed(frame, measure, by, period)
        got = {((str(r[by]),) if by else ()) + (r["period"],):
               (int(r["n_completed"]), int(r["n_responders"]))
               for _, r in agg.iterrows() if r["n_completed"]}
        assert got == want, (measure, by, period)
        assert agg["n_completed"].sum() == sum(v[0] for v in want.values())


# --------------------------------------------------------------------------------------------
# effects.responders: baseline and last reading, patient by patient


def _main_technique(sessions: pd.DataFrame) -> dict[str, str]:
    """The treatment each patient had most often, ties to the earlier in the vocabulary."""
    out = {}
    for pid, g in sessions.groupby("patient_id"):
        counts = g["technique"].astype(str).value_counts()
        tied = [t for t in TECHNIQUE if t in TREATMENT_TECHNIQUES
                and counts.get(t, 0) == counts.reindex(TREATMENT_TECHNIQUES).max()]
        if tied and counts.reindex(TREATMENT_TECHNIQUES).max() > 0:
            out[pid] = tied[0]
    return out


def _reference_responders(study: Study, measure: str, last: str,
                          main: dict[str, str]) -> tuple[pd.DataFrame, list]:
    frame = study.frame(measure)
    frame = frame[affected_side_rows(frame)]
    per = (frame.groupby(["patient_id", "session_id", "session_number", "technique", "post"],
                         observed=True, dropna=False)["value"].mean().reset_index())
    by_patient = dict(tuple(per.groupby("patient_id")))
    sites = study.patients.set_index("patient_id")["site_id"]
    rows, excluded = [], []
    for pid in sorted(set(frame["patient_id"])):
        g = by_patient[pid].sort_values("session_number", kind="stable")
        pre = g[g["post"] == 0]
        if pre.empty:
            excluded.append((pid, "no pre-treatment reading"))
            continue
        pool = {"last_pre": pre, "discharge": pre[pre["technique"].astype(str) != "none"],
                "follow_up": pre[pre["technique"].astype(str) == "none"],
                "last_post": g[g["post"] == 1]}[last]
        if pool.empty:
            excluded.append((pid, f"no {last.replace('_', ' ')} reading"))
            continue
        b, e = pre.iloc[0], pool.iloc[-1]
        if last != "last_post" and b["session_number"] == e["session_number"]:
            excluded.append((pid, "only one visit with a reading, so no change"))
            continue
        rows.append((pid, sites[pid], main.get(pid, "none"),
                     g["session_id"].nunique(),
                     float(b["value"]), float(e["value"])))
    return pd.DataFrame(rows, columns=["patient_id", "site_id", "technique", "n_visits",
                                       "baseline", "last"]), excluded


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(str(v) if isinstance(v, str) else v for v in row)
            for row in frame.itertuples(index=False, name=None)]


@pytest.mark.parametrize("seed", SEEDS)
def test_responders_equal_patient_by_patient(seed):
    study = _random_study(seed)
    main = _main_technique(study.sessions)
    for measure, last in ((m, la) for m in MEASURES for la in effects.LAST_CHOICES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            got = effects.responders(study, measure, last=last)
        want, excluded = _reference_responders(study, measure, last, main)
        cols = ["patient_id", "site_id", "n_visits", "baseline", "last"]
        assert _rows(got[cols]) == _rows(want[cols]), (measure, last)
        assert got["technique"].astype(str).tolist() == [str(t) for t in want["technique"]]
        assert list(got.attrs["excluded"].itertuples(index=False, name=None)) == excluded
        eligible = can_show_important_change(measure, want["baseline"])
        assert got["eligible"].tolist() == eligible.tolist()
        resp = important_change_mask(measure, want["baseline"], want["last"])
        assert got["responder"].tolist() == [bool(r) if e else pd.NA
                                             for r, e in zip(resp, eligible, strict=True)]
