"""scikit-learn importer: the ONNX graph must agree with the estimator on real data."""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                              HistGradientBoostingClassifier, HistGradientBoostingRegressor,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

import edgeloop
from edgeloop.errors import ModelLoadError
from edgeloop.graph import get_metadata, run


def _split(loader):
    x, y = loader(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0)
    # The device sees float32: compare both sides on the same float32 values.
    return x_tr, x_te.astype(np.float32), y_tr, y_te


CLASSIFIERS = {
    "logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    "tree": lambda: DecisionTreeClassifier(random_state=0),
    "forest": lambda: RandomForestClassifier(n_estimators=30, random_state=0),
    "gboost": lambda: GradientBoostingClassifier(n_estimators=30, random_state=0),
    "histgb": lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0),
    "mlp": lambda: make_pipeline(MinMaxScaler(), MLPClassifier((32,), max_iter=300, random_state=0)),
}


@pytest.mark.parametrize("dataset", [load_digits, load_breast_cancer], ids=["digits", "breast_cancer"])
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_agrees_on_whole_test_set(name, dataset):
    x_tr, x_te, y_tr, _ = _split(dataset)
    est = CLASSIFIERS[name]().fit(x_tr, y_tr)
    model = edgeloop.load(est)
    labels, proba = run(model, x_te)
    x_ref = x_te.astype(np.float64)
    np.testing.assert_array_equal(labels, est.predict(x_ref))  # 100% label agreement
    np.testing.assert_allclose(proba, est.predict_proba(x_ref), atol=1e-4)
    meta = get_metadata(model)
    assert meta["task"] == "classification"
    assert meta["labels"] == est.classes_.tolist()
    assert meta["source_format"] == "sklearn"


REGRESSORS = {
    "linear": lambda: LinearRegression(),
    "tree": lambda: DecisionTreeRegressor(max_depth=6, random_state=0),
    "forest": lambda: RandomForestRegressor(n_estimators=30, random_state=0),
    "gboost": lambda: GradientBoostingRegressor(n_estimators=50, random_state=0),
    "histgb": lambda: HistGradientBoostingRegressor(max_iter=50, random_state=0),
    "scaled_linear": lambda: make_pipeline(StandardScaler(), LinearRegression()),
}


@pytest.mark.parametrize("name", sorted(REGRESSORS))
def test_regressor_agrees_on_whole_test_set(name):
    x_tr, x_te, y_tr, _ = _split(load_diabetes)
    est = REGRESSORS[name]().fit(x_tr, y_tr)
    model = edgeloop.load(est)
    (pred,) = run(model, x_te)
    ref = est.predict(x_te.astype(np.float64))
    # float32 arithmetic in the graph against float64 in scikit-learn: relative 1e-5 of the target range.
    np.testing.assert_allclose(pred.ravel(), ref, rtol=0, atol=1e-5 * np.ptp(ref) + 1e-4)
    assert get_metadata(model)["task"] == "regression"


@pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".skops"])
def test_saved_file_imports(tmp_path, suffix):
    x_tr, x_te, y_tr, _ = _split(load_digits)
    est = DecisionTreeClassifier(max_depth=8, random_state=0).fit(x_tr, y_tr)
    path = tmp_path / f"model{suffix}"
    if suffix == ".pkl":
        path.write_bytes(pickle.dumps(est))
    elif suffix == ".skops":
        import skops.io as sio

        sio.dump(est, path)
    else:
        joblib.dump(est, path)
    trust = suffix != ".skops"  # a pickle loads only when trusted; a .skops file needs no trust
    if trust:
        with pytest.raises(ModelLoadError, match="--trust-pickle"):
            edgeloop.load(path)
    labels, _ = run(edgeloop.load(path, trust_pickle=trust), x_te)
    np.testing.assert_array_equal(labels, est.predict(x_te))
    assert get_metadata(edgeloop.load(str(path), trust_pickle=trust))["source"] == str(path)


def test_unfitted_estimator_is_refused():
    with pytest.raises(ModelLoadError, match="not fitted"):
        edgeloop.load(LogisticRegression())


def test_pickle_of_something_else_is_refused(tmp_path):
    path = tmp_path / "notamodel.joblib"
    joblib.dump({"weights": [1, 2, 3]}, path)
    with pytest.raises(ModelLoadError, match="not a scikit-learn estimator"):
        edgeloop.load(path, trust_pickle=True)
