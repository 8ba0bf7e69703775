"""Detection heads: how a detector's raw outputs become boxes (numpy only).

One module decodes for every stage (``predict``, ``shrink``, ``serve`` and the
bundle runtime), so a box is the same box everywhere. A head is a small JSON
document (``edgeloop.head`` in the model's metadata, ``head`` in a bundle's
manifest); :func:`parse_head` checks it and fills defaults, :func:`preprocess`
turns an image into the input tensor (remembering the letterbox), and
:func:`decode` turns the outputs into detections in the ORIGINAL image's
pixels::

    {"box": [x1, y1, x2, y2], "score": 0.93, "label": "face"}

Kinds: ``yolov8`` ([1, 4+nc, N], cx cy w h in input pixels, sigmoid scores),
``yolov5`` ([1, N, 5+nc] with objectness), ``ssd_anchors`` (MediaPipe-style,
anchors computed from the head's settings as MediaPipe's SsdAnchorsCalculator
does), ``tflite_ssd`` (the box coder of TFLite's Detection_PostProcess op, its
anchors in the head; with the op's options under ``postprocess``, as the TFLite
importer writes them, boxes are selected as the op selects them) and ``centroids`` (FOMO-style heatmaps with a background
class). Everything is vectorised; the only Python loop left is greedy NMS over
the boxes it keeps (bounded by ``max_detections``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

KINDS = ("yolov8", "yolov5", "ssd_anchors", "tflite_ssd", "centroids")
LAYOUTS = ("NHWC", "NCHW")
RESIZES = ("letterbox", "stretch")
ACTIVATIONS = ("sigmoid", "none", "softmax")
COORDS = ("cxcywh", "yxhw", "xyxy", "yxyx")


class HeadError(ValueError):
    """A head description that cannot work; ``key`` names the offending key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"head key '{key}': {message}")
        self.key = key
        self.message = message


# ------------------------------------------------------------------ the head document

def _num(v: Any, key: str, *, positive: bool = False, lo: Optional[float] = None,
         hi: Optional[float] = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise HeadError(key, f"must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise HeadError(key, f"must be positive, got {v!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise HeadError(key, f"must be between {lo} and {hi}, got {v!r}")
    return float(v)


def _nums(v: Any, key: str, n: Optional[int] = None, **kw: Any) -> List[float]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n) or not v:
        raise HeadError(key, f"must be a list of {n or 'some'} numbers, got {v!r}")
    return [_num(x, f"{key}[{i}]", **kw) for i, x in enumerate(v)]


def _choice(v: Any, key: str, options: Sequence[str]) -> str:
    if v not in options:
        raise HeadError(key, f"must be one of {', '.join(options)}, got {v!r}")
    return str(v)


def _out_name(section: Dict[str, Any], key: str) -> Optional[str]:
    name = section.get("output")
    if name is not None and not isinstance(name, str):
        raise HeadError(f"{key}.output", f"must be an output name, got {name!r}")
    return name


def parse_head(spec: Any) -> Dict[str, Any]:
    """Check a head document and return it with every default filled in.

    Raises :class:`HeadError` naming the first bad key.
    """
    if not isinstance(spec, dict):
        raise HeadError("kind", "a head is a JSON object with at least 'kind', 'labels' and 'input'")
    head = dict(spec)
    kind = _choice(head.get("kind"), "kind", KINDS)
    labels = head.get("labels")
    if labels is None:
        labels = []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise HeadError("labels", "must be a list of class names")
    head["labels"] = labels

    inp = head.get("input")
    if not isinstance(inp, dict):
        raise HeadError("input", "must be an object saying how an image becomes the input tensor "
                        "(size, layout, range or mean/std, resize)")
    inp = dict(inp)
    inp["layout"] = _choice(inp.get("layout", "NHWC"), "input.layout", LAYOUTS)
    inp["size"] = [int(x) for x in _nums(inp.get("size"), "input.size", 2, positive=True)]
    inp["resize"] = _choice(inp.get("resize", "letterbox"), "input.resize", RESIZES)
    inp["channels"] = _choice(inp.get("channels", "RGB"), "input.channels", ("RGB", "BGR"))
    if "mean" in inp or "std" in inp:
        inp["mean"] = _nums(inp.get("mean", [0.0, 0.0, 0.0]), "input.mean", 3)
        inp["std"] = _nums(inp.get("std", [1.0, 1.0, 1.0]), "input.std", 3, positive=True)
    else:
        rng = _nums(inp.get("range", [0.0, 1.0]), "input.range", 2)
        if rng[0] == rng[1]:
            raise HeadError("input.range", "low and high must differ")
        inp["range"] = rng
    inp["pad"] = _num(inp.get("pad", 114 if kind in ("yolov8", "yolov5") else 0), "input.pad", lo=0, hi=255)
    if "quant" in inp and inp["quant"] is not None:
        q = _nums(inp["quant"], "input.quant", 2)
        if q[0] <= 0:
            raise HeadError("input.quant", "scale must be positive")
        inp["quant"] = q
    head["input"] = inp

    head["min_score"] = _num(head.get("min_score", 0.25 if kind in ("yolov8", "yolov5") else 0.5),
                             "min_score", lo=0.0, hi=1.0)
    head["nms_iou"] = _num(head.get("nms_iou", 0.45), "nms_iou", lo=0.0, hi=1.0)
    head["nms"] = _choice(head.get("nms", "greedy"), "nms", ("greedy", "weighted", "none"))
    head["max_detections"] = int(_num(head.get("max_detections", 100), "max_detections", positive=True))
    head["class_agnostic"] = bool(head.get("class_agnostic", False))
    oq = head.get("output_quant") or {}
    if not isinstance(oq, dict):
        raise HeadError("output_quant", "must map output names to [scale, zero_point]")
    head["output_quant"] = {str(k): _nums(v, f"output_quant.{k}", 2) for k, v in oq.items()}

    if kind in ("yolov8", "yolov5"):
        head["output"] = head.get("output")
        if head["output"] is not None and not isinstance(head["output"], str):
            raise HeadError("output", "must be an output name")
    elif kind in ("ssd_anchors", "tflite_ssd"):
        boxes = head.get("boxes")
        if not isinstance(boxes, dict):
            raise HeadError("boxes", "must be an object: {\"output\": NAME, \"coords\": ..., \"scale\": [...]}")
        boxes = dict(boxes)
        boxes["output"] = _out_name(boxes, "boxes")
        default_coords = "cxcywh" if kind == "ssd_anchors" else "yxhw"
        boxes["coords"] = _choice(boxes.get("coords", default_coords), "boxes.coords", ("cxcywh", "yxhw"))
        size = inp["size"]
        default_scale = [size[0], size[1], size[0], size[1]] if kind == "ssd_anchors" else [10.0, 10.0, 5.0, 5.0]
        boxes["scale"] = _nums(boxes.get("scale", default_scale), "boxes.scale", 4, positive=True)
        boxes["exp_size"] = bool(boxes.get("exp_size", kind == "tflite_ssd"))
        boxes["keypoints"] = int(_num(boxes.get("keypoints", 0), "boxes.keypoints", lo=0, hi=1000))
        head["boxes"] = boxes
        scores = head.get("scores")
        if not isinstance(scores, dict):
            raise HeadError("scores", "must be an object: {\"output\": NAME, \"activation\": \"sigmoid\"}")
        scores = dict(scores)
        scores["output"] = _out_name(scores, "scores")
        scores["activation"] = _choice(scores.get("activation", "sigmoid"), "scores.activation", ACTIVATIONS)
        if scores.get("clip") is not None:
            scores["clip"] = _num(scores["clip"], "scores.clip", positive=True)
        scores["background"] = bool(scores.get("background", kind == "tflite_ssd"))
        head["scores"] = scores
        if kind == "ssd_anchors":
            head["anchors"] = _parse_anchor_settings(head.get("anchors"))
        else:
            a = head.get("anchors")
            arr = np.asarray(a, dtype=np.float64) if isinstance(a, list) else None
            if arr is None or arr.ndim != 2 or arr.shape[1] != 4 or not np.all(np.isfinite(arr)):
                raise HeadError("anchors", "a tflite_ssd head carries its anchors as a list of "
                                "[y_center, x_center, h, w] rows")
            pp = head.get("postprocess")
            if pp is not None:
                # the options of TFLite's Detection_PostProcess op (the TFLite importer's head):
                # the decoder then selects boxes exactly as the op does
                if not isinstance(pp, dict):
                    raise HeadError("postprocess", "must be an object of the op's options")
                pp = dict(pp)
                for k, default in (("max_classes_per_detection", 1), ("detections_per_class", 100)):
                    pp[k] = int(_num(pp.get(k, default), f"postprocess.{k}", positive=True))
                pp["use_regular_nms"] = bool(pp.get("use_regular_nms", False))
                head["postprocess"] = pp
    elif kind == "centroids":
        hm = head.get("heatmap", {})
        if not isinstance(hm, dict):
            raise HeadError("heatmap", "must be an object: {\"output\": NAME, \"activation\": \"softmax\"}")
        hm = dict(hm)
        hm["output"] = _out_name(hm, "heatmap")
        hm["activation"] = _choice(hm.get("activation", "none"), "heatmap.activation", ACTIVATIONS)
        hm["layout"] = _choice(hm.get("layout", "NHWC"), "heatmap.layout", LAYOUTS)
        hm["background"] = bool(hm.get("background", True))
        head["heatmap"] = hm
    return head


def _parse_anchor_settings(a: Any) -> Dict[str, Any]:
    if not isinstance(a, dict):
        raise HeadError("anchors", "an ssd_anchors head needs anchor settings: strides, aspect_ratios, ...")
    a = dict(a)
    strides = a.get("strides")
    if not isinstance(strides, list) or not strides or not all(isinstance(s, int) and s > 0 for s in strides):
        raise HeadError("anchors.strides", "must be a list of positive integers (one per layer)")
    a["aspect_ratios"] = _nums(a.get("aspect_ratios", [1.0]), "anchors.aspect_ratios", positive=True)
    a["offset"] = _nums(a.get("offset", [0.5, 0.5]), "anchors.offset", 2)
    a["min_scale"] = _num(a.get("min_scale", 0.1484375), "anchors.min_scale", positive=True)
    a["max_scale"] = _num(a.get("max_scale", 0.75), "anchors.max_scale", positive=True)
    interp = a.get("interpolated_scale", True)
    if isinstance(interp, bool):
        interp = 1.0 if interp else 0.0
    a["interpolated_scale"] = _num(interp, "anchors.interpolated_scale", lo=0.0)
    a["fixed_size"] = bool(a.get("fixed_size", True))
    a["reduce_lowest"] = bool(a.get("reduce_lowest", False))
    return a


# ------------------------------------------------------------------ anchors

def ssd_anchors(settings: Dict[str, Any], size: Sequence[int]) -> np.ndarray:
    """Anchors [N, 4] as (x_center, y_center, w, h), normalised to the input, in MediaPipe's
    SsdAnchorsCalculator order: layers of equal stride share one grid, cells row-major, then
    the anchors of each cell."""
    width, height = int(size[0]), int(size[1])
    strides = list(settings["strides"])
    n = len(strides)
    lo, hi = settings["min_scale"], settings["max_scale"]

    def scale(i: int) -> float:
        return (lo + hi) * 0.5 if n == 1 else lo + (hi - lo) * i / (n - 1.0)

    chunks = []
    layer = 0
    while layer < n:
        ratios: List[float] = []
        scales: List[float] = []
        last = layer
        while last < n and strides[last] == strides[layer]:
            s = scale(last)
            if last == 0 and settings["reduce_lowest"]:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, s, s]
            else:
                for r in settings["aspect_ratios"]:
                    ratios.append(r)
                    scales.append(s)
                if settings["interpolated_scale"] > 0:
                    nxt = 1.0 if last == n - 1 else scale(last + 1)
                    scales.append(math.sqrt(s * nxt))
                    ratios.append(settings["interpolated_scale"])
            last += 1
        r = np.sqrt(np.asarray(ratios))
        aw = np.asarray(scales) * r
        ah = np.asarray(scales) / r
        stride = strides[layer]
        fh, fw = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        xc = (xs.reshape(-1, 1) + settings["offset"][0]) / fw
        yc = (ys.reshape(-1, 1) + settings["offset"][1]) / fh
        k = len(ratios)
        xc = np.repeat(xc, k, axis=1)
        yc = np.repeat(yc, k, axis=1)
        if settings["fixed_size"]:
            w = np.ones_like(xc)
            h = np.ones_like(yc)
        else:
            w = np.broadcast_to(aw, xc.shape)
            h = np.broadcast_to(ah, yc.shape)
        chunks.append(np.stack([xc, yc, w, h], axis=-1).reshape(-1, 4))
        layer = last
    return np.concatenate(chunks).astype(np.float64)


def anchor_count(head: Dict[str, Any]) -> Optional[int]:
    if head["kind"] == "ssd_anchors":
        return int(ssd_anchors(head["anchors"], head["input"]["size"]).shape[0])
    if head["kind"] == "tflite_ssd":
        return len(head["anchors"])
    return None


# ------------------------------------------------------------------ image -> tensor

class Letterbox:
    """How the original image maps onto the input tensor (scale, then padding)."""

    def __init__(self, orig_w: int, orig_h: int, sx: float, sy: float, pad_x: float, pad_y: float):
        self.orig_w, self.orig_h = orig_w, orig_h
        self.sx, self.sy, self.pad_x, self.pad_y = sx, sy, pad_x, pad_y

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes in input-tensor pixels -> original image pixels, clipped to the image."""
        b = np.asarray(xyxy, dtype=np.float64).copy()
        b[..., [0, 2]] = (b[..., [0, 2]] - self.pad_x) / self.sx
        b[..., [1, 3]] = (b[..., [1, 3]] - self.pad_y) / self.sy
        b[..., [0, 2]] = np.clip(b[..., [0, 2]], 0, self.orig_w)
        b[..., [1, 3]] = np.clip(b[..., [1, 3]], 0, self.orig_h)
        return b

    def points_to_original(self, xy: np.ndarray) -> np.ndarray:
        p = np.asarray(xy, dtype=np.float64).copy()
        p[..., 0] = (p[..., 0] - self.pad_x) / self.sx
        p[..., 1] = (p[..., 1] - self.pad_y) / self.sy
        return p

    def as_dict(self) -> Dict[str, float]:
        return {"orig_w": self.orig_w, "orig_h": self.orig_h, "sx": self.sx, "sy": self.sy,
                "pad_x": self.pad_x, "pad_y": self.pad_y}


def image_to_array(image: Any) -> np.ndarray:
    """An RGB uint8 array [H, W, 3] from a PIL image or an array (gray or RGBA accepted)."""
    if hasattr(image, "convert") and hasattr(image, "size"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image must be [H, W] or [H, W, 3], got shape {list(a.shape)}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


def preprocess(image: Any, head: Dict[str, Any], dtype: Any = np.float32) -> Tuple[np.ndarray, Letterbox]:
    """The input tensor [1, ...] for one image, and the letterbox that maps boxes back.

    Resizing is bilinear through Pillow (the runtime's image dependency)."""
    from PIL import Image

    rgb = image_to_array(image)
    spec = head["input"]
    tw, th = spec["size"]
    h0, w0 = rgb.shape[:2]
    pil = Image.fromarray(rgb)
    if spec["resize"] == "stretch":
        resized = np.asarray(pil.resize((tw, th), Image.BILINEAR), dtype=np.float32)
        canvas = resized
        box = Letterbox(w0, h0, tw / w0, th / h0, 0.0, 0.0)
    else:
        s = min(tw / w0, th / h0)
        nw, nh = max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))
        resized = np.asarray(pil.resize((nw, nh), Image.BILINEAR), dtype=np.float32)
        px, py = (tw - nw) // 2, (th - nh) // 2
        canvas = np.full((th, tw, 3), spec["pad"], dtype=np.float32)
        canvas[py:py + nh, px:px + nw] = resized
        box = Letterbox(w0, h0, nw / w0, nh / h0, float(px), float(py))
    if spec["channels"] == "BGR":
        canvas = canvas[:, :, ::-1]
    if "mean" in spec:
        x = (canvas - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    else:
        lo, hi = spec["range"]
        x = canvas * np.float32((hi - lo) / 255.0) + np.float32(lo)
    if spec["layout"] == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    x = x[None]
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        scale, zp = spec.get("quant") or (1.0, 0)
        info = np.iinfo(dt)
        x = np.clip(np.round(x / scale) + zp, info.min, info.max)
    return np.ascontiguousarray(x.astype(dt)), box


# ------------------------------------------------------------------ boxes

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int,
        classes: Optional[np.ndarray] = None) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first. With ``classes``, boxes of
    different classes never suppress each other."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if classes is not None:
        # shift each class into its own region so one IoU pass serves all classes
        span = float(np.max(boxes) - np.min(boxes)) + 1.0
        boxes = boxes + (np.asarray(classes, np.float64) * span)[:, None]
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: List[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou]
    return np.asarray(keep, dtype=np.int64)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int,
                 extra: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of the boxes it
    suppresses (and their keypoints, ``extra``). Returns boxes, scores, extra."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    out_b, out_s, out_e = [], [], []
    while order.size and len(out_b) < max_det:
        ious = box_iou(boxes[order[0]:order[0] + 1], boxes[order])[0]
        group = order[ious > iou]
        w = scores[group][:, None]
        out_b.append((boxes[group] * w).sum(0) / w.sum())
        out_s.append(float(scores[order[0]]))
        if extra is not None:
            out_e.append((extra[group] * w[:, :, None] if extra.ndim == 3 else extra[group] * w).sum(0) / w.sum())
        order = order[ious <= iou]
    e = np.asarray(out_e) if extra is not None else None
    return np.asarray(out_b).reshape(-1, 4), np.asarray(out_s), e


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _activate(x: np.ndarray, activation: str, clip: Optional[float] = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if clip is not None:
        x = np.clip(x, -clip, clip)
    if activation == "sigmoid":
        return _sigmoid(x)
    if activation == "softmax":
        z = np.exp(x - x.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)
    return x


def output_float(head: Dict[str, Any], name: str, value: np.ndarray) -> np.ndarray:
    """An output as float64, dequantized when the head records its int8 scale."""
    q = head.get("output_quant", {}).get(name)
    v = np.asarray(value)
    if q is not None and v.dtype.kind in "iu":
        return (v.astype(np.float64) - q[1]) * q[0]
    return v.astype(np.float64)


def _pick(outputs: Dict[str, np.ndarray], name: Optional[str], what: str, index: int = 0) -> Tuple[str, np.ndarray]:
    if name is not None:
        if name not in outputs:
            raise HeadError(f"{what}.output" if what != "output" else "output",
                            f"the model has no output '{name}' (it has {', '.join(outputs)})")
        return name, outputs[name]
    names = list(outputs)
    return names[min(index, len(names) - 1)], outputs[names[min(index, len(names) - 1)]]


def _detections(head: Dict[str, Any], xyxy_in: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                box: Letterbox, keypoints: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    orig = box.to_original(xyxy_in) if len(xyxy_in) else np.zeros((0, 4))
    labels = head["labels"]
    out = []
    kps = box.points_to_original(keypoints) if keypoints is not None and len(keypoints) else None
    for i in range(len(orig)):
        c = int(classes[i])
        d: Dict[str, Any] = {"box": [round(float(v), 2) for v in orig[i]],
                             "score": round(float(scores[i]), 5),
                             "label": labels[c] if 0 <= c < len(labels) else str(c)}
        if kps is not None:
            d["keypoints"] = [[round(float(x), 2), round(float(y), 2)] for x, y in kps[i]]
        out.append(d)
    return out


def _suppress(head: Dict[str, Any], xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray,
              kps: Optional[np.ndarray] = None):
    max_det = head["max_detections"]
    if head["nms"] == "none" or len(xyxy) == 0:
        order = np.argsort(-scores, kind="stable")[:max_det]
        return xyxy[order], scores[order], classes[order], (kps[order] if kps is not None else None)
    if head["nms"] == "weighted":
        if len(set(classes.tolist())) > 1 and not head["class_agnostic"]:
            parts = [_suppress({**head, "class_agnostic": True}, xyxy[classes == c], scores[classes == c],
                               classes[classes == c], kps[classes == c] if kps is not None else None)
                     for c in sorted(set(classes.tolist()))]
            b = np.concatenate([p[0] for p in parts])
            s = np.concatenate([p[1] for p in parts])
            c = np.concatenate([p[2] for p in parts])
            k = np.concatenate([p[3] for p in parts]) if kps is not None else None
            order = np.argsort(-s, kind="stable")[:max_det]
            return b[order], s[order], c[order], (k[order] if k is not None else None)
        b, s, k = weighted_nms(xyxy, scores, head["nms_iou"], max_det, kps)
        return b, s, np.full(len(b), classes[0] if len(classes) else 0), k
    keep = nms(xyxy, scores, head["nms_iou"], max_det, None if head["class_agnostic"] else classes)
    return xyxy[keep], scores[keep], classes[keep], (kps[keep] if kps is not None else None)


def decode(head: Dict[str, Any], outputs: Dict[str, np.ndarray], box: Letterbox,
           min_score: Optional[float] = None) -> List[Dict[str, Any]]:
    """Detections of one image (batch index 0) in original-image pixels, best first."""
    xyxy, scores, classes, kps = decode_raw(head, outputs, min_score)
    return _detections(head, xyxy, scores, classes, box, kps)


def decode_raw(head: Dict[str, Any], outputs: Dict[str, np.ndarray], min_score: Optional[float] = None):
    """:func:`decode` before the letterbox is undone and the numbers rounded:
    ``(xyxy, scores, classes, keypoints or None)`` in input-tensor pixels, float64, best first
    (what the C decoder computes, compared bit for bit by ``export --verify``)."""
    thr = head["min_score"] if min_score is None else float(min_score)
    tw, th = head["input"]["size"]
    kind = head["kind"]
    kps = None
    if kind in ("yolov8", "yolov5"):
        name, raw = _pick(outputs, head.get("output"), "output")
        a = output_float(head, name, raw)
        a = a[0] if a.ndim == 3 else a
        nc = len(head["labels"]) or None
        extra = 5 if kind == "yolov5" else 4
        if kind == "yolov8":
            # [4+nc, N] (Ultralytics) or already [N, 4+nc]
            if nc is not None and a.shape[0] == 4 + nc and a.shape[1] != 4 + nc:
                a = a.T
            elif nc is None and a.shape[0] < a.shape[1]:
                a = a.T
        if a.shape[1] <= extra - 1:
            raise HeadError("output", f"output '{name}' has {a.shape[1]} values per box, fewer than {extra}")
        cls = a[:, extra:]
        if kind == "yolov5":
            cls = cls * a[:, 4:5]
        classes = np.argmax(cls, axis=1) if cls.shape[1] else np.zeros(len(a), np.int64)
        scores = cls[np.arange(len(a)), classes] if cls.shape[1] else a[:, 4]
        ok = np.isfinite(scores) & (scores >= thr)
        c = a[ok, :4]
        xyxy = np.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2,
                         c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2], axis=1)
        scores, classes = scores[ok], classes[ok]
    elif kind in ("ssd_anchors", "tflite_ssd"):
        bspec, sspec = head["boxes"], head["scores"]
        bname, braw = _pick(outputs, bspec["output"], "boxes", 0)
        sname, sraw = _pick(outputs, sspec["output"], "scores", 1)
        raw = output_float(head, bname, braw).reshape(-1, np.asarray(braw).shape[-1])
        probs = _activate(output_float(head, sname, sraw).reshape(raw.shape[0], -1),
                          sspec["activation"], sspec.get("clip"))
        if sspec["background"] and probs.shape[1] > 1:
            probs = probs[:, 1:]
        if kind == "ssd_anchors":
            anchors = ssd_anchors(head["anchors"], head["input"]["size"])  # x, y, w, h
        else:
            yx = np.asarray(head["anchors"], np.float64)                   # y, x, h, w
            anchors = yx[:, [1, 0, 3, 2]]
        if len(anchors) != len(raw):
            raise HeadError("anchors", f"the settings give {len(anchors)} anchors but output "
                            f"'{bname}' has {len(raw)} boxes")
        xs, ys, ws, hs = bspec["scale"]
        if bspec["coords"] == "cxcywh":
            tx, ty, tw_, th_ = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
            sx, sy, sw, sh = xs, ys, ws, hs
        else:  # yxhw: TF Object Detection's order; scale given as [y, x, h, w]
            ty, tx, th_, tw_ = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
            sy, sx, sh, sw = xs, ys, ws, hs
        cx = tx / sx * anchors[:, 2] + anchors[:, 0]
        cy = ty / sy * anchors[:, 3] + anchors[:, 1]
        if bspec["exp_size"]:
            with np.errstate(over="ignore"):
                w = np.exp(tw_ / sw) * anchors[:, 2]
                h = np.exp(th_ / sh) * anchors[:, 3]
        else:
            w = tw_ / sw * anchors[:, 2]
            h = th_ / sh * anchors[:, 3]
        if kind == "tflite_ssd" and head.get("postprocess"):
            xyxy = np.stack([(cx - w / 2) * tw, (cy - h / 2) * th, (cx + w / 2) * tw, (cy + h / 2) * th], 1)
            xyxy, scores, classes = _tflite_ssd_select(head, xyxy, probs, thr)
            return xyxy, scores, classes, None
        classes = np.argmax(probs, axis=1)
        scores = probs[np.arange(len(probs)), classes]
        ok = np.isfinite(scores) & (scores >= thr) & np.isfinite(cx) & np.isfinite(w)
        xyxy = np.stack([(cx - w / 2) * tw, (cy - h / 2) * th, (cx + w / 2) * tw, (cy + h / 2) * th], 1)[ok]
        nk = bspec["keypoints"]
        if nk and raw.shape[1] >= 4 + 2 * nk:
            k = raw[ok, 4:4 + 2 * nk].reshape(-1, nk, 2)
            a = anchors[ok]
            kx = (k[:, :, 0] / sx * a[:, 2:3] + a[:, 0:1]) * tw
            ky = (k[:, :, 1] / sy * a[:, 3:4] + a[:, 1:2]) * th
            kps = np.stack([kx, ky], axis=-1)
        scores, classes = scores[ok], classes[ok]
    else:  # centroids
        hspec = head["heatmap"]
        name, raw = _pick(outputs, hspec["output"], "heatmap")
        m = output_float(head, name, raw)
        m = m[0] if m.ndim == 4 else m
        if hspec["layout"] == "NCHW":
            m = np.transpose(m, (1, 2, 0))
        m = _activate(m, hspec["activation"])
        if hspec["background"]:
            m = m[:, :, 1:]
        xyxy, scores, classes = centroid_blobs(m, thr, tw / m.shape[1], th / m.shape[0])
        order = np.argsort(-scores, kind="stable")[:head["max_detections"]]
        return xyxy[order], scores[order], classes[order], None
    return _suppress(head, xyxy, scores, classes, kps)


def _tflite_ssd_select(head: Dict[str, Any], xyxy: np.ndarray, probs: np.ndarray, thr: float):
    """The selection of TFLite's Detection_PostProcess op on decoded boxes [N, 4] and class
    scores [N, C] (background dropped): boxes, scores and classes, best first.

    Fast NMS (the op's default): each box competes with its best class score, one greedy
    class-agnostic pass, and each kept box reports its ``max_classes_per_detection`` best classes,
    ``max_detections`` rows in all. Regular NMS: greedy NMS per class (at most
    ``detections_per_class`` each), then the best ``max_detections`` of all. As in the op, a
    score passes at >= the threshold and a box is suppressed at IoU > ``nms_iou``; ties keep
    the anchor order (stable sorts)."""
    pp = head["postprocess"]
    max_det, iou = head["max_detections"], head["nms_iou"]
    nc = probs.shape[1]
    valid = np.all(np.isfinite(xyxy), axis=1) & np.all(np.isfinite(probs), axis=1)
    if not nc:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    if pp["use_regular_nms"]:
        per_class = pp["detections_per_class"]
        idx_all, cls_all = [], []
        for c in range(nc):      # one NMS per class: the loop is over classes, not boxes
            idx = np.nonzero(valid & (probs[:, c] >= thr))[0]
            idx_all.append(idx[nms(xyxy[idx], probs[idx, c], iou, per_class)])
            cls_all.append(np.full(len(idx_all[-1]), c, np.int64))
        idx, cls = np.concatenate(idx_all), np.concatenate(cls_all)
        sc = probs[idx, cls]
        order = np.argsort(-sc, kind="stable")[:max_det]
        return xyxy[idx[order]], sc[order], cls[order]
    k = min(pp["max_classes_per_detection"], nc)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    best = probs[np.arange(len(probs)), top[:, 0]]
    idx = np.nonzero(valid & (best >= thr))[0]
    keep = idx[nms(xyxy[idx], best[idx], iou, max_det)]
    classes = top[keep].reshape(-1)[:max_det]          # the op writes max_detections rows in all
    rows = np.repeat(keep, k)[:max_det]
    return xyxy[rows], probs[rows, classes], classes


def centroid_blobs(probs: np.ndarray, thr: float, cell_w: float, cell_h: float):
    """Connected cells (4-neighbour) of the same class above ``thr`` in a [h, w, nc] map become
    one detection: the blob's bounding box in input pixels and its best score. Labelling is
    vectorised: each cell takes the largest label among its same-class neighbours until stable
    (at most h*w rounds, in practice the blob's diameter)."""
    h, w, nc = probs.shape
    cls = np.argmax(probs, axis=2)
    best = np.take_along_axis(probs, cls[:, :, None], axis=2)[:, :, 0]
    on = best >= thr
    label = np.where(on, np.arange(1, h * w + 1).reshape(h, w), 0)
    for _ in range(h * w):
        nxt = label.copy()
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            shifted = np.zeros_like(label)
            same = np.zeros_like(on)
            ys = slice(max(dy, 0), h + min(dy, 0))
            yd = slice(max(-dy, 0), h + min(-dy, 0))
            xs = slice(max(dx, 0), w + min(dx, 0))
            xd = slice(max(-dx, 0), w + min(-dx, 0))
            shifted[yd, xd] = label[ys, xs]
            same[yd, xd] = cls[ys, xs] == cls[yd, xd]
            nxt = np.where(on & same & (shifted > nxt), shifted, nxt)
        if np.array_equal(nxt, label):
            break
        label = nxt
    ids = np.unique(label[label > 0])
    if ids.size == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    yy, xx = np.nonzero(label)
    lab = label[yy, xx]
    idx = np.searchsorted(ids, lab)
    x1 = np.full(ids.size, np.inf)
    y1 = np.full(ids.size, np.inf)
    x2 = np.full(ids.size, -np.inf)
    y2 = np.full(ids.size, -np.inf)
    sc = np.zeros(ids.size)
    np.minimum.at(x1, idx, xx)
    np.minimum.at(y1, idx, yy)
    np.maximum.at(x2, idx, xx + 1)
    np.maximum.at(y2, idx, yy + 1)
    np.maximum.at(sc, idx, best[yy, xx])
    first = np.zeros(ids.size, np.int64)
    first[idx[::-1]] = np.arange(len(idx))[::-1]
    classes = cls[yy[first], xx[first]]
    xyxy = np.stack([x1 * cell_w, y1 * cell_h, x2 * cell_w, y2 * cell_h], axis=1)
    return xyxy, sc, classes
