"""The one predictor and the one scorer: how every stage runs a model over samples and scores it.

``train`` (the test score of the graph it ships), the shrink search and its
passes (candidates, layer sensitivity) and ``improve`` (old against new) all
score with :func:`score`; every host-side run of an ONNX graph over many
samples goes through :class:`Predictor` (``improve`` reads predictions from the
bundle runtime, which is what the device runs, and scores them here too).

- ``input_info(model)``: (name, shape, elem_type) of the one real graph input;
- ``model_task(model)``: classification or regression;
- ``feature_view(model, x)``: ``x`` shaped and typed for the model (kept features
  picked, flat samples reshaped, channels-first/last fixed);
- ``Predictor(model).predict(x)``: (predictions, scores), chunked to a fixed batch;
- ``score(metric, y, pred, scores=None, classes=None)``: accuracy, macro F1,
  one-vs-rest AUC or mean absolute error;
- ``evaluate(model, x, y, metric)``: the two together.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from edgeloop.data.readers import DataError
from edgeloop.errors import UsageError

DETECTION_METRICS = ("map50", "map")  # COCO mAP at IoU 0.5, and over 0.50:0.95
# agreement / fidelity need no labels: y holds the float model's own top-1 (agreement) or its
# flattened outputs (fidelity), see edgeloop.search.unlabelled
METRICS = ("accuracy", "f1", "mae", "auc", "agreement", "fidelity") + DETECTION_METRICS
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "auc": True, "mae": False, "agreement": True, "fidelity": False,
                    "map50": True, "map": True}
# detections kept for mAP: COCO-style evaluation ranks every box, so the head's own (deployment)
# threshold would cut the precision-recall curve short
MAP_MIN_SCORE = 0.01


# --------------------------------------------------------------------------- model facts

def input_info(model: onnx.ModelProto) -> tuple[str, list, int]:
    """(name, shape, elem_type) of the single real graph input."""
    from edgeloop.graph import tensor_shape

    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise UsageError(f"this needs a model with one input; this one has {len(ins)}")
    vi = ins[0]
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
    x = np.asarray(x)
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
            elif x.ndim == 2 or len(per) == 1 or [d for d in got if d != 1] == [d for d in per if d != 1]:
                x = x.reshape((x.shape[0], *per))  # flat samples or a flat input, or only unit axes differ
            else:
                raise DataError(f"x has samples of shape {got} but the model input takes {tuple(per)}",
                                where=where)
    elif x.ndim != len(shape):
        if len(shape) == 2:  # a flat input of unknown width takes every sample flattened
            x = x.reshape(len(x), -1)
        else:
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
        """(predictions, scores): class labels and per-class scores, or regression values and None.

        ``x`` must already be shaped for the model (:func:`feature_view`); :func:`predict` does both.
        """
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


def predict(model: onnx.ModelProto, x: np.ndarray, where: str = "<data>") -> tuple[np.ndarray, np.ndarray | None]:
    """:class:`Predictor` on ``x`` shaped for the model by :func:`feature_view`."""
    return Predictor(model).predict(feature_view(model, x, where))


# --------------------------------------------------------------------------- scoring

def _same(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    if (y.dtype.kind in "USO") != (pred.dtype.kind in "USO"):  # "3" against 3: compare as text
        return y.astype(str) == pred.astype(str)
    return y == pred


def score(metric: str, y: np.ndarray, pred: np.ndarray, scores: np.ndarray | None = None,
          classes: list | None = None) -> float:
    """accuracy, macro F1, AUC (higher is better) or mean absolute error (lower is better)."""
    y = np.asarray(y).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric in DETECTION_METRICS:
        raise UsageError(f"metric {metric} scores boxes: use score_detection")
    if len(y) == 0:
        raise DataError(f"no samples to measure {metric} on")
    if len(pred) != len(y):
        raise DataError(f"{len(pred)} predictions for {len(y)} labels")
    if metric == "accuracy":
        return float(np.mean(_same(y, pred)))
    if metric == "mae":
        return float(np.mean(np.abs(pred.astype(np.float64) - y.astype(np.float64))))
    from sklearn import metrics as skm

    if metric == "f1":
        if (y.dtype.kind in "USO") != (pred.dtype.kind in "USO"):
            y, pred = y.astype(str), pred.astype(str)
        return float(skm.f1_score(y, pred, average="macro", zero_division=0))
    # auc
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


def _softmax_if_logits(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.float64)
    if s.min() >= 0 and np.allclose(s.sum(axis=1), 1.0, atol=1e-3):
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def evaluate(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, metric: str) -> float:
    """The metric of ``model`` on (x, y); x is shaped for the model by :func:`feature_view`.

    For ``map50``/``map``, ``x`` holds input tensors and ``y`` the images' truths (see
    :func:`evaluate_detection`)."""
    if metric in DETECTION_METRICS:
        return evaluate_detection(model, x, y, metric)
    if metric in ("agreement", "fidelity"):
        from edgeloop.search.unlabelled import evaluate_unlabelled

        return evaluate_unlabelled(model, x, y, metric)
    p = Predictor(model)
    pred, scores = p.predict(feature_view(model, x))
    classes = p.labels if p.labels is not None else (
        None if scores is None else list(range(scores.shape[1])))
    return score(metric, y, pred, scores, classes)


# --------------------------------------------------------------------------- detection

class DetectionPredictor(Predictor):
    """Runs a detector over input tensors and decodes each image's boxes with the model's head."""

    def __init__(self, model: onnx.ModelProto):
        from edgeloop.detect import require_head

        super().__init__(model)
        self.head = require_head(model, "model")
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.input_dtype = onnx.helper.tensor_dtype_to_np_dtype(input_info(model)[2])

    def detect(self, x: np.ndarray, letterboxes, min_score: float | None = MAP_MIN_SCORE) -> list[list[dict]]:
        """Detections per image: ``x`` [N, ...] float input tensors, ``letterboxes`` their boxes back."""
        from edgeloop.runtime.detect import decode

        x = np.asarray(x)
        if self.input_dtype.kind in "iu":  # an integer input: the head's [scale, zero_point]
            scale, zp = self.head["input"].get("quant") or (1.0, 0)
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale) + zp, info.min, info.max)
        outs = self._run(np.ascontiguousarray(x.astype(self.input_dtype, copy=False)))
        return [decode(self.head, {n: o[i:i + 1] for n, o in zip(self.output_names, outs)}, box, min_score)
                for i, box in enumerate(letterboxes)]


def score_detection(metric: str, predictions: list, truths: list) -> float:
    """COCO mAP (``map50`` at IoU 0.5, ``map`` over 0.50:0.95) of detections against truths."""
    from edgeloop.detect.metrics import evaluate as coco_map

    if metric not in DETECTION_METRICS:
        raise UsageError(f"unknown detection metric {metric!r}; choose one of {', '.join(DETECTION_METRICS)}")
    if not any(truths):
        raise DataError(f"no ground-truth boxes to measure {metric} on")
    r = coco_map(predictions, truths, iou_thresholds=(0.5,)) if metric == "map50" else coco_map(predictions, truths)
    return 0.0 if r[metric] is None else float(r[metric])


def evaluate_detection(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, metric: str) -> float:
    """mAP of a detector: ``x`` [N, ...] input tensors, ``y`` per image ``{"truths", "letterbox"}``."""
    if len(y) == 0:
        raise DataError(f"no images to measure {metric} on")
    preds = DetectionPredictor(model).detect(x, [t["letterbox"] for t in y])
    return score_detection(metric, preds, [t["truths"] for t in y])
