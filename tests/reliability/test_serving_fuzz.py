"""Schemathesis against the OpenAPI spec of a real `loopline serve` process.

Every operation gets requests generated from the spec (bodies, query strings,
headers): valid ones, and invalid ones where the operation takes input. Whatever
comes in, serving must not answer 5xx, and what it answers must match the spec: the
documented body schema and content type, and 4xx for requests the spec says are
invalid. Admin routes are sent the right token so the fuzzing reaches their handlers
(the token itself is tested in test_security.py). Examples are derandomized and
bounded, so a run is reproducible and short. Hand-made bodies cover what the
generator does not make: lone surrogates, NUL characters, deep nesting, duplicate
keys, bytes that are not UTF-8.

Schemathesis' own pytest loader for a schema from a fixture does not work with
pytest 9 (it sets `Function._nodeid`), so each operation's Hypothesis strategy is
run directly.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.generation import GenerationMode

from tests.integration.stack import TOKEN, Serving

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_rejection]
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Operation, generation mode, examples. Operations without input have nothing to make invalid; a reload
# takes no input but the token, and each one loads the champion again.
RUNS = [
    ("POST /v1/predict", POSITIVE, 80), ("POST /v1/predict", NEGATIVE, 80),
    ("POST /v1/predict/batch", POSITIVE, 40), ("POST /v1/predict/batch", NEGATIVE, 40),
    ("POST /v1/admin/rollback", POSITIVE, 30), ("POST /v1/admin/rollback", NEGATIVE, 30),
    ("POST /v1/admin/reload", POSITIVE, 5),
    ("GET /v1/models/current", POSITIVE, 1), ("GET /healthz", POSITIVE, 1), ("GET /readyz", POSITIVE, 1),
    ("GET /metrics", POSITIVE, 1),
]


@pytest.fixture(scope="module")
def serving_api(serving: Serving) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{serving.url}/openapi.json")


def test_every_operation_of_the_spec_is_fuzzed(serving_api: schemathesis.BaseSchema) -> None:
    assert {result.ok().label for result in serving_api.get_all_operations()} == {label for label, _, _ in RUNS}


@pytest.mark.parametrize(("label", "mode", "examples"), RUNS, ids=[f"{label} {mode.value}" for label, mode, _ in RUNS])
def test_no_5xx_and_responses_match_the_spec(serving_api: schemathesis.BaseSchema, label: str,
                                             mode: GenerationMode, examples: int) -> None:
    operation = serving_api.find_operation_by_label(label)
    assert operation is not None, label
    headers = {"Authorization": f"Bearer {TOKEN}"} if "/admin/" in label else None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)

    check()


NESTED = b"[" * 10_000 + b"]" * 10_000


@pytest.mark.parametrize(("route", "body", "status"), [
    ("/v1/predict", rb'{"text": "a\ud800b"}', 422),  # a lone surrogate: valid JSON, not a Unicode string
    ("/v1/predict", rb'{"text": "hi", "user_id": "\udfff"}', 422),
    ("/v1/predict", rb'{"text": "hi", "\ud800": 1}', 422),
    ("/v1/predict/batch", rb'{"items": [{"text": "fine"}, {"text": "a\ud800"}]}', 422),
    ("/v1/predict", rb'{"text": "nul \u0000 inside", "user_id": "u\u0000"}', 200),
    ("/v1/predict", ('{"text": "' + "\U0001f600" * 1000 + '"}').encode(), 200),  # 1000 characters, 4000 bytes
    ("/v1/predict", b'{"text": ' + NESTED + b"}", 400),
    ("/v1/predict", b'{"text": "a", "text": 5}', 422),  # the last of duplicate keys counts
    ("/v1/predict", b'{"text": "turn on wifi"} trailing', 422),
    ("/v1/predict", b"\xff\xfe\x00 not UTF-8", 400),
    ("/v1/predict", b'{"text": 1e400}', 422),  # an infinite number, echoed back as text
    ("/v1/predict", b'{"text": NaN}', 422),
    ("/v1/predict/batch", b'{"items": [' + b",".join([b'{"text": "x"}'] * 257) + b"]}", 422),
    ("/v1/admin/rollback", b'{"version": 99999999999999999999999999}', 409),  # no such version
    ("/v1/admin/rollback", b'{"version": 1e400}', 422),
    ("/v1/admin/rollback", b'{"version": "1"}', 422),
])
def test_hand_made_hostile_bodies_get_their_answer(serving: Serving, route: str, body: bytes, status: int) -> None:
    response = httpx.post(serving.url + route, content=body, timeout=60, headers={
        "content-type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == status, response.text[:300]
    assert response.json()["detail" if status >= 400 else "prediction_id"]
    assert serving.predict("turn on wifi")["intent"]
