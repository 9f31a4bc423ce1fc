"""The committed gRPC modules match proto/longshap/v1/*.proto, and the wire conversions keep 'unset' apart from defaults."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from longshap.proto import explainer_pb2, explainer_pb2_grpc
from longshap.proto.wire import explain_options, pb

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "proto"))
import build as proto_build  # noqa: E402  (proto/build.py, the generator)


def test_committed_messages_match_the_proto_source(tmp_path):
    """Fails when the .proto was edited without running `python proto/build.py`."""
    pytest.importorskip("grpc_tools")
    descriptor_set = tmp_path / "set.pb"
    proto_build.compile_protos(tmp_path, (f"--descriptor_set_out={descriptor_set}",))
    fresh = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file}
    committed = descriptor_pb2.FileDescriptorProto.FromString(explainer_pb2.DESCRIPTOR.serialized_pb)
    assert _without_json_names(committed) == _without_json_names(fresh[committed.name]), "proto/explainer_pb2.py is stale: run `python proto/build.py`"


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc adds json_name to descriptor sets but not to the descriptors it embeds in generated code."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    for message in copy.message_type:
        for nested in [message, *message.nested_type]:
            for field in nested.field:
                field.ClearField("json_name")
    return copy


def test_committed_stubs_cover_every_rpc():
    methods = {m.name for m in explainer_pb2.DESCRIPTOR.services_by_name["Explainer"].methods}
    servicer = explainer_pb2_grpc.ExplainerServicer
    assert methods == {name for name in vars(servicer) if not name.startswith("_")}


def test_generated_code_imports_from_the_namespace():
    stubs = Path(explainer_pb2_grpc.__file__).read_text()
    assert "from longshap.proto import explainer_pb2" in stubs
    assert "from longshap.v1" not in stubs


def test_unset_fields_become_none_so_engine_defaults_apply():
    options = explain_options(pb.ExplainRequest(qa=pb.QAPrompt(question="q", documents=[pb.Document(text="t")])))
    assert options["target"] is options["budget"] is options["method"] is options["mode"] is options["levels"] is None
    assert options["max_new_tokens"] is options["thresholds"] is options["instruction"] is None
    assert options["documents"] == [{"title": "", "text": "t"}] and options["seed"] == 0 and options["speculative"] is False


def test_set_fields_are_passed_through():
    request = pb.ExplainRequest(
        classification=pb.ClassificationPrompt(text="fine", labels=["a", "b"], instruction="Pick: {labels}"),
        budget=7, target="a", thresholds={"word": 0.2}, max_expanded={"word": 3}, mode="local", speculative=True,
    )
    options = explain_options(request)
    assert options["text"] == "fine" and options["labels"] == ["a", "b"] and options["instruction"] == "Pick: {labels}"
    assert (options["budget"], options["target"], options["mode"], options["speculative"]) == (7, "a", "local", True)
    assert options["thresholds"] == {"word": 0.2} and options["max_expanded"] == {"word": 3}
