"""improve for detectors: a small FOMO model edgeloop trained on digits pasted on two photographs is
served, captures frames of two other photographs, a person labels them (the labels go into the
capture store as `edgeloop label` puts them), `samples export` writes YOLO, and `improve` fine-tunes
on those plus the original data: the new version finds more on frames neither model saw, and the
server reloads it and rolls back."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest

from test_detect_train import make_detection_folder
from test_serve_fixtures import PY, admin_headers


def run(*args, check=True):
    r = subprocess.run([PY, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A FOMO detector trained 20 epochs on 60 64x64 images (seconds), exported for a Raspberry Pi."""
    d = tmp_path_factory.mktemp("improve_detect")
    ds = make_detection_folder(d / "ds", n_images=60, size=64, scale=(2, 2), photos=("astronaut.png", "chelsea.png"))
    run("train", ds, "--candidates", "fomo", "--size", "64x64", "--epochs", 20, "-o", d / "det.onnx")
    run("export", d / "det.onnx", "--target", "raspberry-pi-4", "-o", d / "v1")
    # what the device sees later: the same objects on other photographs
    seen = make_detection_folder(d / "seen", n_images=60, size=64, scale=(2, 2), seed=3,
                                 photos=("coffee.png", "camera.png"))
    return d, ds, seen


def _client(bundle, **kw):
    from starlette.testclient import TestClient

    from edgeloop.runtime.server import ServerConfig, create_app

    return TestClient(create_app(ServerConfig(bundle=str(bundle), **kw)), client=("127.0.0.1", 50000))


def _png(path) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def test_improve_fine_tunes_a_fomo_detector_on_labelled_captures(detector, tmp_path):
    from edgeloop.data.store import load_dataset
    from edgeloop.detect.metrics import centroid_f1
    from edgeloop.runtime.capture import CapturePolicy, CaptureStore

    d, ds_path, seen_path = detector
    v1 = d / "v1"
    seen = load_dataset(seen_path)
    store = tmp_path / "cap.db"
    policy = CapturePolicy(random_rate=1.0, max_per_minute=None, score_band_low=None, score_band_high=None,
                           overlap_iou=None)
    # reload takes bundles under --bundles-dir: the module's and this test's folders share a parent
    c = _client(v1, capture=str(store), policy=policy, bundles_dir=str(tmp_path.parent))
    truth = {}
    for i, rec in enumerate(seen.records):
        r = c.post("/predict", content=_png(seen_path / rec["file"]), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        truth[r.json()["captured"]] = seen.truths(i)
    assert None not in truth and len(truth) == 60
    with CaptureStore(store) as st:  # a person labels every frame (what `edgeloop label` stores)
        for rid, boxes in truth.items():
            st.set_label(rid, "corrected", boxes=boxes)
    labelled = tmp_path / "labelled"
    run("samples", "export", store, "-o", labelled)
    v2 = tmp_path / "v2"
    r = run("improve", "--bundle", v1, "--data", labelled, "--base-data", ds_path, "-o", v2, "--epochs", 12, "--json")
    comp = json.loads(r.stdout)
    assert comp["metric"] == "centroid_f1" and comp["method"] == "fine-tune"
    assert (comp["old_version"], comp["new_version"]) == (1, 2)
    base = load_dataset(ds_path)
    assert comp["holdout_new"]["n"] == 15 and comp["holdout_base"]["n"] == len(base.split("test"))
    assert comp["trained_on"] == 45 + len(base.split("train"))
    # fine-tuned on the captures, the new version finds more on captures it never saw
    assert comp["holdout_new"]["new"] > comp["holdout_new"]["old"] + 0.05
    m = json.loads((v2 / "manifest.json").read_text())
    assert m["version"] == 2 and m["provenance"]["parent"]["version"] == 1
    assert m["provenance"]["improve"]["comparison"] == comp and m["head"]["kind"] == "centroids"
    assert m["provenance"]["source_file"] == "source/det.pt2"
    assert (v2 / "source" / "det.pt2").read_bytes() != (v1 / "source" / "det.pt2").read_bytes()
    # the base comparison, measured again here through the server's own /predict
    auth = admin_headers(c)
    for version, bundle in ((1, v1), (2, v2)):
        if version == 2:
            r = c.post("/admin/reload", json={"bundle": str(v2)}, headers=auth)
            assert r.json().get("version") == 2, r.text
        preds = [c.post("/predict", content=_png(ds_path / base.records[i]["file"]),
                        headers={"Content-Type": "image/png"}).json()["detections"] for i in base.split("test")]
        f1 = centroid_f1(preds, [base.truths(i) for i in base.split("test")])["f1"]
        assert f1 == pytest.approx(comp["holdout_base"]["old" if version == 1 else "new"])
    assert c.post("/admin/rollback", json={}, headers=auth).json()["version"] == 1
    # the int8 replay: the new model is quantized as the trainer's was
    import onnx

    ops = {n.op_type for n in onnx.load(v2 / "model.onnx").graph.node}
    assert "QuantizeLinear" in ops or "QLinearConv" in ops


def test_improve_refuses_a_detector_edgeloop_did_not_train(detector, tmp_path):
    import onnx

    d, ds_path, seen_path = detector
    m = onnx.load(d / "det.onnx")
    keep = [p for p in m.metadata_props if not p.key.endswith(("trainer", "source", "source_format"))]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    onnx.save(m, tmp_path / "imported.onnx")
    run("export", tmp_path / "imported.onnx", "--target", "raspberry-pi-4", "-o", tmp_path / "b")
    r = run("improve", "--bundle", tmp_path / "b", "--data", seen_path, "-o", tmp_path / "b2", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "not trained by edgeloop" in r.stderr and "head-only refit" in r.stderr
    assert not (tmp_path / "b2").exists()


def test_improve_detector_bad_labelled_data_is_one_line(detector, tmp_path):
    d, ds_path, seen_path = detector
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    (yolo / "images" / "a.png").write_bytes(_png(seen_path / "images" / "0000.png"))
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "classes.txt").write_text("cat\n")
    r = run("improve", "--bundle", d / "v1", "--data", yolo, "-o", tmp_path / "v2", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'cat' is not one of the detector's classes" in r.stderr
    r = run("improve", "--bundle", d / "v1", "--data", tmp_path / "nothing", "-o", tmp_path / "v2", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "expected labelled detections" in r.stderr
