"""Classic ML through ONNX-ML into C: labels agree with scikit-learn's predict on whole test sets.

Each estimator is imported with ``edgeloop.load`` (skl2onnx), generated into C with float
thresholds, built with gcc (-Werror) and called through ctypes on every test row.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgeloop.backends.c import CModel, compile_shared, generate
from edgeloop.profile import profile_model

import sklearn  # noqa: E402,F401
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def _estimators():
    from sklearn.ensemble import (GradientBoostingClassifier, RandomForestClassifier)
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    return {
        "logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "tree": lambda: DecisionTreeClassifier(random_state=0),
        "forest": lambda: RandomForestClassifier(n_estimators=30, random_state=0),
        "boosting": lambda: GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0),
        "mlp": lambda: make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=400,
                                                                    random_state=0)),
    }


DATASETS = {"digits": load_digits, "breast_cancer": load_breast_cancer}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("kind", sorted(_estimators()))
def test_classifier_labels_agree(dataset, kind, tmp_path):
    import edgeloop

    X, y = DATASETS[dataset](return_X_y=True)
    X = X.astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = _estimators()[kind]().fit(Xtr, ytr)
    model = edgeloop.load(est)
    info = generate(model, tmp_path, "clf")
    cm = CModel(compile_shared(tmp_path, "clf", opt="-O1"), info)
    # convention: outputs are (label, probabilities); run() gives the probabilities
    assert [o["name"] for o in info["outputs"]] == ["label", "probabilities"]
    assert info["primary_output"] == 1
    labels, proba = cm.run_all(Xte)
    np.testing.assert_array_equal(labels, est.predict(Xte))          # 100% agreement
    np.testing.assert_allclose(proba, est.predict_proba(Xte), atol=1e-5)
    np.testing.assert_array_equal(cm.run(Xte), proba)
    assert info["arena_size"] == profile_model(model, latency=False)["peak_ram_bytes"]
    h = (tmp_path / "clf.h").read_text()
    assert "#define CLF_PRIMARY_OUTPUT 1" in h and "clf_run_all" in h


def test_regressors(tmp_path):
    import edgeloop
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.tree import DecisionTreeRegressor

    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    for k, est in enumerate([Ridge(), DecisionTreeRegressor(max_depth=6, random_state=0),
                             RandomForestRegressor(20, max_depth=6, random_state=0),
                             GradientBoostingRegressor(n_estimators=30, random_state=0)]):
        est.fit(Xtr, ytr)
        model = edgeloop.load(est)
        out = tmp_path / f"r{k}"
        info = generate(model, out, "reg")
        cm = CModel(compile_shared(out, "reg", opt="-O1"), info)
        got = cm.run(Xte).ravel()
        # float32 thresholds and sums against scikit-learn's float64
        np.testing.assert_allclose(got, est.predict(Xte), rtol=1e-4, atol=1e-3)


def test_tree_modes_and_missing_values(tmp_path):
    """Every BRANCH_* mode and missing-value routing, against onnxruntime."""
    from onnx import TensorProto, helper

    from edgeloop import graph

    modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
    nodes_treeids, nodes_nodeids, nodes_modes, feats, vals, t_ids, f_ids, mvt = ([] for _ in range(8))
    w_tree, w_node, w_id, w_w = [], [], [], []
    for t, m in enumerate(modes):
        nodes_treeids += [t, t, t]
        nodes_nodeids += [0, 1, 2]
        nodes_modes += [m, "LEAF", "LEAF"]
        feats += [t % 3, 0, 0]
        vals += [0.5, 0.0, 0.0]
        t_ids += [1, 0, 0]
        f_ids += [2, 0, 0]
        mvt += [t % 2, 0, 0]
        w_tree += [t, t]
        w_node += [1, 2]
        w_id += [0, 0]
        w_w += [float(t + 1), -float(t + 1) / 3]
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=nodes_treeids, nodes_nodeids=nodes_nodeids, nodes_modes=nodes_modes,
        nodes_featureids=feats, nodes_values=vals, nodes_truenodeids=t_ids,
        nodes_falsenodeids=f_ids, nodes_missing_value_tracks_true=mvt, target_treeids=w_tree,
        target_nodeids=w_node, target_ids=w_id, target_weights=w_w, base_values=[0.25],
        aggregate_function="AVERAGE")
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("ai.onnx.ml", 3)], ir_version=8)
    info = generate(m, tmp_path, "trees")
    cm = CModel(compile_shared(tmp_path, "trees", opt="-O1"), info)
    rng = np.random.default_rng(0)
    xs = rng.choice([0.0, 0.5, 1.0, np.nan], size=(200, 3)).astype(np.float32)
    for x in xs:
        np.testing.assert_allclose(cm.run(x[None]), graph.run(m, x[None])[0], rtol=1e-6)
