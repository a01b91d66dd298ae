"""The one context every section builder reads: the study in scope, the options, the ledger of
published counts, and the record of failures and cautions."""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import string
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.measures import Measure, get_measure
from mfr_outcomes.report.blocks import Figure, Section, Table, Text
from mfr_outcomes.report.disclosure import Cell, Ledger, Redactor, suppressed_label
from mfr_outcomes.report.fmt import sentence
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES
from mfr_outcomes.warnings_ import MfrWarning

__all__ = ["Options", "ReportContext", "pseudonyms", "therapist_pseudonyms"]

log = logging.getLogger("mfr_outcomes.report")

# "3 patients", "only 2 of ... patients", "1 reading(s)": counts of people or records in a
# sentence from a library (cautions, errors)
_SMALL_COUNT = re.compile(
    r"\b(\d+)(\s+(?:of\s+\d+\s+)?(?:patient|session|visit|reading|subject|row|record)s?\b"
    r"(?:\(s\))?)", re.IGNORECASE)


@dataclass(frozen=True)
class Options:
    """What the caller asked for (see :func:`~mfr_outcomes.report.build_report`)."""

    measure: str
    min_cell: int = 5
    seed: int = 2026
    site: str | None = None
    period: tuple[pd.Timestamp, pd.Timestamp, str] | None = None
    scope_text: str = "all sites, all periods"
    targets: dict[str, float] = field(default_factory=dict)
    rebase: tuple[str, ...] = ()
    baseline: tuple[str, str] | None = None
    name_therapists: bool = False
    #: The all-sites report of the study decides what it hides alone, not together with the
    #: sites' reports (for a study whose site reports are not published).
    all_sites_alone: bool = False


def pseudonyms(ids: list[str], key: bytes | None = None) -> dict[str, str]:
    """Stable pseudonyms "A", "B", ..., "Z", "AA", ... in the sorted order of *ids*, or, with
    *key*, in the order of a keyed hash of each id (the letters then say nothing of the ids'
    order to whoever lacks the key).

    >>> pseudonyms(["T9", "T1", "T5"])
    {'T1': 'A', 'T5': 'B', 'T9': 'C'}
    >>> sorted(pseudonyms(["T9", "T1", "T5"], key=b"salt").values())
    ['A', 'B', 'C']
    """
    letters = string.ascii_uppercase
    order = sorted(set(ids))
    if key is not None:
        order.sort(key=lambda t: hashlib.blake2b(t.encode("utf-8"), key=key[:64],
                                                 digest_size=16).digest())
    out = {}
    for k, ident in enumerate(order):
        name, n = "", k
        while True:
            name = letters[n % 26] + name
            n = n // 26 - 1
            if n < 0:
                break
        out[ident] = name
    return out


def therapist_pseudonyms(study: Any) -> dict[str, str]:
    """Therapist id -> "Therapist C", the same in every report of *study* (all sites, each
    site, any period): letters given in the order of a keyed hash of the id, the key being a
    digest of the study's patient identifiers (which no report publishes). A site's report
    shows only its own therapists, under the letters of the whole study."""
    h = hashlib.blake2b(digest_size=32, person=b"mfr-therapists")
    for pid in sorted({str(p) for p in study.patients["patient_id"].dropna().unique()}):
        h.update(pid.encode("utf-8") + b"\0")
    ids = [str(t) for t in study.sessions["therapist_id"].dropna().unique()]
    return {t: f"Therapist {p}" for t, p in pseudonyms(ids, key=h.digest()).items()}


class ReportContext:
    """Shared by the section builders of one report.

    Parameters
    ----------
    study : Study
        The scope's record: the site's patients and sessions up to the end of the report
        period (what trend charts need). The period itself is :attr:`scoped`, derived from it.
    options : Options
    redactor : Redactor
        Identifiers of the whole source (patients, sessions, and those named in findings).
    records : SiteRecords, optional
        Every site's record for the report (:class:`~mfr_outcomes.report.scope.SiteRecords`):
        the other sites a site's chart gaps look at (:meth:`other_sites`), and frames of a
        site's record computed once for every scope the report builds (:meth:`site_frame`).
    names : dict, optional
        Therapist id -> pseudonym for the whole study (:func:`therapist_pseudonyms`), so that
        every report of the study names a therapist alike; by default, of this scope alone.
    figures : bool
        Draw figures (False: the counts alone, for the suppression shared across reports).
    """

    def __init__(self, study: Any, options: Options, redactor: Redactor, *,
                 records: Any = None,
                 names: dict[str, str] | None = None, figures: bool = True) -> None:
        self.study = study
        #: False for the reports of the other scopes of a study, built only for their counts
        #: (see :mod:`mfr_outcomes.report.family`): no figure is drawn
        self.figures = figures
        self.options = options
        self.redactor = redactor
        self.records = records
        self._names = names
        self.ledger = Ledger(options.min_cell)
        self.failures: list[str] = []
        #: each caution once, with every part of the report it arose in (first seen first)
        self._cautions: dict[str, list[str]] = {}
        #: warnings said already, by identity: an enclosing part sees them again
        self._said: dict[int, Warning] = {}
        self.fits: dict[str, Any] = {}
        self.models: list[dict[str, Any]] = []
        self.charts: list[dict[str, Any]] = []
        self.tables: dict[str, Table] = {}
        self._frames: dict[str, pd.DataFrame] = {}
        self._responders: pd.DataFrame | None = None

    # -- scope

    @property
    def measure(self) -> str:
        return self.options.measure

    @property
    def m(self) -> Measure:
        return get_measure(self.options.measure)

    @property
    def min_cell(self) -> int:
        return self.options.min_cell

    @cached_property
    def scoped(self) -> Any:
        """The study restricted to the report period (sessions dated inside it)."""
        from mfr_outcomes.report.scope import restrict_period

        return restrict_period(self.study, self.options.period)

    def frame(self, measure: str | None = None) -> pd.DataFrame:
        """``scoped.frame(measure)``, built once per measure (callers must not modify it)."""
        code = measure or self.measure
        if code not in self._frames:
            self._frames[code] = self.scoped.frame(code)
        return self._frames[code]

    def responders(self) -> pd.DataFrame:
        """``effects.responders(scoped, measure)``, computed once (callers must not modify it);
        its cautions are not raised again here (the report states its counts)."""
        if self._responders is None:
            from mfr_outcomes import effects
            from mfr_outcomes.warnings_ import DataWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                self._responders = effects.responders(self.scoped, self.measure)
        return self._responders

    @cached_property
    def treatment_sessions(self) -> pd.DataFrame:
        s = self.scoped.sessions
        return s[s["technique"].astype(str).isin(TREATMENT_TECHNIQUES)]

    @cached_property
    def therapist_names(self) -> dict[str, str]:
        """Therapist id -> name shown: a pseudonym ("Therapist C") the same in every report of
        the study (see :func:`therapist_pseudonyms`) unless ``name_therapists``."""
        ids = [str(t) for t in self.study.sessions["therapist_id"].dropna().unique()]
        if self.options.name_therapists:
            return {t: t for t in ids}
        names = self._names
        if names is None or any(t not in names for t in ids):
            names = therapist_pseudonyms(self.study)
        return {t: names[t] for t in ids}

    def other_sites(self) -> list[str]:
        """The study's other sites with a session in the period (none for the all-sites
        scope)."""
        return [] if self.records is None else self.records.others(self.options.site)

    def site_frame(self, key: tuple, compute: Callable[[Any], Any],
                   site: str | None = None) -> Any:
        """``compute`` of the record of *site* (by default this scope's: ``self.study``),
        computed once per *key* for every scope of the report (the counts by period a site's
        chart gaps depend on)."""
        site = self.options.site if site is None else site
        if self.records is None or site is None:
            return compute(self.study)
        return self.records.frame(str(site), key, compute)

    def release(self) -> None:
        """Drop the frames, responders and fits cached while building (a scope built only for
        its counts keeps its ledger and tables, not its data)."""
        self._frames.clear()
        self._responders = None
        self.fits.clear()
        self.models.clear()
        for name in ("scoped", "treatment_sessions"):
            self.__dict__.pop(name, None)

    # -- counts

    def count(self, value: int | float) -> Cell:
        """A count said in a sentence, as a ledger cell."""
        return self.ledger.add(int(value))

    def add_table(self, sec: Section, table: Table) -> Table:
        """Put *table* in *sec* and register its count cells in the ledger."""
        if table.name in self.tables:
            raise ValueError(f"two report tables are named {table.name!r}")
        self.tables[table.name] = table
        frame = table.frame.reset_index(drop=True)
        table.frame = frame
        for col in table.counts:
            if col not in frame.columns:
                continue
            for r, v in enumerate(frame[col].tolist()):
                if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
                    continue
                table.cells[(r, col)] = self.ledger.add(int(v))
        return sec.table(table)

    def safe(self, text: str) -> str:
        """*text* (a caution or an error from a library) without identifiers or small counts."""
        text = self.redactor.text(text)
        return _SMALL_COUNT.sub(
            lambda mt: (suppressed_label(self.min_cell) + mt.group(2))
            if 0 < int(mt.group(1)) < self.min_cell else mt.group(0), text)

    # -- running parts

    def attempt(self, section: Section, what: str, fn: Callable[..., Any], *args: Any,
                **kwargs: Any) -> Any:
        """Run one part; on failure show a sentence, record it and log a warning."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = fn(*args, **kwargs)
            except Exception as exc:  # a part must never take the whole report down
                self.fail(section, f"{what} could not be produced: {self.safe(sentence(exc))}")
                value = None
        for w in caught:
            said = id(w.message) in self._said
            if not said and (issubclass(w.category, MfrWarning)
                             or "Convergence" in w.category.__name__):
                self.caution(str(w.message), where=what)
                self._said[id(w.message)] = w.message
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return value

    def fail(self, section: Section, text: str) -> None:
        section.problem(text)
        self.failures.append(f"{section.title} — {text}")
        log.warning("QI report: %s", text)

    def caution(self, text: str, where: str | None = None) -> None:
        """Say *text* under the methods' cautions, once: a warning seen again (by an
        enclosing part, or by another fit) adds only its part, *where*, to the same line."""
        places = self._cautions.setdefault(self.safe(" ".join(str(text).split())), [])
        if where is not None and where not in places:
            places.append(where)

    @property
    def cautions(self) -> list[str]:
        """Each caution once, after the parts of the report it arose in."""
        return [f"{self.safe('; '.join(places))}: {text}" if places else text
                for text, places in self._cautions.items()]

    def fit_label(self, name: str, fit: Any) -> None:
        self.fits[name] = fit
        diag = getattr(fit, "diagnostics", None) or {}
        for text in diag.get("warnings", []) if isinstance(diag, dict) else []:
            self.caution(text, where=name)

    def figure(self, sec: Section, name: str, draw: Callable[[], Any], caption: str,
               alt: str) -> bool:
        """Add the figure drawn by *draw* (a call of a :mod:`mfr_outcomes.plots` function).

        A plotting error is a reported failure naming the figure; there is no second
        renderer. Returns True when the figure was added.
        """
        if not self.figures:
            return False
        import matplotlib.pyplot as plt

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # tight layouts of long labels
                drawn = draw()
                fig = _figure_of(drawn)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        except Exception as exc:
            self.fail(sec, f"The figure '{name}' could not be drawn: {self.safe(sentence(exc))}")
            plt.close("all")
            return False
        plt.close(fig)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        sec.figure(Figure(caption, alt, uri))
        return True

    def text(self, *parts: Any) -> Text:
        return Text.of(*parts)


def _figure_of(drawn: Any) -> Any:
    if hasattr(drawn, "savefig"):
        return drawn
    if hasattr(drawn, "figure") and hasattr(drawn.figure, "savefig"):
        return drawn.figure  # an Axes or a FacetGrid
    arr = np.asarray(drawn, dtype=object).ravel()
    if len(arr) and hasattr(arr[0], "figure"):
        return arr[0].figure
    raise TypeError(f"a plotting function returned {type(drawn).__name__}, not a figure")
