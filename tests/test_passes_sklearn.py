"""Refit passes on scikit-learn sources: feature reduction (digits, wine) and smaller algorithms."""

from __future__ import annotations

import numpy as np
import pytest

import sklearn  # noqa: E402,F401


def _setup(x, y, est):
    """Fit ``est`` on the search's own train split (as a user's training data would be)."""
    import edgeloop
    from edgeloop.data import from_arrays, split_for_model
    from edgeloop.passes import PassData

    est.fit(x[::4], y[::4])  # a probe fit: only to build a graph for the split check
    splits = split_for_model(edgeloop.load(est), from_arrays(x, y), "accuracy")
    est.fit(*splits["train"])
    return edgeloop.load(est), splits, PassData.from_splits(splits, est)


@pytest.fixture(scope="module")
def digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    x, y = load_digits(return_X_y=True)
    est = make_pipeline(MinMaxScaler(), MLPClassifier((32,), max_iter=2000, random_state=0))
    return _setup(x.astype(np.float32), y, est)


def test_feature_reduction_keeps_half_the_pixels_within_one_point(digits_mlp):
    from edgeloop.graph import get_metadata, run
    from edgeloop.passes import FeatureSelect, apply_pass
    from edgeloop.passes.sklearn_refit import rank_features
    from edgeloop.data import evaluate, input_info

    model, splits, data = digits_mlp
    order = rank_features(data.source_estimator(), data)
    assert sorted(order) == list(range(64))
    keep = tuple(order[:32])
    small = apply_pass(model, FeatureSelect(keep=keep), data)
    meta = get_metadata(small)
    assert meta["kept_features"] == sorted(keep) and meta["n_features_original"] == 64
    assert input_info(small)[1][1] == 32  # the model asks only for the kept features
    base = evaluate(model, *splits["test"], "accuracy")
    got = evaluate(small, *splits["test"], "accuracy")  # full-width data, columns picked
    assert base - got <= 0.01
    # the graph agrees with a scikit-learn refit on the same columns
    from sklearn.base import clone

    x_train, y_train = splits["train"]  # the refit trains on the train split only
    ref = clone(data.source_estimator()).fit(x_train[:, sorted(keep)], y_train)
    xs = splits.x("test")[:, sorted(keep)].astype(np.float32)
    assert np.mean(run(small, xs)[0] == ref.predict(xs)) >= 0.99
    assert meta["recipe"][-1]["pass"] == "feature_select"


def test_feature_reduction_on_wine_and_bad_indices():
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeloop.errors import UsageError
    from edgeloop.passes import FeatureSelect, apply_pass
    from edgeloop.passes.sklearn_refit import rank_features
    from edgeloop.data import evaluate

    x, y = load_wine(return_X_y=True)
    model, splits, data = _setup(x.astype(np.float32), y, make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)))
    order = rank_features(data.source_estimator(), data)
    small = apply_pass(model, FeatureSelect(keep=tuple(order[:6])), data)
    assert evaluate(small, *splits["test"], "accuracy") >= evaluate(model, *splits["test"], "accuracy") - 0.04
    with pytest.raises(UsageError, match="out of range"):
        apply_pass(model, FeatureSelect(keep=(0, 99)), data)


def test_smaller_algorithms_are_real_models(digits_mlp):
    from edgeloop.graph import get_metadata
    from edgeloop.passes import SmallerAlgorithm, apply_pass
    from edgeloop.data import evaluate

    model, splits, data = digits_mlp
    lin = apply_pass(model, SmallerAlgorithm(kind="logistic"), data)
    assert get_metadata(lin)["estimator"] == "Pipeline"
    assert evaluate(lin, *splits["test"], "accuracy") > 0.9
    tree = apply_pass(model, SmallerAlgorithm(kind="tree", max_depth=4), data)
    assert get_metadata(tree)["estimator"] == "DecisionTreeClassifier"
    assert 0.3 < evaluate(tree, *splits["test"], "accuracy") < 0.95


def test_refit_passes_need_a_source():
    from sklearn.datasets import load_digits

    import edgeloop
    from edgeloop.errors import UsageError
    from edgeloop.passes import FeatureSelect, PassData, apply_pass

    x, y = load_digits(return_X_y=True)
    from sklearn.linear_model import LogisticRegression

    m = edgeloop.load(LogisticRegression(max_iter=200).fit(x[:100], y[:100]))
    with pytest.raises(UsageError, match="source"):
        apply_pass(m, FeatureSelect(keep=(1, 2)), PassData(x_fit=x, y_fit=y))
