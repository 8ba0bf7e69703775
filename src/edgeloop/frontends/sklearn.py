"""scikit-learn estimators and Pipelines, through skl2onnx.

Classifiers are converted without ZipMap, so every graph has two plain tensor
outputs: ``label`` [N] and ``probabilities`` [N, n_classes]. Regressors have
one output ``variable`` [N, 1].
"""

from __future__ import annotations

import functools
import os
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


# ---------------------------------------------------------------------------------------------
# reading an estimator from a file: the one place edgeloop does it
# ---------------------------------------------------------------------------------------------
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
SKOPS_SUFFIXES = (".skops",)
SOURCE_SUFFIXES = PICKLE_SUFFIXES + SKOPS_SUFFIXES

# skops trusts scikit-learn estimators but not a few of the plain data-holding classes inside
# them (a fitted tree's arrays, the MLP's optimizer state, a histogram-boosting predictor), nor
# our own SeriesStats transformer. They are classes skops rebuilds from arrays and attributes,
# never callables, and every model `edgeloop train` writes holds some of them, so they are
# trusted here by exact name; any other type skops does not trust still needs trust_pickle.
TRUSTED_SKOPS_TYPES = frozenset({
    "sklearn.tree._tree.Tree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "edgeloop.train.features.SeriesStats",
})

PICKLE_REFUSAL = ("refusing to unpickle: loading a pickle runs code from the file; if you trust it, pass "
                  "--trust-pickle (trust_pickle=True in Python), or convert it to .skops (skops.io.dump)")


class UntrustedSourceError(ModelLoadError):
    """A source file that would run code (a pickle) or holds types skops does not trust."""


def _joblib_magic(head: bytes) -> bool:
    """A pickle (protocol 2+), or a joblib-compressed pickle (the prefixes of joblib.compressor)."""
    return (head[:1] == b"\x80" or head[:2] in (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
            or head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:5] == b"\xfd7zXZ"
            or head[:2] == b"\x5d\x00" or head[:4] == b"\x04\x22\x4d\x18")


def is_skops_zip(path: "str | Path") -> bool:
    """A skops file is a zip whose top level holds ``schema.json``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return "schema.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def estimator_file_format(path: "str | Path") -> str | None:
    """'pickle', 'skops' or None (not a scikit-learn source), by suffix, else by the first bytes."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    if suffix in SKOPS_SUFFIXES:
        return "skops"
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head[:2] == b"PK":
        return "skops" if is_skops_zip(p) else None
    return "pickle" if _joblib_magic(head) else None


def needs_trust(path: "str | Path") -> bool:
    """Whether loading ``path`` as a source can run code from it (a pickle)."""
    return estimator_file_format(path) == "pickle"


def load_estimator(path: "str | os.PathLike[str]", *, trust_pickle: bool = False) -> Any:
    """Read a scikit-learn estimator from a .skops file, or from a pickle when trusted.

    Every read of an estimator file in edgeloop goes through here. A pickle
    (.joblib/.pkl/.pickle) runs code from the file while it loads, so it is
    refused unless ``trust_pickle``; a .skops file is read by skops.io, which
    builds only the types it trusts: any others are named in the refusal.
    """
    where = os.fspath(path)
    fmt = estimator_file_format(path)
    if fmt is None:
        raise ModelLoadError("not a scikit-learn source (.skops, or a trusted .joblib/.pkl pickle)", where=where)
    if fmt == "pickle":
        if not trust_pickle:
            raise UntrustedSourceError(PICKLE_REFUSAL, where=where)
        try:
            import joblib
        except ImportError:
            raise MissingDependencyError("joblib", "sklearn", where=where) from None
        try:
            return joblib.load(path)
        except Exception as e:  # truncated pickles raise EOFError, corrupt ones UnpicklingError, ...
            raise ModelLoadError(f"cannot unpickle ({type(e).__name__}: {_first_line(e)})", where=where) from None
    try:
        import skops.io as sio
    except ImportError:
        raise MissingDependencyError("skops", "sklearn", where=where) from None
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as e:  # not a zip, no schema.json, a schema skops cannot read
        raise ModelLoadError(f"not a readable .skops file ({type(e).__name__}: {_first_line(e)})", where=where) from None
    unknown = sorted(set(untrusted) - TRUSTED_SKOPS_TYPES)
    if unknown and not trust_pickle:
        raise UntrustedSourceError(
            f"refusing to load: the .skops file holds types skops does not trust ({', '.join(unknown)}); "
            "pass --trust-pickle (trust_pickle=True in Python) only if you trust the file", where=where)
    try:
        return sio.load(path, trusted=list(untrusted))
    except Exception as e:
        raise ModelLoadError(f"cannot load .skops file ({type(e).__name__}: {_first_line(e)})", where=where) from None


def dump_estimator(est: Any, fmt: str) -> bytes:
    """Serialise an estimator as 'skops' (safe to load) or 'pickle' (joblib), for writing atomically."""
    if fmt == "skops":
        try:
            import skops.io as sio
        except ImportError:
            raise MissingDependencyError("skops", "sklearn") from None
        return sio.dumps(est)
    import io

    import joblib

    buf = io.BytesIO()
    joblib.dump(est, buf)
    return buf.getvalue()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def load_pickle(path: Path, *, trust_pickle: bool = False, **kwargs: Any) -> onnx.ModelProto:
    """Load a scikit-learn source file (.skops, or a .joblib/.pkl pickle when trusted) and convert it."""
    where = str(path)
    _import_skl2onnx()
    est = load_estimator(path, trust_pickle=trust_pickle)
    if not hasattr(est, "get_params"):
        raise ModelLoadError(f"holds a {type(est).__name__}, not a scikit-learn estimator", where=where)
    kwargs.pop("example_input", None)
    return from_sklearn(est, where=where, **kwargs)
