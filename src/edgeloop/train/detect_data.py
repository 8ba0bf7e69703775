"""The detection dataset folder (images/, boxes.json, splits.json, card.json), read for training.

The importer (``edgeloop data import`` on YOLO/COCO/VOC) and its
``edgeloop.data.store.load_dataset`` returning a ``DetectionDataset`` live on
another branch; :func:`load_detection` uses that loader when it understands the
folder and otherwise reads the agreed format itself (same attributes: ``labels``,
``records``, ``split(name)``, ``image(i)``, ``truths(i)``, ``card``, ``checksum``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.data.readers import DataError

SPLIT_NAMES = ("train", "validation", "test")


def card_kind(path: str | os.PathLike) -> str | None:
    """The card's ``kind`` ("detection", "image", ...), or None when there is no readable card."""
    try:
        card = json.loads((Path(path) / "card.json").read_text())
    except (OSError, ValueError):
        return None
    return card.get("kind") if isinstance(card, dict) else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DetectionDataset:
    """A detection dataset folder, loaded and checked."""

    def __init__(self, path: Path, card: dict, labels: list[str], records: list[dict],
                 splits: dict[str, list[int]], checksum: str):
        self.path = path
        self.card = card
        self.labels = labels
        self.records = records
        self.splits = splits
        self.checksum = checksum

    task = "detection"
    kind = "detection"

    def split(self, name: str) -> list[int]:
        return list(self.splits.get(name, []))

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        f = self.path / self.records[i]["file"]
        try:
            with Image.open(f) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image ({e})", where=str(f)) from None

    def truths(self, i: int) -> list[dict[str, Any]]:
        return [{"box": [float(v) for v in b["box"]], "label": str(b["label"])} for b in self.records[i]["boxes"]]


def _own_loader(p: Path) -> DetectionDataset:
    where = str(p)
    try:
        card_bytes = (p / "card.json").read_bytes()
        card = json.loads(card_bytes)
        boxes = json.loads((p / "boxes.json").read_text())
        split_doc = json.loads((p / "splits.json").read_text())
    except FileNotFoundError as e:
        raise DataError(f"not a detection dataset folder: missing {Path(e.filename).name}", where=where) from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the dataset ({e})", where=where) from None
    sums = card.get("checksums") or card.get("sha256") or {}
    for name, digest in (sums.items() if isinstance(sums, dict) else ()):
        f = p / name
        if not f.is_file():
            raise DataError(f"missing {name}", where=where)
        if _sha256(f) != str(digest).removeprefix("sha256:"):
            raise DataError(f"{name} does not match its checksum in card.json (changed after import?)", where=where)
    labels = boxes.get("labels")
    records = boxes.get("images")
    if not isinstance(labels, list) or not labels or not isinstance(records, list):
        raise DataError("boxes.json needs 'labels' (a non-empty list) and 'images'", where=str(p / "boxes.json"))
    known = set(labels)
    for k, r in enumerate(records):
        for b in r.get("boxes", []):
            if b.get("label") not in known:
                raise DataError(f"image {k} ({r.get('file')}): box label {b.get('label')!r} is not in 'labels'",
                                where=str(p / "boxes.json"))
    splits = {}
    for name in SPLIT_NAMES:
        idx = [int(i) for i in split_doc.get(name, [])]
        if any(i < 0 or i >= len(records) for i in idx):
            raise DataError(f"splits.json: '{name}' holds indices outside 0..{len(records) - 1}", where=where)
        splits[name] = idx
    return DetectionDataset(p, card, [str(x) for x in labels], records, splits,
                            "sha256:" + hashlib.sha256(card_bytes).hexdigest())


def load_detection(path: str | os.PathLike) -> DetectionDataset:
    """The detection dataset at ``path`` (through edgeloop.data.store when it reads this format)."""
    p = Path(path)
    if card_kind(p) != "detection":
        raise DataError("not a detection dataset folder (card.json kind is not 'detection')", where=str(p))
    try:
        from edgeloop.data.store import load_dataset

        ds = load_dataset(p)
    except DataError as e:
        if (p / "x.npy").exists() or "x.npy" not in str(e):
            raise
        ds = None  # this branch's store does not read detection folders yet
    if ds is not None and hasattr(ds, "records") and hasattr(ds, "truths"):
        return ds
    return _own_loader(p)
