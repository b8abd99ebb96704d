"""Per-token int8 (W8A8) rewrite of the fused MiniLM graph: int8 GEMMs that stay batch-invariant.

Why per token: dynamic int8 that scales activations per *tensor* (ORT's ``quantize_dynamic``, the
``fast`` profile) is fast but gives a text a different vector in every batch (its scale is the
batch's range) and moves top-5 neighbours. Here each token row gets its own scale, computed
from that row only, and the GEMM is exact integer arithmetic, so a row's result cannot depend on the
other rows: batch invariance is that of fp32 itself
(``docs/quantization.md#batch-invariance-why-per-tensor-dynamic-int8-is-never-the-default``).

Why not ``MatMulNBits`` (the previous default): on ORT 1.32 its 8-bit kernel runs at about fp32
speed on a VNNI CPU, while ``MatMulInteger`` runs at the int8 rate ``avx512_vnni`` promises
(``docs/quantization.md#why-matmulnbits-stopped-being-the-default``).

The rewrite, each step chosen on held-out corpora
(``docs/quantization.md#how-the-per-token-graph-is-built-hivememembedw8a8py``):

* Every linear layer — Q, K and V projections, attention output, FFN in, FFN out — becomes
  ``MatMulIntegerToFloat``: uint8 activations with zero point 128 (symmetric int8 in ORT's u8×s8
  kernels) times int8 weights with one scale per output channel; the per-row activation scale is
  applied to the output by the same op.
* Per-row scale: ``ReduceMax``/``ReduceMin`` along the row → absmax/127 → blocked
  ``QuantizeLinear`` (block = the row). Inputs whose rows carry a few huge channels (the LayerNorm
  outputs) get SmoothQuant factors ``s = amax_x^α / amax_w^(1-α)``: the
  activation is divided by ``s`` and the weight rows multiplied by it. α is chosen per layer on
  calibration activations (never the evaluation texts) by the product's relative error. For the
  attention output the division folds exactly into the V projection (softmax rows sum to 1).
* FFN out (K = 1536 GELU outputs) is quantized per token *per 384-wide block*: one scale per row
  over 1536 values is too coarse to keep top-5 neighbours. The four partial products are summed.
* The fused ``Attention`` op only takes fp32 weights, so it is split into three int8 projections
  feeding ``MultiHeadAttention`` (same kernel family, same mask semantics: key lengths).
* LayerNorm, GELU, softmax and the embeddings stay fp32.

Weights keep ±127 unless the CPU's u8×s8 kernel saturates 16-bit pair sums (AVX2 without VNNI
uses ``vpmaddubsw``): ``int8_pairs_saturate()`` runs a two-element product to find out, and then
weights use ±63 (ORT's ``reduce_range``). Nodes are found by op type and graph order, never by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from onnx import NodeProto

#: ("qkv" | "attn_out" | "ffn_in" | "ffn_out", layer index)
LayerKey = tuple[str, int]

#: Width of the per-token blocks of the FFN-out input (its K is 1536): the best fidelity per cost of
#: the widths tried (docs/quantization.md#the-recipes-measured-side-by-side-2026-11-26).
FFN_OUT_BLOCK = 384
#: SmoothQuant strengths tried per layer (0 = no smoothing).
ALPHAS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Layers whose inputs get smoothed. FFN out is left out: with 384-wide blocks, smoothing it changed
#: neither mean cosine nor top-5 beyond noise, and its Mul is a pass over 1536 floats per token
#: (docs/quantization.md#the-recipes-measured-side-by-side-2026-11-26).
SMOOTHED_KINDS = ("qkv", "attn_out", "ffn_in")
#: Calibration rows kept per layer input (tokens): enough for stable channel maxima.
MAX_CALIBRATION_ROWS = 4096

_MS = "com.microsoft"
_KIND_BY_PRODUCER = {
    "Attention": "attn_out",
    "SkipLayerNormalization": "ffn_in",
    "LayerNormalization": "ffn_in",
    "BiasGelu": "ffn_out",
}


def layer_inputs(model: Any) -> dict[LayerKey, tuple[str, str]]:
    """Each linear layer's (input tensor, fp32 weight initializer) in the fused graph."""
    init = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found: dict[LayerKey, tuple[str, str]] = {}
    layer = -1
    for node in model.graph.node:
        if node.op_type == "Attention":
            layer += 1
            found[("qkv", layer)] = (node.input[0], node.input[1])
        elif node.op_type == "MatMul" and node.input[1] in init and layer >= 0:
            source = producer.get(node.input[0])
            kind = _KIND_BY_PRODUCER.get(source.op_type) if source is not None else None
            if kind is None:
                raise ValueError(
                    f"unexpected MatMul input from {source.op_type if source else 'a graph input'}"
                )
            found[(kind, layer)] = (node.input[0], node.input[1])
    if not found:
        raise ValueError("no Attention/MatMul layers found: is this the fused BERT graph?")
    return found


def calibration_activations(model: Any, feeds: Iterable[dict[str, np.ndarray]]) -> dict[LayerKey, np.ndarray]:
    """Run the fp32 graph on ``feeds`` and keep each linear layer's input rows (real tokens only)."""
    import onnx
    import onnxruntime as ort

    taps = {key: name for key, (name, _) in layer_inputs(model).items()}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in sorted(set(taps.values())):
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    rows: dict[str, list[np.ndarray]] = {name: [] for name in taps.values()}
    for feed in feeds:
        outputs = dict(
            zip(names, session.run(None, {k: v for k, v in feed.items() if k in wanted}), strict=True)
        )
        real = feed["attention_mask"].astype(bool)
        for name in rows:
            rows[name].append(outputs[name][real])
    out = {}
    for key, name in taps.items():
        x = np.concatenate(rows[name])
        step = max(1, len(x) // MAX_CALIBRATION_ROWS)
        out[key] = x[::step]
    return out


def choose_smoothing(
    x: np.ndarray, w: np.ndarray, block: int | None = None
) -> tuple[float, np.ndarray | None]:
    """(α, per-input-channel factors or None) minimising the int8 product's error on ``x``.

    Simulates exactly what the graph does: per-row (per ``block``) absmax int8 activations, per-column
    absmax int8 weights; returns the α in ``ALPHAS`` with the smallest ``‖Ŷ − Y‖ / ‖Y‖``.
    """
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    y = x @ w
    a = np.maximum(np.abs(x).max(axis=0), 1e-5)
    wmax = np.maximum(np.abs(w).max(axis=1), 1e-5)
    best: tuple[float, float, np.ndarray | None] | None = None
    for alpha in ALPHAS:
        s = (a**alpha / wmax ** (1 - alpha)) if alpha else None
        xs, ws = (x, w) if s is None else (x / s, w * s[:, None])
        err = float(np.linalg.norm(_fake_rows(xs, block) @ _fake_cols(ws, 127) - y) / np.linalg.norm(y))
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return best[1], None if best[2] is None else best[2].astype(np.float32)


def _fake_rows(x: np.ndarray, block: int | None) -> np.ndarray:
    width = block or x.shape[1]
    xb = x.reshape(x.shape[0], -1, width)
    scale = np.maximum(np.abs(xb).max(axis=2, keepdims=True), 1e-10) / 127
    fake: np.ndarray = (np.round(xb / scale) * scale).reshape(x.shape)
    return fake


def _fake_cols(w: np.ndarray, qmax: int) -> np.ndarray:
    scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / qmax
    fake: np.ndarray = np.round(w / scale) * scale
    return fake


def int8_pairs_saturate() -> bool:
    """True if this CPU's u8×s8 GEMM saturates 16-bit pair sums (AVX2 without VNNI).

    255·127 + 255·127 = 64,770 does not fit in int16: a ``vpmaddubsw`` kernel returns 32,767 for the
    raw product, so the zero-point-corrected result is wrong. VNNI and ARM dot-product kernels
    accumulate in 32 bits and get it right.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "za"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [
            numpy_helper.from_array(np.full((k, 1), 127, np.int8), "b"),
            numpy_helper.from_array(np.array(128, np.uint8), "za"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = int(session.run(None, {"a": np.full((1, k), 255, np.uint8)})[0][0, 0])
    return got != k * 127 * 127


def rewrite(
    model: Any,
    smoothing: dict[LayerKey, np.ndarray],
    *,
    keep_fp32: Sequence[LayerKey] = (),
    weight_max: int = 127,
    ffn_out_block: int | None = FFN_OUT_BLOCK,
) -> Any:
    """Rewrite the fused fp32 ``model`` in place into the per-token W8A8 graph (see module docs).

    ``smoothing`` maps a layer to its per-input-channel factors (from ``choose_smoothing``);
    ``keep_fp32`` layers stay fp32 MatMuls / the fused Attention.
    """
    return _Rewriter(model, smoothing, set(keep_fp32), weight_max, ffn_out_block).run()


class _Rewriter:
    def __init__(
        self,
        model: Any,
        smoothing: dict[LayerKey, np.ndarray],
        keep_fp32: set[LayerKey],
        weight_max: int,
        ffn_out_block: int | None,
    ) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.smoothing = smoothing
        self.keep = keep_fp32
        self.weight_max = weight_max
        self.ffn_out_block = ffn_out_block
        self.weights = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.count = 0
        self.head: list[NodeProto] = []  # nodes computed once per run (shared zero points)
        self.zero_points: dict[int, str] = {}

    # -- small builders -------------------------------------------------------------------------

    def name(self, base: str) -> str:
        self.count += 1
        return f"w8a8/{base}_{self.count}"

    def const(self, value: np.ndarray, base: str) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
        from onnx import helper

        domain = _MS if op in ("MatMulIntegerToFloat", "MultiHeadAttention") else ""
        return helper.make_node(op, inputs, outputs, name=self.name(op), domain=domain, **attrs)

    def zero_point(self, blocks: int) -> str:
        """A uint8 tensor of 128s shaped [batch, seq, 1] (or [batch, seq, blocks, 1]), built once per run."""
        from onnx import TensorProto, helper

        if blocks not in self.zero_points:
            shape, full = self.name("shape"), self.name("zp_shape")
            tail = [1] if blocks == 1 else [blocks, 1]
            self.zero_points[blocks] = zp = self.name("zp128")
            self.head += [
                self.node("Shape", [self.graph.input[0].name], [shape]),
                self.node("Concat", [shape, self.const(np.array(tail, np.int64), "tail")], [full], axis=0),
                self.node(
                    "ConstantOfShape",
                    [full],
                    [zp],
                    value=helper.make_tensor("v", TensorProto.UINT8, [1], [128]),
                ),
            ]
        return self.zero_points[blocks]

    # -- the rewrite ----------------------------------------------------------------------------

    def run(self) -> Any:
        self.axis = self.const(np.array([-1], np.int64), "axis")
        self.inv127 = self.const(np.array(1 / 127, np.float32), "inv127")
        self.tiny = self.const(np.array(1e-12, np.float32), "tiny")
        self.zp_scalar = self.const(np.array(128, np.uint8), "zp")
        keys = {(n, w): key for key, (n, w) in layer_inputs(self.model).items()}
        nodes: list[NodeProto] = []
        layer = -1
        for node in self.graph.node:
            if node.op_type == "Attention":
                layer += 1
                nodes += self.attention(node, layer)
            elif node.op_type == "MatMul" and (node.input[0], node.input[1]) in keys:
                nodes += self.linear(node, keys[(node.input[0], node.input[1])])
            else:
                nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(self.head + nodes)
        used = {i for n in self.graph.node for i in n.input}
        kept = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        for opset in self.model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, 21)  # blocked QuantizeLinear
        self.model.ir_version = max(self.model.ir_version, 10)
        return self.model

    def attention(self, node: Any, layer: int) -> list[NodeProto]:
        x, w_name, b_name, mask = node.input[:4]
        w = self.weights[w_name].astype(np.float32)
        b = self.weights[b_name].astype(np.float32)
        hidden = w.shape[0]
        # Smoothing of the attention-output input folds into V: context = softmax · V is linear in V.
        s_out = self.smoothing.get(("attn_out", layer))
        if s_out is not None:
            w, b = w.copy(), b.copy()
            w[:, 2 * hidden :] /= s_out
            b[2 * hidden :] /= s_out
        if ("qkv", layer) in self.keep:
            node.input[1] = self.const(w, "qkv_weight")
            node.input[2] = self.const(b, "qkv_bias")
            return [node]
        s = self.smoothing.get(("qkv", layer))
        if s is not None:
            w = w * s[:, None]
        nodes, xq, scale = self.quantize_rows(x, hidden, None if s is None else 1 / s)
        parts = [self.name(p) for p in ("q", "k", "v")]
        for i, out in enumerate(parts):
            nodes.append(self.int8_matmul(xq, scale, w[:, i * hidden : (i + 1) * hidden], out))
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        nodes.append(
            self.node(
                "MultiHeadAttention",
                [*parts, self.const(b, "qkv_bias"), mask],
                list(node.output),
                num_heads=heads,
            )
        )
        return nodes

    def linear(self, node: Any, key: LayerKey) -> list[NodeProto]:
        kind = key[0]
        w = self.weights[node.input[1]].astype(np.float32)
        s = self.smoothing.get(key)
        if key in self.keep:
            if s is not None and kind == "attn_out":  # V was divided by s: multiply it back in here
                node.input[1] = self.const(w * s[:, None], "weight")
            return [node]
        if s is not None:
            w = w * s[:, None]
        # The attention-output input was already divided by s inside V.
        inverse = None if (s is None or kind == "attn_out") else 1 / s
        block = self.ffn_out_block if kind == "ffn_out" else None
        if block and block < w.shape[0] and w.shape[0] % block == 0:
            return self.blocked_linear(node.input[0], w, block, inverse, node.output[0])
        nodes, xq, scale = self.quantize_rows(node.input[0], w.shape[0], inverse)
        nodes.append(self.int8_matmul(xq, scale, w, node.output[0]))
        return nodes

    def quantize_rows(
        self, x: str, width: int, inverse: np.ndarray | None = None, blocks: int = 1
    ) -> tuple[list[NodeProto], str, str]:
        """Nodes turning float rows of ``width`` (the last axis of ``x``) into uint8 + one scale per row."""
        nodes = []
        if inverse is not None:
            smoothed = self.name("smoothed")
            nodes.append(self.node("Mul", [x, self.const(inverse.astype(np.float32), "smooth")], [smoothed]))
            x = smoothed
        hi, lo, neg_lo, amax, scale, xq = (
            self.name(n) for n in ("max", "min", "neg_min", "absmax", "scale", "xq")
        )
        nodes += [
            # max(max(x), -min(x)) reads the row twice but writes nothing: cheaper than Abs+ReduceMax
            # (docs/quantization.md#how-the-per-token-graph-is-built-hivememembedw8a8py).
            self.node("ReduceMax", [x, self.axis], [hi], keepdims=1),
            self.node("ReduceMin", [x, self.axis], [lo], keepdims=1),
            self.node("Neg", [lo], [neg_lo]),
            self.node("Max", [hi, neg_lo, self.tiny], [amax]),  # an all-zero row must not divide by 0
            self.node("Mul", [amax, self.inv127], [scale]),
            self.node("QuantizeLinear", [x, scale, self.zero_point(blocks)], [xq], axis=-1, block_size=width),
        ]
        return nodes, xq, scale

    def int8_matmul(self, xq: str, scale: str, w: np.ndarray, out: str) -> Any:
        ws = np.maximum(np.abs(w).max(axis=0), 1e-12) / self.weight_max
        wq = np.clip(np.round(w / ws), -self.weight_max, self.weight_max).astype(np.int8)
        return self.node(
            "MatMulIntegerToFloat",
            [
                xq,
                self.const(wq, "weight_int8"),
                scale,
                self.const(ws.astype(np.float32), "weight_scale"),
                self.zp_scalar,
            ],
            [out],
        )

    def blocked_linear(
        self, x: str, w: np.ndarray, block: int, inverse: np.ndarray | None, out: str
    ) -> list[NodeProto]:
        k, n = w.shape
        blocks = k // block
        nodes = []
        reshaped = self.name("blocks")
        if inverse is not None:
            smoothed = self.name("smoothed")
            nodes.append(self.node("Mul", [x, self.const(inverse.astype(np.float32), "smooth")], [smoothed]))
            x = smoothed
        nodes.append(
            self.node(
                "Reshape", [x, self.const(np.array([0, 0, blocks, block], np.int64), "shape")], [reshaped]
            )
        )
        quant, xq, scale = self.quantize_rows(reshaped, block, None, blocks)
        nodes += quant
        parts_q = [self.name("xq_part") for _ in range(blocks)]
        parts_s = [self.name("scale_part") for _ in range(blocks)]
        nodes.append(self.node("Split", [xq], parts_q, axis=2, num_outputs=blocks))
        nodes.append(self.node("Split", [scale], parts_s, axis=2, num_outputs=blocks))
        partial = [self.name("partial") for _ in range(blocks)]
        for i in range(blocks):
            nodes.append(self.int8_matmul(parts_q[i], parts_s[i], w[i * block : (i + 1) * block], partial[i]))
        total = self.name("sum")
        nodes.append(self.node("Sum", partial, [total]))
        nodes.append(self.node("Reshape", [total, self.const(np.array([0, 0, n], np.int64), "shape")], [out]))
        return nodes
