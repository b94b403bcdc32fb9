"""Compile the encoder for serving: ONNX export, ORT graph fusion, and an ORT-backed encoder.

`export_onnx` puts mean pooling and L2 normalisation inside the graph, so the
ONNX output `embedding` is what `Encoder.encode` returns; `optimize_onnx` fuses
attention, LayerNorm and GELU with ONNX Runtime's transformer optimizer;
`OnnxEncoder` runs any of these files (FP32 or INT8, see models.quantize) with
the same batching as `Encoder`, and is what serving loads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from models.encoder import Encoder, Progress, mean_pool

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embedding"
OPSET = 17  # LayerNormalization is a single op from 17 on, which ORT fuses and runs natively


class _Pooled(torch.nn.Module):
    """BERT + mean pooling + L2 norm, called with keyword arguments (transformers 5 needs them)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids, use_cache=False)
        return mean_pool(out.last_hidden_state, attention_mask)


def export_onnx(encoder: Encoder, path: str | Path) -> Path:
    """Export `encoder` to ONNX with dynamic batch and sequence axes; output `embedding` (batch, dim)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = encoder.model.eval()
    # Eager attention traces to plain MatMul/Softmax, the pattern ORT's attention fusion knows;
    # SDPA traces to a different subgraph that it leaves unfused.
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    sample = encoder.tokenize(["a sample sentence for tracing", "short"])
    axes = {"batch": 0, "sequence": 1}
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                _Pooled(model),
                tuple(sample[name] for name in INPUTS),
                str(path),
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes={**{name: dict(zip(axes.values(), axes, strict=True)) for name in INPUTS},
                              OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    log.info("exported %s (%.1f MB)", path, path.stat().st_size / 2**20)
    return path


def optimize_onnx(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> Path:
    """Fuse attention, LayerNorm, GELU and bias adds (ORT transformer optimizer, model type bert)."""
    from onnxruntime.transformers.optimizer import optimize_model

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # opt_level 0: Python-side fusions only, so the file stays portable across ORT builds
    # (level 1+ would bake in provider-specific nodes); the session adds its own at load.
    model = optimize_model(str(src), model_type="bert", num_heads=num_heads,
                           hidden_size=hidden_size, opt_level=0)
    log.info("fused ops in %s: %s", dst.name, model.get_fused_operator_statistics())
    model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


class OnnxEncoder:
    """`Encoder.encode` semantics over an ONNX Runtime session (FP32 or quantized file)."""

    def __init__(self, model_path: str | Path, tokenizer: Any, max_length: int = 64,
                 threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one request at a time: parallelism is inside ops
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.threads = threads
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._dim = int(self.session.get_outputs()[0].shape[-1])

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
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="np")
        if "token_type_ids" not in batch:
            batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
        return {k: np.asarray(v, dtype=np.int64) for k, v in batch.items() if k in self._inputs}

    def forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run([OUTPUT], batch)[0], dtype=np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = 64,
               on_batch: Progress | None = None) -> np.ndarray:
        """(len(texts), dim) float32 embeddings, batched exactly as `Encoder.encode` batches."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.forward(self.tokenize([texts[i] for i in idx]))
            if on_batch is not None:
                on_batch(len(idx))
        return out
