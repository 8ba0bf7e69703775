"""`export --verify` emulates the target's own core: a Cortex-M7 target on QEMU's
mps2-an500 with the M7's FPU flags, an M4 on mps2-an386, an M3 on mps2-an385 (soft float,
no DSP kernels); a target whose core QEMU lacks says so in one line. A detector's
``<prefix>_detect`` runs on the emulated core and its boxes (and keypoints) equal the numpy
decoder's bit for bit on int8, with instructions per frame for inference and decode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.backends.c import CModel, compile_shared, cortexm
from edgeloop.backends.c.codegen import generate
from edgeloop.detect import attach_head, head_of
from edgeloop.runtime import detect as rd

TOOLS = cortexm.toolchain()


@pytest.fixture
def toolchain():
    if TOOLS["missing"]:
        msg = f"Cortex-M toolchain missing: {TOOLS['missing']} ({TOOLS['install']})"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI installs it (.ci/run): never skip there
        pytest.skip(msg)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True)


def tiny_yolo(tmp_path):
    """The 8 x 8 YOLOv8-style net of the C detection tests, quantized to int8: small and
    quick on every core."""
    from test_backend_c_detect import images, quantize, yolo_model

    model = yolo_model("yolov8")
    q = quantize(model, [x for x, _ in images(head_of(model)).values()], tmp_path / "yolo_int8.onnx")
    return tmp_path / "yolo_int8.onnx", q


# ---------------------------------------------------------------- each catalogue core

@pytest.mark.parametrize("target, core, board, fpu", [
    ("stm32h743", "cortex-m7", "mps2-an500", "fpv5-d16"),      # M7 with a double-precision FPU
    ("stm32f746", "cortex-m7", "mps2-an500", "fpv5-sp-d16"),   # M7 with a single-precision FPU
    ("stm32l4r5", "cortex-m4", "mps2-an386", "fpv4-sp-d16"),
])
def test_export_verify_runs_on_the_targets_own_core(target, core, board, fpu, tmp_path, toolchain):
    path, _ = tiny_yolo(tmp_path)
    r = cli("export", path, "--target", target, "-o", tmp_path / "out", "--verify", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verify"]
    assert v["available"], v
    assert (v["core"], v["board"], v["fpu"]) == (core, board, fpu)
    assert f"-mcpu={core}" in v["cpu_flags"] and f"-mfpu={fpu}" in v["cpu_flags"]
    assert v["el_fast"] is True and v["dsp"] is True    # the DSP kernels are on for M4/M7
    assert v["outputs_match"] is True and v["instructions_per_inference"] > 1000
    saved = json.loads((tmp_path / "out" / "report.json").read_text())["verify"]
    assert saved["core"] == core and saved["board"] == board
    if target == "stm32h743":   # the text report names the core and the board (one case: it re-runs QEMU)
        r = cli("export", path, "--target", target, "-o", tmp_path / "out", "--verify")
        assert r.returncode == 0, r.stderr
        assert f"{core} on QEMU {board}" in " ".join(r.stdout.split())


def test_cortex_m3_runs_soft_float_without_dsp_kernels(tmp_path, toolchain):
    _, q = tiny_yolo(tmp_path)
    core, why = cortexm.core_for(SimpleNamespace(id="lpc1768", arch="cortex-m3", core="Arm Cortex-M3"))
    assert why is None and core.board == "mps2-an385" and core.fpu is None
    info = generate(q, tmp_path / "c", "model")
    cm = CModel(compile_shared(tmp_path / "c", "model"), info)
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, 1, info["inputs"][0]["shape"]).astype(info["inputs"][0]["dtype"]) for _ in range(2)]
    m3 = cortexm.verify(tmp_path / "c", "model", info, xs, [cm.run(x) for x in xs], core=core)
    assert (m3["core"], m3["board"], m3["float_abi"]) == ("cortex-m3", "mps2-an385", "soft")
    assert m3["el_fast"] is False and "-mfloat-abi=soft" in m3["cpu_flags"]
    assert m3["outputs_match"] is True
    # the same model on the M4: hardware float and DSP kernels take fewer instructions
    m4 = cortexm.verify(tmp_path / "c", "model", info, xs, [cm.run(x) for x in xs])
    assert m4["core"] == "cortex-m4" and m4["instructions_per_inference"] < m3["instructions_per_inference"]


def test_cortex_m0plus_target_says_which_core_is_emulated(tmp_path, toolchain):
    path, _ = tiny_yolo(tmp_path)
    r = cli("export", path, "--target", "rp2040", "-o", tmp_path / "out", "--verify", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verify"]
    assert v["available"] and v["outputs_match"] is True
    assert v["compiled_for"] == "cortex-m0plus" and "-mcpu=cortex-m0plus" in v["cpu_flags"]
    assert v["core"] == "cortex-m3" and v["board"] == "mps2-an385"   # honest: an M3 runs the v6-M code
    assert "Cortex-M3" in v["core_note"] and v["el_fast"] is False


def test_unsupported_core_skips_verify_with_one_line(tmp_path):
    path = tmp_path / "m.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    r = cli("export", path, "--target", "esp32-s3", "-o", tmp_path / "out", "--verify", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    v = json.loads(r.stdout)["verify"]
    assert v["available"] is False and v["skipped"] is True and v["core"] is None
    assert "Xtensa" in v["reason"] and "QEMU" in v["reason"]
    assert r.stderr.strip().splitlines() == [f"verify skipped: {v['reason']}"]
    core, why = cortexm.core_for(SimpleNamespace(id="esp32-c3", arch="riscv32", core="RISC-V RV32IMC"))
    assert core is None and "RISC-V" in why and "esp32-c3" in why


def test_a_model_too_big_for_the_board_is_a_clear_error(tmp_path, toolchain):
    """Data RAM of the MPS2 boards is 4 MiB: a bigger arena is one line naming the board."""
    d = tmp_path / "big"
    d.mkdir()
    (d / "big.h").write_text("#define BIG_INPUT_SIZE 4\n#define BIG_OUTPUT_SIZE 4\n"
                             "int big_run(const void *input, void *output);\n")
    (d / "big.c").write_text('#include "big.h"\nstatic unsigned char arena[5u << 20];\n'
                             "int big_run(const void *input, void *output)\n"
                             "{ arena[(unsigned)*(const unsigned char *)input] = 1;\n"
                             "  *(unsigned char *)output = arena[7]; return 0; }\n")
    with pytest.raises(cortexm.EdgeloopError) as e:
        cortexm.build_firmware(d, "big", [np.zeros(4, np.uint8)], tmp_path / "w", core=cortexm.CORES["cortex-m7"])
    msg = str(e.value)
    assert "mps2-an500" in msg and "4096 KiB" in msg and "\n" not in msg


# ---------------------------------------------------------------- a detector on the device

TINY_FACE_HEAD = {
    "kind": "ssd_anchors", "labels": ["face"],
    "input": {"layout": "NHWC", "size": [16, 16], "range": [-1.0, 1.0], "resize": "letterbox"},
    "anchors": {"strides": [8], "aspect_ratios": [1.0], "interpolated_scale": True,
                "offset": [0.5, 0.5], "fixed_size": True},
    "boxes": {"output": "regressors", "coords": "cxcywh", "scale": [16, 16, 16, 16], "keypoints": 2},
    "scores": {"output": "classificators", "activation": "sigmoid", "clip": 100},
    "min_score": 0.5, "nms_iou": 0.3,
}


def tiny_face(tmp_path, int8: bool = True):
    """A BlazeFace-shaped int8 detector on a 16 x 16 NHWC image: 2 x 2 cells of 8 pixels,
    2 anchors each, a row of 4 box + 2 keypoints x 2 values per anchor, one sigmoid score."""
    from test_backend_c_detect import images, quantize

    rng = np.random.default_rng(5)
    n = 8
    wr = rng.normal(0, 0.05, (2 * 8, 3, 8, 8)).astype(np.float32)
    br = rng.normal(0, 2.0, 2 * 8).astype(np.float32)
    ws = rng.normal(0, 0.05, (2, 3, 8, 8)).astype(np.float32)
    bs = np.array([1.5, 0.5], np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "wr", "br"], ["r"], strides=[8, 8]),
             helper.make_node("Conv", ["xc", "ws", "bs"], ["s"], strides=[8, 8]),
             helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["s"], ["st"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["rt", "rshape"], ["regressors"]),
             helper.make_node("Reshape", ["st", "sshape"], ["classificators"])]
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"wr": wr, "br": br, "ws": ws, "bs": bs, "rshape": np.array([1, n, 8], np.int64),
              "sshape": np.array([1, n, 1], np.int64)}.items()]
    g = helper.make_graph(nodes, "tiny_face", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 3])],
                          [helper.make_tensor_value_info("regressors", TensorProto.FLOAT, [1, n, 8]),
                           helper.make_tensor_value_info("classificators", TensorProto.FLOAT, [1, n, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    m = attach_head(m, TINY_FACE_HEAD)
    assert rd.anchor_count(head_of(m)) == n
    if not int8:
        onnx.save(m, tmp_path / "face.onnx")
        return tmp_path / "face.onnx", m
    q = quantize(m, [x for x, _ in images(head_of(m)).values()], tmp_path / "face_int8.onnx")
    return tmp_path / "face_int8.onnx", q


def test_detector_boxes_and_keypoints_on_the_m7_equal_numpy(tmp_path, toolchain):
    path, q = tiny_face(tmp_path)
    r = cli("export", path, "--target", "stm32h743", "-o", tmp_path / "out", "--verify", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["detect"]["kind"] == "ssd_anchors" and rep["detect"]["keypoints"] == 2
    h = (tmp_path / "out" / "model.h").read_text()
    assert "float keypoints[2][2]; } model_box_t;" in h and "#define MODEL_NUM_KEYPOINTS 2" in h
    v = rep["verify"]
    assert v["available"] and v["core"] == "cortex-m7" and v["outputs_match"] is True
    d = v["detect"]
    assert d["function"] == "model_detect" and d["boxes_match"] is True, d
    assert d["compared_with"].endswith("float32 bit for bit")
    assert sum(d["boxes"]) >= 2       # real boxes compared, not empty lists
    assert d["inference_instructions_per_frame"] > 1000 and d["decode_instructions_per_frame"] > 100


def test_device_boxes_are_compared_bit_for_bit(tmp_path, toolchain):
    """The comparison itself: one float32 ulp in one keypoint is a mismatch."""
    _, q = tiny_face(tmp_path)
    info = generate(q, tmp_path / "c", "model")
    cm = CModel(compile_shared(tmp_path / "c", "model"), info)
    head = head_of(q)
    rng = np.random.default_rng(1)
    xs = [rng.normal(0, 1, info["inputs"][0]["shape"]).astype(info["inputs"][0]["dtype"]) for _ in range(2)]
    names = [o["name"] for o in info["outputs"]]
    want = []
    for x in xs:
        xyxy, scores, classes, kps = rd.decode_raw(head, dict(zip(names, cm.run_all(x))))
        want.append({"xyxy": xyxy, "scores": scores, "classes": classes, "keypoints": kps})
    assert sum(len(w["xyxy"]) for w in want) >= 2 and want[0]["keypoints"].shape[1:] == (2, 2)
    elf = cortexm.build_firmware(tmp_path / "c", "model", xs, tmp_path / "w", detect=True,
                                 core=cortexm.CORES["cortex-m7-dp"])
    run = cortexm.run_firmware(elf, core=cortexm.CORES["cortex-m7-dp"])
    assert [cortexm._same_boxes(b, w)[0] for b, w in zip(run.detect["boxes"], want)] == [True, True]
    k = next(i for i, w in enumerate(want) if len(w["xyxy"]))
    off = {**want[k], "keypoints": want[k]["keypoints"].astype(np.float32).copy()}
    off["keypoints"][0, 1, 0] = np.nextafter(off["keypoints"][0, 1, 0], np.float32(np.inf))
    ok, why = cortexm._same_boxes(run.detect["boxes"][k], off)
    assert not ok and why == "keypoints values differ"


def test_float_detector_on_the_m4_agrees_within_float_rounding(tmp_path, toolchain):
    """A float head's exp comes from newlib on the device: equal within float rounding, and
    --verify says that is what it checked."""
    path, _ = tiny_face(tmp_path, int8=False)
    r = cli("export", path, "--target", "stm32l4r5", "-o", tmp_path / "out", "--verify", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verify"]
    assert v["core"] == "cortex-m4" and v["outputs_match"] is True
    d = v["detect"]
    assert d["boxes_match"] is True and sum(d["boxes"]) >= 2, d
    assert d["compared_with"].endswith("within float rounding (a float head)")
