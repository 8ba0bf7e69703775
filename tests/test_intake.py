"""Real-world intake: public models read out of package wheels import and agree with their
own runtime (LiteRT for .tflite, onnxruntime on the original for .onnx) on a photograph.

The wheels (MediaPipe 0.10.21, rapidocr-onnxruntime, and scikit-image for its photographs)
are downloaded once with ``pip download --no-deps`` into ~/.cache/edgeloop-tests and read
with zipfile; nothing is installed from them and nothing is committed. Without the package
index the tests skip with the reason, except under CI, where they fail.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeloop import graph
from edgeloop.errors import EdgeloopError, UnsupportedOperatorError, UsageError
from edgeloop.frontends import load_file
from edgeloop.shapes import fix_input_shapes, parse_input_shapes, using_input_shapes

CACHE = Path.home() / ".cache" / "edgeloop-tests"

MEDIAPIPE = "mediapipe==0.10.21"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
SKIMAGE = "scikit-image==0.26.0"

# The 14 .tflite models inside the MediaPipe 0.10.21 wheel, and what each one needs.
MEDIAPIPE_MODELS = [
    "face_detection/face_detection_short_range.tflite",
    "face_detection/face_detection_full_range_sparse.tflite",  # sparse weights, DENSIFY
    "face_landmark/face_landmark.tflite",                      # PRELU
    "face_landmark/face_landmark_with_attention.tflite",       # MediaPipe-only custom ops
    "hand_landmark/hand_landmark_full.tflite",
    "hand_landmark/hand_landmark_lite.tflite",
    "holistic_landmark/hand_recrop.tflite",                    # PRELU, STRIDED_SLICE
    "iris_landmark/iris_landmark.tflite",                      # PRELU
    "palm_detection/palm_detection_full.tflite",               # PRELU, RESIZE_BILINEAR
    "palm_detection/palm_detection_lite.tflite",
    "pose_detection/pose_detection.tflite",                    # sparse, DEPTH_TO_SPACE
    "pose_landmark/pose_landmark_full.tflite",                 # RESIZE_BILINEAR
    "selfie_segmentation/selfie_segmentation.tflite",          # HARD_SWISH, MUL, custom
    "selfie_segmentation/selfie_segmentation_landscape.tflite",  # transposed conv
]
# Landmarks2TransformMatrix, TransformTensorBilinear and TransformLandmarks exist only in
# MediaPipe's own C++ resolver: LiteRT cannot run that model either, so there is nothing to
# agree with; the importer names the operator.
NOT_IMPORTABLE = {"face_landmark/face_landmark_with_attention.tflite": "Landmarks2TransformMatrix"}


def _wheel(spec: str) -> Path:
    """The cached wheel of ``spec`` (name==version), downloaded on first use."""
    name = spec.split("==")[0].replace("-", "_")
    version = spec.split("==")[1]
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                           "--disable-pip-version-check", "-d", str(CACHE), spec],
                          capture_output=True, text=True, timeout=900)
    found = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
    if proc.returncode or not found:
        last = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
        msg = f"cannot download {spec} from the package index: {last}"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI reaches the index: never skip there
        pytest.skip(msg)
    return found[0]


@pytest.fixture(scope="module")
def mediapipe_wheel() -> zipfile.ZipFile:
    return zipfile.ZipFile(_wheel(MEDIAPIPE))


@pytest.fixture(scope="module")
def rapidocr_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rapidocr")
    with zipfile.ZipFile(_wheel(RAPIDOCR)) as z:
        for member in z.namelist():
            if member.endswith(".onnx"):
                (out / Path(member).name).write_bytes(z.read(member))
    return out


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """scikit-image's astronaut photograph, RGB uint8 [512, 512, 3]."""
    from PIL import Image

    with zipfile.ZipFile(_wheel(SKIMAGE)) as z:
        data = z.read("skimage/data/astronaut.png")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _resized(photo: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR), np.float32)


def _rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


# ----- MediaPipe .tflite models against LiteRT ------------------------------------------------


@pytest.mark.parametrize("member", MEDIAPIPE_MODELS, ids=[Path(m).stem for m in MEDIAPIPE_MODELS])
def test_mediapipe_model_imports_and_agrees_with_litert(mediapipe_wheel, photo, tmp_path, member):
    from wheel_assets import litert_interpreter

    path = tmp_path / Path(member).name
    path.write_bytes(mediapipe_wheel.read("mediapipe/modules/" + member))
    if member in NOT_IMPORTABLE:
        with pytest.raises(UnsupportedOperatorError) as info:
            load_file(path)
        assert f"TFLite custom operator {NOT_IMPORTABLE[member]} is not supported" in str(info.value)
        return
    model = load_file(path)
    onnx.checker.check_model(model, full_check=True)
    interp = litert_interpreter(path)
    inp = interp.get_input_details()[0]
    assert inp["dtype"] == np.float32
    h, w = (int(d) for d in inp["shape"][1:3])
    x = (_resized(photo, h, w) / 127.5 - 1.0)[None]  # MediaPipe's [-1, 1] input range
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    got = graph.run(model, x)
    outs = interp.get_output_details()
    assert len(got) == len(outs)
    for k, o in enumerate(outs):
        ref = interp.get_tensor(o["index"])
        assert got[k].shape == ref.shape, o["name"]
        assert _rel_error(got[k], ref) <= 1e-3, (o["name"], _rel_error(got[k], ref))
    # the sparse weights were densified, and the graph says which initializers they became
    sparse = graph.get_metadata(model).get("sparse_initializers")
    if "sparse" in member or "pose_detection" in member:
        inits = {t.name for t in model.graph.initializer}
        assert sparse and set(sparse) <= inits
        entry = next(iter(sparse.values()))
        assert entry["format"] == "tflite_sparsity" and 0 < entry["nonzeros"] < entry["size"]
    else:
        assert sparse is None


# ----- --input-shape on PaddleOCR's models (rapidocr-onnxruntime) ------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True, text=True,
                          timeout=300)


def _ocr_crop(photo: np.ndarray, h: int, w: int) -> np.ndarray:
    """A crop of the photograph as PaddleOCR feeds it: NCHW, (x / 255 - 0.5) / 0.5."""
    x = _resized(photo[100:228, 0:512], h, w) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


def test_direction_classifier_needs_and_takes_an_input_shape(rapidocr_dir, photo, tmp_path):
    cls = rapidocr_dir / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    original = onnx.load(str(cls))
    assert "Shape" in {n.op_type for n in original.graph.node}
    # without a shape: one line that says how to give one
    proc = _cli("profile", str(cls), "--json", "--no-latency")
    assert proc.returncode == 2 and "--input-shape" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    out = tmp_path / "cls.onnx"
    proc = _cli("convert", str(cls), "--input-shape", "x=1x3x48x192", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    fixed = onnx.load(str(out))
    assert graph.tensor_shape(fixed.graph.input[0]) == [1, 3, 48, 192]
    assert graph.get_metadata(fixed)["input_shapes"] == {"x": [1, 3, 48, 192]}
    ops = {n.op_type for n in fixed.graph.node}
    assert not ops & {"Shape", "Gather", "Slice", "Concat", "Cast"}  # the shape math is folded
    assert "HardSigmoid" in ops

    x = _ocr_crop(photo, 48, 192)
    want = graph.session(original).run(None, {"x": x})[0]
    got = graph.run(fixed, x)[0]
    assert _rel_error(got, want) <= 1e-5

    prof = _cli("profile", str(out), "--json", "--no-latency")
    assert prof.returncode == 0, prof.stderr
    doc = json.loads(prof.stdout)
    assert doc["macs"] > 1_000_000 and doc["peak_ram_bytes"] > 0
    # profile takes the option itself too, and gives the same numbers
    direct = _cli("profile", str(cls), "--input-shape", "x=1x3x48x192", "--json", "--no-latency")
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["macs"] == doc["macs"]


def test_text_detector_with_input_shape_agrees_with_onnxruntime(rapidocr_dir, photo):
    det = rapidocr_dir / "ch_PP-OCRv4_det_infer.onnx"
    with using_input_shapes(["x=1x3x96x128"]):
        fixed = load_file(det)
    assert "Resize" in {n.op_type for n in fixed.graph.node}
    x = _ocr_crop(photo, 96, 128)
    want = graph.session(onnx.load(str(det))).run(None, {"x": x})[0]
    got = graph.run(fixed, x)[0]
    assert got.shape == (1, 1, 96, 128)
    assert _rel_error(got, want) <= 1e-5
    from edgeloop.profile import profile_model

    prof = profile_model(fixed, latency=False)
    assert prof["macs"] > 10_000_000 and prof["peak_ram_bytes"] > 0
    assert [layer["macs"] for layer in prof["layers"] if layer["op"] == "Resize"] == [0] * 6  # nearest


@pytest.mark.parametrize("mode,per_output", [("nearest", 0), ("linear", 4), ("cubic", 16)])
def test_resize_macs(mode, per_output):
    """Resizing H and W: nearest moves values, linear weighs 2x2 inputs, cubic 4x4."""
    from onnx import helper

    from edgeloop.profile.macs import count_macs

    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode=mode)
    shapes = {"x": (1, 8, 6, 7), "y": (1, 8, 12, 21)}
    assert count_macs(node, shapes) == 8 * 12 * 21 * per_output


def test_export_takes_the_input_shape(rapidocr_dir, tmp_path):
    cls = rapidocr_dir / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    out = tmp_path / "c"
    proc = _cli("export", str(cls), "--target", "stm32h743", "--input-shape", "x=1x3x48x192",
                "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.c").is_file()
    bad = _cli("export", str(cls), "--target", "stm32h743", "--input-shape", "y=1x3x48x192",
               "-o", str(tmp_path / "c2"))
    assert bad.returncode == 2 and "no input 'y'" in bad.stderr and not (tmp_path / "c2").exists()


# ----- the option itself ----------------------------------------------------------------------


def test_parse_input_shapes():
    assert parse_input_shapes(["x=1x3x48x192", "mask = 1X1x4"]) == {"x": [1, 3, 48, 192],
                                                                     "mask": [1, 1, 4]}
    assert parse_input_shapes(None) == {}
    for bad, words in [("x", "expected NAME=DIMS"), ("x=1x-3", "expected NAME=DIMS"),
                       ("x=1x0x3", "positive"), ("=1x3", "expected NAME=DIMS")]:
        with pytest.raises(UsageError) as info:
            parse_input_shapes([bad])
        assert words in str(info.value) and bad in str(info.value)
    with pytest.raises(UsageError, match="given twice"):
        parse_input_shapes(["x=1", "x=2"])


def _dynamic_model() -> onnx.ModelProto:
    """y = Reshape(x, Concat(Shape(x)[0:1], [-1])): a flatten whose target shape is computed."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])]
    g = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       ["n", 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", None])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_fix_input_shapes_folds_and_checks():
    m = _dynamic_model()
    fixed = fix_input_shapes(m, {"x": [2, 3, 4, 5]})
    assert [n.op_type for n in fixed.graph.node] == ["Reshape", "Relu"]
    assert graph.tensor_shape(fixed.graph.output[0]) == [2, 60]
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(graph.run(fixed, x)[0], np.maximum(x.reshape(2, -1), 0))
    for shapes, words in [({"y": [1, 3, 4, 5]}, "no input 'y'"),
                          ({"x": [1, 3, 4]}, "has 4 dimensions"),
                          ({"x": [1, 4, 4, 5]}, "dimension 3 at position 1")]:
        with pytest.raises(EdgeloopError, match=words):
            fix_input_shapes(m, shapes)


def test_input_shape_in_every_command_help():
    from typer.testing import CliRunner

    from edgeloop.cli import app

    for command in ("convert", "profile", "shrink", "export"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--input-shape" in result.output, command


def test_recurrent_macs():
    """An LSTM or GRU reads every input and recurrent weight once per time step."""
    from onnx import helper

    from edgeloop.profile.macs import count_macs

    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=16)
    shapes = {"x": (7, 2, 10), "w": (1, 64, 10), "r": (1, 64, 16), "y": (7, 1, 2, 16)}
    assert count_macs(lstm, shapes) == 7 * 2 * (64 * 10 + 64 * 16)
    gru = helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=16, direction="bidirectional")
    shapes = {"x": (7, 2, 10), "w": (2, 48, 10), "r": (2, 48, 16), "y": (7, 2, 2, 16)}
    assert count_macs(gru, shapes) == 7 * 2 * (2 * 48 * 10 + 2 * 48 * 16)
