"""Every model fitted to one paired sample, and the one that reports the smallest error kept.

`leverage`, `regression_adjusted`, `proxy` and `odd` all draw Leverage SHAP's paired strata and
differ only in the model they fit to them, so one sample serves all four at no extra
evaluation. Which model wins depends on the game: `odd` recovers a sparse higher-order game
exactly, the proxies win on smooth saturating ones, plain regression where the pairs are too
few for more terms. Each reports an honest standard error, so the one with the smallest total
reported variance is the one that claims, with calibrated claims, to be closest to the truth.
"""
from __future__ import annotations

from typing import cast

import numpy as np

from longshap.hierarchy.estimators._paired import PairedDesign, PairedSample
from longshap.hierarchy.estimators.base import get_estimator, register

CANDIDATES = ("leverage", "regression_adjusted", "proxy", "odd")


class Fits:
    """The candidates' own states, and what the last fit chose (with every candidate's claimed variance)."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.models = {name: cast(PairedDesign, get_estimator(name)) for name in CANDIDATES}
        self.states = {name: model.prepare(n, np.random.default_rng(rng.integers(2**63))) for name, model in self.models.items()}
        self.chosen = CANDIDATES[0]
        self.claimed: dict[str, float] = {}


@register("select")
class Select(PairedDesign):
    """Fits `leverage`, `regression_adjusted`, `proxy` and `odd` to one shared paired sample; keeps the smallest claimed error.

    The criterion is the sum over players (and outputs) of the reported variance: infinite
    (undetermined) for a candidate that has too few pairs to measure its own error, so a model
    that cannot check itself is never preferred to one that can. Ties go to the simpler model
    (the order of CANDIDATES). The result's `method` names the kept model, and `extras`
    gives every candidate's claimed variance. Choosing by a claimed error selects a little
    towards candidates whose error happened to be underestimated; the standard errors are
    the kept model's own, not widened for that choice.

    Games with outer contexts (Owen subgames) go to `kernel`, as with `leverage`.
    Budget and batches as `leverage`: 2 + 2 * pairs evaluations, at least one pair.
    """

    def prepare(self, n: int, rng: np.random.Generator) -> Fits:
        return Fits(n, rng)

    def fit(self, data: PairedSample, state: object) -> tuple[np.ndarray, np.ndarray]:
        assert isinstance(state, Fits)
        best: tuple[float, str, np.ndarray, np.ndarray] | None = None
        state.claimed = {}
        for name, model in state.models.items():
            values, stderr = model.fit(data, state.states[name])
            claimed = float(np.sum(np.square(stderr)))
            state.claimed[name] = claimed
            if best is None or claimed < best[0]:
                best = (claimed, name, values, stderr)
        assert best is not None
        state.chosen = best[1]
        return best[2], best[3]

    def ran(self, state: object) -> str:
        assert isinstance(state, Fits)
        return state.chosen

    def extras(self, data: PairedSample, state: object) -> dict:
        assert isinstance(state, Fits)
        return {"chosen": state.chosen, "claimed_variance": dict(state.claimed), **state.models[state.chosen].extras(data, state.states[state.chosen])}
