"""Fine-tuning a detector that edgeloop trained (`edgeloop improve` on a detector bundle).

The bundle keeps the float network it shipped (``source/*.pt2``: the FOMO net with its softmax, or
the box net with its decoding, Conv+BN folded) and the model records its trainer (``trainer`` in the
ONNX metadata: ``fomo`` or ``yolo``, its config, the dataset it was trained on). Fine-tuning:

- the data: the labelled captures (a YOLO folder from ``samples export``, COCO JSON, a VOC folder or
  an edgeloop detection dataset) plus the original dataset (``--base-data``, or the one the
  trainer recorded when it is still there with the same checksum);
- the rows: the captures are split once (seeded) into a training part and a held-out part; the
  original dataset keeps its splits: ``train`` is trained on, ``validation`` chooses (early stopping,
  the FOMO heatmap threshold), ``test`` is held out. Old and new are compared on the two held-out
  parts only, which neither model saw;
- the training: the trainer's own loss, augmentation and loop (:mod:`edgeloop.train.detect`) at a
  fifth of its learning rate, from the shipped weights;
- the replay: what the trainer did after training (int8 quantization calibrated on train images
  for FOMO, the head with its threshold) and then the shrink recipe the bundle records.

A detector edgeloop did not train (imported from ONNX/TFLite, an Ultralytics export) has no such
record: it cannot be fine-tuned here, and improve says so in one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgeloop.data.readers import DataError
from edgeloop.errors import UsageError
from edgeloop.train.detect import (METRIC_OF, STRIDE, _best_threshold, _box_loss, _cell_targets, _export_onnx, _fit,
                                   _head_spec, _int8, _object_weight, _predict_torch, _score, _Split)

LR_SHARE = 0.5  # of the trainer's learning rate: fine-tuning starts from trained weights
BASE_LR = {"fomo": 1e-2, "yolo": 5e-3}


def trainer_of(model: Any) -> Optional[dict]:
    """The trainer record of a detector edgeloop trained, or None (an imported detector)."""
    from edgeloop.graph import get_metadata

    t = get_metadata(model).get("trainer")
    if isinstance(t, dict) and t.get("name") in METRIC_OF and t.get("family") == "torch":
        return t
    return None


class Images:
    """Images with their true boxes, the shape :class:`edgeloop.train.detect._Split` reads."""

    def __init__(self, labels: list[str], files: list[Path], truths: list[list[dict]], where: str):
        self.labels, self.files, self._truths, self.path = list(labels), list(files), list(truths), where

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return np.asarray(im.convert("RGB"))

    def truths(self, i: int) -> list[dict]:
        return [dict(b) for b in self._truths[i]]

    def subset(self, idx: list[int]) -> "Images":
        return Images(self.labels, [self.files[i] for i in idx], [self._truths[i] for i in idx], self.path)

    def __add__(self, other: "Images") -> "Images":
        return Images(self.labels, self.files + other.files, self._truths + other._truths, self.path)


def _check_labels(found: list[str], labels: list[str], where: str) -> None:
    unknown = [c for c in found if c not in labels]
    if unknown:
        raise UsageError(f"class '{unknown[0]}' is not one of the detector's classes {labels[:12]}; improve "
                         "fine-tunes the classes the model has", where=where)


def load_labelled_images(path: "str | Path", labels: list[str]) -> Images:
    """Labelled frames: a YOLO folder (``samples export`` writes one), COCO JSON (images beside it in
    images/), a Pascal VOC folder, or an edgeloop detection dataset (every image of it)."""
    from edgeloop.data.detection import detection_source, read_coco, read_voc, read_yolo

    p = Path(path)
    where = str(p)
    if p.is_dir() and (p / "boxes.json").is_file() and (p / "card.json").is_file():
        from edgeloop.data.store import load_dataset

        ds = load_dataset(p)
        _check_labels(list(ds.labels), labels, where)
        return Images(labels, [p / r["file"] for r in ds.records], [ds.truths(i) for i in range(len(ds.records))], where)
    kind = detection_source(p) if p.exists() else None
    if kind == "yolo":
        found, items = read_yolo(p)
    elif kind == "voc":
        found, items = read_voc(p)
    elif kind == "coco":
        found, items, _ = read_coco(p, p.parent / "images")
    elif p.is_dir() and (p / "detections.json").is_file():
        raise UsageError("no labelled frames in this export: label them with `edgeloop label STORE`, then "
                         "run `samples export` again", where=where)
    else:
        raise UsageError("expected labelled detections: a YOLO folder (from `edgeloop samples export`), COCO "
                         "JSON, a VOC folder or an edgeloop detection dataset", where=where)
    used = sorted({b["label"] for it in items for b in it.boxes})
    _check_labels(used, labels, where)
    return Images(labels, [it.source for it in items], [it.boxes for it in items], where)


def original_dataset(base: "str | Path | None", trainer_meta: dict, labels: list[str]):
    """The dataset the detector was trained on: ``base`` (--base-data) or the recorded one, checked."""
    from edgeloop.data.store import load_dataset

    recorded = trainer_meta.get("dataset")
    path = Path(base) if base is not None else (Path(recorded) if isinstance(recorded, str) else None)
    if path is None or not path.is_dir():
        said = f" (the model records {recorded}, which is not there)" if base is None and recorded else ""
        raise UsageError("improve fine-tunes on the labelled captures plus the detector's original data: give "
                         f"--base-data DATASET (the detection dataset it was trained on){said}")
    ds = load_dataset(path)
    if not hasattr(ds, "truths"):
        raise UsageError("--base-data must be a detection dataset folder (`edgeloop data import`)", where=str(path))
    if list(ds.labels) != list(labels):
        raise DataError(f"its classes {list(ds.labels)[:12]} are not the detector's {labels[:12]}", where=str(path))
    if not ds.split("train") or not ds.split("validation"):
        raise DataError("the dataset has an empty train or validation split", where=str(path))
    return ds


def images_of(ds: Any, idx: list[int], labels: list[str]) -> Images:
    """Some images of an edgeloop detection dataset as :class:`Images`."""
    return Images(labels, [Path(ds.path) / ds.records[i]["file"] for i in idx], [ds.truths(i) for i in idx], str(ds.path))


def holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of the captures: one seeded permutation."""
    if fraction <= 0 or n < 4:
        return list(range(n)), []
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(fraction * n)))
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


_CLASSES: dict = {}


def _wrappers() -> dict:
    """The torch wrappers (built once, torch imported lazily). A torch.export module refuses
    train()/eval() (its graph is fixed: Conv+BN folded, no dropout), so ``Fixed`` keeps its mode to
    itself; ``LogProbs`` trains FOMO on the log of its softmax; ``Boxes`` turns the box net's sigmoid
    scores back into logits and its cx, cy, w, h into corners, for the trainer's loss."""
    if _CLASSES:
        return _CLASSES
    import torch
    import torch.nn as nn

    class Fixed(nn.Module):
        def __init__(self, m, n_classes: int = 0, size: tuple = (0, 0)):
            super().__init__()
            self.m, self.n_classes, self.width, self.height = m, n_classes, size[0], size[1]

        def train(self, mode: bool = True):
            self.training = mode
            return self

        def forward(self, x):
            # the shipped program was exported at batch 1 (its graph asserts it): one image a call
            return self.m(x) if x.shape[0] == 1 else torch.cat([self.m(x[i:i + 1]) for i in range(x.shape[0])])

    class LogProbs(Fixed):
        def forward(self, x):
            return torch.log(super().forward(x).clamp_min(1e-7))

    class Boxes(Fixed):
        def raw(self, x):
            y = Fixed.forward(self, x)
            b = y[:, :4].transpose(1, 2)
            xyxy = torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)
            p = y[:, 4:].clamp(1e-6, 1 - 1e-6)
            return xyxy, (torch.log(p) - torch.log1p(-p)).transpose(1, 2)

    _CLASSES.update(Fixed=Fixed, LogProbs=LogProbs, Boxes=Boxes)
    return _CLASSES


def _adapters(kind: str, module: Any, n_classes: int, size: tuple[int, int]):
    """(net trained and validated, net shipped), sharing the module's weights."""
    w = _wrappers()
    train_net = (w["LogProbs"] if kind == "fomo" else w["Boxes"])(module, n_classes, size)
    return train_net, w["Fixed"](module)


def finetune_detector(src: Path, trainer: dict, head: dict, train: Images, val, work: Path, *, epochs: int,
                      seed: int, trust_pickle: bool = False, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Fine-tune the shipped float net ``src`` (.pt2) on ``train``, choosing on ``val``; return the new
    graph (the trainer's int8 step replayed for FOMO, the head attached) and its new .pt2 source."""
    import torch

    from edgeloop.detect import attach_head
    from edgeloop.frontends.torch import load_program
    from edgeloop.runtime.detect import parse_head

    name = trainer["name"]
    labels = [str(v) for v in head["labels"]]
    size = (int(head["input"]["size"][0]), int(head["input"]["size"][1]))
    if size[0] % STRIDE or size[1] % STRIDE:
        raise UsageError(f"the detector's input {size[0]}x{size[1]} is not a multiple of {STRIDE}: not an edgeloop "
                         "trainer's network")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trainer: small nets, a shared CPU (see train_detector)
    try:
        torch.manual_seed(seed)
        module = load_program(src, trust_pickle=trust_pickle).module()
        for p in module.parameters():
            p.requires_grad_(True)
        net, ship = _adapters(name, module, len(labels), size)
        tr, va = _Split(train, list(range(len(train))), size), _Split(val, val.split("validation"), size)
        if not any(len(b) for b in tr.boxes):
            raise DataError("no boxes in the training images: nothing to fine-tune on", where=str(train.path))
        kind = "centroids" if name == "fomo" else "yolov8"
        dec = parse_head(_head_spec(kind, labels, size))
        w, h = size
        gh, gw = h // STRIDE, w // STRIDE
        if name == "fomo":
            weight = torch.ones(len(labels) + 1)
            weight[1:] = float(trainer.get("config", {}).get("object_weight") or _object_weight(tr, gh, gw))
            ce = torch.nn.CrossEntropyLoss(weight=weight)

            def loss_of(m, xb, bb):
                return ce(m(xb), _cell_targets(bb, gh, gw))

            def validate() -> float:
                return _best_threshold(net, va, dec)[1]
        else:
            loss_of = _box_loss

            def validate() -> float:
                return _score("map50", _predict_torch(kind, net, va, dec, 0.01), va.truths)

        before = validate()
        lr = float(trainer.get("config", {}).get("lr") or BASE_LR[name]) * LR_SHARE

        def on_epoch(e: int, loss: float, score: float) -> None:
            if progress is not None:
                progress(f"fine-tuning {name}: epoch {e}/{epochs}, loss {loss:.3f}, validation {METRIC_OF[name]} "
                         f"{score:.3f}")

        start = copy.deepcopy(module.state_dict())
        fit = _fit(net, loss_of, validate, tr, epochs=epochs, lr=lr, batch_size=16, seed=seed,
                   patience=max(5, epochs // 3), on_epoch=on_epoch)
        if fit["best_validation"] < before:  # no epoch beat the shipped weights on validation: keep them
            module.load_state_dict(start)
        spec = _head_spec(kind, labels, size)
        if name == "fomo":
            spec["min_score"] = _best_threshold(net, va, dec)[0]
        model = _export_onnx(ship, size, f"<fine-tuned {name} detector>")
        if name == "fomo":
            model = _int8(model, tr)
        model = attach_head(model, spec, where=f"{name} head")
        new_src = work / src.name
        program = torch.export.export(ship.m, (torch.zeros(1, 3, h, w),))
        torch.export.save(program, str(new_src))
    finally:
        torch.set_num_threads(previous_threads)
    return {"model": model, "source": new_src, "x_train": tr.x, "fit": fit, "validation_before": before,
            "kept_shipped_weights": fit["best_validation"] < before, "lr": lr, "spec": spec}


def detections_of(bundle_model: Any, image: np.ndarray, min_score: Optional[float]) -> list[dict]:
    """A bundle's boxes for one image, as its server computes them (letterbox, run, decode)."""
    from edgeloop.runtime.detect import preprocess

    x, box = preprocess(image, bundle_model.head, bundle_model.input_dtype)
    return bundle_model.detect(bundle_model.run(bundle_model._batch(x)), box, min_score)


def score_bundle(bundle_model: Any, images: Images, metric: str) -> Optional[float]:
    """``metric`` (centroid_f1 or map50) of a bundle on labelled images; None for no images."""
    if not len(images):
        return None
    low = None if metric == "centroid_f1" else 0.01  # mAP ranks every box; F1 uses the head's threshold
    preds = [detections_of(bundle_model, images.image(i), low) for i in range(len(images))]
    return float(_score(metric, preds, [images.truths(i) for i in range(len(images))]))
