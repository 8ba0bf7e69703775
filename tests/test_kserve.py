"""The Open Inference Protocol (KServe v2) spoken by the bundle server, checked with a client
nobody here wrote: Triton's `tritonclient[http]`, against a real server on a free port."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_detect_bundle import face_bundle  # noqa: F401  (module fixture)
from test_serve_fixtures import digits, digits_bundle, digits_estimator, http, server
from wheel_assets import photo

httpclient = pytest.importorskip("tritonclient.http")


def _client(url):
    return httpclient.InferenceServerClient(url=url.replace("http://", ""), network_timeout=30)


def test_metadata_and_fp32_infer_on_a_classifier(tmp_path_factory):
    bundle = digits_bundle(tmp_path_factory)
    _, x_te, _, _ = digits()
    x = x_te[:5].astype(np.float32)
    want = digits_estimator().predict_proba(x)
    with server(bundle, "--capture", str(tmp_path_factory.mktemp("kcap") / "c.db"), "--random-rate", "1",
                "--max-captures-per-minute", "0") as s:
        c = _client(s.url)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("digits")
        assert not c.is_model_ready("nope")
        meta = c.get_model_metadata("digits")
        assert meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        (inp,) = meta["inputs"]
        assert inp["datatype"] == "FP32" and inp["shape"] == [-1, 64]
        outs = {o["name"]: o for o in meta["outputs"]}
        assert outs["probabilities"]["datatype"] == "FP32" and outs["probabilities"]["shape"] == [-1, 10]
        assert c.get_server_metadata()["name"] == "edgeloop"

        for binary in (True, False):  # tritonclient's default binary tensors, and plain JSON
            t = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
            t.set_data_from_numpy(x, binary_data=binary)
            res = c.infer("digits", [t])
            np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-5)
            assert res.as_numpy("label").tolist() == np.argmax(want, 1).tolist()
        # only the outputs asked for
        t = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        res = c.infer("digits", [t], outputs=[httpclient.InferRequestedOutput("probabilities")])
        assert [o["name"] for o in res.get_response()["outputs"]] == ["probabilities"]
        # nested JSON data and an INT64 tensor work too (converted to the model's float32)
        doc = {"inputs": [{"name": inp["name"], "shape": [2, 64], "datatype": "INT64",
                           "data": x_te[:2].astype(np.int64).tolist()}]}
        status, body = http("POST", s.url + "/v2/models/digits/infer", json.dumps(doc).encode())
        assert status == 200, body
        got = {o["name"]: o for o in json.loads(body)["outputs"]}
        assert got["probabilities"]["shape"] == [2, 10] and len(got["probabilities"]["data"]) == 20
        # errors are one JSON line with a 4xx
        for bad, code in [({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1.0]}]}, 400),
                          ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, 422),
                          ({"inputs": [{"name": "x", "shape": [1], "datatype": "COMPLEX", "data": [1]}]}, 400),
                          ({"inputs": []}, 400)]:
            status, body = http("POST", s.url + "/v2/models/digits/infer", json.dumps(bad).encode())
            assert status == code and set(json.loads(body)) == {"error"}, body
        status, body = http("POST", s.url + "/v2/models/other/infer", json.dumps(doc).encode())
        assert status == 404 and "digits" in json.loads(body)["error"]
        # capture and metrics count the v2 requests as they count /predict
        status, body = http("GET", s.url + "/health")
        assert json.loads(body)["capture"]["captured"] >= 5
        status, body = http("GET", s.url + "/metrics")
        assert 'path="/v2/models/{name}/infer",status="200"' in body.decode()


def test_bytes_infer_on_the_face_detector_equals_predict(face_bundle):  # noqa: F811
    b = face_bundle / "bundle"
    png = photo("astronaut.png").read_bytes()
    with server(b) as s:
        status, body = http("POST", s.url + "/predict", png, ctype="image/png")
        want = json.loads(body)["detections"]
        assert len(want) == 1
        c = _client(s.url)
        meta = c.get_model_metadata("face")
        assert {"name": "image", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
        assert {o["name"] for o in meta["outputs"]} >= {"boxes", "scores", "labels", "regressors"}
        t = httpclient.InferInput("image", [1], "BYTES")
        t.set_data_from_numpy(np.array([png], dtype=np.object_))
        res = c.infer("face", [t], outputs=[httpclient.InferRequestedOutput(n) for n in ("boxes", "scores", "labels")])
        boxes, scores, labels = res.as_numpy("boxes"), res.as_numpy("scores"), res.as_numpy("labels")
        assert boxes.shape == (1, 4)
        np.testing.assert_allclose(boxes, [d["box"] for d in want], rtol=0, atol=1e-4)  # FP32 of the same numbers
        np.testing.assert_allclose(scores, [d["score"] for d in want], atol=1e-6)
        assert [v.decode() if isinstance(v, bytes) else v for v in labels.tolist()] == ["face"]
        # plain JSON: BYTES elements carry the encoded image as base64 (a JPEG: within the body limit)
        import base64
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.open(photo("astronaut.png")).convert("RGB").save(buf, format="JPEG", quality=85)
        jpeg = buf.getvalue()
        status, body = http("POST", s.url + "/predict", jpeg, ctype="image/jpeg")
        want_jpeg = json.loads(body)["detections"]
        doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(jpeg).decode()]}]}
        status, body = http("POST", s.url + "/v2/models/face/infer", json.dumps(doc).encode())
        assert status == 200, body
        got = {o["name"]: o for o in json.loads(body)["outputs"]}
        assert got["boxes"]["shape"] == [1, 4] and got["labels"]["data"] == ["face"]
        np.testing.assert_allclose(got["boxes"]["data"], want_jpeg[0]["box"], atol=1e-4)
        # a ready FP32 tensor: boxes in the tensor's pixels, as /predict answers for JSON tensors
        img = Image.open(photo("astronaut.png")).convert("RGB").resize((128, 128))
        x = (np.asarray(img, np.float32) / 127.5 - 1.0)[None]
        status, body = http("POST", s.url + "/predict", json.dumps({"inputs": x.tolist()}).encode())
        want_tensor = json.loads(body)["detections"]
        t = httpclient.InferInput("input", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        res = c.infer("face", [t])
        assert res.as_numpy("regressors").shape == (1, 896, 16)
        np.testing.assert_allclose(res.as_numpy("boxes"), [d["box"] for d in want_tensor], atol=1e-4)
        # a non-image BYTES element is a 415 with one line
        t = httpclient.InferInput("image", [1], "BYTES")
        t.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        with pytest.raises(Exception, match="not a decodable image"):
            c.infer("face", [t])
