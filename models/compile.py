"""Compile the encoder for serving: ONNX export, ORT graph fusion, and an ORT-backed encoder.

`export_onnx` puts mean pooling and L2 normalisation inside the graph, so the
ONNX output `embedding` is what `Encoder.encode` returns; `optimize_onnx` fuses
embeddings+LayerNorm, attention and bias+GELU with ONNX Runtime's transformer
optimizer; `OnnxEncoder` runs any of these files (FP32 or INT8, see
models.quantize) with the same batching as `Encoder`, and is what serving loads.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from models.encoder import Encoder, Progress

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embedding"
OPSET = 17  # LayerNormalization is one op from 17 on: ORT fuses and runs it natively
# ORT 1.31's CPU SkipLayerNormalization kernel takes ~27 us on a 10x384 input where
# Add + LayerNormalization take ~8 us; keeping them apart made MiniLM INT8 ~6% faster at
# batch 1 (2.28 vs 2.42 ms per run), so neither the optimizer nor the session fuses them.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class _Pooled(torch.nn.Module):
    """BERT + masked mean pooling + L2 norm, with the model called by keyword (transformers 5)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids, use_cache=False).last_hidden_state
        # normalize(sum / count) == normalize(sum), so the masked sum (one batched MatMul)
        # is all the graph needs: fewer nodes than models.encoder.mean_pool, same output.
        summed = torch.bmm(attention_mask.unsqueeze(1).to(hidden.dtype), hidden).squeeze(1)
        return summed / summed.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)


def export_onnx(encoder: Encoder, path: str | Path) -> Path:
    """Export `encoder` to ONNX with dynamic batch and sequence axes; output `embedding` (batch, dim)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = encoder.model.eval()
    # Eager attention traces to the MatMul/Softmax pattern that ORT's attention fusion knows;
    # SDPA traces to a subgraph it leaves unfused. Restored afterwards: the encoder is shared.
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    sample = encoder.tokenize(["a sample sentence to trace the graph with", "short"])
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Known and checked (tests compare outputs across batch sizes and lengths): the
            # legacy exporter is deliberate, the tracer freezes a padding branch of the mask
            # code that is constant for tokenizer output, and indices are never negative.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index")
            torch.onnx.export(
                _Pooled(model), tuple(sample[name] for name in INPUTS), str(path),
                input_names=list(INPUTS), output_names=[OUTPUT],
                dynamic_axes={**dynamic, OUTPUT: {0: "batch"}},
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    log.info("exported %s (%.1f MiB)", path, path.stat().st_size / 2**20)
    return path


def optimize_onnx(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> Path:
    """Fuse embeddings+LayerNorm, attention and bias+GELU (ORT transformer optimizer, model type bert)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False  # see DISABLED_OPTIMIZERS
    # opt_level 0: only the Python fusions, which give portable contrib ops; the session
    # applies its own (hardware specific) optimisations when it loads the file.
    model = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                           opt_level=0, optimization_options=options)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    log.info("fused %s: %s", dst.name, fused)
    model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


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
