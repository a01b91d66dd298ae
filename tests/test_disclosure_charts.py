"""No chart reveals a count the report hides (issue 12, item 5).

A p-chart plots each period's proportion x/n, and its limits p̄ ± 3√(p̄(1 − p̄)/n) give n: a reader
reads both counts off the chart. The report is attacked as in ``test_disclosure.py``: every
count of every table and sentence (hidden ones as unknowns with what their label says), plus
every count a chart implies (read from the data the chart function was given), plus the
margins a reader finds (a chart's counts over all its periods add up to a published count, a
chart's month is the table's month). A hidden count must keep more than one feasible value.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).parent))
from test_disclosure import K, _published, _study_with_small_cells  # noqa: E402

from mfr_outcomes.report import build_report  # noqa: E402


def _clinic():
    """240 patients over eleven months, a soreness at about one treatment session in seven: both
    p-charts are drawn (by week), with gaps where counts are small."""
    from mfr_outcomes.study import from_frames
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(240, 5, measures=["pain_nrs"])
    s = frames["sessions"].copy()
    tx = s["technique"] != "none"
    s.loc[tx, "adverse_event"] = "none"
    idx = s.index[tx]
    s.loc[idx[np.random.default_rng(5).random(len(idx)) < 0.15], "adverse_event"] = "soreness"
    s.loc[idx[:3], "adverse_event"] = "symptom_flare"
    return from_frames(frames["patients"], s, frames["measurements"])


def _one_small_month():
    """The small-cell study with adverse events recorded from February to August only: six
    sessions with an event each month, two in May. Left out of a chart alone, May's count is the
    total said in the safety section minus the months shown."""
    from mfr_outcomes.study import from_frames
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(60, 21, measures=["pain_nrs"])
    s = frames["sessions"].copy()
    tx = s["technique"] != "none"
    month = pd.to_datetime(s["session_date"]).dt.strftime("%Y-%m")
    s["adverse_event"] = None
    inside = tx & month.between("2026-02", "2026-08")
    s.loc[inside, "adverse_event"] = "none"
    for m, rows in s[inside].groupby(month[inside]).groups.items():
        s.loc[list(rows)[:2 if m == "2026-05" else 6], "adverse_event"] = "soreness"
    return from_frames(frames["patients"], s, frames["measurements"])


def _p_counts(res) -> pd.DataFrame:
    """The counts a reader reads off a drawn p-chart: n from the limits, x = p·n (a period
    without a value is a gap)."""
    pts = res.points
    pbar, sigma = pts["centre"].to_numpy(float), pts["sigma"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.rint(pbar * (1 - pbar) / sigma ** 2)
    x = np.rint(pts["value"].to_numpy(float) * n)
    shown = np.isfinite(pts["value"].to_numpy(float)) & np.isfinite(n)
    return pd.DataFrame({"label": pts["label"].astype(str), "x": np.where(shown, x, np.nan),
                         "n": np.where(shown, n, np.nan)})


def _truth(study, title: str, grain: str) -> pd.DataFrame:
    """The true counts of each period of a chart, computed here from the study."""
    from mfr_outcomes.report.sections import trends

    if "adverse" in title:
        t = trends._ae_counts(study, grain)
        return pd.DataFrame({"label": t[grain].astype(str), "x": t["events"],
                             "n": t["sessions"]})
    t = trends.monthly_frame(study, "pain_nrs", grain)
    return pd.DataFrame({"label": t[grain].astype(str), "x": t["responders"],
                         "n": t["finished_care"]})


class _Reader:
    """Unknowns for hidden cells and chart gaps; equations that hold for the true counts."""

    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self.truth: dict[tuple, float] = {}
        self.shown: dict[tuple, str] = {}
        self.rows: list[tuple[dict[tuple, float], float]] = []

    def cell(self, key: tuple, shown: str, true: float) -> tuple:
        self.keys.append(key)
        self.shown[key], self.truth[key] = shown, float(true)
        return key

    def hidden(self, key: tuple) -> bool:
        return self.shown[key] in (f"<{K}", "suppressed", "gap")

    def equal(self, total: tuple, parts: list[tuple]) -> None:
        if abs(self.truth[total] - sum(self.truth[p] for p in parts)) > 1e-9:
            return  # a reader may try it, but it does not hold
        coef: dict[tuple, float] = {}
        const = 0.0
        for key, sign in [(total, -1.0)] + [(p, 1.0) for p in parts]:
            if self.hidden(key):
                coef[key] = coef.get(key, 0.0) + sign
            else:
                const += sign * self.truth[key]
        if coef:
            self.rows.append((coef, -const))

    def pinned(self) -> dict[tuple, tuple[float, float]]:
        unknown = [k for k in self.keys if self.hidden(k)]
        col = {k: j for j, k in enumerate(unknown)}
        if not self.rows:
            return {}
        a = np.zeros((len(self.rows), len(unknown)))
        b = np.zeros(len(self.rows))
        for r, (coef, rhs) in enumerate(self.rows):
            for k, v in coef.items():
                a[r, col[k]] += v
            b[r] = rhs
        bounds = [(1, K - 1) if self.shown[k].startswith("<") else
                  (0, None) if self.shown[k] == "gap" else (K, None) for k in unknown]
        out = {}
        for k, j in col.items():
            if not a[:, j].any():
                continue
            c = np.zeros(len(unknown))
            c[j] = 1
            lo = linprog(c, A_eq=a, b_eq=b, bounds=bounds, method="highs")
            hi = linprog(-c, A_eq=a, b_eq=b, bounds=bounds, method="highs")
            assert lo.status == 0, "the true counts must satisfy every equation"
            top = np.inf if hi.status == 3 else -hi.fun
            if top - lo.fun < 0.5 and not (self.shown[k] == "gap" and top < 0.5):
                out[k] = (lo.fun, top)  # a gap known to be 0 reveals nothing
        return out


@pytest.fixture(scope="module", params=["small", "clinic", "one-small-month"])
def charted(request, tmp_path_factory):
    """The report of a study with --min-cell 5, and the data given to every chart drawn: the
    small-cell study of ``test_disclosure.py`` (charts of three months or more, so that its
    months are drawn), a clinic whose charts are drawn by week, and a study whose adverse-event
    chart has one small month."""
    import mfr_outcomes.plots as plots
    from mfr_outcomes import qi

    small = request.param != "clinic"
    study = {"small": _study_with_small_cells, "clinic": _clinic,
             "one-small-month": _one_small_month}[request.param]()
    out = tmp_path_factory.mktemp("charts")
    drawn: list[tuple[str, object]] = []
    real = plots.spc_chart

    def spy(result, **kw):
        drawn.append((kw.get("title") or "", result))
        return real(result, **kw)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(plots, "spc_chart", spy)
        # charts of a few months (the rules' minimum is not a disclosure matter): the small
        # study's months are drawn, with its small and complement-hidden counts
        if small:
            mp.setattr(qi, "MIN_SPC_POINTS", 3)
        warnings.simplefilter("ignore")
        result = build_report(study, out, min_cell=K, seed=1)
    return request.param, study, result, out, drawn


def test_both_p_charts_are_drawn(charted):
    name, _, result, _, drawn = charted
    assert not result.failures, result.failures
    if name == "one-small-month":  # May is a gap, and another month hides it
        ae = [_p_counts(res) for t, res in drawn if "adverse" in t]
        assert ae and ae[0]["x"].isna().sum() >= 2, ae
        return
    if name == "small":  # its months are hidden: a chart says so, or is drawn with gaps
        return
    titles = [t for t, res in drawn if res.kind == "p"]
    assert any("Responders" in t for t in titles) and any("adverse" in t for t in titles), titles


def test_no_hidden_count_is_read_off_a_chart(charted):
    _, study, result, out, drawn = charted
    reader = _Reader()
    cells = _published(result, out, "all", study)
    by_id = {}
    for key, shown, true, cid in cells:
        by_id[cid] = reader.cell(key, shown, true)
    tables: dict[str, dict[str, list[tuple]]] = {}
    for key, *_ in cells:
        if key[1] != "sentence":
            tables.setdefault(key[1], {}).setdefault(key[3], []).append(key)
    columns = [keys for t in tables.values() for keys in t.values()]
    monthly = {(key[2], key[3]): key for key, *_ in cells if key[1] == "monthly"}
    revealed = []
    for title, res in drawn:
        if res.kind != "p":
            continue
        grain = "week" if title.endswith("by week") else "month"
        seen = _p_counts(res)
        true = _truth(study, title, grain).set_index("label")
        for what in ("x", "n"):
            chart = []
            for lab, v in zip(seen["label"], seen[what], strict=True):
                t = float(true.loc[lab, what]) if lab in true.index else 0.0
                if np.isfinite(v):
                    assert v == t, (title, lab, what, v, t)
                col = {"x": "responders", "n": "finished_care"}[what]
                if "Responders" in title and (lab, col) in monthly:
                    key = monthly[(lab, col)]  # the table's cell: the chart may publish it
                    if np.isfinite(v):
                        if reader.hidden(key):  # the table hides what the chart shows
                            revealed.append((key, reader.shown[key], int(v)))
                        reader.shown[key] = str(int(v))
                else:
                    key = reader.cell(("chart", title, lab, what),
                                      str(int(v)) if np.isfinite(v) else "gap", t)
                chart.append(key)
            columns.append(chart)
    assert not revealed, revealed
    for total, parts in result.ledger.relations:
        reader.equal(by_id[total], [by_id[p] for p in parts])
    # a column (of a table or a chart) adds up to any published count: the reader tries them all
    for column in columns:
        total = sum(reader.truth[k] for k in column)
        for other in list(reader.keys):
            if other not in column and reader.truth[other] == total and total > 0 and \
                    not reader.hidden(other):
                reader.equal(other, column)
    hidden = [k for k in reader.keys if reader.shown[k] in (f"<{K}", "suppressed")]
    assert hidden, "the report should hide some counts"
    pinned = reader.pinned()
    assert not pinned, pinned
