"""The bundle needs nothing but its requirements.txt: a fresh venv serves it without edgeloop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_serve_fixtures import digits, digits_bundle, digits_estimator, http, server


def test_fresh_venv_with_requirements_only_serves_the_bundle(tmp_path, tmp_path_factory):
    bundle = digits_bundle(tmp_path_factory)
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    r = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(bundle / "requirements.txt")], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    probe = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('edgeloop', 'onnx', 'torch', "
                                      "'sklearn', 'scipy') if u.find_spec(m)])"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    _, x_te, _, _ = digits()
    with server(bundle, python=py, env=env, cwd=bundle) as proc:
        status, out = http("POST", proc.url + "/predict", json.dumps({"inputs": x_te[:100].tolist()}).encode())
        assert status == 200
        assert json.loads(out)["label"] == digits_estimator().predict(x_te[:100]).tolist()
