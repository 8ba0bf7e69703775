"""scikit-learn estimators and Pipelines, through skl2onnx.

Classifiers are converted without ZipMap, so every graph has two plain tensor
outputs: ``label`` [N] and ``probabilities`` [N, n_classes]. Regressors have
one output ``variable`` [N, 1].
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeloop.errors import EdgeloopError, MissingDependencyError, ModelLoadError
from edgeloop.graph import finalize

# Opsets every backend of ours handles: ai.onnx.ml 3 still uses the classic
# TreeEnsembleClassifier/Regressor operators that the C backend lowers.
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}


def _import_skl2onnx():
    try:
        import skl2onnx
        import sklearn  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(e.name or "skl2onnx", "sklearn") from None
    _patch_hist_gradient_boosting()
    return skl2onnx


@functools.cache
def _patch_hist_gradient_boosting() -> None:
    """Work around two skl2onnx 1.20 problems with HistGradientBoosting*.

    1. scikit-learn now stores ``missing_go_to_left`` as a numpy bool, which
       skl2onnx passes straight into an ONNX integer attribute ("Expected an
       int, got a boolean"). We cast it to int.
    2. The histogram-tree path rounds each float64 threshold to the nearest
       float32, so an input just above a threshold can compare equal to it
       and take the wrong branch (seen on the diabetes data). skl2onnx already
       knows the fix (``adjust_threshold_for_sklearn``: pick the float32 that
       preserves ``x <= t`` for every float32 x) and applies it to the other
       tree converters; we switch it on for float32 thresholds everywhere.
    The conversion is otherwise skl2onnx's own, and both are no-ops once fixed.
    """
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node
    if getattr(original, "_edgeloop_patched", False):
        return

    @functools.wraps(original)
    def add_node(*args, **kwargs):
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(kwargs["nodes_missing_value_tracks_true"])
        if kwargs.get("dtype") == np.float32:
            kwargs["adjust_threshold_for_sklearn"] = True
        return original(*args, **kwargs)

    add_node._edgeloop_patched = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node


def _final_estimator(est: Any) -> Any:
    steps = getattr(est, "steps", None)
    return steps[-1][1] if steps else est


def _classifier_options(est: Any) -> dict:
    """zipmap=False for every classifier inside ``est`` (skl2onnx options are keyed by id)."""
    from sklearn.base import is_classifier

    options: dict = {}
    stack = [est]
    while stack:  # iterative walk: no recursion over nested pipelines
        obj = stack.pop()
        if is_classifier(obj):
            options[id(obj)] = {"zipmap": False}
        for _, child in getattr(obj, "steps", []) or []:
            stack.append(child)
        for item in getattr(obj, "transformer_list", []) or []:
            stack.append(item[1])
        for item in getattr(obj, "transformers_", []) or []:
            stack.append(item[1])
    return options


def from_sklearn(est: Any, *, n_features: int | None = None, where: str = "<estimator>",
                 **_: Any) -> onnx.ModelProto:
    """Convert a fitted estimator or Pipeline; the input is float32 [N, n_features]."""
    skl2onnx = _import_skl2onnx()
    from sklearn.base import is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(est)
    except NotFittedError:
        raise ModelLoadError(f"{type(est).__name__} is not fitted; call fit() first", where=where) from None
    except TypeError:
        raise ModelLoadError(f"{type(est).__name__} is not a scikit-learn estimator", where=where) from None
    n = n_features or getattr(est, "n_features_in_", None)
    if n is None:
        raise ModelLoadError("cannot tell the number of input features; pass n_features=", where=where)
    from skl2onnx.common.data_types import FloatTensorType

    try:
        model = skl2onnx.convert_sklearn(
            est, initial_types=[("input", FloatTensorType([None, int(n)]))],
            options=_classifier_options(est), target_opset=TARGET_OPSET)
    except EdgeloopError:
        raise
    except Exception as e:  # skl2onnx raises plain RuntimeError/NameError for unknown estimators
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"skl2onnx cannot convert {type(est).__name__}: {first}", where=where) from None

    final = _final_estimator(est)
    meta: dict[str, Any] = {"n_features": int(n), "estimator": type(est).__name__}
    if is_classifier(est):
        meta["task"] = "classification"
        classes = getattr(final, "classes_", None)
        if classes is not None:
            meta["labels"] = [c.item() if isinstance(c, np.generic) else c for c in classes]
    elif is_regressor(est):
        meta["task"] = "regression"
    return finalize(model, source=where, source_format="sklearn", **meta)


def load_pickle(path: Path, **kwargs: Any) -> onnx.ModelProto:
    """Load a .joblib/.pkl estimator and convert it.

    Unpickling runs code from the file: load only files you trust.
    """
    where = str(path)
    try:
        import joblib
    except ImportError:
        raise MissingDependencyError("joblib", "sklearn", where=where) from None
    _import_skl2onnx()
    try:
        est = joblib.load(path)
    except Exception as e:  # truncated pickles raise EOFError, corrupt ones UnpicklingError, ...
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"cannot unpickle ({type(e).__name__}: {first})", where=where) from None
    if not hasattr(est, "get_params"):
        raise ModelLoadError(f"holds a {type(est).__name__}, not a scikit-learn estimator", where=where)
    kwargs.pop("example_input", None)
    return from_sklearn(est, where=where, **kwargs)
