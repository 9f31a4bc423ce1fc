"""Synthetic games with closed-form values, shared by the estimator benchmarks and the unit tests."""
from __future__ import annotations

from itertools import permutations

import numpy as np


class Interaction:
    """v(S) = sum a_i + sum over pairs b_ij + sum over triples c_ijl, all within S.

    phi_i = a_i + sum_j b_ij / 2 + sum_{j<l} c_ijl / 3 in closed form. With c = 0 this is
    the pairwise game, for which antithetic permutations and paired KernelSHAP are exact.
    """

    def __init__(self, n: int, seed: int, cubic: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.a = rng.normal(size=n)
        b = np.triu(rng.normal(size=(n, n)), 1)
        self.b = b + b.T
        c = rng.normal(size=(n, n, n)) * cubic
        i, j, k = np.indices((n, n, n))
        c[(i == j) | (j == k) | (i == k)] = 0.0
        self.c = sum(np.transpose(c, axes) for axes in permutations(range(3)))

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        z = coalitions.astype(float)
        return z @ self.a + np.einsum("mi,ij,mj->m", z, self.b, z) / 2 + np.einsum("mi,ijl,mj,ml->m", z, self.c, z, z, optimize=True) / 6

    def shapley(self) -> np.ndarray:
        return self.a + self.b.sum(axis=1) / 2 + self.c.sum(axis=(1, 2)) / 6

    def banzhaf(self) -> np.ndarray:
        """Each other player is present with probability 1/2, so a pair term counts 1/2, a triple 1/4."""
        return self.a + self.b.sum(axis=1) / 2 + self.c.sum(axis=(1, 2)) / 8

    def loo(self) -> np.ndarray:
        return self.a + self.b.sum(axis=1) + self.c.sum(axis=(1, 2)) / 2
