"""Named splits of one labelled dataset, checked against the model they will measure.

The names are a dataset folder's (``splits.json``), and each has one job:

- ``train``: everything that fits (refits of a scikit-learn source, the pruning
  passes' weight reconstruction, fine-tunes) and, when the data brings no
  ``x_calib``, the int8 calibration samples;
- ``validation``: everything that chooses (the calibration method, the layers
  kept float, the features kept, which candidate wins);
- ``test``: the number reported, measured once after every choice is made. It
  never enters a fit or a choice: :class:`edgeloop.passes.PassData` has no
  place for it.

``split_for_model(model, raw, metric)`` maps a reader's labels to the model's,
checks shapes and values, and keeps the source's own splits (a dataset folder's
three; a source's official test set, with validation carved out of its train
part) or makes them with the one seeded, stratified splitter
(:func:`edgeloop.data.store.make_splits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgeloop.data.scoring import DETECTION_METRICS, METRICS, feature_view, model_task
from edgeloop.data.readers import DataError, RawData
from edgeloop.data.store import SPLITS, make_splits
from edgeloop.errors import UsageError

FIT, SELECT, REPORT = "train", "validation", "test"
# shrink on data without its own splits: more validation and test than an import's 70/15/15,
# since the search compares candidates a fraction of a point apart
SEARCH_FRACTIONS = {"train": 0.5, "validation": 0.25, "test": 0.25}
MAX_CALIB = 256
MIN_SAMPLES = 20


@dataclass
class Splits:
    """(x, y) per split name (``train``, ``validation``, ``test``), the calibration samples and the task."""

    parts: dict[str, tuple[np.ndarray, np.ndarray]]
    x_calib: np.ndarray
    task: str
    metric: str
    where: str = "<data>"
    held_out: str = ""

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.parts:
            raise KeyError(f"no split named {name!r}; the splits are {', '.join(self.parts)}")
        return self.parts[name]

    def x(self, name: str) -> np.ndarray:
        return self[name][0]

    def y(self, name: str) -> np.ndarray:
        return self[name][1]

    def sizes(self) -> dict[str, int]:
        return {k: int(len(v[1])) for k, v in self.parts.items()}


def _labels_for_model(raw: RawData, model: onnx.ModelProto, task: str, where: str) -> np.ndarray:
    """The reader's labels (class indices into ``raw.classes``, or targets) as the model's output values."""
    from edgeloop.graph import get_metadata, tensor_shape

    y = np.asarray(raw.y).reshape(-1)
    classes = None if raw.classes is None else [str(c) for c in raw.classes]
    if task == "regression":
        if classes is None:
            return y.astype(np.float64)
        try:  # integer-valued targets that the reader took for classes
            return np.asarray([float(c) for c in classes], dtype=np.float64)[y.astype(np.int64)]
        except ValueError:
            raise DataError(f"a regression model needs numeric targets; y holds classes such as "
                            f"{classes[:3]}", where=where) from None
    labels = get_metadata(model).get("labels")
    if classes is None:  # integer labels with too many values for the reader to call them classes
        if not np.all(y == np.round(y)):
            raise DataError("this model is a classifier but y holds real-valued targets", where=where)
        values = y.astype(np.int64)
    elif labels is not None:
        by_name = {str(lab): lab for lab in labels}
        missing = [c for c in classes if c not in by_name]
        if missing and [str(lab) for lab in labels] == [str(i) for i in range(len(classes))]:
            # a model trained on class indices (edgeloop train keeps the names in `class_names`)
            return y.astype(np.asarray(labels).dtype)
        if missing:
            raise DataError(f"classes {missing[:5]} in the data are not among the model's labels "
                            f"{[str(lab) for lab in labels][:10]}", where=where)
        out = np.array([by_name[c] for c in classes], dtype=object)[y.astype(np.int64)]
        try:
            return out.astype(np.asarray(labels).dtype)
        except (TypeError, ValueError):
            return out
    else:
        shape = tensor_shape(model.graph.output[0])
        n_out = shape[-1] if shape and isinstance(shape[-1], int) else None
        try:
            values = np.asarray([int(c) for c in classes], dtype=np.int64)[y.astype(np.int64)]
        except ValueError:
            if n_out is not None and len(classes) == n_out:
                values = y.astype(np.int64)  # named classes (an image folder): their order is the index
            else:
                raise DataError(f"this model outputs class scores without label names, so y must hold "
                                f"class indices 0..{(n_out or 0) - 1}; got values such as {classes[:3]}",
                                where=where) from None
    if labels is not None:
        unknown = set(np.unique(values).tolist()) - set(labels)
        if unknown:
            raise DataError(f"y holds labels the model does not know: {sorted(map(str, unknown))[:5]}",
                            where=where)
        return values
    shape = tensor_shape(model.graph.output[0])
    n_out = shape[-1] if shape and isinstance(shape[-1], int) else None
    if values.min() < 0 or (n_out is not None and values.max() >= n_out):
        raise DataError(f"this model outputs class scores without label names, so y must hold class "
                        f"indices 0..{(n_out or 0) - 1}; got values such as "
                        f"{[str(v) for v in np.unique(values)[:3]]}", where=where)
    return values


def split_for_model(model: onnx.ModelProto, raw: RawData, metric: str, *, seed: int = 0,
                    fractions: dict[str, float] | None = None) -> Splits:
    """Check ``raw`` against the model and the metric, then fix its named splits (see the module docstring)."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    where = raw.source or "<data>"
    if metric in DETECTION_METRICS:
        raise UsageError(f"--metric {metric} scores a detector on a detection dataset (images with boxes: "
                         "`edgeloop data import` of a YOLO folder, COCO JSON or Pascal VOC)", where=where)
    x = np.asarray(raw.x)
    if x.ndim < 2:
        raise DataError(f"x must hold samples along its first axis, got shape {x.shape}", where=where)
    if len(raw.y) != len(x):
        raise DataError(f"x has {len(x)} samples but y has {len(raw.y)}", where=where)
    if len(x) < MIN_SAMPLES:
        raise DataError(f"only {len(x)} samples; at least {MIN_SAMPLES} are needed to hold some out", where=where)
    task = model_task(model)
    if task == "classification" and metric == "mae":
        raise UsageError("metric mae needs a regression model; this model is a classifier "
                         "(use accuracy, f1 or auc)")
    if task == "regression" and metric != "mae":
        raise UsageError(f"metric {metric} needs a classifier; this model is a regression model (use mae)")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError("x holds NaN or infinite values", where=where)
    feature_view(model, x[:2], where)  # shape check, fails early with one line
    if raw.x_calib is not None:
        feature_view(model, np.asarray(raw.x_calib)[:2], where)
    y = _labels_for_model(raw, model, task, where)
    idx = make_splits(raw, seed, dict(fractions or SEARCH_FRACTIONS))
    for name in SPLITS:
        if len(idx[name]) == 0:
            raise DataError(f"too few samples ({len(x)}) for a {name} split", where=where)
    if raw.x_calib is not None:
        x_calib = np.asarray(raw.x_calib)
    else:  # from the train split only: calibration is fitting, too
        x_calib = x[np.random.default_rng(seed).permutation(idx[FIT])[:MAX_CALIB]]
    kept = set(raw.splits or ())
    if set(SPLITS) <= kept:
        held = "the dataset's validation split chooses, its test split is reported once"
    elif REPORT in kept:
        held = "validation carved out of the source's train split chooses, the source's own test split " \
               "is reported once"
    else:
        held = "a seeded validation split of DATA chooses, a test split is reported once"
    parts = {k: (x[idx[k]], y[idx[k]]) for k in SPLITS}
    return Splits(parts, x_calib, task, metric, where, held)


# --------------------------------------------------------------------------- detection

def is_detection_data(path) -> bool:
    """A detection dataset folder, or a YOLO / Pascal VOC folder that imports as one."""
    import json
    from pathlib import Path

    from edgeloop.data.detection import detection_source

    p = Path(path)
    if (p / "card.json").is_file():
        try:
            return json.loads((p / "card.json").read_text()).get("kind") == "detection"
        except (OSError, ValueError):
            return False
    return p.is_dir() and detection_source(p) is not None


def detection_splits(model: onnx.ModelProto, ds, metric: str) -> Splits:
    """The dataset's named splits as a detector's input tensors (letterboxed by its head) and truths.

    ``x`` of a split is [N, ...] float input tensors; ``y`` an object array of
    ``{"truths": [...], "letterbox": Letterbox, "index": i}``, which
    :func:`edgeloop.data.scoring.evaluate` scores with mAP. Calibration takes train images only.
    """
    from edgeloop.detect import require_head
    from edgeloop.runtime.detect import preprocess

    where = str(ds.path)
    if metric not in DETECTION_METRICS:
        raise UsageError(f"a detection dataset is scored with --metric {' or '.join(DETECTION_METRICS)}, "
                         f"not {metric}", where=where)
    head = require_head(model, "MODEL")
    model_labels = [str(lab) for lab in head["labels"]]
    shared = set(model_labels) & set(ds.labels)
    if not shared:
        raise DataError(f"the model detects {model_labels[:8]} but the dataset's boxes are {ds.labels[:8]}: "
                        "no class in common", where=where)
    parts = {}
    for name in SPLITS:
        idx = ds.split(name)
        if not idx:
            raise DataError(f"the {name} split holds no images", where=where)
        xs, ys = [], np.empty(len(idx), dtype=object)
        for k, i in enumerate(idx):
            t, box = preprocess(ds.image(i), head, np.float32)
            xs.append(t)
            ys[k] = {"truths": ds.truths(i), "letterbox": box, "index": int(i)}
        parts[name] = (np.concatenate(xs).astype(np.float32), ys)
    for name in (SELECT, REPORT):
        if not any(t["label"] in shared for y in parts[name][1] for t in y["truths"]):
            raise DataError(f"the {name} split holds no boxes of the model's classes ({', '.join(sorted(shared))})",
                            where=where)
    x_train = parts[FIT][0]
    x_calib = x_train[np.random.default_rng(0).permutation(len(x_train))[:MAX_CALIB]]
    held = "the dataset's validation split chooses, its test split is reported once"
    return Splits(parts, x_calib, "detection", metric, where, held)
