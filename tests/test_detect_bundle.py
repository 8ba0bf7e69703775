"""Detector bundles: a real MediaPipe face detector exported for a Raspberry Pi, served by the
bundle's own runtime; its boxes must equal `edgeloop predict`'s on the same images."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from test_serve_fixtures import PY, http, server
from wheel_assets import face_detector, photo


def run(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


@pytest.fixture(scope="module")
def face_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("face_bundle")
    face_detector(d)
    run("export", d / "face.onnx", "--target", "raspberry-pi-4", "-o", d / "bundle")
    return d


def _client(bundle, **kw):
    from starlette.testclient import TestClient

    from edgeloop.runtime.server import ServerConfig, create_app

    return TestClient(create_app(ServerConfig(bundle=str(bundle), **kw)))


def _jpeg(tmp_path, name="astronaut.png"):
    out = tmp_path / (name.rsplit(".", 1)[0] + ".jpg")
    Image.open(photo(name)).convert("RGB").save(out, format="JPEG", quality=90)
    return out


def test_manifest_carries_the_head_and_requirements_stay_minimal(face_bundle):
    b = face_bundle / "bundle"
    m = json.loads((b / "manifest.json").read_text())
    assert m["task"] == "detection" and m["preprocessing"] == {"type": "detection"}
    assert m["head"]["kind"] == "ssd_anchors" and m["head"]["labels"] == ["face"]
    assert m["head"]["boxes"]["output"] == "regressors"
    assert (b / "edgeloop_runtime" / "detect.py").is_file() and "edgeloop_runtime/detect.py" in m["files"]
    reqs = {ln.split("==")[0].lower() for ln in (b / "requirements.txt").read_text().splitlines()
            if ln and not ln.startswith(("#", "--"))}
    assert reqs == {"onnxruntime", "numpy", "pillow", "python-multipart", "starlette", "uvicorn"}


def test_manifest_validator_knows_the_head(face_bundle, tmp_path):
    from edgeloop.runtime.bundle import BundleError, validate_manifest

    m = json.loads((face_bundle / "bundle" / "manifest.json").read_text())
    validate_manifest(m, "manifest.json")
    bad = json.loads(json.dumps(m))
    bad["head"]["kind"] = "rcnn"
    with pytest.raises(BundleError, match="head.kind"):
        validate_manifest(bad, "manifest.json")
    bad = json.loads(json.dumps(m))
    bad["head"]["scores"]["output"] = "logits"
    with pytest.raises(BundleError, match="head.scores.output"):
        validate_manifest(bad, "manifest.json")
    bad = json.loads(json.dumps(m))
    del bad["head"]
    with pytest.raises(BundleError, match="'head' is needed"):
        validate_manifest(bad, "manifest.json")


def test_bundle_boxes_equal_predict_for_png_jpeg_and_multipart(face_bundle, tmp_path):
    b = face_bundle / "bundle"
    jpg = _jpeg(tmp_path)
    images = [photo("astronaut.png"), photo("coffee.png"), jpg]
    want = json.loads(run("predict", b, *images, "--json").stdout)
    also = json.loads(run("predict", face_bundle / "face.onnx", *images, "--json").stdout)
    assert [w["detections"] for w in want] == [a["detections"] for a in also]
    assert len(want[0]["detections"]) == 1 and want[1]["detections"] == []
    with server(b) as s:
        got = []
        for path, ctype in zip(images, ("image/png", "image/png", "image/jpeg")):
            status, body = http("POST", s.url + "/predict", path.read_bytes(), ctype=ctype)
            assert status == 200, body
            doc = json.loads(body)
            assert set(doc) == {"model", "version", "detections"} and doc["model"] == "face"
            got.append(doc["detections"])
        assert got == [w["detections"] for w in want]
        # multipart, field 'file'
        boundary = "edgeloopboundary"
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + jpg.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        status, body = http("POST", s.url + "/predict", data, ctype=f"multipart/form-data; boundary={boundary}")
        assert status == 200, body
        assert json.loads(body)["detections"] == want[2]["detections"]
        # the server's /health says which execution providers run the model
        status, body = http("GET", s.url + "/health")
        assert json.loads(body)["providers"] == ["CPUExecutionProvider"]


def test_non_image_bodies_are_415_and_json_tensors_still_work(face_bundle):
    with _client(face_bundle / "bundle") as c:
        r = c.post("/predict", content=b"hello", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and "Content-Type" in r.json()["error"]
        r = c.post("/predict", content=b"not a png", headers={"Content-Type": "image/png"})
        assert r.status_code == 415 and "not a decodable image" in r.json()["error"]
        img = Image.open(photo("astronaut.png")).convert("RGB").resize((128, 128))
        x = (np.asarray(img, np.float32) / 127.5 - 1.0)[None]
        r = c.post("/predict", json={"inputs": x.tolist()})
        assert r.status_code == 200
        doc = r.json()
        assert np.asarray(doc["outputs"]["regressors"]).shape == (1, 896, 16)
        assert len(doc["detections"]) == 1 and doc["detections"][0]["label"] == "face"


def _nan_detector(tmp_path):
    """A yolov8-style graph whose outputs are 0/0: NaN whatever the image."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 32])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 6, 32])
    nodes = [helper.make_node("Sub", ["images", "images"], ["zero"]),
             helper.make_node("Div", ["zero", "zero"], ["nan"]),
             helper.make_node("Reshape", ["nan", "shape"], ["output0"])]
    g = helper.make_graph(nodes, "nan", [x], [y], [shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "nan.onnx")
    (tmp_path / "head.json").write_text(json.dumps({
        "kind": "yolov8", "labels": ["a", "b"],
        "input": {"layout": "NCHW", "size": [8, 8], "range": [0.0, 1.0], "resize": "letterbox"}}))
    run("convert", tmp_path / "nan.onnx", "--head", tmp_path / "head.json", "-o", tmp_path / "nanhead.onnx")
    run("export", tmp_path / "nanhead.onnx", "--target", "raspberry-pi-4", "-o", tmp_path / "nanbundle")
    return tmp_path / "nanbundle"


def test_nan_outputs_answer_an_error_not_a_500(tmp_path):
    b = _nan_detector(tmp_path)
    png = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 20, 30)).save(png, format="PNG")
    with _client(b) as c:
        r = c.post("/predict", content=png.getvalue(), headers={"Content-Type": "image/png"})
        assert 400 <= r.status_code < 500
        assert "NaN" in r.json()["error"] and "output0" in r.json()["error"]


def test_uncertain_frames_are_captured_with_their_boxes(face_bundle, tmp_path):
    b = face_bundle / "bundle"
    store = tmp_path / "cap" / "captures.db"
    want = json.loads(run("predict", b, photo("astronaut.png"), "--json").stdout)[0]["detections"]
    best = want[0]["score"]
    assert best > 0.6  # a clear face: outside the default band
    common = ["--capture", str(store), "--random-rate", "0", "--max-captures-per-minute", "0"]
    # a band around the face's score keeps the astronaut; the coffee cup (no face) has no score in it
    with server(b, *common, "--score-band-low", str(round(best - 0.05, 3)),
                "--score-band-high", str(round(min(best + 0.05, 1.0), 3))) as s:
        png = photo("astronaut.png").read_bytes()
        status, body = http("POST", s.url + "/predict", png, ctype="image/png")
        doc = json.loads(body)
        assert status == 200 and isinstance(doc["captured"], int)
        status, body = http("POST", s.url + "/predict", photo("coffee.png").read_bytes(), ctype="image/png")
        assert json.loads(body)["captured"] is None
    listed = json.loads(run("samples", "list", store, "--json").stdout)
    assert len(listed) == 1
    row = listed[0]
    assert row["reason"] == "uncertain_score" and row["has_input"] and row["dtype"] == "image/png"
    assert row["detections"] == want and row["confidence"] == pytest.approx(best)
    table = run("samples", "list", store).stdout
    assert "1 boxes: face" in table and "uncertain_score" in table
    from edgeloop.runtime.capture import CaptureStore

    with CaptureStore(store, budget_bytes=2**62, readonly=True) as st:
        (full,) = list(st.rows(with_input=True))
    assert full["input"] == png  # the frame exactly as uploaded
    out = tmp_path / "exported"
    run("samples", "export", store, "-o", out)
    index = json.loads((out / "detections.json").read_text())
    assert index[0]["detections"] == want and (out / index[0]["image"]).read_bytes() == png
    # the default band (0.3-0.6) does not keep a clear face
    store2 = tmp_path / "cap2" / "captures.db"
    with _client(b, capture=str(store2), policy=_policy(random_rate=0.0)) as c:
        r = c.post("/predict", content=png, headers={"Content-Type": "image/png"})
        assert r.json()["captured"] is None


def _policy(**kw):
    from edgeloop.runtime.capture import CapturePolicy

    return CapturePolicy(max_per_minute=None, **kw)


def test_boxes_of_different_classes_overlapping_make_a_frame_uncertain():
    from edgeloop.runtime.capture import CapturePolicy, classes_overlap

    a = {"box": [0, 0, 10, 10], "score": 0.9, "label": "helmet"}
    b = {"box": [1, 1, 10, 10], "score": 0.8, "label": "head"}
    c = {"box": [50, 50, 60, 60], "score": 0.8, "label": "head"}
    assert classes_overlap([a, b], 0.5)
    assert not classes_overlap([a, c], 0.5)
    assert not classes_overlap([a, dict(b, label="helmet")], 0.5)  # same class: NMS's business
    pol = CapturePolicy(random_rate=0.0)
    assert pol.detection_reason(0.9, True) == "class_overlap"
    assert pol.detection_reason(0.45, False) == "uncertain_score"
    assert pol.detection_reason(0.9, False) is None and pol.detection_reason(None, False) is None


def test_jetson_detector_bundle_is_small_and_says_when_it_runs_on_the_cpu(face_bundle, tmp_path):
    out = tmp_path / "jetson"
    run("export", face_bundle / "face.onnx", "--target", "jetson-orin-nano", "-o", out)
    docker = (out / "Dockerfile").read_text()
    assert "l4t-jetpack" not in docker and "FROM nvcr.io/nvidia/l4t-cuda" in docker
    readme = (out / "README.md").read_text()
    assert "Image size: the base image `nvcr.io/nvidia/l4t-cuda:12.6.11-runtime` is about" in readme
    reqs = (out / "requirements.txt").read_text()
    pkgs = {ln.split("==")[0] for ln in reqs.splitlines() if ln and not ln.startswith(("#", "--"))}
    assert pkgs == {"onnxruntime-gpu", "numpy", "pillow", "python-multipart", "starlette", "uvicorn"}
    with _client(out) as c:  # this host has no GPU: CPU, and /health says so
        h = c.get("/health").json()
        assert h["providers"] == ["CPUExecutionProvider"]
        assert "running on the CPU" in h["providers_note"]
        r = c.post("/predict", content=photo("astronaut.png").read_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and len(r.json()["detections"]) == 1


def test_a_store_from_before_frame_capture_still_opens_and_takes_frames(tmp_path):
    """Stores written by earlier versions have no 'detections' column: read-only opens still list
    them, and a writable open adds the column without losing a sample."""
    import sqlite3

    from edgeloop.runtime.capture import SCHEMA, CaptureStore

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA.replace(",\n    detections TEXT", ""))
    con.execute("INSERT INTO samples (created, reason, score, dtype, shape, nbytes) "
                "VALUES (1.0, 'low_confidence', 0.5, 'float32', '[64]', 256)")
    con.commit()
    con.close()
    with CaptureStore(path, budget_bytes=2**62, readonly=True) as st:
        (row,) = list(st.rows())
        assert row["reason"] == "low_confidence" and row["detections"] is None
    with CaptureStore(path, budget_bytes=2**30) as st:
        dets = [{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.4, "label": "face"}]
        rid = st.add(np.zeros((1, 3, 8, 8), np.float32), reason="uncertain_score", detections=dets,
                     image=b"\x89PNG...", media_type="image/png", confidence=0.4)
        rows = {r["id"]: r for r in st.rows(with_input=True)}
    assert len(rows) == 2 and rows[rid]["detections"] == dets and rows[rid]["input"] == b"\x89PNG..."


def test_ultralytics_export_bundles_without_a_head_file_and_flags_class_overlap(tmp_path):
    """An ONNX with Ultralytics' metadata is a detector with no head file: the bundle carries the
    head it implies, its boxes equal predict's, and overlapping boxes of different classes make
    the frame worth capturing."""
    from test_detect import yolo_graph

    m, _ = yolo_graph(nc=3, n=60, seed=1)
    onnx.save(m, tmp_path / "yolo.onnx")
    run("export", tmp_path / "yolo.onnx", "--target", "raspberry-pi-5", "-o", tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["head"]["kind"] == "yolov8" and manifest["labels"] == ["class0", "class1", "class2"]
    img = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(img)
    want = json.loads(run("predict", tmp_path / "yolo.onnx", img, "--json").stdout)[0]["detections"]
    assert len(want) > 3
    from edgeloop.runtime.capture import classes_overlap

    assert classes_overlap(want, 0.5) or classes_overlap(want, 0.1)
    iou = 0.5 if classes_overlap(want, 0.5) else 0.1
    store = tmp_path / "cap" / "c.db"
    with _client(tmp_path / "b", capture=str(store),
                 policy=_policy(random_rate=0.0, score_band_low=None, score_band_high=None, overlap_iou=iou)) as c:
        r = c.post("/predict", content=img.read_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["detections"] == want
        assert isinstance(r.json()["captured"], int)
    listed = json.loads(run("samples", "list", store, "--json").stdout)
    assert [x["reason"] for x in listed] == ["class_overlap"] and listed[0]["detections"] == want
