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
    return m


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
                quantize_static(src, out_path, reader, quant_format=QuantFormat.QDQ,
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
    return _keep_metadata(model, out)


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
