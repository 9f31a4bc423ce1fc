"""TextGenSHAP-style reranking: candidate answers by how much the documents support them.

Each candidate is explained with the "logprob" value at the document level; its
support is the total effect v(full) - v(empty), i.e. how much the documents raise
its log-probability over the question alone. The best-supported answer ranks first,
and the documents are ranked by their attribution for that answer.
"""
from __future__ import annotations

from typing import Callable

from longshap.proto.wire import pb, summary_proto
from longshap.hierarchy import Explainer


def rerank(explainer: Explainer, arguments: dict, candidates: list[str], should_stop: Callable[[], bool] | None = None) -> pb.RerankResponse:
    """Explain every candidate on the document level and rank answers, then documents."""
    results = [
        explainer.explain(**arguments, target=candidate, levels=["document"], value="logprob", should_stop=should_stop)
        for candidate in candidates
    ]
    order = sorted(range(len(candidates)), key=lambda i: -results[i].total_effect)
    best = results[order[0]]
    documents = sorted(best.level("document").features, key=lambda f: -f.value)
    stats = {name: sum(r.stats.get(name, 0) for r in results) for name in results[0].stats}
    return pb.RerankResponse(
        answers=[
            pb.RankedAnswer(answer=candidates[i], total_effect=results[i].total_effect, full_value=results[i].full_value, empty_value=results[i].empty_value)
            for i in order
        ],
        documents=[pb.RankedDocument(index=f.doc, title=f.title, value=f.value, stderr=f.stderr) for f in documents],
        summary=summary_proto(stats),
    )
