"""Shapley-style attribution estimators; importing this package registers all of them."""
from longshap.hierarchy.estimators import auto, banzhaf, banzhaf_ls, exact, kadd, kernel, leverage, loo, odd, permutation, proxy, regression_adjusted, select  # noqa: F401  (registration)
from longshap.hierarchy.estimators.base import ESTIMATORS, Estimate, Progress, default_budget, estimate, get_estimator

__all__ = ["ESTIMATORS", "Estimate", "Progress", "default_budget", "estimate", "get_estimator"]
