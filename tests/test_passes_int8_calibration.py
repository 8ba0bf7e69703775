"""Calibration chosen per tensor by output error (calibration="auto"), and int8 chosen on an autoencoder
wherever onnxruntime's own int8 would meet --max-drop."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from torch_train import digits_cnn  # noqa: E402


@pytest.fixture(scope="module")
def cnn():
    return digits_cnn(128)


def _fidelity(model, q, x):
    from edgeloop.search.unlabelled import evaluate_unlabelled, outputs_flat

    return evaluate_unlabelled(q, x, outputs_flat(model, x), "fidelity")


def test_per_tensor_calibration_beats_every_global_method_and_is_recorded(cnn):
    from edgeloop.graph import get_metadata
    from edgeloop.passes import Int8Static, PassData, apply_pass, apply_recipe

    model, calib, unseen = cnn
    data = PassData(x_calib=calib)
    glob = {m: _fidelity(model, apply_pass(model, Int8Static(calibration=m), data), calib)
            for m in ("minmax", "percentile", "entropy", "mse")}
    auto = apply_pass(model, Int8Static(calibration="auto"), data)
    meta = get_metadata(auto)
    chosen = _fidelity(model, auto, calib)
    # on the calibration samples, where it chooses: at most the best single method's error
    assert chosen <= min(glob.values()) * (1 + 1e-6), (chosen, glob)
    info = meta["int8_calibration"]
    assert set(info["calib_error_global"]) == {"minmax", "percentile", "entropy", "mse"}
    assert info["calib_error_chosen"] <= min(info["calib_error_global"].values())
    # every choice is in the recipe: the base method, and each tensor or weight that differs from it
    step = meta["recipe"][-1]
    assert step["pass"] == "int8_static" and step["config"]["calibration"] == "auto"
    choices = step["config"]["choices"]
    assert choices[0].startswith("*=") and len(choices) == info["tensors_changed"] + 1
    assert all(c.rsplit("=", 1)[1] in ("minmax", "percentile", "entropy", "mse", "per_tensor", "per_channel")
               for c in choices)
    # replaying the recipe makes the same graph without measuring again
    again = apply_recipe(model, meta["recipe"], data)
    assert [i.raw_data for i in again.graph.initializer] == [i.raw_data for i in auto.graph.initializer]
    # and on samples it never saw it is no worse than min-max (onnxruntime's default)
    assert _fidelity(model, auto, unseen) <= _fidelity(model, apply_pass(model, Int8Static(), data), unseen) * 1.05


def test_bad_choice_is_a_usage_error(cnn):
    from edgeloop.errors import UsageError
    from edgeloop.passes import Int8Static, PassData, apply_pass

    with pytest.raises(UsageError, match="a choice must be"):
        apply_pass(cnn[0], Int8Static(calibration="auto", choices=("*=minmax", "t=up")), PassData(x_calib=cnn[1]))


def _ort_int8(model, x_calib):
    """onnxruntime's quantize_static as a user calls it: QDQ, per-channel, MinMax."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeloop.passes.quantize import _quiet, _Reader

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "m.onnx"), os.path.join(d, "q.onnx")
        clean = onnx.ModelProto.FromString(model.SerializeToString())
        del clean.graph.value_info[:]
        onnx.save(clean, src)
        with _quiet():
            quantize_static(src, dst, _Reader(model, x_calib), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(dst)


def test_mlperf_ad_int8_chosen_where_onnxruntime_int8_meets_the_budget(tmp_path, mlperf_dir):
    """MLPerf Tiny's AD autoencoder on its real log-mel input (the 196 sliding windows of 5 rows): shrink
    at the --max-drop onnxruntime's int8 meets (its fidelity on validation) chooses int8, smaller than
    onnxruntime's file and at most half its output error (on an nRF52840) on the test split, which nothing chose on."""
    from edgeloop.commands.shrink import shrink_files
    from edgeloop.data.readers import _unlabelled_arrays
    from edgeloop.frontends import load_file
    from edgeloop.search.unlabelled import evaluate_unlabelled, unlabelled_splits

    mel = np.fromfile(mlperf_dir / "normal_id_01_00000000_hist_librosa.bin", dtype=np.float32).reshape(200, 128)
    x = np.stack([mel[i:i + 5].reshape(-1) for i in range(196)])
    model = load_file(str(mlperf_dir / "ad01_fp32.tflite"))
    sp = unlabelled_splits(model, _unlabelled_arrays(x, None, "ad"), "fidelity")
    ort = _ort_int8(model, sp.x_calib)
    ort_val = evaluate_unlabelled(ort, *sp["validation"], "fidelity")
    ort_test = evaluate_unlabelled(ort, *sp["test"], "fidelity")
    np.save(tmp_path / "x.npy", x)
    doc = shrink_files(str(mlperf_dir / "ad01_fp32.tflite"), str(tmp_path / "x.npy"), str(tmp_path / "out"),
                       metric="fidelity", max_drop=ort_val, target="nrf52840", quick=True)
    chosen = next(c for c in doc["candidates"] if c["chosen"])  # a microcontroller: static int8, not dynamic
    assert chosen["passes"][-1]["pass"] == "int8_static", chosen["passes"]
    got = onnx.load(tmp_path / "out" / "model.onnx")
    mine = evaluate_unlabelled(got, *sp["test"], "fidelity")
    assert mine <= 0.5 * ort_test, (mine, ort_test)
    assert len(got.SerializeToString()) < len(ort.SerializeToString())
