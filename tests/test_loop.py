"""The loop across commands: data -> train -> shrink -> bundle keeps the way back to the source."""

from __future__ import annotations

import json
import subprocess
import sys


def _cli(cwd, *args):
    proc = subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_trained_and_shrunk_model_bundles_with_its_source_from_any_folder(tmp_path):
    work = tmp_path / "work"
    elsewhere = tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    _cli(elsewhere, "data", "import", "sklearn:wine", "-o", str(work / "data"))
    _cli(elsewhere, "train", str(work / "data"), "--min-score", "0.8", "--candidates", "linear",
         "-o", str(work / "wine.onnx"))
    _cli(elsewhere, "shrink", str(work / "wine.onnx"), "--data", str(work / "data"), "--quick",
         "--max-drop", "0.05", "-o", str(work / "shrunk"))
    results = json.loads((work / "shrunk" / "results.json").read_text())
    assert results["source"] and results["source"].endswith("wine.skops")  # found beside the trained model
    assert "validation" in results["splits"]["held_out"]
    # the shrunk model is in another folder and is exported from a third: its source must still be found
    _cli(elsewhere, "export", str(work / "shrunk" / "model.onnx"), "--target", "raspberry-pi-4",
         "-o", str(work / "bundle"))
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    assert manifest["provenance"]["source_file"], manifest["provenance"]
    assert (work / "bundle" / manifest["provenance"]["source_file"]).is_file()
    assert manifest["provenance"]["source_needs_trust"] is False  # train writes .skops: no pickle to trust
