"""Shared builders for the bundle/serve/capture/improve tests (no tests here).

Models are trained on scikit-learn's digits: a scaled logistic regression saved as
.joblib, and a small CNN over the 8x8 images saved with torch.export (.pt2) for the
image-upload path.  Each is built once per test session.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
_CACHE: dict = {}


def digits():
    """Train/test split of digits (float32 features, 0..16)."""
    if "digits" not in _CACHE:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        _CACHE["digits"] = train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)
    return _CACHE["digits"]


def base_dir(factory) -> Path:
    if "base" not in _CACHE:
        _CACHE["base"] = factory.mktemp("edge_models")
    return _CACHE["base"]


def digits_estimator(n_train: int | None = None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_tr, _, y_tr, _ = digits()
    n = n_train or len(x_tr)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr[:n], y_tr[:n])


def digits_joblib(factory, n_train: int | None = None) -> Path:
    key = ("joblib", n_train)
    if key not in _CACHE:
        import joblib

        path = base_dir(factory) / f"digits{n_train or ''}.joblib"
        joblib.dump(digits_estimator(n_train), path)
        _CACHE[key] = path
    return _CACHE[key]


def cnn_module(n_train: int = 1257, epochs: int = 8, seed: int = 0):
    import torch

    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead on a shared 2-core machine
    x_tr, _, y_tr, _ = digits()
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(128, 10))
    xt = torch.from_numpy((x_tr[:n_train] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    yt = torch.from_numpy(y_tr[:n_train].astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(epochs):
        for i in range(0, len(xt), 128):
            loss = torch.nn.functional.cross_entropy(net(xt[i:i + 128]), yt[i:i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def cnn_pt2(factory, n_train: int = 1257, epochs: int = 8) -> Path:
    key = ("pt2", n_train, epochs)
    if key not in _CACHE:
        import torch

        net = cnn_module(n_train, epochs)
        ep = torch.export.export(net, (torch.zeros(2, 1, 8, 8),),
                                 dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
        path = base_dir(factory) / f"cnn{n_train}_{epochs}.pt2"
        torch.export.save(ep, str(path))
        _CACHE[key] = (path, net)
    return _CACHE[key][0]


def export_bundle(model: Path, target: str, out: Path) -> Path:
    """`edgeloop export MODEL --target T -o OUT` through the real CLI entry point (the test's own models:
    --trust-pickle lets the pickled digits source load)."""
    r = subprocess.run([PY, "-m", "edgeloop", "export", str(model), "--target", target, "-o", str(out), "--trust-pickle"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def digits_bundle(factory, target: str = "raspberry-pi-4") -> Path:
    key = ("bundle", "digits", target)
    if key not in _CACHE:
        from edgeloop.backends.bundle import build_bundle
        from edgeloop.frontends import load_file

        src = digits_joblib(factory)
        out = base_dir(factory) / f"digits-{target}"
        build_bundle(load_file(src, trust_pickle=True), out, target, name="digits", source_path=str(src))
        _CACHE[key] = out
    return _CACHE[key]


def cnn_bundle(factory, target: str = "raspberry-pi-5") -> Path:
    key = ("bundle", "cnn", target)
    if key not in _CACHE:
        from edgeloop.backends.bundle import build_bundle
        from edgeloop.frontends import load_file

        src = cnn_pt2(factory)
        out = base_dir(factory) / f"cnn-{target}"
        build_bundle(load_file(src), out, target, name="cnn", source_path=str(src))
        _CACHE[key] = out
    return _CACHE[key]


def copy_bundle(bundle: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(bundle, dest)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, ctype: str = "application/json", timeout: float = 10):
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def server(bundle: Path, *args: str, python: str = PY, module: str = "edgeloop_runtime", cwd: Path | None = None,
           env: dict | None = None, launcher: list[str] | None = None, startup: float = 30.0):
    """Run the bundle's own server (``python -m edgeloop_runtime``) on a free loopback port."""
    port = free_port()
    cmd = (launcher or [python, "-m", module]) + [str(bundle), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=str(cwd or bundle), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup
        while True:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"server exited with {proc.returncode}: {err.decode()[-2000:]}")
            try:
                status, _ = http("GET", url + "/health", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start in time")
            time.sleep(0.1)
        proc.url = url  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def admin_headers(c) -> dict:
    """What an admin request to a TestClient app needs: its bearer token, as JSON."""
    return {"Authorization": "Bearer " + c.app.state.admin_token, "Content-Type": "application/json"}


def post_json(url: str, doc) -> tuple[int, dict]:
    status, body = http("POST", url + "/predict", json.dumps(doc).encode())
    return status, json.loads(body)


__all__ = ["digits", "digits_joblib", "digits_bundle", "cnn_bundle", "cnn_pt2", "cnn_module", "server",
           "http", "post_json", "admin_headers", "free_port", "copy_bundle", "export_bundle", "REPO", "PY", "os"]
