"""The dataset folder: arrays, a seeded split and a card, written atomically.

Layout of a dataset folder (``edgeloop data import`` writes it)::

    x.npy          float32 samples: [N, F] tables, [N, C, H, W] images, [N, C, T] series
    y.npy          int64 class indices into card["classes"], or float32 regression targets
    x_calib.npy    optional float32 calibration samples (no labels)
    splits.json    {"seed": s, "train": [...], "validation": [...], "test": [...]} sample indices
    card.json      classes, counts per split, shapes, dtypes, source, SHA-256 of every file above

``load_dataset`` checks the checksums, so a dataset changed after import is
refused rather than silently trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.data.readers import DataError, RawData
from edgeloop.fsutil import check_output_dir, staged_dir
from edgeloop.errors import UsageError

FORMAT = "edgeloop-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}


def check_files(p: Path, card: dict, required: tuple[str, ...], verify: bool = True) -> None:
    """The files a dataset folder needs are there and, with ``verify``, every file the card
    lists matches its SHA-256 (a dataset changed after import is refused)."""
    where = str(p)
    for name in required:
        if not (p / name).is_file():
            raise DataError(f"missing {name}", where=where)
    if verify:
        for name, digest in (card.get("checksums") or {}).items():
            f = p / name
            if not f.is_file():
                raise DataError(f"missing {name}", where=where)
            if "sha256:" + _sha256(f) != digest:
                raise DataError(f"{name} does not match its checksum in card.json (changed after import?)",
                                where=where)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- windows ---------------------------------------------------------------------------------

def make_windows(raw: RawData, window: int, stride: int | None = None) -> RawData:
    """Cut every series [C, T] into windows [C, window] every ``stride`` steps; labels carry over.

    Windows keep a ``groups`` entry naming their recording, so the split puts
    all windows of one recording on the same side.
    """
    if raw.x.ndim != 3:
        raise UsageError(f"--window needs time series ([N, channels, length]); {raw.source} holds samples of "
                         f"shape {list(raw.x.shape[1:])}")
    stride = stride or window
    length = raw.x.shape[2]
    if window <= 0 or stride <= 0:
        raise UsageError("--window and --stride must be positive")
    if window > length:
        raise UsageError(f"--window {window} is longer than the series ({length} steps)")
    starts = list(range(0, length - window + 1, stride))
    n = len(raw.x)
    x = np.stack([raw.x[:, :, s:s + window] for s in starts], axis=1).reshape(n * len(starts), raw.x.shape[1], window)
    y = np.repeat(raw.y, len(starts))
    groups = np.repeat(raw.groups if raw.groups is not None else np.arange(n), len(starts))
    splits = None
    if raw.splits is not None:
        splits = {k: (np.asarray(v)[:, None] * len(starts) + np.arange(len(starts))[None, :]).reshape(-1)
                  for k, v in raw.splits.items()}
    info = dict(raw.info, window=window, stride=stride, windows_per_series=len(starts), length=window)
    return RawData(x.astype(np.float32), y, raw.classes, raw.x_calib, splits, raw.source, raw.kind, groups, info)


# --- splits ----------------------------------------------------------------------------------

def _stratified_split(labels: np.ndarray, fractions: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Split positions 0..n-1 into len(fractions) parts, class by class.

    Hand-written rather than scikit-learn's train_test_split: the data extra does
    not need scikit-learn, and every class with enough members must land in every
    part (train_test_split only guarantees this for two parts at a time).
    """
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    total = sum(fractions)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        m = len(members)
        counts = [int(round(m * f / total)) for f in fractions[1:]]
        # every later part gets at least one member when the class has one to spare for the first part
        for i in range(len(counts)):
            if counts[i] == 0 and m - sum(counts) > 1:
                counts[i] = 1
        while sum(counts) >= m and any(counts):
            j = int(np.argmax(counts))
            counts[j] -= 1
        first = m - sum(counts)
        bounds = np.cumsum([first] + counts)
        for i, chunk in enumerate(np.split(members, bounds[:-1])):
            parts[i].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.array([], dtype=np.int64) for p in parts]


def _bins(y: np.ndarray, classification: bool) -> np.ndarray:
    if classification:
        return y
    # regression: stratify by quantile bins of the target so every split spans its range
    edges = np.quantile(y, np.linspace(0, 1, 6)[1:-1])
    return np.searchsorted(edges, y)


def make_splits(raw: RawData, seed: int = 0, fractions: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """train/validation/test indices, fixed by ``seed``, stratified by class (or target quantile).

    A source's own splits are kept: with train and test given, validation is
    carved out of train; with all three, nothing changes.
    """
    fr = dict(DEFAULT_FRACTIONS, **(fractions or {}))
    rng = np.random.default_rng(seed)
    classification = raw.classes is not None
    if raw.splits is not None and all(k in raw.splits for k in SPLITS):
        return {k: np.asarray(raw.splits[k], dtype=np.int64) for k in SPLITS}

    def split(pool: np.ndarray, fracs: list[float]) -> list[np.ndarray]:
        if raw.groups is None:
            labels = _bins(raw.y[pool], classification)
            return [pool[p] for p in _stratified_split(labels, fracs, rng)]
        # split whole recordings, each labelled by its first window's label
        g = raw.groups[pool]
        uniq, first = np.unique(g, return_index=True)
        labels = _bins(raw.y[pool][first], classification)
        chosen = _stratified_split(labels, fracs, rng)
        return [pool[np.isin(g, uniq[c])] for c in chosen]

    if raw.splits is not None and "train" in raw.splits and "test" in raw.splits:
        train, val = split(np.asarray(raw.splits["train"], dtype=np.int64), [fr["train"], fr["validation"]])
        return {"train": train, "validation": val, "test": np.asarray(raw.splits["test"], dtype=np.int64)}
    train, val, test = split(np.arange(len(raw)), [fr["train"], fr["validation"], fr["test"]])
    return {"train": train, "validation": val, "test": test}


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0, *,
                  classification: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) positions of ``labels``: a seeded, stratified two-way split.

    The same splitter as :func:`make_splits` (a class with one sample stays on
    the kept side). ``improve`` holds its comparison rows out with it.
    """
    labels = np.asarray(labels).reshape(-1)
    if not 0 < fraction < 1:
        raise UsageError(f"a held-out fraction must be between 0 and 1, got {fraction:g}")
    kept, held = _stratified_split(_bins(labels, classification), [1 - fraction, fraction],
                                   np.random.default_rng(seed))
    return kept, held


# --- write -----------------------------------------------------------------------------------

def _counts(y: np.ndarray, idx: np.ndarray, classes: list[str] | None) -> Any:
    if classes is None:
        sub = y[idx]
        return {"n": int(len(idx)), "mean": float(sub.mean()) if len(sub) else None,
                "min": float(sub.min()) if len(sub) else None, "max": float(sub.max()) if len(sub) else None}
    binc = np.bincount(y[idx], minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, binc)}


def write_dataset(raw: RawData, output: str | os.PathLike, *, seed: int = 0,
                  fractions: dict[str, float] | None = None, overwrite: bool = True) -> Path:
    """Fix the split and write the dataset folder atomically (temp folder + rename).

    An existing dataset folder at ``output`` is replaced only once the new one is
    complete; a folder that is not a dataset is never touched.
    """
    out = Path(output)
    if out.exists():
        if check_output_dir(out, kind="dataset") is not None and not overwrite:
            raise UsageError(f"{out} exists; remove it or pass overwrite")
    if len(raw) == 0:
        raise DataError("holds no samples", where=raw.source)
    splits = make_splits(raw, seed, fractions)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise DataError(f"too few samples ({len(raw)}) for a {name} split", where=raw.source)
    # built beside OUT and renamed into place whole (the folder check above guards a user's own folder)
    with staged_dir(out, kind="dataset") as tmp:
        np.save(tmp / "x.npy", np.ascontiguousarray(raw.x, dtype=np.float32))
        y = raw.y.astype(np.int64 if raw.classes is not None else np.float32)
        np.save(tmp / "y.npy", y)
        files = ["x.npy", "y.npy"]
        if raw.x_calib is not None:
            np.save(tmp / "x_calib.npy", np.ascontiguousarray(raw.x_calib, dtype=np.float32))
            files.append("x_calib.npy")
        split_doc = {"seed": int(seed), **{k: [int(i) for i in splits[k]] for k in SPLITS}}
        (tmp / "splits.json").write_text(json.dumps(split_doc, separators=(",", ":")) + "\n")
        files.append("splits.json")
        card = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": raw.source,
            "kind": raw.kind,
            "task": raw.task,
            "classes": raw.classes,
            "n_samples": int(len(raw)),
            "sample_shape": [int(d) for d in raw.x.shape[1:]],
            "x_dtype": "float32",
            "y_dtype": str(y.dtype),
            "n_calibration": None if raw.x_calib is None else int(len(raw.x_calib)),
            "split": {"seed": int(seed), "sizes": {k: int(len(splits[k])) for k in SPLITS},
                      "kept_from_source": sorted(raw.splits) if raw.splits else []},
            "counts": {k: _counts(y, splits[k], raw.classes) for k in SPLITS},
            "info": _jsonable(raw.info),
            "checksums": {f: "sha256:" + _sha256(tmp / f) for f in files},
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def import_data(source: str | os.PathLike, output: str | os.PathLike, *, label_column: str | None = None,
                image_size: int | None = None, grayscale: bool | None = None, window: int | None = None,
                stride: int | None = None, seed: int = 0, images: str | os.PathLike | None = None) -> Path:
    """Read a source (see ``read_any``), optionally cut series into windows, and write a dataset folder.

    Detection sources (a YOLO folder, COCO JSON with ``images``, a VOC folder) go to
    :func:`edgeloop.data.detection.import_detection`."""
    from edgeloop.data.detection import detection_source, import_detection
    from edgeloop.data.readers import read_any

    if images is not None or detection_source(Path(source)) is not None:
        return import_detection(source, output, images=images, seed=seed)

    raw = read_any(source, label_column, image_size=image_size, grayscale=grayscale)
    if window is not None:
        raw = make_windows(raw, window, stride)
    elif stride is not None:
        raise UsageError("--stride needs --window")
    return write_dataset(raw, output, seed=seed)


# --- read ------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A dataset folder, loaded and checked. ``train``/``val``/``test`` are (x, y) pairs."""

    path: Path
    card: dict
    x: np.ndarray
    y: np.ndarray
    splits: dict[str, np.ndarray]
    x_calib: np.ndarray | None
    checksum: str  # SHA-256 of card.json, which itself holds every array's checksum

    @property
    def classes(self) -> list[str] | None:
        return self.card.get("classes")

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def kind(self) -> str:
        return self.card.get("kind", "table")

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = self.splits[name]
        return self.x[idx], self.y[idx]

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.split("train")

    @property
    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.split("validation")

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.split("test")

    def raw(self) -> RawData:
        return RawData(self.x, self.y, self.classes, self.x_calib, dict(self.splits), str(self.path),
                       self.kind, None, dict(self.card.get("info") or {}))


def load_dataset(path: str | os.PathLike, *, verify: bool = True) -> Any:
    """Open a dataset folder; with ``verify`` every file must match its checksum in the card.

    A :class:`Dataset` (arrays), or a :class:`edgeloop.data.detection.DetectionDataset` for a
    folder of images with boxes."""
    p = Path(path)
    where = str(p)
    card_path = p / "card.json"
    if not card_path.is_file():
        raise DataError("not a dataset folder (no card.json); make one with `edgeloop data import`", where=where)
    try:
        card_bytes = card_path.read_bytes()
        card = json.loads(card_bytes)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read card.json ({e})", where=where) from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise DataError("card.json is not an edgeloop dataset card", where=where)
    if card.get("kind") == "detection":  # images with boxes (edgeloop.data.detection)
        from edgeloop.data.detection import load_detection

        return load_detection(p, card, card_bytes, verify)
    check_files(p, card, ("x.npy", "y.npy", "splits.json"), verify)
    try:
        x = np.load(p / "x.npy", allow_pickle=False)
        y = np.load(p / "y.npy", allow_pickle=False)
        x_calib = np.load(p / "x_calib.npy", allow_pickle=False) if (p / "x_calib.npy").is_file() else None
        split_doc = json.loads((p / "splits.json").read_text())
    except Exception as e:
        raise DataError(f"cannot read dataset arrays ({type(e).__name__}: {e})", where=where) from None
    splits = {}
    for k in SPLITS:
        idx = np.asarray(split_doc.get(k, []), dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(x)):
            raise DataError(f"splits.json: '{k}' holds indices outside 0..{len(x) - 1}", where=where)
        splits[k] = idx
    if len(x) != len(y):
        raise DataError(f"x.npy has {len(x)} samples but y.npy {len(y)}", where=where)
    return Dataset(p, card, x, y, splits, x_calib, "sha256:" + hashlib.sha256(card_bytes).hexdigest())
