"""The compiled encoder at run time: an ONNX Runtime session plus the tokenizer, no torch.

Serving and the pyfunc flavor load this; `models.compile` (which needs torch)
only produces the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

Progress = Callable[[int], None]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embedding"
# ORT 1.31's CPU SkipLayerNormalization kernel takes ~27 us on a 10x384 input where
# Add + LayerNormalization take ~8 us; keeping them apart made MiniLM INT8 ~6% faster at
# batch 1 (2.28 vs 2.42 ms per run), so neither the optimizer nor the session fuses them.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class OnnxEncoder:
    """`Encoder.encode` over an ONNX Runtime session: same tokens, batches and row order."""

    def __init__(self, model_path: str | Path, tokenizer: Any, max_length: int = 64,
                 threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graph is a chain: parallelism is inside ops
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=list(DISABLED_OPTIMIZERS))
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.threads = threads
        self._dim = int(self.session.get_outputs()[0].shape[-1])
        self._fast = _rust_tokenizer(tokenizer, max_length)

    @classmethod
    def load(cls, model_path: str | Path, tokenizer_dir: str | Path, max_length: int = 64,
             threads: int = 1) -> OnnxEncoder:
        """An ONNX file plus a tokenizer folder (as `Encoder.save` or `save_pretrained` wrote it)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        return cls(model_path, tokenizer, max_length, threads)

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The three int64 model inputs, padded to the longest text (as `Encoder.tokenize`)."""
        if self._fast is not None:
            rows = [(e.ids, e.attention_mask, e.type_ids) for e in self._fast.encode_batch(list(texts))]
            ids, mask, types = np.asarray(rows, dtype=np.int64).transpose(1, 0, 2)
            return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        # Right padding always: the fused graph reads each sequence's length off the mask.
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               padding_side="right", return_tensors="np")
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        types = batch.get("token_type_ids")
        return {"input_ids": ids, "attention_mask": np.asarray(batch["attention_mask"], dtype=np.int64),
                "token_type_ids": np.zeros_like(ids) if types is None else np.asarray(types, np.int64)}

    def forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run([OUTPUT], batch)[0], dtype=np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = 1,
               on_batch: Progress | None = None) -> np.ndarray:
        """(len(texts), dim) float32 embeddings, `batch_size` texts (sorted by length) per ONNX Runtime call.

        One text per call by default: the INT8 graph quantizes activations with one scale per call, so
        in a batch a text's embedding depended on its neighbours and their padding (on HWU64: cosine to
        the same text alone down to 0.95, 0.8% of answers flipped). Alone, every text gets the same
        answer wherever it comes from (serving's micro-batches, the gates, the benches), and at one
        thread it costs nothing: 769 texts/s either way, measured (padding a batch to its longest text
        wastes what batching saves)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.forward(self.tokenize([texts[i] for i in idx]))
            if on_batch is not None:
                on_batch(len(idx))
        return out


def _rust_tokenizer(tokenizer: Any, max_length: int) -> Any | None:
    """A private copy of a fast tokenizer's Rust backend set up as `Encoder.tokenize` calls it.

    Calling the backend directly costs ~30 us per request instead of ~100-150 us through
    the transformers wrapper, a few percent of an INT8 forward pass. A copy, because the
    wrapper rewrites its backend's padding and truncation on every call.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None:
        return None  # the wrapper path handles everything else
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(backend.to_str())
    fast.enable_truncation(max_length, strategy="longest_first", direction=tokenizer.truncation_side)
    fast.enable_padding(direction="right", pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
                        pad_type_id=tokenizer.pad_token_type_id)
    return fast
