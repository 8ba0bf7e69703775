"""TFLite detectors that end in the ``TFLite_Detection_PostProcess`` custom op, built here.

No wheel on PyPI ships such a model, so they are written with the TFLite schema's object
API (``ai_edge_litert.schema_py_generated``) and run with LiteRT, which registers the op:

* :func:`tiny_ssd`: a small conv trunk (random weights) on two feature maps with
  TF Object Detection-style multi-scale anchors (several sizes and aspect ratios), so the
  box coder's anchor sizes and scales all matter; optionally uint8 box encodings, class
  scores and anchors (the op dequantizes them);
* :func:`blazeface_ssd`: MediaPipe's trained face detector (short range) with a few ops
  appended that re-encode its boxes in TFLite's coder (y, x, log h, log w), then the op:
  a real trained detector in the tflite_ssd format.

Shared by tests/test_detect_tflite_ssd.py and bench/bench_detect.py.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Optional, Sequence

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb
from flatbuffers import flexbuffers

POSTPROCESS = "TFLite_Detection_PostProcess"
DEFAULT_OPTIONS = {"max_detections": 10, "max_classes_per_detection": 1, "detections_per_class": 100,
                   "use_regular_nms": False, "nms_score_threshold": 0.3, "nms_iou_threshold": 0.5,
                   "num_classes": 3, "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0}
_TYPES = {np.float32: fb.TensorType.FLOAT32, np.int8: fb.TensorType.INT8,
          np.uint8: fb.TensorType.UINT8, np.int32: fb.TensorType.INT32}


class Builder:
    """Adds tensors and operators to a TFLite model (a new one, or one read from bytes)."""

    def __init__(self, data: Optional[bytes] = None):
        if data is None:
            self.m = fb.ModelT()
            self.m.version = 3
            self.m.buffers = [fb.BufferT()]
            self.m.operatorCodes = []
            sg = fb.SubGraphT()
            sg.tensors, sg.operators, sg.inputs, sg.outputs = [], [], [], []
            self.m.subgraphs = [sg]
        else:
            self.m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
        self.sg = self.m.subgraphs[0]

    def tensor(self, name: str, shape: Sequence[int], dtype: Any = np.float32,
               data: Optional[np.ndarray] = None, quant: Optional[tuple] = None) -> int:
        t = fb.TensorT()
        t.name = name.encode()
        t.shape = [int(d) for d in shape]
        t.type = _TYPES[dtype]
        t.buffer = 0
        if data is not None:
            b = fb.BufferT()
            b.data = np.ascontiguousarray(np.asarray(data, dtype).reshape(shape)).tobytes()
            self.m.buffers.append(b)
            t.buffer = len(self.m.buffers) - 1
        if quant is not None:
            q = fb.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(quant[0])], [int(quant[1])]
            t.quantization = q
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def _code(self, builtin: int, custom: Optional[str] = None, version: int = 1) -> int:
        for k, c in enumerate(self.m.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin and \
                    (custom is None or c.customCode == custom.encode()):
                return k
        c = fb.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), version
        if custom is not None:
            c.customCode = custom.encode()
        self.m.operatorCodes.append(c)
        return len(self.m.operatorCodes) - 1

    def op(self, name: str, inputs: List[int], outputs: List[int], options: Any = None,
           version: int = 1) -> None:
        o = fb.OperatorT()
        o.inputs, o.outputs = list(inputs), list(outputs)
        if name == POSTPROCESS:
            o.opcodeIndex = self._code(fb.BuiltinOperator.CUSTOM, POSTPROCESS)
            o.customOptions = list(flexbuffers.Dumps(options))
            o.customOptionsFormat = fb.CustomOptionsFormat.FLEXBUFFERS
        else:
            o.opcodeIndex = self._code(getattr(fb.BuiltinOperator, name), version=version)
            if options is not None:
                o.builtinOptionsType, o.builtinOptions = options
        self.sg.operators.append(o)

    def postprocess(self, boxes: int, scores: int, anchors: int, options: Dict[str, Any]) -> List[int]:
        """Append the op; its four outputs become the graph's outputs."""
        md = options["max_detections"] * options["max_classes_per_detection"]
        outs = [self.tensor("TFLite_Detection_PostProcess", [1, md, 4]),
                self.tensor("TFLite_Detection_PostProcess:1", [1, md]),
                self.tensor("TFLite_Detection_PostProcess:2", [1, md]),
                self.tensor("TFLite_Detection_PostProcess:3", [1])]
        self.op(POSTPROCESS, [boxes, scores, anchors], outs, options)
        self.sg.outputs = outs
        return outs

    def pack(self) -> bytes:
        b = flatbuffers.Builder(1 << 16)
        b.Finish(self.m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _conv(b: Builder, x: int, cin: int, cout: int, k: int, stride: int, size: int, name: str,
          rng: np.random.Generator, relu: bool) -> int:
    w = b.tensor(f"{name}/w", [cout, k, k, cin], data=rng.normal(0, 1.0 / math.sqrt(k * k * cin),
                                                                  (cout, k, k, cin)))
    bias = b.tensor(f"{name}/b", [cout], data=rng.normal(0, 0.1, cout))
    y = b.tensor(name, [1, size, size, cout])
    opt = fb.Conv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW = fb.Padding.SAME, stride, stride
    opt.dilationHFactor = opt.dilationWFactor = 1
    opt.fusedActivationFunction = fb.ActivationFunctionType.RELU if relu else 0
    b.op("CONV_2D", [x, w, bias], [y], (fb.BuiltinOptions.Conv2DOptions, opt))
    return y


def _reshape(b: Builder, x: int, shape: List[int], name: str, dtype: Any = np.float32,
             quant: Optional[tuple] = None) -> int:
    y = b.tensor(name, shape, dtype, quant=quant)
    opt = fb.ReshapeOptionsT()
    opt.newShape = list(shape)
    b.op("RESHAPE", [x], [y], (fb.BuiltinOptions.ReshapeOptions, opt))
    return y


def _concat(b: Builder, xs: List[int], axis: int, shape: List[int], name: str) -> int:
    y = b.tensor(name, shape)
    opt = fb.ConcatenationOptionsT()
    opt.axis = axis
    b.op("CONCATENATION", xs, [y], (fb.BuiltinOptions.ConcatenationOptions, opt))
    return y


def grid_anchors(sizes: Sequence[int], scales: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """TF Object Detection-style grid anchors [N, 4] as (y_center, x_center, h, w), per
    feature map (cells row-major, then scale x aspect ratio)."""
    rows = []
    for size, scale in zip(sizes, scales):
        for i, j in itertools.product(range(size), range(size)):
            for r in ratios:
                rows.append([(i + 0.5) / size, (j + 0.5) / size, scale / math.sqrt(r), scale * math.sqrt(r)])
    return np.asarray(rows, np.float32)


def tiny_ssd(seed: int = 0, quantized: bool = False, image: int = 32,
             options: Optional[Dict[str, Any]] = None) -> bytes:
    """A small SSD: conv trunk on a [1, image, image, 3] float input (range [-1, 1]), box and
    class heads on an image/4 and an image/8 feature map, 3 anchors per cell, sigmoid class
    scores with a background column, then the post-process op. ``quantized``: the op reads
    uint8 box encodings and class scores (QUANTIZE ops) and uint8 anchors, as in TF's
    quantized SSD models."""
    opts = dict(DEFAULT_OPTIONS, **(options or {}))
    nc = opts["num_classes"]
    rng = np.random.default_rng(seed)
    b = Builder()
    x = b.tensor("image", [1, image, image, 3])
    b.sg.inputs = [x]
    ratios = (1.0, 2.0, 0.5)
    a = len(ratios)
    s1, s2 = image // 4, image // 8
    f = _conv(b, x, 3, 8, 3, 2, image // 2, "trunk/conv1", rng, True)
    f1 = _conv(b, f, 8, 16, 3, 2, s1, "trunk/conv2", rng, True)
    f2 = _conv(b, f1, 16, 16, 3, 2, s2, "trunk/conv3", rng, True)
    boxes, classes = [], []
    for k, (feat, s) in enumerate(((f1, s1), (f2, s2))):
        bx = _conv(b, feat, 16, a * 4, 1, 1, s, f"head{k}/box", rng, False)
        cl = _conv(b, feat, 16, a * (nc + 1), 1, 1, s, f"head{k}/class", rng, False)
        boxes.append(_reshape(b, bx, [1, s * s * a, 4], f"head{k}/box/reshape"))
        classes.append(_reshape(b, cl, [1, s * s * a, nc + 1], f"head{k}/class/reshape"))
    n = (s1 * s1 + s2 * s2) * a
    box = _concat(b, boxes, 1, [1, n, 4], "raw_outputs/box_encodings")
    logits = _concat(b, classes, 1, [1, n, nc + 1], "raw_outputs/class_logits")
    score = b.tensor("raw_outputs/class_predictions", [1, n, nc + 1])
    b.op("LOGISTIC", [logits], [score])
    anchors = grid_anchors((s1, s2), (0.3, 0.7), ratios)
    if quantized:
        qb = b.tensor("raw_outputs/box_encodings/uint8", [1, n, 4], np.uint8, quant=(0.05, 128))
        b.op("QUANTIZE", [box], [qb])
        qs = b.tensor("raw_outputs/class_predictions/uint8", [1, n, nc + 1], np.uint8, quant=(1 / 256, 0))
        b.op("QUANTIZE", [score], [qs])
        ascale = float(anchors.max()) / 255
        aq = np.clip(np.round(anchors / ascale), 0, 255).astype(np.uint8)
        anc = b.tensor("anchors", [n, 4], np.uint8, data=aq, quant=(ascale, 0))
        box, score = qb, qs
    else:
        anc = b.tensor("anchors", [n, 4], data=anchors)
    b.postprocess(box, score, anc, opts)
    return b.pack()


def blazeface_ssd(tflite: bytes, anchors_xywh: np.ndarray, options: Optional[Dict[str, Any]] = None) -> bytes:
    """MediaPipe's face detector (regressors [1, 896, 16] as x, y, w, h offsets in input
    pixels, anchors of size 1; classificators [1, 896, 1] logits) re-encoded for TFLite's box
    coder and ended by the post-process op: y = y_px (y_scale 128), x = x_px (x_scale 128),
    h = log(h_px / 128) (h_scale 1), w likewise; scores = sigmoid(logits), no background."""
    opts = dict(DEFAULT_OPTIONS, num_classes=1, y_scale=128.0, x_scale=128.0, h_scale=1.0, w_scale=1.0,
                nms_score_threshold=0.5, nms_iou_threshold=0.3, max_detections=20)
    opts.update(options or {})
    b = Builder(tflite)
    names = {t.name.decode(): k for k, t in enumerate(b.sg.tensors)}
    reg, cls = names["regressors"], names["classificators"]
    n = int(b.sg.tensors[reg].shape[1])

    def gather(x: int, idx: List[int], name: str) -> int:
        y = b.tensor(name, [1, n, len(idx)])
        opt = fb.GatherOptionsT()
        opt.axis = 2
        b.op("GATHER", [x, b.tensor(f"{name}/indices", [len(idx)], np.int32, data=np.asarray(idx))], [y],
             (fb.BuiltinOptions.GatherOptions, opt))
        return y

    def binary(op: str, x: int, c: float, name: str, shape: List[int]) -> int:
        y = b.tensor(name, shape)
        k = b.tensor(f"{name}/c", [1], data=np.asarray([c], np.float32))
        options = None
        if op == "MUL":
            options = (fb.BuiltinOptions.MulOptions, fb.MulOptionsT())
        elif op == "MAXIMUM":
            options = (fb.BuiltinOptions.MaximumMinimumOptions, fb.MaximumMinimumOptionsT())
        b.op(op, [x, k], [y], options)
        return y

    yx = gather(reg, [1, 0], "ssd/yx")
    hw = gather(reg, [3, 2], "ssd/hw")
    hw = binary("MUL", hw, 1 / 128, "ssd/hw_norm", [1, n, 2])
    hw = binary("MAXIMUM", hw, 1e-6, "ssd/hw_pos", [1, n, 2])
    loghw = b.tensor("ssd/log_hw", [1, n, 2])
    b.op("LOG", [hw], [loghw])
    box = _concat(b, [yx, loghw], 2, [1, n, 4], "ssd/box_encodings")
    score = b.tensor("ssd/class_predictions", [1, n, 1])
    b.op("LOGISTIC", [cls], [score])
    a = np.asarray(anchors_xywh, np.float32)[:, [1, 0, 3, 2]]
    anc = b.tensor("ssd/anchors", [n, 4], data=a)
    b.postprocess(box, score, anc, opts)
    return b.pack()


def litert_run(model: bytes, x: np.ndarray) -> Dict[str, np.ndarray]:
    """LiteRT's four post-process outputs: boxes [K, 4] (ymin, xmin, ymax, xmax, normalised),
    classes [K], scores [K] and the count, cut to the count."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    outs = [it.get_tensor(d["index"]) for d in it.get_output_details()]
    boxes, classes, scores, count = outs
    k = int(count.reshape(-1)[0])
    return {"boxes": boxes[0, :k], "classes": classes[0, :k].astype(np.int64), "scores": scores[0, :k],
            "count": k}
