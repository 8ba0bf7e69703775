"""The search's measurements and choice, from Python: metrics against scikit-learn, regression, the front."""

from __future__ import annotations

import numpy as np
import pytest

import sklearn  # noqa: E402,F401


def test_metrics_agree_with_scikit_learn_on_breast_cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import edgeloop
    from edgeloop.data import evaluate

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[::2], y[::2])
    m = edgeloop.load(est)
    xt, yt = x[1::2], y[1::2]
    assert evaluate(m, xt, yt, "accuracy") == pytest.approx(np.mean(est.predict(xt) == yt), abs=0.004)
    assert evaluate(m, xt, yt, "f1") == pytest.approx(f1_score(yt, est.predict(xt), average="macro"), abs=0.005)
    assert evaluate(m, xt, yt, "auc") == pytest.approx(roc_auc_score(yt, est.predict_proba(xt)[:, 1]), abs=1e-3)


def test_regression_search_with_mae_on_diabetes():
    from sklearn.datasets import load_diabetes
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import edgeloop
    from edgeloop.data import from_arrays, split_for_model
    from edgeloop.search import Limits, run_search

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    est = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(16,), max_iter=3000, random_state=0)).fit(x, y)
    m = edgeloop.load(est)
    splits = split_for_model(m, from_arrays(x, y), "mae")
    assert splits.task == "regression"
    res = run_search(m, splits, Limits(max_drop=5.0), source=est, quick=True)
    doc = res.to_json()
    assert doc["higher_is_better"] is False
    names = {c["passes"][0]["pass"] for c in doc["candidates"] if not c["error"]}
    assert {"int8_static", "feature_select", "smaller_algorithm"} <= names
    assert res.chosen is not None
    assert res.chosen.metrics["mae"] - res.baseline.metrics["mae"] <= 5.0
    ok = [c for c in [res.baseline] + res.candidates if c.error is None]
    smaller = [c for c in ok if not c.misses and c.metrics["file_bytes"] < res.chosen.metrics["file_bytes"]]
    assert not smaller  # nothing smaller meets the budget
    # the front: no candidate is better on every axis than one marked on_front
    for f in (c for c in ok if c.on_front):
        for c in ok:
            assert not (c.metrics["file_bytes"] < f.metrics["file_bytes"] and c.metrics["mae"] < f.metrics["mae"]
                        and (c.metrics["host_latency_ms"] or 0) < (f.metrics["host_latency_ms"] or 0))


def test_pareto_front_by_brute_force():
    from edgeloop.search import pareto_front

    rng = np.random.default_rng(0)
    pts = [tuple(p) for p in rng.integers(0, 6, size=(40, 3))]
    flags = pareto_front(pts)
    for p, f in zip(pts, flags):
        dominated = any(all(a <= b for a, b in zip(q, p)) and q != p for q in pts)
        assert f == (not dominated)


def test_contradictory_or_nonsense_limits_are_usage_errors():
    from edgeloop.errors import UsageError
    from edgeloop.search import Limits

    for lim in (Limits(max_drop=-1), Limits(max_ram_kb=0), Limits(max_flash_kb=-3),
                Limits(max_latency_ms=float("nan"))):
        with pytest.raises(UsageError):
            lim.check()


def test_a_dataset_folders_splits_keep_their_names_in_shrink(tmp_path):
    """A dataset folder's train/validation/test reach shrink unchanged, and the passes never get test."""
    import json

    from sklearn.linear_model import LogisticRegression

    import edgeloop
    from edgeloop.data import import_data, read_any, split_for_model
    from edgeloop.passes import PassData

    folder = import_data("sklearn:wine", tmp_path / "wine")
    parts = json.loads((folder / "splits.json").read_text())
    x_all = np.load(folder / "x.npy")
    y_all = np.load(folder / "y.npy")
    model = edgeloop.load(LogisticRegression(max_iter=3000).fit(x_all[parts["train"]], y_all[parts["train"]]))
    sp = split_for_model(model, read_any(folder), "accuracy")
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(sp.x(name), x_all[parts[name]])
        np.testing.assert_array_equal(sp.y(name), y_all[parts[name]])
    assert "validation" in sp.held_out
    # wine's rows are distinct, so rows identify samples: no test row reaches a pass
    data = PassData.from_splits(sp)
    seen = {row.tobytes() for part in (data.train[0], data.validation[0], data.x_calib) for row in part}
    assert not any(x_all[i].tobytes() in seen for i in parts["test"])
    assert not any(x_all[i].tobytes() in {r.tobytes() for r in data.x_calib} for i in parts["validation"])
