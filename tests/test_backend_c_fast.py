"""The fast int8 kernels of backends/c/fast.py (im2col + 2x2 SMLAD tiles for Conv, the
fully-connected and the same-shape Add kernels) on odd shapes: channel counts that are
not multiples of 4 or 2, asymmetric SAME padding at stride 2, a 1x1 stride-2 shortcut
into a residual Add, an odd output width, fully-connected tails of 1-3 units. Bit-exact
against TFLite Micro on the host build and against the host build on the emulated
Cortex-M4, and the per-layer instruction profile of the verify step."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeloop.backends.c import CModel, compile_shared, cortexm, fast, generate, reference
from edgeloop.backends.c.lower import lower

sys.path.insert(0, str(Path(__file__).parent))
from test_frontend_tflite import Tiny, tflm

TOOLS = cortexm.toolchain()


def test_weight_layout_round_trip_keeps_the_bytes():
    rng = np.random.default_rng(0)
    for shape in ((7, 5, 3, 3), (6, 3, 3, 3), (5, 7, 1, 1), (1, 2, 1, 3), (64, 16, 3, 3)):
        w = rng.integers(-128, 128, shape).astype(np.int8)
        words = fast.conv_weights(w)
        k = int(np.prod(shape[1:]))
        assert words.dtype == np.int32 and words.nbytes == shape[0] * ((k + 3) & ~3)
        np.testing.assert_array_equal(fast.conv_weights_inverse(words, *shape), w)
        if k % 4 == 0:
            assert words.nbytes == w.nbytes                      # the same flash bytes
    # groups of 4 taps as (t0, t2, t1, t3), two output channels interleaved group by group
    w = np.arange(2 * 4, dtype=np.int8).reshape(2, 4, 1, 1)
    assert fast.conv_weights(w).view(np.int8).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def _fast_rq(x, table):
    """el_fast_rq (fast_conv_s8.h) in numpy, int32 wrap-around and all."""
    t = np.asarray(table, np.int64).reshape(-1, fast.RQ_WORDS)
    m, k, e, sh = (t[:, i:i + 1] for i in range(4))
    wrap = lambda v: ((v + 2 ** 31) % 2 ** 32) - 2 ** 31   # noqa: E731
    xs = wrap(np.asarray(x, np.int64) << sh)
    h = (xs * m + 2 ** 31) >> 32                            # SMMULR
    return wrap(k + 2 * h + (h >> 31)) >> e


def test_rq_table_is_tflite_requantization():
    # every shift from a left shift of 3 to a right shift of 20 (0 too: no rounding),
    # accumulators up to the export-time bound, against reference.mbqm (TFLite's)
    rng = np.random.default_rng(2)
    shift = np.arange(-20, 4, dtype=np.int32)
    mult = rng.integers(2 ** 30, 2 ** 31 - 1, shift.size).astype(np.int32)
    bound = (2 ** 29 >> np.maximum(shift, 0)) - 1
    table = fast.rq_table(mult, shift, -7, bound)
    assert table is not None and table.size == fast.RQ_WORDS * shift.size
    x = np.concatenate([rng.integers(-b, b + 1, 4000)[None] for b in bound]).astype(np.int64)
    x[:, :4] = np.stack([bound, -bound, bound // 3, -(bound // 3) - 1], axis=1)  # extremes
    x[:, 4:8] = np.arange(-2, 2)   # small values: the rounding of halves
    got = _fast_rq(x, table)
    want = np.stack([reference.mbqm(x[i], mult[i], shift[i]) for i in range(shift.size)]) - 7
    np.testing.assert_array_equal(got, want)
    # the table gives the multipliers, shifts and zero point back
    assert fast.rq_params(table)[0].tolist() == mult.tolist()
    assert fast.rq_params(table)[1].tolist() == shift.tolist() and fast.rq_params(table)[2] == -7
    # an accumulator that could overflow the 32-bit form is refused (the layer stays generic)
    assert fast.rq_table(mult[:1], shift[:1], 0, 2 ** 30) is None
    assert fast.rq_table([2 ** 30], [2], 0, 2 ** 28) is None


def test_add_table_round_trip_and_lookup():
    q = np.array([-3, 5, -128, 1518500250, -1, 1073741824, 0, 1800000000, -19, -128, 127], np.int32)
    t = fast.add_table(q)
    np.testing.assert_array_equal(fast.add_params(t), q)
    v = np.arange(-128, 128)
    np.testing.assert_array_equal(t[16:272], reference.mbqm((v - q[0]).astype(np.int64) << 20, q[3], q[4]))
    # the sum's rescale on the table's values is TFLite's
    s = t[16:272][:, None].astype(np.int64) + t[272:528][None, :]
    np.testing.assert_array_equal(_fast_rq(s.ravel()[None], t[12:16])[0],
                                  reference.mbqm(s.ravel(), q[7], q[8]) + q[2])


def _residual_net():
    """32 -> 5 channels: a 3x3 stride-2 SAME conv (padding only bottom/right), a 3x3
    stride-1 conv to 7 channels, a 1x1 stride-2 shortcut, a residual Add, an odd 7-wide
    map, then fully connected to 7 units (a block of 4, a pair and an odd last one) and,
    too small for the fast kernel (under 1024 weights), to 5 by fc_s8."""
    rng = np.random.default_rng(5)
    t = {
        "x": (1, 14, 14, 5),
        "w0": rng.normal(0, 0.3, (7, 3, 3, 5)), "b0": rng.normal(0, 0.2, 7), "a": (1, 7, 7, 7),
        "w1": rng.normal(0, 0.3, (7, 3, 3, 7)), "b1": rng.normal(0, 0.2, 7), "c": (1, 7, 7, 7),
        "w2": rng.normal(0, 0.4, (7, 1, 1, 5)), "b2": rng.normal(0, 0.2, 7), "s": (1, 7, 7, 7),
        "y": (1, 7, 7, 7), "r": (1, 343),
        "w3": rng.normal(0, 0.1, (7, 343)), "b3": rng.normal(0, 0.2, 7), "f": (1, 7),
        "w4": rng.normal(0, 0.3, (5, 7)), "b4": rng.normal(0, 0.2, 5), "out": (1, 5),
    }
    ops = [
        ("CONV_2D", ["x", "w0", "b0"], "a", {"padding": "SAME", "stride": 2, "act": "RELU"}),
        ("CONV_2D", ["a", "w1", "b1"], "c", {"padding": "SAME", "stride": 1}),
        ("CONV_2D", ["x", "w2", "b2"], "s", {"padding": "SAME", "stride": 2}),
        ("ADD", ["c", "s"], "y", {"act": "RELU"}),
        ("RESHAPE", ["y"], "r", {"shape": [1, 343]}),
        ("FULLY_CONNECTED", ["r", "w3", "b3"], "f", {"act": "RELU"}),
        ("FULLY_CONNECTED", ["f", "w4", "b4"], "out", {}),
    ]
    return Tiny(["x"], t, ops, ["out"], {"w0": 0, "w1": 0, "w2": 0, "w3": 0, "w4": 0})


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    from edgeloop.frontends.tflite import load_tflite

    tmp = tmp_path_factory.mktemp("fast")
    tiny = _residual_net()
    rng = np.random.default_rng(7)
    quant = tiny.calibrate(tiny.build(), [rng.normal(0, 1, (1, 14, 14, 5)).astype(np.float32)], False)
    data = tiny.build(quant)
    (tmp / "net.tflite").write_bytes(data)
    model = load_tflite(tmp / "net.tflite")
    out = tmp / "c"
    info = generate(model, out, "model")
    s, z = quant["x"]
    inputs = [np.clip(np.round(rng.normal(0, 1, (1, 14, 14, 5)) / s) + z, -128, 127).astype(np.int8)
              for _ in range(3)]
    return model, data, out, info, inputs


def test_fast_kernels_bit_exact_with_tflite_micro(residual):
    model, data, out, info, inputs = residual
    # the residual Add runs fused into the second 3x3 convolution (over the skip tensor)
    assert {"fast_conv_s8_3x3s2x2", "fast_conv_s8_3x3s1x1", "fast_conv_s8_1x1s2x2", "conv_s8_res",
            "fast_fc_s8", "fast_transpose8"} <= set(info["kernels"])
    # the generic kernels are compiled only where the DSP extension is missing: every layer
    # of the Cortex-M build runs a fast kernel (the fused one too)
    assert all(r["kernel"].startswith("fast_") for r in info["layers"]
               if r["op"] in ("Conv", "Conv+Add", "Transpose")), info["layers"]
    assert "Conv+Add" in {r["op"] for r in info["layers"]}
    host = CModel(compile_shared(out, "model", opt="-O2", fast=True), info)
    low = lower(model)
    interp = tflm(data)
    outs = []
    for x in inputs:
        y = host.run(x)
        interp.set_input(x, 0)
        interp.invoke()
        np.testing.assert_array_equal(y, interp.get_output(0))       # TFLite Micro, bit for bit
        np.testing.assert_array_equal(y, reference.run(low, x)[0])   # the numpy reference
        outs.append(y)
    assert len({y.tobytes() for y in outs}) == len(inputs)


def test_fast_kernels_on_cortex_m4_with_layer_profile(residual, tmp_path):
    if TOOLS["missing"]:
        msg = f"Cortex-M toolchain missing: {TOOLS['missing']} ({TOOLS['install']})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    model, data, out, info, inputs = residual
    host = CModel(compile_shared(out, "model", opt="-O2"), info)
    expected = [host.run(x) for x in inputs]
    rep = cortexm.verify(out, "model", info, inputs, expected, work_dir=tmp_path, profile_layers=True)
    assert rep["outputs_match"] and rep["matches"] == len(inputs)
    layers = rep["layers"]
    assert [r["kernel"] for r in layers] == [c["kernel"] for c in info["layers"]]
    convs = [r for r in layers if r["op"] in ("Conv", "Conv+Add")]
    # the shortcut 1x1 runs before the second 3x3, which is fused with the residual Add
    assert [r["macs"] for r in convs] == [7 * 7 * 7 * 45, 7 * 7 * 7 * 5, 7 * 7 * 7 * 63]
    assert convs[2]["op"] == "Conv+Add"
    assert all(r["instructions"] > 0 for r in layers)
    # the marks add nothing to the layers: their sum is the whole run minus the input
    # copy, call and return (a few hundred instructions)
    total = rep["instructions_per_inference"]
    assert 0 < total - sum(r["instructions"] for r in layers) < 0.02 * total
    # the 2x2 SMLAD tiles on these tiny 7-channel maps (the generic conv_s8 spends 8-10
    # instructions per MAC on such layers)
    assert all(r["instructions_per_mac"] < 6 for r in convs[::2]), [r["instructions_per_mac"] for r in convs]


def test_export_verify_reports_instructions_per_layer(residual, tmp_path):
    import json
    import subprocess

    if TOOLS["missing"]:
        msg = f"Cortex-M toolchain missing: {TOOLS['missing']} ({TOOLS['install']})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    _, data, _, _, _ = residual
    (tmp_path / "net.tflite").write_bytes(data)

    def export(out, *extra):
        return subprocess.run([sys.executable, "-m", "edgeloop", "export", str(tmp_path / "net.tflite"),
                               "--target", "stm32l4r5", "-o", str(tmp_path / out), "--verify", *extra],
                              capture_output=True, text=True, timeout=300)

    r = export("j", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verify"]
    assert v["outputs_match"] is True and v["instructions_per_inference"] > 0
    ops = [row["op"] for row in v["layers"]]
    assert ops.count("Conv") == 2 and ops.count("Conv+Add") == 1 and ops.count("Gemm") == 2
    assert set(v["layers"][0]) == {"name", "op", "kernel", "macs", "instructions", "instructions_per_mac"}
    assert sum(row["instructions"] for row in v["layers"]) < v["instructions_per_inference"]
    t = export("t")
    assert t.returncode == 0, t.stderr
    assert "instructions per layer" in t.stdout and "fast_conv_s8_3x3s2x2" in t.stdout
