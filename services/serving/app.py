"""The serving API: FastAPI + ONNX Runtime with dynamic batching, Feast user features and a prediction log.

`create_app(settings)` builds it; the model is loaded in the lifespan handler
(the registry's `@champion`, or a bundle folder given by LOOPLINE_BUNDLE).
"""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.common.admin import bearer_token_matches
from services.common.events import LoggedFeatures, PredictionEvent
from services.serving.batcher import BatcherFullError, DynamicBatcher
from services.serving.downloads import download_folder, remove_abandoned_downloads
from services.serving.model_store import LoadError, ModelStore, Snapshot
from services.serving.prediction_log import PredictionLog
from services.serving.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    CurrentModel,
    IntentProbability,
    Prediction,
    PredictRequest,
    Readiness,
    RollbackRequest,
)
from services.serving.settings import ServingSettings
from services.serving.updates import OUTCOMES, UpdateFollower

log = logging.getLogger(__name__)
BUNDLE_VERSION = 1  # what a bundle folder (LOOPLINE_BUNDLE) is served as: it has no registry version
Item = tuple[str, dict[str, Any] | None]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("loopline_request_seconds", "Request latency", ["route"], registry=self.registry)
        self.requests = Counter("loopline_requests", "Requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.model = Gauge("loopline_model_info", "Model answering now", ["version"], registry=self.registry)
        self.swaps = Gauge("loopline_model_swaps", "Model swaps since start", registry=self.registry)
        self.failed_loads = Gauge("loopline_model_failed_loads", "Refused loads", registry=self.registry)
        self.logged = Gauge("loopline_prediction_log_sent", "Prediction events sent", registry=self.registry)
        self.dropped = Gauge("loopline_prediction_log_dropped", "Prediction events dropped", ["reason"],
                             registry=self.registry)
        self.batches = Gauge("loopline_batches", "Model calls by batch size", ["size"], registry=self.registry)
        self.queue = Gauge("loopline_batch_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.updates = Gauge("loopline_model_updates", "model-updates events and alias checks by outcome",
                             ["outcome"], registry=self.registry)


def awaits_catch_up(version: int, tags: dict[str, str], snapshot: Snapshot, current: Snapshot | None,
                    settings: ServingSettings) -> bool:
    """Whether a new champion should wait behind the served head for the feedback service's catch-up delta.

    A retrain on collected feedback read the examples table minutes before it was promoted; the online head
    serving now learned on since. The feedback service relearns that on the retrain (same encoder and
    features) and publishes it as the retrain's first delta. Served before that, the retrain alone would
    answer worse than the head it replaces. Nothing else waits: not a rollback to an older version, an online
    registration, a version with another encoder, nor one no feedback service (no broker) will update."""
    from services.common.registry import COLLECTED_THROUGH_TAG  # with MLflow: imported once a registry is used

    return (settings.catch_up_wait_s > 0 and settings.kafka_bootstrap_servers is not None and current is not None
            and current.sequence > 0 and version > current.base_version and tags.get("source") == "train"
            and bool(tags.get(COLLECTED_THROUGH_TAG)) and snapshot.encoder_identity == current.encoder_identity
            and snapshot.spec == current.spec)


class Service:
    """Everything a request needs, built once per process."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.store = ModelStore(threads=settings.ort_threads)
        self.batcher: DynamicBatcher[Item, tuple[Snapshot, Any]] = DynamicBatcher(
            self._predict_batch, settings.max_batch, settings.max_wait_ms, name="predict",
            max_queue=settings.max_queue)
        self.log = PredictionLog(settings.kafka_bootstrap_servers, capacity=settings.log_capacity,
                                 send_timeout=settings.log_send_timeout_s)
        self.metrics = Metrics()
        self.features: Any = None  # a Feast store, when the state folder has one
        self.feature_state = "disabled"  # disabled, loading, ok, unreachable
        self.registry: Any = None  # services.common.registry.Registry unless serving a bundle folder
        # The served (and held) versions' downloads stay until others replace them: files they share are copied.
        self._folders: dict[int, tuple[tempfile.TemporaryDirectory[str], Path]] = {}
        self._loading = threading.Lock()
        self.updates = UpdateFollower(
            self.store, settings.model_name, settings.kafka_bootstrap_servers,
            champion=None if settings.bundle else self._champion, load=self.follow_champion,
            alias_check_s=settings.champion_check_s, swapped=self.prune_downloads)

    def _predict_batch(self, items: list[Item]) -> list[tuple[Snapshot, Any]]:
        snapshot, batch, proba = self.store.predict([t for t, _ in items], [u for _, u in items])
        csr = batch.sparse.tocsr()
        dense = batch.dense
        return [(snapshot, (proba[i], csr.indices[csr.indptr[i]:csr.indptr[i + 1]],
                            csr.data[csr.indptr[i]:csr.indptr[i + 1]], None if dense is None else dense[i]))
                for i in range(len(items))]

    def _registry(self) -> Any:
        if self.registry is None:
            from services.common.registry import Registry, bound_registry_requests

            bound_registry_requests()  # an alias check against a hung registry must not hold deltas up for minutes
            self.registry = Registry(self.settings)
        return self.registry

    def _champion(self) -> int | None:
        champion = self._registry().champion()
        return None if champion is None else int(champion.version)

    def load_version(self, version: int | None = None, hold: bool = False) -> Snapshot:
        """Load a registry version (default: `@champion`) or the configured bundle folder. With `hold`, a
        retrain that the feedback service will catch up (`awaits_catch_up`) is held until its first delta."""
        if self.settings.bundle is not None:
            # Without a registry the folder is the one version there is; serving it under another number
            # would report a version that was never loaded.
            if version not in (None, BUNDLE_VERSION):
                raise LoadError(f"version {version} is not available: serving the bundle folder "
                                f"{self.settings.bundle} (version {BUNDLE_VERSION}) without a registry")
            return self.store.load_bundle(self.settings.bundle, BUNDLE_VERSION)
        from services.common.registry import RegistryError

        registry = self._registry()
        try:
            target = registry.champion() if version is None else registry.get(version)
        except RegistryError as exc:
            raise LoadError(str(exc)) from exc
        if target is None:
            raise LoadError(f"{registry.name} has no champion yet: run `loopline train`")
        with self._loading:
            folder = download_folder(self.settings.state_dir)
            try:
                try:
                    # Files shared with a version at hand (its encoder) are copied from its folder.
                    bundle = registry.download(target.version, Path(folder.name),
                                               local=[b for _, b in self._folders.values()])
                except Exception as exc:  # any download or verification failure is a refused load...
                    if _unreachable(exc):  # ...but a registry that went away is not the version's fault: retried
                        raise
                    self.store.failed_loads += 1
                    raise LoadError(f"version {target.version} refused: {exc}") from exc
                snapshot = self.store.prepare(bundle, target.version)
            except BaseException:
                folder.cleanup()
                raise
            replaced = self._folders.pop(target.version, None)
            self._folders[target.version] = (folder, bundle)
            if replaced is not None:
                replaced[0].cleanup()
            if hold and awaits_catch_up(target.version, target.tags, snapshot, self.store.current, self.settings):
                self.store.hold(snapshot, self.settings.catch_up_wait_s)
            else:
                self.store.serve(snapshot)
            self._prune_downloads()
            return snapshot

    def follow_champion(self, version: int) -> Snapshot:
        """What the update follower loads when the alias moved: a retrain to be caught up waits for it."""
        return self.load_version(version, hold=True)

    def prune_downloads(self) -> None:
        """Remove the downloads of versions neither served nor held."""
        with self._loading:
            self._prune_downloads()

    def _prune_downloads(self) -> None:
        current, held = self.store.current, self.store.held
        keep = {s.base_version for s in (current, held.snapshot if held else None) if s is not None}
        for version in [v for v in self._folders if v not in keep]:
            self._folders.pop(version)[0].cleanup()

    def release_download(self) -> None:
        """Remove the served version's download folder (at shutdown)."""
        with self._loading:
            for folder, _ in self._folders.values():
                folder.cleanup()
            self._folders.clear()

    def open_features(self) -> None:
        """Open the state folder's Feast store if the train flow made one (importing Feast takes seconds)."""
        folder = self.settings.state_dir / "feast"
        if not (folder / "data" / "registry.db").exists():
            return
        self.feature_state = "loading"
        from services.common.features import open_store

        try:
            self.features = open_store(folder, repo=self.settings.feature_repo, apply=False)
            self.feature_state = "ok"
        except Exception:  # serving answers without user features rather than not at all
            log.warning("feature store at %s cannot be opened", folder, exc_info=True)
            self.feature_state = "unreachable"

    def user_features(self, user_id: str | None) -> dict[str, Any] | None:
        """Online features of a known user; unknown users and an unreachable store give none."""
        if user_id is None or self.features is None:
            return None
        from services.common.features import online_user_features, user_fields

        try:
            features = user_fields(online_user_features(self.features, [user_id])[0])
        except Exception:  # an unreachable feature store degrades to "no user features"
            log.warning("feature store read failed; answering without user features", exc_info=True)
            self.feature_state = "unreachable"
            return None
        self.feature_state = "ok"
        return features

    def answer(self, snapshot: Snapshot, result: Any, request: PredictRequest,
               user: dict[str, Any] | None = None) -> Prediction:
        proba, indices, values, embedding = result
        order = proba.argsort()[::-1][: self.settings.top_k]
        fallback = not bool(snapshot.fallback.answered(proba[None, :], snapshot.classes)[0])
        prediction = Prediction(
            prediction_id=uuid.uuid4().hex, intent=snapshot.classes[order[0]], model_version=snapshot.version,
            fallback=fallback,
            probabilities=[IntentProbability(intent=snapshot.classes[i], probability=float(proba[i])) for i in order])
        event = PredictionEvent(
            prediction_id=prediction.prediction_id, model_version=snapshot.version, user_id=request.user_id,
            user=None if user is None else {k: str(v) for k, v in user.items()},
            text=request.text, intent=prediction.intent,
            features=LoggedFeatures.of(indices, values, embedding),
            probabilities=dict(zip(snapshot.classes, proba.tolist(), strict=True)))
        self.log.offer(prediction.prediction_id, event.model_dump_json().encode())
        return prediction


class MeasureAndLimit:
    """Request metrics and the body size limit as plain ASGI: Starlette's BaseHTTPMiddleware cost
    about 0.55 ms of CPU per request (measured by bench/serving.py), a sixth of the event loop's time."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, limit = scope["path"], self.service.settings.max_body_bytes
        metrics = self.service.metrics
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            response = JSONResponse({"detail": f"body over {limit} bytes"}, status_code=413)
            await response(scope, receive, send)
            metrics.requests.labels(route, "413").inc()
            return
        start, status, received = time.perf_counter(), [500], [0]

        async def receive_within_limit() -> dict[str, Any]:
            # A body without Content-Length (chunked) is counted as it is read; FastAPI re-raises an
            # HTTPException raised while it reads the body, so the client gets this 413.
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise HTTPException(413, f"body over {limit} bytes")
            return message

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_status)
        finally:
            metrics.latency.labels(route).observe(time.perf_counter() - start)
            metrics.requests.labels(route, str(status[0])).inc()


def _json_safe(value: Any) -> Any:
    """`value` with what JSON cannot carry written as text: lone surrogates as their escapes, and
    non-finite numbers as 'inf', '-inf' or 'nan'."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _unreachable(exc: BaseException) -> bool:
    """Whether a registry call failed for want of an answer (refused, reset, timed out) rather than for what
    it answered; MLflow wraps the `requests` error without `from`, so the chain is walked."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    service = Service(settings or ServingSettings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        champion = None
        if service.settings.bundle is None:
            await asyncio.to_thread(remove_abandoned_downloads, service.settings.state_dir)
        try:
            snapshot = await asyncio.to_thread(service.load_version)
            champion = None if service.settings.bundle else snapshot.base_version
        except Exception as exc:  # refused, or the registry went away mid-download: the alias check retries
            log.error("starting without a model: %s", exc)
        service.batcher.start()
        service.log.start()
        service.updates.start(champion)
        features = asyncio.create_task(asyncio.to_thread(service.open_features))
        yield
        await features
        await asyncio.to_thread(service.updates.stop)
        await service.batcher.stop()
        service.log.close()
        service.release_download()

    app = FastAPI(title="loopline serving", version="1", lifespan=lifespan)
    app.state.service = service

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        token = service.settings.admin_token
        if token is None:
            raise HTTPException(403, "admin endpoints are off: LOOPLINE_ADMIN_TOKEN is not set")
        if not bearer_token_matches(authorization, token.get_secret_value()):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <LOOPLINE_ADMIN_TOKEN>)")

    app.add_middleware(MeasureAndLimit, service=service)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes every input; one JSON cannot carry back (a lone surrogate, a number
        # too large for a float) made it fail, and the client got 500 instead of this 422.
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    async def predict_one(request: PredictRequest) -> Prediction:
        if len(request.text) > service.settings.max_text_chars:
            raise HTTPException(422, f"text longer than {service.settings.max_text_chars} characters")
        if service.store.current is None:
            raise HTTPException(503, "no model loaded yet")
        user = None
        if request.user_id is not None and service.features is not None:
            user = await asyncio.to_thread(service.user_features, request.user_id)
        try:
            snapshot, result = await service.batcher.submit((request.text, user))
        except BatcherFullError as exc:
            raise HTTPException(503, f"overloaded: {exc}; retry shortly", headers={"Retry-After": "1"}) from exc
        return service.answer(snapshot, result, request, user)

    @app.post("/v1/predict", response_model=Prediction)
    async def predict(request: PredictRequest) -> Prediction:
        return await predict_one(request)

    @app.post("/v1/predict/batch", response_model=BatchPrediction)
    async def predict_batch(request: BatchPredictRequest) -> BatchPrediction:
        if len(request.items) > service.settings.max_batch_texts:
            raise HTTPException(422, f"more than {service.settings.max_batch_texts} items")
        return BatchPrediction(predictions=list(await asyncio.gather(*map(predict_one, request.items))))

    @app.get("/v1/models/current", response_model=CurrentModel)
    async def current() -> CurrentModel:
        snapshot = service.store.current
        if snapshot is None:
            raise HTTPException(503, "no model loaded yet")
        held = service.store.held
        return CurrentModel(version=snapshot.version, base_version=snapshot.base_version,
                            online_sequence=snapshot.sequence, loaded_at=snapshot.loaded_at, lineage=snapshot.lineage,
                            classes=list(snapshot.classes), fallback=snapshot.fallback.to_dict(),
                            held_version=held.snapshot.base_version if held else None)

    @app.post("/v1/admin/reload", response_model=CurrentModel, dependencies=[Depends(admin)])
    async def reload() -> CurrentModel:
        try:
            snapshot = await asyncio.to_thread(service.load_version)
        except LoadError as exc:
            raise HTTPException(409, f"{exc}; still serving the previous model") from exc
        except Exception as exc:
            if not _unreachable(exc):
                raise
            raise HTTPException(503, f"registry unreachable ({exc}); still serving the previous model") from exc
        if not service.settings.bundle:
            service.updates.last_champion = snapshot.base_version
        return await current()

    @app.post("/v1/admin/rollback", response_model=CurrentModel, dependencies=[Depends(admin)])
    async def rollback(request: RollbackRequest) -> CurrentModel:
        try:
            await asyncio.to_thread(service.load_version, request.version)
        except LoadError as exc:
            raise HTTPException(409, f"{exc}; still serving the previous model") from exc
        except Exception as exc:
            if not _unreachable(exc):
                raise
            raise HTTPException(503, f"registry unreachable ({exc}); still serving the previous model") from exc
        return await current()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness)
    async def readyz(response: Response) -> Readiness:
        broker = "disabled" if not service.log.enabled else ("ok" if service.log.broker_ok else "unreachable")
        features = service.feature_state
        loaded, replayed = service.store.current is not None, service.updates.caught_up
        ready = loaded and replayed
        response.status_code = 200 if ready else 503
        return Readiness(ready=ready, model_loaded=loaded, updates_replayed=replayed, broker=broker,
                         feature_store=features)

    @app.get("/metrics", response_class=PlainTextResponse)  # the spec says text/plain, as it is
    async def metrics() -> Response:
        m, snapshot = service.metrics, service.store.current
        m.model.clear()
        if snapshot is not None:
            m.model.labels(snapshot.version).set(1)
        m.swaps.set(service.store.swaps)
        m.failed_loads.set(service.store.failed_loads)
        m.logged.set(service.log.sent)
        for reason, count in service.log.dropped.items():
            m.dropped.labels(reason).set(count)
        batching = service.batcher.stats()
        for size, count in batching.batch_sizes.items():
            m.batches.labels(str(size)).set(count)
        m.queue.set(batching.queue_depth)
        for outcome in OUTCOMES:
            m.updates.labels(outcome).set(service.updates.outcomes[outcome])
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return app
