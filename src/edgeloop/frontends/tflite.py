"""TFLite importer: a .tflite flatbuffer becomes one ONNX graph (no TensorFlow needed).

Float32 models import as plain float ONNX. Full-int8 models import into the
QDQ form the rest of edgeloop relies on (profiler memory planner, C backend):

* activations are int8 tensors; every computing operator is sandwiched::

      DequantizeLinear(x_q, scale, zp) -> op -> [Relu | Clip] -> QuantizeLinear(y, scale, zp)

  with a scalar float32 scale and a scalar int8 zero point per tensor, so the
  backend can lower each sandwich into one integer kernel;
* weights are int8 initializers behind ``DequantizeLinear(w, scale[C_out],
  zeros[C_out], axis=0)`` (per-tensor when TFLite stores one scale); biases are
  int32 initializers behind ``DequantizeLinear(b, s_in * s_w, zeros int32)``;
* pure data movement (the layout change at the input, Reshape, flatten) runs
  on the int8 tensors themselves, so it creates no float buffers.

Hybrid models (float activations, int8 "dynamic range" weights) import as
float compute with DequantizeLinear on the weights.

Layout: the graph's inputs and outputs keep TFLite's own dtype and NHWC
layout (the C backend takes the model's tensors as they are); inside, 4-D
tensors run NCHW as ONNX operators want. Each tensor's current layout is
tracked, and a conversion is emitted only where a consumer needs the other
one (the first convolution, a flatten in NHWC order, a graph output). A
permutation that only moves size-1 dims is a Reshape, not a Transpose.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeloop.errors import ModelLoadError, UnsupportedOperatorError
from edgeloop.frontends._tflite_reader import ACTIVATIONS, POSTPROCESS, TflGraph, TflOp, parse

# Opset 17: per-axis DequantizeLinear (13+), Clip with tensor bounds (11+), Softmax over
# one axis (13+), ReduceMean with an axes attribute (until 17); old enough for any
# onnxruntime a device may carry.
OPSET = 17
IR_VERSION = 8  # the lowest IR version that allows opset 17

NHWC, NCHW = "nhwc", "nchw"
TO_NCHW = (0, 3, 1, 2)   # NHWC array -> NCHW array
TO_NHWC = (0, 2, 3, 1)   # NCHW array -> NHWC array
# where NHWC axis a sits in an NCHW tensor: N->0, H->2, W->3, C->1
NHWC_AXIS_IN_NCHW = (0, 2, 3, 1)

SUPPORTED = (
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D",
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SOFTMAX", "ADD", "RELU", "RELU6", "RELU_N1_TO_1",
    "LOGISTIC", "TANH", "CONCATENATION", "PAD", "PADV2", "MEAN", "QUANTIZE", "DEQUANTIZE",
    "DENSIFY", "DEPTH_TO_SPACE", "TRANSPOSE_CONV", "MUL", "SUB", "DIV", "MAXIMUM", "MINIMUM",
    "SQUARED_DIFFERENCE", "POW", "EXP", "LOG", "SQRT", "RSQRT", "SQUARE", "ABS", "NEG", "FLOOR",
    "CEIL", "SIN", "COS", "LEAKY_RELU", "ELU", "GELU", "LOG_SOFTMAX", "L2_NORMALIZATION",
    "TRANSPOSE", "SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "GATHER", "SPACE_TO_DEPTH",
    "TILE", "BROADCAST_TO", "MIRROR_PAD", "BATCH_MATMUL", "SUM", "REDUCE_MAX", "REDUCE_MIN",
    "REDUCE_PROD", "PRELU", "HARD_SWISH", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE",
    # MediaPipe's transposed convolution with bias, a custom operator LiteRT also ships
    "Convolution2DTransposeBias",
)


def load_tflite(path: pathlib.Path) -> onnx.ModelProto:
    """Import a .tflite file into an ONNX ModelProto (float, or QDQ for int8 models)."""
    from edgeloop.graph import finalize

    path = pathlib.Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read file ({e.strerror})", where=str(path)) from None
    graph = parse(buf)
    conv = _Converter(graph)
    model, input_quant, output_quant, sparse = conv.convert()
    # Weights the file stored in TFLite's sparse format are dense in the graph; which ones
    # were sparse (and how) is kept for sparse storage later (edgeloop.sparse_initializers).
    extra: dict[str, Any] = {"sparse_initializers": sparse} if sparse else {}
    if conv.postprocess is not None:
        head = _detection_head(graph, conv.postprocess, conv.output_names, buf)
        extra.update(head=head, task="detection", labels=head["labels"])
    return finalize(model, source=str(path), source_format="tflite",
                    input_quant=input_quant, output_quant=output_quant, **extra)


def _cut_postprocess(g: TflGraph) -> TflOp | None:
    """Take a TFLite_Detection_PostProcess operator out of the graph (in place).

    Its four outputs (boxes, classes, scores, count) leave the graph's outputs; its first two
    inputs (raw box encodings [1, N, 4], class predictions [1, N, C+1]) take their place. The
    op itself is returned to become the detection head (see :func:`_detection_head`)."""
    found = [op for op in g.ops if op.name == POSTPROCESS]
    if not found:
        return None
    op = found[0]
    t = g.tensors

    def fail(message: str) -> UnsupportedOperatorError:
        node = t[op.outputs[0]].name if op.outputs else None
        return UnsupportedOperatorError(f"{POSTPROCESS}: {message}", node=node, op=op.name)

    if len(found) > 1:
        raise fail(f"the model has {len(found)} of them; edgeloop imports one")
    if len(op.inputs) < 3 or min(op.inputs[:3]) < 0:
        raise fail("needs 3 inputs (box encodings, class predictions, anchors)")
    read = {i for other in g.ops if other is not op for i in other.inputs}
    if read & set(op.outputs):
        raise fail("its outputs feed other operators; it must end the graph")
    boxes, scores, anchors = (t[i] for i in op.inputs[:3])
    if not anchors.is_const:
        raise fail(f"the anchors '{anchors.name}' are not a constant tensor")
    if len(boxes.shape) != 3 or boxes.shape[0] != 1 or boxes.shape[2] < 4:
        raise fail(f"box encodings '{boxes.name}' are {list(boxes.shape)}, expected [1, N, 4]")
    n = boxes.shape[1]
    if len(scores.shape) != 3 or scores.shape[:2] != (1, n):
        raise fail(f"class predictions '{scores.name}' are {list(scores.shape)}, expected [1, {n}, C]")
    if anchors.shape != (n, 4):
        raise fail(f"anchors '{anchors.name}' are {list(anchors.shape)}, expected [{n}, 4]")
    offset = scores.shape[2] - op.options["num_classes"]
    if offset not in (0, 1):
        raise fail(f"num_classes is {op.options['num_classes']} but the class predictions have "
                   f"{scores.shape[2]} columns (at most one background column)")
    g.ops = [o for o in g.ops if o is not op]
    kept = [i for i in g.outputs if i not in op.outputs]
    g.outputs = kept + [i for i in op.inputs[:2] if i not in kept]
    return op


def _zip_labels(buf: bytes, num_classes: int) -> list[str]:
    """Class names from a label file packed in the .tflite (TFLite metadata appends a zip);
    a leading background entry ('???' or 'background') is dropped. [] when there is none."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as z:
            texts = [z.read(n).decode("utf-8", "replace") for n in z.namelist()
                     if n.lower().endswith(".txt")]
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return []
    for text in texts:
        lines = [x.strip() for x in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        if len(lines) == num_classes + 1 and lines[0].lower() in ("???", "background"):
            lines = lines[1:]
        if len(lines) == num_classes:
            return lines
    return []


def _f32(values: np.ndarray) -> list:
    """float32 values as JSON numbers that read back to the same float32 (9 digits)."""
    return [[float(f"{v:.9g}") for v in row] for row in np.asarray(values, np.float32).tolist()]


def _detection_head(g: TflGraph, op: TflOp, output_names: list[str], buf: bytes) -> dict[str, Any]:
    """The ``tflite_ssd`` head of a TFLite_Detection_PostProcess op: its box coder options, its
    anchors (dequantized as the op does) and NMS settings, so the numpy decoder gives the
    op's boxes. Input: NHWC, the model's size, stretched (as TFLite's SSD models are fed);
    float inputs take [-1, 1] (the TF Object Detection convention), integer inputs take the
    pixel itself (uint8) or pixel - 128 (int8)."""
    o = op.options
    t = g.tensors
    boxes, scores, anchors = (t[i] for i in op.inputs[:3])
    a = anchors.data.astype(np.float32)
    if anchors.quantized:
        a = (a - anchors.zero_point[0].astype(np.float32)) * np.float32(anchors.scale[0])
    if not np.all(np.isfinite(a)):
        raise ModelLoadError(f"{POSTPROCESS}: the anchors '{anchors.name}' are not finite")
    inp = t[g.inputs[0]]
    if len(inp.shape) != 4:
        raise UnsupportedOperatorError(f"{POSTPROCESS}: the input '{inp.name}' is {list(inp.shape)}, "
                                       "expected an image [1, H, W, C]", op=op.name)
    spec: dict[str, Any] = {"layout": "NHWC", "size": [int(inp.shape[2]), int(inp.shape[1])],
                            "resize": "stretch"}
    if inp.quantized and inp.dtype in (np.int8, np.uint8):
        s, zp = float(inp.scale[0]), float(inp.zero_point[0])
        q0 = 0.0 if inp.dtype == np.uint8 else -128.0
        spec["range"] = [(q0 - zp) * s, (q0 + 255.0 - zp) * s]
        spec["quant"] = [s, zp]
    else:
        spec["range"] = [-1.0, 1.0]
    names = dict(zip(g.outputs, output_names))
    output_quant = {names[i]: [float(t[i].scale[0]), float(t[i].zero_point[0])]
                    for i in op.inputs[:2] if t[i].quantized}
    return {
        "kind": "tflite_ssd",
        "labels": _zip_labels(buf, o["num_classes"]),
        "input": spec,
        "anchors": _f32(a),
        "boxes": {"output": names[op.inputs[0]], "coords": "yxhw", "exp_size": True,
                  "scale": [o["y_scale"], o["x_scale"], o["h_scale"], o["w_scale"]]},
        "scores": {"output": names[op.inputs[1]], "activation": "none",
                   "background": scores.shape[2] > o["num_classes"]},
        "min_score": o["nms_score_threshold"],
        "nms_iou": o["nms_iou_threshold"],
        "nms": "greedy",
        "max_detections": o["max_detections"],
        # the op's fast NMS is class-agnostic over each box's best class; regular NMS runs per class
        "class_agnostic": not o["use_regular_nms"],
        "output_quant": output_quant,
        "postprocess": dict(o),
        "source": f"TFLite {POSTPROCESS} operator",
    }


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding for one spatial axis: the odd pixel goes at the end."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _only_unit_dims_move(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """True when transposing `shape` by `perm` keeps the element order (a Reshape does it)."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


class _Converter:
    def __init__(self, graph: TflGraph):
        self.g = graph
        self.t = graph.tensors
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used: set[str] = set()
        self.value: dict[int, tuple[str, str]] = {}       # tensor -> (onnx name, layout)
        self.moved: dict[tuple[int, str], str] = {}       # cached layout conversions
        self.qparams: dict[int, tuple[str, str]] = {}     # tensor -> (scale, zp) initializers
        self.const_cache: dict[Any, str] = {}
        self.op: TflOp | None = None                      # operator being converted
        # A model ending in TFLite_Detection_PostProcess is cut before it: the graph's outputs
        # become the op's box encodings and class predictions, the op becomes the head.
        self.postprocess = _cut_postprocess(graph)
        self.output_names: list[str] = []
        self.graph_outputs = set(graph.outputs)
        # constants the file stored sparse (densified on import): TFLite name -> how
        self.sparse_by_name = {t.name: t.sparse for t in graph.tensors if t.sparse}
        self.sparse_inits: dict[str, dict] = {}           # ONNX initializer -> the same

    # ----- small builders -------------------------------------------------------------

    def uniq(self, name: str) -> str:
        base, k = name, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    def init(self, name: str, array: np.ndarray) -> str:
        sparse = self.sparse_by_name.get(name)
        name = self.uniq(name)
        if sparse is not None:
            self.sparse_inits[name] = sparse
        # np.array, not np.ascontiguousarray: the latter turns a 0-d scale into shape [1],
        # and a QDQ scale must be a scalar.
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        tag = f"op{self.op.index}_{self.op.name}" if self.op is not None else "io"
        out = output if output is not None else self.uniq(f"{tag}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [out],
                                           name=self.uniq(f"{tag}/{op_type}#node"), **attrs))
        return out

    def int64s(self, values, hint: str) -> str:
        key = ("i64", tuple(int(v) for v in values))
        if key not in self.const_cache:
            self.const_cache[key] = self.init(hint, np.asarray(values, np.int64))
        return self.const_cache[key]

    def scalar_f32(self, value: float) -> str:
        key = ("f32", float(value))
        if key not in self.const_cache:
            self.const_cache[key] = self.init(f"const_{value:g}", np.asarray(value, np.float32))
        return self.const_cache[key]

    def fail(self, message: str) -> UnsupportedOperatorError:
        op = self.op
        node = self.t[op.outputs[0]].name if op is not None and op.outputs else None
        return UnsupportedOperatorError(message, node=node, op=op.name if op else None)

    # ----- tensors ----------------------------------------------------------------------

    def is_q(self, i: int) -> bool:
        """An int8/uint8 tensor with quantization parameters: it needs DequantizeLinear."""
        t = self.t[i]
        if t.dtype in (np.int8, np.uint8) and t.quantized:
            return True
        if t.dtype in (np.int8, np.uint8) and not t.is_const:
            raise self.fail(f"tensor '{t.name}' is {t.type_name} without quantization parameters")
        return False

    def check_activation_type(self, i: int) -> None:
        t = self.t[i]
        if t.dtype == np.float32 or (t.dtype in (np.int8, np.uint8) and t.quantized):
            if t.quantized and t.scale.size != 1:
                raise self.fail(f"tensor '{t.name}' is quantized per channel; only weights may be")
            return
        if t.dtype in (np.int8, np.uint8):
            self.is_q(i)  # raises the precise message
        raise self.fail(f"tensor '{t.name}' has type {t.type_name}; edgeloop imports float32 "
                        "and int8 models")

    def act_qparams(self, i: int) -> tuple[str, str]:
        """Scalar scale and zero point of a per-tensor quantized tensor (shared by its Q/DQs)."""
        if i not in self.qparams:
            t = self.t[i]
            scale = self.init(f"{t.name}/scale", np.asarray(t.scale[0], np.float32))
            zp = self.init(f"{t.name}/zero_point", np.asarray(t.zero_point[0], t.dtype))
            self.qparams[i] = (scale, zp)
        return self.qparams[i]

    def shape_in(self, i: int, layout: str) -> tuple[int, ...]:
        s = self.t[i].shape
        return tuple(s[p] for p in TO_NCHW) if layout == NCHW and len(s) == 4 else s

    def out_name(self, i: int, layout: str) -> str:
        # A graph output must carry TFLite's name in NHWC; an NCHW version gets another name
        # and is converted at the end.
        t = self.t[i]
        if i in self.graph_outputs and layout == NCHW and len(t.shape) == 4:
            return self.uniq(f"{t.name}/nchw")
        return self.uniq(t.name)

    def const_raw(self, i: int, layout: str) -> str:
        t = self.t[i]
        key = ("raw", i, layout)
        if key not in self.const_cache:
            data = t.data.transpose(TO_NCHW) if layout == NCHW and t.data.ndim == 4 else t.data
            self.const_cache[key] = self.init(t.name, data)
        return self.const_cache[key]

    def raw(self, i: int, layout: str) -> str:
        """Tensor i as stored (int8 or float) in the wanted layout (ignored below rank 4)."""
        t = self.t[i]
        if t.is_const:
            return self.const_raw(i, layout)
        if i not in self.value:
            raise self.fail(f"tensor '{t.name}' is read before any operator produces it")
        name, cur = self.value[i]
        if len(t.shape) != 4 or cur == layout:
            return name
        if (i, layout) not in self.moved:
            perm = TO_NCHW if layout == NCHW else TO_NHWC
            shape = self.shape_in(i, cur)
            if i in self.graph_outputs and layout == NHWC and t.name not in self.used:
                out = self.uniq(t.name)  # serves as the graph output as well
            else:
                out = self.uniq(f"{t.name}/{layout}")
            if _only_unit_dims_move(shape, perm):
                self.node("Reshape", [name, self.int64s([shape[p] for p in perm], "shape")], out)
            else:
                self.node("Transpose", [name], out, perm=list(perm))
            self.moved[(i, layout)] = out
        return self.moved[(i, layout)]

    def reshaped_raw(self, i: int, shape: tuple[int, ...]) -> str:
        """Tensor i, as stored, reshaped (in TFLite's NHWC element order) to `shape`."""
        t = self.t[i]
        shape = tuple(int(d) for d in shape)
        if t.is_const:
            return self.init(f"{t.name}/reshaped", t.data.reshape(shape))
        src = self.raw(i, NHWC) if i not in self.value else self.value[i][0]
        if len(t.shape) == 4 and self.value[i][1] == NCHW:
            if _only_unit_dims_move(self.shape_in(i, NCHW), TO_NHWC):
                # NCHW and NHWC element orders agree: reshape straight from the NCHW
                # tensor; a separate layout change would add a buffer for nothing.
                if shape == self.shape_in(i, NCHW):
                    return src
            else:
                src = self.raw(i, NHWC)
                if shape == t.shape:
                    return src
        elif shape == t.shape:
            return src
        return self.node("Reshape", [src, self.int64s(list(shape), "shape")],
                         self.uniq(f"{t.name}/reshape"))

    def dq(self, i: int, raw: str) -> str:
        """DequantizeLinear of an activation, one per consumer (each sandwich owns its DQs)."""
        if not self.is_q(i):
            return raw
        scale, zp = self.act_qparams(i)
        return self.node("DequantizeLinear", [raw, scale, zp])

    def fin(self, i: int, layout: str, rank: int | None = None) -> str:
        """Tensor i as float in `layout`; constants broadcast to `rank` first (ADD operands)."""
        t = self.t[i]
        if not t.is_const:
            self.check_activation_type(i)
            return self.dq(i, self.raw(i, layout))
        data = t.data
        if rank is not None and data.ndim < rank:
            data = data.reshape((1,) * (rank - data.ndim) + data.shape)
        perm = TO_NCHW if layout == NCHW and data.ndim == 4 else tuple(range(data.ndim))
        if t.dtype in (np.int8, np.uint8, np.int16, np.int32) and t.quantized:
            return self.dq_weight(i, data, perm)
        if t.dtype in (np.float32, np.float16, np.float64):
            return self.init(t.name, data.transpose(perm).astype(np.float32))
        raise self.fail(f"constant tensor '{t.name}' has type {t.type_name}, which cannot "
                        "be an operand here")

    def dq_weight(self, i: int, data: np.ndarray, perm: tuple[int, ...]) -> str:
        """int8 initializer -> DequantizeLinear (per channel on the axis the scales follow)."""
        t = self.t[i]
        w = self.init(t.name, data.transpose(perm))
        if t.scale.size == 1:
            scale = self.init(f"{t.name}/scale", np.asarray(t.scale[0], np.float32))
            zp = self.init(f"{t.name}/zero_point", np.asarray(t.zero_point[0], t.dtype))
            return self.node("DequantizeLinear", [w, scale, zp])
        axis = perm.index(t.quant_dim + (data.ndim - t.data.ndim))
        if data.shape[perm[axis]] != t.scale.size:
            raise ModelLoadError(f"not a valid TFLite flatbuffer: tensor '{t.name}' has "
                                 f"{t.scale.size} scales for {data.shape[perm[axis]]} channels")
        scale = self.init(f"{t.name}/scale", t.scale.astype(np.float32))
        zp = self.init(f"{t.name}/zero_point", t.zero_point.astype(t.dtype))
        return self.node("DequantizeLinear", [w, scale, zp], axis=axis)

    def bias(self, b: int, x: int, w: int) -> str | None:
        """Bias operand: float as is, int32 as DequantizeLinear with scale s_in * s_w[c]."""
        if b < 0:
            return None
        t = self.t[b]
        if t.dtype == np.float32:
            return self.init(t.name, t.data)
        if t.dtype != np.int32 or not self.t[x].quantized or not self.t[w].quantized:
            raise self.fail(f"bias '{t.name}' has type {t.type_name}, expected int32 "
                            "(int8 model) or float32")
        # TFLite adds the int32 bias to the int32 accumulator, whose scale is s_in * s_w;
        # the bias tensor's own stored scale is only a rounded copy of that product.
        s = (np.float64(self.t[x].scale[0]) * self.t[w].scale.astype(np.float64)).astype(np.float32)
        bias = self.init(t.name, t.data)
        if s.size == 1:
            return self.node("DequantizeLinear", [bias, self.init(f"{t.name}/scale", s[0]),
                                                  self.init(f"{t.name}/zero_point",
                                                            np.asarray(0, np.int32))])
        return self.node("DequantizeLinear", [bias, self.init(f"{t.name}/scale", s),
                                              self.init(f"{t.name}/zero_point",
                                                        np.zeros(s.size, np.int32))], axis=0)

    def emit(self, i: int, y: str, layout: str, activation: int = 0,
             shape: tuple[int, ...] | None = None) -> None:
        """Finish an operator: fused activation, QuantizeLinear when tensor i is int8."""
        t = self.t[i]
        self.check_activation_type(i)
        layout = layout if len(t.shape) == 4 else NHWC
        act = ACTIVATIONS.get(activation, str(activation))
        if act == "RELU":
            y = self.node("Relu", [y])
        elif act == "RELU6":
            y = self.node("Clip", [y, self.scalar_f32(0.0), self.scalar_f32(6.0)])
        elif act == "RELU_N1_TO_1":
            y = self.node("Clip", [y, self.scalar_f32(-1.0), self.scalar_f32(1.0)])
        elif act != "NONE":
            raise self.fail(f"TFLite fused activation {act} is not supported")
        if self.is_q(i):
            scale, zp = self.act_qparams(i)
            y = self.node("QuantizeLinear", [y, scale, zp])
        if shape is not None and tuple(shape) != tuple(t.shape):
            y = self.node("Reshape", [y, self.int64s(list(t.shape), "shape")])
        self.value[i] = (self.name_after(i, y, layout), layout)

    def name_after(self, i: int, y: str, layout: str) -> str:
        """Rename value y, just made by the last node, after TFLite tensor i.

        Keeps the graph traceable to the .tflite file, and graph outputs need the names.
        A value that already stands for another tensor (or a cached layout change of one)
        is left alone; tensor i then shares it.
        """
        last = self.nodes[-1] if self.nodes else None
        taken = {n for n, _ in self.value.values()} | set(self.moved.values())
        if last is None or last.output[0] != y or y in taken:
            return y
        final = self.out_name(i, layout)
        self.used.discard(y)
        last.output[0] = final
        return final

    # ----- the graph --------------------------------------------------------------------

    def convert(self):
        g = self.g
        for i in g.inputs:
            self.check_activation_type(i)
            self.value[i] = (self.uniq(self.t[i].name), NHWC)
        for op in g.ops:
            if op.name not in SUPPORTED:
                out = self.t[op.outputs[0]].name if op.outputs else None
                kind = "custom operator" if op.is_custom else "operator"
                raise UnsupportedOperatorError(f"TFLite {kind} {op.name} is not supported",
                                               node=out, op=op.name)
        for op in g.ops:
            self.op = op
            getattr(self, "op_" + op.name.lower())(op)
        self.op = None

        outputs = []
        for i in g.outputs:
            t = self.t[i]
            if i not in self.value:
                raise ModelLoadError(f"not a valid TFLite flatbuffer: output '{t.name}' is "
                                     "never computed")
            name, layout = self.value[i]
            if len(t.shape) == 4 and layout == NCHW and (i, NHWC) in self.moved:
                name = self.moved[(i, NHWC)]  # an operator already needed it in NHWC
            elif len(t.shape) == 4 and layout == NCHW:
                # Back to TFLite's NHWC at the graph boundary, under the tensor's own name.
                shape = self.shape_in(i, NCHW)
                final = self.uniq(t.name)
                if _only_unit_dims_move(shape, TO_NHWC):
                    self.node("Reshape", [name, self.int64s(list(t.shape), "shape")], final)
                else:
                    self.node("Transpose", [name], final, perm=list(TO_NHWC))
                name = final
            elif (name in (self.value[j][0] for j in g.inputs) or name in
                  [o.name for o in outputs] or name in (x.name for x in self.inits)):
                # ONNX cannot list a value twice, or an input or initializer as an output.
                name = self.node("Identity", [name], self.uniq(t.name))
            outputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)))
        inputs = [helper.make_tensor_value_info(
            self.value[i][0], helper.np_dtype_to_tensor_dtype(np.dtype(self.t[i].dtype)),
            list(self.t[i].shape)) for i in g.inputs]

        self.output_names = [o.name for o in outputs]
        graph = helper.make_graph(self.nodes, "tflite", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgeloop")
        model.ir_version = IR_VERSION

        def quant(indices, infos):
            # One entry per graph input/output, named as in the ONNX graph; None for a
            # model whose inputs (or outputs) are all float.
            entries = []
            for i, info in zip(indices, infos):
                t = self.t[i]
                q = self.is_q(i)
                entries.append({"name": info.name,
                                "scale": float(t.scale[0]) if q else None,
                                "zero_point": int(t.zero_point[0]) if q else None})
            return entries if any(e["scale"] is not None for e in entries) else None

        return model, quant(g.inputs, inputs), quant(g.outputs, outputs), self.sparse_inits

    # ----- operators --------------------------------------------------------------------

    def layout_of(self, i: int) -> str:
        t = self.t[i]
        if t.is_const or len(t.shape) != 4:
            return NHWC
        return self.value.get(i, (None, NHWC))[1]

    def _conv(self, op: TflOp, depthwise: bool) -> None:
        o = op.options
        x, w = op.inputs[0], op.inputs[1]
        b = op.inputs[2] if len(op.inputs) > 2 else -1
        xs, ws = self.t[x].shape, self.t[w].shape
        if len(xs) != 4 or len(ws) != 4:
            raise self.fail("only 2-D convolutions on [N,H,W,C] tensors are supported")
        cin = xs[3]
        if depthwise:
            # TFLite: [1, kH, kW, C_in * multiplier]; output channel o reads input channel
            # o // multiplier, which is exactly ONNX's grouping with group = C_in and
            # weights [C_in * multiplier, 1, kH, kW].
            _, kh, kw, cout = ws
            if cout % cin:
                raise self.fail(f"depthwise output channels {cout} not a multiple of {cin}")
            perm, group = (3, 0, 1, 2), cin
        else:
            cout, kh, kw, wcin = ws  # TFLite: [C_out, kH, kW, C_in / groups]
            if wcin == 0 or cin % wcin:
                raise self.fail(f"input channels {cin} do not match the filter's {wcin}")
            perm, group = (0, 3, 1, 2), cin // wcin
        sh, sw = o["stride"]
        dh, dw = max(o["dilation"][0], 1), max(o["dilation"][1], 1)
        pads = self._pads(o["padding"], xs[1:3], (kh, kw), (sh, sw), (dh, dw))
        xf = self.fin(x, NCHW)
        wf = self._weight(w, perm)
        inputs = [xf, wf]
        bf = self.bias(b, x, w)
        if bf is not None:
            inputs.append(bf)
        y = self.node("Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw],
                      dilations=[dh, dw], pads=pads, group=group)
        self.emit(op.outputs[0], y, NCHW, o["activation"])

    def _weight(self, w: int, perm: tuple[int, ...]) -> str:
        t = self.t[w]
        if not t.is_const:
            raise self.fail(f"weights '{t.name}' are not constant")
        if t.quantized and t.dtype in (np.int8, np.uint8):
            return self.dq_weight(w, t.data, perm)
        if t.dtype in (np.float32, np.float16):
            return self.init(t.name, t.data.transpose(perm).astype(np.float32))
        raise self.fail(f"weights '{t.name}' have type {t.type_name}")

    def _pads(self, padding, hw, k, s, d) -> list[int]:
        if min(*k, *s, *d) < 1:
            raise ModelLoadError(f"not a valid TFLite flatbuffer: operator {self.op.index} "
                                 f"({self.op.name}) has kernel {k}, strides {s}, dilations {d}")
        if padding == "VALID":
            return [0, 0, 0, 0]
        if padding != "SAME":
            raise self.fail(f"unknown padding {padding}")
        (t, b_), (l, r) = (_same_pads(hw[0], k[0], s[0], d[0]), _same_pads(hw[1], k[1], s[1], d[1]))
        return [t, l, b_, r]

    def op_conv_2d(self, op):
        self._conv(op, depthwise=False)

    def op_depthwise_conv_2d(self, op):
        self._conv(op, depthwise=True)

    def _pool(self, op: TflOp, onnx_op: str) -> None:
        o = op.options
        x = op.inputs[0]
        xs = self.t[x].shape
        if len(xs) != 4:
            raise self.fail("pooling needs a [N,H,W,C] tensor")
        k, s = o["filter"], o["stride"]
        pads = self._pads(o["padding"], xs[1:3], k, s, (1, 1))
        # count_include_pad=0 (the default): TFLite averages over the valid pixels only.
        y = self.node(onnx_op, [self.fin(x, NCHW)], kernel_shape=list(k), strides=list(s),
                      pads=pads)
        self.emit(op.outputs[0], y, NCHW, o["activation"])

    def op_average_pool_2d(self, op):
        self._pool(op, "AveragePool")

    def op_max_pool_2d(self, op):
        self._pool(op, "MaxPool")

    def op_fully_connected(self, op):
        o = op.options
        if o["weights_format"] != 0:
            raise self.fail("FULLY_CONNECTED with shuffled weights is not supported")
        x, w = op.inputs[0], op.inputs[1]
        b = op.inputs[2] if len(op.inputs) > 2 else -1
        ws = self.t[w].shape
        if len(ws) != 2:
            raise self.fail("FULLY_CONNECTED weights must be [units, depth]")
        n, k = ws
        size = int(np.prod(self.t[x].shape))
        if k == 0 or size % k:
            raise self.fail(f"input of {size} values cannot be cut into rows of {k}")
        # TFLite flattens the input, in NHWC order, to [batch, K].
        xr = self.reshaped_raw(x, (size // k, k))
        if not self.t[x].is_const:
            self.check_activation_type(x)
            xf = self.dq(x, xr)
        else:
            xf = self.fin(x, NHWC)
        inputs = [xf, self._weight(w, (0, 1))]
        bf = self.bias(b, x, w)
        if bf is not None:
            inputs.append(bf)
        y = self.node("Gemm", inputs, transB=1)
        self.emit(op.outputs[0], y, NHWC, o["activation"], shape=(size // k, n))

    def op_reshape(self, op):
        x, out = op.inputs[0], op.outputs[0]
        self._requant_or_alias(x, out, self.reshaped_raw(x, self.t[out].shape), NHWC)

    op_squeeze = op_reshape
    op_expand_dims = op_reshape

    def _same_quant(self, x: int, out: int) -> bool:
        tx, to = self.t[x], self.t[out]
        return (tx.dtype == to.dtype and tx.quantized == to.quantized
                and (not tx.quantized or (tx.scale[0] == to.scale[0]
                                          and tx.zero_point[0] == to.zero_point[0])))

    def _requant_or_alias(self, x: int, out: int, raw: str, layout: str) -> None:
        if self._same_quant(x, out):
            # Data movement only: the int8 tensor itself is reshaped, no DQ/Q around it.
            self.value[out] = (self.name_after(out, raw, layout), layout)
        else:
            self.check_activation_type(x)
            self.emit(out, self.dq(x, raw), layout)

    def _unary(self, op: TflOp, onnx_op: str, *extra: str) -> None:
        x = op.inputs[0]
        layout = self.layout_of(x)
        y = self.node(onnx_op, [self.fin(x, layout), *extra])
        self.emit(op.outputs[0], y, layout)

    def op_relu(self, op):
        self._unary(op, "Relu")

    def op_relu6(self, op):
        self._unary(op, "Clip", self.scalar_f32(0.0), self.scalar_f32(6.0))

    def op_relu_n1_to_1(self, op):
        self._unary(op, "Clip", self.scalar_f32(-1.0), self.scalar_f32(1.0))

    def op_logistic(self, op):
        self._unary(op, "Sigmoid")

    def op_tanh(self, op):
        self._unary(op, "Tanh")

    def op_quantize(self, op):
        # float -> int8 is QuantizeLinear; int8 -> int8 (a requantization) is DQ -> Q.
        x = op.inputs[0]
        layout = self.layout_of(x)
        self.emit(op.outputs[0], self.fin(x, layout), layout)

    def op_dequantize(self, op):
        x, out = op.inputs[0], op.outputs[0]
        t = self.t[x]
        if t.is_const:
            # float16 or int8 weights stored compactly and dequantized at load time (float16
            # models do this): fold into a float32 constant that the consumer reads directly.
            data = t.data.astype(np.float32)
            if t.quantized:
                shape = [1] * data.ndim
                if t.scale.size > 1:
                    shape[t.quant_dim] = -1
                data = (data - t.zero_point.reshape(shape)) * t.scale.reshape(shape)
            self.t[out] = dataclasses.replace(self.t[out], data=data.astype(np.float32),
                                              dtype=np.float32, type_name="FLOAT32",
                                              scale=None, zero_point=None, sparse=t.sparse)
            if t.sparse:
                self.sparse_by_name[self.t[out].name] = {**t.sparse, "tflite_tensor": t.name}
            return
        layout = self.layout_of(x)
        y = self.fin(x, layout)
        if not self.is_q(x):  # float -> float: nothing to do but keep the tensor's name
            y = self.node("Identity", [y])
        self.emit(out, y, layout)

    def op_depth_to_space(self, op):
        # TFLite's output[h*b + i, w*b + j, c] = input[h, w, (i*b + j)*C + c] is ONNX's DCR
        # order; moving values, it runs on int8 tensors as they are.
        x, out = op.inputs[0], op.outputs[0]
        bs = op.options["block_size"]
        if len(self.t[x].shape) != 4 or bs < 1:
            raise self.fail("DEPTH_TO_SPACE needs a [N,H,W,C] tensor and a block size of 1 or more")
        y = self.node("DepthToSpace", [self.raw(x, NCHW)], blocksize=bs, mode="DCR")
        self._requant_or_alias(x, out, y, NCHW)

    def op_densify(self, op):
        # A sparse constant made dense at load time: the reader already densified it.
        x, out = op.inputs[0], op.outputs[0]
        t = self.t[x]
        if not t.is_const:
            raise self.fail(f"DENSIFY reads '{t.name}', which is not a constant")
        self.t[out] = dataclasses.replace(self.t[out], data=t.data, sparse=t.sparse)
        if t.sparse:
            self.sparse_by_name[self.t[out].name] = {**t.sparse, "tflite_tensor": t.name}

    def op_softmax(self, op):
        x = op.inputs[0]
        layout = self.layout_of(x)
        rank = len(self.t[x].shape)
        xf = self.fin(x, layout)
        beta = op.options["beta"]
        if beta != 1.0:
            xf = self.node("Mul", [xf, self.scalar_f32(beta)])
        # TFLite's softmax runs over the last (channel) axis, which is axis 1 in NCHW.
        axis = 1 if layout == NCHW and rank == 4 else -1
        self.emit(op.outputs[0], self.node("Softmax", [xf], axis=axis), layout)

    def _common_layout(self, inputs: list[int]) -> str:
        """NCHW when every activation operand is 4-D and one of them already is NCHW."""
        acts = [i for i in inputs if not self.t[i].is_const]
        if acts and all(len(self.t[i].shape) == 4 for i in acts) and \
                any(self.layout_of(i) == NCHW for i in acts):
            return NCHW
        return NHWC

    def _binary(self, op: TflOp, onnx_op: str) -> None:
        a, b = op.inputs[0], op.inputs[1]
        out = op.outputs[0]
        layout = self._common_layout([a, b])
        rank = len(self.t[out].shape)
        # The int8 rescaling TFLite does (both inputs to a common scale, then to the output
        # scale) is expressed by the QDQ form: DQ(a), DQ(b) -> Add -> Q(out).
        y = self.node(onnx_op, [self.fin(a, layout, rank), self.fin(b, layout, rank)])
        self.emit(out, y, layout, op.options.get("activation", 0))

    def op_add(self, op):
        self._binary(op, "Add")

    def op_mul(self, op):
        self._binary(op, "Mul")

    def op_prelu(self, op):
        # PRELU's alpha broadcasts against the input (usually [1, 1, C]): a [1, C, 1, 1]
        # slope once the input runs NCHW.
        x, alpha = op.inputs[0], op.inputs[1]
        layout = self._common_layout([x])
        rank = len(self.t[x].shape)
        y = self.node("PRelu", [self.fin(x, layout), self.fin(alpha, layout, rank)])
        self.emit(op.outputs[0], y, layout)

    def op_hard_swish(self, op):
        self._unary(op, "HardSwish")  # x * relu6(x + 3) / 6, ONNX's HardSwish exactly

    def _resize(self, op: TflOp, mode: str) -> None:
        """RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR as ONNX Resize.

        TFLite (reference_ops::ResizeBilinear, ResizeNearestNeighbor) maps output pixel
        y to the input coordinate ``y * s`` with ``s = in / out``, or ``s = (in - 1) / (out
        - 1)`` under align_corners, or ``(y + 0.5) * s - 0.5`` under half_pixel_centers
        (clamped at the borders); ONNX's asymmetric, align_corners and half_pixel
        transformations are these formulas. Nearest neighbour takes ``floor(y * s)``
        (asymmetric, nearest_mode floor), ``round(y * s)`` with ties away from zero under
        align_corners (round_prefer_ceil: coordinates are never negative), and
        ``floor((y + 0.5) * s)`` under half_pixel_centers, which is half_pixel's
        ``(y + 0.5) * s - 0.5`` rounded with ties up (round_prefer_ceil).
        """
        x, out = op.inputs[0], op.outputs[0]
        o = op.options
        xs = self.t[x].shape
        size = self._const_ints(op.inputs[1], "size").reshape(-1)
        if len(xs) != 4 or size.size != 2:
            raise self.fail("resizing needs a [N,H,W,C] tensor and a size of two values")
        if o["align_corners"] and o["half_pixel_centers"]:
            raise self.fail("align_corners and half_pixel_centers together have no ONNX equivalent")
        if o["align_corners"]:
            coord = "align_corners"
        elif o["half_pixel_centers"]:
            coord = "half_pixel"
        else:
            coord = "asymmetric"
        attrs = dict(mode=mode, coordinate_transformation_mode=coord)
        if mode == "nearest":
            attrs["nearest_mode"] = "floor" if coord == "asymmetric" else "round_prefer_ceil"
        sizes = self.int64s([xs[0], xs[3], int(size[0]), int(size[1])], "sizes")
        if mode == "nearest" and self._same_quant(x, out):
            # picking pixels is data movement: the int8 tensor itself is resized
            y = self.node("Resize", [self.raw(x, NCHW), "", "", sizes], **attrs)
            self.value[out] = (self.name_after(out, y, NCHW), NCHW)
            return
        y = self.node("Resize", [self.fin(x, NCHW), "", "", sizes], **attrs)
        self.emit(out, y, NCHW)

    def op_resize_bilinear(self, op):
        self._resize(op, "linear")

    def op_resize_nearest_neighbor(self, op):
        self._resize(op, "nearest")

    def op_strided_slice(self, op):
        x, out = op.inputs[0], op.outputs[0]
        o = op.options
        if o["ellipsis_mask"] or o["new_axis_mask"]:
            raise self.fail("STRIDED_SLICE with an ellipsis or new-axis mask is not supported")
        xs = self.t[x].shape
        rank = len(xs)
        begin, end, strides = (self._const_ints(op.inputs[k], what).reshape(-1)
                               for k, what in ((1, "begin"), (2, "end"), (3, "strides")))
        if not begin.size == end.size == strides.size == rank or np.any(strides == 0):
            raise self.fail("STRIDED_SLICE needs begin, end and non-zero strides for every axis")
        big = np.iinfo(np.int64).max
        starts, ends, steps = [], [], []
        for a in range(rank):
            b, e, s = int(begin[a]), int(end[a]), int(strides[a])
            if o["offset"]:
                e = b + e  # end counts from begin
            if o["begin_mask"] >> a & 1:
                b = 0 if s > 0 else big
            if o["end_mask"] >> a & 1:
                e = big if s > 0 else -big
            if o["shrink_axis_mask"] >> a & 1:
                e, s = (b + 1 if b != -1 else big), 1  # one index, the axis then goes
            starts.append(b)
            ends.append(e)
            steps.append(s)
        keep_layout = rank == 4 and not o["shrink_axis_mask"] and self.layout_of(x) == NCHW
        layout = NCHW if keep_layout else NHWC
        axes = [NHWC_AXIS_IN_NCHW[a] for a in range(rank)] if keep_layout else list(range(rank))
        src = self.raw(x, layout)
        y = self.node("Slice", [src, self.int64s(starts, "starts"), self.int64s(ends, "ends"),
                                self.int64s(axes, "axes"), self.int64s(steps, "steps")])
        shape = self.t[out].shape
        if not keep_layout and o["shrink_axis_mask"]:
            y = self.node("Reshape", [y, self.int64s(list(shape), "shape")])
        self._requant_or_alias(x, out, y, layout)

    def _transpose_conv(self, op: TflOp, x: int, w: int, b: int, same: bool,
                        strides: tuple[int, int], activation: int = 0) -> None:
        """TFLite's transposed convolution (reference_ops::TransposeConv) as ConvTranspose.

        Every input pixel scatters a kernel into the output at ``in * stride - pad``, with
        ``pad`` the first half of the total SAME padding of the output size (0 for VALID); an
        output smaller than the scatter is cut at the end, a larger one padded there.
        """
        xs, ws, ys = self.t[x].shape, self.t[w].shape, self.t[op.outputs[0]].shape
        if len(xs) != 4 or len(ws) != 4 or len(ys) != 4:
            raise self.fail("only 2-D transposed convolutions on [N,H,W,C] tensors are supported")
        sh, sw = strides
        if min(sh, sw) < 1:
            raise ModelLoadError(f"not a valid TFLite flatbuffer: operator {op.index} ({op.name}) "
                                 f"has strides {strides}")
        cout, kh, kw, cin = ws  # OHWI; ONNX ConvTranspose wants [C_in, C_out, kH, kW]
        if cin != xs[3] or cout != ys[3]:
            raise self.fail(f"filter {list(ws)} does not fit input {list(xs)} and output {list(ys)}")
        begin, end, extra = [], [], []
        for size, out, k, st in ((xs[1], ys[1], kh, sh), (xs[2], ys[2], kw, sw)):
            total = (size - 1) * st + k - out
            first = max(total, 0) // 2 if same else 0
            begin.append(first)
            end.append(max(total, 0) - first)
            extra.append(max(-total, 0))
        if max(extra) >= max(sh, sw):
            raise self.fail(f"output {list(ys)} is larger than input {list(xs)} can scatter to")
        inputs = [self.fin(x, NCHW), self._weight(w, (3, 0, 1, 2))]
        bf = self.bias(b, x, w)
        if bf is not None:
            inputs.append(bf)
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=begin + end)
        if any(extra):
            attrs["output_padding"] = extra
        y = self.node("ConvTranspose", inputs, **attrs)
        self.emit(op.outputs[0], y, NCHW, activation)

    def op_transpose_conv(self, op):
        # inputs: output shape, weights, input, optional bias
        o = op.options
        if o["padding"] not in ("SAME", "VALID"):
            raise self.fail(f"unknown padding {o['padding']}")
        b = op.inputs[3] if len(op.inputs) > 3 else -1
        self._transpose_conv(op, op.inputs[2], op.inputs[1], b, o["padding"] == "SAME",
                             o["stride"], o["activation"])

    def op_convolution2dtransposebias(self, op):
        """MediaPipe's Convolution2DTransposeBias: TRANSPOSE_CONV with a bias (float only).

        Its options are TfLiteTransposeConvParams as raw bytes: padding (1 SAME, 2 VALID),
        stride_width, stride_height (int32 each).
        """
        import struct

        if len(op.custom_options) < 12 or len(op.inputs) < 2:
            raise ModelLoadError(f"not a valid TFLite flatbuffer: operator {op.index} ({op.name}) "
                                 f"has {len(op.custom_options)} bytes of options, expected 12")
        padding, sw, sh = struct.unpack("<3i", op.custom_options[:12])
        if padding not in (1, 2):
            raise ModelLoadError(f"not a valid TFLite flatbuffer: operator {op.index} ({op.name}) "
                                 f"has padding {padding}")
        if self.is_q(op.inputs[0]):
            raise self.fail("MediaPipe's transposed convolution is float only")
        b = op.inputs[2] if len(op.inputs) > 2 else -1
        self._transpose_conv(op, op.inputs[0], op.inputs[1], b, padding == 1, (sh, sw))

    def op_concatenation(self, op):
        out = op.outputs[0]
        rank = len(self.t[out].shape)
        axis = op.options["axis"]
        axis = axis + rank if axis < 0 else axis
        layout = self._common_layout(op.inputs)
        onnx_axis = NHWC_AXIS_IN_NCHW[axis] if layout == NCHW and rank == 4 else axis
        y = self.node("Concat", [self.fin(i, layout, rank) for i in op.inputs], axis=onnx_axis)
        self.emit(out, y, layout, op.options["activation"])

    def _const_ints(self, i: int, what: str) -> np.ndarray:
        t = self.t[i]
        if not t.is_const or t.dtype not in (np.int32, np.int64):
            raise self.fail(f"{what} '{t.name}' must be a constant int32 tensor")
        return t.data.astype(np.int64)

    def op_pad(self, op):
        x = op.inputs[0]
        rank = len(self.t[x].shape)
        pads = self._const_ints(op.inputs[1], "paddings").reshape(rank, 2)
        layout = self.layout_of(x)
        if layout == NCHW and rank == 4:
            pads = pads[list(TO_NCHW)]
        inputs = [self.fin(x, layout), self.int64s(list(pads[:, 0]) + list(pads[:, 1]), "pads")]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:  # PADV2: the value to pad with
            c = self.t[op.inputs[2]]
            value = float(c.data.reshape(-1)[0])
            if c.quantized:
                value = (value - float(c.zero_point[0])) * float(c.scale[0])
            inputs.append(self.scalar_f32(value))
        # In the float domain a pad of 0.0 quantizes to the output zero point, which is
        # what TFLite's int8 PAD writes.
        self.emit(op.outputs[0], self.node("Pad", inputs, mode="constant"), layout)

    op_padv2 = op_pad

    def _reduce(self, op: TflOp, onnx_op: str) -> None:
        x = op.inputs[0]
        rank = len(self.t[x].shape)
        axes = sorted({int(a) + rank if a < 0 else int(a)
                       for a in self._const_ints(op.inputs[1], "axes").reshape(-1)})
        keep = op.options["keep_dims"]
        layout = self.layout_of(x)
        if layout == NCHW and rank == 4:
            kept = [a for a in range(4) if a not in axes]
            order = [a for a in TO_NCHW if a in kept]  # remaining NHWC axes, in NCHW order
            if not keep and order != sorted(order):
                layout = NHWC  # dropping dims would leave them out of NHWC order
            else:
                axes = sorted(NHWC_AXIS_IN_NCHW[a] for a in axes)
        if onnx_op == "ReduceSum":  # axes became an input in opset 13 for ReduceSum only
            y = self.node(onnx_op, [self.fin(x, layout), self.int64s(axes, "axes")],
                          keepdims=int(keep))
        else:
            y = self.node(onnx_op, [self.fin(x, layout)], axes=axes, keepdims=int(keep))
        self.emit(op.outputs[0], y, layout if keep else NHWC)

    def op_mean(self, op):
        self._reduce(op, "ReduceMean")

    def op_sum(self, op):
        self._reduce(op, "ReduceSum")

    def op_reduce_max(self, op):
        self._reduce(op, "ReduceMax")

    def op_reduce_min(self, op):
        self._reduce(op, "ReduceMin")

    def op_reduce_prod(self, op):
        self._reduce(op, "ReduceProd")

    # ----- element-wise ---------------------------------------------------------------

    def op_sub(self, op):
        self._binary(op, "Sub")

    def op_div(self, op):
        self._binary(op, "Div")

    def op_maximum(self, op):
        self._binary(op, "Max")

    def op_minimum(self, op):
        self._binary(op, "Min")

    def op_pow(self, op):
        self._binary(op, "Pow")

    def op_squared_difference(self, op):
        a, b = op.inputs[0], op.inputs[1]
        layout = self._common_layout([a, b])
        rank = len(self.t[op.outputs[0]].shape)
        d = self.node("Sub", [self.fin(a, layout, rank), self.fin(b, layout, rank)])
        self.emit(op.outputs[0], self.node("Mul", [d, d]), layout)

    def op_exp(self, op):
        self._unary(op, "Exp")

    def op_log(self, op):
        self._unary(op, "Log")

    def op_sqrt(self, op):
        self._unary(op, "Sqrt")

    def op_abs(self, op):
        self._unary(op, "Abs")

    def op_neg(self, op):
        self._unary(op, "Neg")

    def op_floor(self, op):
        self._unary(op, "Floor")

    def op_ceil(self, op):
        self._unary(op, "Ceil")

    def op_sin(self, op):
        self._unary(op, "Sin")

    def op_cos(self, op):
        self._unary(op, "Cos")

    def op_elu(self, op):
        self._unary(op, "Elu")  # alpha 1, as TFLite's

    def op_leaky_relu(self, op):
        x = op.inputs[0]
        layout = self.layout_of(x)
        y = self.node("LeakyRelu", [self.fin(x, layout)], alpha=op.options["alpha"])
        self.emit(op.outputs[0], y, layout)

    def op_rsqrt(self, op):
        x = op.inputs[0]
        layout = self.layout_of(x)
        y = self.node("Reciprocal", [self.node("Sqrt", [self.fin(x, layout)])])
        self.emit(op.outputs[0], y, layout)

    def op_square(self, op):
        x = op.inputs[0]
        layout = self.layout_of(x)
        xf = self.fin(x, layout)
        self.emit(op.outputs[0], self.node("Mul", [xf, xf]), layout)

    def op_gelu(self, op):
        # ONNX's Gelu arrived in opset 20; the formula TFLite uses, spelt out:
        # 0.5 x (1 + erf(x / sqrt 2)), or 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
        x = op.inputs[0]
        layout = self.layout_of(x)
        xf = self.fin(x, layout)
        if op.options["approximate"]:
            cube = self.node("Mul", [self.node("Mul", [xf, xf]), xf])
            inner = self.node("Add", [xf, self.node("Mul", [cube, self.scalar_f32(0.044715)])])
            core = self.node("Tanh", [self.node("Mul", [inner,
                                                        self.scalar_f32(float(np.sqrt(2 / np.pi)))])])
        else:
            core = self.node("Erf", [self.node("Mul", [xf, self.scalar_f32(float(1 / np.sqrt(2)))])])
        half = self.node("Mul", [xf, self.scalar_f32(0.5)])
        y = self.node("Mul", [half, self.node("Add", [core, self.scalar_f32(1.0)])])
        self.emit(op.outputs[0], y, layout)

    def _last_axis(self, x: int) -> tuple[str, int]:
        """The layout to read x in and where TFLite's last (channel) axis then sits."""
        layout = self.layout_of(x)
        return layout, 1 if layout == NCHW and len(self.t[x].shape) == 4 else -1

    def op_log_softmax(self, op):
        x = op.inputs[0]
        layout, axis = self._last_axis(x)
        self.emit(op.outputs[0], self.node("LogSoftmax", [self.fin(x, layout)], axis=axis), layout)

    def op_l2_normalization(self, op):
        # x / max(sqrt(sum(x^2)), 1e-6) over the last axis (reference_ops::L2Normalization)
        x = op.inputs[0]
        layout, axis = self._last_axis(x)
        xf = self.fin(x, layout)
        norm = self.node("Sqrt", [self.node("ReduceSumSquare", [xf], axes=[axis], keepdims=1)])
        norm = self.node("Max", [norm, self.scalar_f32(1e-6)])
        self.emit(op.outputs[0], self.node("Div", [xf, norm]), layout, op.options["activation"])

    # ----- data movement in TFLite's own axis order -------------------------------------

    def _moved(self, op: TflOp, onnx_op: str, extra: list[str], **attrs) -> None:
        """An operator that only moves values: on the stored (int8) tensor when input and
        output share quantization, else DQ -> op -> Q. Axes are TFLite's (NHWC)."""
        x, out = op.inputs[0], op.outputs[0]
        moving = self._same_quant(x, out)
        src = self.raw(x, NHWC) if moving else self.fin(x, NHWC)
        self._finish(out, self.node(onnx_op, [src, *extra], **attrs), moving)

    def _axis(self, axis: int, rank: int) -> int:
        if not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for rank {rank}")
        return axis + rank if axis < 0 else axis

    def op_transpose(self, op):
        perm = [int(p) for p in self._const_ints(op.inputs[1], "permutation").reshape(-1)]
        if sorted(perm) != list(range(len(self.t[op.inputs[0]].shape))):
            raise self.fail(f"permutation {perm} does not fit the input")
        self._moved(op, "Transpose", [], perm=perm)

    def op_slice(self, op):
        x = op.inputs[0]
        xs = self.t[x].shape
        begin = self._const_ints(op.inputs[1], "begin").reshape(-1)
        size = self._const_ints(op.inputs[2], "size").reshape(-1)
        if not begin.size == size.size == len(xs):
            raise self.fail("SLICE needs a begin and a size for every axis")
        ends = [int(b + s) if s >= 0 else int(d) for b, s, d in zip(begin, size, xs)]
        self._moved(op, "Slice", [self.int64s(begin, "starts"), self.int64s(ends, "ends"),
                                  self.int64s(range(len(xs)), "axes")])

    def op_space_to_depth(self, op):
        # TFLite's output[h, w, (i*b + j)*C + c] = input[h*b + i, w*b + j, c], as ONNX's
        x, out = op.inputs[0], op.outputs[0]
        bs = op.options["block_size"]
        if len(self.t[x].shape) != 4 or bs < 1:
            raise self.fail("SPACE_TO_DEPTH needs a [N,H,W,C] tensor and a block size of 1 or more")
        y = self.node("SpaceToDepth", [self.raw(x, NCHW)], blocksize=bs)
        self._requant_or_alias(x, out, y, NCHW)

    def op_tile(self, op):
        self._moved(op, "Tile", [self.int64s(self._const_ints(op.inputs[1], "multiples")
                                             .reshape(-1), "repeats")])

    def op_broadcast_to(self, op):
        self._moved(op, "Expand", [self.int64s(self._const_ints(op.inputs[1], "shape")
                                               .reshape(-1), "shape")])

    def op_mirror_pad(self, op):
        if op.options["mode"] != "REFLECT":
            raise self.fail(f"MIRROR_PAD mode {op.options['mode']} has no ONNX equivalent")
        rank = len(self.t[op.inputs[0]].shape)
        pads = self._const_ints(op.inputs[1], "paddings").reshape(rank, 2)
        self._moved(op, "Pad", [self.int64s(list(pads[:, 0]) + list(pads[:, 1]), "pads")],
                    mode="reflect")

    def op_gather(self, op):
        x, idx = op.inputs[0], op.inputs[1]
        if op.options["batch_dims"]:
            raise self.fail("GATHER with batch_dims is not supported")
        axis = self._axis(op.options["axis"], len(self.t[x].shape))
        t = self.t[idx]
        if t.is_const:
            indices = self.int64s(self._const_ints(idx, "indices").reshape(-1), "indices")
            if t.data.ndim != 1:
                indices = self.init(f"{t.name}/indices", t.data.astype(np.int64))
        elif t.dtype in (np.int32, np.int64):
            indices = self.raw(idx, NHWC)
        else:
            raise self.fail(f"indices '{t.name}' have type {t.type_name}")
        self._moved(op, "Gather", [indices], axis=axis)

    def _multi_out(self, op: TflOp, onnx_op: str, src_index: int, extra: list[str],
                   final: bool, **attrs) -> tuple[list[str], bool]:
        """One ONNX node with an output per TFLite output (SPLIT, SPLIT_V, UNPACK).

        Returns its values and whether they only move values (no requantization). With
        ``final`` the node's outputs are the TFLite tensors themselves when they only move
        values; otherwise callers finish each value with :meth:`_finish`.
        """
        x = op.inputs[src_index]
        moving = all(self._same_quant(x, o) for o in op.outputs)
        src = self.raw(x, NHWC) if moving else self.fin(x, NHWC)
        direct = final and moving
        names = [self.out_name(o, NHWC) if direct else self.uniq(f"op{op.index}_{op.name}/{k}")
                 for k, o in enumerate(op.outputs)]
        self.nodes.append(helper.make_node(onnx_op, [src, *extra], names,
                                           name=self.uniq(f"op{op.index}_{op.name}/{onnx_op}#node"),
                                           **attrs))
        if direct:
            for o, v in zip(op.outputs, names):
                self.check_activation_type(o)
                self.value[o] = (v, NHWC)
        return names, moving

    def _finish(self, out: int, y: str, moving: bool) -> None:
        """y, just made, becomes TFLite tensor out (quantized when it is not data movement)."""
        if moving:
            self.check_activation_type(out)
            self.value[out] = (self.name_after(out, y, NHWC), NHWC)
        else:
            self.emit(out, y, NHWC)

    def _split(self, op: TflOp, src_index: int, axis: int, sizes: list[int]) -> None:
        rank = len(self.t[op.inputs[src_index]].shape)
        axis = self._axis(axis, rank)
        dim = self.t[op.inputs[src_index]].shape[axis]
        if len(sizes) != len(op.outputs) or sum(sizes) != dim:
            raise self.fail(f"split sizes {sizes} do not divide axis {axis} of size {dim}")
        values, moving = self._multi_out(op, "Split", src_index, [self.int64s(sizes, "split")],
                                         True, axis=axis)
        if not moving:
            for o, v in zip(op.outputs, values):
                self.emit(o, v, NHWC)

    def op_split(self, op):
        axis = int(self._const_ints(op.inputs[0], "axis").reshape(-1)[0])
        n = op.options["num_splits"] or len(op.outputs)
        dim = self.t[op.inputs[1]].shape[self._axis(axis, len(self.t[op.inputs[1]].shape))]
        if n < 1 or dim % n:
            raise self.fail(f"axis of size {dim} cannot be split into {n} equal parts")
        self._split(op, 1, axis, [dim // n] * n)

    def op_split_v(self, op):
        rank = len(self.t[op.inputs[0]].shape)
        axis = self._axis(int(self._const_ints(op.inputs[2], "axis").reshape(-1)[0]), rank)
        sizes = [int(v) for v in self._const_ints(op.inputs[1], "size_splits").reshape(-1)]
        if sizes.count(-1) == 1:  # one size inferred from the rest
            sizes[sizes.index(-1)] = self.t[op.inputs[0]].shape[axis] - (sum(sizes) + 1)
        self._split(op, 0, axis, sizes)

    def op_unpack(self, op):
        x = op.inputs[0]
        rank = len(self.t[x].shape)
        axis = self._axis(op.options["axis"], rank)
        n = self.t[x].shape[axis]
        if n != len(op.outputs):
            raise self.fail(f"UNPACK into {len(op.outputs)} outputs along an axis of size {n}")
        values, moving = self._multi_out(op, "Split", 0, [self.int64s([1] * n, "split")], False,
                                         axis=axis)
        for o, v in zip(op.outputs, values):
            self._finish(o, self.node("Squeeze", [v, self.int64s([axis], "axes")]), moving)

    def op_pack(self, op):
        out = op.outputs[0]
        axis = self._axis(op.options["axis"], len(self.t[out].shape))
        parts = [self.node("Unsqueeze", [self.fin(i, NHWC), self.int64s([axis], "axes")])
                 for i in op.inputs]
        self.emit(out, self.node("Concat", parts, axis=axis), NHWC)

    def op_batch_matmul(self, op):
        a, b = op.inputs[0], op.inputs[1]
        operands = []
        for i, adj in ((a, op.options["adj_x"]), (b, op.options["adj_y"])):
            v = self.fin(i, NHWC)
            rank = len(self.t[i].shape)
            if adj:
                perm = list(range(rank - 2)) + [rank - 1, rank - 2]
                v = self.node("Transpose", [v], perm=perm)
            operands.append(v)
        self.emit(op.outputs[0], self.node("MatMul", operands), NHWC)
