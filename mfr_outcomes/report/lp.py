"""The linear programmes of the disclosure check (:class:`~mfr_outcomes.report.disclosure.Ledger`).

Deciding one report solves thousands of small programmes, most of them over the same
equations with another objective (the least and the greatest value of each hidden count of one
part of the sums). :class:`Programme` keeps the last system as a HiGHS model and changes only
its objective, so HiGHS starts from the last basis; through ``scipy.optimize.linprog`` every
solve builds and checks the model anew, which took longer than solving it (4.9 against 1.7 ms
a programme over the 3,549 of a quarter's site report of the shipped study).
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["Programme"]


class Programme:
    """The least or greatest value of one unknown under equations ``A x = b`` and bounds.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> lp = Programme()
    >>> a = sparse.csr_array(np.array([[1.0, 1.0]]))       # x0 + x1 = 12
    >>> bounds = [(1, 4), (5, None)]
    >>> lp.solve("key", a, np.array([12.0]), bounds, 0, +1)[2]
    1.0
    >>> lp.solve("key", a, np.array([12.0]), bounds, 0, -1)[2]   # same model, new objective
    4.0
    >>> lp.solve("key", a, np.array([12.0]), bounds, 1, -1)[0]
    'optimal'
    """

    def __init__(self) -> None:
        self._key: Hashable = None
        self._model = None
        self._col: int | None = None
        self._bounds: list[tuple[float, float | None]] = []

    def solve(self, key: Hashable, a, b: np.ndarray,
              bounds: Sequence[tuple[float, float | None]], col: int, sense: float
              ) -> tuple[str, np.ndarray | None, float]:
        """Minimise (``sense`` +1) or maximise (-1) unknown *col*.

        *key* names the system (*a*, *b*): the same key reuses the model kept from the last
        call, with only the bounds that differ changed (the model keeps *bounds* itself, not a
        copy: pass a new list to change them, never the same list changed). Returns ``(status, x, value)``: ``("optimal", solution, value)``,
        ``("unbounded", None, ±inf)``, or ``("failed", None, nan)`` (no solution found; the true
        counts are always feasible, so this is a numerical failure and callers stay on the
        safe side)."""
        import highspy

        h = self._model
        if key != self._key or h is None:
            h = self._model = self._build(a, b, bounds)
            self._key, self._col, self._bounds = key, None, bounds
        elif bounds is not self._bounds and bounds != self._bounds:
            changed = [j for j, (new, old) in enumerate(zip(bounds, self._bounds, strict=True))
                       if new != old]
            lo = np.array([bounds[j][0] for j in changed], dtype=float)
            hi = np.array([highspy.kHighsInf if bounds[j][1] is None else bounds[j][1]
                           for j in changed], dtype=float)
            h.changeColsBounds(len(changed), np.asarray(changed, dtype=np.int32), lo, hi)
            self._bounds = bounds
        if self._col is not None:
            h.changeColCost(self._col, 0.0)
        h.changeColCost(col, float(sense))
        self._col = col
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kOptimal:
            x = np.asarray(h.getSolution().col_value, dtype=float)
            return "optimal", x, float(x[col])
        if status in (highspy.HighsModelStatus.kUnbounded,
                      highspy.HighsModelStatus.kUnboundedOrInfeasible):
            return "unbounded", None, -sense * math.inf
        return "failed", None, math.nan

    @staticmethod
    def _build(a, b: np.ndarray, bounds: Sequence[tuple[float, float | None]]):
        import highspy
        from scipy import sparse

        # the core class: highspy.Highs sets a callback in its constructor, and HiGHS prints
        # its banner on the first call that is not an option, before output_flag can be set
        h = highspy._Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("parallel", "off")
        a = sparse.csc_array(a)
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
        lp.col_cost_ = np.zeros(a.shape[1])
        lp.col_lower_ = np.array([lo for lo, _ in bounds], dtype=float)
        lp.col_upper_ = np.array([highspy.kHighsInf if hi is None else hi for _, hi in bounds],
                                 dtype=float)
        lp.row_lower_ = lp.row_upper_ = np.asarray(b, dtype=float)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr
        lp.a_matrix_.index_ = a.indices
        lp.a_matrix_.value_ = a.data
        h.passModel(lp)
        return h
