"""Compile the encoder for serving: ONNX export and ORT graph fusion.

`export_onnx` puts mean pooling and L2 normalisation inside the graph, so the
ONNX output `embedding` is what `Encoder.encode` returns; `optimize_onnx` fuses
embeddings+LayerNorm, attention and bias+GELU with ONNX Runtime's transformer
optimizer; `models.onnx_encoder.OnnxEncoder` (re-exported here) runs any of
these files (FP32 or INT8, see models.quantize) with the same batching as
`Encoder`, without torch, and is what serving loads.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from models.encoder import Encoder
from models.onnx_encoder import INPUTS, OUTPUT, OnnxEncoder

__all__ = ["INPUTS", "OUTPUT", "OnnxEncoder", "export_onnx", "optimize_onnx"]

log = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization is one op from 17 on: ORT fuses and runs it natively


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
    import onnxruntime.transformers
    from onnxruntime.transformers.fusion_options import FusionOptions

    # ORT's optimizer imports its sibling modules as top-level ones (`from fusion_options import ...`): the package
    # puts its folder on sys.path when first imported, and code that restores sys.path afterwards (pytest's
    # monkeypatch.syspath_prepend does) leaves the optimizer unimportable.
    folder = str(Path(onnxruntime.transformers.__file__).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    from onnxruntime.transformers.optimizer import optimize_model

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False  # see models.onnx_encoder.DISABLED_OPTIMIZERS
    # opt_level 0: only the Python fusions, which give portable contrib ops; the session
    # applies its own (hardware specific) optimisations when it loads the file.
    model = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                           opt_level=0, optimization_options=options)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    log.info("fused %s: %s", dst.name, fused)
    model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst
