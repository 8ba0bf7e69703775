"""Detection heads decoded in C (``<prefix>_detect``): the generated text compiles strictly
for the host and for Cortex-M4 (and runs on QEMU's Cortex-M7), and from Python (ctypes) its boxes equal the numpy decoder's
on the same raw outputs: bit for bit on int8 detectors (the MediaPipe face detector
quantized with onnxruntime, a small centroids net), within float rounding on float ones."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgeloop.backends.c import CModel, compile_shared
from edgeloop.backends.c.codegen import generate
from edgeloop.detect import attach_head, head_of
from edgeloop.runtime import detect as rd
from test_detect import FACE_HEAD
from wheel_assets import mediapipe_model, photo

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
M4 = ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
PHOTOS = ("astronaut.png", "camera.png", "coffee.png")


BOX_FIELDS = [("x1", ctypes.c_float), ("y1", ctypes.c_float), ("x2", ctypes.c_float),
              ("y2", ctypes.c_float), ("score", ctypes.c_float), ("class_id", ctypes.c_int)]


class Box(ctypes.Structure):
    _fields_ = BOX_FIELDS


def box_type(keypoints: int):
    """<prefix>_box_t: with a keypoints[K][2] array when the head has keypoints."""
    if not keypoints:
        return Box
    return type(f"Box{keypoints}", (ctypes.Structure,),
                {"_fields_": BOX_FIELDS + [("keypoints", (ctypes.c_float * 2) * keypoints)]})


def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


class CDetector:
    """The exported C as a shared library: raw outputs (``<prefix>_run_all``) and boxes
    (``<prefix>_detect``) for one input tensor."""

    def __init__(self, model: onnx.ModelProto, out_dir, prefix: str = "model"):
        self.info = generate(model, out_dir, prefix)
        self.dir, self.prefix = out_dir, prefix
        self.model = CModel(compile_shared(out_dir, prefix), self.info)
        self.fn = getattr(self.model.lib, f"{prefix}_detect")
        self.keypoints = int((self.info.get("detect") or {}).get("keypoints") or 0)
        self.Box = box_type(self.keypoints)
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(self.Box), ctypes.c_int]

    def raw(self, x):
        return dict(zip([o["name"] for o in self.info["outputs"]], self.model.run_all(x)))

    def detect(self, x, max_boxes: int = 200):
        x = np.ascontiguousarray(x, dtype=self.info["inputs"][0]["dtype"])
        boxes = (self.Box * max_boxes)()
        n = self.fn(x.ctypes.data, boxes, max_boxes)
        assert n >= 0
        return [boxes[i] for i in range(n)]


def assert_same_as_numpy(head, det: CDetector, x, letterbox, *, exact: bool):
    """C boxes mapped through the letterbox == runtime/detect.decode on the C's own raw
    outputs: same boxes, same order, same scores and labels."""
    want = rd.decode(head, det.raw(x), letterbox)
    got = det.detect(x)
    assert len(got) == len(want), (got, want)
    labels = head["labels"]
    xyxy = np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in got], np.float64).reshape(-1, 4)
    mapped = letterbox.to_original(xyxy) if len(got) else xyxy
    assert all(("keypoints" in d) == bool(det.keypoints) for d in want)
    for b, m, d in zip(got, mapped, want):
        assert labels[b.class_id] == d["label"]
        if det.keypoints:
            kp = letterbox.points_to_original(np.asarray([[p[0], p[1]] for p in b.keypoints], np.float64))
            got_kp = [[round(float(x), 2), round(float(y), 2)] for x, y in kp]
            if exact:
                assert got_kp == d["keypoints"]
            else:
                np.testing.assert_allclose(got_kp, d["keypoints"], rtol=1e-4, atol=0.011)
        if exact:
            assert [round(float(v), 2) for v in m] == d["box"]
            assert round(float(b.score), 5) == d["score"]
        else:
            np.testing.assert_allclose(m, d["box"], rtol=1e-4, atol=0.011)
            assert float(b.score) == pytest.approx(d["score"], rel=1e-4, abs=1e-5)
    return want


def compile_strict(out_dir, prefix="model"):
    """The generated text with -Wall -Wextra -Werror, host gcc and Cortex-M4."""
    src = out_dir / f"{prefix}.c"
    for cc in (["gcc"], M4):
        if shutil.which(cc[0]) is None:
            continue
        r = subprocess.run([*cc, *STRICT, "-c", "-o", str(out_dir / "strict.o"), str(src)],
                           capture_output=True, text=True)
        assert r.returncode == 0, (cc[0], r.stderr[:2000])


# ---------------------------------------------------------------- the MediaPipe face detector

@pytest.fixture(scope="module")
def face(tmp_path_factory):
    d = tmp_path_factory.mktemp("face-c")
    (d / "head.json").write_text(json.dumps(FACE_HEAD))
    run_cli("convert", mediapipe_model("face_detection/face_detection_short_range.tflite"),
            "--head", d / "head.json", "-o", d / "face.onnx")
    return d


def images(head, dtype=np.float32):
    return {n: rd.preprocess(Image.open(photo(n)), head, dtype) for n in PHOTOS}


def int8_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Graph outputs as the int8 tensors before their final DequantizeLinear (what the device
    decodes). A Concat right before takes its output's scale for its inputs, TFLite's rule
    for concatenation (onnxruntime calibrates each input on its own)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    drop = set()
    for out in model.graph.output:
        dq = prod[out.name]
        assert dq.op_type == "DequantizeLinear", dq.op_type
        q = prod[dq.input[0]]
        cat = prod.get(q.input[0])
        if cat is not None and cat.op_type == "Concat":
            for x in cat.input:
                idq = prod[x]
                iq = prod[idq.input[0]]
                for n in (idq, iq):
                    n.input[1], n.input[2] = q.input[1], q.input[2]
        q.output[0] = out.name
        drop.add(id(dq))
        out.type.tensor_type.elem_type = TensorProto.INT8
    keep = [n for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def quantize(model: onnx.ModelProto, calib: list[np.ndarray], path) -> onnx.ModelProto:
    """onnxruntime's quantize_static (QDQ, per-channel int8), the head kept."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: x} for x in calib])

        def get_next(self):
            return next(self.it, None)

    head = head_of(model)
    src = path.with_suffix(".float.onnx")
    onnx.save(model, src)
    quantize_static(str(src), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    q = int8_outputs(onnx.load(path))
    q = attach_head(q, head)       # re-fit: the int8 outputs' scales go into output_quant
    onnx.save(q, path)
    return q


@pytest.fixture(scope="module")
def face_int8(face):
    model = onnx.load(face / "face.onnx")
    head = head_of(model)
    calib = [x for x, _ in images(head).values()]
    return quantize(model, calib, face / "face_int8.onnx")


def test_float_face_detector_c_boxes_match_numpy_within_float_rounding(face, tmp_path):
    model = onnx.load(face / "face.onnx")
    head = head_of(model)
    det = CDetector(model, tmp_path)
    compile_strict(tmp_path)
    h = (tmp_path / "model.h").read_text()
    assert "int model_detect(const void *input, model_box_t *boxes, int max_boxes);" in h
    assert "#define MODEL_MAX_DETECTIONS 100" in h
    c = (tmp_path / "model.c").read_text()
    assert "static const double el_det_anchors[3584]" in c and "malloc(" not in c
    found = 0
    for name, (x, box) in images(head).items():
        found += len(assert_same_as_numpy(head, det, x, box, exact=False))
    assert found >= 1          # the astronaut's face


def test_int8_face_detector_c_boxes_equal_numpy_bit_for_bit(face_int8, tmp_path):
    head = head_of(face_int8)
    assert set(head["output_quant"]) == {"regressors", "classificators"}
    det = CDetector(face_int8, tmp_path)
    compile_strict(tmp_path)
    assert det.info["precision"] == "int8"
    # the threshold is one int8 compare: sigmoid((q - zp) * s) >= 0.5 <=> q >= zp
    s, zp = head["output_quant"]["classificators"]
    assert det.info["detect"]["int8_threshold"] == int(np.ceil(zp))
    x, box = images(head)["astronaut.png"]
    dets = assert_same_as_numpy(head, det, x, box, exact=True)
    assert len(dets) >= 1
    face_box = dets[0]["box"]             # upper middle of the 512 x 512 photograph
    assert 100 < (face_box[0] + face_box[2]) / 2 < 350 and (face_box[1] + face_box[3]) / 2 < 250
    for name in ("camera.png", "coffee.png"):
        assert_same_as_numpy(head, det, *images(head)[name], exact=True)
    # a lower threshold: many candidates, NMS does the work, max_boxes truncates
    low = {**head, "min_score": 0.05, "max_detections": 7}
    det_low = CDetector(attach_head(onnx.load_model_from_string(face_int8.SerializeToString()), low),
                        tmp_path / "low")
    many = assert_same_as_numpy(low, det_low, x, box, exact=True)
    assert len(many) == 7
    assert len(det_low.detect(x, max_boxes=3)) == 3


def test_int8_face_detector_exports_and_verifies_on_cortex_m7(face_int8, face, tmp_path):
    """The BlazeFace-class int8 model exports for a Cortex-M7 board and, under QEMU's
    mps2-an500, <prefix>_detect gives the numpy decoder's boxes and keypoints."""
    path = face / "face_int8.onnx"
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("qemu-system-arm / arm-none-eabi-gcc not installed")
    r = run_cli("export", path, "--target", "stm32h743", "-o", tmp_path / "out", "--verify", "--json")
    report = json.loads(r.stdout)
    assert report["detect"]["kind"] == "ssd_anchors" and report["detect"]["int8_scores"]
    assert "int model_detect(" in (tmp_path / "out" / "model.h").read_text()
    v = report["verify"]
    assert v["available"], v
    assert v["outputs_match"] is True
    assert (v["core"], v["board"]) == ("cortex-m7", "mps2-an500")
    d = v["detect"]
    assert d["boxes_match"] is True, d
    assert d["decode_instructions_per_frame"] > 0 and d["inference_instructions_per_frame"] > 0


# ---------------------------------------------------------------- a centroids head

CENTROIDS_HEAD = {"kind": "centroids", "labels": ["a", "b", "c"],
                  "input": {"layout": "NCHW", "size": [48, 32], "range": [0.0, 1.0], "resize": "stretch"},
                  "heatmap": {"activation": "none", "layout": "NHWC", "background": True},
                  "min_score": 0.4}


def centroids_model() -> onnx.ModelProto:
    """A tiny conv net: 8x8-pixel cells, a softmax over background + 3 classes per cell."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.6, (8, 3, 4, 4)).astype(np.float32)
    w2 = rng.normal(0, 1.5, (4, 8, 1, 1)).astype(np.float32)
    b2 = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], strides=[4, 4]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["logits"]),
             helper.make_node("Transpose", ["logits"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Softmax", ["nhwc"], ["heatmap"], axis=-1)]
    g = helper.make_graph(nodes, "centroids",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 48])],
                          [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [1, 4, 6, 4])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array(b2, "b2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return attach_head(m, CENTROIDS_HEAD)


def test_centroids_head_in_c_equals_numpy(tmp_path):
    model = centroids_model()
    head = head_of(model)
    ims = images(head)
    det = CDetector(model, tmp_path / "f32")
    compile_strict(tmp_path / "f32")
    for x, box in ims.values():
        assert_same_as_numpy(head, det, x, box, exact=True)   # no exp: exact in float too

    q = quantize(model, [x for x, _ in ims.values()], tmp_path / "c_int8.onnx")
    head = head_of(q)
    assert "heatmap" in head["output_quant"]
    det8 = CDetector(q, tmp_path / "i8")
    compile_strict(tmp_path / "i8")
    assert det8.info["precision"] == "int8" and det8.info["detect"]["kind"] == "centroids"
    total, sizes = 0, set()
    for x, box in ims.values():
        dets = assert_same_as_numpy(head, det8, x, box, exact=True)
        total += len(dets)
        sizes |= {round((d["box"][2] - d["box"][0]) * (d["box"][3] - d["box"][1])) for d in dets}
    assert total >= 3 and len(sizes) >= 2    # several objects, some merged from several cells


def test_unsupported_heads_fail_with_one_line(tmp_path):
    model = centroids_model()
    bad = attach_head(centroids_model(), {**CENTROIDS_HEAD, "heatmap": {**CENTROIDS_HEAD["heatmap"],
                                                                        "activation": "softmax"}})
    onnx.save(bad, tmp_path / "bad.onnx")
    r = subprocess.run([sys.executable, "-m", "edgeloop", "export", tmp_path / "bad.onnx", "--target",
                        "stm32h743", "-o", tmp_path / "out"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "heatmap.activation 'softmax' is not supported in C" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert model is not None


def test_centroids_nchw_float_heatmap_in_c_equals_numpy(tmp_path):
    """The channel-first heatmap layout (softmax over axis 1, no transpose)."""
    model = centroids_model()
    nodes = [n for n in model.graph.node if n.op_type != "Transpose"]
    nodes[-1].input[0] = "logits"
    nodes[-1].attribute[0].i = 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 4
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 6
    head = {**CENTROIDS_HEAD, "heatmap": {**CENTROIDS_HEAD["heatmap"], "layout": "NCHW"}}
    model = attach_head(model, head)
    head = head_of(model)
    det = CDetector(model, tmp_path)
    n = 0
    for x, box in images(head).values():
        n += len(assert_same_as_numpy(head, det, x, box, exact=True))
    assert n >= 3


# ---------------------------------------------------------------- a tflite_ssd head (multi-class)

def tflite_ssd_model():
    """A 16-anchor SSD with a background class and two classes: 1x1 convs over a 4x4 grid,
    TF's yxhw box coder with exp sizes (the box coder of TFLite's Detection_PostProcess)."""
    rng = np.random.default_rng(7)
    wb = rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32)
    ws = rng.normal(0, 1.5, (3, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wb"], ["b"]), helper.make_node("Conv", ["x", "ws"], ["s"]),
             helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["s"], ["st"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["bt", "bshape"], ["boxes"]),
             helper.make_node("Reshape", ["st", "sshape"], ["scores"])]
    g = helper.make_graph(nodes, "ssd",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 16, 4]),
                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 16, 3])],
                          [numpy_helper.from_array(wb, "wb"), numpy_helper.from_array(ws, "ws"),
                           numpy_helper.from_array(np.array([1, 16, 4], np.int64), "bshape"),
                           numpy_helper.from_array(np.array([1, 16, 3], np.int64), "sshape")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    anchors = [[(i + 0.5) / 4, (j + 0.5) / 4, 0.4, 0.3] for i in range(4) for j in range(4)]
    head = {"kind": "tflite_ssd", "labels": ["cat", "dog"], "anchors": anchors,
            "input": {"layout": "NCHW", "size": [4, 4], "range": [-1.0, 1.0], "resize": "stretch"},
            "boxes": {"output": "boxes"}, "scores": {"output": "scores"}, "min_score": 0.3, "nms_iou": 0.2}
    return attach_head(m, head)


def test_tflite_ssd_multiclass_head_in_c(tmp_path):
    model = tflite_ssd_model()
    head = head_of(model)
    ims = images(head)
    det = CDetector(model, tmp_path / "f32")
    compile_strict(tmp_path / "f32")
    classes = set()
    for x, box in ims.values():
        classes |= {d["label"] for d in assert_same_as_numpy(head, det, x, box, exact=False)}
    q = quantize(model, [x for x, _ in ims.values()], tmp_path / "ssd_int8.onnx")
    head = head_of(q)
    det8 = CDetector(q, tmp_path / "i8")
    n = 0
    for x, box in ims.values():
        dets = assert_same_as_numpy(head, det8, x, box, exact=True)
        n += len(dets)
        classes |= {d["label"] for d in dets}
    assert n >= 3 and classes == {"cat", "dog"}


# ---------------------------------------------------------------- YOLO heads

def yolo_model(kind: str):
    """A tiny YOLO-style net on an 8 x 8 input, one box per pixel: boxes cx cy w h in input
    pixels (Relu of a conv around 4), class scores (and objectness) clipped to [0, 1].
    yolov8: [1, 4+nc, 64] (Ultralytics' layout); yolov5: [1, 64, 5+nc]."""
    rng = np.random.default_rng(11)
    parts = [("box", 4, np.array([4.0, 4.0, 2.5, 2.5], np.float32), None)]
    if kind == "yolov5":
        parts.append(("obj", 1, np.array([0.6], np.float32), (0.0, 1.0)))
    parts.append(("cls", 2, np.array([0.2, 0.2] if kind == "yolov8" else [-0.4, 0.5], np.float32),
                  (0.0, 1.0)))
    nodes, inits, names = [], [], []
    for name, ch, bias, clip in parts:
        std = {"box": 0.8, "obj": 0.6, "cls": 0.6 if kind == "yolov8" else 1.5}[name]
        w = rng.normal(0, std, (ch, 3, 1, 1)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w_{name}"), numpy_helper.from_array(bias, f"b_{name}")]
        nodes.append(helper.make_node("Conv", ["x", f"w_{name}", f"b_{name}"], [f"c_{name}"]))
        if clip is None:
            nodes.append(helper.make_node("Relu", [f"c_{name}"], [f"a_{name}"]))
        else:
            inits += [numpy_helper.from_array(np.array(clip[0], np.float32), f"lo_{name}"),
                      numpy_helper.from_array(np.array(clip[1], np.float32), f"hi_{name}")]
            nodes.append(helper.make_node("Clip", [f"c_{name}", f"lo_{name}", f"hi_{name}"], [f"a_{name}"]))
        inits.append(numpy_helper.from_array(np.array([1, ch, 64], np.int64), f"s_{name}"))
        nodes.append(helper.make_node("Reshape", [f"a_{name}", f"s_{name}"], [f"r_{name}"]))
        last = f"r_{name}"
        if kind == "yolov5":
            nodes.append(helper.make_node("Transpose", [last], [f"t_{name}"], perm=[0, 2, 1]))
            last = f"t_{name}"
        names.append(last)
    k = sum(p[1] for p in parts)
    shape = [1, k, 64] if kind == "yolov8" else [1, 64, k]
    nodes.append(helper.make_node("Concat", names, ["output0"], axis=1 if kind == "yolov8" else 2))
    g = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    head = {"kind": kind, "labels": ["person", "helmet"], "output": "output0",
            "input": {"layout": "NCHW", "size": [8, 8], "range": [0.0, 1.0], "resize": "letterbox"},
            "min_score": 0.3 if kind == "yolov8" else 0.1, "nms_iou": 0.3}
    return attach_head(m, head)


@pytest.mark.parametrize("kind", ["yolov8", "yolov5"])
def test_yolo_head_in_c(kind, tmp_path):
    model = yolo_model(kind)
    head = head_of(model)
    ims = images(head)
    det = CDetector(model, tmp_path / "f32")
    compile_strict(tmp_path / "f32")
    for x, box in ims.values():
        assert_same_as_numpy(head, det, x, box, exact=True)     # no exp: exact in float too
    q = quantize(model, [x for x, _ in ims.values()], tmp_path / "yolo_int8.onnx")
    head = head_of(q)
    det8 = CDetector(q, tmp_path / "i8")
    compile_strict(tmp_path / "i8")
    n, classes = 0, set()
    for x, box in ims.values():
        dets = assert_same_as_numpy(head, det8, x, box, exact=True)
        n += len(dets)
        classes |= {d["label"] for d in dets}
    assert n >= 3 and classes == {"person", "helmet"}
    raw = rd.decode({**head, "nms": "none", "max_detections": 1000}, det8.raw(ims["astronaut.png"][0]),
                    ims["astronaut.png"][1])
    assert len(raw) > len(det8.detect(ims["astronaut.png"][0]))   # NMS removed boxes
