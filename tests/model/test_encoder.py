"""The encoder loads the packaged MiniLM offline and embeds sensibly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from models.encoder import Encoder, minilm_path


def test_minilm_files_come_from_site_packages() -> None:
    path = minilm_path()
    assert "site-packages" in str(path)
    assert (path / "model.safetensors").exists() and (path / "vocab.txt").exists()


def test_loads_offline_in_a_fresh_process() -> None:
    # A fresh interpreter with the hub off and no proxy to reach anything.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}
    code = ("from models.encoder import Encoder; e = Encoder.from_pretrained(); "
            "print(e.encode(['turn on wifi']).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=300)
    assert out.stdout.strip().endswith("(1, 384)")


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder.from_pretrained()


def test_minilm_embeddings_are_unit_length_and_meaningful(minilm: Encoder) -> None:
    emb = minilm.encode(["turn on wifi", "enable the wireless network", "play some jazz music"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > unrelated + 0.2


def test_batching_and_order_do_not_change_embeddings(minilm: Encoder) -> None:
    texts = ["a", "set an alarm for seven in the morning please", "call mom", "weather"]
    one_by_one = np.vstack([minilm.encode([t]) for t in texts])
    np.testing.assert_allclose(minilm.encode(texts, batch_size=3), one_by_one, atol=1e-5)


def test_tiny_random_encoder_has_the_same_interface() -> None:
    tiny = Encoder.tiny_random(seed=1)
    seen: list[int] = []
    emb = tiny.encode(["hello"] * 5, batch_size=2, on_batch=seen.append)
    assert emb.shape == (5, 32) and seen == [2, 2, 1]
    np.testing.assert_allclose(Encoder.tiny_random(seed=1).encode(["hello"]), emb[:1], atol=1e-6)
