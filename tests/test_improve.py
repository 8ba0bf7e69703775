"""improve: retrain from the bundle's source on labelled captures, replay the shrink recipe, write v+1."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np

from test_serve_fixtures import PY, cnn_pt2, digits, digits_joblib, export_bundle


def _npz(path, x, y):
    np.savez(path, x=np.asarray(x, dtype=np.float32), y=np.asarray(y))
    return path


def test_sklearn_refit_from_labelled_captures(tmp_path, tmp_path_factory):
    """A model trained on 60 digits, improved with captured + labelled ones, gets better on held-out data."""
    from starlette.testclient import TestClient

    from edgeloop.runtime.capture import CapturePolicy
    from edgeloop.runtime.model import BundleModel
    from edgeloop.runtime.server import ServerConfig, create_app

    x_tr, x_te, y_tr, y_te = digits()
    src = digits_joblib(tmp_path_factory, n_train=60)
    v1 = export_bundle(src, "raspberry-pi-4", tmp_path / "v1")
    # the device captures everything it sees (random baseline 1.0), a person labels the export
    store = tmp_path / "cap.db"
    policy = CapturePolicy(confidence_below=None, margin_below=None, entropy_above=None, random_rate=1.0,
                           max_per_minute=None)
    c = TestClient(create_app(ServerConfig(bundle=str(v1), capture=str(store), policy=policy)),
                   client=("127.0.0.1", 50000))
    seen = x_tr[60:660]
    truth = {}
    for i in range(0, len(seen), 100):
        ids = c.post("/predict", json={"inputs": seen[i:i + 100].tolist()}).json()["captured"]
        truth.update({rid: int(y) for rid, y in zip(ids, y_tr[60 + i:60 + i + 100])})
    out = tmp_path / "labelled"
    r = subprocess.run([PY, "-m", "edgeloop", "samples", "export", str(store), "-o", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "samples.csv")))
    for row in rows:
        row["label"] = str(truth[int(row["id"])])
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    base = _npz(tmp_path / "base.npz", x_tr[:60], y_tr[:60])
    v2 = tmp_path / "v2"
    r = subprocess.run([PY, "-m", "edgeloop", "improve", "--bundle", str(v1), "--data", str(out), "--base-data",
                        str(base), "-o", str(v2), "--json", "--trust-pickle"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)
    assert comp["method"] == "refit" and comp["new_version"] == 2 and abs(comp["holdout_new"]["n"] - 150) <= 5
    assert comp["holdout_new"]["new"] > comp["holdout_new"]["old"] + 0.03
    m = json.loads((v2 / "manifest.json").read_text())
    assert m["version"] == 2 and m["provenance"]["parent"]["version"] == 1
    assert m["provenance"]["improve"]["comparison"] == comp
    assert m["labels"] == list(range(10))
    # the comparison is true on data neither model trained on
    old, new = BundleModel(v1), BundleModel(v2)
    acc_old = np.mean(np.asarray(old.predict(x_te)["label"]) == y_te)
    acc_new = np.mean(np.asarray(new.predict(x_te)["label"]) == y_te)
    assert acc_new > acc_old + 0.03
    # the refitted source travels in the new bundle, and the server switches to it
    import joblib

    est2 = joblib.load(v2 / m["provenance"]["source_file"])
    assert new.predict(x_te)["label"] == est2.predict(x_te).tolist()
    auth = {"Authorization": "Bearer " + c.app.state.admin_token}  # the token the server made at start
    r = c.post("/admin/reload", json={"bundle": str(v2)}, headers=auth)
    assert r.json()["version"] == 2
    assert c.post("/predict", json={"inputs": x_te[:5].tolist()}).json()["label"] == est2.predict(x_te[:5]).tolist()
    assert c.post("/admin/rollback", json={}, headers=auth).json()["version"] == 1


def test_torch_finetune_replays_the_int8_recipe(tmp_path, tmp_path_factory):
    """A weak CNN, shrunk with int8_static, is fine-tuned from its .pt2 and quantized again."""
    import onnx

    from edgeloop.frontends import load_file
    from edgeloop.graph import get_metadata, save
    from edgeloop.passes import Int8Static, PassData, apply_pass

    x_tr, x_te, y_tr, y_te = digits()
    img = lambda x: (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # noqa: E731
    pt2 = cnn_pt2(tmp_path_factory, n_train=150, epochs=2)
    small = apply_pass(load_file(pt2), Int8Static(), PassData(x_calib=img(x_tr[:128])))
    assert get_metadata(small)["source"] == str(pt2)
    shrunk = tmp_path / "cnn.int8.onnx"
    save(small, shrunk)
    v1 = export_bundle(shrunk, "jetson-orin-nano", tmp_path / "v1")
    m1 = json.loads((v1 / "manifest.json").read_text())
    assert m1["provenance"]["source_file"] == f"source/{pt2.name}" and m1["provenance"]["recipe"][0]["pass"] == "int8_static"
    data = _npz(tmp_path / "new.npz", img(x_tr[150:]), y_tr[150:])
    v2 = tmp_path / "v2"
    r = subprocess.run([PY, "-m", "edgeloop", "improve", "-b", str(v1), "--data", str(data), "-o", str(v2),
                        "--epochs", "6", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)
    assert comp["method"] == "fine-tune" and comp["recipe_applied"] is True
    assert comp["holdout_new"]["new"] > comp["holdout_new"]["old"] + 0.2 and comp["holdout_new"]["new"] > 0.8
    model = onnx.load(v2 / "model.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # int8 again
    m2 = json.loads((v2 / "manifest.json").read_text())
    assert [s["pass"] for s in m2["provenance"]["recipe"]] == ["int8_static"]
    assert m2["preprocessing"] == m1["preprocessing"] and m2["version"] == 2


def test_improve_refuses_bad_input(tmp_path, tmp_path_factory):
    x_tr, _, y_tr, _ = digits()
    v1 = export_bundle(digits_joblib(tmp_path_factory), "raspberry-pi-5", tmp_path / "v1")
    cases = [
        (_npz(tmp_path / "wrong.npz", x_tr[:50, :10], y_tr[:50]), "shape"),
        (_npz(tmp_path / "labels.npz", x_tr[:50], np.full(50, 42)), "not one of the model's labels"),
        (tmp_path / "missing.npz", "no such file"),
    ]
    for data, words in cases:
        r = subprocess.run([PY, "-m", "edgeloop", "improve", "-b", str(v1), "--data", str(data), "-o",
                            str(tmp_path / "v2"), "--trust-pickle"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    (v1 / "source" / "digits.joblib").write_bytes(b"tampered")
    r = subprocess.run([PY, "-m", "edgeloop", "improve", "-b", str(v1), "--data", str(cases[0][0]), "-o",
                        str(tmp_path / "v2")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "SHA-256" in r.stderr
    assert not (tmp_path / "v2").exists()


def test_feature_reduced_bundle_improves_from_full_vectors(tmp_path):
    """Captures of a feature-reduced model hold every original feature; improve refits the source on
    all of them and replays the feature selection, so version 2 reads the same kept inputs."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import edgeloop
    from edgeloop.backends.bundle import build_bundle
    from edgeloop.backends.bundle.improve import improve
    from edgeloop.graph import save
    from edgeloop.passes import PassData, apply_pass
    from edgeloop.passes.sklearn_refit import FeatureSelect
    from edgeloop.runtime.model import BundleModel

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    src = tmp_path / "digits.joblib"
    joblib.dump(LogisticRegression(max_iter=3000).fit(x[:600], y[:600]), src)
    keep = tuple(range(8, 56))
    small = apply_pass(edgeloop.load(src, trust_pickle=True), FeatureSelect(keep=keep),
                       PassData(train=(x[:450], y[:450]), validation=(x[450:600], y[450:600]), source=str(src),
                                trust_pickle=True))
    save(small, tmp_path / "small.onnx")
    build_bundle(edgeloop.load(tmp_path / "small.onnx"), tmp_path / "v1", "raspberry-pi-4", source_path=str(src))
    np.savez(tmp_path / "new.npz", x=x[600:1200], y=y[600:1200])  # full 64-pixel vectors, as captured
    comparison = improve(tmp_path / "v1", tmp_path / "new.npz", tmp_path / "v2", trust_pickle=True)
    m2 = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert m2["version"] == 2 and m2["kept_features"] == list(keep) and m2["n_features_original"] == 64
    assert comparison["recipe_applied"] is True
    new = BundleModel(tmp_path / "v2")
    pred = new.predict(new.coerce(x[1300:1500].tolist()))  # the device keeps sending all 64 features
    acc = float(np.mean(np.asarray(pred["label"]) == y[1300:1500]))
    assert acc >= comparison["holdout_new"]["old"] - 0.05 and acc > 0.85
