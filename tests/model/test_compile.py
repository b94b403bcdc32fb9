"""Compiled encoders behave like the torch encoder they come from: export, fusion, INT8.

Tiny random BERT for speed; the one MiniLM test is marked slow.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.compile import OnnxEncoder, export_onnx, optimize_onnx
from models.encoder import Encoder
from models.quantize import (
    QuantizeConfig,
    compare_embeddings,
    compare_predictions,
    file_size_mb,
    measure_latency,
    quantize_onnx,
    select_nodes,
)

TINY = Encoder.tiny_random(seed=3)
TEXTS = ["turn on wifi", "a", "text mom I'm late for the meeting, sorry!!", "navigate to the airport",
         "", "play some jazz", "Ünïcödé café naïve résumé", "set an alarm for seven " * 12,
         "wifi", "call   the  office", "what's the weather like tomorrow in Berlin?", "x"]
# Measured on TINY: min cosine 0.99993 for the default INT8 config, on TEXTS and on 2,000
# generated utterances (random weights give small, well-spread activations); static 0.9998.
TINY_INT8_MIN_COSINE = 0.999
# Measured on MiniLM (bench/quantize.py, 6,000 generated utterances): mean 0.9904, min 0.955.
MINILM_INT8_MEAN_COSINE = 0.985
MINILM_INT8_MIN_COSINE = 0.93


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("compile")
    fp32 = export_onnx(TINY, work / "fp32.onnx")
    fused = optimize_onnx(fp32, work / "fused.onnx", num_heads=2, hidden_size=TINY.dim)
    int8 = quantize_onnx(fused, work / "int8.onnx", QuantizeConfig())
    TINY.save(work / "tokenizer")
    return {"fp32": fp32, "fused": fused, "int8": int8, "tokenizer": work / "tokenizer"}


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return TINY.encode(TEXTS, batch_size=4)


def test_export_has_the_serving_signature(files: dict[str, Path]) -> None:
    graph = onnx.load(str(files["fp32"])).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    (out,) = graph.output
    assert out.name == "embedding" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == ["batch", TINY.dim]


@pytest.mark.parametrize("name", ["fp32", "fused"])
def test_onnx_embeddings_match_torch(files: dict[str, Path], reference: np.ndarray, name: str) -> None:
    emb = OnnxEncoder(files[name], TINY.tokenizer, TINY.max_length).encode(TEXTS, batch_size=4)
    assert emb.shape == reference.shape and emb.dtype == np.float32
    assert compare_embeddings(reference, emb)["cosine_min"] > 0.9999
    np.testing.assert_allclose(emb, reference, atol=1e-5)


def test_optimizer_fuses_the_transformer(files: dict[str, Path]) -> None:
    ops = Counter(n.op_type for n in onnx.load(str(files["fused"])).graph.node)
    assert ops["Attention"] == 2 and ops["EmbedLayerNormalization"] == 1 and ops["BiasGelu"] == 2
    assert ops["Softmax"] == 0 and ops["Erf"] == 0 and ops["Transpose"] == 0
    assert ops["LayerNormalization"] == 4 and ops["SkipLayerNormalization"] == 0  # kept apart: faster


def test_int8_is_smaller_and_agrees(files: dict[str, Path], reference: np.ndarray) -> None:
    assert file_size_mb(files["int8"]) < file_size_mb(files["fused"]) / 3.5
    ops = Counter(n.op_type for n in onnx.load(str(files["int8"])).graph.node)
    assert ops["QAttention"] == 2 and ops["QEmbedLayerNormalization"] == 1
    emb = OnnxEncoder(files["int8"], TINY.tokenizer, TINY.max_length).encode(TEXTS, batch_size=4)
    assert compare_embeddings(reference, emb)["cosine_min"] >= TINY_INT8_MIN_COSINE


def test_activation_matmuls_stay_fp32(files: dict[str, Path]) -> None:
    model = onnx.load(str(files["fused"]))
    chosen = set(select_nodes(model, QuantizeConfig()))
    weights = {t.name for t in model.graph.initializer}
    pooling = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in weights]
    assert pooling and not chosen & set(pooling)
    kept = select_nodes(model, QuantizeConfig(exclude=("Attention_*",)))
    assert not any(n.startswith("Attention_") for n in kept) and len(kept) == len(chosen) - 2


def test_int8_embeddings_do_not_depend_on_the_other_texts_of_a_call(files: dict[str, Path]) -> None:
    # The INT8 graph scales activations per call: batched, a text would take its neighbours' range.
    encoder = OnnxEncoder(files["int8"], TINY.tokenizer, TINY.max_length)
    alone = np.vstack([encoder.encode([t]) for t in TEXTS])
    together = encoder.encode(TEXTS)
    reversed_order = encoder.encode(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(reversed_order, alone, atol=1e-6)
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS))  # what one call per batch would give instead
    assert np.abs(batched - alone).max() > 1e-4, "the per-call scales this default avoids"


def test_onnx_encoder_orders_and_batches_like_encoder(files: dict[str, Path], reference: np.ndarray) -> None:
    onnx_encoder = OnnxEncoder.load(files["fused"], files["tokenizer"], max_length=TINY.max_length)
    assert onnx_encoder.dim == TINY.dim and onnx_encoder.max_length == TINY.max_length
    seen: list[int] = []
    emb = onnx_encoder.encode(TEXTS, batch_size=5, on_batch=seen.append)
    assert seen == [5, 5, 2]
    np.testing.assert_allclose(emb, reference, atol=1e-5)  # row i is text i whatever the batching
    one_by_one = np.vstack([onnx_encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(one_by_one, reference, atol=1e-5)
    assert onnx_encoder.encode([]).shape == (0, TINY.dim)


def test_left_padding_tokenizers_are_padded_right(files: dict[str, Path], reference: np.ndarray) -> None:
    # The fused attention takes sequence lengths from the mask, which assumes right padding.
    from transformers import AutoTokenizer

    left = AutoTokenizer.from_pretrained(files["tokenizer"], padding_side="left")
    for fast in (True, False):
        onnx_encoder = OnnxEncoder(files["fused"], left, TINY.max_length)
        if not fast:
            onnx_encoder._fast = None
        np.testing.assert_allclose(onnx_encoder.encode(TEXTS, batch_size=4), reference, atol=1e-5)


def test_fast_tokenizer_path_gives_the_wrapper_tokens(files: dict[str, Path]) -> None:
    fast = OnnxEncoder(files["fused"], TINY.tokenizer, TINY.max_length)
    slow = OnnxEncoder(files["fused"], TINY.tokenizer, TINY.max_length)
    slow._fast = None
    for start in range(0, len(TEXTS), 5):
        a, b = fast.tokenize(TEXTS[start : start + 5]), slow.tokenize(TEXTS[start : start + 5])
        torch_batch = TINY.tokenize(TEXTS[start : start + 5])
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
            np.testing.assert_array_equal(a[name], torch_batch[name].numpy())


@pytest.mark.parametrize("kwargs", [
    {"method": "qat"}, {"weight_type": "int4"}, {"activation_type": "float8"}, {"op_types": ()},
    {"op_types": ("Conv",)}, {"calibration": "mse"}, {"calibration_size": 0}, {"exclude": "Attention_*"},
])
def test_quantize_config_rejects_bad_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        QuantizeConfig(**kwargs)  # type: ignore[arg-type]


def test_quantize_refuses_to_select_nothing(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no node"):
        quantize_onnx(files["fused"], tmp_path / "x.onnx", QuantizeConfig(op_types=("Gather",)))
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(files["fused"], tmp_path / "x.onnx", QuantizeConfig(method="static"))


def test_static_quantization_calibrates_on_texts(files: dict[str, Path], reference: np.ndarray,
                                                 tmp_path: Path) -> None:
    config = QuantizeConfig(method="static", calibration_size=8, calibration_batch=4)
    path = quantize_onnx(files["fused"], tmp_path / "static.onnx", config, TEXTS, TINY.tokenizer)
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    emb = OnnxEncoder(path, TINY.tokenizer, TINY.max_length).encode(TEXTS)
    assert compare_embeddings(reference, emb)["cosine_min"] > 0.995


def test_report_helpers() -> None:
    a = np.eye(3, dtype=np.float32)
    b = a.copy()
    b[2] = [0.0, 1.0, 0.0]
    cos = compare_embeddings(a, b)
    assert cos["cosine_min"] == 0.0 and cos["cosine_mean"] == pytest.approx(2 / 3)
    agree = compare_predictions(a, b, y_true=np.array([0, 1, 2]))
    assert agree["agreement"] == pytest.approx(2 / 3) and agree["accuracy_drop"] == pytest.approx(1 / 3)
    calls: list[int] = []
    lat = measure_latency(lambda batch: calls.append(len(batch)), ["a"] * 10, batch_size=3, repeats=2)
    assert lat["calls"] == 6 and calls == [3] * 8 and 0 <= lat["p50_ms"] <= lat["p99_ms"]
    with pytest.raises(ValueError):
        compare_embeddings(a, b[:2])


@pytest.mark.slow
def test_minilm_int8_stays_close_to_fp32(tmp_path: Path) -> None:
    from models.traffic import TrafficConfig, generate

    minilm = Encoder.from_pretrained()
    fp32 = export_onnx(minilm, tmp_path / "fp32.onnx")
    fused = optimize_onnx(fp32, tmp_path / "fused.onnx", num_heads=12, hidden_size=384)
    int8 = quantize_onnx(fused, tmp_path / "int8.onnx")
    assert file_size_mb(fp32) / file_size_mb(int8) >= 3.9
    texts = list(generate(TrafficConfig(seed=11, n_events=400)).events["text"])
    reference = minilm.encode(texts)
    cos = compare_embeddings(reference, OnnxEncoder(int8, minilm.tokenizer, threads=2).encode(texts))
    assert cos["cosine_mean"] >= MINILM_INT8_MEAN_COSINE and cos["cosine_min"] >= MINILM_INT8_MIN_COSINE
    fused_cos = compare_embeddings(reference, OnnxEncoder(fused, minilm.tokenizer, threads=2).encode(texts))
    assert fused_cos["cosine_min"] > 0.9999
