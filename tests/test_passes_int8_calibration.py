"""Calibration chosen per tensor by output error (calibration="auto"), and int8 chosen on an autoencoder
wherever onnxruntime's own int8 would meet --max-drop."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from torch_train import fit  # noqa: E402


@pytest.fixture(scope="module")
def cnn():
    import torch
    from sklearn.datasets import load_digits

    import edgeloop

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(512, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    fit(net, torch.tensor(x[:900]), torch.tensor(y[:900]), epochs=5)
    return edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8)), x[:128], x[1000:1400]


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


def test_autoencoder_int8_chosen_where_onnxruntime_int8_meets_the_budget(tmp_path):
    """An AD-like autoencoder (log-mel-like windows: a large offset, a few loud bins): shrink at the
    --max-drop onnxruntime's int8 meets chooses int8, at least as faithful and smaller."""
    import torch

    import edgeloop
    from edgeloop.commands.shrink import shrink_files
    from edgeloop.data.readers import _unlabelled_arrays
    from edgeloop.graph import save
    from edgeloop.search.unlabelled import evaluate_unlabelled, unlabelled_splits

    rng = np.random.default_rng(0)
    base = rng.normal(-30, 6, (1, 128)).astype(np.float32)
    x = base + rng.normal(0, 3, (400, 128)).astype(np.float32)
    x[:, rng.choice(128, 6, replace=False)] += rng.gamma(2, 8, (400, 6)).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 128))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    xt = torch.tensor(x)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(xt), xt).backward()
        opt.step()
    model = edgeloop.load(net.eval(), example_input=torch.zeros(1, 128))
    sp = unlabelled_splits(model, _unlabelled_arrays(x, None, "ae"), "fidelity")
    ort = _ort_int8(model, sp.x_calib)
    ort_val = evaluate_unlabelled(ort, *sp["validation"], "fidelity")
    ort_test = evaluate_unlabelled(ort, *sp["test"], "fidelity")
    save(model, tmp_path / "ae.onnx")
    np.save(tmp_path / "x.npy", x)
    doc = shrink_files(str(tmp_path / "ae.onnx"), str(tmp_path / "x.npy"), str(tmp_path / "out"),
                       metric="fidelity", max_drop=ort_val, quick=True)
    chosen = next(c for c in doc["candidates"] if c["chosen"])
    assert chosen["passes"][-1]["pass"] in ("int8_static", "mixed_precision"), chosen["passes"]
    assert chosen["passes"][-1]["pass"] == "int8_static"
    got = onnx.load(tmp_path / "out" / "model.onnx")
    assert evaluate_unlabelled(got, *sp["test"], "fidelity") <= ort_test
    assert len(got.SerializeToString()) < len(ort.SerializeToString())
