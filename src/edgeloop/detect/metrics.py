"""Mean average precision the way COCO's evaluator computes it.

Written out here rather than importing pycocotools at run time: the evaluator
is small, pycocotools wants its own JSON structures and a compiled extension,
and shrink calls this in its inner loop. The test suite checks the numbers
against pycocotools on the same boxes. What is reproduced: per image and
class, detections sorted by score (stable) and cut at ``max_dets``; each
detection matched greedily to the unmatched ground-truth box of highest IoU
at or above the threshold; across images, detections sorted again by score
(merge sort, so ties keep image order); precision made monotone and read at
101 recall points; classes without ground truth left out of the mean.
Boxes are ``[x1, y1, x2, y2]`` in pixels; areas are ``w * h`` (no +1).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from edgeloop.runtime.detect import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _as_boxes(items: Sequence[Dict[str, Any]]) -> np.ndarray:
    return np.asarray([d["box"] for d in items], dtype=np.float64).reshape(-1, 4)


def evaluate(predictions: Sequence[Sequence[Dict[str, Any]]], truths: Sequence[Sequence[Dict[str, Any]]],
             iou_thresholds: Sequence[float] = tuple(IOU_THRESHOLDS), max_dets: int = 100) -> Dict[str, Any]:
    """mAP over images. ``predictions[i]`` are image i's detections (``box``, ``score``,
    ``label``), ``truths[i]`` its ground truth (``box``, ``label``).

    Returns ``map`` (mean over IoU 0.50:0.95 and classes), ``map50``, ``map75`` (when those
    thresholds are evaluated) and ``per_class`` AP at 0.50:0.95 and 0.50.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction lists for {len(truths)} images")
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    labels = sorted({str(d["label"]) for img in truths for d in img}
                    | {str(d["label"]) for img in predictions for d in img})
    per_class: Dict[str, Dict[str, float]] = {}
    aps = []  # [class, threshold]
    for label in labels:
        scores_all: List[np.ndarray] = []
        matched_all: List[np.ndarray] = []
        n_gt = 0
        for dets, gts in zip(predictions, truths):
            g = [d for d in gts if str(d["label"]) == label]
            p = [d for d in dets if str(d["label"]) == label]
            n_gt += len(g)
            if not p:
                continue
            sc = np.asarray([float(d["score"]) for d in p])
            order = np.argsort(-sc, kind="mergesort")[:max_dets]
            sc = sc[order]
            tp = np.zeros((len(thr), len(order)), dtype=bool)
            if g:
                ious = box_iou(_as_boxes(p)[order], _as_boxes(g))
                for t, th in enumerate(thr):
                    taken = np.zeros(len(g), dtype=bool)
                    for di in range(len(order)):
                        best, best_iou = -1, min(th, 1 - 1e-10)
                        for gi in range(len(g)):
                            if taken[gi] or ious[di, gi] < best_iou:
                                continue
                            best, best_iou = gi, ious[di, gi]
                        if best >= 0:
                            taken[best] = True
                            tp[t, di] = True
            scores_all.append(sc)
            matched_all.append(tp)
        if n_gt == 0:
            continue
        if scores_all:
            sc = np.concatenate(scores_all)
            tp = np.concatenate(matched_all, axis=1)
            order = np.argsort(-sc, kind="mergesort")
            tp = tp[:, order]
        else:
            tp = np.zeros((len(thr), 0), dtype=bool)
        ap_t = np.zeros(len(thr))
        for t in range(len(thr)):
            tps = np.cumsum(tp[t]).astype(np.float64)
            fps = np.cumsum(~tp[t]).astype(np.float64)
            rc = tps / n_gt
            pr = tps / (fps + tps + np.spacing(1))
            # precision envelope, right to left
            pr = np.maximum.accumulate(pr[::-1])[::-1] if pr.size else pr
            q = np.zeros(len(RECALL_POINTS))
            idx = np.searchsorted(rc, RECALL_POINTS, side="left")
            ok = idx < len(pr)
            q[ok] = pr[idx[ok]]
            ap_t[t] = q.mean()
        aps.append(ap_t)
        per_class[label] = {"ap": float(ap_t.mean()), "ap50": float(ap_t[0]), "ground_truth": n_gt}
    result: Dict[str, Any] = {"per_class": per_class}
    if not aps:
        result.update(map=None, map50=None, map75=None)
        return result
    a = np.asarray(aps)
    result["map"] = float(a.mean())
    for name, value in (("map50", 0.5), ("map75", 0.75)):
        hit = np.nonzero(np.isclose(thr, value))[0]
        result[name] = float(a[:, hit[0]].mean()) if hit.size else None
    return result


def map50(predictions, truths) -> float:
    r = evaluate(predictions, truths, iou_thresholds=(0.5,))
    return 0.0 if r["map50"] is None else r["map50"]


def centroid_f1(predictions: Sequence[Sequence[Dict[str, Any]]],
                truths: Sequence[Sequence[Dict[str, Any]]]) -> Dict[str, Any]:
    """F1 of centroid detections (the FOMO score): per image, detections best score first,
    each counts as a true positive when its box centre falls inside a still unmatched true
    box of its class (the one whose centre is nearest, when several hold it); every other
    detection is a false positive and every unmatched true box a false negative.

    Returns ``f1``, ``precision``, ``recall`` and the counts ``tp``, ``fp``, ``fn``. With no
    detections and no true boxes at all the score is 1.0 (nothing to find, nothing found).
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction lists for {len(truths)} images")
    tp = fp = fn = 0
    for dets, gts in zip(predictions, truths):
        g = _as_boxes(gts)
        g_labels = [str(d["label"]) for d in gts]
        taken = np.zeros(len(g), dtype=bool)
        order = sorted(range(len(dets)), key=lambda i: -float(dets[i].get("score", 1.0)))
        for i in order:
            x1, y1, x2, y2 = (float(v) for v in dets[i]["box"])
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            label = str(dets[i]["label"])
            inside = [j for j in range(len(g)) if not taken[j] and g_labels[j] == label
                      and g[j, 0] <= cx <= g[j, 2] and g[j, 1] <= cy <= g[j, 3]]
            if inside:
                j = min(inside, key=lambda k: (cx - (g[k, 0] + g[k, 2]) / 2) ** 2
                        + (cy - (g[k, 1] + g[k, 3]) / 2) ** 2)
                taken[j] = True
                tp += 1
            else:
                fp += 1
        fn += int((~taken).sum())
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall),
            "tp": tp, "fp": fp, "fn": fn}
