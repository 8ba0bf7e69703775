"""TFLite detectors ending in TFLite_Detection_PostProcess: the importer cuts the op off and
turns it into a ``tflite_ssd`` head, and edgeloop's decoder gives LiteRT's boxes, classes,
scores and count (LiteRT runs the op itself). Models are built with the TFLite schema
(tests/tflite_ssd_models.py): a small SSD with multi-scale anchors, float and uint8, and
MediaPipe's trained face detector re-encoded for the op, on a real photograph."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ai_edge_litert")

from edgeloop.detect import Detector, head_of  # noqa: E402
from edgeloop.errors import ModelLoadError, UnsupportedOperatorError  # noqa: E402
from edgeloop.frontends.tflite import load_tflite  # noqa: E402
from edgeloop.runtime import detect as rd  # noqa: E402
from tflite_ssd_models import DEFAULT_OPTIONS, Builder, blazeface_ssd, litert_run, tiny_ssd  # noqa: E402
from wheel_assets import mediapipe_model, photo  # noqa: E402


def run(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


def edgeloop_detect(model, x: np.ndarray):
    """edgeloop's detections for one input tensor (no image resizing: the letterbox is the
    identity), best first."""
    head = head_of(model)
    det = Detector(model, head)
    outs = dict(zip(det.output_names, det.session.run(None, {det.input_name: x})))
    w, h = head["input"]["size"]
    return rd.decode(head, outs, rd.Letterbox(w, h, 1.0, 1.0, 0.0, 0.0))


def assert_same_as_litert(data: bytes, model, x: np.ndarray, labels=None) -> int:
    """LiteRT's op output against edgeloop: same count, classes and scores, boxes (in input
    pixels, clipped to the input as edgeloop reports them) within float32 rounding."""
    ref = litert_run(data, x)
    got = edgeloop_detect(model, x)
    assert len(got) == ref["count"]
    h, w = x.shape[1:3]
    for d, box, c, s in zip(got, ref["boxes"], ref["classes"], ref["scores"]):
        y1, x1, y2, x2 = box
        want = np.clip([x1 * w, y1 * h, x2 * w, y2 * h], 0, [w, h, w, h])
        np.testing.assert_allclose(d["box"], want, atol=0.011)   # edgeloop rounds to 0.01 px
        assert d["score"] == pytest.approx(float(s), abs=1e-5)
        assert d["label"] == (labels[c] if labels else str(c))
    return ref["count"]


def inputs(n: int, shape, seed: int = 3):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(n)]


@pytest.fixture
def write(tmp_path):
    def _write(data: bytes, name: str = "ssd.tflite"):
        p = tmp_path / name
        p.write_bytes(data)
        return p
    return _write


# ---------------------------------------------------------------- the head the importer makes

def test_postprocess_op_becomes_the_head(write):
    opts = dict(DEFAULT_OPTIONS, max_detections=7, nms_score_threshold=0.25, nms_iou_threshold=0.55,
                y_scale=9.0, x_scale=11.0, h_scale=4.0, w_scale=6.0, detections_per_class=5)
    data = tiny_ssd(options=opts)
    model = load_tflite(write(data))
    assert [o.name for o in model.graph.output] == ["raw_outputs/box_encodings",
                                                    "raw_outputs/class_predictions"]
    assert not any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    head = head_of(model)
    assert head["kind"] == "tflite_ssd"
    assert head["boxes"]["scale"] == [9.0, 11.0, 4.0, 6.0] and head["boxes"]["coords"] == "yxhw"
    assert head["scores"]["activation"] == "none" and head["scores"]["background"] is True
    assert head["min_score"] == 0.25 and head["nms_iou"] == 0.55 and head["max_detections"] == 7
    assert head["postprocess"]["detections_per_class"] == 5 and head["postprocess"]["num_classes"] == 3
    assert head["input"] == {**head["input"], "size": [32, 32], "layout": "NHWC", "range": [-1.0, 1.0]}
    # the anchors are the op's constant tensor, (y, x, h, w) rows
    from tflite_ssd_models import grid_anchors
    np.testing.assert_allclose(head["anchors"], grid_anchors((8, 4), (0.3, 0.7), (1.0, 2.0, 0.5)),
                               rtol=1e-7)


@pytest.mark.parametrize("options", [
    {},                                                          # fast NMS, best class
    {"max_classes_per_detection": 2, "nms_iou_threshold": 0.4, "max_detections": 7},  # 2 classes a box
    {"use_regular_nms": True, "detections_per_class": 3, "max_detections": 8},  # per class
], ids=["fast", "fast-2-classes", "regular"])
def test_float_model_decodes_as_litert(write, options):
    data = tiny_ssd(options=options)
    model = load_tflite(write(data))
    total = sum(assert_same_as_litert(data, model, x) for x in inputs(6, (1, 32, 32, 3)))
    assert total >= 12
    if options.get("max_classes_per_detection") == 2:
        # each kept box reports its two best classes
        got = edgeloop_detect(model, inputs(1, (1, 32, 32, 3))[0])
        assert got[0]["box"] == got[1]["box"] and got[0]["label"] != got[1]["label"]


def test_uint8_model_decodes_as_litert(write):
    """uint8 box encodings, class scores (ties galore: 256 levels) and anchors, dequantized
    by the op; the ONNX keeps the uint8 outputs and the head their scales."""
    data = tiny_ssd(quantized=True, seed=5)
    model = load_tflite(write(data))
    head = head_of(model)
    assert set(head["output_quant"]) == {o.name for o in model.graph.output}
    total = sum(assert_same_as_litert(data, model, x) for x in inputs(6, (1, 32, 32, 3), seed=9))
    assert total >= 12


def test_labels_from_the_models_label_file(write):
    """TFLite metadata packs a label map (a zip appended to the model); its background line
    is dropped."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("labelmap.txt", "???\nhelmet\nvest\nperson\n")
    data = tiny_ssd() + buf.getvalue()
    model = load_tflite(write(data))
    assert head_of(model)["labels"] == ["helmet", "vest", "person"]
    assert_same_as_litert(data, model, inputs(1, (1, 32, 32, 3))[0], ["helmet", "vest", "person"])


# ---------------------------------------------------------------- a trained detector

@pytest.fixture(scope="module")
def face_ssd(tmp_path_factory):
    src = mediapipe_model("face_detection/face_detection_short_range.tflite")
    head = rd.parse_head({"kind": "ssd_anchors", "labels": ["face"],
                          "input": {"size": [128, 128], "range": [-1.0, 1.0]},
                          "anchors": {"strides": [8, 16, 16, 16]},
                          "boxes": {"output": "regressors"}, "scores": {"output": "classificators"}})
    data = blazeface_ssd(src.read_bytes(), rd.ssd_anchors(head["anchors"], [128, 128]))
    p = tmp_path_factory.mktemp("face_ssd") / "face_ssd.tflite"
    p.write_bytes(data)
    return p


def stretch_input(image_path, size=128) -> np.ndarray:
    """The model's input written out here: bilinear stretch, pixels to [-1, 1]."""
    img = Image.open(image_path).convert("RGB").resize((size, size), Image.BILINEAR)
    return (np.asarray(img, np.float32) / 127.5 - 1.0)[None]


def test_convert_without_head_file_then_predict_gives_litert_boxes(face_ssd, tmp_path):
    out = tmp_path / "face.onnx"
    run("convert", face_ssd, "-o", out)
    import onnx

    model = onnx.load(str(out))
    head = head_of(model)
    assert head["kind"] == "tflite_ssd" and len(head["anchors"]) == 896
    image = photo("astronaut.png")
    r = run("predict", out, image, "--json")
    dets = json.loads(r.stdout)[0]["detections"]
    ref = litert_run(face_ssd.read_bytes(), stretch_input(image))
    assert ref["count"] >= 1 and len(dets) == ref["count"]
    w0, h0 = Image.open(image).size
    for d, box, s in zip(dets, ref["boxes"], ref["scores"]):
        y1, x1, y2, x2 = box
        want = np.clip([x1 * w0, y1 * h0, x2 * w0, y2 * h0], 0, [w0, h0, w0, h0])
        np.testing.assert_allclose(d["box"], want, atol=1.0)   # input pixels differ by rounding
        assert d["score"] == pytest.approx(float(s), abs=2e-3)


def test_head_file_over_the_ops_head(face_ssd, tmp_path):
    """`convert --head` on such a model: the file names labels, input and thresholds; anchors,
    box coder and NMS options come from the op."""
    spec = {"kind": "tflite_ssd", "labels": ["face"], "min_score": 0.6,
            "input": {"size": [128, 128], "range": [-1.0, 1.0], "resize": "letterbox"}}
    (tmp_path / "head.json").write_text(json.dumps(spec))
    run("convert", face_ssd, "--head", tmp_path / "head.json", "-o", tmp_path / "face.onnx")
    import onnx

    head = head_of(onnx.load(str(tmp_path / "face.onnx")))
    assert head["labels"] == ["face"] and head["min_score"] == 0.6 and head["input"]["resize"] == "letterbox"
    assert len(head["anchors"]) == 896 and head["postprocess"]["max_detections"] == 20
    assert head["boxes"]["scale"] == [128.0, 128.0, 1.0, 1.0]
    dets = json.loads(run("predict", tmp_path / "face.onnx", photo("astronaut.png"), "--json").stdout)
    faces = dets[0]["detections"]
    assert faces and all(d["label"] == "face" and d["score"] >= 0.6 for d in faces)
    # a head file of another kind does not inherit the op's settings
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "kind": "ssd_anchors"}))
    r = run("convert", face_ssd, "--head", tmp_path / "bad.json", "-o", tmp_path / "bad.onnx", check=False)
    assert r.returncode == 2 and "head key 'boxes'" in r.stderr


def test_face_ssd_agrees_with_the_original_face_head(face_ssd):
    """The re-encoded detector's tflite_ssd head and the original model's ssd_anchors head
    find the same face: two box coders, one set of boxes."""
    from edgeloop.detect import attach_head

    x = stretch_input(photo("astronaut.png"))
    model = load_tflite(face_ssd)
    assert_same_as_litert(face_ssd.read_bytes(), model, x)
    got = edgeloop_detect(model, x)
    orig = attach_head(load_tflite(mediapipe_model("face_detection/face_detection_short_range.tflite")),
                       {"kind": "ssd_anchors", "labels": ["face"],
                        "input": {"size": [128, 128], "range": [-1.0, 1.0], "resize": "stretch"},
                        "anchors": {"strides": [8, 16, 16, 16]},
                        "boxes": {"output": "regressors"}, "scores": {"output": "classificators"},
                        "min_score": 0.5, "nms_iou": 0.3})
    want = edgeloop_detect(orig, x)
    assert len(got) == len(want) >= 1
    np.testing.assert_allclose(got[0]["box"], want[0]["box"], atol=0.02)
    assert got[0]["score"] == pytest.approx(want[0]["score"], abs=1e-4)


# ---------------------------------------------------------------- bad models

def _with_options(raw: bytes) -> bytes:
    b = Builder(tiny_ssd())
    op = b.sg.operators[-1]
    op.customOptions = list(raw)
    return b.pack()


def test_garbage_options_are_one_line(write):
    with pytest.raises(ModelLoadError, match="TFLite_Detection_PostProcess are not a flexbuffer map"):
        load_tflite(write(_with_options(b"\x01\x02\x03")))
    from flatbuffers import flexbuffers

    opts = dict(DEFAULT_OPTIONS)
    del opts["y_scale"], opts["num_classes"]
    with pytest.raises(ModelLoadError, match="options lack num_classes, y_scale"):
        load_tflite(write(_with_options(flexbuffers.Dumps(opts))))


def test_num_classes_that_do_not_fit_the_scores(write):
    from flatbuffers import flexbuffers

    data = _with_options(flexbuffers.Dumps(dict(DEFAULT_OPTIONS, num_classes=1)))
    with pytest.raises(UnsupportedOperatorError, match="num_classes is 1 but the class predictions have 4"):
        load_tflite(write(data))


def test_cli_reports_a_bad_model_in_one_line(write):
    p = write(_with_options(b"\x00"))
    r = run("convert", p, "-o", p.with_suffix(".onnx"), check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "flexbuffer" in r.stderr
    assert not p.with_suffix(".onnx").exists()
