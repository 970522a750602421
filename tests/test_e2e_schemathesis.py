"""Fuzzing end to end (the session's shared app: real `serve run`, HTTP, vLLM CPU build): requests
generated from the OpenAPI schema the app publishes at /openapi.json (schemathesis: schema-valid
and schema-invalid cases of every operation), and the request bodies and content-part shapes of
tests/api/test_fuzz_requests.py sent over HTTP. Bounded (a fixed number of examples per
strategy, a per-example deadline), derandomized.

Asserted: no 5xx for anything a client can send; every response is one the schema declares, with
the declared content type and a body that validates against its schema; schema-invalid bodies are
refused with a 4xx; over HTTP the ingress answers what its pure checks predict (the unit fuzz's
oracle); and afterwards the same replicas are alive (none crashed and was replaced) and serve.

Generated strings that look like URLs are pointed at 127.0.0.1 before sending (refused there as
loopback): the app fetches public hosts, and fuzzing must not reach any."""

from __future__ import annotations

import datetime
import json
import re
from collections import Counter

import httpx
import pytest

from tests import serve_replicas

pytestmark = pytest.mark.e2e
MODEL = "qwen2.5-vl-tiny"
EXAMPLES = 100  # per operation and mode of the schema, and per hypothesis strategy
MAX_TOKENS = 8
DEADLINE = datetime.timedelta(seconds=30)  # per example; the server's answers take well under 1 s
_URLISH = re.compile(r"^\s*([a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def _loopback_only(value):
    if isinstance(value, str):
        return "http://127.0.0.1:9/x.png" if _URLISH.match(value) else value
    if isinstance(value, list):
        return [_loopback_only(v) for v in value]
    if isinstance(value, dict):
        return {k: _loopback_only(v) for k, v in value.items()}
    return value


def _bounded(body):
    """Loopback-only URLs, and short generations: a body without a token limit would generate up
    to the context length. Only an absent limit is set, so invalid values still reach the checks."""
    body = _loopback_only(body)
    if isinstance(body, dict) and "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    return body


def _settings():
    from hypothesis import HealthCheck, Phase, settings

    # No shrinking: each step is a request; a failure is reported with the example as found.
    return settings(max_examples=EXAMPLES, deadline=DEADLINE, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def replicas_before(served):
    return serve_replicas.replicas(served)


def test_schemathesis_against_the_published_schema(served, replicas_before, figures):
    import schemathesis
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/chat/completions", "GET /v1/models", "GET /health"} <= labels, labels
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: Counter = Counter()
    with httpx.Client(timeout=60) as http:
        for op in operations:
            # An operation without parameters or body has no invalid form to generate.
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.body else [])
            for mode in modes:
                @_settings()
                @given(case=op.as_strategy(generation_mode=mode))
                def run(case):
                    if case.body is not None and not isinstance(case.body, (bytes, str)):
                        case.body = _bounded(case.body)
                        if mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
                            # past the 404 of an unknown model, into the checks and the engine
                            case.body["model"] = MODEL
                    response = case.call(base_url=served.base_url, timeout=60)
                    seen[f"{op.label} {mode.value} {response.status_code}"] += 1
                    extra = [negative_data_rejection] if mode == GenerationMode.NEGATIVE else []
                    case.validate_response(response, checks=checks + extra)

                run()
    lines = [f"schemathesis: {sum(seen.values())} requests (≤ {EXAMPLES} per operation and mode), "
             f"by operation, mode and status: {dict(sorted(seen.items()))}"]
    figures.extend(lines)
    print("\n".join(lines))
    assert not [k for k in seen if k.split()[-1].startswith("5")]


def test_fuzzed_bodies_and_content_parts_over_http(served, replicas_before, figures):
    """The unit fuzz's strategies, over HTTP: each status is < 500 and is the one the ingress's pure
    checks give for the same body (a body they accept may still be a 400 here: its media is fetched
    and decoded for real)."""
    from hypothesis import given
    from hypothesis import strategies as st

    from tests.api.test_fuzz_requests import _answer, bodies, content_parts

    def served_model(body):
        if body.get("model") == "m":  # the unit fuzz's configured model name
            body["model"] = MODEL
        return _bounded(body)

    seen: Counter = Counter()
    mismatches = []
    with httpx.Client(base_url=served.base_url, timeout=60) as http:
        def check(body):
            # NaN and Infinity as JSON literals, as the unit fuzz feeds them to the parser
            status = http.post("/v1/chat/completions", content=json.dumps(body, allow_nan=True),
                               headers={"Content-Type": "application/json"}).status_code
            seen[status] += 1
            expected = _answer({**body, "model": "m"} if body.get("model") == MODEL else body)
            if status >= 500 or (expected != 200 and status != expected):
                mismatches.append((status, expected, body))

        strategies = [bodies().map(served_model),
                      st.lists(content_parts(), min_size=1, max_size=8).map(
                          lambda parts: _bounded({"model": MODEL, "messages": [{"role": "user", "content": parts}]}))]
        for strategy in strategies:
            _settings()(given(strategy)(check))()
    lines = [f"hypothesis over HTTP: {sum(seen.values())} bodies and content-part lists, by status: "
             f"{dict(sorted(seen.items()))}; differing from the pure checks: {len(mismatches)}"]
    figures.extend(lines)
    print("\n".join(lines))
    assert not mismatches, mismatches[:5]


def test_no_replica_crashed_and_all_still_serve(served, replicas_before):
    assert serve_replicas.replicas(served) == replicas_before
    r = httpx.post(f"{served.base_url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "still there?"}]})
    assert r.status_code == 200, r.text
