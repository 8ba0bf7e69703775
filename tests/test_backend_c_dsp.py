"""The Cortex-M4 DSP paths of the int8 kernels (SMLAD on SXTB16-unpacked bytes, under
``__ARM_FEATURE_DSP``) are bit-exact: the MLPerf Tiny models' generated C, cross-compiled
for the Cortex-M4 and run on QEMU, gives the host build's outputs (the portable loops),
which are TFLite Micro's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeloop.backends.c import CModel, compile_shared, cortexm, generate

sys.path.insert(0, str(Path(__file__).parent))
from test_frontend_tflite import ad_quantize, ad_windows, kws_input, tflm

TOOLS = cortexm.toolchain()


@pytest.fixture(autouse=True)
def _toolchain():
    if TOOLS["missing"]:
        msg = f"Cortex-M toolchain missing: {TOOLS['missing']} ({TOOLS['install']})"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI installs it (.ci/run): never skip there
        pytest.skip(msg)


def _objdump_has_smlad(work: Path) -> bool:
    objdump = str(TOOLS["gcc"]).replace("gcc", "objdump")
    text = "".join(subprocess.run([objdump, "-d", str(o)], capture_output=True, text=True,
                                  check=True).stdout for o in (work / "model").glob("*.o"))
    return "smlad" in text and "sxtb16" in text


def _run_both(mlperf_dir: Path, name: str, inputs: list[np.ndarray], tmp: Path):
    from edgeloop.frontends.tflite import load_tflite

    model = load_tflite(mlperf_dir / f"{name}.tflite")
    out = tmp / "c"
    info = generate(model, out, "model")
    host = CModel(compile_shared(out, "model", opt="-O2"), info)
    host_out = [host.run(x) for x in inputs]
    interp = tflm(mlperf_dir / f"{name}.tflite")
    for x, y in zip(inputs, host_out):                  # the host build is TFLite Micro's
        interp.set_input(x, 0)
        interp.invoke()
        np.testing.assert_array_equal(y, interp.get_output(0))
    work = tmp / "m4"
    rep = cortexm.verify(out, "model", info, inputs, host_out, work_dir=work)
    assert _objdump_has_smlad(work)                     # the DSP path is the one compiled
    return host_out, rep


def test_kws_dsp_bit_exact_on_cortex_m4(mlperf_dir, tmp_path):
    x = kws_input(mlperf_dir)
    rng = np.random.default_rng(1)
    perturbed = [np.clip(x.astype(np.int64) + rng.integers(-40, 41, x.shape), -128, 127).astype(np.int8)
                 for _ in range(2)]
    host_out, rep = _run_both(mlperf_dir, "kws_ref_model", [x] + perturbed, tmp_path)
    expected = np.full((1, 12), -128, np.int8)
    expected[0, 5] = 127
    np.testing.assert_array_equal(host_out[0], expected)       # the README's golden result
    assert rep["outputs_match"] and rep["matches"] == 3         # bit for bit on the M4


def test_ad_dsp_bit_exact_on_cortex_m4(mlperf_dir, tmp_path):
    windows = ad_windows(mlperf_dir)
    inputs = [ad_quantize(windows[i]) for i in (0, 37, 101, 150, 195)]
    host_out, rep = _run_both(mlperf_dir, "ad01_int8", inputs, tmp_path)
    assert rep["outputs_match"] and rep["matches"] == len(inputs)
    assert len({y.tobytes() for y in host_out}) == len(inputs)  # real, distinct outputs


def _odd_tflite_net(dw_act=None):
    """Odd sizes for every DSP loop's tail: a one-channel 3x5 convolution (rows of 4 taps
    plus one), a stride-2 3x3 depthwise, a 5x4 convolution over 6 channels, a 1x1 from 7
    to 5 channels (groups of 4 plus 3, an odd number of outputs), a fully-connected layer
    with K = 210 and 7 outputs; SAME padding everywhere, so borders too."""
    from test_frontend_tflite import Tiny

    rng = np.random.default_rng(3)
    tensors = {
        "x": (1, 12, 13, 1),
        "w0": rng.normal(0, 0.5, (6, 3, 5, 1)), "b0": rng.normal(0, 0.2, 6), "a": (1, 12, 13, 6),
        "w1": rng.normal(0, 0.5, (1, 3, 3, 6)), "b1": rng.normal(0, 0.2, 6), "d": (1, 6, 7, 6),
        "w2": rng.normal(0, 0.3, (7, 5, 4, 6)), "b2": rng.normal(0, 0.2, 7), "e": (1, 6, 7, 7),
        "w3": rng.normal(0, 0.4, (5, 1, 1, 7)), "b3": rng.normal(0, 0.2, 5), "f": (1, 6, 7, 5),
        "r": (1, 210), "w4": rng.normal(0, 0.1, (7, 210)), "b4": rng.normal(0, 0.2, 7),
        "out": (1, 7),
    }
    ops = [
        ("CONV_2D", ["x", "w0", "b0"], "a", {"padding": "SAME", "stride": 1, "act": "RELU"}),
        ("DEPTHWISE_CONV_2D", ["a", "w1", "b1"], "d", {"padding": "SAME", "stride": 2, "multiplier": 1,
                                                       **({"act": dw_act} if dw_act else {})}),
        ("CONV_2D", ["d", "w2", "b2"], "e", {"padding": "SAME", "stride": 1}),
        ("CONV_2D", ["e", "w3", "b3"], "f", {"padding": "SAME", "stride": 1, "act": "RELU6"}),
        ("RESHAPE", ["f"], "r", {"shape": [1, 210]}),
        ("FULLY_CONNECTED", ["r", "w4", "b4"], "out", {}),
    ]
    return Tiny(["x"], tensors, ops, ["out"], {"w0": 0, "w1": 3, "w2": 0, "w3": 0, "w4": 0})


def test_odd_sizes_dsp_tails_bit_exact(tmp_path):
    from edgeloop.frontends.tflite import load_tflite

    tiny = _odd_tflite_net()
    rng = np.random.default_rng(11)
    quant = tiny.calibrate(tiny.build(), [rng.normal(0, 2, (1, 12, 13, 1)).astype(np.float32)], False)
    data = tiny.build(quant)
    path = tmp_path / "odd.tflite"
    path.write_bytes(data)
    model = load_tflite(path)
    out = tmp_path / "c"
    info = generate(model, out, "model")
    # every layer runs a fast kernel of backends/c/fast.py (odd tails: 6 -> 7 -> 5
    # channels, a stride-2 depthwise at an odd width, K = 210, 7 units)
    assert {"fast_dw3x3_s8", "fast_conv_s8_3x5s1x1", "fast_conv_s8_5x4s1x1", "fast_conv_s8_1x1s1x1",
            "fast_fc_s8"} <= set(info["kernels"])
    host = CModel(compile_shared(out, "model", opt="-O2"), info)
    s, z = quant["x"]
    inputs = [np.clip(np.round(rng.normal(0, 2, (1, 12, 13, 1)) / s) + z, -128, 127).astype(np.int8)
              for _ in range(4)]
    host_out = [host.run(x) for x in inputs]
    interp = tflm(data)
    for x, y in zip(inputs, host_out):
        interp.set_input(x, 0)
        interp.invoke()
        np.testing.assert_array_equal(y, interp.get_output(0))   # TFLite Micro, bit for bit
    assert len({y.tobytes() for y in host_out}) == len(inputs)
    work = tmp_path / "m4"
    rep = cortexm.verify(out, "model", info, inputs, host_out, work_dir=work)
    assert _objdump_has_smlad(work)
    assert rep["outputs_match"] and rep["matches"] == len(inputs)


def test_narrow_activation_ranges_bit_exact_on_cortex_m4(tmp_path):
    """Activation clamps narrower than int8 (the fast kernels' SSAT-then-compare path):
    a ReLU output whose zero point is above -128 (lo > -128) and ReLU6 outputs whose
    scale puts 6 below 127 (hi < 127), on a 3x5 conv, the depthwise and a 1x1. The fast
    kernels (Cortex-M4 and their portable build) give the generic kernels' outputs."""
    from edgeloop.frontends.tflite import load_tflite

    tiny = _odd_tflite_net(dw_act="RELU6")
    rng = np.random.default_rng(4)
    quant = tiny.calibrate(tiny.build(), [rng.normal(0, 2, (1, 12, 13, 1)).astype(np.float32)], False)
    quant["a"] = (quant["a"][0], -100)          # lo = -100
    quant["d"] = (12 / 255, -128)               # ReLU6 up to 6: hi = -1
    quant["f"] = (10 / 255, -128)               # hi = 25
    path = tmp_path / "narrow.tflite"
    path.write_bytes(tiny.build(quant))
    model = load_tflite(path)
    out = tmp_path / "c"
    info = generate(model, out, "model")
    assert {"fast_dw3x3_s8", "fast_conv_s8_3x5s1x1", "fast_conv_s8_1x1s1x1"} <= set(info["kernels"])
    text = (out / "model.c").read_text()
    assert ", -100, 127," in text and ", -128, -1," in text and ", -128, 25," in text
    host = CModel(compile_shared(out, "model", opt="-O2"), info)
    portable = CModel(compile_shared(out, "model", opt="-O2", fast=True), info)
    s, z = quant["x"]
    inputs = [np.clip(np.round(rng.normal(0, 2, (1, 12, 13, 1)) / s) + z, -128, 127).astype(np.int8)
              for _ in range(3)]
    host_out = [host.run(x) for x in inputs]
    for x, y in zip(inputs, host_out):
        np.testing.assert_array_equal(portable.run(x), y)
    assert len({y.tobytes() for y in host_out}) == len(inputs)
    rep = cortexm.verify(out, "model", info, inputs, host_out, work_dir=tmp_path / "m4")
    assert rep["outputs_match"] and rep["matches"] == len(inputs)
