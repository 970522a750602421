"""Structured-output schemas are held to their size and to the work of compiling them (pure, ms)."""

from __future__ import annotations

import pytest

from serve_app.api.budgets import check_json_schema, pattern_work
from serve_app.app_config import ServingSection
from serve_app.errors import InvalidRequestError

S = ServingSection()


@pytest.mark.parametrize("pattern, work", [
    ("a{1000}", 1000), ("\\d{4}-\\d{2}-\\d{2}", 10), ("(ab{3}){2}", 8), ("[a-z]+", 16), (".{4}", 64),
    ("((a{64}){64}){64}", 64**3), ("a|bc", 3), ("(?:ab){2,5}", 10), ("a{3,}", 3), ("\\p{L}{3}", 48),
    ("[0-9a-f]{8}", 8), ("[^\"]{2}", 32), ("[]a]{2}", 2), ("[\\]]{4}", 4), ("x{,3}", 5), ("(a", 1), ("a)b", 3), ("^a$", 1),
])
def test_pattern_work(pattern, work):
    assert pattern_work(pattern) == work


def _nested(levels: int, leaf=None) -> dict:
    s = leaf or {"type": "integer"}
    for _ in range(levels):
        s = {"type": "array", "items": s}
    return s


UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
ACCEPTED = [
    {"type": "object", "properties": {"id": {"type": "string", "pattern": UUID},
                                      "day": {"type": "string", "format": "date"},
                                      "name": {"type": "string", "maxLength": 32},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 500}},
     "required": ["id", "name"]},
    _nested(63),
    {"enum": list(range(1000))},
    {"type": "string", "pattern": "a{1024}"},
    {"type": "string", "maxLength": 64},
    {"$defs": {"n": {"type": "object", "properties": {"c": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}},
     "$ref": "#/$defs/n"},
]
REFUSED = [
    ({"enum": [f"v{i}" for i in range(100_000)]}, "is 888900 bytes; this server accepts at most 32768"),
    ({"enum": list(range(1001))}, "has 1001 enum/const values; this server accepts at most 1000"),
    (_nested(64), "more than 64 levels deep (serving.max_json_schema_depth)"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1100)}},
     "has more than 1024 objects and arrays"),
    ({"type": "string", "pattern": "a{10000}"}, "weigh 10000 grammar states; this server accepts at most 1024"),
    ({"type": "string", "maxLength": 256}, "weigh 4096 grammar states"),
    ({"type": "string", "minLength": 100}, "weigh 1600"),
    ({"type": "object", "properties": {f"e{i}": {"type": "string", "format": "email"} for i in range(17)}}, "weigh 1088"),
    ({"type": "object", "patternProperties": {"^[a-z]{1,100}$": {}}}, "weigh 1600"),
]


@pytest.mark.parametrize("schema", ACCEPTED, ids=range(len(ACCEPTED)))
def test_ordinary_and_edge_schemas_are_accepted(schema):
    check_json_schema(schema, S)


@pytest.mark.parametrize("schema, fragment", REFUSED, ids=range(len(REFUSED)))
def test_schemas_that_cost_a_long_compile_are_400s(schema, fragment):
    with pytest.raises(InvalidRequestError) as ei:
        check_json_schema(schema, S)
    assert fragment in ei.value.message and ei.value.param == "response_format.json_schema.schema"


def test_budgets_are_configurable():
    roomy = ServingSection(max_json_schema_string_work=5000, max_json_schema_depth=200)
    check_json_schema({"type": "string", "maxLength": 256}, roomy)
    check_json_schema(_nested(150), roomy)


def test_through_the_request_checks():
    from serve_app.api.protocol import ChatCompletionRequest
    from serve_app.api.request_checks import check_request
    from serve_app.app_config import parse_app_config

    cfg = parse_app_config({"model": {"path": "/m", "served_name": "m"}})
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                "response_format": {"type": "json_schema", "json_schema": {
                                                    "name": "x", "schema": {"type": "string", "pattern": "a{5000}"}}}})
    with pytest.raises(InvalidRequestError, match="weigh 5000 grammar states"):
        check_request(req, cfg)
