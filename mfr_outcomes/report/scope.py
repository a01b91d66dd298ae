"""Which patients and sessions a report covers: one site (or all) and one period (or all)."""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

__all__ = ["parse_period", "site_history", "restrict_period", "month_label", "SiteRecords"]

_QUARTER = re.compile(r"^\s*(\d{4})\s*-?\s*[Qq]([1-4])\s*$")
_MONTH = re.compile(r"^\s*(\d{4})-(\d{1,2})\s*$")


def parse_period(text: str) -> tuple[pd.Timestamp, pd.Timestamp, str]:
    """Read a quarter (``2026Q3``) or a month (``2026-07``).

    Returns
    -------
    (start, end, label)
        ``start`` inclusive and ``end`` exclusive midnights, and the normalised label.

    Raises
    ------
    ValueError
        With a sentence naming the value and the accepted forms.
    """
    s = str(text)
    m = _QUARTER.match(s)
    if m:
        year, q = int(m.group(1)), int(m.group(2))
        start = pd.Timestamp(year, 3 * q - 2, 1)
        return start, start + pd.DateOffset(months=3), f"{year}Q{q}"
    m = _MONTH.match(s)
    if m and 1 <= int(m.group(2)) <= 12:
        year, month = int(m.group(1)), int(m.group(2))
        start = pd.Timestamp(year, month, 1)
        return start, start + pd.DateOffset(months=1), f"{year}-{month:02d}"
    raise ValueError(f"period {text!r} is not a quarter like 2026Q3 or a month like 2026-07")


def month_label(text: str, what: str) -> str:
    """A month as charts label it ("2026-07"), from "2026-07" or "2026-7"."""
    m = _MONTH.match(str(text))
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"{what} {text!r} is not a month like 2026-07")
    return f"{int(m.group(1))}-{int(m.group(2)):02d}"


def _study(study: Any, patients: pd.DataFrame, sessions: pd.DataFrame) -> Any:
    from mfr_outcomes.study import Study
    from mfr_outcomes.table_rules import isin_text

    measurements = study.measurements[isin_text(study.measurements["session_id"],
                                                sessions["session_id"])]
    return Study(patients.reset_index(drop=True), sessions.reset_index(drop=True),
                 measurements.reset_index(drop=True), study.report, study.source)


def site_history(study: Any, site: str | None,
                 period: str | None) -> tuple[Any, str, tuple | None]:
    """The site's record up to the end of *period*, the scope in words, and the period bounds.

    Raises
    ------
    ValueError
        When the site is unknown or the scope holds no session.
    """
    patients, sessions = study.patients, study.sessions
    words = []
    if site is not None:
        sites = sorted(set(patients["site_id"].dropna().astype(str)))
        if str(site) not in sites:
            raise ValueError(f"site {site!r} is not in this study; sites present: "
                             f"{', '.join(sites) if sites else 'none'}")
        patients = patients[patients["site_id"].astype(str) == str(site)]
        sessions = sessions[sessions["patient_id"].isin(patients["patient_id"])]
        words.append(f"site {site}")
    else:
        words.append("all sites")
    bounds = None
    if period is not None:
        start, end, label = parse_period(period)
        dates = pd.to_datetime(sessions["session_date"])
        if not ((dates >= start) & (dates < end)).any():
            all_dates = pd.to_datetime(study.sessions["session_date"])
            span = (f"sessions run from {all_dates.min():%Y-%m-%d} to {all_dates.max():%Y-%m-%d}"
                    if len(all_dates) else "there are no sessions")
            where = f" of site {site}" if site is not None else ""
            raise ValueError(f"no sessions{where} in period {label}; {span}")
        sessions = sessions[dates < end]
        patients = patients[patients["patient_id"].isin(sessions["patient_id"])]
        bounds = (start, end, label)
        words.append(f"sessions from {start:%Y-%m-%d} to {(end - pd.Timedelta(days=1)):%Y-%m-%d}"
                     f" ({label})")
    else:
        words.append("all periods")
    if sessions.empty:
        raise ValueError(f"no sessions in {' and '.join(words)}")
    return _study(study, patients, sessions), ", ".join(words), bounds


def restrict_period(study: Any, bounds: tuple | None) -> Any:
    """*study* with only the sessions inside *bounds* (and their patients and readings)."""
    if bounds is None:
        return study
    start, end, _ = bounds
    dates = pd.to_datetime(study.sessions["session_date"])
    sessions = study.sessions[(dates >= start) & (dates < end)]
    patients = study.patients[study.patients["patient_id"].isin(sessions["patient_id"])]
    return _study(study, patients, sessions)


class SiteRecords:
    """The record of every scope of one study up to the end of one period
    (:func:`site_history`), built once for a report and shared by every scope it builds, and
    small frames computed from a site's record, computed once (a site's report asks for every
    other site's monthly counts, and a report that builds every site's scope would otherwise
    rebuild each site's record and counts once per scope).

    >>> import mfr_outcomes as mfr
    >>> study, _ = mfr.synthetic.generate(n_patients=12, seed=1)
    >>> records = SiteRecords(study, None)
    >>> records.history("site-1")[0] is records.history("site-1")[0]
    True
    >>> records.others("site-1")
    ['site-2', 'site-3']
    """

    def __init__(self, study: Any, period: str | None) -> None:
        self.study, self.period = study, period
        self._history: dict[str | None, Any] = {}
        self._frames: dict[tuple, Any] = {}

    def sites(self) -> list[str]:
        return sorted(set(self.study.patients["site_id"].dropna().astype(str)))

    def history(self, site: str | None) -> tuple[Any, str, tuple | None]:
        """:func:`site_history` of *site* (None: all sites), built once; its ValueError (no
        such site, no session in the period) is raised again on every call."""
        key = None if site is None else str(site)
        if key not in self._history:
            try:
                self._history[key] = site_history(self.study, site, self.period)
            except ValueError as exc:
                self._history[key] = exc
        got = self._history[key]
        if isinstance(got, ValueError):
            raise got
        return got

    def others(self, site: str | None) -> list[str]:
        """Every site but *site* with a session in the period (none for the all-sites scope:
        its report subtracts nothing)."""
        if site is None:
            return []
        out = []
        for other in self.sites():
            if other == str(site):
                continue
            try:
                self.history(other)
            except ValueError:  # no session of that site in the period: nothing to subtract
                continue
            out.append(other)
        return out

    def frame(self, site: str, key: tuple, compute: Any) -> Any:
        """``compute(history of site)``, computed once per *key* (a copy each call: callers
        may change it); what it raised is raised again."""
        if (site, key) not in self._frames:
            try:
                self._frames[(site, key)] = compute(self.history(site)[0])
            except Exception as exc:  # noqa: BLE001 - kept, and raised to every caller
                self._frames[(site, key)] = exc
        got = self._frames[(site, key)]
        if isinstance(got, Exception):
            raise got
        return got.copy()
