"""TextGenSHAP-style reranking: candidate answers by how much the documents support them.

Each candidate is explained with the "logprob" value at the document level; its
support is the total effect v(full) - v(empty), i.e. how much the documents raise
its log-probability over the question alone. The best-supported answer ranks first,
and the documents are ranked by their attribution for that answer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

from longshap.hierarchy.request import ExplainRequest, RequestError, check_candidates

if TYPE_CHECKING:
    from longshap.hierarchy.explainer import Explainer


@dataclass(frozen=True)
class RankedAnswer:
    answer: str
    total_effect: float
    full_value: float
    empty_value: float


@dataclass(frozen=True)
class RankedDocument:
    index: int
    title: str
    value: float
    stderr: float


@dataclass(frozen=True)
class Reranking:
    answers: list[RankedAnswer]
    """Best supported first."""
    documents: list[RankedDocument]
    """By attribution to the best-supported answer, highest first."""
    stats: dict


def rerank_request(candidates: Sequence[str], **options) -> tuple[ExplainRequest, list[str]]:
    """Check a rerank request with no model: a QA prompt plus candidate answers."""
    candidates = check_candidates(candidates)
    request = ExplainRequest.build(**options, levels=["document"], value="logprob")
    if request.classification:
        raise RequestError("prompt", "reranking needs a QA prompt (question and documents)")
    return request, candidates


def rerank(explainer: Explainer, request: ExplainRequest, candidates: Sequence[str], should_stop: Callable[[], bool] | None = None) -> Reranking:
    """Explain every candidate on the document level and rank answers, then documents."""
    results = [explainer.explain(replace(request, target=candidate.strip()), should_stop=should_stop) for candidate in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -results[i].total_effect)
    best = results[order[0]]
    documents = sorted(best.level("document").features, key=lambda f: -f.value)
    return Reranking(
        answers=[RankedAnswer(candidates[i], results[i].total_effect, results[i].full_value, results[i].empty_value) for i in order],
        documents=[RankedDocument(f.doc, f.title, f.value, f.stderr) for f in documents],
        stats={name: sum(r.stats.get(name, 0) for r in results) for name in results[0].stats},
    )
