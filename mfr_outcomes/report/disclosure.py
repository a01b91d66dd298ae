"""Disclosure control for the QI report: small-cell suppression that survives arithmetic,
identifier redaction, safe CSV, and writing that never follows a link.

The rules (stated in the report's methods section and ``docs/report.md``):

- **Primary**: a count of people, sessions, readings or events from 1 to ``min_cell − 1`` is
  shown as ``"<min_cell"``. A count of 0 is shown as 0: it names no one (a group it describes
  is itself shown only with at least ``min_cell`` members).
- **Complementary**: every count the report publishes is a cell of one :class:`Ledger`, with
  the sums that tie cells together (a table's total, "all patients", read = used + excluded,
  readings = pre + post, a count repeated in a sentence). After primary suppression, each
  hidden cell is checked as an attacker would: the feasible values of the cell given every
  published count, the sums, and what the labels say ("<k" is 1 to k − 1; "suppressed" is at
  least k) — two linear programmes. While one is pinned to a single value, the smallest
  published non-zero count in a sum it belongs to whose hiding frees it is hidden too, shown
  as ``"suppressed"`` with a footnote.
- **Across reports**: every report of a study with sites takes its share of one decision over
  the all-sites report and every site's (:mod:`mfr_outcomes.report.family`), so that no sum
  across reports ("all sites = the sum of the sites") recovers a count one of them hides; the
  sites take the extra suppression first, the all-sites report only what they cannot.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mfr_outcomes.report.lp import Programme

__all__ = [
    "SECONDARY_LABEL",
    "SECONDARY_NOTE",
    "Cell",
    "Ledger",
    "safe_write",
    "suppressed_label",
    "neutralise_csv_cell",
    "neutralise_frame",
    "Redactor",
]

#: Text cells starting with one of these are read as formulas by spreadsheet programs.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


#: The text shown for a count hidden only to protect another one.
SECONDARY_LABEL = "suppressed"
#: The footnote under a table or list holding such a count.
SECONDARY_NOTE = ("'suppressed': hidden although not small, because it would let a small count "
                  "be worked out from the totals (here or in another site's report).")


@dataclass(frozen=True)
class Cell:
    """A handle to one published count of the report (see :class:`Ledger`)."""

    id: int


class Ledger:
    """Every count a report publishes, the sums between them, and which are hidden.

    Parameters
    ----------
    min_cell : int
        Smallest count shown.

    Examples
    --------
    >>> led = Ledger(5)
    >>> total, a, b = led.add(12), led.add(9), led.add(3)
    >>> led.relate(total, [a, b])
    >>> led.decide()
    >>> led.label(b), led.label(a), led.label(total)
    ('<5', 'suppressed', 12)
    """

    def __init__(self, min_cell: int) -> None:
        self.min_cell = int(min_cell)
        self.values: list[float] = []
        self.relations: list[tuple[int, tuple[int, ...]]] = []
        self.status: dict[int, str] = {}
        self._forced: dict[int, str] = {}
        self._degree: dict[int, int] = {}
        #: Optional order of preference for complements (cell id -> sortable key): a site's
        #: report ranks cells by table, row and column, so that every site of a study hides the
        #: same rows and the all-sites report minus the other sites recovers none.
        self.rank: dict[int, tuple] = {}
        #: Cells tried first as complements (a site's count whose counterpart another report
        #: of the study hides: hiding both keeps the sums across reports open).
        self.prefer: set[int] = set()
        #: Cells never chosen as complements: a site's count that the all-sites report gives
        #: away (hidden, it would stay known and protect nothing), or, in a check across
        #: reports, a count of a report decided already.
        self.avoid: set[int] = set()
        #: Cells of :attr:`avoid` that may still be hidden as complements when nothing else
        #: protects a count within this report (a site's count the all-sites report gives away:
        #: hidden, it protects nothing across reports, but it still protects against a reader of
        #: this report alone). Not carried into a combined ledger.
        self.last_resort: set[int] = set()
        #: Cells chosen as complements only when no other candidate frees the count (in a
        #: check across reports, the all-sites report's counts: its charts keep their points).
        self.reluctant: set[int] = set()
        #: Hidden cells still pinned after every count around them was hidden (see decide).
        self.unprotected: list[int] = []
        self._decided = False
        self._rel_of: dict[int, list[int]] | None = None
        self._rel_count = 0
        self._mat = None
        self._mat_key: tuple = ()
        self._lp = Programme()
        self._last: tuple = (None, None)
        #: feasible values of hidden cells found while deciding (see _is_pinned)
        self._witness: list[dict[int, float]] = []

    def add(self, value: float) -> Cell:
        """Register a published count and return its handle."""
        v = float(value)
        if not math.isfinite(v) or v < 0 or not v.is_integer():
            raise ValueError(f"a published count must be a whole number ≥ 0, got {value!r}")
        self.values.append(v)
        self._decided = False
        return Cell(len(self.values) - 1)

    def relate(self, total: Cell, parts: Sequence[Cell]) -> None:
        """Declare ``total = sum(parts)`` (checked against the values)."""
        want = self.values[total.id]
        got = sum(self.values[p.id] for p in parts)
        if abs(want - got) > 1e-9:
            raise ValueError(f"declared sum does not hold: {want:g} != {got:g}")
        self.relations.append((total.id, tuple(p.id for p in parts)))
        self._decided = False

    def relate_if(self, total: Cell, parts: Sequence[Cell]) -> bool:
        """Declare ``total = sum(parts)`` when it holds (a margin a reader could assume, such
        as "minutes recorded for every session"); True when declared."""
        if abs(self.values[total.id] - sum(self.values[p.id] for p in parts)) > 1e-9:
            return False
        self.relate(total, parts)
        return True

    def same(self, a: Cell, b: Cell) -> None:
        """Declare that two cells publish the same count."""
        self.relate(a, [b])

    def forced(self) -> list[int]:
        """Ids of the cells hidden for a reason found outside this report."""
        return sorted(self._forced)

    def hide(self, cell: Cell, reason: str = "cross-site") -> None:
        """Hide *cell* for a reason found outside this report (e.g. another site's count)."""
        self._forced[cell.id] = reason
        self._decided = False

    # -- deciding

    def _relations_of(self) -> dict[int, list[int]]:
        """cell id -> the relations it is in (built once per set of relations)."""
        if self._rel_of is None or self._rel_count != len(self.relations):
            rel_of: dict[int, list[int]] = {}
            for r, (total, parts) in enumerate(self.relations):
                for j in dict.fromkeys((total, *parts)):
                    rel_of.setdefault(j, []).append(r)
            self._rel_of, self._rel_count = rel_of, len(self.relations)
        return self._rel_of

    def component(self, i: int) -> tuple[list[int], list[int]]:
        """The hidden cells tied to hidden cell *i* through sums, and those sums.

        Published counts are constants, so the feasible values of *i* depend on this part of
        the linear programme alone (an exact reduction)."""
        cells, rels = self._reach(i, lambda j: j in self.status)
        return sorted(cells), sorted(rels)

    def _reach(self, i: int, keep) -> tuple[set[int], set[int]]:
        """The cells reached from cell *i* through sums, stepping only onto cells for which
        *keep* holds, and the sums met."""
        rel_of = self._relations_of()
        cells, rels, frontier = {i}, set(), [i]
        while frontier:
            h = frontier.pop()
            for r in rel_of.get(h, ()):
                if r in rels:
                    continue
                rels.add(r)
                total, parts = self.relations[r]
                for j in (total, *parts):
                    if j not in cells and keep(j):
                        cells.add(j)
                        frontier.append(j)
        return cells, rels

    def _bounds(self, h: int) -> tuple[float, float | None]:
        # what a reader knows of a hidden cell: "<k" is 1 to k - 1 (zeros are shown), and a
        # cell hidden to protect another is a count of at least k
        k = self.min_cell
        return (1, k - 1) if self.status[h] == "primary" else (k, None)

    def matrix(self):
        """The sums as one sparse matrix (a row per sum: -1 for its total, +1 for each part;
        sums × cells), built once per set of counts and sums."""
        from scipy import sparse

        key = (id(self.values), len(self.values), id(self.relations), len(self.relations))
        if self._mat is None or self._mat_key != key:
            rows, cols, data = [], [], []
            for r, (total, parts) in enumerate(self.relations):
                rows.append(r)
                cols.append(total)
                data.append(-1.0)
                rows.extend([r] * len(parts))
                cols.extend(parts)
                data.extend([1.0] * len(parts))
            mat = sparse.csr_array((data, (rows, cols)),
                                   shape=(len(self.relations), len(self.values)))
            mat.sum_duplicates()
            self._mat, self._mat_key = mat, key
        return self._mat

    def _system(self, cells: list[int], rels: list[int]):
        """The sums *rels* as equations in the hidden *cells* (a sparse matrix, one row per sum
        that holds one of them, and its right-hand side from the published counts)."""
        sub = self.matrix()[np.asarray(rels, dtype=np.int64)]
        idx = np.asarray(cells, dtype=np.int64)
        a = sub[:, idx]
        a.eliminate_zeros()
        published = np.asarray(self.values, dtype=float).copy()
        published[idx] = 0.0
        rhs = -(sub @ published)
        keep = np.flatnonzero(np.diff(a.indptr) > 0)
        return a[keep], rhs[keep]

    @staticmethod
    def _holds(a, col: int) -> bool:
        """True when some equation of the sparse system *a* holds unknown *col*."""
        return bool(np.any(a.indices == col))

    def interval(self, cell: Cell | int) -> tuple[float, float]:
        """The values *cell* could take given every published count and sum (min, max)."""
        i = cell.id if isinstance(cell, Cell) else int(cell)
        if i not in self.status:
            return (self.values[i], self.values[i])
        key, (a_eq, b_eq, bounds), cells = self._programme(i)
        col = cells.index(i)
        low, high = self._bounds(i)
        if not len(b_eq) or not self._holds(a_eq, col):
            return (float(low), math.inf if high is None else float(high))
        if len(cells) == 1:  # one unknown: each sum gives its value
            dense = a_eq.toarray()[:, 0]
            return (float(b_eq[dense != 0][0] / dense[dense != 0][0]),) * 2
        lo = self._lp.solve(key, a_eq, b_eq, bounds, col, +1.0)[2]
        hi = self._lp.solve(key, a_eq, b_eq, bounds, col, -1.0)[2]
        return (-math.inf if math.isnan(lo) else lo, math.inf if math.isnan(hi) else hi)

    def pinned(self, cell: Cell | int) -> bool:
        """True when hidden *cell* has a single feasible value given everything published."""
        i = cell.id if isinstance(cell, Cell) else int(cell)
        return i in self.status and self._is_pinned(i)

    def _is_pinned(self, i: int) -> bool:
        """True when hidden cell *i* has a single feasible value (counts are whole numbers).

        The true counts are one feasible solution; any other solution found on the way (a
        *witness*) stays feasible when more cells are hidden, so a cell it moves is free
        without solving anything."""
        v = self.values[i]
        for w in self._witness:
            if abs(w.get(i, v) - v) >= 0.5:
                return False
        key, (a_eq, b_eq, bounds), cells = self._programme(i)
        col = cells.index(i)
        if not len(b_eq) or not self._holds(a_eq, col):
            low, high = self._bounds(i)
            return high is not None and high - low < 0.5
        for sense in (1.0, -1.0):
            status, x, value = self._lp.solve(key, a_eq, b_eq, bounds, col, sense)
            if status == "unbounded":
                return False
            if status == "optimal" and abs(value - v) >= 0.5:
                self._witness.append(dict(zip(cells, x.tolist(), strict=True)))
                return False
        return True

    def _programme(self, i: int) -> tuple[tuple, tuple, list[int]]:
        """The linear programme of hidden cell *i*'s part of the sums: its key (the same for
        every cell of one part while nothing more is hidden), its system (equations and what
        the labels say of each unknown) and its unknowns."""
        cells, rels = self.component(i)
        self.matrix()  # brings its key up to date
        key = (self._mat_key, tuple(cells), tuple(rels),
               tuple(self.status[h] == "primary" for h in cells))
        if self._last[0] != key:
            a_eq, b_eq = self._system(cells, rels)
            self._last = (key, (a_eq, b_eq, [self._bounds(h) for h in cells]))
        return key, self._last[1], cells

    def _frees(self, i: int, cells: list[int]) -> bool:
        """True when hiding *cells* (published now) would give hidden cell *i* a second
        feasible value. Solutions found meanwhile are not kept: they hide *cells*."""
        kept = len(self._witness)
        for j in cells:
            self.status[j] = "secondary"
        try:
            return not self._is_pinned(i)
        finally:
            for j in cells:
                del self.status[j]
            del self._witness[kept:]

    def _complement(self, i: int, last_resort: bool = False) -> int | None:
        """The smallest published non-zero count sharing a sum with cell *i* (searching sums
        further away when every close one is hidden; never one of :attr:`avoid`, unless it is
        in :attr:`last_resort` and *last_resort* is true)."""
        banned = self.avoid - self.last_resort if last_resort else self.avoid
        rel_of = self._relations_of()
        seen_rel: set[int] = set()
        frontier = {i}
        while frontier:
            cands, nxt = set(), set()
            for r in sorted({r for h in frontier for r in rel_of.get(h, ())} - seen_rel):
                total, parts = self.relations[r]
                seen_rel.add(r)
                for j in {total, *parts}:
                    if j in self.status:
                        nxt.add(j)
                    elif self.values[j] > 0 and j not in banned:
                        cands.add(j)
            if cands:
                # the smallest count whose hiding frees cell i (else the smallest count)
                order = sorted(cands, key=lambda j: (j in self.reluctant, j not in self.prefer,
                                                     self._degree[j],
                                                     self.rank.get(j, ("~",)),
                                                     self.values[j], j))
                # hiding them all at once frees i at least as much as hiding any one of
                # them (hiding more only widens): when that does not free it, none does
                if len(order) > 1 and self._frees(i, order):
                    for j in order:
                        if self._frees(i, [j]):
                            return j
                return order[0]
            frontier = nxt - frontier
        return None

    def decide(self) -> None:
        """Primary, cross-report and complementary suppression (see the module docstring)."""
        self.status = {i: "primary" for i, v in enumerate(self.values)
                       if 0 < v < self.min_cell}
        self.unprotected: list[int] = []
        self._witness = []
        for i, reason in self._forced.items():
            self.status.setdefault(i, reason)
        self._degree = {}
        for total, parts in self.relations:
            for j in (total, *parts):
                self._degree[j] = self._degree.get(j, 0) + 1
        self._protect(sorted(self.status))
        self._decided = True

    def protect(self, cells: Iterable[Cell | int], reason: str = "cross-report") -> list[int]:
        """After a decision, hide *cells* too and protect them (and any complement they need)
        without undoing anything already hidden; returns the ids newly hidden.

        Hiding more only widens the feasible values of every hidden cell, so only the new ones
        need checking: the decision grows and never changes its mind."""
        if not self._decided:
            self.decide()
        before = set(self.status)
        new = []
        for c in cells:
            i = c.id if isinstance(c, Cell) else int(c)
            if i in self.status:
                continue
            if self.values[i] <= 0:
                raise ValueError("a published 0 is never hidden: it names no one")
            self._forced[i] = reason
            self.status[i] = reason
            new.append(i)
        self._protect(sorted(new))
        return sorted(set(self.status) - before)

    def recheck(self, cells: Iterable[int], *, widen: bool = False) -> list[int]:
        """Check hidden *cells* again (after sums were added, or in a combined ledger) and
        hide complements where one is pinned; returns the ids newly hidden.

        With *widen*, a pinned cell's complements are a set found at once (see
        :meth:`_freeing_set`) rather than one count at a time, :attr:`avoid` is ignored and
        :attr:`reluctant` cells are hidden only where nothing else frees the cell."""
        if not self._decided:
            self.decide()
        before = set(self.status)
        self._degree = {}
        for total, parts in self.relations:
            for j in (total, *parts):
                self._degree[j] = self._degree.get(j, 0) + 1
        self._protect([i for i in cells if i in self.status], widen=widen)
        return sorted(set(self.status) - before)

    def _freeing_set(self, i: int) -> list[int] | None:
        """Published counts whose hiding frees pinned cell *i*, or None when none would.

        The counts the sums reach from *i* are taken a ring at a time (the counts in a sum
        with *i*, then those in a sum with one of them, ...) until hiding them all frees *i*.
        Of those, only the counts that the freeing solution moves off their true value need
        hiding (the others can stay published: the solution still holds), and of these each
        is tried for publishing again, :attr:`reluctant` ones first and larger ones next,
        while *i* stays free. Every trial is one linear programme, over every count the sums
        reach from *i*, in which a count left published is an unknown bounded to its true
        value; hiding all of them is tried first (when that leaves *i* pinned, nothing
        would free it)."""
        reach, _ = self._reach(i, lambda j: j in self.status or self.values[j] > 0)
        everything = sorted(j for j in reach if j not in self.status)
        if not everything:
            return None
        trial = self._trials(i, everything)
        if trial(everything) is None:  # pinned whatever is hidden
            return None
        rel_of = self._relations_of()
        seen_rel: set[int] = set()
        visited, frontier, cands = {i}, {i}, []
        while frontier:
            new, nxt = [], set()
            for r in sorted({r for h in frontier for r in rel_of.get(h, ())} - seen_rel):
                seen_rel.add(r)
                total, parts = self.relations[r]
                for j in dict.fromkeys((total, *parts)):
                    if j in visited:
                        continue
                    visited.add(j)
                    nxt.add(j)
                    if j not in self.status and self.values[j] > 0:
                        new.append(j)
            frontier = nxt
            if not new:
                continue
            cands.extend(new)
            moved = trial(cands)
            if moved is None:
                continue
            keep = sorted(moved, key=lambda j: (j not in self.reluctant, -self.values[j], j))
            for j in list(keep):
                if j not in keep:
                    continue
                rest = [h for h in keep if h != j]
                fewer = trial(rest) if rest else None
                if fewer is not None:  # a solution moving only cells of rest
                    keep = [h for h in keep if h in set(fewer)]
            return sorted(keep)
        return None

    def _trials(self, i: int, cands: list[int]):
        """A function of a subset of *cands* (published counts): with that subset hidden, the
        counts a solution giving pinned cell *i* another value moves off their true values, or
        None when *i* stays pinned. One model serves every subset: a count of *cands* left
        published is its unknown with both bounds at its true value."""
        for j in cands:
            self.status[j] = "secondary"
        try:
            key, (a_eq, b_eq, bounds), unknowns = self._programme(i)
        finally:
            for j in cands:
                del self.status[j]
        col = unknowns.index(i)
        pos = {u: n for n, u in enumerate(unknowns)}
        v = self.values[i]
        if not len(b_eq) or not self._holds(a_eq, col):
            return lambda subset: None

        def trial(subset: list[int]) -> list[int] | None:
            hidden = set(subset)
            bnds = list(bounds)
            for j in cands:
                if j in pos and j not in hidden:
                    bnds[pos[j]] = (self.values[j], self.values[j])
            for sense in (1.0, -1.0):
                status, x, value = self._lp.solve(key, a_eq, b_eq, bnds, col, sense)
                if status == "unbounded":  # no solution to read: every hidden count counts
                    return [j for j in subset if j in pos]
                if status == "optimal" and abs(value - v) >= 0.5:
                    return [j for j in subset
                            if j in pos and abs(x[pos[j]] - self.values[j]) >= 0.5]
            return None

        return trial

    @classmethod
    def combine(cls, ledgers: Sequence[Ledger],
                sums: Sequence[tuple[tuple[int, int], Sequence[tuple[int, int]]]] = ()
                ) -> tuple[Ledger, list[int]]:
        """One decided ledger holding the cells, sums, ranks and decisions of *ledgers* (cell
        ``i`` of ``ledgers[k]`` is cell ``offsets[k] + i``), for checks across reports, with
        the sums *sums* between them (``(k, i)`` is cell ``i`` of ``ledgers[k]``) declared
        last."""
        joint = cls(ledgers[0].min_cell)
        offsets = []
        for led in ledgers:
            if not led._decided:
                led.decide()
            off = len(joint.values)
            offsets.append(off)
            joint.values.extend(led.values)
            joint.relations.extend((off + t, tuple(off + p for p in parts))
                                   for t, parts in led.relations)
            joint.status.update({off + i: kind for i, kind in led.status.items()})
            joint.rank.update({off + i: r for i, r in led.rank.items()})
            joint.prefer.update(off + i for i in led.prefer)
            joint.avoid.update(off + i for i in led.avoid)
        for (k, t), parts in sums:
            joint.relate(Cell(offsets[k] + t), [Cell(offsets[j] + p) for j, p in parts])
        joint._decided = True
        return joint, offsets

    def _protect(self, start: list[int], widen: bool = False) -> None:
        related = set(self._degree)
        # hiding more cells only widens every interval, so a cell found free stays free: each
        # hidden cell is checked until it is free, and each new complement is checked once
        queue = [i for i in start if i in related]
        tried: set[int] = set()
        hopeless: set[int] = set()
        while queue:
            i = queue.pop(0)
            if not self._is_pinned(i):
                continue
            if widen:
                found = self._freeing_set(i)
                if not found:
                    if i not in self.unprotected:
                        self.unprotected.append(i)
                    continue
                for j in found:
                    self.status[j] = "secondary"
                queue = found + queue
                continue
            # with counts that may never be hidden (avoid), a cell can stay pinned however many
            # others are hidden: found first, so that no complement is hidden in vain
            if self.avoid and i not in tried:
                tried.add(i)
                if self._hopeless(i):
                    hopeless.add(i)
                    if not self.last_resort and i not in self.unprotected:
                        self.unprotected.append(i)
            # such a cell is still protected within this report by last-resort complements
            # (it stays listed: a reader of the other reports knows them)
            j = None
            if i not in hopeless:
                j = self._complement(i)
            elif self.last_resort:
                j = self._complement(i, last_resort=True)
            if j is None:  # every count around it is hidden already: nothing more to hide
                if i not in self.unprotected:
                    self.unprotected.append(i)
                continue
            self.status[j] = "secondary"
            queue = [i, j] + queue

    def _hopeless(self, i: int) -> bool:
        """True when hidden cell *i* stays pinned even with every non-zero count that sums
        reach from it hidden, except those of :attr:`avoid` (which are known)."""
        seen, _ = self._reach(i, lambda j: j not in self.avoid and self.values[j] > 0)
        extra = sorted(j for j in seen if j not in self.status)
        return not extra or not self._frees(i, extra)

    def hidden(self, cell: Cell) -> bool:
        if not self._decided:
            self.decide()
        return cell.id in self.status

    def label(self, cell: Cell) -> str | int:
        """What the report shows for *cell*: the count, ``"<min_cell"`` or ``"suppressed"``."""
        if not self._decided:
            self.decide()
        kind = self.status.get(cell.id)
        if kind is None:
            return int(self.values[cell.id])
        return suppressed_label(self.min_cell) if kind == "primary" else SECONDARY_LABEL

    def secondary(self, cell: Cell) -> bool:
        """True when *cell* is hidden only to protect another count."""
        return self.hidden(cell) and self.status[cell.id] != "primary"


def safe_write(path: Path, text: str, root: Path) -> None:
    """Write *text* to *path* inside *root*, refusing to follow a symbolic link.

    Raises
    ------
    ValueError
        When *path* or a folder between *root* and it is a symbolic link (a link already in the
        output folder could point outside it and overwrite another file).
    """
    path = Path(path)
    rel = path.relative_to(root)
    probe = Path(root)
    for part in rel.parts:
        probe = probe / part
        if probe.is_symlink():
            raise ValueError(f"{probe} is a symbolic link; the report does not write through "
                             f"links (remove it or choose another --out folder)")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def suppressed_label(min_cell: int) -> str:
    """The text shown instead of a small count ("<5" for ``min_cell=5``)."""
    return f"<{min_cell}"


def neutralise_csv_cell(value: object) -> object:
    """Prefix a text cell that a spreadsheet would run as a formula with ``'``.

    Only text is changed: numbers (negative ones included) stay numbers.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Apply :func:`neutralise_csv_cell` to every text cell and column name of *frame*."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype | pd.CategoricalDtype):
            # not Series.map: it would turn a column of counts with a blank into floats (471.0)
            out[col] = pd.Series([neutralise_csv_cell(v) for v in out[col].astype(object)],
                                 index=out.index, dtype=object)
    out.columns = [neutralise_csv_cell(str(c)) for c in out.columns]
    return out


_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


class Redactor:
    """Remove identifiers (patient and session codes) from text.

    Identifiers made of letters, digits, ``_`` and ``-`` are replaced where they stand as a
    whole token; others (with spaces or punctuation) are replaced wherever they occur. Purely
    numeric codes shorter than four digits cannot be told apart from other numbers in a sentence,
    so they are only caught where the caller knows a value is an identifier (:meth:`value`).

    Parameters
    ----------
    identifiers : iterable of str
        The codes to hide.
    replacement : str
        What is shown instead.
    """

    def __init__(self, identifiers: Iterable[object], replacement: str = "[id]") -> None:
        self.replacement = replacement
        ids = {str(i).strip() for i in identifiers if i is not None and str(i).strip()
               and str(i).strip().lower() not in {"nan", "none", "<na>"}}
        self._ids = ids
        self._tokens = {i for i in ids if _TOKEN.fullmatch(i)
                        and not (i.isdigit() and len(i) < 4)}
        others = sorted((i for i in ids if not _TOKEN.fullmatch(i)), key=len, reverse=True)
        self._others = re.compile("|".join(re.escape(o) for o in others)) if others else None

    def __contains__(self, value: object) -> bool:
        return str(value).strip() in self._ids

    def text(self, text: str) -> str:
        """*text* with every identifier replaced."""
        if not isinstance(text, str) or not text:
            return text
        if self._others is not None:
            text = self._others.sub(self.replacement, text)
        if self._tokens:
            text = _TOKEN.sub(lambda m: self.replacement if m.group(0) in self._tokens
                              else m.group(0), text)
        return text

    def value(self, value: object) -> object:
        """*value* itself unless it is an identifier; text is passed through :meth:`text`."""
        if isinstance(value, str):
            return self.replacement if value.strip() in self._ids else self.text(value)
        return value

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Every text cell of *frame* passed through :meth:`value`."""
        out = frame.copy()
        for col in out.columns:
            if out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype | pd.CategoricalDtype):
                out[col] = out[col].astype(object).map(self.value)
        return out
