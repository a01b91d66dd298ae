"""Suppression across the reports of a study: the all-sites report decides alone, and the
sites' reports take the extra suppression.

The all-sites report and each site's report of one study (same period, same ``min_cell``)
are read side by side by anyone who has them all: for every table, row and column they share,
the all-sites count is the sum of the sites' counts. A count a site's report hides must not
come back as the all-sites count minus the other sites' counts, and a count the all-sites
report hides must not come back as the sum of the sites' counts.

**The all-sites report decides alone**, exactly as a report of a study without sites: it never
builds another scope (it costs what one report costs, its charts keep their points), and its
decision is the same whichever report computes it. **A site's report** builds the all-sites
scope and every other site's scope (their counts, without figures) and decides:

1. the all-sites ledger, alone; it is fixed from then on (nothing is ever added to it);
2. each site's ledger (primary and complementary suppression), its complements first sought
   among counts another site hides (two sites hiding the same count leave "all sites = sum of
   sites" open) and never a count the all-sites report gives away (:func:`given_away`);
3. **pairing**: in every equation "all sites = sum of sites" with exactly one hidden non-zero
   member (the all-sites count included), the smallest published non-zero *site* member is
   hidden too (never the all-sites count: it is fixed), and its report protects it, until no
   equation has exactly one hidden member;
4. **the joint check**: the ledgers are combined, with those equations, into one linear
   programme; each hidden count tied to an equation across reports is solved for as an
   attacker holding every report would, and complements (site counts only, never one given
   away) are hidden until each keeps two or more feasible values. A count that stays pinned
   with every count it reaches hidden is reported at once, not given complements in vain.

No count is hidden in advance because the same count is small in another site ("seeding"):
pairing and the joint check hide what that would protect, and seeding hid about a quarter more
of a site report's counts on the shipped study (328 against 260 of 1,105 over the four
reports) and cost a third more time, with the same counts left unprotected.

Every step is deterministic and sees only the counts of the whole study, so every site's
report reaches the same decision for every site, and publishes its own share of it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from mfr_outcomes.report.blocks import Table
from mfr_outcomes.report.disclosure import Ledger

__all__ = ["ALL_SITES", "Scope", "cross_sums", "decide_family", "given_away", "row_names"]

_log = logging.getLogger(__name__)

#: The name of the all-sites scope (the others are named by their site).
ALL_SITES = "all sites"

#: A cell of one scope: (index of the scope, id of the cell in its ledger).
Member = tuple[int, int]


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


def cross_sums(scopes: Sequence[Scope]) -> list[tuple[Member, list[Member]]]:
    """Equations across reports, as (scope, cell) pairs: the all-sites count = the sum of the
    sites' counts of the same table, row and column, and = one site's count; each kept only
    when it holds (a reader who assumed a false one would learn nothing)."""
    if len(scopes) < 2 or scopes[0].name != ALL_SITES:
        return []
    index = [_index(s) for s in scopes]

    def value(m: Member) -> float:
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


def given_away(scopes: Sequence[Scope], sums: Sequence[tuple[Member, list[Member]]],
               n: int) -> set[int]:
    """The cells of site scope *n* that the all-sites report gives away: the all-sites count
    is published (its decision is fixed) and equals this site's count (a row only this site
    has, a row every other site has as 0, a count of the source every report repeats). Such a
    cell is never chosen as a complement: hidden, it would stay pinned and nothing could free
    it. (A small one is hidden in the all-sites report too, being the same small count.)

    So is a count that the site's own sums determine from those (and from its zeros, which
    are never hidden): a site's treatment sessions are the sum of its therapists' sessions, and
    each of its therapists is a row of the all-sites report. Determined means fixed by the
    equations whatever the other counts are: the cell's unit vector lies in the row space of
    the sums over the cells not known (a null-space test, one connected part of the sums at a
    time)."""
    top, led = scopes[0].ledger, scopes[n].ledger
    known = {parts[0][1] for total, parts in sums
             if len(parts) == 1 and parts[0][0] == n and total[1] not in top.status}
    if not known:
        return known
    return known | _determined(led, known | {i for i, v in enumerate(led.values) if v == 0})


def _determined(led: Ledger, known: set[int]) -> set[int]:
    """Cells of *led* whose value the sums fix once the cells *known* are known."""
    import numpy as np
    from scipy.linalg import null_space

    rows = [tuple(dict.fromkeys(j for j in (t, *ps) if j not in known))
            for t, ps in led.relations]
    # connected parts of the unknown cells through the sums (union-find)
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for row in rows:
        for j in row[1:]:
            parent[find(j)] = find(row[0])
        if row:
            find(row[0])
    parts: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        if row:
            parts.setdefault(find(row[0]), []).append(r)
    out: set[int] = set()
    sums = led.matrix()
    for rel_ids in parts.values():
        cells = sorted({j for r in rel_ids for j in rows[r]})
        a = sums[np.asarray(rel_ids)][:, np.asarray(cells)].toarray()
        basis = null_space(a)
        free = np.abs(basis).max(axis=1) if basis.size else np.zeros(len(cells))
        out.update(j for j, f in zip(cells, free, strict=True) if f < 1e-9)
    return out


def _pair(scopes: Sequence[Scope], sums: list) -> dict[int, set[int]]:
    """Step 4: in every equation with exactly one hidden non-zero member, hide one more site
    member (the all-sites count is fixed)."""
    new: dict[int, set[int]] = {}

    def hidden(m: Member) -> bool:
        return m[1] in scopes[m[0]].ledger.status or m[1] in new.get(m[0], ())

    changed = True
    while changed:
        changed = False
        for total, parts in sums:
            members = [m for m in (total, *parts) if scopes[m[0]].ledger.values[m[1]] > 0]
            if sum(hidden(m) for m in members) != 1:
                continue
            open_ = [m for m in members if m[0] != 0 and not hidden(m)
                     and m[1] not in scopes[m[0]].ledger.avoid]
            if not open_:  # the joint check finds it pinned and reports it
                continue
            pick = min(open_, key=lambda m: (scopes[m[0]].ledger.values[m[1]], m[0],
                                             scopes[m[0]].ledger.rank.get(m[1], ("~",)), m[1]))
            new.setdefault(pick[0], set()).add(pick[1])
            changed = True
    return new


def decide_family(scopes: Sequence[Scope]) -> None:
    """Decide every scope's ledger (see the module docstring).

    ``scopes[0]`` is the all-sites scope (:data:`ALL_SITES`), the others its sites, in the
    same order in every report of the study. The all-sites ledger is decided alone; on return
    every ledger is decided, and a hidden count that could not be protected across reports is
    listed in its scope's ``unprotected`` (the all-sites scope's too: a count of the all-sites
    report that the sites' counts would give away).
    """
    scopes[0].ledger.decide()
    sums = cross_sums(scopes)
    if not sums:
        for s in scopes[1:]:
            s.ledger.decide()
        return
    index = [_index(s) for s in scopes]
    keys = [{cid: key for key, cid in ix.items()} for ix in index]
    for n in range(1, len(scopes)):
        scopes[n].ledger.avoid = given_away(scopes, sums, n)
        scopes[n].ledger.last_resort = set(scopes[n].ledger.avoid)
    for n in range(1, len(scopes)):
        _prefer(scopes, index, keys, n)
        scopes[n].ledger.decide()
    _log.debug("each scope alone: %s", _hidden(scopes))
    while True:  # pairing, and each site's complements, to a fixed point
        new = _pair(scopes, sums)
        if not new:
            break
        for n, ids in sorted(new.items()):
            _prefer(scopes, index, keys, n)
            scopes[n].ledger.protect(sorted(ids), "cross-report")
    _log.debug("after pairing: %s", _hidden(scopes))
    for n in range(1, len(scopes)):
        _prefer(scopes, index, keys, n)
    joint, offsets = Ledger.combine([s.ledger for s in scopes], sums)
    # the all-sites decision is fixed: none of its counts is ever a complement
    joint.avoid.update(range(offsets[0], offsets[0] + len(scopes[0].ledger.values)))
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
    joint.recheck(sorted(check))
    for n, s in enumerate(scopes):
        lo, hi = offsets[n], offsets[n] + len(s.ledger.values)
        if n:
            mine = sorted(i - lo for i in joint.status if lo <= i < hi)
            s.ledger.protect([i for i in mine if i not in s.ledger.status], "cross-report")
        s.unprotected = sorted(i - lo for i in joint.unprotected if lo <= i < hi)
        s.ledger.unprotected = sorted(set(s.ledger.unprotected) | set(s.unprotected))
    _log.debug("after the joint check: %s", _hidden(scopes))


def _hidden(scopes: Sequence[Scope]) -> str:
    return ", ".join(f"{s.name} {len(s.ledger.status)}/{len(s.ledger.values)}" for s in scopes)


def _prefer(scopes: Sequence[Scope], index: list, keys: list, n: int) -> None:
    """Site *n*'s complements are first sought among its counts hidden in another site's
    report (two sites hiding the same count leave "all sites = sum of sites" open)."""
    elsewhere = {keys[m][i] for m, s in enumerate(scopes) if m not in (0, n)
                 for i in (*s.ledger.status, *s.ledger.forced()) if i in keys[m]}
    scopes[n].ledger.prefer = {cid for key, cid in index[n].items() if key in elsewhere}
