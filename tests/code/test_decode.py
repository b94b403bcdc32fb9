"""The batch decoder (msgspec, checks once per batch) against the pydantic event models it replaced.

Every malformed kind of the hostile corpus (tests/reliability) is refused with the same reason by both,
every good event decodes to the same arrays, and a stream learned through either ends with the same
weights, bit for bit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field, ValidationError

from models.traffic import GENERATED_INTENTS
from services.common.events import FEEDBACK, PREDICTIONS, DeadLetter, FeedbackEvent, LoggedFeatures, PredictionEvent
from services.feedback import service as service_module
from services.feedback.decode import decode_batch
from services.feedback.intake import Record, dead_letter
from services.feedback.join import StoredFeedback, StoredPrediction
from services.feedback.settings import FeedbackSettings
from tests.code.test_feedback_service import arrival, feed, finish, service, stream
from tests.conftest import TinyModel
from tests.reliability.test_hostile_events import Bad, bad_feedback, bad_predictions

SPARSE_DIM, DENSE_DIM, MAX_BYTES, MAX_PREDICTION_BYTES = 2**18, 8, 4096, 65_536


# -- today's decoder, as it was: the pydantic models, then each record's own numeric checks ---------------


class _ReceivedFeedback(FeedbackEvent):
    event_id: str = Field(min_length=1, max_length=128)


def _schema_problem(record: Record, exc: ValidationError) -> DeadLetter:
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        return dead_letter(record, "invalid_json", errors[0]["msg"])
    return dead_letter(record, "wrong_schema", str(errors[:5]))


def pydantic_decode(record: Record, sparse_dim: int, dense_dim: int
                    ) -> StoredPrediction | StoredFeedback | DeadLetter:
    limit = MAX_PREDICTION_BYTES if record.topic == PREDICTIONS else MAX_BYTES
    if len(record.value) > limit:
        return dead_letter(record, "too_large", "")
    if record.topic == FEEDBACK:
        try:
            fb = _ReceivedFeedback.model_validate_json(record.value)
        except ValidationError as exc:
            return _schema_problem(record, exc)
        return StoredFeedback(fb.event_id, fb.prediction_id, fb.label, record.ts, record.partition, record.offset,
                              record.key, record.value)
    try:
        event = PredictionEvent.model_validate_json(record.value)
        indices, values, embedding = event.features.arrays()
    except ValidationError as exc:
        return _schema_problem(record, exc)
    except ValueError as exc:
        return dead_letter(record, "wrong_schema", str(exc))
    if not (np.isfinite(values.sum()) and (embedding is None or np.isfinite(embedding.sum()))):
        return dead_letter(record, "wrong_schema", "not finite")
    if len(indices) and not (indices.min() >= 0 and indices.max() < sparse_dim):
        return dead_letter(record, "wrong_schema", "out of range")
    if dense_dim and (embedding is None or len(embedding) != dense_dim):
        return dead_letter(record, "wrong_schema", "embedding length")
    return StoredPrediction(event.prediction_id, record.ts, event.model_version, event.user_id, event.text,
                            event.intent, max(event.probabilities.values(), default=0.0), indices.astype(np.int64),
                            values, embedding, event.user)


# -- the corpus ------------------------------------------------------------------------------------------


def _template() -> dict[str, object]:
    rng = np.random.default_rng(3)
    features = LoggedFeatures.of(rng.integers(0, SPARSE_DIM, 12), rng.random(12), rng.random(DENSE_DIM))
    event = PredictionEvent(prediction_id="p-template", model_version="3+ftrl.2", user_id="u1",
                            user={"locale": "en_GB"}, text="wake me at seven", intent="set_alarm",
                            features=features, probabilities={"set_alarm": 0.9, "play_music": 0.1})
    return event.model_dump(mode="json")


def _good_feedback() -> list[tuple[str, FeedbackEvent]]:
    return [(f"p-{i}", FeedbackEvent(prediction_id=f"p-{i}", label=GENERATED_INTENTS[i])) for i in range(5)]


CORPUS: list[Bad] = bad_feedback(_good_feedback()) + bad_predictions(_template(), DENSE_DIM)
REFUSED_BY_DECODING = {"invalid_json", "wrong_schema", "too_large"}  # the others are decided at the join


def _record(item: Bad, offset: int = 0) -> Record:
    return Record(item.topic, 0, offset, item.key, item.value, 1_800_000_000.0)


@pytest.mark.parametrize("item", CORPUS, ids=[item.kind for item in CORPUS])
def test_each_malformed_kind_gets_the_reason_it_got_before(item: Bad) -> None:
    record = _record(item)
    new = decode_batch([record], SPARSE_DIM, DENSE_DIM, MAX_BYTES, MAX_PREDICTION_BYTES)[0]
    old = pydantic_decode(record, SPARSE_DIM, DENSE_DIM)
    if item.reason in REFUSED_BY_DECODING:
        assert isinstance(new, DeadLetter) and new.reason == item.reason, new
        assert isinstance(old, DeadLetter) and old.reason == item.reason, old
        assert new.detail, "a person can read what was wrong"
    else:
        assert not isinstance(new, DeadLetter) and not isinstance(old, DeadLetter), (new, old)


def test_a_batch_keeps_its_order_and_refuses_only_its_bad_records() -> None:
    """Bad and good records mixed in one poll: each decoded as if alone, a bad one costs only itself."""
    good = PredictionEvent.model_validate(_template()).model_dump_json().encode()
    items = [Bad("good", PREDICTIONS, "k", good, ""), *CORPUS, Bad("good again", PREDICTIONS, "k", good, "")]
    records = [_record(item, offset) for offset, item in enumerate(items)]
    together = decode_batch(records, SPARSE_DIM, DENSE_DIM, MAX_BYTES, MAX_PREDICTION_BYTES)
    alone = [decode_batch([r], SPARSE_DIM, DENSE_DIM, MAX_BYTES, MAX_PREDICTION_BYTES)[0] for r in records]
    assert [_summary(x) for x in together] == [_summary(x) for x in alone]
    assert isinstance(together[0], StoredPrediction) and isinstance(together[-1], StoredPrediction)


def test_good_events_decode_to_the_same_values(trained: TinyModel) -> None:
    records = stream(trained, n=200, seed=5)
    dense_dim = trained[1].dense_dim
    new = decode_batch(records, trained[1].sparse_dim, dense_dim, MAX_BYTES, MAX_PREDICTION_BYTES)
    old = [pydantic_decode(r, trained[1].sparse_dim, dense_dim) for r in records]
    assert [_summary(x) for x in new] == [_summary(x) for x in old]
    assert not any(isinstance(x, DeadLetter) for x in new)


def test_a_stream_learned_through_either_decoder_ends_with_the_same_weights(
        trained: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = arrival(stream(trained, n=900, seed=21), seed=1)

    def learn(folder: str) -> tuple[np.ndarray, np.ndarray, dict[int, bytes]]:
        settings = FeedbackSettings(state_dir=tmp_path / folder, update_interval_s=1.0, lateness_s=0.5,
                                    min_holdout=20, holdout_share=0.15, feedback_wait_s=10.0)
        svc, deltas = service(settings, trained), {}
        feed(svc, records, deltas)
        finish(svc, deltas)
        assert svc.stats.windows["published"] >= 3
        return svc.learner.model.z_sparse.copy(), svc.learner.model.n_sparse.copy(), deltas

    batched = learn("batched")

    def one_at_a_time(records: Sequence[Record], sparse_dim: int, dense_dim: int, *_: int) -> list[object]:
        return [pydantic_decode(r, sparse_dim, dense_dim) for r in records]

    monkeypatch.setattr(service_module, "decode_batch", one_at_a_time)
    before = learn("pydantic")
    assert np.array_equal(batched[0], before[0]) and np.array_equal(batched[1], before[1])
    assert batched[2] == before[2], "the same deltas, byte for byte"


def _summary(item: object) -> tuple[object, ...]:
    if isinstance(item, DeadLetter):
        return ("dead", item.reason)
    if isinstance(item, StoredFeedback):
        return ("feedback", item.event_id, item.prediction_id, item.label)
    assert isinstance(item, StoredPrediction)
    return ("prediction", item.prediction_id, item.model_version, item.user_id, item.text, item.intent,
            item.confidence, item.indices.dtype.str, item.indices.tobytes(), item.values.tobytes(),
            None if item.embedding is None else item.embedding.tobytes(), item.user)


def test_json_nan_is_invalid_json_and_a_time_sent_as_text_is_taken() -> None:
    """Where the decoders may differ: JSON's NaN literal is refused as invalid JSON (the models let it
    through), and a number sent as text is taken, as the models take it."""
    event = FeedbackEvent(event_id=uuid.uuid4().hex, prediction_id="p", label="set_alarm").model_dump(mode="json")
    as_text = json.dumps(event | {"time": str(event["time"])}).encode()
    decoded = decode_batch([Record(FEEDBACK, 0, 0, "p", as_text, 1.0)], SPARSE_DIM, DENSE_DIM, MAX_BYTES,
                           MAX_PREDICTION_BYTES)[0]
    assert isinstance(decoded, StoredFeedback) and decoded.event_id == event["event_id"]
    nan = json.dumps(event | {"time": float("nan")}).encode()
    letter = decode_batch([Record(FEEDBACK, 0, 1, "p", nan, 1.0)], SPARSE_DIM, DENSE_DIM, MAX_BYTES,
                          MAX_PREDICTION_BYTES)[0]
    assert isinstance(letter, DeadLetter) and letter.reason == "invalid_json"
