"""`edgeloop shrink` end to end: outputs, the chosen model's claims re-measured, exit codes 2 and 3."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

import torch  # noqa: E402
from torch_train import fit  # noqa: E402


def _cli(*args: str) -> int:
    from edgeloop.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A small digits CNN saved as .onnx and the digits as .npz (x flat: the model's layout differs)."""
    from sklearn.datasets import load_digits

    import edgeloop
    from edgeloop.graph import save

    d = tmp_path_factory.mktemp("shrink")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    train = rng.permutation(len(x))[:900]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    xt, yt = torch.tensor(x[train].reshape(-1, 1, 8, 8)), torch.tensor(y[train])
    fit(net, xt, yt, epochs=20)
    model = edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8))
    save(model, d / "cnn.onnx")
    np.savez(d / "digits.npz", x=x, y=y)
    np.savez(d / "nolabels.npz", x=x)
    np.savez(d / "badshape.npz", x=x[:, :60], y=y)
    np.savez(d / "badlabels.npz", x=x, y=np.array(["cat", "dog"] * (len(y) // 2) + ["cat"] * (len(y) % 2)))
    xn = x.copy()
    xn[3, 5] = np.nan
    np.savez(d / "nan.npz", x=xn, y=y)
    return d


@pytest.fixture(scope="module")
def shrunk(work):
    out = work / "out"
    rc = _cli("shrink", str(work / "cnn.onnx"), "--data", str(work / "digits.npz"), "-o", str(out),
              "--target", "nrf52840", "--max-flash-kb", "40", "--max-drop", "0.02", "--quick")
    assert rc == 0
    return out


def test_shrink_writes_model_results_and_report_meeting_the_limits(work, shrunk):
    from edgeloop.hardware import get_target
    from edgeloop.profile import profile_model
    from edgeloop.data import evaluate, from_arrays, split_for_model

    out = shrunk
    res = json.loads((out / "results.json").read_text())
    html = (out / "report.html").read_text()
    chosen = [c for c in res["candidates"] + [res["baseline"]] if c["chosen"]]
    assert len(chosen) == 1 and res["chosen"] == chosen[0]["id"]
    ch = chosen[0]
    assert ch["meets_limits"] and not ch["misses"]
    assert any(c["on_front"] for c in res["candidates"])
    assert all(c["parent"] for c in res["candidates"])
    assert {"accuracy", "file_bytes", "flash_bytes", "peak_ram_bytes", "host_latency_ms",
            "target_latency_ms"} <= set(ch["metrics"])
    # the claims hold for the saved file, re-measured here
    model = onnx.load(out / "model.onnx")
    assert len(model.SerializeToString()) == ch["metrics"]["file_bytes"]
    data = np.load(work / "digits.npz")
    splits = split_for_model(model, from_arrays(data["x"], data["y"]), "accuracy")
    acc = evaluate(model, *splits["validation"], "accuracy")  # candidates are chosen on validation
    assert acc == pytest.approx(ch["metrics"]["accuracy"])
    assert res["baseline"]["metrics"]["accuracy"] - acc <= 0.02
    # the test split is measured once, after the choice, for the baseline and the chosen model
    assert res["test"]["samples"] == len(splits.y("test"))
    assert res["test"]["chosen"] == pytest.approx(evaluate(model, *splits["test"], "accuracy"))
    prof = profile_model(model, latency=False)
    assert prof["flash_bytes"] == ch["metrics"]["flash_bytes"] <= 40 * 1024
    assert prof["peak_ram_bytes"] <= get_target("nrf52840").usable_ram_bytes
    assert ch["metrics"]["flash_bytes"] < res["baseline"]["metrics"]["flash_bytes"] / 3
    # calibration comes from the train split
    assert res["splits"]["test"] == len(splits.y("test")) and res["splits"]["calib"] <= res["splits"]["train"]
    # the report is one self-contained page with both plots and every candidate
    assert html.count("<svg") == 2 and "<script" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)  # nothing fetched
    assert all(c["id"] in html for c in res["candidates"])


def test_the_chosen_microcontroller_model_exports_to_c(work, shrunk):
    """What shrink picks for a microcontroller target is something the C backend can lower."""
    out = work / "c"
    assert _cli("export", str(shrunk / "model.onnx"), "--target", "nrf52840", "-o", str(out)) == 0
    assert (out / "model.c").is_file() and (out / "model.h").is_file()


def test_impossible_limits_exit_3_and_name_the_closest(work, capsys):
    out = work / "out3"
    rc = _cli("shrink", str(work / "cnn.onnx"), "--data", str(work / "digits.npz"), "-o", str(out),
              "--max-flash-kb", "0.5", "--max-drop", "0", "--quick")
    assert rc == 3
    err = capsys.readouterr().err
    assert "no candidate meets the limits" in err and "flash" in err and "Traceback" not in err
    assert not (out / "model.onnx").exists()
    res = json.loads((out / "results.json").read_text())
    assert res["chosen"] is None and res["closest"]
    assert "No candidate meets the limits" in (out / "report.html").read_text()


@pytest.mark.parametrize("data,extra,needle", [
    ("badshape.npz", [], "model input takes"),
    ("nolabels.npz", [], "no labels"),
    ("badlabels.npz", [], "class indices"),
    ("nan.npz", [], "NaN"),
    ("digits.npz", ["--metric", "mae"], "needs a regression model"),
    ("digits.npz", ["--max-ram-kb", "-4"], "must be positive"),
    ("digits.npz", ["--max-drop", "-0.1"], "--max-drop"),
    ("digits.npz", ["--target", "no-such-board"], "no-such-board"),
    ("missing.npz", [], "no such file"),
])
def test_bad_input_is_one_line_exit_2(work, capsys, data, extra, needle):
    rc = _cli("shrink", str(work / "cnn.onnx"), "--data", str(work / data), "-o", str(work / "bad"), *extra)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("error:")
    assert not (work / "bad" / "model.onnx").exists()


def test_shrink_a_scikit_learn_source_from_csv(tmp_path):
    """A .joblib source with CSV data (edgeloop.data.read_any): refit candidates appear and are measured."""
    import joblib
    from sklearn.datasets import load_wine
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    names = ["class_0", "class_1", "class_2"]
    est = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=1000, random_state=0))
    est.fit(x[::2], np.array(names)[y[::2]])
    joblib.dump(est, tmp_path / "wine.joblib")
    lines = [",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])]
    lines += [",".join([f"{v:.6g}" for v in row] + [names[t]]) for row, t in zip(x, y)]
    (tmp_path / "wine.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = _cli("shrink", str(tmp_path / "wine.joblib"), "--data", str(tmp_path / "wine.csv"), "-o", str(out),
              "--label-column", "label", "--max-drop", "0.05", "--quick", "--json", "--trust-pickle")
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    passes = {c["passes"][0]["pass"] for c in res["candidates"] if not c["error"]}
    assert {"feature_select", "smaller_algorithm", "int8_static"} <= passes
    assert res["baseline"]["metrics"]["accuracy"] > 0.85
    fs = next(c for c in res["candidates"] if c["passes"][0]["pass"] == "feature_select")
    assert len(fs["passes"][0]["config"]["keep"]) <= 7
    from edgeloop.graph import get_metadata

    chosen = onnx.load(out / "model.onnx")
    assert get_metadata(chosen)["recipe"] == next(c for c in res["candidates"] + [res["baseline"]]
                                                  if c["chosen"])["passes"]
