"""Shrinking a real detector on a real detection dataset: MediaPipe's face detector on faces from
scikit-image's LFW subset pasted onto crops of its photographs (boxes known from where they were
pasted), scored in mAP through the one scorer (equal to pycocotools), the head kept through every
pass, int8's drop reported and the head kept float when int8 costs more than --max-drop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from edgeloop.data import load_dataset
from edgeloop.data.scoring import MAP_MIN_SCORE
from edgeloop.detect import Detector, attach_head, head_of
from test_detect import FACE_HEAD, coco_reference
from wheel_assets import mediapipe_model, photo

BACKS = ["coffee.png", "chelsea.png", "astronaut.png", "motorcycle_left.png", "rocket.jpg", "hubble_deep_field.jpg"]
# the face inside an LFW crop (the crop has a margin above the brows and beside the cheeks)
INSET = (0.08, 0.15, 0.92, 0.98)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def write_face_yolo(root, n_images: int = 30) -> None:
    faces = np.load(photo("lfw_subset.npy"))[:100]  # the first hundred are faces
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("face\n")
    for k in range(n_images):
        back = np.asarray(Image.open(photo(BACKS[k % len(BACKS)])).convert("RGB"))
        w, h = int(rng.integers(180, 260)), int(rng.integers(170, 230))
        y0, x0 = int(rng.integers(0, back.shape[0] - h)), int(rng.integers(0, back.shape[1] - w))
        img = back[y0:y0 + h, x0:x0 + w].copy()
        lines = []
        n_faces = 0 if k % 10 == 9 else 1 + (k % 3 == 0)
        for j in range(n_faces):
            s = int(rng.integers(50, 80)) if n_faces == 1 else int(rng.integers(45, 60))
            px = int(rng.integers(0, w // n_faces - s)) + j * (w // n_faces)
            py = int(rng.integers(0, h - s))
            face = (faces[int(rng.integers(0, 100))] * 255).astype(np.uint8)
            img[py:py + s, px:px + s] = np.asarray(Image.fromarray(face).resize((s, s), Image.BILINEAR))[:, :, None]
            x1, y1 = px + INSET[0] * s, py + INSET[1] * s
            x2, y2 = px + INSET[2] * s, py + INSET[3] * s
            lines.append(f"0 {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} {(x2 - x1) / w!r} {(y2 - y1) / h!r}")
        Image.fromarray(img).save(root / "images" / f"scene_{k:02d}.png")
        (root / "labels" / f"scene_{k:02d}.txt").write_text("".join(ln + "\n" for ln in lines))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from edgeloop.frontends import load_file

    d = tmp_path_factory.mktemp("faceshrink")
    m = load_file(str(mediapipe_model("face_detection/face_detection_short_range.tflite")))
    attach_head(m, FACE_HEAD)
    onnx.save(m, d / "face.onnx")
    write_face_yolo(d / "yolo")
    r = _cli("data", "import", d / "yolo", "-o", d / "faces", "--seed", "2")
    assert r.returncode == 0, r.stderr
    r = _cli("shrink", d / "face.onnx", "--data", d / "faces", "--metric", "map50", "--max-drop", "0.0",
             "--quick", "-o", d / "out", "--json")
    assert r.returncode in (0, 3), r.stderr
    return d, json.loads((d / "out" / "results.json").read_text())


def test_map_through_the_one_scorer_equals_pycocotools(setup):
    d, doc = setup
    ds = load_dataset(d / "faces")
    det = Detector(onnx.load(d / "face.onnx"))
    for split, value in (("validation", doc["baseline"]["metrics"]["map50"]), ("test", doc["test"]["baseline"])):
        idx = ds.split(split)
        preds = [det.detect(ds.image(i), min_score=MAP_MIN_SCORE) for i in idx]
        truths = [ds.truths(i) for i in idx]
        _, ap50 = coco_reference(preds, truths, ["face"])
        assert value == pytest.approx(ap50, abs=1e-4), split
    assert doc["metric"] == "map50"
    assert doc["baseline"]["metrics"]["map50"] > 0.6  # the detector finds the pasted faces
    assert doc["test"]["samples"] == len(ds.split("test"))


def test_int8_drop_reported_head_kept_float_and_carried(setup):
    d, doc = setup
    rep = doc["int8_drop"]
    base = doc["baseline"]["metrics"]["map50"]
    int8 = next(c for c in doc["candidates"] if c["id"] == rep["int8_candidate"])
    assert rep["float"] == base and rep["int8"] == int8["metrics"]["map50"]
    assert rep["drop"] == pytest.approx(base - int8["metrics"]["map50"])
    assert int8["metrics"]["drop"] == pytest.approx(rep["drop"])
    from edgeloop.passes.mixed import head_layers

    model = onnx.load(d / "face.onnx")
    head = head_layers(model)
    kinds = {n.name: n.op_type for n in model.graph.node}
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert [h for h in head if kinds[h] == "Conv"] == [f"op{i}_CONV_2D/Conv#node" for i in (148, 151, 154, 157)]
    assert {producers[o.name] for o in model.graph.output} <= set(head)  # up to the outputs
    assert rep["head_layers"] == head
    if rep["drop"] > 0:  # int8 costs more than --max-drop 0: the head stays float
        assert rep["mixed_tried"] and rep["mixed"]
        assert rep["mixed"][0]["float_layers"] == head
        mixed = next(c for c in doc["candidates"] if c["id"] == rep["mixed"][0]["id"])
        assert mixed["passes"][-1]["pass"] == "mixed_precision"
        # on these faces int8 loses its score outputs' precision; the float head wins it back
        assert rep["mixed"][0]["map50"] > rep["int8"]
    else:
        assert not rep["mixed_tried"]
    html = (d / "out" / "report.html").read_text()
    assert "int8 for this detector" in html and f"{rep['drop']:.4f}" in html
    # every candidate that ran decoded boxes with the original head
    ran = [c for c in doc["candidates"] if c["error"] is None]
    assert len(ran) >= 3 and all("map50" in c["metrics"] for c in ran)
    if (d / "out" / "model.onnx").is_file():
        small = onnx.load(d / "out" / "model.onnx")
        assert head_of(small)["kind"] == "ssd_anchors"
        got = json.loads(_cli("predict", d / "out" / "model.onnx", photo("astronaut.png"), "--json").stdout)
        assert got[0]["detections"] and got[0]["detections"][0]["label"] == "face"


def test_detection_metric_needs_detection_data(setup, tmp_path):
    d, _ = setup
    r = _cli("shrink", d / "face.onnx", "--data", d / "faces", "--metric", "accuracy", "-o", tmp_path / "o")
    assert r.returncode == 2 and "map50" in r.stderr and "Traceback" not in r.stderr
    np.savez(tmp_path / "t.npz", x=np.zeros((40, 4), np.float32), y=np.arange(40) % 2)
    r = _cli("shrink", d / "face.onnx", "--data", tmp_path / "t.npz", "--metric", "map50", "-o", tmp_path / "o")
    assert r.returncode == 2 and "detection dataset" in r.stderr and "Traceback" not in r.stderr


def test_shrink_reads_a_yolo_folder_directly(setup):
    """issue 11: a YOLO folder given to shrink is imported on the fly, to the same splits."""
    from edgeloop.commands.shrink import _detection_splits

    d, doc = setup
    model = onnx.load(d / "face.onnx")
    direct = _detection_splits(model, str(d / "yolo"), None)
    assert direct.metric == "map50" and direct.task == "detection"
    again = _detection_splits(model, str(d / "faces"), "map50")
    # the folder was imported with --seed 2, the direct read with the default seed: same images, own split
    assert sum(direct.sizes().values()) == sum(again.sizes().values()) == 30
    assert doc["splits"]["validation"] == again.sizes()["validation"]
