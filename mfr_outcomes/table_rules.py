"""The validation rules that span rows or tables, on whole columns: keys, orphans, visit dates and
session order, post readings; and the working state of one table while it is validated.

Every rule finds its rows with vectorised pandas or numpy and writes one
:class:`~mfr_outcomes.findings.Finding` a problem (or a problem group, for cascades); no rule loops
over the rows of a table in Python.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mfr_outcomes.findings import Finding, RowAccount
from mfr_outcomes.scale import rule_text

__all__ = [
    "TableState",
    "KEYS",
    "EXCLUDED",
    "SET_MISSING",
    "CAUTION",
    "shown",
    "duplicates",
    "foreign",
    "session_dates",
    "post_checks",
    "isin_text",
    "order_sentence",
]

EXCLUDED = " (row excluded)"
SET_MISSING = " (set to missing; row kept)"
CAUTION = " (row kept with a caution)"

#: Key columns of each table (a bad value there makes a row unusable).
KEYS = {"patients": ("patient_id",), "sessions": ("session_id",),
        "measurements": ("session_id", "phase", "measure", "side")}

#: Visits further than this from every other visit of a patient are a finding (derived numbers).
DISTANT_DAYS = 365


def shown(numbers: Sequence[int] | np.ndarray, limit: int = 10) -> str:
    """Numbers as a short list: "3, 4, 9" or "3, 4, … and 12 more"."""
    numbers = [int(x) for x in numbers]
    text = ", ".join(map(str, numbers[:limit]))
    return text + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


class TableState:
    """Working state of one table during validation: raw text, typed columns, exclusions.

    Parameters
    ----------
    name, file, unit : str
        Table name; file label used in sentences; "line" or "row".
    lines : ndarray of int
        Line or row number of each row.
    findings : list of Finding
        Where this table's findings are appended.
    """

    def __init__(self, name: str, file: str, unit: str, lines: np.ndarray,
                 findings: list[Finding], blank: int = 0) -> None:
        self.name, self.file, self.unit = name, file, unit
        self.lines = np.asarray(lines, dtype=np.int64)
        self.findings = findings
        self.n = len(self.lines)
        self.blank = blank
        self.ok = np.ones(self.n, dtype=bool)            # not excluded (yet)
        # first exclusion rule of each row, as a code into self.rules (0: none): two bytes a
        # row, not an eight-byte pointer (10 MB at 1.3 M readings)
        self.reason = np.zeros(self.n, dtype=np.int16)
        self.rules: list[str | None] = [None]
        self.raw: dict[str, pd.Series] = {}
        self.typed: dict[str, pd.Series] = {}
        self.present: set[str] = set()
        self.extra: list[str] = []
        self.markers: dict[str, pd.Series] = {}   # NA tokens as written ("NaN"), by column
        self.stamps: dict[str, pd.Series] = {}    # date columns given as timestamps
        self._factors: dict[str, tuple[pd.Series, np.ndarray, Any]] = {}
        #: codes and distinct texts of raw text columns, from the text's own hash pass
        self.text_factors: dict[str, tuple[np.ndarray, pa.Array]] = {}
        #: key -> (parent state, first parent row of each row), from :func:`foreign`
        self.parent_rows: dict[str, tuple[TableState, np.ndarray]] = {}

    def factors(self, name: str) -> tuple[np.ndarray, Any]:
        """Codes of typed column *name* (-1 missing; equal values, equal codes) and the values
        they stand for (a categorical's categories: some may be unused), remembered while the
        column is unchanged (key and label columns serve several rules)."""
        col = self.typed[name]
        hit = self._factors.get(name)
        if hit is None or hit[0] is not col:
            if isinstance(col.dtype, pd.CategoricalDtype):  # its codes, not a hash pass
                hit = (col, col.cat.codes.to_numpy(), col.cat.categories)  # int8 mostly
            else:
                hit = (col, *pd.factorize(col, use_na_sentinel=True))
            self._factors[name] = hit
        return hit[1], hit[2]

    def factorized(self, name: str) -> tuple[np.ndarray, int]:
        """:meth:`factors`: the codes and a bound they stay below."""
        codes, uniques = self.factors(name)
        return codes, len(uniques)

    def remember_codes(self, name: str, codes: np.ndarray, uniques: Any) -> None:
        """Codes of typed column *name* known already (from the text it was typed from)."""
        self._factors[name] = (self.typed[name], codes, uniques)

    def text(self, column: str, i: int) -> str | None:
        """Cell *i* of raw *column* as written (numbers read as numbers shown as Python does)."""
        v = self.raw[column].iat[i]
        return None if pd.isna(v) else str(v)

    def where(self, i: int | None) -> str:
        """How row *i* is named in a sentence ("sessions.csv line 14")."""
        if i is None:
            return self.file
        return f"{self.file} {self.unit} {int(self.lines[i])}"

    def add(self, i: int | None, column: str | None, value: str | None, rule: str,
            text: str, action: str, suffix: str | None = None) -> None:
        """One finding; *action* "excluded", "missing" (value set missing) or "kept"."""
        if suffix is None:
            suffix = EXCLUDED if action == "excluded" else (SET_MISSING if action == "missing"
                                                             else CAUTION)
        self.findings.append(Finding(
            table=self.name, file=self.file,
            line=None if i is None else int(self.lines[i]), column=column,
            value=value, rule=rule, message=f"{self.where(i)}: {text}{suffix}",
            action="excluded" if action == "excluded" else "kept"))
        if action == "excluded" and i is not None and self.ok[i]:
            self.ok[i] = False
            self.reason[i] = self._rule_code(rule)

    def exclude(self, rows: np.ndarray, rule: str) -> None:
        """Exclude *rows* (positions) that are not excluded yet, for *rule*."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[self.ok[rows]]
        self.ok[rows] = False
        self.reason[rows] = self._rule_code(rule)

    def exclude_all(self, rule: str) -> None:
        self.exclude(np.arange(self.n), rule)

    def _rule_code(self, rule: str) -> int:
        if rule not in self.rules:
            self.rules.append(rule)
        return self.rules.index(rule)

    @property
    def used(self) -> np.ndarray:
        return self.ok.copy()

    def account(self) -> RowAccount:
        """Rows read, used, excluded (by first rule, in order of first row) and blank."""
        reasons = self.reason[~self.ok]
        counts = np.bincount(reasons, minlength=len(self.rules))
        ordered = {str(self.rules[r]): int(counts[r]) for r in pd.unique(reasons)}
        excluded = int((~self.ok).sum())
        return RowAccount(self.n + self.blank, self.n - excluded, excluded, ordered, self.blank)


def _codes(t: TableState, names: Sequence[str]) -> np.ndarray:
    """One integer per distinct combination of the typed *names* (-1 where any is missing)."""
    code = np.zeros(t.n, dtype=np.int64)
    missing = np.zeros(t.n, dtype=bool)
    for name in names:  # in place: no temporary 1.3 M-row int64 arrays
        c, k = t.factorized(name)
        missing |= c < 0
        code *= k + 1
        code += c
    code[missing] = -1
    return code


def _member(code: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """np.isin for non-negative integer codes (-1 never a member), by a lookup table."""
    top = int(max(code.max(initial=0), allowed.max(initial=0))) + 1
    if top > 200_000_000:
        return np.isin(code, allowed) & (code >= 0)
    table = np.zeros(top, bool)
    table[allowed[allowed >= 0]] = True
    return table[np.maximum(code, 0)] & (code >= 0)


def _all_distinct(code: np.ndarray) -> bool:
    """Whether the non-negative integer *code* holds no value twice, by marking a table of one
    byte per possible code where that table is small (at most 8 bytes a row: a fraction of a hash
    table's memory, which at 1.3 M readings set the load's peak), else False (undecided: the
    caller looks for the repeats)."""
    if code.size < 2:
        return True
    top = int(code.max()) + 1
    if top > 8 * code.size:
        return False
    seen = np.zeros(top, dtype=bool)
    seen[code] = True
    return int(np.count_nonzero(seen)) == code.size


def duplicates(t: TableState) -> None:
    """Repeated keys: every row after the first with the same key is excluded."""
    keys = list(KEYS[t.name])
    cols = [t.typed[k] for k in keys]
    code = _codes(t, keys)
    has_key = code >= 0
    if not has_key.any():
        return
    if _all_distinct(code[has_key] if not has_key.all() else code):
        return
    idx = np.flatnonzero(has_key)
    keys_ = pd.Index(code if len(idx) == t.n else code[idx], copy=False)  # not copied again
    is_dup = keys_.duplicated(keep="first")
    if not is_dup.any():
        return
    keyed = pd.Series(idx, index=keys_)
    first_row = keyed.groupby(level=0, sort=False).transform("first").to_numpy()
    dup = idx[is_dup]
    first_of = dict(zip(idx[is_dup], first_row[is_dup]))
    for i in dup:
        row = tuple(c.iat[i] for c in cols)
        value, text = rule_text.duplicate(keys, row, f"{t.unit} {int(t.lines[first_of[i]])}")
        one = len(keys) == 1
        t.add(int(i), keys[0] if one else None, value,
              "duplicate_key" if one else "duplicate_reading", text, "excluded")


def foreign(child: TableState, parent: TableState, key: str, parent_label: str) -> None:
    """Orphans (key not in parent at all) and cascades (parent row excluded)."""
    pkeys = parent.typed[key]
    ck = child.typed[key]
    present = ck.notna().to_numpy()
    pos = parent_rows(child, parent, key)
    child.parent_rows[key] = (parent, pos)
    in_all = pos >= 0
    in_used = _used_at(parent, pos)
    unsure = in_all & ~in_used  # the first parent row of the key is excluded: any other used?
    if unsure.any():
        in_used[unsure] = isin_text(ck[unsure], pkeys[parent.ok])
    for i in np.flatnonzero(present & ~in_all):
        k = ck.iat[i]
        child.add(int(i), key, k, "orphan", rule_text.orphan(key, k, parent.name), "excluded")
    rows = np.flatnonzero(present & in_all & ~in_used & child.ok)
    if not len(rows):
        return
    codes, uniques = pd.factorize(ck.iloc[rows])
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    for g, k in enumerate(uniques):
        mine = rows[order[bounds[g]:bounds[g + 1]]]
        lines = child.lines[mine]
        unit = child.unit + ("s" if len(lines) > 1 else "")
        child.findings.append(Finding(
            table=child.name, file=child.file, line=int(lines[0]), column=key, value=k,
            rule="cascade",
            message=rule_text.cascade(child.file, unit, shown(lines), parent_label, k),
            action="excluded"))
    child.exclude(rows, "cascade")


def _arrow(series: pd.Series) -> pa.Array:
    """A text column as an Arrow string array (zero-copy for Arrow-backed text)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    arr = pa.array(series, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())


def parent_rows(child: TableState, parent: TableState, key: str) -> np.ndarray:
    """For each row of *child*, the first row of *parent* with its typed *key* (-1: none, or
    missing): matched once a distinct key of the child (its codes), not once a row."""
    codes, uniques = child.factors(key)
    found = pc.index_in(_arrow_values(uniques), value_set=_arrow(parent.typed[key]),
                        skip_nulls=True)
    found = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.append(found, -1)[codes]


def _used_at(parent: TableState, pos: np.ndarray) -> np.ndarray:
    """Whether parent row *pos* is used, for each position (-1: no row, False)."""
    return np.append(parent.ok, False)[pos]


def _arrow_values(values: Any) -> pa.Array:
    """Distinct values (an Arrow array, a pandas array or index, a list) as Arrow text."""
    if isinstance(values, pa.Array):
        return values if pa.types.is_string(values.type) else values.cast(pa.string())
    return _arrow(pd.Series(values, dtype=object) if isinstance(values, list)
                  else pd.Series(values))


def values_list(values: Any) -> list:
    """Distinct values of :meth:`TableState.factors` as Python objects."""
    return values.to_pylist() if isinstance(values, pa.Array) else list(values)


def isin_text(values: pd.Series, allowed: pd.Series) -> np.ndarray:
    """values.isin(allowed) for text columns, in Arrow (missing values are never in).

    pandas' own isin on Arrow text makes a Python object of every allowed value: seconds for
    a hundred thousand keys.
    """
    hit = pc.is_in(_arrow(values), value_set=_arrow(allowed), skip_nulls=True)
    return hit.to_numpy(zero_copy_only=False).astype(bool)


def _lookup(keys: pd.Series, values: np.ndarray, wanted: pd.Series, missing: Any) -> np.ndarray:
    """values[k] for each wanted key (the first row of a repeated key), *missing* where absent."""
    pos = pc.index_in(_arrow(wanted), value_set=_arrow(keys), skip_nulls=True)
    pos = pos.to_numpy(zero_copy_only=False)
    found = ~np.isnan(pos) if pos.dtype.kind == "f" else np.ones(len(pos), bool)
    out = np.full(len(wanted), missing, dtype=values.dtype if len(values) else object)
    if found.any():
        out[found] = values[pos[found].astype(np.int64)]
    return out


def _lookup_used(child: TableState, parent: TableState, key: str, values: np.ndarray,
                 missing: Any) -> np.ndarray:
    """values[r] for each child row, r the first used parent row with its key (*missing* where
    none), from the rows :func:`foreign` matched when the parent has not changed since."""
    known = child.parent_rows.get(key)
    if known is None or known[0] is not parent:
        pos = parent_rows(child, parent, key)
    else:
        pos = known[1]
    out = np.full(child.n, missing, dtype=values.dtype if len(values) else object)
    hit = pos >= 0
    used = _used_at(parent, pos)
    out[used] = values[pos[used]]
    other = np.flatnonzero(hit & ~used)  # first row excluded: a later used one (rare)
    if len(other):
        ok = parent.ok
        out[other] = _lookup(parent.typed[key][ok], values[ok], child.typed[key].iloc[other],
                             missing)
    return out


def _before_enrolment(s: TableState, p: TableState) -> None:
    pid = s.typed["patient_id"]
    e = pd.Series(_lookup(p.typed["patient_id"][p.ok],
                          p.typed["enrolled_on"][p.ok].to_numpy("datetime64[ns]"), pid,
                          np.datetime64("NaT", "ns")))
    d = s.typed["session_date"]
    early = s.ok & (e.notna() & d.notna() & (d < e)).to_numpy()
    for i in np.flatnonzero(early):
        raw = s.raw["session_date"].iat[i]
        s.add(int(i), "session_date", raw, "before_enrolment",
              rule_text.before_enrolment(raw, e.iat[i], pid.iat[i]), "kept")


def session_dates(s: TableState, p: TableState) -> None:
    """Visits before enrolment; session_number against date order (derived when absent).

    Given numbers that disagree with date order are kept (a caution names both visits, their
    numbers and dates, and the likely typo); a patient numbered only in part is numbered by date.
    Where numbers are derived from dates, a visit more than a year from every other visit of the
    patient is a caution of its own (a mistyped year reorders the visits).
    """
    _before_enrolment(s, p)
    given = s.typed["session_number"]
    final = pd.Series(np.nan, index=given.index)
    idx = np.flatnonzero(s.ok)
    if not len(idx):
        s.typed["session_number"] = final
        return
    # "key": the patient's integer code (grouped and sorted on, not its text); "pid" for
    # the sentences. Patients follow one another in code order; each one's visits in date order.
    sub = pd.DataFrame({"key": s.factors("patient_id")[0][idx],
                        "pid": s.typed["patient_id"].iloc[idx].array,
                        "date": s.typed["session_date"].iloc[idx].to_numpy(),
                        "given": given.iloc[idx].to_numpy(), "line": s.lines[idx],
                        "row": idx})
    sub = sub.sort_values(["key", "date", "given", "line"], na_position="last", kind="stable")
    grp = sub.groupby("key", sort=False)
    sub["derived"] = (grp.cumcount() + 1).to_numpy()
    out = sub["derived"].astype("float64").to_numpy()
    if "session_number" in s.present:
        out = _given_numbers(s, sub, out)
        numbered = sub.groupby("key", sort=False)["given"].transform("count").to_numpy() > 0
        _distant_dates(s, sub[~numbered])
    else:
        _distant_dates(s, sub)
    final.iloc[sub["row"].to_numpy()] = out
    s.typed["session_number"] = final


def _given_numbers(s: TableState, sub: pd.DataFrame, out: np.ndarray) -> np.ndarray:
    """Keep given numbers where a patient is fully numbered; report disagreements and gaps."""
    known = sub[sub["given"].notna()]
    prev_max = known.groupby("key", sort=False)["given"].cummax()
    prev_max = prev_max.groupby(known["key"], sort=False).shift(1)
    bad_rows = known.index[(known["given"] <= prev_max).to_numpy()]
    by_patient = sub.groupby("key", sort=False)["given"]
    n_known = by_patient.transform("count").to_numpy()
    n_all = by_patient.transform("size").to_numpy()
    full = n_known == n_all
    bad_pids = np.unique(sub.loc[bad_rows, "key"].to_numpy())
    if len(bad_rows):  # rare: one sentence a disagreement
        pos = {r: k for k, r in enumerate(sub.index)}
        for j in bad_rows:
            _order_finding(s, sub, known, j, keep=bool(full[pos[j]]))
    partial = (~full) & (n_known > 0)
    empty = partial & sub["given"].isna().to_numpy() & ~np.isin(sub["key"].to_numpy(), bad_pids)
    for k in np.flatnonzero(empty):
        row = int(sub["row"].iat[k])
        if s.text("session_number", row) is None:  # else already reported as not a number
            s.add(row, "session_number", None, "session_order",
                  rule_text.number_missing(sub["pid"].iat[k]), "kept")
    keep = full
    out = out.copy()
    out[keep] = sub["given"].to_numpy()[keep]
    return out


def _order_finding(s: TableState, sub: pd.DataFrame, known: pd.DataFrame, j: Any,
                   keep: bool) -> None:
    row = int(sub.at[j, "row"])
    raw = s.text("session_number", row)
    s.add(row, "session_number", raw, "session_order",
          order_sentence(sub, known, j, raw, keep, s.unit), "kept")


def order_sentence(sub: pd.DataFrame, known: pd.DataFrame, j: Any, raw: str | None, keep: bool,
                   unit: str) -> str:
    """The sentence for a given session number out of date order: row *j* of *sub* (a
    patient's visits sorted by date, given number, line; columns pid, date, given, line),
    *known* the rows of *sub* with a number. Shared by the in-memory and the SQL validator."""
    pid, date, num = sub.at[j, "pid"], sub.at[j, "date"], sub.at[j, "given"]
    mine = known[known["pid"] == pid]
    earlier = mine.loc[:j].iloc[:-1]
    other = earlier.loc[earlier["given"].idxmax()]
    o_num, o_date, o_line = other["given"], other["date"], int(other["line"])
    if not keep:
        return (f"session_number = {raw} is out of date order for patient {pid} (session_date "
                f"{date:%Y-%m-%d}); numbers of this patient are taken from date order")
    if o_num == num:
        likely = f"session_number {raw} is given twice: likely a typo in one of them"
    elif o_date.year != date.year:
        likely = (f"the years differ ({date:%Y} and {o_date:%Y}): likely a mistyped year in one "
                  f"of the two dates")
    else:
        likely = "likely a mistyped session_number or session_date"
    return (f"session_number = {raw} (session_date {date:%Y-%m-%d}) disagrees with date order "
            f"for patient {pid}: session_number {int(o_num)} ({unit} {o_line}) is dated "
            f"{o_date:%Y-%m-%d}, before it; {likely}; the given numbers are kept")


def _distant_dates(s: TableState, sub: pd.DataFrame) -> None:
    """Derived numbers: a visit more than a year from every other visit of its patient."""
    dated = sub[sub["date"].notna()]
    if dated.empty:
        return
    g = dated.groupby("key", sort=False)["date"]
    gap_prev = (dated["date"] - g.shift(1)).dt.days
    gap_next = (g.shift(-1) - dated["date"]).dt.days
    nearest = pd.concat([gap_prev, gap_next], axis=1).min(axis=1)
    far = (nearest > DISTANT_DAYS).to_numpy()
    for k in np.flatnonzero(far):
        row = int(dated["row"].iat[k])
        pid, date = dated["pid"].iat[k], dated["date"].iat[k]
        use_prev = not pd.isna(gap_prev.iat[k]) and (pd.isna(gap_next.iat[k])
                                                      or gap_prev.iat[k] <= gap_next.iat[k])
        near = date - pd.Timedelta(days=int(gap_prev.iat[k])) if use_prev else \
            date + pd.Timedelta(days=int(gap_next.iat[k]))
        raw = s.raw["session_date"].iat[row]
        s.add(row, "session_date", raw, "distant_date",
              rule_text.distant_date(raw, pid, near), "kept")


def post_checks(m: TableState, s: TableState) -> None:
    """Post readings on assessment-only visits (excluded) and post readings without a pre."""
    sid, measure, side = m.typed["session_id"], m.typed["measure"], m.typed["side"]
    none = _lookup_used(m, s, "session_id", (s.typed["technique"] == "none").to_numpy(), False)
    post = (m.typed["phase"] == "post").to_numpy()
    for i in np.flatnonzero(m.ok & post & none):
        m.add(int(i), "phase", "post", "post_on_assessment",
              rule_text.post_on_assessment(measure.iat[i], sid.iat[i]), "excluded")
    code = _codes(m, ["session_id", "measure", "side"])
    pre = (m.typed["phase"] == "pre").to_numpy() & m.ok
    lone = m.ok & post & ~_member(code, code[pre])
    for i in np.flatnonzero(lone):
        m.add(int(i), "phase", "post", "post_without_pre",
              rule_text.post_without_pre(measure.iat[i], side.iat[i], sid.iat[i]), "kept")
