"""A detection dataset as training tensors: letterboxed input tensors, boxes in input pixels,
augmentation and FOMO cell targets.

The dataset itself is read by :func:`edgeloop.data.store.load_dataset` (a
:class:`edgeloop.data.detection.DetectionDataset`, checksums checked); this module only
turns its images and boxes into what the trainer feeds PyTorch, through the runtime's own
preprocessing (:func:`edgeloop.runtime.detect.preprocess`), so training sees exactly the
tensors ``predict`` will.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.data.readers import DataError

STRIDE = 8  # every detector here predicts on a grid of 8x8 input pixels


def load_detection(path):
    """The detection dataset folder at ``path`` through the one data layer
    (:func:`edgeloop.data.store.load_dataset`, checksums checked); a one-line DataError for a
    folder holding another kind of dataset."""
    from edgeloop.data.store import load_dataset

    ds = load_dataset(path)
    if getattr(ds, "kind", None) != "detection":
        raise DataError(f"not a detection dataset (its card says kind '{ds.kind}')", where=str(path))
    return ds


def _head_spec(kind: str, labels: list[str], size: tuple[int, int]) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": kind, "labels": list(labels),
                            "input": {"size": list(size), "layout": "NCHW", "range": [0.0, 1.0],
                                      "resize": "letterbox"}}
    if kind == "centroids":
        spec["heatmap"] = {"activation": "none", "layout": "NHWC", "background": True}
    return spec


class _Split:
    """One split as input tensors (the runtime's own preprocessing) and boxes in input pixels."""

    def __init__(self, ds, indices: list[int], size: tuple[int, int]):
        from edgeloop.runtime.detect import parse_head, preprocess

        head = parse_head(_head_spec("centroids", ds.labels, size))
        index = {name: k for k, name in enumerate(ds.labels)}
        self.indices = list(indices)
        xs, self.boxes, self.letterboxes = [], [], []
        for i in self.indices:
            img = ds.image(i)
            x, lb = preprocess(img, head)
            xs.append(x[0])
            truths = ds.truths(i)
            unknown = [b["label"] for b in truths if b["label"] not in index]
            if unknown:
                raise DataError(f"{ds.records[i]['file']}: box label {unknown[0]!r} is not one of the dataset's "
                                f"labels ({', '.join(ds.labels)})", where=str(Path(ds.path) / "boxes.json"))
            rows = [[b["box"][0] * lb.sx + lb.pad_x, b["box"][1] * lb.sy + lb.pad_y,
                     b["box"][2] * lb.sx + lb.pad_x, b["box"][3] * lb.sy + lb.pad_y, index[b["label"]]]
                    for b in truths]
            self.boxes.append(np.asarray(rows, np.float32).reshape(-1, 5))
            self.letterboxes.append(lb)
        w, h = size
        self.x = np.stack(xs).astype(np.float32) if xs else np.zeros((0, 3, h, w), np.float32)
        self.truths = [ds.truths(i) for i in self.indices]


def _augment(x, boxes: list[np.ndarray], gen: np.random.Generator):
    """Horizontal flip, a random crop (70-100 % of each side) resized back, colour jitter
    (brightness, contrast, saturation); boxes follow, those whose centre leaves the crop go."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    out = torch.empty_like(x)
    new_boxes = []
    for k in range(n):
        img = x[k]
        b = boxes[k].copy()
        if gen.random() < 0.5:
            img = torch.flip(img, dims=[2])
            b[:, [0, 2]] = w - b[:, [2, 0]]
        s = gen.uniform(0.7, 1.0)
        cw, chh = max(STRIDE, int(round(w * s))), max(STRIDE, int(round(h * s)))
        ox, oy = int(gen.integers(0, w - cw + 1)), int(gen.integers(0, h - chh + 1))
        img = F.interpolate(img[None, :, oy:oy + chh, ox:ox + cw], size=(h, w), mode="bilinear",
                            align_corners=False)[0]
        if len(b):
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            keep = (cx >= ox) & (cx < ox + cw) & (cy >= oy) & (cy < oy + chh)
            b = b[keep]
            b[:, [0, 2]] = np.clip((b[:, [0, 2]] - ox) * (w / cw), 0, w)
            b[:, [1, 3]] = np.clip((b[:, [1, 3]] - oy) * (h / chh), 0, h)
        bright, contrast, sat = gen.uniform(0.7, 1.3, 3)
        grey = img.mean(0, keepdim=True)
        img = grey + (img - grey) * float(sat)
        img = (img - img.mean()) * float(contrast) + img.mean()
        out[k] = (img * float(bright)).clamp(0, 1)
        new_boxes.append(b)
    return out, new_boxes


def _cell_targets(boxes: list[np.ndarray], gh: int, gw: int):
    """[B, gh, gw] int64: 0 background, class + 1 in the cell holding each box's centre."""
    import torch

    t = torch.zeros(len(boxes), gh, gw, dtype=torch.int64)
    for k, b in enumerate(boxes):
        for x1, y1, x2, y2, c in b:
            cx = min(gw - 1, max(0, int((x1 + x2) / 2 // STRIDE)))
            cy = min(gh - 1, max(0, int((y1 + y2) / 2 // STRIDE)))
            t[k, cy, cx] = int(c) + 1
    return t


def _object_weight(train: _Split, gh: int, gw: int) -> float:
    """Weight of an object cell in the cross-entropy: the background-to-object cell ratio,
    held between 1 and 25 so rare objects are not drowned out nor overcounted."""
    n_obj = sum(len(b) for b in train.boxes)
    n_cells = len(train.boxes) * gh * gw
    return float(np.clip((n_cells - n_obj) / max(1, n_obj), 1.0, 25.0))
