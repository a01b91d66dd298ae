"""One suppression pattern for every report of a study.

The all-sites report and each site's report of one study (same period, same ``min_cell``)
are read side by side by anyone who has them all: for every table, row and column they share,
the all-sites count is the sum of the sites' counts. So each report decides which counts to
hide for the whole family, in the same way, from the counts of every scope (built without
figures), and publishes its own share of that one decision:

1. each scope's ledger decides alone (primary and complementary suppression);
2. **pairing**: in every equation "all sites = sum of sites" (and "all sites = this site", for
   a row only one site has, or a count of the source that every report repeats), a count
   hidden in one member alone is recovered by subtraction, so the smallest published non-zero
   other member is hidden too (ties: a site's count before the all-sites one, then scope and
   table order), until no equation has exactly one hidden member;
3. **the joint check**: the ledgers are combined, with those equations, into one linear
   programme; each hidden count tied to an equation across reports is solved for as an
   attacker holding every report would, and complements are hidden (as within a report) until
   each keeps two or more feasible values.

Every step is deterministic and sees only the counts of the whole family, so every report of
the study reaches the same decision.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mfr_outcomes.report.blocks import Table
from mfr_outcomes.report.disclosure import Cell, Ledger

__all__ = ["ALL_SITES", "Scope", "cross_sums", "decide_family", "row_names"]

#: The name of the all-sites scope (the others are named by their site).
ALL_SITES = "all sites"


@dataclass
class Scope:
    """The counts of one report of the family: its ledger and its tables."""

    name: str
    ledger: Ledger
    tables: dict[str, Table]
    #: hidden counts still pinned across reports after every count around them was hidden
    unprotected: list[int] = field(default_factory=list)


def row_names(table: Table) -> list[str]:
    """The name of each row as a reader matches it across reports (its key columns, or its
    first column)."""
    first = table.keys or tuple(table.frame.columns[:1])
    return [" / ".join(str(table.frame[c].iloc[r]) for c in first)
            for r in range(len(table.frame))]


def _index(scope: Scope) -> dict[tuple[str, str, str], int]:
    out = {}
    for table in scope.tables.values():
        names = row_names(table)
        for (r, col), cell in table.cells.items():
            out[(table.name, names[r], col)] = cell.id
    return out


def cross_sums(scopes: Sequence[Scope]) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Equations across reports, as (scope, cell) pairs: the all-sites count = the sum of the
    sites' counts of the same table, row and column, and = one site's count; each kept only
    when it holds (a reader who assumed a false one would learn nothing)."""
    if len(scopes) < 2 or scopes[0].name != ALL_SITES:
        return []
    index = [_index(s) for s in scopes]

    def value(m: tuple[int, int]) -> float:
        return scopes[m[0]].ledger.values[m[1]]

    out = []
    for key, cid in index[0].items():
        total = (0, cid)
        parts = [(k, index[k][key]) for k in range(1, len(scopes)) if key in index[k]]
        if not parts:
            continue
        if abs(value(total) - sum(value(p) for p in parts)) < 1e-9:
            out.append((total, parts))
        if len(parts) > 1:
            out.extend((total, [p]) for p in parts if value(p) == value(total))
    return out


def _pair(scopes: Sequence[Scope], sums: list) -> dict[int, set[int]]:
    """Step 2: hide one more member of every equation with exactly one hidden member."""
    new: dict[int, set[int]] = {}

    def hidden(m: tuple[int, int]) -> bool:
        return m[1] in scopes[m[0]].ledger.status or m[1] in new.get(m[0], ())

    changed = True
    while changed:
        changed = False
        for total, parts in sums:
            members = [m for m in (total, *parts) if scopes[m[0]].ledger.values[m[1]] > 0]
            shut = [m for m in members if hidden(m)]
            if len(shut) != 1:
                continue
            open_ = [m for m in members if not hidden(m)]
            if not open_:
                continue
            pick = min(open_, key=lambda m: (m[0] == 0, scopes[m[0]].ledger.values[m[1]],
                                             m[0], scopes[m[0]].ledger.rank.get(m[1], ("~",)),
                                             m[1]))
            new.setdefault(pick[0], set()).add(pick[1])
            changed = True
    return new


def decide_family(scopes: Sequence[Scope]) -> None:
    """Decide every scope's ledger as one family (see the module docstring).

    ``scopes[0]`` is the all-sites scope (:data:`ALL_SITES`), the others its sites, in the
    same order in every report of the study. On return each ledger is decided; a hidden count
    that could not be protected across reports is listed in its scope's ``unprotected``.
    """
    sums = cross_sums(scopes)
    if not sums:
        for s in scopes:
            s.ledger.decide()
        return
    index = [_index(s) for s in scopes]
    keys = [{cid: key for key, cid in ix.items()} for ix in index]
    k = scopes[0].ledger.min_cell
    # seed: a count small in one site's report is hidden in every other site's report too
    small = {key for ix, s in zip(index[1:], scopes[1:], strict=True)
             for key, cid in ix.items() if 0 < s.ledger.values[cid] < k}
    for ix, s in zip(index[1:], scopes[1:], strict=True):
        for key in sorted(small & set(ix)):
            if s.ledger.values[ix[key]] > 0:
                s.ledger.hide(_cell(ix[key]), "cross-report")
    for n, s in enumerate(scopes):
        _prefer(scopes, index, keys, n)
        s.ledger.decide()
    while True:  # pairing, and each report's complements, to a fixed point
        new = _pair(scopes, sums)
        if not new:
            break
        for n, ids in sorted(new.items()):
            _prefer(scopes, index, keys, n)
            scopes[n].ledger.protect(sorted(ids), "cross-report")
    for n in range(len(scopes)):
        _prefer(scopes, index, keys, n)
    joint, offsets = Ledger.combine([s.ledger for s in scopes], sums)
    first_cross = len(joint.relations) - len(sums)
    # only counts tied to an equation across reports can be pinned by it: the others were
    # checked by their own report, against the same sums
    check, seen = [], set()
    for i in sorted(joint.status):
        if i in seen:
            continue
        cells, rels = joint.component(i)
        seen.update(cells)
        if any(r >= first_cross for r in rels):
            check.extend(cells)
    # complements are sought first among a site's counts that another site hides too (the
    # per-scope preferences), which leaves the all-sites count open
    joint.recheck(sorted(check))
    for n, s in enumerate(scopes):
        lo, hi = offsets[n], offsets[n] + len(s.ledger.values)
        mine = sorted(i - lo for i in joint.status if lo <= i < hi)
        s.ledger.protect([i for i in mine if i not in s.ledger.status], "cross-report")
        s.unprotected = sorted(i - lo for i in joint.unprotected if lo <= i < hi)


def _prefer(scopes: Sequence[Scope], index: list, keys: list, n: int) -> None:
    """A site's complements are first sought among its counts hidden in another site's
    report (two sites hiding the same count leave "all sites = sum of sites" open); the
    all-sites report has no such preference."""
    if n == 0:
        scopes[n].ledger.prefer = set()
        return
    elsewhere = {keys[m][i] for m, s in enumerate(scopes) if m not in (0, n)
                 for i in (*s.ledger.status, *s.ledger.forced()) if i in keys[m]}
    scopes[n].ledger.prefer = {cid for key, cid in index[n].items() if key in elsewhere}


def _cell(i: int) -> Cell:
    return Cell(i)
