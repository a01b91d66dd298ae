"""Disclosure control that survives arithmetic (issue 12, items 4-6).

The report is attacked as a reader with a spreadsheet would: every sum that ties published
counts together (a table's total, "all patients", read = used + excluded, readings = pre +
post, a count repeated in a sentence) is written from the published CSV files alone, and for
each hidden cell the feasible values are found by linear programming (scipy's linprog). A
hidden cell must keep more than one feasible value. Across reports, the all-sites report minus
the other sites' reports must not recover a site's hidden count.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog

from mfr_outcomes.report import Ledger, build_report
from mfr_outcomes.report.disclosure import Cell
from mfr_outcomes.report.family import ALL_SITES as ALL_SITES_NAME

K = 5


# ---------------------------------------------------------------------------- the ledger


def test_ledger_primary_secondary_and_zero():
    led = Ledger(5)
    total, a, b, zero = led.add(12), led.add(9), led.add(3), led.add(0)
    led.relate(total, [a, b, zero])
    led.decide()
    assert led.label(b) == "<5"            # small
    assert led.label(a) == "suppressed"    # would give b = 12 - 9 - 0
    assert led.label(zero) == 0 and led.label(total) == 12
    assert led.interval(b)[1] - led.interval(b)[0] >= 1


def test_ledger_sentence_repeating_a_hidden_count_is_hidden_with_it():
    led = Ledger(5)
    total, soreness, flare = led.add(30), led.add(27), led.add(3)
    led.relate(total, [soreness, flare])
    said = led.add(3)                       # "Symptom flares: 3" in a sentence
    led.same(said, flare)
    led.decide()
    assert led.label(said) == "<5" and led.label(soreness) == "suppressed"


def test_ledger_refuses_a_false_sum():
    led = Ledger(5)
    with pytest.raises(ValueError, match="declared sum does not hold"):
        led.relate(led.add(10), [led.add(4), led.add(5)])


def test_ledger_equations_in_the_hidden_cells_hold_for_the_true_counts():
    """The sparse system the pinning check solves: one equation per sum that holds a hidden
    cell of the component (a cell repeated in a sum counted twice, a sum whose hidden cells
    cancel dropped), with the published counts on the right, satisfied by the true counts."""
    rng = np.random.default_rng(7)
    led = Ledger(5)
    parts = [led.add(v) for v in [3, 2, *rng.integers(0, 12, size=28).tolist()]]
    for _ in range(25):
        pick = sorted(rng.choice(30, size=int(rng.integers(2, 6)), replace=False).tolist())
        led.relate(led.add(sum(led.values[p] for p in pick)), [parts[p] for p in pick])
    twice = led.add(8)
    led.relate(twice, [parts[0], parts[0], parts[1]])
    led.relate(parts[0], [parts[0]])                      # hidden on both sides: cancels
    led.decide()
    assert parts[0].id in led.status
    cells, rels = led.component(parts[0].id)
    a, b = led._system(cells, rels)
    want = [(c, r) for r in rels if any(c := _coefficients(led, r, cells))]
    assert len(want) < len(rels)                           # the cancelling sum is dropped
    assert np.array_equal(a.toarray(), np.array([c for c, _ in want]))
    assert np.allclose(a.toarray() @ np.array([led.values[h] for h in cells]), b)
    row = [k for k, (_, r) in enumerate(want) if led.relations[r][0] == twice.id]
    assert a.toarray()[row[0], cells.index(parts[0].id)] == 2


def test_programme_kept_between_objectives_agrees_with_linprog(capfd):
    """The disclosure check's programmes (one HiGHS model kept per system, re-solved with a
    new objective) give scipy's linprog's least and greatest values, say unbounded, and print
    nothing (HiGHS writes its banner to the process's standard output unless told first)."""
    from scipy import sparse

    from mfr_outcomes.report.lp import Programme

    rng = np.random.default_rng(11)
    lp = Programme()
    for trial in range(6):
        n, m = 12, 7
        a = (rng.random((m, n)) < 0.3).astype(float)
        a[:, 0] = 1.0
        truth = rng.integers(1, 9, size=n).astype(float)
        b = a @ truth
        bounds = [(1, 4) if t < 5 else (5, None) for t in truth]
        key = ("system", trial)
        for col in range(n):
            for sense in (1.0, -1.0):
                status, x, value = lp.solve(key, sparse.csr_array(a), b, bounds, col, sense)
                c = np.zeros(n)
                c[col] = sense
                ref = linprog(c, A_eq=a, b_eq=b, bounds=bounds, method="highs")
                if ref.status == 3:
                    assert status == "unbounded" and value == -sense * np.inf
                    continue
                assert ref.status == 0 and status == "optimal"
                assert value == pytest.approx(ref.x[col], abs=1e-7)
                assert np.allclose(a @ x, b, atol=1e-7)
    free = lp.solve(("free",), sparse.csr_array(np.array([[1.0, -1.0]])), np.array([0.0]),
                    [(5, None), (5, None)], 0, -1.0)          # x0 = x1 >= 5: no greatest
    assert free[0] == "unbounded" and free[2] == np.inf
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def _coefficients(led: Ledger, r: int, cells: list[int]) -> list[float]:
    total, parts = led.relations[r]
    coef = [0.0] * len(cells)
    for j, sign in [(total, -1.0)] + [(p, 1.0) for p in parts]:
        if j in cells:
            coef[cells.index(j)] += sign
    return coef


# ---------------------------------------------------------------------------- the attacker


def _read(folder: Path, name: str) -> list[dict[str, str]]:
    path = folder / "tables" / f"{name}.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class _Attack:
    """Published counts as constants, hidden ones as unknowns with what their label says."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.bounds: list[tuple[float, float | None]] = []
        self.rows: list[tuple[dict[int, float], float]] = []

    def term(self, cell: str, name: str) -> tuple[int | None, float]:
        cell = cell.strip()
        if cell in (f"<{K}", "suppressed"):
            self.names.append(name)
            self.bounds.append((1, K - 1) if cell.startswith("<") else (K, None))
            return len(self.names) - 1, 0.0
        return None, float(cell)

    def equal(self, total: tuple, parts: list[tuple]) -> None:
        coef: dict[int, float] = {}
        const = 0.0
        for (var, val), sign in [(total, -1.0)] + [(p, 1.0) for p in parts]:
            if var is None:
                const += sign * val
            else:
                coef[var] = coef.get(var, 0.0) + sign
        if coef:
            self.rows.append((coef, -const))

    def widths(self) -> dict[str, float]:
        n = len(self.names)
        a = np.zeros((len(self.rows), n))
        b = np.zeros(len(self.rows))
        for r, (coef, rhs) in enumerate(self.rows):
            for j, v in coef.items():
                a[r, j] = v
            b[r] = rhs
        out = {}
        for i in range(n):
            c = np.zeros(n)
            c[i] = 1
            if not a[:, i].any():
                continue
            lo = linprog(c, A_eq=a, b_eq=b, bounds=self.bounds, method="highs")
            hi = linprog(-c, A_eq=a, b_eq=b, bounds=self.bounds, method="highs")
            assert lo.status == 0, "the published counts are inconsistent"
            top = np.inf if hi.status == 3 else -hi.fun
            out[self.names[i]] = top - lo.fun
        return out


def _attack(folder: Path) -> dict[str, float]:
    """Every margin a reader can write from the published tables and sentences."""
    att = _Attack()
    t = att.term
    for r in _read(folder, "data_quality_row_accounting"):
        att.equal(t(r["read"], f"read {r['table']}"),
                  [t(r["used"], f"used {r['table']}"), t(r["excluded"], f"excl {r['table']}")])
    flow = {r["stage"]: r for r in _read(folder, "cohort_flow")}
    if "Patient rows in the source" in flow:
        att.equal(t(flow["Patient rows in the source"]["patients"], "flow read"),
                  [t(flow["Excluded at validation"]["patients"], "flow excl"),
                   t(flow["Valid patients in the source"]["patients"], "flow valid")])
    scope = flow["With a visit in scope"]["patients"]
    tx = flow["With at least one treatment session"]["sessions"]
    base = _read(folder, "cohort_baseline")
    for char in dict.fromkeys(r["characteristic"] for r in base[1:]):
        rows = [r for r in base if r["characteristic"] == char and r["n"] != ""]
        if rows:
            att.equal(t(scope, "patients in scope"),
                      [t(r["n"], f"{char} {r['category']}") for r in rows])
    att.equal(t(base[0]["n"], "baseline patients"), [t(scope, "patients in scope")])
    for name, col in (("intervention_techniques", "sessions"), ("intervention_regions",
                                                                 "sessions"),
                      ("intervention_therapists", "sessions"), ("safety_types", "sessions")):
        rows = _read(folder, name)
        if rows:
            att.equal(t(tx, "tx sessions"), [t(r[col], f"{name} {i}") for i, r in
                                             enumerate(rows)])
    for r in _read(folder, "outcomes_readings"):
        att.equal(t(r["readings"], f"readings {r['measure']}"),
                  [t(r["pre_n"], f"pre {r['measure']}"), t(r["post_n"], f"post {r['measure']}")])
    resp = _read(folder, "outcomes_responders")
    for col in ("patients", "responders") if resp else ():
        att.equal(t(resp[0][col], f"all {col}"), [t(r[col], f"{r['group']} {col}")
                                                  for r in resp[1:]])
    html = (folder / "report.html").read_text(encoding="utf-8")
    types = _read(folder, "safety_types")
    m = re.search(r"treatment sessions: (\S+) of (\S+) sessions with a record", html)
    if m and types:
        events = [r for r in types if r["event"] not in ("none", "not recorded")]
        recorded = [r for r in types if r["event"] != "not recorded"]
        k_said = t(m.group(1).replace("&lt;", "<"), "events said")
        att.equal(k_said, [t(r["sessions"], f"type {r['event']}") for r in events])
        r_said = t(m.group(2).replace("&lt;", "<"), "recorded said")
        att.equal(r_said, [t(r["sessions"], f"type {r['event']}") for r in recorded])
        by_tech = _read(folder, "safety_by_technique")
        att.equal(r_said, [t(r["sessions"], f"tech {r['technique']}") for r in by_tech])
        att.equal(k_said, [t(r["with_event"], f"tech event {r['technique']}") for r in by_tech])
    flare = re.search(r"Symptom flares: (\S+?)\.", html)
    if flare and types:
        row = next(r for r in types if r["event"] == "symptom flare")
        att.equal(t(flare.group(1).replace("&lt;", "<"), "flares said"),
                  [t(row["sessions"], "type symptom flare")])
    return att.widths()


def _study_with_small_cells():
    """A clinic whose site-2 has a handful of flares, a rare technique and a tiny group."""
    from mfr_outcomes.study import from_frames
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(60, 21, measures=["pain_nrs"])
    s = frames["sessions"].copy()
    tx = s["technique"] != "none"
    s.loc[tx, "adverse_event"] = "none"
    idx = s.index[tx]
    s.loc[idx[:3], "adverse_event"] = "symptom_flare"
    s.loc[idx[3:30], "adverse_event"] = "soreness"
    s.loc[idx[30:32], "adverse_event"] = "bruising"
    return from_frames(frames["patients"], s, frames["measurements"])


def _counts_only(mp: pytest.MonkeyPatch) -> None:
    """Skip the models and charts (they publish no count the attack uses): quicker reports."""
    import mfr_outcomes.report.sections as sections
    from mfr_outcomes.report.sections import course, outcomes

    for name in ("_prepost", "_followup"):
        mp.setattr(outcomes, name, lambda ctx, sec: None)
    mp.setattr(course, "build", lambda ctx, sec: None)
    for key in ("trends", "comparisons"):
        mp.setitem(sections.SECTIONS, key, (sections.SECTIONS[key][0], lambda ctx, sec: None))


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    study = _study_with_small_cells()
    out = tmp_path_factory.mktemp("attack")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        _counts_only(mp)
        warnings.simplefilter("ignore")
        result = build_report(study, out / "all", min_cell=K, seed=1)
        for s in sorted(study.patients["site_id"].unique()):
            build_report(study, out / s, site=s, min_cell=K, seed=1)
    return study, result, out


def test_no_hidden_count_is_recovered_by_subtraction(attacked):
    _, result, out = attacked
    widths = _attack(out / "all")
    assert widths, "the report should hide some counts"
    pinned = {name: w for name, w in widths.items() if w < 0.5}
    assert not pinned, pinned
    # the flares are small, and the sentence that names them does not undo the table
    html = (out / "all" / "report.html").read_text(encoding="utf-8")
    assert "Symptom flares: &lt;5." in html


def test_each_suppressed_cell_is_outside_the_span_of_published_sums(attacked):
    """The ledger's own check agrees: every hidden cell keeps an interval wider than zero."""
    _, result, _ = attacked
    led = result.ledger
    hidden = [i for i in led.status]
    assert any(led.status[i] == "secondary" for i in hidden)
    for i in hidden:
        lo, hi = led.interval(i)
        assert hi - lo >= 1, (i, led.values[i], lo, hi)


def test_site_counts_cannot_be_recovered_from_the_all_sites_report(attacked):
    """all-sites count − the other sites' counts = this site's count: never for a hidden one."""
    study, result, out = attacked
    sites = sorted(study.patients["site_id"].unique())
    recovered = []
    for table, key, cols in (("safety_types", "event", ["sessions"]),
                             ("intervention_techniques", "technique", ["sessions", "patients"]),
                             ("cohort_baseline", None, ["n"])):
        def rows(folder: Path, table: str = table, key: str | None = key) -> dict:
            rs = _read(folder, table)
            return {(r["characteristic"], r["category"]) if key is None else r[key]: r
                    for r in rs}
        everyone = rows(out / "all")
        per_site = {s: rows(out / s) for s in sites}
        for k, row in everyone.items():
            for col in cols:
                if row.get(col) in (None, "", f"<{K}", "suppressed"):
                    continue
                for s in sites:
                    mine = per_site[s].get(k, {}).get(col)
                    if mine not in (f"<{K}", "suppressed"):
                        continue
                    others = [per_site[o].get(k, {}).get(col, "0") for o in sites if o != s]
                    if all(v not in (f"<{K}", "suppressed", "") for v in others):
                        recovered.append((table, k, col, s))
    assert not recovered, recovered


def test_therapist_pseudonyms_are_the_same_in_every_report_of_the_study(attacked):
    """A therapist has one letter in the all-sites report and in their site's report (so the
    reports can be matched row by row), a site's report names only its own therapists, and no
    pseudonym is a therapist's code."""
    from mfr_outcomes.report.context import therapist_pseudonyms

    study, _, out = attacked
    names = therapist_pseudonyms(study)
    codes = {str(t) for t in study.sessions["therapist_id"].dropna()}
    assert set(names) == codes and len(set(names.values())) == len(codes)
    assert not any(code in name for code in codes for name in names.values())
    site_of = study.sessions.merge(study.patients[["patient_id", "site_id"]], on="patient_id")
    sites_of = site_of.groupby(site_of["therapist_id"].astype(str))["site_id"].nunique()
    everyone = {r["therapist"]: r for r in _read(out / "all", "intervention_therapists")}
    hidden = (f"<{K}", "suppressed")
    for site in sorted(study.patients["site_id"].unique()):
        own = {names[str(t)] for t in site_of.loc[site_of["site_id"] == site, "therapist_id"]}
        rows = _read(out / site, "intervention_therapists")
        assert {r["therapist"] for r in rows} == own
        for r in rows:
            code = next(c for c, n in names.items() if n == r["therapist"])
            if sites_of[code] == 1:  # one site's therapist: the same row in both reports
                for col in ("sessions", "patients"):
                    if hidden[0] != r[col] != hidden[1] and \
                            hidden[0] != everyone[r["therapist"]][col] != hidden[1]:
                        assert r[col] == everyone[r["therapist"]][col]
    assert therapist_pseudonyms(study) == names  # the same letters on every call


# ---------------------------------------------------------------------------- writing


def test_out_refuses_to_write_through_a_symlink(tmp_path, small_study, monkeypatch):
    _counts_only(monkeypatch)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me", encoding="utf-8")
    out = tmp_path / "report"
    (out / "tables").mkdir(parents=True)
    os.symlink(outside, out / "report.html")
    with pytest.raises(ValueError, match="report.html is a symbolic link; the report does not "
                                         "write through links"):
        build_report(small_study, out, min_cell=3)
    assert outside.read_text(encoding="utf-8") == "keep me"
    (out / "report.html").unlink()
    os.symlink(outside, out / "tables" / "cohort_flow.csv")
    with pytest.raises(ValueError, match="cohort_flow.csv is a symbolic link"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_report(small_study, out, min_cell=3)
    assert outside.read_text(encoding="utf-8") == "keep me"


def test_cli_out_symlink_is_a_sentence(tmp_path, synthetic_dir, capsys):
    from mfr_outcomes.cli import main

    out = tmp_path / "r"
    out.mkdir()
    os.symlink(tmp_path, out / "tables")
    code = main(["report", str(synthetic_dir), "--out", str(out), "--period", "2026-07",
                 "--site", "site-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and "Traceback" not in err


def test_p_values_keep_full_precision_in_csv(tmp_path):
    from mfr_outcomes.report.publish import write_csv

    write_csv(pd.DataFrame({"term": ["weeks"], "p_value": [1.5e-8]}), tmp_path / "t.csv",
              tmp_path)
    text = (tmp_path / "t.csv").read_text(encoding="utf-8")
    assert float(text.splitlines()[1].split(",")[1]) == 1.5e-8


# ---------------------------------------------------------------------------- every cell, every report
#
# The whole report (every section, every CSV, every count said in a sentence) and then the
# all-sites report with every site's report, attacked together: each published count is a
# constant, each hidden one an unknown with what its label says, and the equations are what a
# reader knows or can check — the margins the report declares, the sums a reader finds by
# definition, and across reports "the all-sites count = the sum of the sites' counts" for every
# row and column the reports share. Equations are kept only when they hold for the true counts
# (a reader who guesses a false one learns nothing), so the attacker is stronger than any real
# one. Every hidden count must keep two or more feasible values.


def _row_names(result) -> dict[str, list[str]]:
    """table -> the name of each row as published (therapists by their pseudonyms, which are
    the same in every report of the study, so a reader matches them across reports)."""
    out = {}
    for sec in result.sections.values():
        for table in sec.tables:
            first = table.keys or tuple(table.frame.columns[:1])
            out[table.name] = [" / ".join(str(table.frame[c].iloc[r]) for c in first)
                               for r in range(len(table.frame))]
    return out


def _published(result, folder: Path, report: str, study) -> list[tuple[tuple, str, float, int]]:
    """(key, label as published in the CSV, true count, ledger id) of every count cell, and of
    every count said only in a sentence. Each CSV label must be the ledger's label."""
    led = result.ledger
    names = _row_names(result)
    out, in_tables = [], set()
    for key, sec in result.sections.items():
        for table in sec.tables:
            rows = _read(folder, f"{key}_{table.name}")
            for (r, col), cell in table.cells.items():
                shown = rows[r][col]
                assert shown == str(led.label(cell)), (table.name, r, col, shown)
                out.append(((report, table.name, names[table.name][r], col), shown,
                            led.values[cell.id], cell.id))
                in_tables.add(cell.id)
    for i, v in enumerate(led.values):
        if i not in in_tables:  # a count said in a sentence
            out.append(((report, "sentence", str(i), ""), str(led.label(Cell(i))), v, i))
    return out


class _Joint:
    """Unknowns for hidden cells, linear equations over cells of one or more reports."""

    def __init__(self, cells) -> None:
        self.cells = {c[0]: c for c in cells}
        self.by_id = {(c[0][0], c[3]): c[0] for c in cells}
        self.hidden = [k for k, c in self.cells.items() if c[1] in (f"<{K}", "suppressed")]
        self.col = {k: j for j, k in enumerate(self.hidden)}
        self.rows: list[tuple[np.ndarray, float]] = []

    def equal(self, total: tuple, parts: list[tuple]) -> None:
        """total = sum(parts), kept only when it holds for the true counts."""
        true = self.cells[total][2] - sum(self.cells[p][2] for p in parts)
        if abs(true) > 1e-9:
            return
        coef, const = np.zeros(len(self.hidden)), 0.0
        for key, sign in [(total, -1.0)] + [(p, 1.0) for p in parts]:
            if key in self.col:
                coef[self.col[key]] += sign
            else:
                const += sign * self.cells[key][2]
        if coef.any():
            self.rows.append((coef, -const))

    def pinned(self) -> dict[tuple, tuple[float, float]]:
        if not self.rows:
            return {}
        a = np.vstack([r[0] for r in self.rows])
        b = np.array([r[1] for r in self.rows])
        bounds = [(1, K - 1) if self.cells[k][1].startswith("<") else (K, None)
                  for k in self.hidden]
        out = {}
        for k, j in self.col.items():
            if not a[:, j].any():
                continue
            c = np.zeros(len(self.hidden))
            c[j] = 1
            lo = linprog(c, A_eq=a, b_eq=b, bounds=bounds, method="highs")
            hi = linprog(-c, A_eq=a, b_eq=b, bounds=bounds, method="highs")
            assert lo.status == 0, "the true counts must satisfy every equation"
            top = np.inf if hi.status == 3 else -hi.fun
            if top - lo.fun < 0.5:
                out[k] = (lo.fun, top)
        return out


def _within(joint: _Joint, result, report: str) -> None:
    """The margins of one report: those it declares, and those a reader finds by definition."""
    for total, parts in result.ledger.relations:
        joint.equal(joint.by_id[(report, total)], [joint.by_id[(report, p)] for p in parts])
    by_table: dict[str, list[tuple]] = {}
    for key in joint.cells:
        if key[0] == report and key[1] != "sentence":
            by_table.setdefault(key[1], []).append(key)
    for keys in by_table.values():
        for col in {k[3] for k in keys}:
            column = [k for k in keys if k[3] == col]
            # a column adds up to any published count (the reader tries them all)
            total = sum(joint.cells[k][2] for k in column)
            for other in joint.cells:
                if other[0] == report and other not in column and \
                        joint.cells[other][2] == total and total > 0:
                    joint.equal(other, column)


def _across(joint: _Joint, reports: list[str]) -> None:
    """all-sites count = the sum of the sites' counts (or the same, for source-level rows)."""
    sites = [r for r in reports if r != "all"]
    for key in [k for k in joint.cells if k[0] == "all" and k[1] != "sentence"]:
        parts = [(s, *key[1:]) for s in sites if (s, *key[1:]) in joint.cells]
        if parts:
            joint.equal(key, parts)
            for p in parts:
                joint.equal(key, [p])


@pytest.fixture(scope="module")
def every_report(tmp_path_factory):
    """The all-sites report and each site's, every section built (models and funnels too)."""
    study = _study_with_small_cells()
    out = tmp_path_factory.mktemp("every")
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results["all"] = build_report(study, out / "all", min_cell=K, seed=1)
        for s in sorted(study.patients["site_id"].unique()):
            results[s] = build_report(study, out / s, site=s, min_cell=K, seed=1)
    cells = {name: _published(r, out / name, name, study) for name, r in results.items()}
    return study, results, cells


def test_every_count_of_every_table_goes_through_the_ledger(every_report):
    _, results, cells = every_report
    for name, result in results.items():
        assert not result.failures, result.failures
        tables = {c[0][1] for c in cells[name]}
        assert {"prepost", "funnel_responders_therapist", "funnel_change_therapist", "dose",
                "monthly", "models", "techniques", "flow"} <= tables, tables


def _declared(results, cells) -> set[tuple]:
    """The counts the reports say they could not protect (a caution in each site's report):
    each report's own, and the all-sites report's that a site's report found the sites'
    counts give away."""
    out = set()
    for name, result in results.items():
        key = {c[3]: c[0] for c in cells[name]}
        out |= {key[i] for i in result.ledger.unprotected}
        if name != "all":
            key = {c[3]: c[0] for c in cells["all"]}
            out |= {key[i] for i in result.family["all sites"].unprotected}
    return out


@pytest.mark.parametrize("report", ["all", "site-1", "site-2", "site-3"])
def test_no_hidden_cell_of_a_report_is_recovered_from_its_own_numbers(every_report, report):
    """Every report protects every count it hides against a reader of that report alone: a
    site's report too, where a count is pinned across reports by counts the all-sites report
    publishes (said in a caution), by last-resort complements among the counts the all-sites
    report gives away."""
    _, results, cells = every_report
    joint = _Joint(cells[report])
    assert joint.hidden, "the report should hide some counts"
    _within(joint, results[report], report)
    assert not joint.pinned()


def _holding_every_report(results, cells) -> _Joint:
    """The attacker holding the all-sites report and every site's report: every count, every
    sum within each report and "all sites = sum of sites" across them."""
    names = list(results)
    joint = _Joint([c for n in names for c in cells[n]])
    for n in names:
        _within(joint, results[n], n)
    _across(joint, names)
    return joint


def _given_away(results, cells) -> set[tuple]:
    """The counts of each site's report that the all-sites report gives away (a row only that
    site has, or what its own sums fix from such rows): published on main, hidden now only as
    last-resort complements within the site's report, and known to a reader of both."""
    out = set()
    for name, result in results.items():
        if name != "all":
            key = {c[3]: c[0] for c in cells[name]}
            out |= {key[i] for i in result.ledger.last_resort if i in key}
    return out


def test_no_hidden_cell_is_recovered_across_the_all_sites_and_site_reports(every_report):
    """An attacker holding the all-sites report and every site's report (every sum within
    each report and "all sites = sum of sites" across them) pins no hidden count: the
    all-sites report takes part in the decision, and no report declares a count it could not
    protect."""
    _, results, cells = every_report
    joint = _holding_every_report(results, cells)
    assert len(joint.hidden) > 300, "the small-cell study should hide many counts"
    assert not joint.pinned()
    assert not _declared(results, cells)
    for result in results.values():
        assert not any("worked out" in c for c in result.cautions), result.cautions


def test_every_report_takes_its_share_of_one_decision(every_report):
    """Every report of the study (the all-sites one included) builds every scope and reaches
    the same decision for each, and publishes its own share of it."""
    _, results, _ = every_report
    sites = sorted(n for n in results if n != "all")
    for name, result in results.items():
        assert list(result.family) == [ALL_SITES_NAME, *sites]
        assert result.family[ALL_SITES_NAME if name == "all" else name] is result.ledger
        for other in results.values():
            for scope, led in other.family.items():
                mine = result.family[scope]
                assert mine.values == led.values and mine.status == led.status, (name, scope)


@pytest.fixture(scope="module")
def reports_alone(tmp_path_factory):
    """The all-sites report and site-3's with the all-sites report deciding alone
    (all_sites_alone)."""
    study = _study_with_small_cells()
    out = tmp_path_factory.mktemp("alone")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"all": build_report(study, out / "all", min_cell=K, seed=1,
                                    all_sites_alone=True),
                "site-3": build_report(study, out / "site-3", site="site-3", min_cell=K,
                                       seed=1, all_sites_alone=True)}


def test_the_all_sites_report_deciding_alone_decides_as_a_study_without_sites(
        reports_alone, every_report):
    """With all_sites_alone the all-sites report builds no other scope, its decision is a
    fresh decision of its own counts and sums (it hides fewer counts than when it takes
    part), and a site's report reaches that same decision, adds nothing to it, and declares
    in a caution the counts an attacker holding every report could pin (the cases
    ``test_deciding_the_all_sites_report_alone_declares_what_it_leaves_open`` shows)."""
    led = reports_alone["all"].ledger
    assert list(reports_alone["all"].family) == [ALL_SITES_NAME]
    fresh = Ledger(K)
    fresh.values, fresh.relations, fresh.rank = list(led.values), list(led.relations), led.rank
    fresh.decide()
    assert fresh.status == led.status
    assert len(led.status) < len(every_report[1]["all"].ledger.status)
    site = reports_alone["site-3"]
    other = site.family[ALL_SITES_NAME]
    assert other.values == led.values and other.status == led.status
    declared = [c for c in site.cautions if "worked out" in c]
    assert len(declared) == 1 and site.family["site-3"].unprotected, site.cautions
    assert int(declared[0].split()[0]) >= len(site.family["site-3"].unprotected) > 0
    assert not any("worked out" in c for c in reports_alone["all"].cautions)


def test_no_site_count_is_all_sites_minus_the_other_sites(every_report):
    """The --min-cell rule across reports, for every table of the report: a site's hidden count
    is never the all-sites count minus the other sites' published counts (a row missing from a
    site's table counts as a published 0), except a count the all-sites report gives away,
    which the site's report hides only to protect its own counts against a reader of it
    alone (and declares)."""
    _, results, cells = every_report
    exempt = _given_away(results, cells) & _declared(results, cells)
    sites = [n for n in results if n != "all"]
    shown = {c[0]: c[1] for n in results for c in cells[n]}
    hidden = (f"<{K}", "suppressed")
    recovered = []
    for key, label in shown.items():
        if key[0] != "all" or key[1] == "sentence" or label in hidden:
            continue
        for s in sites:
            if shown.get((s, *key[1:])) not in hidden:
                continue
            others = [shown.get((o, *key[1:]), "0") for o in sites if o != s]
            if all(v not in hidden for v in others) and (s, *key[1:]) not in exempt:
                recovered.append((s, *key[1:]))
    assert not recovered, recovered


# ---------------------------------------------------------------------------- the family decision


def _scope(name: str, counts: dict[str, int]):
    """A report with one table of events and its total (a sum the report declares)."""
    from mfr_outcomes.report.blocks import Table
    from mfr_outcomes.report.family import Scope

    led = Ledger(K)
    table = Table("types", "", pd.DataFrame({"event": list(counts), "n": list(counts.values())}),
                  counts=("n",), keys=("event",))
    for r, v in enumerate(counts.values()):
        table.cells[(r, "n")] = led.add(v)
    led.relate(led.add(sum(counts.values())), table.column_cells("n"))
    return Scope(name, led, {"types": table})


def test_family_pairs_a_count_hidden_in_one_site_with_the_same_count_of_another():
    """all = site-1 + site-2 for each event: site-1's small count of flares would be the
    all-sites count minus site-2's, so site-2 hides its count of flares too, and each site
    then needs a complement in its own table; the all-sites report keeps its counts, and an
    attacker holding the three reports (every sum within and across) pins no hidden count."""
    from mfr_outcomes.report.family import ALL_SITES, decide_family

    scopes = [_scope(ALL_SITES, {"flare": 20, "soreness": 30, "bruising": 12}),
              _scope("site-1", {"flare": 3, "soreness": 12, "bruising": 6}),
              _scope("site-2", {"flare": 17, "soreness": 18, "bruising": 6})]
    decide_family(scopes)
    label = {s.name: [s.ledger.label(c) for c in s.tables["types"].column_cells("n")]
             for s in scopes}
    assert label[ALL_SITES] == [20, 30, 12]
    assert label["site-1"][0] == f"<{K}" and label["site-2"][0] == "suppressed"
    assert not _pins(scopes)


def _pins(scopes) -> list[tuple[int, int]]:
    """The hidden cells (scope, id) an attacker holding every scope's report pins: every cell
    an unknown or a constant, every sum within a report and across them an equation."""
    from mfr_outcomes.report.family import cross_sums

    cells = [(k, i) for k, s in enumerate(scopes) for i in range(len(s.ledger.values))]
    hidden = [c for c in cells if c[1] in scopes[c[0]].ledger.status]
    col = {c: j for j, c in enumerate(hidden)}
    eqs = [((k, t), [(k, p) for p in parts]) for k, s in enumerate(scopes)
           for t, parts in s.ledger.relations] + cross_sums(scopes)
    a, b = [], []
    for total, parts in eqs:
        row, rhs = np.zeros(len(hidden)), 0.0
        for c, sign in [(total, -1.0)] + [(p, 1.0) for p in parts]:
            if c in col:
                row[col[c]] += sign
            else:
                rhs -= sign * scopes[c[0]].ledger.values[c[1]]
        a.append(row)
        b.append(rhs)
    bounds = [(1, K - 1) if scopes[k].ledger.status[i] == "primary" else (K, None)
              for k, i in hidden]
    out = []
    for c, j in col.items():
        obj = np.zeros(len(hidden))
        obj[j] = 1
        lo = linprog(obj, A_eq=np.array(a), b_eq=np.array(b), bounds=bounds, method="highs")
        hi = linprog(-obj, A_eq=np.array(a), b_eq=np.array(b), bounds=bounds, method="highs")
        assert lo.status == 0, "the true counts must satisfy every equation"
        if hi.status != 3 and -hi.fun - lo.fun < 0.5:
            out.append(c)
    return out


def _three_small_sites():
    """Three sites with 4 flares each under an all-sites 12: with the labels ("<5" is 1 to 4)
    the all-sites count pins every site's."""
    from mfr_outcomes.report.family import ALL_SITES

    return [_scope(ALL_SITES, {"flare": 12, "soreness": 30, "bruising": 20}),
            _scope("site-1", {"flare": 4, "soreness": 10, "bruising": 7}),
            _scope("site-2", {"flare": 4, "soreness": 10, "bruising": 6}),
            _scope("site-3", {"flare": 4, "soreness": 10, "bruising": 7})]


def test_the_all_sites_report_hides_a_count_no_site_count_can_protect():
    """Three sites each '<5' under an all-sites 12 are each 4 whatever the sites hide: the
    all-sites report hides its 12 (and a complement of its own, else its total would give
    it), and the attacker holding the four reports pins nothing."""
    from mfr_outcomes.report.family import ALL_SITES, decide_family

    scopes = _three_small_sites()
    decide_family(scopes)
    top = scopes[0]
    flare, soreness, bruising = top.tables["types"].column_cells("n")
    assert top.ledger.label(flare) == "suppressed"
    assert [top.ledger.label(c) for c in (soreness, bruising)].count("suppressed") == 1
    assert top.name == ALL_SITES and not any(s.unprotected for s in scopes)
    assert not _pins(scopes)


def test_deciding_the_all_sites_report_alone_declares_what_it_leaves_open():
    """With all_sites_alone the all-sites report publishes its 12, and the three flares it
    pins are declared (in each site's ``unprotected``), exactly the ones the attacker pins."""
    from mfr_outcomes.report.family import decide_family

    scopes = _three_small_sites()
    decide_family(scopes, all_sites_alone=True)
    flare = scopes[0].tables["types"].column_cells("n")[0]
    assert scopes[0].ledger.label(flare) == 12
    declared = {(k, i) for k, s in enumerate(scopes) for i in s.unprotected}
    assert declared == {(k, s.tables["types"].column_cells("n")[0].id)
                        for k, s in enumerate(scopes) if k}
    assert set(_pins(scopes)) == declared


def test_a_count_the_all_sites_report_gives_away_is_never_a_complement():
    """A row only site-1 has (itching) is the same count in the all-sites report, which
    publishes it: hidden in site-1's report it would stay known, so site-1 protects its small
    count of flares with other counts, and the attacker holding the three reports pins none.
    A count the site's sums then fix (its total, with every row given away) is known too."""
    from mfr_outcomes.report.family import ALL_SITES, cross_sums, decide_family, given_away

    # itching is site-1's smallest published count: the complement a report alone would hide
    scopes = [_scope(ALL_SITES, {"flare": 20, "soreness": 30, "bruising": 14, "itch": 5}),
              _scope("site-1", {"flare": 3, "soreness": 12, "bruising": 8, "itch": 5}),
              _scope("site-2", {"flare": 17, "soreness": 18, "bruising": 6})]
    decide_family(scopes)
    site1 = scopes[1]
    itch = site1.tables["types"].column_cells("n")[3]
    assert itch.id in site1.ledger.avoid
    assert not site1.ledger.hidden(itch)
    assert site1.ledger.label(site1.tables["types"].column_cells("n")[0]) == f"<{K}"
    assert not any(s.unprotected for s in scopes)
    joint, _ = Ledger.combine([s.ledger for s in scopes], cross_sums(scopes))
    for i in joint.status:
        lo, hi = joint.interval(i)
        assert hi - lo >= 1, (i, lo, hi)
    # one site with every row in the all-sites report: its rows and its total are known
    alone = [_scope(ALL_SITES, {"flare": 7, "soreness": 8}),
             _scope("site-1", {"flare": 7, "soreness": 8})]
    known = given_away(alone, cross_sums(alone), 1)
    assert known == {0, 1, 2}  # the two rows and the total the table declares
