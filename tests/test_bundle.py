"""Bundle backend: files, manifest, hashes, requirements, Dockerfiles (hadolint), atomic writes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_serve_fixtures import PY, REPO, cnn_bundle, digits, digits_bundle, digits_estimator, digits_joblib

HADOLINT = Path(sys.executable).parent / "hadolint"
BOARDS = ["raspberry-pi-3b-plus", "raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano"]


def test_export_cli_writes_a_complete_bundle(tmp_path_factory, tmp_path):
    src = digits_joblib(tmp_path_factory)
    out = tmp_path / "bundle"
    r = subprocess.run([PY, "-m", "edgeloop", "export", str(src), "--target", "raspberry-pi-4", "-o", str(out),
                        "--verify", "--json", "--trust-pickle"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["verified"] is True and report["target"] == "raspberry-pi-4"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for f in ("model.onnx", "manifest.json", "requirements.txt", "Dockerfile", "docker-compose.yml", "README.md",
              "edgeloop_runtime/server.py", "edgeloop_runtime/__main__.py", f"source/{src.name}"):
        assert f in names, f
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == src.stem and m["version"] == 1 and m["edgeloop_version"]
    assert m["target"]["id"] == "raspberry-pi-4" and m["target"]["arch"] == "arm64"
    assert m["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 64]}]
    assert {o["name"] for o in m["outputs"]} == {"label", "probabilities"}
    assert m["labels"] == list(range(10)) and m["task"] == "classification"
    assert m["provenance"]["source_format"] == "sklearn"
    assert m["provenance"]["source_file"] == f"source/{src.name}"
    # every file except the manifest and edgeloop's output marker is hashed, and the hashes are right
    import hashlib

    assert m["hash"] == "sha256" and m["signed"] is None and not (out / "manifest.sig").exists()
    assert set(m["files"]) == names - {"manifest.json", ".edgeloop-output.json"}
    for rel, digest in m["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    assert (out / "source" / src.name).read_bytes() == src.read_bytes()


def test_bundle_model_agrees_with_the_estimator_on_digits(tmp_path_factory):
    from edgeloop.runtime.model import BundleModel

    bundle = digits_bundle(tmp_path_factory)
    est = digits_estimator()
    _, x_te, _, _ = digits()
    res = BundleModel(bundle).predict(x_te)
    assert res["label"] == est.predict(x_te).tolist()
    np.testing.assert_allclose(res["probabilities"], est.predict_proba(x_te), atol=1e-4)
    np.testing.assert_allclose(res["confidence"], est.predict_proba(x_te).max(axis=1), atol=1e-4)


def test_requirements_are_the_runtime_needs_only(tmp_path_factory):
    for bundle, extra in ((digits_bundle(tmp_path_factory), set()),
                          (cnn_bundle(tmp_path_factory), {"pillow", "python-multipart"})):
        lines = [ln for ln in (bundle / "requirements.txt").read_text().splitlines()
                 if ln and not ln.startswith(("#", "--"))]
        pkgs = {ln.split("==")[0] for ln in lines}
        assert pkgs == {"onnxruntime", "numpy", "starlette", "uvicorn"} | extra
        assert all("==" in ln for ln in lines)  # pinned
    from importlib.metadata import version

    text = (digits_bundle(tmp_path_factory) / "requirements.txt").read_text()
    assert f"onnxruntime=={version('onnxruntime')}" in text and f"numpy=={version('numpy')}" in text


@pytest.mark.parametrize("target", BOARDS)
def test_dockerfile_passes_hadolint_and_fits_the_board(tmp_path, tmp_path_factory, target):
    from edgeloop.backends.bundle import build_bundle
    from edgeloop.frontends import load_file

    src = digits_joblib(tmp_path_factory)
    out = tmp_path / target
    m = build_bundle(load_file(src, trust_pickle=True), out, target, source_path=str(src))
    docker = (out / "Dockerfile").read_text()
    r = subprocess.run([str(HADOLINT), "--no-color", str(out / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    compose = (out / "docker-compose.yml").read_text()
    assert "./captures:/data" in compose and '"--capture", "/data/captures.db"' in docker
    reqs = (out / "requirements.txt").read_text()
    if target.startswith("raspberry-pi"):
        assert "FROM python:3.11-slim-bookworm" in docker and "linux/arm64" in docker
        assert "runtime: nvidia" not in compose
    elif target == "jetson-nano":  # JetPack 4.6 = L4T r32.7, NVIDIA's onnxruntime-gpu wheel, Python 3.8
        assert "FROM nvcr.io/nvidia/l4t-base:r32.7.1" in docker and "python3.8" in docker
        assert "onnxruntime_gpu-1.11.0-cp38" in docker and "onnxruntime-gpu==1.11.0" in reqs
        assert "runtime: nvidia" in compose and m["target"]["jetpack"].startswith("4.6")
    else:  # Orin Nano: JetPack 6 = L4T r36
        assert "FROM nvcr.io/nvidia/l4t-jetpack:r36" in docker and "onnxruntime-gpu==" in reqs
        assert "--extra-index-url" in reqs and m["target"]["jetpack"].startswith("6")
        assert "runtime: nvidia" in compose
    pkgs = {ln.split("==")[0] for ln in reqs.splitlines() if ln and not ln.startswith(("#", "--"))}
    assert not pkgs & {"torch", "scikit-learn", "onnx", "edgeloop", "scipy"}


def test_runtime_imports_only_its_declared_dependencies(tmp_path_factory):
    """Serve code from the bundle's copy must not pull edgeloop, onnx, torch or scikit-learn."""
    bundle = digits_bundle(tmp_path_factory)
    code = ("import sys, edgeloop_runtime.server as s, edgeloop_runtime.capture, edgeloop_runtime.__main__\n"
            "app = s.create_app(s.ServerConfig(bundle='.'))\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('edgeloop', 'onnx', 'torch', 'sklearn', 'scipy', 'typer', 'rich', 'onnxscript'))\n"
            "print(bad)")
    r = subprocess.run([PY, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_runtime_source_parses_as_python_3_8():
    """Jetson Nano images run Python 3.8 (the newest with NVIDIA's JetPack 4.6 onnxruntime-gpu)."""
    for f in (REPO / "src" / "edgeloop" / "runtime").glob("*.py"):
        ast.parse(f.read_text(), filename=str(f), feature_version=(3, 8))


def test_image_model_bundle_describes_its_preprocessing(tmp_path_factory):
    m = json.loads((cnn_bundle(tmp_path_factory) / "manifest.json").read_text())
    assert m["inputs"][0]["shape"] == [None, 1, 8, 8]
    pre = m["preprocessing"]
    assert pre["type"] == "image" and pre["layout"] == "NCHW" and (pre["height"], pre["width"]) == (8, 8)
    assert m["postprocess"]["scores_kind"] == "logits"
    assert m["provenance"]["source_file"].endswith(".pt2")


def test_failed_export_leaves_the_previous_bundle_intact(tmp_path, tmp_path_factory):
    from edgeloop.backends.bundle import build_bundle
    from edgeloop.frontends import load_file

    src = digits_joblib(tmp_path_factory)
    out = tmp_path / "b"
    build_bundle(load_file(src, trust_pickle=True), out, "raspberry-pi-4", source_path=str(src))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "broken.joblib"
    bad.write_bytes(src.read_bytes()[:100])
    r = subprocess.run([PY, "-m", "edgeloop", "export", str(bad), "--target", "raspberry-pi-4", "-o", str(out),
                        "--trust-pickle"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no temp leftovers
    # a non-bundle folder is never replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    r = subprocess.run([PY, "-m", "edgeloop", "export", str(src), "--target", "raspberry-pi-4", "-o", str(other),
                        "--trust-pickle"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and (other / "keep.txt").read_text() == "x"


def test_microcontroller_target_is_not_a_bundle(tmp_path_factory, tmp_path):
    from edgeloop.backends.bundle import build_bundle
    from edgeloop.errors import UsageError
    from edgeloop.frontends import load_file

    with pytest.raises(UsageError):
        build_bundle(load_file(digits_joblib(tmp_path_factory), trust_pickle=True), tmp_path / "x", "stm32f746")


def test_jetson_nano_bundle_is_converted_to_its_onnxruntime_opset(tmp_path, tmp_path_factory):
    """JetPack 4.6's onnxruntime-gpu 1.11 reads opset <= 16 and IR <= 8: the graph is converted and still agrees."""
    import onnx

    from edgeloop.backends.bundle import build_bundle
    from edgeloop.frontends import load_file
    from edgeloop.runtime.model import BundleModel

    src = digits_joblib(tmp_path_factory)
    original = load_file(src, trust_pickle=True)
    assert max(o.version for o in original.opset_import if o.domain == "") > 16
    m = build_bundle(original, tmp_path / "nano", "jetson-nano", source_path=str(src))
    model = onnx.load(tmp_path / "nano" / "model.onnx")
    assert model.ir_version <= 8 and all(o.version <= 16 for o in model.opset_import if o.domain == "")
    assert m["onnx"]["conversion"].startswith("converted from opset")
    _, x_te, _, _ = digits()
    assert BundleModel(tmp_path / "nano").predict(x_te)["label"] == digits_estimator().predict(x_te).tolist()


def test_feature_reduced_model_takes_the_full_vector_on_the_device(tmp_path):
    """A bundle of a feature-selected model accepts the device's full input vector (and the
    kept columns alone), and answers as the refitted estimator does."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import edgeloop
    from edgeloop.backends.bundle import build_bundle
    from edgeloop.passes import PassData, apply_pass
    from edgeloop.passes.sklearn_refit import FeatureSelect
    from edgeloop.runtime.model import BundleModel, InputError

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    est = LogisticRegression(max_iter=3000).fit(x[:1200], y[:1200])
    keep = tuple(range(8, 56))  # drop the mostly blank first and last rows of pixels
    small = apply_pass(edgeloop.load(est), FeatureSelect(keep=keep),
                       PassData(x_fit=x[:900], y_fit=y[:900], x_tune=x[900:1200], y_tune=y[900:1200], source=est))
    m = build_bundle(small, tmp_path / "b", "raspberry-pi-4")
    assert m["kept_features"] == list(keep) and m["n_features_original"] == 64
    bm = BundleModel(tmp_path / "b")
    x_new = x[1200:1300]
    full = bm.predict(bm.coerce(x_new.tolist()))
    kept = bm.predict(bm.coerce(x_new[:, list(keep)].tolist()))
    np.testing.assert_array_equal(full["index"], kept["index"])
    ref = edgeloop.graph.run(small, x_new[:, list(keep)])[0]
    np.testing.assert_array_equal(np.asarray(full["label"]).astype(ref.dtype), ref)
    assert bm.coerce(x_new.tolist()).shape == (100, 64)  # what a capture stores: the full vector
    with pytest.raises(InputError, match="64 original features"):
        bm.coerce(x_new[:, :30].tolist())
