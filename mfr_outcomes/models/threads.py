"""BLAS threads for the engines: one thread on small blocks, scoped to a fit and restored after.

The engines' linear algebra runs on small blocks (per-group q×q, p×p, a few hundred columns at
most). Multi-threaded BLAS on blocks that size only synchronises: on a machine where another job
holds a core, a 2,000-patient fit took 0.19 s with NumPy's default two threads against 0.04 s
with one. :func:`blas_threads` limits BLAS to one thread for the duration of a block of code and
restores the previous setting after; it lets BLAS use its threads only when the largest dense
matrix the code will factorise or multiply is large enough to gain (dimension above
:data:`THREADED_DIM`). Scopes nest: an inner scope inside an outer one-thread scope costs
nothing (power simulations open one scope around thousands of fits).
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["THREADED_DIM", "blas_threads", "current_limit"]

#: dense blocks of a dimension above this gain from BLAS threads; below it they only wait
THREADED_DIM = 1000

_state = threading.local()
_controller: list[Any] = []  # the cached ThreadpoolController (built on first use)


def _get_controller():
    # threadpoolctl scans the loaded libraries when a controller is built (~0.3 ms); a cached
    # controller limits in ~10 µs. Built lazily: by the first fit NumPy's and SciPy's BLAS are
    # loaded.
    if not _controller:
        from threadpoolctl import ThreadpoolController

        _controller.append(ThreadpoolController())
    return _controller[0]


def _blas_libs() -> list:
    """The BLAS libraries' own controllers: setting their thread counts directly costs a few µs
    against ~20 µs for ``ThreadpoolController.limit`` (which builds a new controller each time)."""
    if len(_controller) < 2:
        _controller.append([lc for lc in _get_controller().lib_controllers
                            if lc.user_api == "blas"])
    return _controller[1]


def current_limit() -> int | None:
    """1 inside a one-thread scope of this thread, else None (BLAS's own setting)."""
    return getattr(_state, "limit", None)


class _Scope:
    """The context manager :func:`blas_threads` returns (a class: a fit opens a dozen scopes,
    and a generator-based context manager costs a few µs more each)."""

    __slots__ = ("_dim", "_threaded_dim", "_libs", "_before")

    def __init__(self, dim: int, threaded_dim: int):
        self._dim = dim
        self._threaded_dim = threaded_dim
        self._libs: list | None = None
        self._before: list[int] = []

    def __enter__(self) -> int | None:
        limit = getattr(_state, "limit", None)
        if self._dim > self._threaded_dim or limit == 1:
            # large blocks keep BLAS's threads; an enclosing one-thread scope already holds
            return limit
        libs = self._libs = _blas_libs()
        before = self._before = [lib.get_num_threads() for lib in libs]
        for lib, k in zip(libs, before):
            if k != 1:
                lib.set_num_threads(1)
        _state.limit = 1
        return 1

    def __exit__(self, *exc: object) -> bool:
        libs = self._libs
        if libs is not None:
            self._libs = None
            _state.limit = None
            for lib, k in zip(libs, self._before):
                if k != 1:
                    lib.set_num_threads(k)
        return False


def blas_threads(dim: int = 0, *, threaded_dim: int = THREADED_DIM) -> _Scope:
    """Run the enclosed code with one BLAS thread unless its dense blocks are large.

    Parameters
    ----------
    dim : int
        The dimension of the largest dense matrix the enclosed code factorises or multiplies
        (0 when all blocks are small). Above *threaded_dim* BLAS keeps its own thread count.
    threaded_dim : int
        The dimension from which threads gain (default :data:`THREADED_DIM`).

    Returns
    -------
    context manager
        Entering it gives 1 when BLAS runs on one thread in the scope, None when left alone.

    Notes
    -----
    Use as ``with blas_threads(): ...``; inside, :func:`current_limit` is 1 and NumPy's matrix
    products run on one thread; after the block BLAS has its previous thread count again
    (``tests/test_startup.py`` and the engines' tests exercise it).
    """
    return _Scope(dim, threaded_dim)


def blas_limits(spec):
    """One BLAS thread for a model's small problems (the random-effects dimension of *spec*, a
    ModelSpec, up to 1,500): threads only add overhead on matrices this size, and on a busy
    machine they cost 100×."""
    q = sum(b.q * b.n_levels for b in spec.blocks)
    return blas_threads(q, threaded_dim=1500)
