"""The on-device server: predictions equal the source model, bad requests get 4xx, versions switch."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_serve_fixtures import (PY, _CACHE, admin_headers, cnn_bundle, copy_bundle, digits, digits_bundle,
                                 digits_estimator, http, server)


def client(bundle, peer=("127.0.0.1", 50000), **kw):
    from starlette.testclient import TestClient

    from edgeloop.runtime.server import ServerConfig, create_app

    return TestClient(create_app(ServerConfig(bundle=str(bundle), **kw)), client=peer)


@pytest.fixture(scope="module")
def digits_client(tmp_path_factory):
    return client(digits_bundle(tmp_path_factory))


def test_predict_json_matches_the_estimator(digits_client):
    est = digits_estimator()
    _, x_te, _, _ = digits()
    r = digits_client.post("/predict", json={"inputs": x_te[:200].tolist()})
    assert r.status_code == 200
    doc = r.json()
    assert doc["label"] == est.predict(x_te[:200]).tolist()
    np.testing.assert_allclose(doc["confidence"], est.predict_proba(x_te[:200]).max(1), atol=1e-4)
    np.testing.assert_allclose(doc["outputs"]["probabilities"], est.predict_proba(x_te[:200]), atol=1e-4)
    one = digits_client.post("/predict", json={"input": x_te[7].tolist()}).json()
    assert one["label"] == [int(est.predict(x_te[7:8])[0])]
    bare = digits_client.post("/predict", json=x_te[:3].tolist()).json()
    assert bare["label"] == est.predict(x_te[:3]).tolist()


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_image_upload_is_preprocessed_as_the_manifest_says(tmp_path_factory):
    import torch

    bundle = cnn_bundle(tmp_path_factory)
    net = _CACHE[("pt2", 1257, 8)][1]
    c = client(bundle)
    _, x_te, _, y_te = digits()
    pixels = np.round(x_te[:40] * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8)
    got_labels, want_logits = [], []
    for i, img in enumerate(pixels):
        png = _png(img)
        raw = c.post("/predict", content=png, headers={"content-type": "image/png"})
        form = c.post("/predict", files={"file": ("digit.png", png, "image/png")})
        assert raw.status_code == 200 and form.status_code == 200, raw.text + form.text
        assert raw.json()["outputs"] == form.json()["outputs"]
        got_labels.append(raw.json()["label"][0])
        with torch.no_grad():  # the reference: the torch module on pixels / 255 (the manifest's scale)
            ref = net(torch.from_numpy((img / 255.0).astype(np.float32).reshape(1, 1, 8, 8))).numpy()
        np.testing.assert_allclose(raw.json()["outputs"]["linear"], ref, atol=1e-4)
        want_logits.append(ref[0])
        probs = np.exp(ref[0] - ref[0].max()) / np.exp(ref[0] - ref[0].max()).sum()
        assert raw.json()["confidence"][0] == pytest.approx(probs.max(), abs=1e-5)
    assert got_labels == np.argmax(want_logits, axis=1).tolist()
    assert np.mean(np.asarray(got_labels) == y_te[:40]) > 0.85
    # a larger photo is resized to 8x8; an image to the tabular model is refused with 415
    big = np.kron(pixels[0], np.ones((4, 4))).astype(np.uint8)
    assert c.post("/predict", content=_png(big), headers={"content-type": "image/png"}).status_code == 200
    tab = client(digits_bundle(tmp_path_factory))
    assert tab.post("/predict", content=_png(pixels[0]), headers={"content-type": "image/png"}).status_code == 415
    assert c.post("/predict", content=b"\x89PNG garbage", headers={"content-type": "image/png"}).status_code == 415


BAD = [
    (b"{", "application/json", 400, "malformed JSON"),
    (b'{"inputs": [[NaN]]}', "application/json", 400, "NaN"),
    (b'{"inputs": [Infinity]}', "application/json", 400, "Infinity"),
    (b"[1, 2]", "application/json", 422, "expects shape"),
    (b"[[1, 2], [3]]", "application/json", 422, "ragged"),
    (b'{"inputs": "abc"}', "application/json", 422, "array of numbers"),
    (b'[["a"]]', "application/json", 422, "only numbers"),
    (b"[1e400]", "application/json", 422, "infinite"),
    (json.dumps([[1e39] * 64]).encode(), "application/json", 422, "too large"),
    (b"[true]", "application/json", 422, "booleans"),
    (b"{}", "application/json", 422, "'inputs'"),
    (b"null", "application/json", 422, "array"),
    (b"", "application/json", 400, "empty body"),
    (b"[]", "application/json", 422, "shape"),
    (b"1,2,3", "text/csv", 415, "Content-Type"),
    (b"[[1]]", "", 415, "Content-Type"),
    (json.dumps({"input": [[0.0] * 64] * 2}).encode(), "application/json", 422, "one sample"),
    (json.dumps({"inputs": [[0.0] * 64] * 1025}).encode(), "application/json", 413, "limit"),
    (b"\xff\xfe[", "application/json", 400, "malformed"),
]


@pytest.mark.parametrize("body,ctype,status,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_clear_4xx(digits_client, body, ctype, status, words):
    r = digits_client.post("/predict", content=body, headers={"content-type": ctype} if ctype else {})
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["error"].lower()


def test_oversized_body_is_413(tmp_path_factory):
    c = client(digits_bundle(tmp_path_factory), max_body_bytes=10_000)
    r = c.post("/predict", content=b"[" + b"1," * 20_000 + b"1]", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(100):
            yield b"1," * 100

    r = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-2**70, 2**70) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=70) | st.dictionaries(st.sampled_from(["inputs", "input", "x"]), kids,
                                                                max_size=2),
    max_leaves=200)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=json_values, raw=st.binary(max_size=300), ctype=st.sampled_from(
    ["application/json", "image/png", "multipart/form-data; boundary=x", "text/plain", "application/octet-stream"]),
    use_raw=st.booleans())
def test_fuzzed_predict_bodies_never_get_a_5xx(tmp_path_factory, doc, raw, ctype, use_raw):
    c = _fuzz_client(tmp_path_factory)
    body = raw if use_raw else json.dumps(doc).encode()
    r = c.post("/predict", content=body, headers={"content-type": ctype})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["error"]


def _fuzz_client(factory):
    if "fuzz_client" not in _CACHE:
        _CACHE["fuzz_client"] = client(cnn_bundle(factory))
    # the CNN bundle takes images and JSON, so every content-type path is exercised
    return _CACHE["fuzz_client"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.lists(st.floats(0, 16, width=32), min_size=64, max_size=64), min_size=1, max_size=5))
def test_fuzzed_valid_rows_match_the_estimator(digits_client, rows):
    if "est" not in _CACHE:
        _CACHE["est"] = digits_estimator()
    est = _CACHE["est"]
    r = digits_client.post("/predict", json={"inputs": rows})
    assert r.status_code == 200
    assert r.json()["label"] == est.predict(np.asarray(rows, dtype=np.float32)).tolist()


def test_extreme_values_get_a_4xx_not_a_500(digits_client):
    r = digits_client.post("/predict", json={"inputs": [[3.0e38] * 64, [-3.0e38] * 64]})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert all(np.isfinite(r.json()["confidence"]))


def test_metrics_are_prometheus_text(tmp_path_factory):
    c = client(digits_bundle(tmp_path_factory))
    _, x_te, _, _ = digits()
    for i in range(5):
        c.post("/predict", json={"input": x_te[i].tolist()})
    c.post("/predict", content=b"{", headers={"content-type": "application/json"})
    text = c.get("/metrics").text
    assert 'edgeloop_requests_total{path="/predict",status="200"} 5' in text
    assert 'edgeloop_requests_total{path="/predict",status="400"} 1' in text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    p50 = samples['edgeloop_request_latency_seconds{path="/predict",quantile="0.5"}']
    p99 = samples['edgeloop_request_latency_seconds{path="/predict",quantile="0.99"}']
    assert 0 < p50 <= p99 < 5
    assert samples['edgeloop_request_latency_seconds_count{path="/predict"}'] == 6
    assert c.get("/health").json()["version"] == 1


def _version_copy(bundle, dest, version):
    copy_bundle(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["version"] = version  # the manifest itself is not in the hash list
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_reload_switches_versions_and_rolls_back(tmp_path, tmp_path_factory):
    b1 = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "v1")  # the bundles folder: tmp_path
    b2 = _version_copy(b1, tmp_path / "v2", 2)
    bad = _version_copy(b1, tmp_path / "v3", 3)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01")
    c = client(b1)
    auth = admin_headers(c)
    _, x_te, _, _ = digits()
    assert c.post("/admin/reload", json={"bundle": str(b2)}, headers=auth).json()["version"] == 2
    assert c.post("/predict", json={"input": x_te[0].tolist()}).json()["version"] == 2
    r = c.post("/admin/reload", json={"bundle": str(bad)}, headers=auth)
    assert r.status_code == 409 and "model.onnx" in r.json()["error"] and "still serving version 2" in r.json()["error"]
    assert c.get("/health").json()["version"] == 2
    assert c.post("/admin/rollback", headers=auth).json()["version"] == 1
    assert c.post("/predict", json={"input": x_te[0].tolist()}).json()["version"] == 1
    assert c.post("/admin/rollback", headers=auth).status_code == 409  # nothing older
    assert c.post("/admin/reload", content=b"{", headers=auth).status_code == 400
    remote = client(b1, peer=("192.168.1.20", 40000))
    assert remote.post("/admin/reload", json={"bundle": str(b2)}, headers=admin_headers(remote)).status_code == 403
    assert remote.post("/admin/rollback", headers=admin_headers(remote)).status_code == 403
    assert remote.get("/health").json()["version"] == 1


def _tamper(bundle):
    with open(bundle / "model.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_tampered_bundle_is_refused_at_start(tmp_path, tmp_path_factory):
    b = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "b")
    _tamper(b)
    r = subprocess.run([PY, "-m", "edgeloop", "serve", str(b), "--port", "1"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "model.onnx" in r.stderr and "SHA-256" in r.stderr
    r = subprocess.run([PY, "-m", "edgeloop_runtime", ".", "--port", "1"], cwd=b, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "SHA-256" in r.stderr and "Traceback" not in r.stderr


def test_corrupted_model_with_matching_hash_is_refused_at_start(tmp_path, tmp_path_factory):
    """Even a consistently re-hashed bundle with a truncated model.onnx does not start."""
    from edgeloop.runtime.bundle import hash_tree

    b = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "b")
    data = (b / "model.onnx").read_bytes()
    (b / "model.onnx").write_bytes(data[: len(data) // 2])
    m = json.loads((b / "manifest.json").read_text())
    m["files"] = hash_tree(b)
    (b / "manifest.json").write_text(json.dumps(m))
    r = subprocess.run([PY, "-m", "edgeloop", "serve", str(b)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "onnxruntime cannot load model.onnx" in r.stderr and "Traceback" not in r.stderr
    (b / "manifest.json").write_text("{not json")
    r = subprocess.run([PY, "-m", "edgeloop", "serve", str(b)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "manifest" in r.stderr


AUDIT = """
import runpy, sys
log = open(sys.argv.pop(1), "w")
def hook(event, args):
    if event == "socket.connect":
        log.write(repr(args[1]) + "\\n"); log.flush()
sys.addaudithook(hook)
sys.argv[0] = "edgeloop_runtime"
runpy.run_module("edgeloop_runtime", run_name="__main__", alter_sys=True)
"""


def test_server_opens_no_outbound_connection_and_reloads_on_sighup(tmp_path, tmp_path_factory):
    live = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "live")
    wrapper = tmp_path / "audited.py"
    wrapper.write_text(AUDIT)
    log = tmp_path / "connects.log"
    env = dict(os.environ, PYTHONPATH=str(live))
    _, x_te, _, _ = digits()
    est = digits_estimator()
    with server(live, "--capture", str(tmp_path / "c.db"), launcher=[PY, str(wrapper), str(log)], env=env) as proc:
        body = json.dumps({"inputs": x_te[:50].tolist()}).encode()
        status, out = http("POST", proc.url + "/predict", body)
        assert status == 200 and json.loads(out)["label"] == est.predict(x_te[:50]).tolist()
        # SIGHUP: swap in version 2 at the same path, the server picks it up without a restart
        old = tmp_path / "old"
        live.rename(old)
        _version_copy(old, live, 2)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while json.loads(http("GET", proc.url + "/health")[1])["version"] != 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
        # a tampered version 3 put in its place is refused on SIGHUP: version 2 keeps serving
        # (were the hashes not checked, /health would turn to 3 within the reload time above)
        live.rename(tmp_path / "v2")
        _version_copy(tmp_path / "v2", live, 3)
        _tamper(live)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert json.loads(http("GET", proc.url + "/health")[1])["version"] == 2
            time.sleep(0.1)
        assert proc.poll() is None
        status, out = http("POST", proc.url + "/predict", body)
        assert status == 200 and json.loads(out)["version"] == 2
    assert log.exists() and log.read_text() == ""  # not a single connect() from the server process


def test_busy_port_is_one_clear_line(tmp_path_factory):
    bundle = digits_bundle(tmp_path_factory)
    with server(bundle) as proc:
        port = proc.url.rsplit(":", 1)[1]
        r = subprocess.run([PY, "-m", "edgeloop", "serve", str(bundle), "--port", port], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 2 and "cannot listen" in r.stderr and r.stderr.strip().count("\n") == 0
