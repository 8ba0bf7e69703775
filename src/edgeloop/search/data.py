"""Data for shrinking: read, check against the model, split, predict and score.

A dataset is ``x`` (samples first), ``y`` (labels or targets) and an optional
``x_calib`` (unlabelled samples for int8 calibration). ``.npz`` files are read
here; CSV files and image folders go through ``edgeloop.data.read_any`` when
that module provides it.

Splits (fixed seed, stratified for classification):

- ``test`` (30%): the held-out data every reported metric is measured on;
- ``fit`` and ``tune`` (the rest, 70/30): refits (feature reduction, smaller
  algorithms) train on ``fit``; measurements that choose settings (layer
  sensitivity, permutation importance) use ``tune``;
- ``calib``: ``x_calib`` when given, else up to 256 samples of ``fit``. It
  never overlaps ``test``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeloop.errors import EdgeloopError, UsageError

METRICS = ("accuracy", "f1", "mae", "auc")
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "auc": True, "mae": False}
MAX_CALIB = 256


class DataError(EdgeloopError):
    """The data does not fit the model or the metric (exit code 2)."""


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None
    x_calib: np.ndarray | None = None
    where: str = "<data>"
    classes: list | None = None  # y holds indices into these class names (CSV, image folders)
    test_index: np.ndarray | None = None  # a test split fixed by the source (e.g. an official test set)
    held_out: str = "a 30% split of DATA"  # what the reported metric is measured on


@dataclass
class Splits:
    """The splits described in the module docstring; ``task`` is classification|regression."""

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_tune: np.ndarray
    y_tune: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_calib: np.ndarray
    task: str
    metric: str
    where: str = "<data>"
    held_out: str = "a 30% split of DATA"


def read_npz(path: str | Path) -> Dataset:
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError("no such file", where=where) from None
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), ...
        raise DataError(f"cannot read as .npz ({type(e).__name__}: {e})", where=where) from None
    if "x" not in arrays:
        raise DataError(f"no array 'x' in the .npz (has: {', '.join(sorted(arrays)) or 'nothing'})",
                        where=where)
    return Dataset(arrays["x"], arrays.get("y"), arrays.get("x_calib"), where)


def read_dataset(path: str | Path, label_column: str | None = None) -> Dataset:
    """Read DATA for shrink: .npz here, anything else through ``edgeloop.data.read_any``."""
    p = Path(path)
    where = str(path)
    if p.suffix.lower() == ".npz":
        return read_npz(p)
    try:
        from edgeloop.data import read_any  # type: ignore[attr-defined]
    except ImportError:
        raise DataError("only .npz data (arrays x, y, optional x_calib) is supported by this "
                        "installation", where=where) from None
    try:
        got: Any = read_any(p, label_column=label_column)
    except EdgeloopError as e:
        raise e.with_where(where)
    return _dataset_from_reader(got, where)


def _dataset_from_reader(got: Any, where: str) -> Dataset:
    """A Dataset from edgeloop.data's RawData (x, y, classes, x_calib, splits)."""
    x = getattr(got, "x", None)
    if x is None:
        raise DataError("the data reader returned no samples", where=where)
    y = getattr(got, "y", None)
    xc = getattr(got, "x_calib", None)
    splits = getattr(got, "splits", None) or {}
    x = np.asarray(x)
    y = None if y is None else np.asarray(y)
    if splits.get("validation") is not None and len(splits["validation"]) and splits.get("train") is not None:
        # A dataset folder (edgeloop data import): its test split belongs to the final score,
        # touched once (edgeloop train did). Shrink selects on the validation split and
        # trains/tunes on the train split, so the test split stays unseen.
        train = np.asarray(splits["train"], dtype=np.int64)
        val = np.asarray(splits["validation"], dtype=np.int64)
        keep = np.concatenate([train, val])
        return Dataset(x[keep], None if y is None else y[keep], None if xc is None else np.asarray(xc), where,
                       classes=getattr(got, "classes", None),
                       test_index=np.arange(len(train), len(keep)),
                       held_out="the dataset's validation split (its test split is left untouched)")
    test = splits.get("test")
    return Dataset(x, y, None if xc is None else np.asarray(xc), where,
                   classes=getattr(got, "classes", None),
                   test_index=None if test is None else np.asarray(test),
                   held_out="the source's own test split" if test is not None else "a 30% split of DATA")


def _model_labels_for(y: np.ndarray, classes: list, model_labels: list | None, where: str) -> np.ndarray:
    """Map class indices from a reader to the labels the model outputs.

    A model with label metadata (scikit-learn) is matched by name ("3" == 3);
    a model without (a network's argmax) takes the class index itself.
    """
    if model_labels is None:
        return y
    by_name = {str(lab): lab for lab in model_labels}
    missing = [c for c in classes if str(c) not in by_name]
    if missing and [str(lab) for lab in model_labels] == [str(i) for i in range(len(classes))]:
        # a model trained on class indices (edgeloop train keeps the names in `class_names`):
        # the reader's indices are the model's labels
        return y.astype(np.asarray(model_labels).dtype)
    if missing:
        raise DataError(f"classes {missing[:5]} in the data are not among the model's labels "
                        f"{[str(lab) for lab in model_labels][:10]}", where=where)
    table = np.array([by_name[str(c)] for c in classes], dtype=object)
    out = table[y.astype(np.int64)]
    try:
        return out.astype(np.asarray(model_labels).dtype)
    except (TypeError, ValueError):
        return out


# --------------------------------------------------------------------------- model facts

def input_info(model: onnx.ModelProto) -> tuple[str, list, int]:
    """(name, shape, elem_type) of the single real graph input."""
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise UsageError(f"shrink handles models with one input; this one has {len(ins)}")
    vi = ins[0]
    from edgeloop.graph import tensor_shape

    return vi.name, tensor_shape(vi), vi.type.tensor_type.elem_type


def model_task(model: onnx.ModelProto) -> str:
    """classification or regression, from metadata, else from the outputs."""
    from edgeloop.graph import get_metadata, tensor_shape

    task = get_metadata(model).get("task")
    if task in ("classification", "regression"):
        return task
    out = model.graph.output[0]
    if out.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32,
                                          onnx.TensorProto.STRING):
        return "classification"
    shape = tensor_shape(out)
    if len(shape) >= 2 and isinstance(shape[-1], int) and shape[-1] > 1:
        return "classification"
    return "regression"


def feature_view(model: onnx.ModelProto, x: np.ndarray, where: str = "<data>") -> np.ndarray:
    """``x`` shaped and typed for the model: kept features selected, reshaped if only the layout differs."""
    from edgeloop.graph import get_metadata

    _, shape, elem = input_info(model)
    kept = get_metadata(model).get("kept_features")
    per = list(shape[1:])
    if kept is not None and x.ndim == 2 and len(per) == 1 and x.shape[1] != per[0] \
            and x.shape[1] > max(kept):
        x = x[:, list(kept)]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    if x.dtype.kind not in "fiub":
        raise DataError(f"x has dtype {x.dtype}; expected numbers", where=where)
    if all(isinstance(d, int) for d in per):
        want = math.prod(per)
        have = math.prod(x.shape[1:])
        got = tuple(x.shape[1:])
        if got != tuple(per):
            if have != want:
                raise DataError(
                    f"x has samples of shape {got} ({have} values) but the model "
                    f"input takes {tuple(per)} ({want} values)", where=where)
            if len(per) == 3 and got == (per[2], per[0], per[1]):
                x = x.transpose(0, 2, 3, 1)  # channels-first data, channels-last model (TFLite)
            elif len(per) == 3 and got == (per[1], per[2], per[0]):
                x = x.transpose(0, 3, 1, 2)
            elif x.ndim == 2 or [d for d in got if d != 1] == [d for d in per if d != 1]:
                x = x.reshape((x.shape[0], *per))  # flat samples, or only unit axes differ
            else:
                raise DataError(f"x has samples of shape {got} but the model input takes {tuple(per)}",
                                where=where)
    elif x.ndim != len(shape):
        raise DataError(f"x has {x.ndim} dimensions but the model input has {len(shape)}", where=where)
    return np.ascontiguousarray(x.astype(dtype, copy=False))


# --------------------------------------------------------------------------- running

class Predictor:
    """Runs a model over many samples, in chunks of its fixed batch size if it has one."""

    def __init__(self, model: onnx.ModelProto):
        from edgeloop.graph import get_metadata, session

        self.model = model
        self.sess = session(model)
        self.input_name, shape, _ = input_info(model)
        self.batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        self.task = model_task(model)
        self.labels = get_metadata(model).get("labels")

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if self.batch is None:
            return self.sess.run(None, {self.input_name: x})
        b = self.batch
        parts: list[list[np.ndarray]] = []
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
            outs = self.sess.run(None, {self.input_name: chunk})
            parts.append([o[:n] for o in outs])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(predictions, scores): class labels and per-class scores, or regression values and None."""
        outs = self._run(x)
        if self.task == "regression":
            return outs[0].reshape(len(x), -1)[:, 0].astype(np.float64), None
        label_out = next((o for o in outs if o.ndim == 1), None)
        score_out = next((o for o in outs if o.ndim == 2 and o.dtype.kind == "f"), None)
        if label_out is not None:
            return label_out, score_out
        assert score_out is not None
        idx = score_out.argmax(axis=1)
        if self.labels is not None and len(self.labels) == score_out.shape[1]:
            return np.asarray(self.labels)[idx], score_out
        return idx, score_out


def score(metric: str, y: np.ndarray, pred: np.ndarray, scores: np.ndarray | None,
          classes: list | None = None) -> float:
    from sklearn import metrics as skm

    if metric == "accuracy":
        return float(np.mean(pred == y))
    if metric == "f1":
        return float(skm.f1_score(y, pred, average="macro", zero_division=0))
    if metric == "mae":
        return float(np.mean(np.abs(pred.astype(np.float64) - y.astype(np.float64))))
    if metric == "auc":
        if scores is None:
            raise DataError("metric auc needs class scores, and this model outputs labels only")
        probs = _softmax_if_logits(scores)
        labels = classes if classes is not None else list(range(probs.shape[1]))
        if len(np.unique(y)) < 2:
            raise DataError("metric auc needs at least two classes in the held-out data")
        if probs.shape[1] == 2:
            return float(skm.roc_auc_score(np.asarray(y) == labels[1], probs[:, 1]))
        present = [i for i, c in enumerate(labels) if np.any(y == c)]
        p = probs[:, present]
        p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        return float(skm.roc_auc_score(y, p, multi_class="ovr", labels=[labels[i] for i in present]))
    raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def _softmax_if_logits(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.float64)
    if s.min() >= 0 and np.allclose(s.sum(axis=1), 1.0, atol=1e-3):
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def evaluate(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, metric: str) -> float:
    """The metric of ``model`` on (x, y); x is shaped for the model by :func:`feature_view`."""
    p = Predictor(model)
    pred, scores = p.predict(feature_view(model, x))
    classes = p.labels if p.labels is not None else (
        None if scores is None else list(range(scores.shape[1])))
    return score(metric, y, pred, scores, classes)


# --------------------------------------------------------------------------- checks and splits

def check_and_split(model: onnx.ModelProto, ds: Dataset, metric: str, seed: int = 0) -> Splits:
    """Check the data against the model and the metric, then split it (see module docstring)."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    where = ds.where
    if ds.y is None:
        raise DataError("no labels: the data needs y (a label or target per sample) to measure "
                        "the metric", where=where)
    x, y = np.asarray(ds.x), np.asarray(ds.y)
    if x.ndim < 2:
        raise DataError(f"x must hold samples along its first axis, got shape {x.shape}", where=where)
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DataError(f"y must be one label or target per sample, got shape {y.shape}", where=where)
    y = y.reshape(-1)
    if len(y) != len(x):
        raise DataError(f"x has {len(x)} samples but y has {len(y)}", where=where)
    if len(x) < 20:
        raise DataError(f"only {len(x)} samples; shrink needs at least 20 to hold some out", where=where)
    task = model_task(model)
    if ds.classes is not None and task == "classification":
        from edgeloop.graph import get_metadata

        y = _model_labels_for(y, list(ds.classes), get_metadata(model).get("labels"), where)
    if task == "classification" and metric == "mae":
        raise UsageError("metric mae needs a regression model; this model is a classifier "
                         "(use accuracy, f1 or auc)")
    if task == "regression" and metric != "mae":
        raise UsageError(f"metric {metric} needs a classifier; this model is a regression model "
                         "(use mae)")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError("x holds NaN or infinite values", where=where)
    feature_view(model, x[:2], where)  # shape check, fails early with one line
    if ds.x_calib is not None:
        feature_view(model, np.asarray(ds.x_calib)[:2], where)
    from sklearn.model_selection import train_test_split

    if task == "classification":
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise DataError("y holds NaN or infinite labels", where=where)
        from edgeloop.graph import get_metadata

        labels = get_metadata(model).get("labels")
        if labels is not None:
            unknown = set(np.unique(y).tolist()) - set(labels)
            if unknown:
                raise DataError(f"y holds labels the model does not know: "
                                f"{sorted(map(str, unknown))[:5]}", where=where)
        else:  # a network's argmax: y must be class indices
            from edgeloop.graph import tensor_shape

            n_cls = tensor_shape(model.graph.output[0])[-1] if tensor_shape(model.graph.output[0]) else None
            ok = y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(y == np.round(y)))
            if not ok or y.min() < 0 or (isinstance(n_cls, int) and y.max() >= n_cls):
                raise DataError(f"this model outputs class scores without label names, so y must hold "
                                f"class indices 0..{(n_cls or 0) - 1}; got values such as "
                                f"{[str(v) for v in np.unique(y)[:3]]}", where=where)
            y = y.astype(np.int64)
        counts = np.unique(y, return_counts=True)[1]
        strat = y if counts.min() >= 4 else None
    else:
        if y.dtype.kind not in "fiu":
            raise DataError(f"a regression target must be numeric, got dtype {y.dtype}", where=where)
        strat = None
    idx = np.arange(len(x))
    if ds.test_index is not None and 0 < len(ds.test_index) < len(x):
        test = np.asarray(ds.test_index, dtype=np.int64)  # the source's own test set
        dev = np.setdiff1d(idx, test)
        strat = y if strat is not None and np.unique(y[dev], return_counts=True)[1].min() >= 4 else None
    else:
        dev, test = train_test_split(idx, test_size=0.3, random_state=seed, stratify=strat)
    strat_dev = y[dev] if strat is not None else None
    try:
        fit, tune = train_test_split(dev, test_size=0.3, random_state=seed, stratify=strat_dev)
    except ValueError:
        fit, tune = train_test_split(dev, test_size=0.3, random_state=seed)
    if ds.x_calib is not None:
        x_calib = np.asarray(ds.x_calib)
    else:
        rng = np.random.default_rng(seed)
        x_calib = x[rng.permutation(fit)[:MAX_CALIB]]
    return Splits(x[fit], y[fit], x[tune], y[tune], x[test], y[test], x_calib, task, metric, where,
                  held_out=ds.held_out if ds.test_index is not None and 0 < len(ds.test_index) < len(x)
                  else "a 30% split of DATA")
