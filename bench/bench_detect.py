"""Detection benchmark, one run, side by side (issue 11).

    PYTHONPATH=src .venv/bin/python bench/bench_detect.py [--quick] [--only face,palm,...] [--json FILE]

Detectors (all offline):

- ``face``: MediaPipe's face detector, short range (BlazeFace, 128x128, ssd_anchors head),
  from the mediapipe 0.10.21 wheel (tests/wheel_assets.py);
- ``palm``: MediaPipe's palm detector, lite (192x192, 2016 anchors, ssd_anchors head);
- ``face_ssd``: the same trained face detector re-encoded for TFLite's box coder and ended by
  the ``TFLite_Detection_PostProcess`` op (tests/tflite_ssd_models.py); imported with no head
  file, the op becomes a ``tflite_ssd`` head;
- ``yolov8``: an Ultralytics YOLOv8-style network (Conv-BN-SiLU, C2f, SPPF, PAN neck,
  decoupled head with DFL, output [1, 4+nc, N], Ultralytics' metadata) built here from the
  architecture at 160x160 with width 1/8: random weights, so no accuracy column;
- ``tiny_ssd``: a small int8 SSD trunk made by TensorFlow's converter (full int8, needs
  TensorFlow: ``--tf-python``, default /work/bench-venv/bin/python) with the post-process op
  appended: the same .tflite runs on TFLite Micro (random weights, no accuracy column).

Columns:

- accuracy, float vs int8 vs edgeloop's choice: ``edgeloop shrink --metric map50`` (its
  ``int8_drop`` report: float, int8, and the mixed model that keeps the head float). The face
  detectors are scored on labelled faces (scikit-image's LFW faces pasted on photographs, as in
  tests/test_detect_shrink.py); palm has no labelled data here, so its "mAP" is agreement with
  the float model: mAP50 against the float model's own boxes on photographs and crops;
- host latency per frame (1 thread): edgeloop's Detector from the input tensor (onnxruntime +
  numpy decode + NMS) against onnxruntime running the same network with the box decode and
  ONNX NonMaxSuppression in the graph (the peer graph is built here); plus edgeloop from the
  image (resize included);
- C on the Cortex-M4: ``edgeloop export --target stm32l4r5 --verify --json`` of an int8 model
  (onnxruntime's quantize_static for ONNX models, the .tflite itself for tiny_ssd): exact
  instructions per inference of the network under QEMU (the count covers ``<prefix>_run``; the
  decode in ``<prefix>_detect`` is not in it), arena; TFLite Micro's arena (its recording
  allocator, x86 interpreter) for the same int8 .tflite where one exists;
- bundle end to end: ``export --target raspberry-pi-4``, the bundle's server on loopback,
  JPEG bytes in, boxes out (p50 / p99 over keep-alive requests).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_mcu import time_per_call  # noqa: E402  one timing harness for the benches
from wheel_assets import FACE_HEAD  # noqa: E402  the face detector's head, as the tests use it

PHOTOS = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "motorcycle_left.png",
          "rocket.jpg", "hubble_deep_field.jpg", "color.png", "grass.png", "ihc.png", "logo.png"]
# MediaPipe's palm_detection_cpu graph: 192x192, [0, 1], strides 8,16,16,16, 7 keypoints
PALM_HEAD = {
    "kind": "ssd_anchors", "labels": ["palm"],
    "input": {"layout": "NHWC", "size": [192, 192], "range": [0.0, 1.0], "resize": "letterbox"},
    "anchors": {"strides": [8, 16, 16, 16], "aspect_ratios": [1.0], "interpolated_scale": True,
                "offset": [0.5, 0.5], "fixed_size": True},
    "boxes": {"output": "Identity", "coords": "cxcywh", "scale": [192, 192, 192, 192], "keypoints": 7},
    "scores": {"output": "Identity_1", "activation": "sigmoid", "clip": 100},
    "min_score": 0.5, "nms_iou": 0.3,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli(*args, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ------------------------------------------------------------------ models

def yolov8_onnx(path: Path, size: int = 160, nc: int = 3, width: float = 0.125, depth: float = 0.34) -> None:
    """Ultralytics YOLOv8's architecture (backbone, PAN neck, decoupled DFL head) written out in
    torch at ``width``/``depth`` multiples, exported with Ultralytics' metadata keys (task, names,
    imgsz, stride) so edgeloop recognises it with no head file. Random weights."""
    import math

    import torch
    from torch import nn

    import edgeloop
    from edgeloop.graph import save

    def ch(c):
        return max(8, int(math.ceil(c * width / 8) * 8))

    def nrep(n):
        return max(round(n * depth), 1)

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut=True):
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=False):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = Conv(c1, 2 * self.c)
            self.cv2 = Conv((2 + n) * self.c, c2)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            self.cv1, self.cv2 = Conv(c1, c1 // 2), Conv(c1 * 2, c2)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.m(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class Detect(nn.Module):
        reg_max = 16

        def __init__(self, chs, strides):
            super().__init__()
            c2, c3 = max(16, chs[0] // 4, self.reg_max * 4), max(chs[0], min(nc, 100))
            self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
                                     for c in chs)
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in chs)
            self.strides = strides
            self.register_buffer("bins", torch.arange(self.reg_max, dtype=torch.float32).view(1, self.reg_max, 1, 1))

        def forward(self, feats):
            boxes, scores, points, steps = [], [], [], []
            for i, f in enumerate(feats):
                b, _, h, w = f.shape
                boxes.append(self.cv2[i](f).view(b, 4 * self.reg_max, -1))
                scores.append(self.cv3[i](f).view(b, nc, -1))
                ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
                points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 0))
                steps.append(torch.full((1, h * w), float(self.strides[i])))
            box = torch.cat(boxes, 2)
            n = box.shape[2]
            # DFL: a softmax over 16 bins per side, the expected bin is the distance
            dist = (box.view(1, 4, self.reg_max, n).transpose(1, 2).softmax(1) * self.bins).sum(1)
            anchor = torch.cat(points, 1).unsqueeze(0)
            stride = torch.cat(steps, 1).unsqueeze(0)
            lt, rb = dist[:, :2], dist[:, 2:]
            x1y1, x2y2 = anchor - lt, anchor + rb
            xywh = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * stride
            return torch.cat([xywh, torch.cat(scores, 2).sigmoid()], 1)

    class YOLOv8(nn.Module):
        def __init__(self):
            super().__init__()
            c = [ch(x) for x in (64, 128, 256, 512, 1024)]
            self.b0, self.b1 = Conv(3, c[0], 3, 2), Conv(c[0], c[1], 3, 2)
            self.b2, self.b3 = C2f(c[1], c[1], nrep(3), True), Conv(c[1], c[2], 3, 2)
            self.b4, self.b5 = C2f(c[2], c[2], nrep(6), True), Conv(c[2], c[3], 3, 2)
            self.b6, self.b7 = C2f(c[3], c[3], nrep(6), True), Conv(c[3], c[4], 3, 2)
            self.b8, self.b9 = C2f(c[4], c[4], nrep(3), True), SPPF(c[4], c[4])
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.n12 = C2f(c[4] + c[3], c[3], nrep(3))
            self.n15 = C2f(c[3] + c[2], c[2], nrep(3))
            self.n16 = Conv(c[2], c[2], 3, 2)
            self.n18 = C2f(c[2] + c[3], c[3], nrep(3))
            self.n19 = Conv(c[3], c[3], 3, 2)
            self.n21 = C2f(c[3] + c[4], c[4], nrep(3))
            self.detect = Detect((c[2], c[3], c[4]), (8, 16, 32))

        def forward(self, x):
            p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
            p4 = self.b6(self.b5(p3))
            p5 = self.b9(self.b8(self.b7(p4)))
            h4 = self.n12(torch.cat([self.up(p5), p4], 1))
            o3 = self.n15(torch.cat([self.up(h4), p3], 1))
            o4 = self.n18(torch.cat([self.n16(o3), h4], 1))
            o5 = self.n21(torch.cat([self.n19(o4), p5], 1))
            return self.detect([o3, o4, o5])

    torch.manual_seed(0)
    net = YOLOv8().eval()
    with torch.no_grad():
        for m in net.modules():      # BN statistics of a trained net, roughly
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(0.5)
    model = edgeloop.load(net, example_input=torch.zeros(1, 3, size, size))
    for k, v in {"task": "detect", "names": repr({i: f"class{i}" for i in range(nc)}),
                 "imgsz": repr([size, size]), "stride": "32"}.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    save(model, path)


TF_TINY_SSD = r'''
import sys, numpy as np, tensorflow as tf
L = tf.keras.layers
size, nc, a = 96, 2, 3
inp = tf.keras.Input((size, size, 3), batch_size=1)
x = L.ReLU(6.0)(L.Conv2D(16, 3, strides=2, padding="same")(inp))
feats = []
for cout in (32, 64, 96):
    x = L.ReLU(6.0)(L.DepthwiseConv2D(3, strides=2, padding="same")(x))
    x = L.ReLU(6.0)(L.Conv2D(cout, 1)(x))
    if cout >= 64:
        feats.append(x)
boxes, classes = [], []
for f in feats:
    n = f.shape[1] * f.shape[2] * a
    boxes.append(L.Reshape((n, 4))(L.Conv2D(a * 4, 1)(f)))
    classes.append(L.Reshape((n, nc + 1))(L.Conv2D(a * (nc + 1), 1)(f)))
box = L.Concatenate(axis=1, name="box_encodings")(boxes)
cls = L.Activation("sigmoid", name="class_predictions")(L.Concatenate(axis=1)(classes))
model = tf.keras.Model(inp, [box, cls])
rng = np.random.default_rng(0)
def rep():
    for _ in range(32):
        yield [rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)]
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = rep
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.int8
conv.inference_output_type = tf.int8
open(sys.argv[1], "wb").write(conv.convert())
'''


def tiny_ssd_tflite(work: Path, tf_python: str) -> Path | None:
    """TF's full-int8 trunk, then (in this process) DEQUANTIZE of its two outputs and the
    post-process op with SSD grid anchors: one .tflite for edgeloop, LiteRT and TFLite Micro
    (TFLM's post-process kernel takes float inputs)."""
    from tflite_ssd_models import Builder, grid_anchors

    trunk = work / "tiny_ssd_trunk.tflite"
    script = work / "make_tiny_ssd.py"
    script.write_text(TF_TINY_SSD)
    r = subprocess.run([tf_python, str(script), str(trunk)], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""))
    if r.returncode != 0 or not trunk.is_file():
        log(f"tiny_ssd: TensorFlow failed: {(r.stderr or r.stdout).strip()[-300:]}")
        return None
    b = Builder(trunk.read_bytes())
    outs = list(b.sg.outputs)
    shapes = {i: list(b.sg.tensors[i].shape) for i in outs}
    box = next(i for i in outs if shapes[i][-1] == 4)
    cls = next(i for i in outs if i != box)
    n = int(shapes[box][1])
    fbox = b.tensor("box_encodings_float", shapes[box])
    fcls = b.tensor("class_predictions_float", shapes[cls])
    b.op("DEQUANTIZE", [box], [fbox])
    b.op("DEQUANTIZE", [cls], [fcls])
    anchors = grid_anchors((12, 6), (0.35, 0.75), (1.0, 2.0, 0.5))
    assert len(anchors) == n, (len(anchors), n)
    anc = b.tensor("anchors", [n, 4], data=anchors)
    b.postprocess(fbox, fcls, anc, {"max_detections": 10, "max_classes_per_detection": 1,
                                     "detections_per_class": 100, "use_regular_nms": False,
                                     "nms_score_threshold": 0.5, "nms_iou_threshold": 0.5,
                                     "num_classes": int(shapes[cls][-1]) - 1, "y_scale": 10.0, "x_scale": 10.0,
                                     "h_scale": 5.0, "w_scale": 5.0})
    out = work / "tiny_ssd_int8.tflite"
    out.write_bytes(b.pack())
    return out


# ------------------------------------------------------------------ the onnxruntime peer: decode + NMS in the graph

def peer_graph(model, head):
    """The detector with its box decode, score activation and ONNX NonMaxSuppression appended:
    onnxruntime returns the kept boxes itself (selected indices, boxes, scores)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeloop.runtime import detect as rd

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def dq(name):
        q = head["output_quant"].get(name)
        if q is None:
            return name
        return node("DequantizeLinear", [name, const(f"peer/{name}/s", q[0]),
                                         const(f"peer/{name}/zp", q[1], np.int8)], f"peer/{name}/f")

    kind = head["kind"]
    center = 1
    if kind in ("yolov8", "yolov5"):
        raw = dq(head["output"])
        if kind == "yolov8":
            box = node("Transpose", [node("Slice", [raw, const("p/s0", [0], np.int64), const("p/s4", [4], np.int64),
                                                    const("p/ax1", [1], np.int64)], "peer/box_t")], "peer/boxes",
                       perm=[0, 2, 1])
            scores = node("Slice", [raw, const("p/s4b", [4], np.int64), const("p/big", [1 << 30], np.int64),
                                    const("p/ax1b", [1], np.int64)], "peer/scores")
        else:
            box = node("Slice", [raw, const("p/s0", [0], np.int64), const("p/s4", [4], np.int64),
                                 const("p/ax2", [2], np.int64)], "peer/boxes")
            obj = node("Slice", [raw, const("p/s4b", [4], np.int64), const("p/s5", [5], np.int64),
                                 const("p/ax2b", [2], np.int64)], "peer/obj")
            cls = node("Slice", [raw, const("p/s5b", [5], np.int64), const("p/big", [1 << 30], np.int64),
                                 const("p/ax2c", [2], np.int64)], "peer/cls")
            scores = node("Transpose", [node("Mul", [cls, obj], "peer/cls_obj")], "peer/scores", perm=[0, 2, 1])
    else:
        bspec, sspec = head["boxes"], head["scores"]
        raw = dq(bspec["output"])
        t = node("Slice", [raw, const("p/s0", [0], np.int64), const("p/s4", [4], np.int64),
                           const("p/ax2", [2], np.int64)], "peer/t")
        if kind == "ssd_anchors":
            anchors = rd.ssd_anchors(head["anchors"], head["input"]["size"])      # x, y, w, h
        else:
            anchors = np.asarray(head["anchors"], np.float64)[:, [1, 0, 3, 2]]
        sx, sy, sw, sh = bspec["scale"]
        if bspec["coords"] == "yxhw":     # raw y, x, h, w with the scale given as y, x, h, w
            anchors_in = anchors[:, [1, 0, 3, 2]]                               # y, x, h, w
            center = 0
        else:
            anchors_in = anchors
        s = np.asarray([sx, sy, sw, sh], np.float64)
        if bspec["exp_size"]:
            ctr = node("Slice", [t, const("p/c0", [0], np.int64), const("p/c2", [2], np.int64),
                                 const("p/ax2c", [2], np.int64)], "peer/ctr")
            sz = node("Slice", [t, const("p/c2b", [2], np.int64), const("p/c4", [4], np.int64),
                                const("p/ax2d", [2], np.int64)], "peer/size")
            c = node("Add", [node("Mul", [ctr, const("p/ka", anchors_in[:, 2:] / s[:2])], "peer/cm"),
                             const("p/kb", anchors_in[:, :2])], "peer/c")
            wh = node("Mul", [node("Exp", [node("Div", [sz, const("p/ks", s[2:])], "peer/szs")], "peer/e"),
                              const("p/kw", anchors_in[:, 2:])], "peer/wh")
            half = node("Mul", [wh, const("p/half", 0.5)], "peer/half_wh")
            box = node("Concat", [node("Sub", [c, half], "peer/lo"), node("Add", [c, half], "peer/hi")],
                       "peer/boxes", axis=2)               # y1, x1, y2, x2 (center_point_box 0)
        else:
            k = np.concatenate([anchors_in[:, 2:] / s[:2], anchors_in[:, 2:] / s[2:]], 1)
            bias = np.concatenate([anchors_in[:, :2], np.zeros_like(anchors_in[:, :2])], 1)
            box = node("Add", [node("Mul", [t, const("p/k", k)], "peer/tk"), const("p/b", bias)], "peer/boxes")
        sc = dq(sspec["output"])
        if sspec.get("clip"):
            sc = node("Clip", [sc, const("p/lo", -sspec["clip"]), const("p/hi", sspec["clip"])], "peer/clip")
        if sspec["activation"] == "sigmoid":
            sc = node("Sigmoid", [sc], "peer/sig")
        if sspec["background"]:
            sc = node("Slice", [sc, const("p/bg", [1], np.int64), const("p/big", [1 << 30], np.int64),
                                const("p/ax2e", [2], np.int64)], "peer/fg")
        if head.get("class_agnostic") and kind == "tflite_ssd":
            sc = node("ReduceMax", [sc], "peer/best", axes=[2], keepdims=1)
        scores = node("Transpose", [sc], "peer/scores", perm=[0, 2, 1])
    sel = node("NonMaxSuppression", [box, scores, const("p/max", [head["max_detections"]], np.int64),
                                     const("p/iou", [head["nms_iou"]]),
                                     # ONNX keeps score > threshold, edgeloop and TFLite >=
                                     const("p/thr", [np.nextafter(np.float32(head["min_score"]), np.float32(-1))])],
               "selected", center_point_box=center)
    idx = node("Gather", [sel, const("p/col2", 2, np.int64)], "peer/box_index", axis=1)
    flat = node("Squeeze", [box, const("p/sq0", [0], np.int64)], "peer/box_flat")
    out_boxes = node("Gather", [flat, idx], "det_boxes", axis=0)
    out_scores = node("GatherND", [scores, sel], "det_scores")
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("selected", TensorProto.INT64, None),
                     helper.make_tensor_value_info(out_boxes, TensorProto.FLOAT, None),
                     helper.make_tensor_value_info(out_scores, TensorProto.FLOAT, None)])
    if not any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in m.opset_import):
        raise RuntimeError("the peer graph needs opset 11 or later")
    return m


# ------------------------------------------------------------------ accuracy

def pseudo_labelled(detector, work: Path, name: str, min_score: float) -> Path | None:
    """A YOLO-format folder of photographs and crops with the float model's own boxes as labels."""
    from PIL import Image

    from wheel_assets import photo

    root = work / f"{name}_pseudo"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{x}\n" for x in detector.head["labels"]))
    rng = np.random.default_rng(0)
    n_boxes = 0
    k = 0
    for p in PHOTOS:
        img = Image.open(photo(p)).convert("RGB")
        w0, h0 = img.size
        crops = [img]
        for _ in range(3):
            s = rng.uniform(0.45, 0.8)
            cw, chh = int(w0 * s), int(h0 * s)
            x0, y0 = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - chh + 1))
            crops.append(img.crop((x0, y0, x0 + cw, y0 + chh)))
        for c in crops:
            dets = detector.detect(c, min_score=min_score)
            w, h = c.size
            lines = []
            for d in dets:
                x1, y1, x2, y2 = d["box"]
                if x2 - x1 < 1 or y2 - y1 < 1:
                    continue
                cls = detector.head["labels"].index(d["label"]) if d["label"] in detector.head["labels"] else 0
                lines.append(f"{cls} {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} {(x2 - x1) / w!r} {(y2 - y1) / h!r}\n")
            n_boxes += len(lines)
            c.save(root / "images" / f"{name}_{k:03d}.png")
            (root / "labels" / f"{name}_{k:03d}.txt").write_text("".join(lines))
            k += 1
    if n_boxes < 5:
        return None
    return root


def shrink_map(model_path: Path, yolo: Path, work: Path, name: str, quick: bool) -> dict:
    ds = work / f"{name}_ds"
    r = cli("data", "import", yolo, "-o", ds, "--seed", "2")
    if r.returncode != 0:
        return {"error": f"data import: {r.stderr.strip()[-200:]}"}
    out = work / f"{name}_shrink"
    args = ["shrink", model_path, "--data", ds, "--metric", "map50", "--max-drop", "0.01", "-o", out, "--json"]
    if quick:
        args.append("--quick")
    t0 = time.perf_counter()
    r = cli(*args)
    if r.returncode not in (0, 3):
        return {"error": f"shrink: {r.stderr.strip()[-300:]}"}
    doc = json.loads((out / "results.json").read_text())
    rep = doc.get("int8_drop") or {}
    chosen = next((c for c in doc["candidates"] if c["id"] == doc.get("chosen")), None)
    mixed = (rep.get("mixed") or [None])[0]
    return {"float": rep.get("float", doc["baseline"]["metrics"].get("map50")), "int8": rep.get("int8"),
            "mixed": mixed["map50"] if mixed else None, "mixed_tried": rep.get("mixed_tried"),
            "chosen": "+".join(p["pass"] for p in chosen["passes"]) if chosen else "none",
            "chosen_map": chosen["metrics"].get("map50") if chosen else None,
            "val_images": doc["splits"].get("validation") if isinstance(doc.get("splits"), dict) else None,
            "shrink_s": time.perf_counter() - t0}


# ------------------------------------------------------------------ latency

def host_latency(model, images, min_time: float) -> dict:
    from edgeloop import graph
    from edgeloop.detect import Detector, head_of
    from edgeloop.runtime.detect import decode, preprocess

    head = head_of(model)
    det = Detector(model, head)
    prepared = [preprocess(im, head, det.input_dtype) for im in images]
    xs = [x for x, _ in prepared]

    def edgeloop_tensor(i):
        x, box = prepared[i]
        outs = dict(zip(det.output_names, det.session.run(None, {det.input_name: x})))
        return decode(head, outs, box)

    idx = list(range(len(prepared)))
    row = {"edgeloop_ms": 1e3 * time_per_call(edgeloop_tensor, idx, min_time),
           "edgeloop_image_ms": 1e3 * time_per_call(det.detect, images, min_time)}
    net = graph.session(model, threads=1)
    row["network_ms"] = 1e3 * time_per_call(lambda x: net.run(None, {det.input_name: x}), xs, min_time)
    try:
        peer = graph.session(peer_graph(model, head), threads=1)
        row["peer_ms"] = 1e3 * time_per_call(lambda x: peer.run(None, {det.input_name: x}), xs, min_time)
        ours = [len(edgeloop_tensor(i)) for i in idx]
        theirs = [len(peer.run(None, {det.input_name: x})[0]) for x in xs]
        row["boxes_edgeloop_vs_peer"] = f"{sum(ours)}/{sum(theirs)}"
    except Exception as e:
        row["peer_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return row


# ------------------------------------------------------------------ microcontroller

def int8_onnx(model, images, path: Path):
    """onnxruntime's quantize_static (QDQ, per-channel int8) on photographs; outputs left as the
    int8 tensors the device decodes; the head re-fitted (tests/test_backend_c_detect.py)."""
    from test_backend_c_detect import quantize

    from edgeloop.detect import head_of
    from edgeloop.runtime.detect import preprocess

    head = head_of(model)
    calib = [preprocess(im, head)[0] for im in images]
    return quantize(model, calib, path)


def mcu(int8_path: Path, work: Path, name: str, tflite: Path | None) -> dict:
    row: dict = {}
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        row["mcu_error"] = "qemu-system-arm / arm-none-eabi-gcc not installed"
    else:
        r = cli("export", int8_path, "--target", "stm32l4r5", "-o", work / f"{name}_c", "--verify", "--json")
        if r.returncode != 0:
            row["mcu_error"] = r.stderr.strip().splitlines()[-1][:200] if r.stderr.strip() else f"exit {r.returncode}"
        else:
            rep = json.loads(r.stdout)
            v = rep.get("verify") or {}
            row.update(precision=rep.get("precision"), arena=rep.get("arena_bytes"),
                       insns=v.get("instructions_per_inference"), m4_match=v.get("outputs_match"),
                       flash=v.get("flash_bytes"), ram=v.get("ram_bytes"))
    if tflite is not None:
        try:
            from bench_mcu import tflm_arena_bytes, tflm_interpreter

            row["tflm_arena"] = tflm_arena_bytes(tflm_interpreter(tflite))
        except Exception as e:
            row["tflm_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return row


# ------------------------------------------------------------------ bundle

def bundle_latency(model_path: Path, work: Path, name: str, images, requests: int) -> dict:
    import io

    from bench_serve import free_port, wait_up

    out = work / f"{name}_bundle"
    r = cli("export", model_path, "--target", "raspberry-pi-4", "-o", out)
    if r.returncode != 0:
        return {"bundle_error": r.stderr.strip()[-200:]}
    bodies = []
    for im in images:
        b = io.BytesIO()
        im.convert("RGB").save(b, format="JPEG", quality=90)
        bodies.append(b.getvalue())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop_runtime", str(out), "--port", str(port)], cwd=out,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(out)))
    lat = []
    boxes = 0
    try:
        wait_up(port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(requests + 10):
            t0 = time.perf_counter()
            conn.request("POST", "/predict", bodies[i % len(bodies)], {"Content-Type": "image/jpeg"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return {"bundle_error": f"HTTP {resp.status}: {body[:200]!r}"}
            if i >= 10:
                lat.append(time.perf_counter() - t0)
                boxes += len(json.loads(body).get("detections", []))
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
    a = np.asarray(lat) * 1e3
    return {"bundle_p50_ms": float(np.percentile(a, 50)), "bundle_p99_ms": float(np.percentile(a, 99)),
            "bundle_boxes_per_frame": boxes / max(1, len(lat))}


# ------------------------------------------------------------------ main

def detectors(work: Path, tf_python: str | None, only: set[str]) -> list[dict]:
    import onnx

    from edgeloop.detect import attach_head
    from edgeloop.frontends import load_file
    from edgeloop.graph import save
    from wheel_assets import mediapipe_model

    specs = []
    face_src = mediapipe_model("face_detection/face_detection_short_range.tflite")
    if "face" in only:
        m = attach_head(load_file(str(face_src)), FACE_HEAD)
        save(m, work / "face.onnx")
        specs.append({"name": "face", "kind": "ssd_anchors", "path": work / "face.onnx", "labels": "faces"})
    if "palm" in only:
        m = attach_head(load_file(str(mediapipe_model("palm_detection/palm_detection_lite.tflite"))), PALM_HEAD)
        save(m, work / "palm.onnx")
        specs.append({"name": "palm", "kind": "ssd_anchors", "path": work / "palm.onnx", "labels": "pseudo",
                      "pseudo_min_score": 0.3})
    if "face_ssd" in only:
        from tflite_ssd_models import blazeface_ssd

        from edgeloop.runtime import detect as rd

        anchors = rd.ssd_anchors(rd.parse_head(FACE_HEAD)["anchors"], [128, 128])
        src = work / "face_ssd.tflite"
        src.write_bytes(blazeface_ssd(face_src.read_bytes(), anchors))
        r = cli("convert", src, "-o", work / "face_ssd_nohead.onnx")     # no head file: the op is the head
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        # the op knows no class names (nor the letterbox): a head file says so, the op's settings stay
        (work / "face_ssd_head.json").write_text(json.dumps({"kind": "tflite_ssd", "labels": ["face"],
                                                                   # BlazeFace is fed letterboxed
                                                                   "input": {"resize": "letterbox"}}))
        r = cli("convert", src, "--head", work / "face_ssd_head.json", "-o", work / "face_ssd.onnx")
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        specs.append({"name": "face_ssd", "kind": "tflite_ssd", "path": work / "face_ssd.onnx", "labels": "faces"})
    if "yolov8" in only:
        yolov8_onnx(work / "yolov8.onnx")
        specs.append({"name": "yolov8", "kind": "yolov8", "path": work / "yolov8.onnx", "labels": None,
                      "why": "random weights"})
    if "tiny_ssd" in only:
        t = tiny_ssd_tflite(work, tf_python) if tf_python else None
        if t is None:
            log("tiny_ssd skipped: no TensorFlow (--tf-python)")
        else:
            r = cli("convert", t, "-o", work / "tiny_ssd.onnx")
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            specs.append({"name": "tiny_ssd", "kind": "tflite_ssd", "path": work / "tiny_ssd.onnx", "labels": None,
                          "why": "random weights", "tflite": t, "int8_is_source": True})
    for s in specs:
        s["model"] = onnx.load(str(s["path"]))
    return specs


def fmt(v, spec=".3f", unit="") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:{spec}}{unit}"


def ratio(a, b) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def print_table(rows: list[dict], args) -> None:
    print(f"\nDetection benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; host latency 1 thread, median per frame\n")
    print("Accuracy: mAP50 (face, face_ssd: labelled pasted faces; palm: agreement = mAP50 against the float "
          "model's boxes), edgeloop shrink --metric map50 --max-drop 0.01")
    h = f"{'detector':10s}{'head':12s}{'float':>8s}{'int8':>8s}{'mixed':>12s}  {'chosen (passes)':28s}{'chosen':>8s}"
    print(h)
    print("-" * len(h))
    for r in rows:
        a = r.get("acc") or {}
        if "error" in a or not a:
            why = a.get("error") or r.get("why") or "n/a"
            print(f"{r['name']:10s}{r['kind']:12s}  n/a ({why[:90]})")
            continue
        mixed = fmt(a["mixed"]) if a.get("mixed_tried") else "not needed"
        print(f"{r['name']:10s}{r['kind']:12s}{fmt(a['float']):>8s}{fmt(a['int8']):>8s}{mixed:>12s}  "
              f"{a['chosen'][:28]:28s}{fmt(a['chosen_map']):>8s}")
    print("\nHost latency per frame, ms (input tensor -> boxes unless said)")
    h = (f"{'detector':10s}{'network':>9s}{'edgeloop':>10s}{'ORT+NMS':>9s}{'ratio':>8s}{'decode+NMS':>12s}"
         f"{'from image':>12s}  {'boxes ours/peer':>15s}")
    print(h)
    print("-" * len(h))
    for r in rows:
        lt = r.get("lat") or {}
        dec = lt["edgeloop_ms"] - lt["network_ms"] if "edgeloop_ms" in lt else None
        peer = lt.get("peer_ms")
        print(f"{r['name']:10s}{fmt(lt.get('network_ms'), '.2f'):>9s}{fmt(lt.get('edgeloop_ms'), '.2f'):>10s}"
              f"{fmt(peer, '.2f'):>9s}{ratio(lt.get('edgeloop_ms'), peer):>8s}{fmt(dec, '.2f'):>12s}"
              f"{fmt(lt.get('edgeloop_image_ms'), '.2f'):>12s}  {lt.get('boxes_edgeloop_vs_peer', lt.get('peer_error', 'n/a'))[:40]:>15s}")
    print("\nCortex-M4 (stm32l4r5, QEMU mps2-an386): int8 network, exact instructions per frame; arena vs TFLite Micro")
    h = f"{'detector':10s}{'instructions':>14s}{'arena B':>10s}{'TFLM arena B':>14s}{'ratio':>8s}{'flash B':>10s}{'M4=host':>9s}"
    print(h)
    print("-" * len(h))
    for r in rows:
        m = r.get("mcu") or {}
        if "mcu_error" in m and "tflm_arena" not in m:
            print(f"{r['name']:10s}  n/a ({m['mcu_error'][:100]})")
            continue
        print(f"{r['name']:10s}{fmt(m.get('insns'), ',d'):>14s}{fmt(m.get('arena'), ',d'):>10s}"
              f"{fmt(m.get('tflm_arena'), ',d'):>14s}{ratio(m.get('arena'), m.get('tflm_arena')):>8s}"
              f"{fmt(m.get('flash'), ',d'):>10s}{str(m.get('m4_match', 'n/a')):>9s}"
              + (f"  ({m['mcu_error'][:80]})" if "mcu_error" in m else ""))
    print("\nBundle (raspberry-pi-4 bundle, its server on loopback): JPEG bytes in, boxes out, ms")
    h = f"{'detector':10s}{'p50':>8s}{'p99':>8s}{'vs in-process':>15s}{'boxes/frame':>13s}"
    print(h)
    print("-" * len(h))
    for r in rows:
        b = r.get("bundle") or {}
        if "bundle_error" in b or not b:
            print(f"{r['name']:10s}  n/a ({(b.get('bundle_error') or 'skipped')[:100]})")
            continue
        print(f"{r['name']:10s}{b['bundle_p50_ms']:8.2f}{b['bundle_p99_ms']:8.2f}"
              f"{ratio(b['bundle_p50_ms'], (r.get('lat') or {}).get('edgeloop_image_ms')):>15s}"
              f"{b['bundle_boxes_per_frame']:13.2f}")
    for r in rows:
        for e in r.get("errors", []):
            print(f"note: {r['name']}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images, shorter timing, shrink --quick")
    ap.add_argument("--only", default="face,palm,face_ssd,yolov8,tiny_ssd", help="comma-separated detectors")
    ap.add_argument("--skip", default="", help="comma-separated columns to skip: accuracy,latency,mcu,bundle")
    ap.add_argument("--tf-python", default="/work/bench-venv/bin/python" if Path("/work/bench-venv/bin/python").exists()
                    else None, help="a Python with TensorFlow, for the tiny_ssd model (TFLite Micro comparison)")
    ap.add_argument("--requests", type=int, default=None, help="timed bundle requests per detector")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args()
    only = set(args.only.split(","))
    skip = set(filter(None, args.skip.split(",")))
    min_time = 0.5 if args.quick else 2.0
    requests = args.requests or (40 if args.quick else 200)

    from PIL import Image

    from wheel_assets import photo

    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    images = [Image.open(photo(p)).convert("RGB") for p in PHOTOS[:6 if args.quick else len(PHOTOS)]]
    rows = []
    faces_yolo = None
    for spec in detectors(work, args.tf_python, only):
        name = spec["name"]
        log(f"== {name}")
        row = {"name": name, "kind": spec["kind"], "why": spec.get("why"), "errors": []}
        model = spec["model"]
        try:
            if "accuracy" not in skip and spec["labels"] is not None:
                if spec["labels"] == "faces":
                    if faces_yolo is None:
                        from test_detect_shrink import write_face_yolo

                        faces_yolo = work / "faces_yolo"
                        write_face_yolo(faces_yolo, 30 if args.quick else 60)
                    yolo = faces_yolo
                else:
                    from edgeloop.detect import Detector

                    yolo = pseudo_labelled(Detector(model), work, name, spec["pseudo_min_score"])
                row["acc"] = (shrink_map(spec["path"], yolo, work, name, args.quick) if yolo is not None
                              else {"error": "the float model finds almost nothing on the photographs"})
            if "latency" not in skip:
                row["lat"] = host_latency(model, images, min_time)
            if "mcu" not in skip:
                if spec.get("int8_is_source"):
                    int8_path = spec["tflite"]
                else:
                    int8_path = work / f"{name}_int8.onnx"
                    int8_onnx(model, images, int8_path)
                row["mcu"] = mcu(int8_path, work, name, spec.get("tflite"))
            if "bundle" not in skip:
                row["bundle"] = bundle_latency(spec["path"], work, name, images, requests)
        except Exception as e:  # report and go on with the other detectors
            row["errors"].append(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            log(traceback.format_exc())
        rows.append(row)
        log(json.dumps({k: v for k, v in row.items() if k != "model"}, default=str))
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
