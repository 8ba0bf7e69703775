"""Shrink without labels (--metric agreement|fidelity), hybrid TFLite graphs, compact shipped files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from torch_train import fit  # noqa: E402


def _cli(*args: str) -> int:
    from edgeloop.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory):
    """A small trained digits CNN (NCHW 1x8x8), the digits, and a flat folder of 400 of them as PNGs."""
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    import edgeloop
    from edgeloop.graph import save

    d = tmp_path_factory.mktemp("unlabelled")
    x, y = load_digits(return_X_y=True)
    x = (np.round(x / 16.0 * 255) / 255).astype(np.float32)  # exactly representable as 8-bit PNG pixels
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(512, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    xt, yt = torch.tensor(x[:900].reshape(-1, 1, 8, 8)), torch.tensor(y[:900])
    fit(net, xt, yt, epochs=8)
    model = edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8))
    save(model, d / "cnn.onnx")
    folder = d / "images"
    folder.mkdir()
    for i in range(400):  # no labels, no class subfolders
        Image.fromarray(np.round(x[i].reshape(8, 8) * 255).astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    np.save(d / "inputs.npy", x[:400])
    return d, model, x


def _chosen(out) -> onnx.ModelProto:
    return onnx.load(str(out / "model.onnx"))


def test_unlabelled_image_folder_is_read_as_the_model_input_says(digits_cnn):
    from edgeloop.data.readers import read_unlabelled
    from edgeloop.search.unlabelled import image_spec

    d, model, x = digits_cnn
    spec = image_spec(model)
    assert spec == {"layout": "NCHW", "size": [8, 8], "channels": 1, "range": [0.0, 1.0]}
    raw = read_unlabelled(d / "images", spec)
    assert raw.x.shape == (400, 1, 8, 8)
    np.testing.assert_allclose(raw.x.reshape(400, -1), x[:400], atol=1e-6)


def test_image_spec_follows_nhwc_layout_and_the_recorded_range(tmp_path):
    from PIL import Image
    from onnx import TensorProto, helper

    from edgeloop.data.readers import read_unlabelled
    from edgeloop.graph import set_metadata
    from edgeloop.search.unlabelled import image_spec

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 3])])
    m = helper.make_model(g)
    set_metadata(m, input_range=[-1.0, 1.0])
    spec = image_spec(m)
    assert spec["layout"] == "NHWC" and spec["size"] == [16, 12] and spec["range"] == [-1.0, 1.0]
    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 128)).save(tmp_path / "a" / "one.jpg", quality=100)
    Image.new("RGB", (12, 16), (0, 255, 0)).save(tmp_path / "two.png")
    raw = read_unlabelled(tmp_path, spec)
    assert raw.x.shape == (2, 16, 12, 3)
    assert raw.x.min() == pytest.approx(-1.0, abs=0.02) and raw.x.max() == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(raw.x[1, 0, 0], [-1.0, 1.0, -1.0], atol=1e-6)  # two.png: pure green


def test_shrink_on_an_unlabelled_folder_keeps_agreement_on_unseen_inputs(digits_cnn, tmp_path):
    from edgeloop.search.unlabelled import evaluate_unlabelled, top1

    d, model, x = digits_cnn
    out = tmp_path / "out"
    assert _cli("shrink", str(d / "cnn.onnx"), "--data", str(d / "images"), "--metric", "agreement",
                "--max-drop", "0.01", "-o", str(out), "--quick") == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["metric"] == "agreement" and doc["baseline"]["metrics"]["agreement"] == 1.0
    assert doc["test"]["split"] == "test" and doc["test"]["samples"] > 0
    chosen = _chosen(out)
    assert len(chosen.SerializeToString()) < len(model.SerializeToString()) / 2
    unseen = x[1000:1400]  # never in the folder
    assert evaluate_unlabelled(chosen, unseen, top1(model, unseen), "agreement") >= 0.97


def test_shrink_on_an_unlabelled_npy_with_fidelity(digits_cnn, tmp_path):
    from edgeloop.search.unlabelled import evaluate_unlabelled, outputs_flat

    d, model, x = digits_cnn
    out = tmp_path / "out"
    assert _cli("shrink", str(d / "cnn.onnx"), "--data", str(d / "inputs.npy"), "--metric", "fidelity",
                "--max-drop", "0.05", "-o", str(out), "--quick") == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["higher_is_better"] is False and doc["baseline"]["metrics"]["fidelity"] == 0.0
    chosen = _chosen(out)
    assert len(chosen.SerializeToString()) < len(model.SerializeToString()) / 2
    unseen = x[1000:1400]
    err = evaluate_unlabelled(chosen, unseen, outputs_flat(model, unseen), "fidelity")
    assert 0 < err <= 0.08


def test_unlabelled_csv_and_bad_sources(tmp_path):
    from edgeloop.data.readers import DataError, read_unlabelled

    (tmp_path / "f.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    raw = read_unlabelled(tmp_path / "f.csv")
    np.testing.assert_array_equal(raw.x, [[1, 2, 3], [4, 5, 6]])
    (tmp_path / "n.csv").write_text("1,2\n3,x\n")
    with pytest.raises(DataError, match="row 2: column 2 is not a number"):
        read_unlabelled(tmp_path / "n.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        read_unlabelled(tmp_path / "empty")


def test_shrink_agreement_on_an_empty_folder_is_one_line_exit_2(digits_cnn, tmp_path, capsys):
    d, _, _ = digits_cnn
    (tmp_path / "none").mkdir()
    assert _cli("shrink", str(d / "cnn.onnx"), "--data", str(tmp_path / "none"), "--metric", "agreement",
                "-o", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no images" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def kws(mlperf_dir):
    from edgeloop.frontends import load_file

    path = mlperf_dir / "kws_ref_model_float32.tflite"
    if not path.is_file():
        pytest.skip("MLPerf Tiny KWS model not available")
    model = load_file(str(path))
    x = (np.random.default_rng(0).normal(size=(64, 49, 10, 1)) * 20).astype(np.float32)
    return model, x


def test_int8_on_a_tflite_dynamic_range_model(kws):
    from edgeloop.passes import Int8Dynamic, Int8Static, PassData, apply_pass
    from edgeloop.search.unlabelled import evaluate_unlabelled, outputs_flat

    model, x = kws
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)  # int8 weights, float compute
    ref = outputs_flat(model, x)
    dyn = apply_pass(model, Int8Dynamic(), None)
    assert evaluate_unlabelled(dyn, x, ref, "fidelity") < 0.05
    st = apply_pass(model, Int8Static(), PassData(x_calib=x[:32]))
    assert evaluate_unlabelled(st, x, ref, "fidelity") < 0.2


def test_shipped_file_has_short_names_and_no_value_info(kws):
    from edgeloop.passes import Int8Static, PassData, apply_pass

    model, x = kws
    q = apply_pass(model, Int8Static(), PassData(x_calib=x[:32]))
    interface = {i.name for i in q.graph.input} | {o.name for o in q.graph.output}
    names = [t for n in q.graph.node for t in list(n.input) + list(n.output)] + [n.name for n in q.graph.node]
    assert max(len(t) for t in names if t not in interface) <= 6
    assert len(q.graph.value_info) == 0
    assert len(q.SerializeToString()) < 0.8 * len(model.SerializeToString())
    from edgeloop.graph import session

    session(q).run(None, {q.graph.input[0].name: x[:1]})


def test_sklearn_mlp_onnx_shrinks_at_least_3_5x(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    from edgeloop.frontends import load_file
    from edgeloop.graph import save, set_metadata

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(100,), max_iter=300, random_state=0).fit(x[:1200], y[:1200])
    import joblib

    joblib.dump(clf, tmp_path / "mlp.joblib")
    m = load_file(str(tmp_path / "mlp.joblib"), trust_pickle=True)
    set_metadata(m, source=None)  # the ONNX alone: no refits of the source to fall back on
    save(m, tmp_path / "mlp.onnx")
    (tmp_path / "mlp.joblib").unlink()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "out"
    assert _cli("shrink", str(tmp_path / "mlp.onnx"), "--data", str(tmp_path / "d.npz"), "--max-drop", "0.01",
                "-o", str(out), "--quick") == 0
    ratio = (tmp_path / "mlp.onnx").stat().st_size / (out / "model.onnx").stat().st_size
    assert ratio >= 3.5, ratio


# ----- detectors: --metric agreement is box agreement with the float model at IoU 0.5 -----------

def _det(box, label="face", score=0.9):
    return {"box": list(map(float, box)), "label": label, "score": score}


def test_box_agreement_matches_boxes_at_iou_half():
    from edgeloop.search.unlabelled import box_agreement

    ref = [[_det((10, 10, 50, 50)), _det((60, 60, 100, 100))], [], [_det((0, 0, 20, 20))]]
    assert box_agreement(ref, ref) == 1.0
    # a box shifted to IoU 0.8 still agrees; one shifted to IoU ~0.33 does not; an empty image is no evidence
    moved = [[_det((14, 10, 54, 50)), _det((80, 60, 120, 100))], [], [_det((0, 0, 20, 20))]]
    assert box_agreement(moved, ref) == pytest.approx(2 * 2 / 6)
    # a missed box and an extra box both count against it; so does a wrong label
    assert box_agreement([[_det((10, 10, 50, 50))], [_det((1, 1, 9, 9))], [_det((0, 0, 20, 20), "cat")]],
                         ref) == pytest.approx(2 * 1 / 6)
    assert box_agreement([[], [], []], [[], [], []]) == 1.0


def test_detector_agreement_against_its_float_self():
    """MediaPipe's face detector on photo crops, no labels: the float model agrees with itself (1.0),
    its int8 (min-max) is scored by boxes, and the splits say detection."""
    from PIL import Image

    from edgeloop.data.readers import _unlabelled_arrays
    from edgeloop.detect import attach_head
    from edgeloop.frontends import load_file
    from edgeloop.passes import Int8Static, PassData, apply_pass
    from edgeloop.search.unlabelled import evaluate_unlabelled, unlabelled_splits
    from test_detect import FACE_HEAD
    from wheel_assets import mediapipe_model, photo

    m = load_file(str(mediapipe_model("face_detection/face_detection_short_range.tflite")))
    attach_head(m, FACE_HEAD)
    faces = np.load(photo("lfw_subset.npy"))[:60]
    x = np.stack([np.repeat(np.asarray(Image.fromarray((f * 255).astype(np.uint8)).resize((128, 128)),
                                       np.float32)[:, :, None], 3, axis=2) / 127.5 - 1.0 for f in faces])
    sp = unlabelled_splits(m, _unlabelled_arrays(x, None, "faces"), "agreement")
    assert sp.task == "detection"
    xv, yv = sp["validation"]
    assert sum(len(d) for d in yv) > 0  # the float model finds faces: there is something to agree on
    assert evaluate_unlabelled(m, xv, yv, "agreement") == 1.0
    q = apply_pass(m, Int8Static(), PassData(x_calib=sp.x_calib))
    got = evaluate_unlabelled(q, xv, yv, "agreement")
    assert 0.0 <= got <= 1.0
