"""Detectors as first-class models: attach a head, find it again, run it on images.

The head itself (parsing, anchors, decoding, NMS) lives in
:mod:`edgeloop.runtime.detect` so the device decodes with the very same code;
this module adds what needs the ONNX graph: checking a head against a model's
outputs, recognising Ultralytics exports by their metadata, and a local
detector on onnxruntime.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import onnx

from edgeloop.errors import EdgeloopError, UsageError
from edgeloop.graph import get_metadata, set_metadata
from edgeloop.runtime.detect import (HeadError, Letterbox, anchor_count, decode, parse_head,
                                     preprocess)

HEAD_KEYS = "kind, labels, input (size, layout, range or mean/std, resize)"
NO_HEAD = ("this model has no detection head: attach one with `edgeloop convert MODEL --head HEAD.json "
           f"-o OUT.onnx` (keys: {HEAD_KEYS}, plus boxes/scores/anchors for ssd_anchors)")


class HeadFileError(EdgeloopError):
    """A head file that is not valid JSON or does not fit the model."""


def read_head_file(path: "str | Path") -> Dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise HeadFileError(f"cannot read the head file ({e.strerror or e})", where=str(p)) from None
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise HeadFileError(f"not valid JSON ({e})", where=str(p)) from None
    if isinstance(spec, dict) and spec.get("kind") == "tflite_ssd" and "anchors" not in spec:
        return spec   # completed from the model's own head (its post-process op) by fit_head
    try:
        return parse_head(spec)
    except HeadError as e:
        raise HeadFileError(str(e), where=str(p)) from None


def _dims(vi: onnx.ValueInfoProto) -> List[Optional[int]]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _quant_of(model: onnx.ModelProto, tensor: str, consumer: bool) -> Optional[List[float]]:
    """[scale, zero_point] of the Quantize/DequantizeLinear next to a graph input or output."""
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        hit = (n.op_type == "DequantizeLinear" and n.input[0] == tensor) if consumer else \
              (n.op_type == "QuantizeLinear" and n.output[0] == tensor)
        if hit and len(n.input) >= 2 and n.input[1] in inits:
            scale = onnx.numpy_helper.to_array(inits[n.input[1]]).reshape(-1)
            zp = (onnx.numpy_helper.to_array(inits[n.input[2]]).reshape(-1)
                  if len(n.input) >= 3 and n.input[2] in inits else np.zeros(1))
            if scale.size == 1:
                return [float(scale[0]), float(zp[0])]
    return None


def _over_model_head(model: onnx.ModelProto, spec: Any) -> Any:
    """A head file over the head the model already carries (a TFLite model's post-process op):
    what the file leaves out (anchors, box coder, NMS options) comes from the model, what it
    gives (labels, input, thresholds) wins; sections merge key by key."""
    old = get_metadata(model).get("head")
    if not (isinstance(spec, dict) and isinstance(old, dict) and spec.get("kind", old.get("kind")) == old.get("kind")
            and old.get("kind") == "tflite_ssd"):
        return spec
    merged = dict(old)
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            merged[key] = {**old[key], **value}
        else:
            merged[key] = value
    return merged


def fit_head(model: onnx.ModelProto, spec: Dict[str, Any], where: str = "head") -> Dict[str, Any]:
    """Check a parsed head against the model (output names, box counts, input size) and fill
    what the model tells: int8 scales of the input and outputs, output names left out."""
    head = parse_head(_over_model_head(model, spec))
    outs = {o.name: _dims(o) for o in model.graph.output}
    names = list(outs)

    def need(key: str, name: Optional[str], index: int) -> str:
        if name is None:
            if index >= len(names):
                raise HeadFileError(f"head key '{key}': the model has only {len(names)} outputs", where=where)
            return names[index]
        if name not in outs:
            raise HeadFileError(f"head key '{key}': the model has no output '{name}' "
                                f"(it has {', '.join(names)})", where=where)
        return name

    inp = model.graph.input[0]
    dims = _dims(inp)
    if len(dims) == 4 and dims[1] is not None and dims[2] is not None and dims[3] is not None:
        if head["input"]["layout"] == "NHWC":
            h, w = dims[1], dims[2]
        else:
            h, w = dims[2], dims[3]
        size = head["input"]["size"]
        if [w, h] != list(size):
            raise HeadFileError(f"head key 'input.size': {size} (width, height) but the model's input "
                                f"'{inp.name}' is {w}x{h} ({head['input']['layout']} {dims})", where=where)
    kind = head["kind"]
    if kind in ("yolov8", "yolov5"):
        head["output"] = need("output", head.get("output"), 0)
    elif kind in ("ssd_anchors", "tflite_ssd"):
        head["boxes"]["output"] = need("boxes.output", head["boxes"]["output"], 0)
        head["scores"]["output"] = need("scores.output", head["scores"]["output"], 1)
        count = anchor_count(head)
        shape = outs[head["boxes"]["output"]]
        if count is not None and len(shape) >= 2 and shape[-2] is not None and shape[-2] != count:
            raise HeadFileError(f"head key 'anchors': the settings give {count} anchors but output "
                                f"'{head['boxes']['output']}' has {shape[-2]} boxes", where=where)
        if len(shape) >= 1 and shape[-1] is not None and shape[-1] < 4:
            raise HeadFileError(f"head key 'boxes.output': output '{head['boxes']['output']}' has "
                                f"{shape[-1]} values per box, needs at least 4", where=where)
    else:
        head["heatmap"]["output"] = need("heatmap.output", head["heatmap"]["output"], 0)

    et = model.graph.input[0].type.tensor_type.elem_type
    if et in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and not head["input"].get("quant"):
        q = _quant_of(model, model.graph.input[0].name, consumer=True)
        if q is None:
            raise HeadFileError("head key 'input.quant': the model takes integers; give [scale, zero_point]",
                                where=where)
        head["input"]["quant"] = q
    for o in model.graph.output:
        if o.type.tensor_type.elem_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) \
                and o.name not in head["output_quant"]:
            q = _quant_of(model, o.name, consumer=False)
            if q is not None:
                head["output_quant"][o.name] = q
    return head


def attach_head(model: onnx.ModelProto, spec: Dict[str, Any], where: str = "head") -> onnx.ModelProto:
    try:
        head = fit_head(model, spec, where)
    except HeadError as e:
        raise HeadFileError(str(e), where=where) from None
    set_metadata(model, head=head, task="detection", labels=head["labels"])
    return model


def ultralytics_head(model: onnx.ModelProto) -> Optional[Dict[str, Any]]:
    """The head of an Ultralytics ONNX export, read from its own metadata (task, names,
    imgsz, stride); None when the model is not one."""
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("task") != "detect" or "names" not in meta:
        return None
    try:
        names = ast.literal_eval(meta["names"])        # "{0: 'person', 1: 'car'}": literals only
        imgsz = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        labels = [str(names[k]) for k in sorted(names)]
    else:
        labels = [str(x) for x in names]
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    h, w = int(imgsz[0]), int(imgsz[1])                 # Ultralytics' imgsz is (height, width)
    out = model.graph.output[0]
    dims = _dims(out)
    kind = "yolov8"
    if len(dims) == 3 and dims[2] is not None and dims[2] == len(labels) + 5:
        kind = "yolov5"
    return parse_head({"kind": kind, "labels": labels, "output": out.name,
                       "input": {"layout": "NCHW", "size": [w, h], "range": [0.0, 1.0],
                                 "resize": "letterbox", "pad": 114},
                       "source": "ultralytics metadata"})


def head_of(model: onnx.ModelProto) -> Optional[Dict[str, Any]]:
    """The model's head: attached (``edgeloop.head``) or recognised from Ultralytics metadata."""
    meta = get_metadata(model)
    spec = meta.get("head")
    if isinstance(spec, dict):
        try:
            return parse_head(spec)
        except HeadError as e:
            raise HeadFileError(f"the head stored in the model is invalid: {e}") from None
    return ultralytics_head(model)


def require_head(model: onnx.ModelProto, where: str) -> Dict[str, Any]:
    head = head_of(model)
    if head is None:
        raise UsageError(NO_HEAD, where=where)
    return head


class Detector:
    """A detector on onnxruntime: image in, boxes out (in the image's pixels)."""

    def __init__(self, model: onnx.ModelProto, head: Optional[Dict[str, Any]] = None, threads: int = 1):
        import onnxruntime as ort

        self.head = head if head is not None else require_head(model, "model")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        i = self.session.get_inputs()[0]
        self.input_name = i.name
        self.input_dtype = {"tensor(float)": np.float32, "tensor(int8)": np.int8,
                            "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}.get(i.type, np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def raw(self, image: Any):
        x, box = preprocess(image, self.head, self.input_dtype)
        values = self.session.run(None, {self.input_name: x})
        return dict(zip(self.output_names, values)), box

    def detect(self, image: Any, min_score: Optional[float] = None) -> List[Dict[str, Any]]:
        outputs, box = self.raw(image)
        return decode(self.head, outputs, box, min_score)


__all__ = ["Detector", "HeadFileError", "Letterbox", "attach_head", "fit_head", "head_of",
           "read_head_file", "require_head", "ultralytics_head", "NO_HEAD"]
