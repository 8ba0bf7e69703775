"""int8 quantization with onnxruntime.quantization, in the TFLite-compatible QDQ scheme.

``int8_static``: activations int8 asymmetric per tensor (calibrated on
samples: MinMax, Percentile or Entropy), weights int8 symmetric per output
channel, bias int32 (scale = input scale x weight scale); the graph is in QDQ
form (DequantizeLinear -> float op -> QuantizeLinear), which the profiler and
the C backend read as int8 kernels. ``int8_dynamic``: weights int8 stored,
activations quantized at run time (MatMulInteger/ConvInteger); a host-side
option, not an MCU one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgeloop.backends.c import registry as _registry
from edgeloop.errors import EdgeloopError, UsageError
from edgeloop.passes import PassData, register_pass

CALIBRATIONS = ("minmax", "percentile", "entropy")

# The operators our integer backends run as int8 kernels: the C backend's operator registry
# (edgeloop.backends.c.registry lowers exactly these QDQ patterns). Anything else (e.g. a
# scaler's Mul) stays float rather than producing a graph no device backend can run.
INT8_OPS = _registry.quantizable_ops()


@dataclass(frozen=True)
class Int8Static:
    """int8 static quantization; ``exclude`` names nodes that stay float (mixed precision)."""

    NAME = "int8_static"
    calibration: str = "minmax"
    per_channel: bool = True
    percentile: float = 99.999
    max_calib_samples: int = 256
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()  # () = INT8_OPS (what the integer backends run); ("*",) = all onnxruntime can
    bias_correction: bool = False  # fold each layer's mean int8 output error into its bias (kept if it helps)
    weight_rounding: str = "nearest"  # nearest | adaround (rounding learnt per layer on x_calib, kept if it helps)
    rounding_iters: int = 300


@dataclass(frozen=True)
class Int8Dynamic:
    """int8 dynamic quantization (weights int8, activations quantized per inference)."""

    NAME = "int8_dynamic"
    per_channel: bool = False


class _Reader:
    """onnxruntime CalibrationDataReader over our samples, batch-sized for the model."""

    def __init__(self, model: onnx.ModelProto, x: np.ndarray):
        from edgeloop.search.data import feature_view, input_info

        name, shape, _ = input_info(model)
        xs = feature_view(model, x)
        b = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else 32
        self.feeds = []
        for i in range(0, len(xs) - b + 1 if len(xs) >= b else 1, b):
            chunk = xs[i:i + b]
            if len(chunk) < b and isinstance(shape[0], int):
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), axis=0)])
            self.feeds.append({name: chunk})
        self._it = iter(self.feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.feeds)


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _keep_metadata(src: onnx.ModelProto, out: onnx.ModelProto) -> onnx.ModelProto:
    have = {p.key for p in out.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            out.metadata_props.add().CopyFrom(p)
    return out


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy with fresh value_info (quantization needs tensor types), no-op Casts removed."""
    from edgeloop.graph import reinfer_shapes

    m = reinfer_shapes(model)
    _drop_noop_casts(m)
    _fold_weight_dequant(m)
    return m


def _fold_weight_dequant(m: onnx.ModelProto) -> int:
    """Replace DequantizeLinear nodes whose inputs are all initializers by their float result.

    A TFLite dynamic-range ("hybrid") model imports as float compute over int8 weights behind
    DequantizeLinear; onnxruntime's quantizers expect float weights as initializers ("Expected
    ... to be an initializer"). Folded back to float, the weights are re-quantized on the same
    per-channel symmetric grid, so nothing is lost. Returns the number of nodes folded.
    """
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    kept, folded, new_inits = [], 0, []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input and all(t in inits for t in n.input if t) \
                and n.output[0] not in outputs:
            from onnx import numpy_helper

            q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            zp = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32) \
                if len(n.input) > 2 and n.input[2] else np.zeros_like(scale)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * q.ndim
                shape[axis % q.ndim] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            new_inits.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), n.output[0]))
            folded += 1
            continue
        kept.append(n)
    if folded:
        del g.node[:]
        g.node.extend(kept)
        g.initializer.extend(new_inits)
        used = {t for n in kept for t in n.input} | outputs
        live = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(live)
    return folded


def _drop_noop_casts(m: onnx.ModelProto) -> None:
    """Remove Casts to the type their input already has (skl2onnx emits float->float Casts).

    Left in, the quantizer wraps them in Q/DQ and they read as an int8 "Cast"
    kernel that no integer backend has.
    """
    g = m.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input)}
    types.update({i.name: i.data_type for i in g.initializer})
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    kept = []
    for n in g.node:
        for k, t in enumerate(n.input):
            if t in rename:
                n.input[k] = rename[t]
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if n.op_type == "Cast" and n.output[0] not in outputs and to is not None \
                and types.get(n.input[0]) == to:
            rename[n.output[0]] = n.input[0]
            continue
        kept.append(n)
    if rename:
        del g.node[:]
        g.node.extend(kept)


def _unique_node_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def run_static(model: onnx.ModelProto, config: Int8Static, data: PassData | None) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if config.calibration not in CALIBRATIONS:
        raise UsageError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {config.calibration!r}")
    if data is None or data.x_calib is None or len(data.x_calib) == 0:
        raise UsageError("int8 static quantization needs calibration samples (x_calib)")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.calibration]
    src = _prepared(model)
    _unique_node_names(src)
    known = {n.name for n in src.graph.node}
    missing = [n for n in config.exclude if n not in known]
    if missing:
        raise UsageError(f"int8_static: no node named {', '.join(missing)} in the model")
    rng = np.random.default_rng(0)
    x = np.asarray(data.x_calib)
    if len(x) > config.max_calib_samples:
        x = x[rng.choice(len(x), config.max_calib_samples, replace=False)]
    reader = _Reader(src, x)
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if config.calibration == "percentile":
        extra["CalibPercentile"] = config.percentile
    with tempfile.TemporaryDirectory(prefix="edgeloop-q-") as d:
        out_path = os.path.join(d, "q.onnx")
        try:
            with _quiet():
                given = onnx.ModelProto()  # onnxruntime may move the given model's weights to external data
                given.CopyFrom(src)
                quantize_static(given, out_path, reader, quant_format=QuantFormat.QDQ,
                                per_channel=config.per_channel, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, calibrate_method=method,
                                nodes_to_exclude=list(config.exclude) or None, extra_options=extra,
                                op_types_to_quantize=_op_types(config.op_types))
        except EdgeloopError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgeloopError(f"int8 static quantization failed: {first}") from None
        out = onnx.load(out_path)
    if config.weight_rounding not in ("nearest", "adaround"):
        raise UsageError(f"weight_rounding must be nearest or adaround, got {config.weight_rounding!r}")
    if config.weight_rounding == "adaround":
        out = _adarounded(src, out, x, config.rounding_iters)
    if config.bias_correction:
        out = _bias_corrected(src, out, x)
    return _keep_metadata(model, out)


def _run_with(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    """Graph outputs followed by the named intermediate tensors, on samples ``x``."""
    from edgeloop.passes.prune_structured import _capture

    outs = [o.name for o in model.graph.output]
    got = _capture(model, outs + [n for n in names if n not in outs], x)
    return [got[n] for n in outs] + [got[n] for n in names]


def _keep_if_better(q: onnx.ModelProto, fixed: onnx.ModelProto, key: str, layers: int, before: float,
                    after: float) -> onnx.ModelProto:
    """``fixed`` if it lowered the calibration error, else ``q``; the measurement goes in the metadata."""
    from edgeloop.graph import set_metadata

    keep = layers > 0 and after < before
    out = fixed if keep else q
    set_metadata(out, **{key: {"applied": bool(keep), "layers": layers, "calib_error_before": round(before, 6),
                               "calib_error_after": round(after, 6)}})
    return out


def _output_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    num = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for r, g in zip(ref, got) if r.dtype.kind == "f")
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref if r.dtype.kind == "f")
    return float(np.sqrt(num / max(den, 1e-30)))


def _bias_corrected(float_model: onnx.ModelProto, q: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """Bias correction: subtract from each Conv/Gemm bias the mean (per output channel) of the
    difference between the quantized and the float layer output on the calibration samples.

    The int8 bias is int32 behind DequantizeLinear (scale = s_in * s_w), so the correction is
    rounded to that grid. Layers are corrected in graph order, each measured after the previous
    ones were corrected. Kept only if the whole model's relative output error on the calibration
    samples goes down; the result records ``int8_bias_correction`` in its metadata either way.
    """
    from onnx import numpy_helper

    from edgeloop.graph import set_metadata

    feeds = x
    n_out = len(float_model.graph.output)
    # layer k of the quantized graph is layer k of the float one (quantization keeps the node
    # order; tensor names may change, e.g. a fused Relu's output name moves to its Conv)
    pairs = _layer_pairs(float_model, q, need_bias=True)
    if not pairs:
        set_metadata(q, int8_bias_correction={"applied": False, "reason": "no layer with a bias"})
        return q
    names = [f.output[0] for f, _ in pairs]
    ref_all = _run_with(float_model, names, feeds)
    ref_out, ref_layer = ref_all[:n_out], ref_all[n_out:]
    before = _output_error(ref_out, _run_with(q, [], feeds)[:n_out])
    fixed = onnx.ModelProto()
    fixed.CopyFrom(q)
    inits = {i.name: i for i in fixed.graph.initializer}
    producers = {o: n for n in fixed.graph.node for o in n.output}
    corrected = 0
    fixed_layers = [n for n in fixed.graph.node if n.op_type in ("Conv", "Gemm")]
    for (_, k), ref in zip(pairs, ref_layer):
        layer = fixed_layers[k]
        got = _run_with(fixed, [layer.output[0]], feeds)[n_out]
        axes = tuple(a for a in range(ref.ndim) if a != 1)
        delta = (got.astype(np.float64) - ref).mean(axis=axes)
        b_name = layer.input[2]
        dq = producers.get(b_name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits and dq.input[1] in inits:
            b = numpy_helper.to_array(inits[dq.input[0]])
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            new = np.clip(np.round(b - delta / scale), np.iinfo(b.dtype).min, np.iinfo(b.dtype).max).astype(b.dtype)
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new, dq.input[0]))
        elif b_name in inits:
            b = numpy_helper.to_array(inits[b_name])
            inits[b_name].CopyFrom(numpy_helper.from_array((b - delta).astype(b.dtype), b_name))
        else:
            continue
        corrected += 1
    after = _output_error(ref_out, _run_with(fixed, [], feeds)[:n_out])
    return _keep_if_better(q, fixed, "int8_bias_correction", corrected, before, after)


def _layer_pairs(float_model: onnx.ModelProto, q: onnx.ModelProto, need_bias: bool) -> list:
    """[(float node, index among q's Conv/Gemm)]: layer k of the quantized graph is layer k of the
    float one (quantization keeps the node order; tensor names may change, e.g. a fused Relu's
    output name moves to its Conv). Empty if the two graphs do not line up."""
    f_layers = [n for n in float_model.graph.node if n.op_type in ("Conv", "Gemm")]
    q_layers = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    if len(f_layers) != len(q_layers):
        return []
    return [(f, k) for k, (f, g) in enumerate(zip(f_layers, q_layers))
            if f.op_type == g.op_type and (not need_bias or (len(g.input) > 2 and g.input[2]))]


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else onnx.helper.get_attribute_value(a)


def _adarounded(float_model: onnx.ModelProto, q: onnx.ModelProto, x: np.ndarray, iters: int) -> onnx.ModelProto:
    """AdaRound-style weight rounding (Nagel et al. 2020): per Conv/Gemm layer, in graph order,
    learn whether each int8 weight rounds up or down so that the layer's output on the quantized
    model's own inputs matches the float layer's output, instead of rounding to nearest.

    A soft rounding variable per weight (rectified sigmoid), a regulariser pushing it to 0 or 1
    with an annealed exponent, ``iters`` Adam steps per layer on the CPU (torch). Kept only if the
    whole model's relative output error on the calibration samples goes down.
    """
    import torch
    from onnx import numpy_helper

    from edgeloop.graph import set_metadata

    feeds = x[:64]  # a few hundred steps per layer: 64 samples keep it to seconds
    n_out = len(float_model.graph.output)
    pairs = _layer_pairs(float_model, q, need_bias=False)
    f_inits = {i.name: i for i in float_model.graph.initializer}
    pairs = [(f, k) for f, k in pairs if f.input[1] in f_inits]
    if not pairs:
        set_metadata(q, int8_weight_rounding={"applied": False, "reason": "no layer to round"})
        return q
    ref_all = _run_with(float_model, [f.output[0] for f, _ in pairs], feeds)
    ref_out = ref_all[:n_out]
    before = _output_error(ref_out, _run_with(q, [], feeds)[:n_out])
    fixed = onnx.ModelProto()
    fixed.CopyFrom(q)
    inits = {i.name: i for i in fixed.graph.initializer}
    producers = {o: n for n in fixed.graph.node for o in n.output}
    layers = [n for n in fixed.graph.node if n.op_type in ("Conv", "Gemm")]
    done = 0
    torch.manual_seed(0)
    for (f, k), y_ref in zip(pairs, ref_all[n_out:]):
        g = layers[k]
        dq = producers.get(g.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        w_q = numpy_helper.to_array(inits[dq.input[0]])
        if w_q.dtype != np.int8:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        w = numpy_helper.to_array(f_inits[f.input[1]]).astype(np.float32)
        if w.shape != w_q.shape:
            continue
        s_shape = [1] * w.ndim
        if scale.size > 1:
            s_shape[_attr(dq, "axis", 1) % w.ndim] = scale.size
        s_t = torch.tensor(scale.reshape(s_shape))
        x_in = torch.tensor(_run_with(fixed, [g.input[0]], feeds)[n_out].astype(np.float32))
        b = torch.tensor(numpy_helper.to_array(f_inits[f.input[2]]).astype(np.float32)) \
            if len(f.input) > 2 and f.input[2] in f_inits else None
        w_t = torch.tensor(w)
        base = torch.floor(w_t / s_t)
        rest = (w_t / s_t - base).clamp(0.01, 0.99)
        v = torch.nn.Parameter(-torch.log((1.2 / (rest + 0.1)) - 1))  # h(v) = rest at the start
        y_t = torch.tensor(y_ref.astype(np.float32))

        def layer(wq):
            if g.op_type == "Gemm":
                wm = wq.T if _attr(g, "transB", 0) else wq
                xa = x_in.T if _attr(g, "transA", 0) else x_in
                out = _attr(g, "alpha", 1.0) * (xa @ wm)
                return out if b is None else out + _attr(g, "beta", 1.0) * b
            pads = list(_attr(g, "pads", [0] * (2 * (wq.ndim - 2))))
            xin = x_in
            if wq.ndim != 4:
                raise ValueError("only 2-D convolutions")
            if _attr(g, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise ValueError("auto_pad")
            xin = torch.nn.functional.pad(xin, (pads[1], pads[3], pads[0], pads[2]))
            return torch.nn.functional.conv2d(xin, wq, b, stride=tuple(_attr(g, "strides", [1, 1])),
                                              dilation=tuple(_attr(g, "dilations", [1, 1])),
                                              groups=int(_attr(g, "group", 1)))

        def h(v):
            return torch.clamp(torch.sigmoid(v) * 1.2 - 0.1, 0, 1)

        try:
            with torch.no_grad():
                if layer(s_t * torch.clamp(torch.round(w_t / s_t), -127, 127)).shape != y_t.shape:
                    continue
            opt = torch.optim.Adam([v], lr=1e-2)
            for it in range(iters):
                beta = 20 - (20 - 2) * it / max(1, iters - 1)
                wq = s_t * torch.clamp(base + h(v), -127, 127)
                rec = torch.mean((layer(wq) - y_t) ** 2)
                reg = torch.sum(1 - torch.abs(2 * h(v) - 1) ** beta) if it >= iters // 5 else 0.0
                loss = rec + 1e-4 * float(rec.detach()) / max(1, v.numel()) * 100 * reg
                opt.zero_grad()
                loss.backward()
                opt.step()
        except (ValueError, RuntimeError):
            continue
        with torch.no_grad():
            new = torch.clamp(base + (h(v) >= 0.5).float(), -127, 127).numpy().astype(np.int8)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new, dq.input[0]))
        done += 1
    after = _output_error(ref_out, _run_with(fixed, [], feeds)[:n_out])
    return _keep_if_better(q, fixed, "int8_weight_rounding", done, before, after)


def _op_types(op_types: tuple[str, ...]) -> list[str] | None:
    if not op_types:
        return list(INT8_OPS)
    return None if "*" in op_types else list(op_types)


def run_dynamic(model: onnx.ModelProto, config: Int8Dynamic, data: PassData | None) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _prepared(model)
    _unique_node_names(src)
    with tempfile.TemporaryDirectory(prefix="edgeloop-q-") as d:
        out_path = os.path.join(d, "q.onnx")
        try:
            with _quiet():
                quantize_dynamic(src, out_path, per_channel=config.per_channel,
                                 weight_type=QuantType.QInt8)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgeloopError(f"int8 dynamic quantization failed: {first}") from None
        out = onnx.load(out_path)
    return _keep_metadata(model, out)


register_pass(Int8Static, run_static)
register_pass(Int8Dynamic, run_dynamic)
