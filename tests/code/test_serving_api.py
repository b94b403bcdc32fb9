"""The serving API in process: answers, refuses bad input with 4xx and a reason, guards admin routes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from models.traffic import GENERATED_INTENTS as INTENTS
from services.serving.app import create_app
from services.serving.settings import ServingSettings

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def client(tiny_bundle, tmp_path, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.delenv("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = ServingSettings(bundle=tiny_bundle(), state_dir=tmp_path, admin_token=TOKEN, max_text_chars=200,
                               max_body_bytes=20_000, max_wait_ms=1.0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_predict_single_and_batch(client: TestClient) -> None:
    one = client.post("/v1/predict", json={"text": "turn on wifi", "user_id": "u00001"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["intent"] in INTENTS and body["model_version"] == "1" and len(body["probabilities"]) == 3
    assert body["probabilities"][0]["intent"] == body["intent"]
    many = client.post("/v1/predict/batch", json={"items": [{"text": t} for t in ("call mom", "play jazz", "hi")]})
    assert many.status_code == 200 and len(many.json()["predictions"]) == 3
    ids = {p["prediction_id"] for p in many.json()["predictions"]} | {body["prediction_id"]}
    assert len(ids) == 4
    current = client.get("/v1/models/current").json()
    assert current["version"] == "1" and current["online_sequence"] == 0


@pytest.mark.parametrize(("payload", "reason"), [
    ({"text": ""}, "text is empty or whitespace"),
    ({"text": "   \n"}, "text is empty or whitespace"),
    ({"text": "x" * 201}, "longer than 200"),
    ({"text": 42}, "string"),
    ({"text": "hi", "colour": "red"}, "Extra inputs are not permitted"),
    ({}, "Field required"),
])
def test_bad_input_gets_422_with_a_reason(client: TestClient, payload: dict, reason: str) -> None:
    response = client.post("/v1/predict", json=payload)
    assert response.status_code == 422 and reason in response.text


def test_bodies_that_are_too_large_or_not_json_are_refused(client: TestClient) -> None:
    assert client.post("/v1/predict", content=b"x" * 30_000).status_code == 413
    garbage = client.post("/v1/predict", content=b"\xff\x00not json", headers={"content-type": "application/json"})
    assert garbage.status_code == 422


def test_admin_needs_the_token(client: TestClient) -> None:
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["version"] == "1"


@pytest.mark.parametrize("header", [TOKEN, f"Token {TOKEN}", f"Bearer{TOKEN}", f"Basic {TOKEN}"])
def test_admin_needs_the_bearer_scheme(client: TestClient, header: str) -> None:
    refused = client.post("/v1/admin/reload", headers={"Authorization": header})
    assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
    assert client.post("/v1/admin/reload", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200, \
        "the scheme's name is case-insensitive"


def test_rollback_from_a_bundle_folder_refuses_versions_it_cannot_serve(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    refused = client.post("/v1/admin/rollback", json={"version": 7}, headers=auth)
    assert refused.status_code == 409 and "version 7 is not available" in refused.json()["detail"]
    assert client.get("/v1/models/current").json()["version"] == "1", "still serving the bundle"
    same = client.post("/v1/admin/rollback", json={"version": 1}, headers=auth)
    assert same.status_code == 200 and same.json()["version"] == "1"


def test_health_readiness_and_metrics(client: TestClient) -> None:
    client.post("/v1/predict", json={"text": "set an alarm"})
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["broker"] == "disabled"
    metrics = client.get("/metrics").text
    assert 'loopline_model_info{version="1"} 1.0' in metrics
    assert 'loopline_requests_total{route="/v1/predict",status="200"} 1.0' in metrics
    assert 'loopline_batches{size="1"} 1.0' in metrics and "loopline_batch_queue_depth 0.0" in metrics
    assert 'loopline_request_seconds_count{route="/v1/predict"} 1.0' in metrics
    client.post("/v1/predict", json={"text": ""})
    client.post("/v1/predict", content=b"x" * 30_000)
    metrics = client.get("/metrics").text
    assert 'loopline_requests_total{route="/v1/predict",status="422"} 1.0' in metrics
    assert 'loopline_requests_total{route="/v1/predict",status="413"} 1.0' in metrics


def test_placeholder_admin_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        ServingSettings(admin_token="changeme")


def test_an_overloaded_batcher_answers_503_with_retry_after(client: TestClient, monkeypatch) -> None:
    from services.serving.batcher import BatcherFullError

    async def full(item: object) -> None:
        raise BatcherFullError("predict: 1024 requests already waiting")

    monkeypatch.setattr(client.app.state.service.batcher, "submit", full)
    response = client.post("/v1/predict", json={"text": "turn on wifi"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "overloaded" in response.json()["detail"]
