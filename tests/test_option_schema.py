"""Every request option is declared once (longshap.hierarchy.options): the wire message, its conversion,
the CLI's flags and the client's keywords all match the declaration, and a request survives every path."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from google.protobuf.descriptor import FieldDescriptor

from longshap.client.api import explain_request
from longshap.client.cli import build_parser, common_request
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.options import OPTIONS, Option
from longshap.hierarchy.request import ExplainRequest
from longshap.proto.wire import explain_options, pb
from longshap.server.app import build_parser as serve_parser
from longshap.server.limits import Limits, limits_from_args

MESSAGE = pb.ExplainRequest.DESCRIPTOR
NOT_OPTIONS = ("model", "qa", "classification")
"""ExplainRequest fields that are not engine options: the served model's name and the prompt."""
WIRE_TYPES = {
    bool: {FieldDescriptor.TYPE_BOOL: None},
    float: {FieldDescriptor.TYPE_DOUBLE: None},
    str: {FieldDescriptor.TYPE_STRING: None},
    int: {FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1)},
}
"""Each kind's wire types, and for integers the range each carries."""
QA = {"question": "What is the capital of France?", "documents": [{"title": "Paris", "text": "Paris is the capital of France."}]}
NON_DEFAULT = {
    "target": "Paris",
    "levels": ["document", "word"],
    "thresholds": {"document": 0.25, "word": 0.5},
    "max_expanded": {"document": 2, "token": 0},
    "method": "kernel",
    "budget": 40,
    "seed": 2**40,
    "value": "probability",
    "mode": "local",
    "placeholder": "[removed]",
    "target_stderr": 0.01,
    "max_new_tokens": 7,
    "speculative": True,
    "baseline": "pad",
    "adaptive": True,
    "total_budget": 300,
    "confidence": 0.9,
    "kv_mode": "blend",
    "blend_recompute": 0.5,
    "blend_checks": 7,
    "blend_tolerance": 0.25,
}
"""A value of each option that is not its default."""
ALONGSIDE = {"confidence": {"adaptive": True}, "blend_recompute": {"kv_mode": "blend"}, "blend_checks": {"kv_mode": "blend"},
             "blend_tolerance": {"kv_mode": "blend"}}
"""What an option only matters with."""


def _by_name(option: Option) -> str:
    return option.name


def test_every_option_is_a_field_of_the_wire_message_in_its_order():
    assert [field.name for field in MESSAGE.fields if field.name not in NOT_OPTIONS] == list(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS.values(), ids=_by_name)
def test_the_wire_field_carries_every_value_of_the_option(option):
    field = MESSAGE.fields_by_name[option.name]
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    assert is_map == option.per_level and field.is_repeated == (option.per_level or option.repeated)
    value = field.message_type.fields_by_name["value"] if is_map else field
    if is_map:
        assert field.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
    assert value.type in WIRE_TYPES[option.kind], f"{option.name}: {value.type} does not carry a {option.kind.__name__}"
    wire_range = WIRE_TYPES[option.kind][value.type]
    if wire_range is not None:
        assert option.low is not None and option.high is not None and wire_range[0] <= option.low and option.high <= wire_range[1]
    if not field.is_repeated:
        _unset_is_unambiguous(option, field)


def _unset_is_unambiguous(option: Option, field: FieldDescriptor) -> None:
    """An option without a default needs presence; otherwise the field's zero value must mean the default or be refused."""
    if option.default is None:
        assert field.has_presence, f"{option.name}: without presence 'unset' and a zero value look alike"
        return
    if field.has_presence:
        return
    zero = option.kind()
    if zero != option.default:
        with pytest.raises(RequestError):
            option.check(zero)


def test_the_conversion_gives_every_option_and_the_prompt():
    options = explain_options(explain_request(**QA))
    assert set(options) == {*OPTIONS, "question", "documents", "instruction"}


def test_the_non_default_values_cover_every_option():
    assert list(NON_DEFAULT) == list(OPTIONS)
    for name, value in NON_DEFAULT.items():
        context = ALONGSIDE.get(name, {})
        assert ExplainRequest.build(**QA, **context, **{name: value}) != ExplainRequest.build(**QA, **context), f"{name}={value!r} is the default"


@pytest.mark.parametrize("name", [*OPTIONS, "all"])
def test_client_keywords_to_the_wire_and_back_give_the_engine_request(name):
    options = NON_DEFAULT if name == "all" else {**ALONGSIDE.get(name, {}), name: NON_DEFAULT[name]}
    direct = ExplainRequest.build(**QA, **options)
    assert ExplainRequest.build(**explain_options(explain_request(**QA, **options))) == direct


@pytest.mark.parametrize("prompt", [QA, {"text": "a charming journey", "labels": ["negative", "positive"]}], ids=["qa", "classification"])
def test_defaults_and_one_number_for_every_level_survive_the_wire(prompt):
    for options in ({}, {"thresholds": 0.3, "max_expanded": 2}):
        assert ExplainRequest.build(**explain_options(explain_request(**prompt, **options))) == ExplainRequest.build(**prompt, **options)


def _flag(option: Option, value: object) -> list[str]:
    if option.kind is bool:
        return [option.cli_flag] if value else []
    if isinstance(value, dict):
        return [option.cli_flag, ",".join(f"{level}={number}" for level, number in value.items())]
    return [option.cli_flag, ",".join(value) if isinstance(value, list) else str(value)]


@pytest.mark.parametrize("command", ["explain", "classify"])
def test_every_option_is_a_flag_that_reaches_the_engine(command):
    prompt = ["--question", QA["question"], "--doc", "unread.txt"] if command == "explain" else ["--text", "x", "--label", "a,b"]
    flags = [word for name, value in NON_DEFAULT.items() for word in _flag(OPTIONS[name], value)]
    args = build_parser().parse_args([command, *prompt, *flags])
    assert {name: getattr(args, name) for name in OPTIONS} == NON_DEFAULT
    message = explain_request(**QA, **common_request(args))
    assert ExplainRequest.build(**explain_options(message)) == ExplainRequest.build(**QA, **NON_DEFAULT)


def test_a_flag_left_out_keeps_the_engine_default():
    args = build_parser().parse_args(["explain", "--question", "q"])
    assert all(getattr(args, name) in (None, False) for name in OPTIONS)
    assert ExplainRequest.build(**explain_options(explain_request(**QA, **common_request(args)))) == ExplainRequest.build(**QA)


def test_the_client_refuses_an_unknown_option_by_name():
    with pytest.raises(TypeError, match="'budgets'"):
        explain_request(**QA, budgets=3)


def test_the_schema_and_the_client_are_light():
    """The declarations need no model: importing them loads neither torch nor the engine's registries."""
    code = (
        "import sys; import longshap.client.api, longshap.hierarchy.options; "
        "heavy = sorted(m for m in ('torch', 'longshap.hierarchy.estimators', 'longshap.hierarchy.values') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_operator_limit_is_a_serve_flag_and_a_field_of_list_models():
    names = [limit.name for limit in dataclasses.fields(Limits)]
    assert sorted(names) == sorted(field.name for field in pb.Limits.DESCRIPTOR.fields)
    assert limits_from_args(serve_parser().parse_args([])) == Limits()
    flags = [word for name in names for word in (f"--{name.replace('_', '-')}", "7")]
    assert limits_from_args(serve_parser().parse_args(flags)) == Limits(**{name: 7 for name in names})
