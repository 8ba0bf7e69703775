"""Detection heads: a real MediaPipe face detector on real photographs, mAP against
pycocotools, Ultralytics-style graphs recognised from their metadata, bad head files."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import edgeloop
from edgeloop.detect import Detector, attach_head, head_of, read_head_file
from edgeloop.detect.metrics import evaluate
from edgeloop.runtime import detect as rd
from wheel_assets import FACE_HEAD, face_detector, mediapipe_model, photo



def run(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    d = tmp_path_factory.mktemp("face")
    face_detector(d)
    return d


# ---------------------------------------------------------------- an independent reference

def reference_face_boxes(model_path, image_path):
    """MediaPipe's face-detection post-processing written out anchor by anchor, with its own
    letterbox, so nothing is shared with edgeloop's decoder but onnxruntime."""
    import onnxruntime as ort

    img = Image.open(image_path).convert("RGB")
    w0, h0 = img.size
    s = min(128 / w0, 128 / h0)
    nw, nh = max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))
    px, py = (128 - nw) // 2, (128 - nh) // 2
    canvas = np.zeros((128, 128, 3), np.float32)
    canvas[py:py + nh, px:px + nw] = np.asarray(img.resize((nw, nh), Image.BILINEAR), np.float32)
    x = (canvas / 127.5 - 1.0)[None].astype(np.float32)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    raw, cls = out["regressors"][0], out["classificators"][0, :, 0]
    anchors = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = 128 // stride
        for yy in range(n):
            for xx in range(n):
                for _ in range(per_cell):
                    anchors.append(((xx + 0.5) / n, (yy + 0.5) / n))
    assert len(anchors) == 896
    cands = []
    for i, (ax, ay) in enumerate(anchors):
        score = 1 / (1 + math.exp(-max(-100.0, min(100.0, float(cls[i])))))
        if score < 0.5:
            continue
        cx = raw[i, 0] / 128 + ax
        cy = raw[i, 1] / 128 + ay
        w, h = raw[i, 2] / 128, raw[i, 3] / 128
        box = [(cx - w / 2) * 128, (cy - h / 2) * 128, (cx + w / 2) * 128, (cy + h / 2) * 128]
        cands.append((score, box))
    cands.sort(key=lambda c: -c[0])

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
        return ix * iy / u if u > 0 else 0.0

    kept = []
    for score, box in cands:
        if all(iou(box, k[1]) <= 0.3 for k in kept):
            kept.append((score, box))
    result = []
    for score, (x1, y1, x2, y2) in kept:
        b = [(x1 - px) / (nw / w0), (y1 - py) / (nh / h0), (x2 - px) / (nw / w0), (y2 - py) / (nh / h0)]
        b = [min(max(b[0], 0), w0), min(max(b[1], 0), h0), min(max(b[2], 0), w0), min(max(b[3], 0), h0)]
        result.append((score, b))
    return result


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "coffee.png", "chelsea.png"])
def test_face_detector_boxes_equal_independent_reference(face, name):
    got = json.loads(run("predict", face / "face.onnx", photo(name), "--json").stdout)
    want = reference_face_boxes(face / "face.onnx", photo(name))
    dets = got[0]["detections"]
    assert got[0]["input"] == str(photo(name))
    assert len(dets) == len(want)
    for d, (score, box) in zip(dets, want):
        assert d["label"] == "face"
        assert d["score"] == pytest.approx(score, abs=1e-4)
        np.testing.assert_allclose(d["box"], box, atol=0.02)


def test_face_found_where_the_face_is(face):
    """The astronaut photograph has one face, in the upper middle; the cat and the coffee none."""
    got = json.loads(run("predict", face / "face.onnx", photo("astronaut.png"), photo("coffee.png"),
                         photo("chelsea.png"), "--json").stdout)
    faces = got[0]["detections"]
    assert len(faces) == 1 and faces[0]["score"] > 0.8
    x1, y1, x2, y2 = faces[0]["box"]
    assert 150 < x1 < x2 < 300 and 50 < y1 < y2 < 200          # the face, in a 512x512 image
    assert got[1]["detections"] == [] and got[2]["detections"] == []


def test_boxes_are_in_original_pixels_whatever_the_letterbox(face):
    m = onnx.load(face / "face.onnx")
    det = Detector(m)
    img = Image.open(photo("astronaut.png")).convert("RGB")
    a = np.asarray(det.detect(img)[0]["box"])
    for crop in ((80, 20, 420, 260), (120, 0, 330, 320)):      # wide and tall: padded both ways
        b = np.asarray(det.detect(img.crop(crop))[0]["box"])
        b = b + [crop[0], crop[1], crop[0], crop[1]]
        # the detector sees the face larger, so the box differs a little; a letterbox mistake
        # would move it by the padding (tens of pixels)
        np.testing.assert_allclose((b[:2] + b[2:]) / 2, (a[:2] + a[2:]) / 2, atol=5)
        np.testing.assert_allclose(b[2:] - b[:2], a[2:] - a[:2], rtol=0.2)


def test_draw_writes_images_and_never_overwrites_a_foreign_file(face, tmp_path):
    out = tmp_path / "drawn"
    run("predict", face / "face.onnx", photo("astronaut.png"), "--draw", out)
    drawn = Image.open(out / "astronaut.png")
    src = Image.open(photo("astronaut.png")).convert("RGB")
    assert drawn.size == src.size and np.any(np.asarray(drawn.convert("RGB")) != np.asarray(src))
    run("predict", face / "face.onnx", photo("astronaut.png"), "--draw", out)   # ours: redrawn
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "astronaut.png").write_bytes(b"user's file")
    r = run("predict", face / "face.onnx", photo("astronaut.png"), "--draw", tmp_path / "mine", check=False)
    assert r.returncode == 2 and "not drawn by edgeloop" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "mine" / "astronaut.png").read_bytes() == b"user's file"


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, key", [
    ({"kind": "retinanet"}, "kind"),
    ({"boxes": {"output": "boxes_out"}}, "boxes.output"),
    ({"anchors": {"strides": [8, 16, 16]}}, "anchors"),
    ({"input": {"size": [192, 192]}}, "input.size"),
    ({"input": {"size": [128, 128], "layout": "HWC"}}, "input.layout"),
    ({"min_score": 2}, "min_score"),
])
def test_bad_head_file_is_one_line_naming_the_key(face, tmp_path, change, key):
    spec = {**FACE_HEAD, **change}
    (tmp_path / "h.json").write_text(json.dumps(spec))
    r = run("convert", mediapipe_model("face_detection/face_detection_short_range.tflite"),
            "--head", tmp_path / "h.json", "-o", tmp_path / "o.onnx", check=False)
    assert r.returncode == 2, r.stderr
    assert f"head key '{key}'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and not (tmp_path / "o.onnx").exists()


def test_detector_without_head_says_what_to_add(tmp_path):
    r = run("predict", mediapipe_model("face_detection/face_detection_short_range.tflite"),
            photo("astronaut.png"), check=False)
    assert r.returncode == 2 and "--head" in r.stderr and "kind" in r.stderr


def test_not_json_head(tmp_path):
    (tmp_path / "h.json").write_text("{kind: ")
    with pytest.raises(edgeloop.errors.EdgeloopError, match="not valid JSON"):
        read_head_file(tmp_path / "h.json")


# ---------------------------------------------------------------- anchors

def test_anchor_count_and_order_follow_mediapipe():
    a = rd.ssd_anchors(rd.parse_head(FACE_HEAD)["anchors"], (128, 128))
    assert a.shape == (896, 4)
    # first layer: 16x16 cells, two anchors each; then 8x8 cells, six anchors each
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8, 1, 1])
    np.testing.assert_allclose(a[518], [1.5 / 8, 0.5 / 8, 1, 1])
    # palm detection (192x192, strides 8,16,16,16): 2016 anchors
    palm = dict(FACE_HEAD["anchors"], strides=[8, 16, 16, 16])
    assert rd.ssd_anchors(rd._parse_anchor_settings(palm), (192, 192)).shape[0] == 2016


# ---------------------------------------------------------------- Ultralytics-style graphs

def yolo_graph(nc=3, n=50, seed=0, ultralytics=True, v5=False):
    """A graph whose output is a fixed YOLO tensor (the decode under test reads outputs only)."""
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(40, 600, n), rng.uniform(40, 600, n)
    w, h = rng.uniform(10, 120, n), rng.uniform(10, 120, n)
    cls = rng.uniform(0, 1, (n, nc)) ** 4
    if v5:
        obj = rng.uniform(0, 1, (n, 1))
        table = np.concatenate([np.stack([cx, cy, w, h], 1), obj, cls], 1)[None]     # [1, N, 5+nc]
    else:
        table = np.concatenate([np.stack([cx, cy, w, h], 1), cls], 1).T[None]          # [1, 4+nc, N]
    table = table.astype(np.float32)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(table.shape))
    nodes = [helper.make_node("ReduceSum", ["images"], ["s"], keepdims=0),
             helper.make_node("Mul", ["s", "zero"], ["z"]),
             helper.make_node("Add", ["table", "z"], ["output0"])]
    g = helper.make_graph(nodes, "yolo", [x], [y],
                          [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.float32(0), "zero")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if ultralytics:
        names = {i: f"class{i}" for i in range(nc)}
        for k, v in {"task": "detect", "names": repr(names), "imgsz": "[640, 640]", "stride": "32"}.items():
            p = m.metadata_props.add()
            p.key, p.value = k, v
    return m, table


def reference_yolo(table, thr, iou_thr, v5=False):
    t = table[0] if v5 else table[0].T
    out = []
    cls = t[:, 5:] * t[:, 4:5] if v5 else t[:, 4:]
    for c in range(cls.shape[1]):
        cand = [(float(cls[i, c]), i) for i in range(len(t)) if cls[i, c] >= thr and np.argmax(cls[i]) == c]
        cand.sort(key=lambda s: -s[0])
        kept = []
        for s, i in cand:
            b = [t[i, 0] - t[i, 2] / 2, t[i, 1] - t[i, 3] / 2, t[i, 0] + t[i, 2] / 2, t[i, 1] + t[i, 3] / 2]
            if all(rd.box_iou(np.asarray([b]), np.asarray([k[1]]))[0, 0] <= iou_thr for k in kept):
                kept.append((s, b, c))
        out += kept
    return sorted(out, key=lambda k: -k[0])


@pytest.mark.parametrize("v5", [False, True])
def test_ultralytics_graph_recognised_and_decoded(tmp_path, v5):
    m, table = yolo_graph(v5=v5)
    if v5:
        m.metadata_props[0].value = "detect"
    head = head_of(m)
    assert head is not None and head["kind"] == ("yolov5" if v5 else "yolov8")
    assert head["labels"] == ["class0", "class1", "class2"]
    got = Detector(m).detect(np.zeros((640, 640, 3), np.uint8))
    want = reference_yolo(table, head["min_score"], head["nms_iou"], v5=v5)
    assert len(got) == len(want) > 3
    for d, (s, b, c) in zip(got, want):
        assert d["label"] == f"class{c}" and d["score"] == pytest.approx(s, abs=1e-5)
        np.testing.assert_allclose(d["box"], np.clip(b, 0, 640), atol=0.01)


def test_plain_yolo_graph_has_no_head():
    m, _ = yolo_graph(ultralytics=False)
    assert head_of(m) is None


def test_yolo_boxes_mapped_back_from_letterbox():
    m, table = yolo_graph()
    det = Detector(m)
    got = det.detect(np.zeros((320, 640, 3), np.uint8))         # scale 1, padded 160 px top
    for d in got:
        assert 0 <= d["box"][1] <= d["box"][3] <= 320
    head = head_of(m)
    x, box = rd.preprocess(np.zeros((320, 640, 3), np.uint8), head)
    assert x.shape == (1, 3, 640, 640) and box.pad_y == 160 and box.pad_x == 0
    assert np.allclose(x[0, :, :160], 114 / 255.0) and np.allclose(x[0, :, 160:480], 0)


# ---------------------------------------------------------------- centroids

def test_centroid_heatmap_blobs():
    hm = np.zeros((1, 12, 12, 3), np.float32)
    hm[..., 0] = 1.0
    hm[0, 2:4, 2:5, :] = [0.1, 0.9, 0.0]                           # a 2x3 blob of class 1
    hm[0, 8, 9, :] = [0.2, 0.0, 0.8]                               # one cell of class 2
    hm[0, 8, 10, :] = [0.3, 0.7, 0.0]                              # a class-1 cell beside it
    head = rd.parse_head({"kind": "centroids", "labels": ["a", "b"],
                          "input": {"size": [96, 96]}, "heatmap": {"output": "y"}})
    dets = rd.decode(head, {"y": hm}, rd.Letterbox(96, 96, 1, 1, 0, 0), 0.5)
    assert [(d["label"], d["box"]) for d in dets] == [
        ("a", [16.0, 16.0, 40.0, 32.0]), ("b", [72.0, 64.0, 80.0, 72.0]), ("a", [80.0, 64.0, 88.0, 72.0])]


# ---------------------------------------------------------------- mAP against pycocotools

def coco_reference(preds, truths, labels):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [{"id": i + 1, "width": 1000, "height": 1000} for i in range(len(truths))],
          "categories": [{"id": j + 1, "name": n} for j, n in enumerate(labels)], "annotations": []}
    for i, img in enumerate(truths):
        for d in img:
            x1, y1, x2, y2 = d["box"]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                      "category_id": labels.index(d["label"]) + 1,
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                      "iscrowd": 0})
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dts = [{"image_id": i + 1, "category_id": labels.index(d["label"]) + 1, "score": d["score"],
            "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]]}
           for i, img in enumerate(preds) for d in img]
    ev = COCOeval(coco, coco.loadRes(dts), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0], ev.stats[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    labels = ["helmet", "vest", "person"]
    truths, preds = [], []
    for _ in range(12):
        t, p = [], []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 800, 2)
            w, h = rng.uniform(40, 200, 2)    # above COCO's "all" area range minimum
            lab = labels[rng.integers(0, 3)]
            t.append({"box": [x, y, x + w, y + h], "label": lab})
            if rng.uniform() < 0.8:
                j = rng.normal(0, 12, 4)
                p.append({"box": [x + j[0], y + j[1], x + w + j[2], y + h + j[3]], "label": lab,
                          "score": float(rng.uniform(0.2, 1.0))})
        for _ in range(rng.integers(0, 3)):            # false positives, some with tied scores
            x, y = rng.uniform(0, 800, 2)
            p.append({"box": [x, y, x + 60, y + 80], "label": labels[rng.integers(0, 3)],
                      "score": 0.5})
        truths.append(t)
        preds.append(p)
    want_map, want_50 = coco_reference(preds, truths, labels)
    got = evaluate(preds, truths)
    assert got["map"] == pytest.approx(want_map, abs=1e-4)
    assert got["map50"] == pytest.approx(want_50, abs=1e-4)
    assert 0.05 < got["map"] < 0.95


def test_map_perfect_and_empty():
    t = [[{"box": [0, 0, 50, 50], "label": "a"}]]
    assert evaluate([[{"box": [0, 0, 50, 50], "label": "a", "score": 0.9}]], t)["map"] == pytest.approx(1.0)
    assert evaluate([[]], t)["map"] == 0.0


def test_attach_head_fills_int8_scales():
    """An int8 graph: the head learns the input and output scales from the Q/DQ nodes."""
    x = helper.make_tensor_value_info("x", TensorProto.INT8, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT8, [1, 1, 1, 3])
    inits = [numpy_helper.from_array(np.float32(0.5), "s"), numpy_helper.from_array(np.int8(-3), "z"),
             numpy_helper.from_array(np.float32(0.25), "so"), numpy_helper.from_array(np.int8(7), "zo")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("MaxPool", ["xf"], ["p"], kernel_shape=[8, 8]),
             helper.make_node("QuantizeLinear", ["p", "so", "zo"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "q", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    attach_head(m, {"kind": "centroids", "labels": ["a", "b"],
                    "input": {"size": [8, 8], "layout": "NCHW" if False else "NHWC"}})
    h = head_of(m)
    assert h["input"]["quant"] == [0.5, -3.0] and h["output_quant"]["y"] == [0.25, 7.0]


def test_profile_and_targets_count_pre_and_post_processing(face):
    from edgeloop.hardware import recommend
    from edgeloop.profile import profile_model

    m = onnx.load(face / "face.onnx")
    p = profile_model(m, latency=False)
    d = p["detection"]
    assert d["kind"] == "ssd_anchors" and d["candidates"] == 896 and d["input_size"] == [128, 128]
    assert p["pipeline_macs"] == p["macs"] + d["preprocess_ops"] + d["postprocess_ops"] > p["macs"]
    rows = {r["name"]: r for r in recommend(p)}
    pi = rows["raspberry-pi-4"]
    assert pi["est_fps"] == pytest.approx(1000 / pi["est_latency_ms"])
    bare = dict(p)
    bare.pop("pipeline_macs")
    assert recommend(bare)[0]["est_latency_ms"] < {r["name"]: r for r in recommend(p)}[recommend(bare)[0]["name"]]["est_latency_ms"]
    r = run("targets", face / "face.onnx")
    assert "fps" in r.stdout
