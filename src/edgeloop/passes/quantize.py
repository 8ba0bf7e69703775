"""int8 quantization with onnxruntime.quantization, in the TFLite-compatible QDQ scheme.

``int8_static``: activations int8 asymmetric per tensor (calibrated on
samples: MinMax, Percentile, Entropy, MSE, or ``auto``: the method chosen per
tensor, and per-channel or per-tensor weights per layer, by the whole model's
output error against the float model on the calibration samples), weights int8
symmetric per output channel (or per tensor), bias int32 (scale = input scale x weight scale); the graph is in QDQ
form (DequantizeLinear -> float op -> QuantizeLinear), which the profiler and
the C backend read as int8 kernels. ``int8_dynamic``: weights int8 stored,
activations quantized at run time (MatMulInteger/ConvInteger); a host-side
option, not an MCU one.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

# onnxruntime's calibrators, "mse" (the clipping range that minimises each tensor's own int8 error) and
# "auto" (one of those four per tensor, chosen by the model's output error; see _choose_per_tensor)
CALIBRATIONS = ("minmax", "percentile", "entropy", "mse", "auto")
METHODS = ("minmax", "percentile", "entropy", "mse")

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
    rounding_seconds: float = 20.0  # AdaRound's time budget for the whole model (later layers keep nearest)
    # calibration="auto": the choices made, "tensor=method" (activations) and "weight=per_tensor|per_channel"
    # (weights), plus "*=method" (the global method the rest uses). Empty: chosen on x_calib and recorded
    # here, so the recipe replays the same choices without measuring again.
    choices: tuple[str, ...] = ()


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


def _quantize(src: onnx.ModelProto, x: np.ndarray, config: Int8Static, method: str, per_channel: bool,
              overrides: dict | None = None) -> onnx.ModelProto:
    """One onnxruntime ``quantize_static`` call (QDQ, int8) with per-tensor ``TensorQuantOverrides``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    ort_method = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}.get(
        method, CalibrationMethod.MinMax)  # mse ranges come in as overrides over MinMax
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = config.percentile
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    with tempfile.TemporaryDirectory(prefix="edgeloop-q-") as d:
        out_path = os.path.join(d, "q.onnx")
        try:
            with _quiet():
                given = onnx.ModelProto()  # onnxruntime may move the given model's weights to external data
                given.CopyFrom(src)
                quantize_static(given, out_path, _Reader(src, x), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, calibrate_method=ort_method,
                                nodes_to_exclude=list(config.exclude) or None, extra_options=extra,
                                op_types_to_quantize=_op_types(config.op_types))
        except EdgeloopError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgeloopError(f"int8 static quantization failed: {first}") from None
        return onnx.load(out_path)


def run_static(model: onnx.ModelProto, config: Int8Static, data: PassData | None) -> onnx.ModelProto:
    from edgeloop.graph import set_metadata
    from edgeloop.passes import record_config

    if config.calibration not in CALIBRATIONS:
        raise UsageError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {config.calibration!r}")
    if config.weight_rounding not in ("nearest", "adaround"):
        raise UsageError(f"weight_rounding must be nearest or adaround, got {config.weight_rounding!r}")
    if data is None or data.x_calib is None or len(data.x_calib) == 0:
        raise UsageError("int8 static quantization needs calibration samples (x_calib)")
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
    report, resolved = None, config
    if config.calibration == "auto":
        choices, report = (_parse_choices(config.choices), None) if config.choices else \
            _choose_per_tensor(src, x, config)
        out = _quantize(src, x, config, choices["*"], True, _overrides(src, x, config, choices))
        resolved = dataclasses.replace(config, choices=_format_choices(choices))
        set_metadata(out, int8_calibration={"choices": _format_choices(choices), **(report or {})})
    elif config.calibration == "mse":
        out = _quantize(src, x, config, "mse", config.per_channel,
                        _overrides(src, x, config, {"*": "mse"}))
    else:
        out = _quantize(src, x, config, config.calibration, config.per_channel)
    if config.weight_rounding == "adaround":
        out = _adarounded(src, out, x, config.rounding_iters, config.rounding_seconds)
    if config.bias_correction:
        out = _bias_corrected(src, out, x)
    out = _keep_metadata(model, out)
    record_config(out, resolved)
    return out


# --------------------------------------------------------------------------- per-tensor calibration

def _parse_choices(entries: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for e in entries:
        name, sep, value = e.rpartition("=")
        if not sep or value not in METHODS + ("per_tensor", "per_channel"):
            raise UsageError(f"int8_static: a choice must be 'tensor=method' or 'weight=per_tensor', got {e!r}")
        out[name] = value
    out.setdefault("*", "minmax")
    return out


def _format_choices(choices: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{k}={v}" for k, v in choices.items())


def _activation_qparams(q: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """{activation tensor: (scale initializer, zero-point initializer)} of a QDQ graph's QuantizeLinear nodes."""
    inits = {i.name for i in q.graph.initializer}
    return {n.input[0]: (n.input[1], n.input[2]) for n in q.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and len(n.input) > 2
            and n.input[1] in inits and n.input[2] in inits}


def _ranges(q: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """{activation tensor: (rmin, rmax)} the int8 grid of each QuantizeLinear covers (scale, zero point)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in q.graph.initializer}
    out = {}
    for t, (s, z) in _activation_qparams(q).items():
        scale = float(numpy_helper.to_array(inits[s]).reshape(-1)[0])
        zp = float(numpy_helper.to_array(inits[z]).reshape(-1)[0])
        out[t] = ((-128 - zp) * scale, (127 - zp) * scale)
    return out


def _mse_ranges(src: onnx.ModelProto, tensors: list[str], x: np.ndarray,
                full: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Per tensor, the clipping of its min-max range (both ends shrunk by one factor) whose int8 grid
    reproduces the tensor's values on the calibration samples with the least squared error.

    onnxruntime has no MSE calibrator; its own ``compute_scale_zp`` makes each candidate grid."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    have = {t for n in src.graph.node for t in n.output} | {i.name for i in src.graph.input}
    tensors = [t for t in tensors if t in have]  # not the names the quantizer adds (e.g. before an output)
    vals = _run_with(src, tensors, x[:32])[len(src.graph.output):]
    rng = np.random.default_rng(0)
    out = {}
    for t, v in zip(tensors, vals):
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        if v.size > 200_000:
            v = v[rng.choice(v.size, 200_000, replace=False)]
        lo, hi = full[t]
        best = (np.inf, (lo, hi))
        for a in np.linspace(1.0, 0.3, 15):
            zp, scale = compute_scale_zp(np.float32(lo * a), np.float32(hi * a), np.int8(-128), np.int8(127))
            scale, zp = float(scale), float(zp)
            if scale <= 0:
                continue
            err = float(np.mean(((np.clip(np.round(v / scale) + zp, -128, 127) - zp) * scale - v) ** 2))
            if err < best[0]:
                best = (err, ((-128 - zp) * scale, (127 - zp) * scale))
        out[t] = best[1]
    return out


def _method_ranges(src: onnx.ModelProto, x: np.ndarray, config: Int8Static,
                   wanted: set[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {activation tensor: range}} for the methods in ``wanted`` (onnxruntime's calibrators)."""
    got: dict[str, dict[str, tuple[float, float]]] = {}
    for m in ("minmax", "percentile", "entropy"):
        if m in wanted or (m == "minmax" and "mse" in wanted):
            got[m] = _ranges(_quantize(src, x, config, m, config.per_channel))
    if "mse" in wanted:
        got["mse"] = _mse_ranges(src, list(got["minmax"]), x, got["minmax"])
    return got


def _overrides(src: onnx.ModelProto, x: np.ndarray, config: Int8Static, choices: dict[str, str],
               ranges: dict | None = None) -> dict:
    """onnxruntime ``TensorQuantOverrides`` for the choices: rmin/rmax per activation, per-tensor weights."""
    wanted = {v for v in choices.values() if v in METHODS} - {choices["*"]} | (
        {"mse"} if choices["*"] == "mse" else set())
    ranges = ranges if ranges is not None else _method_ranges(src, x, config, wanted)
    out: dict[str, list[dict]] = {}
    base = choices["*"]
    for m, table in ranges.items():
        for t, (lo, hi) in table.items():
            if choices.get(t, base) == m and (m != base or m == "mse"):
                out[t] = [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
    for w in _weight_names(src):
        if choices.get(w, "per_channel" if config.per_channel else "per_tensor") == "per_tensor":
            out[w] = [{"symmetric": True}]  # per tensor; the rest per channel (quantize with per_channel=True)
    return out


def _weight_names(src: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in src.graph.initializer}
    return [n.input[1] for n in src.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and len(n.input) > 1 and n.input[1] in inits]


def _set_qparams(q: onnx.ModelProto, scale_name: str, zp_name: str, rng: tuple[float, float]) -> None:
    from onnx import numpy_helper
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    inits = {i.name: i for i in q.graph.initializer}
    zp, scale = compute_scale_zp(np.float32(rng[0]), np.float32(rng[1]), np.int8(-128), np.int8(127))
    old_s, old_z = numpy_helper.to_array(inits[scale_name]), numpy_helper.to_array(inits[zp_name])
    inits[scale_name].CopyFrom(numpy_helper.from_array(np.asarray(scale, old_s.dtype).reshape(old_s.shape),
                                                       scale_name))
    inits[zp_name].CopyFrom(numpy_helper.from_array(np.asarray(zp, old_z.dtype).reshape(old_z.shape), zp_name))


def _weight_inits(q: onnx.ModelProto) -> dict[str, tuple[list[str], list]]:
    """{float weight name: (the initializers holding its int8 form and its layer's int32 bias, their
    DequantizeLinear nodes)} per layer."""
    inits = {i.name for i in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    out = {}
    for n in q.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose") or len(n.input) < 2:
            continue
        dq = producers.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or not all(t in inits for t in dq.input if t):
            continue
        names, nodes = [t for t in dq.input if t], [dq]
        if len(n.input) > 2 and n.input[2]:
            bq = producers.get(n.input[2])
            if bq is not None and bq.op_type == "DequantizeLinear" and all(t in inits for t in bq.input if t):
                names += [t for t in bq.input if t]
                nodes.append(bq)
        w = dq.input[0][:-len("_quantized")] if dq.input[0].endswith("_quantized") else dq.input[0]
        out[w] = (names, nodes)
    return out


def _swap(mine: dict, donor: dict, names: list[str], nodes: list, donor_nodes: list) -> None:
    """Put the donor's initializers and DequantizeLinear attributes (the channel axis) in place."""
    for n in names:
        mine[n].CopyFrom(donor[n])
    for a, b in zip(nodes, donor_nodes):
        del a.attribute[:]
        a.attribute.extend(b.attribute)


def _choose_per_tensor(src: onnx.ModelProto, x: np.ndarray, config: Int8Static) -> tuple[dict, dict]:
    """Calibration chosen per tensor by output error, measured against the float model on ``x``.

    Every method's ranges come from onnxruntime's calibrators (plus the MSE clipping); the method
    whose whole-model output error is lowest is the base, then, tensor by tensor in graph order,
    each other method's range is tried and kept where the output error goes down; then each
    layer's weights per tensor instead of per channel (or the reverse), the same way. The
    measurements edit the QDQ graph's scales in place (a session per try); the shipped graph is
    made by one ``quantize_static`` call with the choices as ``TensorQuantOverrides``.
    """
    from onnx import numpy_helper

    x_eval = x[:128]
    ref = _run_with(src, [], x_eval)
    n_out = len(src.graph.output)

    def err(m: onnx.ModelProto) -> float:
        return _output_error(ref, _run_with(m, [], x_eval)[:n_out])

    ranges = _method_ranges(src, x, config, set(METHODS))
    global_err = {}
    models = {}
    for m in METHODS:
        models[m] = _quantize(src, x, config, m, config.per_channel,
                              _overrides(src, x, config, {"*": m}, ranges) if m == "mse" else None)
        global_err[m] = err(models[m])
    base = min(METHODS, key=lambda m: global_err[m])
    choices = {"*": base}
    cur = onnx.ModelProto()
    cur.CopyFrom(models[base])
    best = global_err[base]
    qparams = _activation_qparams(cur)
    for t, (s_name, z_name) in qparams.items():
        keep = ranges[base].get(t)
        for m in METHODS:
            r = ranges[m].get(t)
            if m == base or r is None or keep is None or np.allclose(r, keep):
                continue
            _set_qparams(cur, s_name, z_name, r)
            e = err(cur)
            if e < best * (1 - 1e-4):
                best, keep, choices[t] = e, r, m
        if keep is not None:
            _set_qparams(cur, s_name, z_name, keep)
    # weights: per channel or per tensor, layer by layer (the other granularity's int8 weights and bias)
    other = _quantize(src, x, config, base, not config.per_channel)
    donor = {i.name: i for i in other.graph.initializer}
    mine = {i.name: i for i in cur.graph.initializer}
    theirs = _weight_inits(other)
    for w, (names, nodes) in _weight_inits(cur).items():
        if w not in theirs or theirs[w][0] != names or not all(n in donor for n in names):
            continue
        saved = {n: onnx.TensorProto() for n in names}
        for n in names:
            saved[n].CopyFrom(mine[n])
        saved_nodes = [onnx.NodeProto() for _ in nodes]
        for a, b in zip(saved_nodes, nodes):
            a.CopyFrom(b)
        _swap(mine, donor, names, nodes, theirs[w][1])
        e = err(cur)
        if e < best * (1 - 1e-4):
            best = e
            choices[w] = "per_channel" if not config.per_channel else "per_tensor"
        else:
            _swap(mine, saved, names, nodes, saved_nodes)
    report = {"calib_error_global": {m: round(v, 6) for m, v in global_err.items()}, "base": base,
              "calib_error_chosen": round(best, 6), "tensors_changed": len(choices) - 1}
    return choices, report


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


def _adarounded(float_model: onnx.ModelProto, q: onnx.ModelProto, x: np.ndarray, iters: int,
                seconds: float = 20.0) -> onnx.ModelProto:
    """AdaRound-style weight rounding (Nagel et al. 2020): per Conv/Gemm layer, in graph order,
    learn whether each int8 weight rounds up or down so that the layer's output on the quantized
    model's own inputs matches the float layer's output, instead of rounding to nearest.

    A soft rounding variable per weight (rectified sigmoid), a regulariser pushing it to 0 or 1
    with an annealed exponent, ``iters`` Adam steps per layer on the CPU (torch). Kept only if the
    whole model's relative output error on the calibration samples goes down. ``seconds`` caps the
    whole pass: layers not reached in time keep round-to-nearest (the count is in the metadata).
    """
    import time

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
    t0 = time.perf_counter()
    for (f, k), y_ref in zip(pairs, ref_all[n_out:]):
        if time.perf_counter() - t0 > seconds:
            break
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
