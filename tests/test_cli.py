"""The `edgeloop` command end to end: profile and targets, tables and --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import skops.io
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier


def _cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    x, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("cli") / "digits.skops"  # skops: loads without --trust-pickle
    skops.io.dump(MLPClassifier((16,), max_iter=50, random_state=0).fit(x / 16, y), path)
    return path


def test_profile_json_has_the_documented_fields(mlperf_dir):
    proc = _cli("profile", str(mlperf_dir / "kws_ref_model.tflite"), "--json", "--target", "stm32l4r5")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    for key in ("params", "macs", "weight_bytes", "flash_bytes", "peak_ram_bytes", "latency_ms", "layers"):
        assert key in p
    assert set(p["latency_ms"]) >= {"median", "p90"}
    assert 0 < p["latency_ms"]["median"] <= p["latency_ms"]["p90"]
    assert p["peak_ram_bytes"] <= 16000  # TFLite Micro's planned activations for this model
    assert p["macs"] == sum(layer["macs"] for layer in p["layers"])
    assert p["params"] == sum(layer["params"] for layer in p["layers"])
    for layer in p["layers"]:
        assert set(layer) >= {"name", "op", "params", "macs", "output_bytes"}
    assert p["precision"] == "int8"
    assert p["target"]["name"] == "stm32l4r5" and p["target"]["fits"] is True
    assert p["target"]["est_latency_ms"] > 0


def test_profile_table(digits_model):
    proc = _cli("profile", str(digits_model), "--no-latency")
    assert proc.returncode == 0, proc.stderr
    assert "MatMul" in proc.stdout and "peak RAM" in proc.stdout and "MACs per inference" in proc.stdout


def test_targets_without_model_lists_the_catalogue():
    proc = _cli("targets", "--json")
    rows = json.loads(proc.stdout)
    assert len(rows) >= 14
    assert {r["kind"] for r in rows} == {"mcu", "linux", "accelerator"}
    assert all(r["fits"] is None and r["est_latency_ms"] is None for r in rows)


def test_targets_with_model_and_limits(digits_model):
    proc = _cli("targets", str(digits_model), "--json", "--max-price-usd", "30", "--max-power-w", "1")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    for r in rows:
        assert set(r) >= {"name", "kind", "ram_bytes", "flash_bytes", "power_w", "price_usd", "fits",
                          "reasons", "est_latency_ms"}
        over = r["price_usd"] > 30 or r["power_w"] > 1
        if over:
            assert not r["fits"] and r["reasons"]
    fitting = [r for r in rows if r["fits"]]
    assert fitting, "a float32 digits MLP fits some cheap microcontroller"
    assert [r["price_usd"] for r in fitting] == sorted(r["price_usd"] for r in fitting)
    assert rows[: len(fitting)] == fitting  # fits first
    # float32 model: the int8-only Edge TPU is a misfit naming the precision
    coral = next(r for r in rows if r["name"] == "coral-usb")
    assert any("int8" in reason for reason in coral["reasons"])


def test_targets_rejects_nonsense_limits(digits_model):
    proc = _cli("targets", str(digits_model), "--max-price-usd", "-5")
    assert proc.returncode == 2 and "--max-price-usd" in proc.stderr


def test_convert_writes_an_onnx_graph(tmp_path, digits_model):
    out = tmp_path / "digits.onnx"
    proc = _cli("convert", str(digits_model), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    import onnx

    onnx.checker.check_model(onnx.load(out))
