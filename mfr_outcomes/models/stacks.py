"""Batched small-matrix algebra on stacks whose last axis runs over groups (patients, levels):
``A[i, j]`` is the vector over groups. Shared by the fast and sparse engines."""
from __future__ import annotations

import numpy as np

__all__ = ["chol", "fsolve", "bsolve"]


def chol(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of a stack A (k, k, G) (NaN where a matrix is not positive definite)."""
    k = A.shape[0]
    L = np.zeros_like(A)
    for j in range(k):
        d = A[j, j] - sum(L[j, m] ** 2 for m in range(j)) if j else A[j, j].copy()
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            s = A[i, j] - sum(L[i, m] * L[j, m] for m in range(j)) if j else A[i, j]
            L[i, j] = s / L[j, j]
    return L


def fsolve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve L X = B for lower-triangular stacks; B is (k, G) or (k, m, G)."""
    k = L.shape[0]
    X = np.empty_like(B)
    for i in range(k):
        s = B[i].copy()
        for m in range(i):
            s -= L[i, m] * X[m]
        X[i] = s / L[i, i]
    return X


def bsolve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve Lᵀ X = B for lower-triangular stacks L; B is (k, G) or (k, m, G)."""
    k = L.shape[0]
    X = np.empty_like(B)
    for i in reversed(range(k)):
        s = B[i].copy()
        for m in range(i + 1, k):
            s -= L[m, i] * X[m]
        X[i] = s / L[i, i]
    return X
