"""Refits of a scikit-learn source: fewer input features, or a simpler estimator.

Both passes rebuild the model from the source estimator (``PassData.source``,
an estimator or its .joblib path) trained on the ``train`` split only (the
``validation`` split then judges the refit, and no pass ever sees ``test``),
so they come first in a recipe; the incoming graph is only used for its
metadata.

``feature_select`` keeps the listed input columns, refits a clone of the
source on them and records ``kept_features`` (indices into the original
inputs) and ``n_features_original`` in the metadata: the runtime and the
evaluator feed only those columns. :func:`rank_features` orders features by
permutation importance on the validation split (scikit-learn's own).
``smaller_algorithm`` fits a logistic/linear model or a shallow decision
tree on the same data (and the same kept features, if any).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgeloop.errors import UsageError
from edgeloop.passes import PassData, register_pass


@dataclass(frozen=True)
class FeatureSelect:
    NAME = "feature_select"
    keep: tuple[int, ...] = ()


@dataclass(frozen=True)
class SmallerAlgorithm:
    NAME = "smaller_algorithm"
    kind: str = "logistic"  # logistic | linear | tree
    max_depth: int = 8
    keep: tuple[int, ...] = ()


def _need(data: PassData | None, what: str) -> tuple[Any, np.ndarray, np.ndarray]:
    if data is None:
        raise UsageError(f"{what} needs labelled data (a train split)")
    x, y = data.split("train", what)
    est = data.source_estimator()
    if est is None:
        raise UsageError(f"{what} needs the scikit-learn source model (a .joblib file)")
    return est, x.reshape(len(x), -1), y


def _sklearn_scorer(metric: str):
    return {"accuracy": "accuracy", "f1": "f1_macro", "auc": "roc_auc_ovr",
            "mae": "neg_mean_absolute_error", "agreement": "accuracy"}[metric]  # agreement: y = float top-1


def rank_features(est: Any, data: PassData, n_repeats: int = 5) -> list[int]:
    """Feature indices, most useful first (permutation importance on the validation split)."""
    from sklearn.inspection import permutation_importance

    x, y = data.split("validation", "feature ranking")
    x = x.reshape(len(x), -1)
    # Classifiers with probabilities are scored by log-loss: on a few hundred samples,
    # permuting one of many features rarely flips a label, so accuracy ties.
    scoring = "neg_log_loss" if hasattr(est, "predict_proba") and data.metric != "mae" \
        else _sklearn_scorer(data.metric)
    try:
        r = permutation_importance(est, x, y, n_repeats=n_repeats, random_state=0, scoring=scoring)
    except ValueError:  # e.g. a class missing from the validation split for log-loss
        r = permutation_importance(est, x, y, n_repeats=n_repeats, random_state=0,
                                   scoring=_sklearn_scorer(data.metric))
    return [int(i) for i in np.argsort(-r.importances_mean, kind="stable")]


def _convert(est: Any, old: onnx.ModelProto, **meta: Any) -> onnx.ModelProto:
    from edgeloop.frontends.sklearn import from_sklearn
    from edgeloop.graph import get_metadata, set_metadata

    new = from_sklearn(est)
    carried = {k: v for k, v in get_metadata(old).items()
               if k in ("source", "source_format", "recipe", "n_features_original")}
    set_metadata(new, **carried, **meta)
    return new


def _check_keep(keep: tuple[int, ...], n: int, what: str) -> list[int]:
    if not keep:
        raise UsageError(f"{what}: keep must list at least one feature index")
    bad = [k for k in keep if not 0 <= int(k) < n]
    if bad:
        raise UsageError(f"{what}: feature indices {bad[:5]} out of range (the data has {n} features)")
    return sorted(int(k) for k in keep)


def run_select(model: onnx.ModelProto, config: FeatureSelect, data: PassData | None) -> onnx.ModelProto:
    from sklearn.base import clone

    est, x, y = _need(data, "feature_select")
    keep = _check_keep(config.keep, x.shape[1], "feature_select")
    with warnings.catch_warnings():  # e.g. ConvergenceWarning: the result is measured anyway
        warnings.simplefilter("ignore")
        fitted = clone(est).fit(x[:, keep], y)
    return _convert(fitted, model, kept_features=keep, n_features_original=int(x.shape[1]))


def run_smaller(model: onnx.ModelProto, config: SmallerAlgorithm, data: PassData | None) -> onnx.ModelProto:
    from sklearn.base import is_classifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    est, x, y = _need(data, "smaller_algorithm")
    classify = is_classifier(est)
    if config.kind in ("logistic", "linear"):
        final = LogisticRegression(max_iter=3000) if classify else Ridge(alpha=1.0)
        new = make_pipeline(StandardScaler(), final)
    elif config.kind == "tree":
        new = (DecisionTreeClassifier if classify else DecisionTreeRegressor)(
            max_depth=config.max_depth, random_state=0)
    else:
        raise UsageError(f"smaller_algorithm: kind must be logistic, linear or tree, got {config.kind!r}")
    meta: dict[str, Any] = {}
    if config.keep:
        keep = _check_keep(config.keep, x.shape[1], "smaller_algorithm")
        meta = {"kept_features": keep, "n_features_original": int(x.shape[1])}
        x = x[:, keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new.fit(x, y)
    return _convert(new, model, **meta)


register_pass(FeatureSelect, run_select)
register_pass(SmallerAlgorithm, run_smaller)
