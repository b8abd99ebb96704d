"""Int8 variants of the fused fp32 MiniLM graph, chosen by measured fidelity, speed — and determinism.

Three recipes (``profile``); ``prepare`` builds all of them, verifies each against
sentence-transformers and makes the fastest accepted one the default on the machine at hand:

* ``"w8a8"`` (``hivemem.embed.w8a8``): every linear layer, attention projections included, as an int8
  GEMM with one activation scale per *token* row, per-channel weights, SmoothQuant factors picked per
  layer on calibration text, and per-token-per-block scales for the 1536-wide FFN output. Batch
  invariant by construction (a row's scale depends on that row only), within the acceptance gate,
  and clearly faster than ``nbits`` on a VNNI CPU.
* ``"nbits"``: every MatMul with a constant weight becomes ``MatMulNBits`` (8-bit symmetric weights in
  blocks of 128, ``accuracy_level=4``: activations quantized per row and 128-wide block at run time).
  Nearly lossless and batch-independent, but on ORT 1.32 its 8-bit kernel runs at about fp32 speed
  on a VNNI CPU; the safe fallback where ``w8a8`` fails its checks.
* ``"fast"``: plain ``quantize_dynamic`` per-channel int8. One activation scale per *tensor* — the
  batch's range — so a text's vector depends on its batch-mates and top-5 neighbours move. Opt-in
  only.

Figures for the three: ``docs/quantization.md#the-recipes-measured-side-by-side-2026-11-26``.

Why not per-tensor dynamic int8 for the default: MiniLM's hidden states carry a few outlier channels,
so one scale for the whole ``[batch·seq, hidden]`` matrix is coarse, no single node is to blame (the
error spreads over the FFN MatMuls of every layer) and a content-addressed cache would store whichever
batch's vector came first. Numbers for every recipe tried, kept or dropped: ``docs/quantization.md``.

Node selection is by op type and graph order, never by name, because names differ between exports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from onnx import ModelProto

Profile = Literal["w8a8", "nbits", "fast"]
PROFILES: tuple[Profile, ...] = ("w8a8", "nbits", "fast")

#: Blocks of 128 along K: the best fidelity per speed of the sizes tried
#: (docs/quantization.md#measurements-behind-the-design).
NBITS_BLOCK_SIZE = 128
#: Self-check threshold on calibration texts, with a margin below each recipe's minimum there
#: (docs/quantization.md#measurements-behind-the-design).
MIN_CALIBRATION_COS = {"w8a8": 0.99, "nbits": 0.99, "fast": 0.95}


def quantize_int8(
    fp32_onnx: Path,
    out: Path,
    calibration_texts: Sequence[str] | None = None,
    tokenizer_path: Path | None = None,
    *,
    profile: Profile = "w8a8",
) -> None:
    """Write an int8 variant of the fused fp32 graph ``fp32_onnx`` to ``out`` (atomically).

    ``calibration_texts`` (with ``tokenizer_path``): ``"w8a8"`` needs them to choose its SmoothQuant
    factors (held-out text, never the texts a variant is judged on); the data-free recipes only use
    them for the self-check. When given, both graphs embed them and the call fails with
    ``ValueError`` if any vector's cosine to fp32 is below ``MIN_CALIBRATION_COS[profile]``; ``out``
    is then left untouched. Needs the ``onnx`` package (export time only); serving needs only
    onnxruntime.
    """
    import onnx

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if profile not in PROFILES:
        raise ValueError(f"unknown quantization profile {profile!r}; expected one of {PROFILES}")
    if not fp32_onnx.is_file():
        raise ValueError(f"fp32 ONNX model not found: {fp32_onnx}")
    if out.resolve() == fp32_onnx.resolve():
        raise ValueError("out must differ from fp32_onnx: the fp32 graph is the reference")
    if calibration_texts is not None and tokenizer_path is None:
        raise ValueError("calibration_texts need tokenizer_path to be tokenized")
    if calibration_texts is not None and (isinstance(calibration_texts, str) or not calibration_texts):
        raise ValueError("calibration_texts must be a non-empty sequence of strings")
    if profile == "w8a8" and calibration_texts is None:
        raise ValueError("the 'w8a8' profile needs calibration_texts (and tokenizer_path) for its smoothing")
    out.parent.mkdir(parents=True, exist_ok=True)

    model = onnx.load(str(fp32_onnx))
    _name_unnamed_nodes(model)
    if not any(n.op_type == "MatMul" for n in model.graph.node):
        raise ValueError(f"{fp32_onnx} has no MatMul nodes: is it the fused MiniLM graph?")

    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", prefix=".quant-", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if profile == "w8a8":
            assert calibration_texts is not None and tokenizer_path is not None
            _w8a8_recipe(model, tmp, calibration_texts, Path(tokenizer_path))
        elif profile == "nbits":
            _nbits_recipe(model, tmp)
        else:
            _fast_recipe(model, tmp)
        if calibration_texts is not None:
            assert tokenizer_path is not None
            worst = _min_cosine(fp32_onnx, tmp, calibration_texts, Path(tokenizer_path))
            if worst < MIN_CALIBRATION_COS[profile]:
                raise ValueError(
                    f"int8 {profile!r} variant drifted from fp32 on the calibration texts: min cosine "
                    f"{worst:.4f} < {MIN_CALIBRATION_COS[profile]}"
                )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _name_unnamed_nodes(model: ModelProto) -> None:
    """``nodes_to_quantize`` selects by name, so every node needs a unique one."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_hivemem_{i}"
        seen.add(node.name)


def _dynamic_kwargs() -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType

    # Fused contrib ops (SkipLayerNormalization, BiasGelu…) have no ONNX shape inference, so the
    # quantizer must be told their outputs are float. reduce_range keeps u8×s8 products clear of
    # int16 saturation on AVX2 machines without VNNI, at a small cost in fidelity
    # (docs/quantization.md#earlier-recipes-2026-11-25-before-per-token-w8a8).
    return {
        "weight_type": QuantType.QInt8,
        "per_channel": True,
        "reduce_range": True,
        "extra_options": {"DefaultTensorType": onnx.TensorProto.FLOAT},
    }


def _w8a8_recipe(model: ModelProto, dst: Path, texts: Sequence[str], tokenizer_path: Path) -> None:
    from hivemem.embed import w8a8

    activations = w8a8.calibration_activations(model, _feeds(texts, tokenizer_path))
    weights = {key: _initializer(model, name) for key, (_, name) in w8a8.layer_inputs(model).items()}
    smoothing = {}
    for key, x in activations.items():
        if key[0] in w8a8.SMOOTHED_KINDS:
            _, factors = w8a8.choose_smoothing(x, weights[key])
            if factors is not None:
                smoothing[key] = factors
    weight_max = 63 if w8a8.int8_pairs_saturate() else 127
    w8a8.rewrite(model, smoothing, weight_max=weight_max)
    _save(model, dst)


def _initializer(model: ModelProto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def _nbits_recipe(model: ModelProto, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=NBITS_BLOCK_SIZE, is_symmetric=True, accuracy_level=4, bits=8
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    nbits_model = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in nbits_model.graph.node):
        raise ValueError("no MatMul with a constant weight was found to quantize")
    _save(nbits_model, dst)


def _fast_recipe(model: ModelProto, dst: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory(dir=dst.parent) as scratch:
        stage = Path(scratch) / "fp32.onnx"
        _save(model, stage)
        quantize_dynamic(str(stage), str(dst), **_dynamic_kwargs())


def _save(model: ModelProto, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))


def _min_cosine(reference: Path, candidate: Path, texts: Sequence[str], tokenizer_path: Path) -> float:
    """Lowest cosine between mean-pooled, normalised outputs of two graphs on ``texts``."""
    ref, cand = (_embed(p, texts, tokenizer_path) for p in (reference, candidate))
    return float((ref * cand).sum(axis=1).min())


def _feeds(texts: Sequence[str], tokenizer_path: Path) -> Iterator[dict[str, np.ndarray]]:
    """Model inputs for ``texts`` in batches of 32, padded per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    for start in range(0, len(texts), 32):
        encodings = tokenizer.encode_batch(list(texts[start : start + 32]))
        yield {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def _embed(model_path: Path, texts: Sequence[str], tokenizer_path: Path) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    chunks = []
    for feed in _feeds(texts, tokenizer_path):
        hidden = session.run(None, {k: v for k, v in feed.items() if k in wanted})[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        chunks.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(chunks)
