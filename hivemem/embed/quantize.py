"""int8 quantisation of the exported model (provisional recipe: dynamic, per-channel, reduce-range).

Per-tensor dynamic int8 is not acceptable for this model (mean cosine 0.96 vs the reference);
per-channel weights with reduce_range keep mean cosine ≈ 0.991 on this CPU (AVX2, no VNNI).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def quantize_int8(
    fp32_onnx: Path,
    out: Path,
    calibration_texts: Sequence[str] | None = None,
    tokenizer_path: Path | None = None,
) -> None:
    """Write an int8 version of ``fp32_onnx`` to ``out`` (same inputs and outputs)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_onnx),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        # The fused graph has contrib ops shape inference cannot type; their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
