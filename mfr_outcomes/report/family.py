"""Suppression across the reports of a study: one decision over the all-sites report and every
site's report, of which each report publishes its share.

The all-sites report and each site's report of one study (same period, same ``min_cell``)
are read side by side by anyone who has them all: for every table, row and column they share,
the all-sites count is the sum of the sites' counts. A count a site's report hides must not
come back as the all-sites count minus the other sites' counts, and a count the all-sites
report hides must not come back as the sum of the sites' counts; nor may the labels close
what the sums leave open (three sites showing "<5" under an all-sites 12 are each 4).

Every report of a study with sites (``min_cell`` above 1) builds every scope: its own, the
all-sites one and every site's with a session in the period (the others' counts only, without
figures), and decides them together:

1. the all-sites ledger, alone (primary and complementary suppression within the report);
2. each site's ledger, its complements first sought among counts another site hides (two
   sites hiding the same count leave "all sites = sum of sites" open) and never a count the
   all-sites report gives away (:func:`given_away`);
3. **pairing**: in every equation "all sites = sum of sites" with exactly one hidden non-zero
   member (the all-sites count included), the smallest published non-zero *site* member is
   hidden too, and its report protects it, until no equation has exactly one hidden member;
4. **the joint check**: the ledgers are combined, with those equations, into one linear
   programme; each hidden count tied to an equation across reports is solved for as an
   attacker holding every report would, and complements are hidden until each keeps two or
   more feasible values: site counts first (never one given away); for a count that stays
   pinned with every such site count hidden, a set of published counts of any report whose
   hiding frees it, found by the linear programme and pruned, the all-sites report's counts
   last (:meth:`Ledger.recheck` with ``widen``). Each report then protects what it was given
   to hide; steps 3 and 4 repeat until nothing more is hidden.

So the all-sites report hides a count only where no site count can protect one (on the
shipped study 3 counts more than deciding alone; its charts keep their other points), and the
sites take the rest of the extra suppression.

With ``all_sites_alone`` the all-sites ledger is decided alone and fixed (step 4 never hides
its counts): the rule for an all-sites report published without the sites' reports. The
all-sites report then builds no other scope, and a site's report declares in a caution the
counts an attacker holding every report could still pin.

No count is hidden in advance because the same count is small in another site ("seeding"):
pairing and the joint check hide what that would protect, and seeding hid about a quarter more
of a site report's counts on the shipped study (328 against 260 of 1,105 over the four
reports) and cost a third more time, with the same counts left unprotected.

Every step is deterministic and sees only the counts of the whole study, so every report
reaches the same decision for every scope, and publishes its own share of it.
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


def decide_family(scopes: Sequence[Scope], *, all_sites_alone: bool = False) -> None:
    """Decide every scope's ledger (see the module docstring).

    ``scopes[0]`` is the all-sites scope (:data:`ALL_SITES`), the others its sites, in the
    same order in every report of the study. On return every ledger is decided, and a hidden
    count that could not be protected across reports is listed in its scope's ``unprotected``.
    With *all_sites_alone* the all-sites ledger is decided alone and never changed after (the
    rule for an all-sites report published without site reports: a site's report of the same
    study would then be protected only against what that all-sites report publishes).
    """
    top = scopes[0].ledger
    top.decide()
    sums = cross_sums(scopes)
    if not sums:
        for s in scopes[1:]:
            s.ledger.decide()
        return
    index = [_index(s) for s in scopes]
    keys = [{cid: key for key, cid in ix.items()} for ix in index]
    _mark_given_away(scopes, sums)
    for n in range(1, len(scopes)):
        _prefer(scopes, index, keys, n)
        scopes[n].ledger.decide()
    _log.debug("each scope alone: %s", _hidden(scopes))
    for rnd in range(1, 10_000):
        _pair_to_fixed_point(scopes, sums, index, keys)
        _log.debug("round %d, after pairing: %s", rnd, _hidden(scopes))
        if not _joint_check(scopes, sums, index, keys, all_sites_alone):
            break
        _log.debug("round %d, after the joint check: %s", rnd, _hidden(scopes))
        _mark_given_away(scopes, sums)
    for s in scopes:
        # a count found pinned within its report in an early round may be free since
        own = [i for i in s.ledger.unprotected if s.ledger.pinned(i)]
        s.ledger.unprotected = sorted(set(own) | set(s.unprotected))


def _mark_given_away(scopes: Sequence[Scope], sums: list) -> None:
    """Each site's counts that the all-sites report gives away (as it stands now): never
    complements, except as a last resort within the site's report."""
    for n in range(1, len(scopes)):
        scopes[n].ledger.avoid = given_away(scopes, sums, n)
        scopes[n].ledger.last_resort = set(scopes[n].ledger.avoid)


def _pair_to_fixed_point(scopes: Sequence[Scope], sums: list, index: list, keys: list) -> None:
    """Pairing, and each site's complements, until no equation across reports has exactly one
    hidden non-zero member that a site count could pair."""
    while True:
        new = _pair(scopes, sums)
        if not new:
            return
        for n, ids in sorted(new.items()):
            _prefer(scopes, index, keys, n)
            scopes[n].ledger.protect(sorted(ids), "cross-report")


def _joint_check(scopes: Sequence[Scope], sums: list, index: list, keys: list,
                 all_sites_alone: bool) -> bool:
    """Step 4: every hidden count tied to an equation across reports, solved for as an
    attacker holding every report would; complements from the sites' counts first, then
    (unless *all_sites_alone*) from the all-sites report's for a count no site count frees.
    Each report then protects what it was given to hide. Returns True when a report hid more
    than the joint check found (another round is then needed)."""
    for n in range(1, len(scopes)):
        _prefer(scopes, index, keys, n)
    joint, offsets = Ledger.combine([s.ledger for s in scopes], sums)
    top = range(offsets[0], offsets[0] + len(scopes[0].ledger.values))
    # the all-sites counts are complements of last resort (or never, when it decides alone)
    joint.avoid.update(top)
    first_cross = len(joint.relations) - len(sums)
    # only counts tied to an equation across reports can be pinned by it: the others were
    # checked by their own report, against the same sums
    # (a count its own report could not protect, with every count around it hidden, is left
    # out: no count of another report can free it for a reader of that report alone)
    pinned_within = {offsets[n] + i for n, s in enumerate(scopes) for i in s.ledger.unprotected}
    check, seen = [], set()
    for i in sorted(joint.status):
        if i in seen:
            continue
        cells, rels = joint.component(i)
        seen.update(cells)
        if any(r >= first_cross for r in rels):
            check.extend(c for c in cells if c not in pinned_within)
    joint.recheck(sorted(check))
    _log.debug("joint check, sites' complements: %d hidden, %d stuck", len(joint.status),
               len(joint.unprotected))
    if joint.unprotected and not all_sites_alone:
        # pinned with every site count it reaches hidden (except those the all-sites report
        # gives away): any published count may now be its complement, the all-sites
        # report's last, each one hidden only when the linear programme shows it frees it
        stuck = sorted(joint.unprotected)
        joint.avoid, joint.reluctant, joint.unprotected = set(), set(top), []
        joint.recheck(stuck, widen=True)
        _log.debug("joint check, any complement: %d hidden, %d stuck", len(joint.status),
                   len(joint.unprotected))
    grew = False
    for n, s in enumerate(scopes):
        lo, hi = offsets[n], offsets[n] + len(s.ledger.values)
        mine = sorted(i - lo for i in joint.status if lo <= i < hi)
        new = [i for i in mine if i not in s.ledger.status]
        if new:
            if n:
                _prefer(scopes, index, keys, n)
            # the joint check found every new count free with every report read together,
            # so a reader of this report alone finds it free too: protect() records it, and
            # hides more only if that did not hold (then another round checks the whole)
            s.ledger.protect(new, "cross-report")
            grew |= len(s.ledger.status) > len(mine)
        s.unprotected = sorted(i - lo for i in joint.unprotected if lo <= i < hi)
    return grew


def _hidden(scopes: Sequence[Scope]) -> str:
    return ", ".join(f"{s.name} {len(s.ledger.status)}/{len(s.ledger.values)}" for s in scopes)


def _prefer(scopes: Sequence[Scope], index: list, keys: list, n: int) -> None:
    """Site *n*'s complements are first sought among its counts hidden in another site's
    report (two sites hiding the same count leave "all sites = sum of sites" open)."""
    elsewhere = {keys[m][i] for m, s in enumerate(scopes) if m not in (0, n)
                 for i in (*s.ledger.status, *s.ledger.forced()) if i in keys[m]}
    scopes[n].ledger.prefer = {cid for key, cid in index[n].items() if key in elsewhere}
