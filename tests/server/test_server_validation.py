"""Every bad request gets the right status and a message naming its field, and the server keeps serving."""
from __future__ import annotations

import math

import grpc
import pytest

from longshap.proto.wire import pb
from serving import LIMITS, qa_request, quick_request

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _qa(**fields) -> pb.ExplainRequest:
    return qa_request(**fields)


def _classification(text: str = "a charming journey", labels=("negative", "positive"), **fields) -> pb.ExplainRequest:
    return pb.ExplainRequest(classification=pb.ClassificationPrompt(text=text, labels=list(labels)), **fields)


def _prompt(question: str = "What is the capital of France?", texts=("Paris is in France.", "Berlin is in Germany.")) -> pb.QAPrompt:
    return pb.QAPrompt(question=question, documents=[pb.Document(title=f"t{i}", text=t) for i, t in enumerate(texts)])


def _rerank(**fields) -> pb.RerankRequest:
    fields.setdefault("prompt", _prompt())
    fields.setdefault("candidates", ["Paris", "Berlin"])
    return pb.RerankRequest(**fields)


BAD_EXPLAIN = {
    "no prompt": (pb.ExplainRequest(budget=5), INVALID, "prompt"),
    "empty question": (pb.ExplainRequest(qa=_prompt(question="")), INVALID, "qa.question"),
    "blank question": (pb.ExplainRequest(qa=_prompt(question=" \n\t")), INVALID, "qa.question"),
    "no documents": (pb.ExplainRequest(qa=_prompt(texts=())), INVALID, "qa.documents"),
    "empty document": (pb.ExplainRequest(qa=_prompt(texts=("Paris is in France.", ""))), INVALID, "qa.documents[1].text"),
    "blank document": (pb.ExplainRequest(qa=_prompt(texts=("  ",))), INVALID, "qa.documents[0].text"),
    "too many documents": (pb.ExplainRequest(qa=_prompt(texts=["Paris."] * (LIMITS.max_documents + 1))), INVALID, "qa.documents"),
    "oversize documents": (pb.ExplainRequest(qa=_prompt(texts=["word " * 600, "word " * 600])), INVALID, "qa:"),
    "oversize question": (pb.ExplainRequest(qa=_prompt(question="why " * 1300)), INVALID, "qa.question"),
    "oversize classification text": (_classification(text="good " * 1100), INVALID, "classification:"),
    "NaN threshold": (_qa(thresholds={"document": math.nan}), INVALID, "thresholds[document]"),
    "negative threshold": (_qa(thresholds={"sentence": -0.1}), INVALID, "thresholds[sentence]"),
    "infinite threshold": (_qa(thresholds={"word": math.inf}), INVALID, "thresholds[word]"),
    "threshold for an unknown level": (_qa(thresholds={"paragraph": 0.1}), INVALID, "thresholds[paragraph]"),
    "negative max_expanded": (_qa(max_expanded={"document": -1}), INVALID, "max_expanded[document]"),
    "unknown IG baseline": (_qa(method="integrated_gradients", baseline="mean"), INVALID, "baseline"),
    "gradients of the answers value": (_qa(method="saliency", value="answers"), INVALID, "value"),
    "zero budget": (_qa(budget=0), INVALID, "budget"),
    "negative budget": (_qa(budget=-5), INVALID, "budget"),
    "budget over the limit": (_qa(budget=LIMITS.max_budget + 1), INVALID, "budget"),
    "unknown model": (_qa(model="gpt-17"), NOT_FOUND, "model"),
    "absolute path as model": (_qa(model="/etc/passwd"), INVALID, "model"),
    "relative path as model": (_qa(model="../models/tiny"), INVALID, "model"),
    "home path as model": (_qa(model="~/models"), INVALID, "model"),
    "windows path as model": (_qa(model="C:\\models\\tiny"), INVALID, "model"),
    "dot directory as model": (_qa(model="."), INVALID, "model"),
    "unknown estimator": (_qa(method="monte-carlo"), INVALID, "method"),
    "unknown value function": (_qa(value="accuracy"), INVALID, "value"),
    "label value for QA": (_qa(value="label"), INVALID, "value"),
    "logprob value for classification": (_classification(value="logprob"), INVALID, "value"),
    "unknown mode": (_qa(mode="global"), INVALID, "mode"),
    "unknown level": (_qa(levels=["paragraph"]), INVALID, "levels"),
    "levels out of order": (_qa(levels=["word", "document"]), INVALID, "levels"),
    "duplicate levels": (_qa(levels=["document", "document"]), INVALID, "levels"),
    "blank target": (_qa(target="   "), INVALID, "target"),
    "target not among the labels": (_classification(target="neutral"), INVALID, "target"),
    "negative target_stderr": (_qa(target_stderr=-1.0), INVALID, "target_stderr"),
    "NaN target_stderr": (_qa(target_stderr=math.nan), INVALID, "target_stderr"),
    "zero max_new_tokens": (_qa(max_new_tokens=0), INVALID, "max_new_tokens"),
    "huge max_new_tokens": (_qa(max_new_tokens=100_000), INVALID, "max_new_tokens"),
    "empty classification text": (_classification(text=""), INVALID, "classification.text"),
    "empty labels": (_classification(labels=()), INVALID, "classification.labels"),
    "a single label": (_classification(labels=("positive",)), INVALID, "classification.labels"),
    "duplicate labels": (_classification(labels=("positive", "positive")), INVALID, "classification.labels"),
    "blank label": (_classification(labels=("positive", " ")), INVALID, "classification.labels"),
}

BAD_RERANK = {
    "rerank without prompt": (pb.RerankRequest(candidates=["Paris"]), INVALID, "prompt"),
    "rerank without candidates": (_rerank(candidates=[]), INVALID, "candidates"),
    "rerank with duplicate candidates": (_rerank(candidates=["Paris", "Paris "]), INVALID, "candidates"),
    "rerank with a blank candidate": (_rerank(candidates=["Paris", ""]), INVALID, "candidates"),
    "rerank with too many candidates": (_rerank(candidates=[f"c{i}" for i in range(LIMITS.max_candidates + 1)]), INVALID, "candidates"),
    "rerank with zero budget": (_rerank(budget=0), INVALID, "budget"),
    "rerank with an unknown model": (_rerank(model="nope"), NOT_FOUND, "model"),
    "rerank with a path as model": (_rerank(model="/models/tiny"), INVALID, "model"),
    "rerank with an empty document": (_rerank(prompt=_prompt(texts=("",))), INVALID, "prompt.documents[0].text"),
    "rerank with an unknown estimator": (_rerank(method="nope"), INVALID, "method"),
}


def _assert_still_serving(stub) -> None:
    assert stub.ListModels(pb.ListModelsRequest(), timeout=5).models


@pytest.mark.parametrize("request_, code, field", BAD_EXPLAIN.values(), ids=BAD_EXPLAIN.keys())
def test_bad_explain_requests(stub, request_, code, field):
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.Explain(request_, timeout=30))
    assert failure.value.code() == code
    assert failure.value.details().startswith(field), failure.value.details()
    _assert_still_serving(stub)


@pytest.mark.parametrize("request_, code, field", BAD_RERANK.values(), ids=BAD_RERANK.keys())
def test_bad_rerank_requests(stub, request_, code, field):
    with pytest.raises(grpc.RpcError) as failure:
        stub.Rerank(request_, timeout=30)
    assert failure.value.code() == code
    assert failure.value.details().startswith(field), failure.value.details()
    _assert_still_serving(stub)


def test_the_server_still_explains_after_bad_requests(stub):
    events = list(stub.Explain(quick_request(), timeout=30))
    assert events[-1].HasField("done")
