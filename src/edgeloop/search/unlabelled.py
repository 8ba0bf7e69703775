"""Shrinking without labels: the float model is the reference.

``--metric agreement``: top-1 agreement with the float model (the share of
samples whose arg-max class is the float model's); ``--max-drop`` is the
largest loss of agreement accepted (the float model agrees with itself: 1.0).

For a detector (a model with a ``head`` in its metadata) ``agreement`` is box
agreement: per image, the model's boxes are matched to the float model's (same
label, IoU >= 0.5, best score first, each float box used once), and the score
is ``2 * matched / (boxes + float boxes)`` over all images (1.0 for the float
model; a missed and an extra box both count against it).

``--metric fidelity``: relative output error against the float model,
``||out - ref|| / ||ref||`` over every float output of every sample (0.0 for
the float model); ``--max-drop`` is the largest relative error accepted.

The data may be unlabelled (:func:`edgeloop.data.readers.read_unlabelled`):
the reference ``y`` of every sample is computed here from the float model,
then the one seeded splitter (:func:`edgeloop.data.store.make_splits`) fixes
train (calibration, refits), validation (every choice) and test (reported
once), exactly as for labelled data.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgeloop.data.readers import DataError, RawData
from edgeloop.errors import UsageError

UNLABELLED_METRICS = ("agreement", "fidelity")


def image_spec(model: onnx.ModelProto) -> dict | None:
    """How an image becomes the model's input: layout, size, channels and value range; None if the
    input is not an image (rank 4 with 1, 3 or 4 channels)."""
    from edgeloop.data.scoring import input_info
    from edgeloop.graph import get_metadata

    _, shape, _ = input_info(model)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return None
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3):
        layout, (h, w, c) = "NHWC", shape[1:]
    elif shape[1] in (1, 3, 4):
        layout, (c, h, w) = "NCHW", shape[1:]
    else:
        return None
    meta = get_metadata(model)
    head_in = (meta.get("head") or {}).get("input") if isinstance(meta.get("head"), dict) else None
    rng = (head_in or {}).get("range") or meta.get("input_range") or [0.0, 1.0]
    try:
        lo, hi = float(rng[0]), float(rng[1])
    except (TypeError, ValueError, IndexError):
        raise UsageError(f"the model's metadata gives an input range {rng!r}; expected [low, high]") from None
    return {"layout": layout, "size": [int(h), int(w)], "channels": int(c), "range": [lo, hi]}


BOX_IOU = 0.5


def is_detector(model: onnx.ModelProto) -> bool:
    from edgeloop.graph import get_metadata

    return isinstance(get_metadata(model).get("head"), dict)


def boxes(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Each image's detections (at the head's own score threshold, in input-tensor pixels): object array."""
    from edgeloop.data.scoring import DetectionPredictor
    from edgeloop.runtime.detect import Letterbox

    p = DetectionPredictor(model)
    w, h = p.head["input"]["size"]
    same = Letterbox(int(w), int(h), 1.0, 1.0, 0.0, 0.0)
    dets = p.detect(np.asarray(x), [same] * len(x), min_score=None)
    out = np.empty(len(dets), dtype=object)
    out[:] = dets
    return out


def box_agreement(preds, refs, iou: float = BOX_IOU) -> float:
    """2 * matched / (boxes + reference boxes) over all images (see the module docstring)."""
    from edgeloop.runtime.detect import box_iou

    if len(preds) != len(refs):
        raise DataError(f"{len(preds)} images of detections for {len(refs)} reference images")
    matched = total = 0
    for dets, ref in zip(preds, refs):
        total += len(dets) + len(ref)
        if not dets or not ref:
            continue
        ious = box_iou(np.asarray([d["box"] for d in dets]), np.asarray([r["box"] for r in ref]))
        taken = np.zeros(len(ref), dtype=bool)
        for i in sorted(range(len(dets)), key=lambda k: -float(dets[k].get("score", 1.0))):
            ok = [j for j in range(len(ref)) if not taken[j] and str(ref[j]["label"]) == str(dets[i]["label"])
                  and ious[i, j] >= iou]
            if ok:
                taken[max(ok, key=lambda j: ious[i, j])] = True
                matched += 1
    return 1.0 if total == 0 else float(2 * matched / total)


def top1(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Each sample's top-1: the label a classifier predicts, else the arg-max of the first output."""
    from edgeloop.data.scoring import Predictor, feature_view

    p = Predictor(model)
    xs = feature_view(model, x)
    if p.task == "classification":
        return np.asarray(p.predict(xs)[0])
    out = p._run(xs)[0]
    return out.reshape(len(xs), -1).argmax(axis=1)


def outputs_flat(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Every float output of every sample, flattened side by side: [N, D] float64."""
    from edgeloop.data.scoring import Predictor, feature_view

    p = Predictor(model)
    xs = feature_view(model, x)
    outs = [o for o in p._run(xs) if o.dtype.kind == "f"]
    if not outs:
        raise UsageError("metric fidelity needs a model with a float output; this one outputs labels only "
                         "(use --metric agreement)")
    return np.concatenate([o.reshape(len(xs), -1).astype(np.float64) for o in outs], axis=1)


def evaluate_unlabelled(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, metric: str) -> float:
    """agreement (higher is better) or fidelity (relative error, lower is better) against ``y``."""
    if metric == "agreement" and is_detector(model):
        return box_agreement(boxes(model, x), list(y))
    if metric == "agreement":
        pred = top1(model, x)
        y = np.asarray(y).reshape(-1)
        if (y.dtype.kind in "USO") != (pred.dtype.kind in "USO"):
            return float(np.mean(y.astype(str) == pred.astype(str)))
        return float(np.mean(y == pred))
    if metric == "fidelity":
        out = outputs_flat(model, x)
        ref = np.asarray(y, dtype=np.float64).reshape(out.shape)
        return float(np.linalg.norm(out - ref) / max(float(np.linalg.norm(ref)), 1e-12))
    raise UsageError(f"unknown unlabelled metric {metric!r}; choose {' or '.join(UNLABELLED_METRICS)}")


def unlabelled_splits(model: onnx.ModelProto, raw: RawData, metric: str, *, seed: int = 0):
    """Named splits whose ``y`` is the float model's reference (labels in ``raw`` are ignored)."""
    from edgeloop.data.scoring import feature_view
    from edgeloop.data.splits import FIT, MAX_CALIB, MIN_SAMPLES, SEARCH_FRACTIONS, Splits
    from edgeloop.data.store import SPLITS, make_splits

    if metric not in UNLABELLED_METRICS:
        raise UsageError(f"unknown unlabelled metric {metric!r}; choose {' or '.join(UNLABELLED_METRICS)}")
    where = raw.source or "<data>"
    x = np.asarray(raw.x)
    if len(x) < MIN_SAMPLES:
        raise DataError(f"only {len(x)} samples; at least {MIN_SAMPLES} are needed to hold some out",
                        where=where)
    try:
        feature_view(model, x[:2], where)  # shape check with one line
        detector = metric == "agreement" and is_detector(model)
        y = boxes(model, x) if detector else top1(model, x) if metric == "agreement" else outputs_flat(model, x)
    except DataError as e:
        raise e.with_where(where)
    # stratify by the float model's top-1 for agreement; one bin for fidelity
    if metric == "agreement" and not detector:
        _, strat = np.unique(np.asarray(y).astype(str), return_inverse=True)
        classes = [str(i) for i in range(int(strat.max()) + 1)]
    else:
        strat, classes = np.zeros(len(x), dtype=np.int64), ["0"]
    keyed = RawData(x, strat.reshape(-1), classes, None, raw.splits, where, raw.kind, raw.groups)
    idx = make_splits(keyed, seed, dict(SEARCH_FRACTIONS))
    for name in SPLITS:
        if len(idx[name]) == 0:
            raise DataError(f"too few samples ({len(x)}) for a {name} split", where=where)
    if raw.x_calib is not None:
        x_calib = np.asarray(raw.x_calib)
    else:  # from the train split only
        x_calib = x[np.random.default_rng(seed).permutation(idx[FIT])[:MAX_CALIB]]
    parts = {k: (x[idx[k]], np.asarray(y)[idx[k]]) for k in SPLITS}
    held = ("no labels: the float model's outputs are the reference; a seeded validation split chooses, "
            "a test split is reported once")
    task = "detection" if detector else "classification" if metric == "agreement" else "regression"
    return Splits(parts, x_calib, task, metric, where, held)
