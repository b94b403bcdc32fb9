"""Artifacts written before any-label-set support load with today's code (tests/fixtures/format-1, written by
the code of that time), and formats this code cannot read are refused with what to do."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from models.bundle import MANIFEST, BundleError, Manifest, read_manifest, sha256_file
from models.fallback import NEVER
from models.predict import Predictor
from services.common.events import FEEDBACK, FeedbackEvent
from services.feedback.intake import Record
from services.feedback.metrics import FeedbackCollector
from services.feedback.service import FeedbackService
from services.feedback.settings import FeedbackSettings
from services.serving.model_store import ModelStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "format-1"


def test_a_schema_1_manifest_loads_and_never_falls_back() -> None:
    manifest = Manifest.from_json((FIXTURES / "manifest" / MANIFEST).read_text())
    assert manifest.classes == ("alarm_set", "weather_query", "oos")
    assert manifest.fallback_policy == NEVER
    proba = np.array([[0.34, 0.33, 0.33]])
    assert NEVER.answered(proba, manifest.classes).all(), "an old bundle answers every request, as it did"


@pytest.mark.parametrize(("schema", "advice"), [(99, "written by a newer loopline; upgrade loopline"),
                                                (0, "train a new version with `loopline train`")])
def test_a_manifest_schema_it_cannot_read_is_refused_with_what_to_do(schema: int, advice: str) -> None:
    body = json.loads((FIXTURES / "manifest" / MANIFEST).read_text()) | {"schema_version": schema}
    with pytest.raises(BundleError, match=advice):
        Manifest.from_json(json.dumps(body))


def test_a_bundle_with_a_schema_1_manifest_is_served(tiny_bundle: Callable[..., Path]) -> None:
    folder = tiny_bundle()
    old = json.loads((FIXTURES / "manifest" / MANIFEST).read_text())
    body = json.loads((folder / MANIFEST).read_text())
    body = {key: body[key] for key in old}  # the schema-1 fields only, as that code wrote them
    body["schema_version"] = 1
    assert set(body) == set(old)
    (folder / MANIFEST).write_text(json.dumps(body))
    assert read_manifest(folder).schema_version == 2 and sha256_file(folder / MANIFEST)
    predictor = Predictor(folder)
    store = ModelStore()
    snapshot = store.load_bundle(folder, 1)
    assert snapshot.fallback == NEVER and predictor.classes == snapshot.classes


def test_a_checkpoint_from_before_resumes_and_counts_unknown_labels_from_then_on(tmp_path: Path) -> None:
    checkpoints = tmp_path / "feedback" / "checkpoints"
    shutil.copytree(FIXTURES / "checkpoint", checkpoints)
    settings = FeedbackSettings(state_dir=tmp_path, update_interval_s=1.0)
    service = FeedbackService(settings)  # no start head: everything comes from the old checkpoint
    assert service.checkpoint_number == 1 and service.learner.base_version == 1
    assert service.stats.records == {"predictions": 120, "feedback": 97}
    assert service.offsets["feedback:1"] == 25 and not service.problems
    assert service.stats.unknown_labels == {}
    # It holds users.json (per-user correction counts), which is no longer read or written.
    assert (FIXTURES / "checkpoint" / "ckpt-000000000001" / "users.json").is_file()

    # A second label for a prediction the old checkpoint saw labeled: refused at once, as unknown_label.
    labeled = next(iter(service.store.labeled))
    event = FeedbackEvent(prediction_id=labeled, label="make_coffee")
    service.process(Record(FEEDBACK, 1, 25, labeled, event.model_dump_json().encode(), 1_800_000_005.0),
                    now=1_800_000_005.0)
    assert service.stats.dead_letters["unknown_label"] == 1 and service.stats.unknown_labels == {"make_coffee": 1}
    written = service.checkpoint()
    assert "users.json" not in written.files
    service.checkpoints.save(written)
    again = FeedbackService(settings)
    assert again.stats.unknown_labels == {"make_coffee": 1} and again.offsets["feedback:1"] == 26
    registry = CollectorRegistry()
    registry.register(FeedbackCollector(again))
    assert 'loopline_feedback_unknown_labels_total{label="make_coffee"} 1.0' in generate_latest(registry).decode()
