"""Readers: every supported data source becomes one :class:`RawData`.

Sources (``read_any`` picks by what the path is):

- ``.npz`` with arrays ``x`` and ``y`` (optional ``x_calib``, optional ``classes``);
- ``.csv`` with a header row and a label column;
- an image folder with one subfolder per class (Pillow; NCHW float32 in [0, 1]);
- a time-series file, ``.ts`` or ``.arff`` (UEA/UCR style, [N, channels, length]),
  or a folder holding ``*_TRAIN`` and ``*_TEST`` files of one of those kinds;
- a folder of MNIST-style idx files (``train-images-idx3-ubyte[.gz]`` ...), such
  as Debian's ``dataset-fashion-mnist``;
- a dataset folder written by ``edgeloop data import`` (it has a ``card.json``);
- a built-in name: ``sklearn:digits`` (also wine, iris, breast_cancer, diabetes)
  or ``pyts:basicmotions``.

Every problem with the input is an :class:`EdgeloopError` whose one line names
the file and the row or class.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.errors import EdgeloopError, MissingDependencyError, UsageError


class DataError(EdgeloopError):
    """A data source is missing, malformed or inconsistent (exit code 2)."""


@dataclass
class RawData:
    """Samples as read from a source, before any split is fixed.

    ``x`` is float32: [N, F] for tables, [N, C, H, W] for images, [N, C, T] for
    time series. ``y`` holds class indices (int64, into ``classes``) for
    classification or float32 targets for regression (``classes`` is None).
    ``splits`` maps split names to index arrays when the source fixes them (a
    dataset folder: train/validation/test; a source with an official test set:
    train/test), else None. ``groups`` (optional) ties windows cut from the same
    recording together so a split never puts one recording on both sides.
    """

    x: np.ndarray
    y: np.ndarray
    classes: list[str] | None = None
    x_calib: np.ndarray | None = None
    splits: dict[str, np.ndarray] | None = None
    source: str = ""
    kind: str = "table"  # table | image | series
    groups: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return "classification" if self.classes is not None else "regression"

    def __len__(self) -> int:
        return int(self.x.shape[0])


LABEL_NAMES = ("label", "target", "y", "class")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
BUILTIN_SKLEARN = ("digits", "wine", "iris", "breast_cancer", "diabetes")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


def read_any(path: str | os.PathLike, label_column: str | None = None, *, image_size: int | None = None,
             grayscale: bool | None = None) -> RawData:
    """Read any supported source (see the module docstring) into a RawData."""
    text = os.fspath(path)
    if ":" in text and text.split(":", 1)[0] in ("sklearn", "pyts") and not Path(text).exists():
        return read_builtin(text)
    p = Path(text)
    if not p.exists():
        raise DataError("no such file or folder", where=text)
    if p.is_dir():
        if (p / "card.json").is_file():
            from edgeloop.data.store import load_dataset

            return load_dataset(p).raw()
        if (p / "images").is_dir() and (p / "labels").is_dir() or (p / "Annotations").is_dir():
            raise DataError("is a folder of images with boxes (YOLO or Pascal VOC): import it with `edgeloop data "
                            "import` into a detection dataset; this command takes samples with class labels or "
                            "targets", where=text)
        if _idx_files(p):
            return read_idx_folder(p)
        if _series_pair(p):
            return read_series_folder(p)
        return read_image_folder(p, image_size=image_size, grayscale=grayscale)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return read_npz(p)
    if suffix in (".csv", ".tsv", ".txt"):
        return read_csv(p, label_column)
    if suffix in (".ts", ".arff"):
        return read_series_file(p)
    raise DataError(f"unknown data format '{p.suffix or '(no suffix)'}'; expected a .npz, .csv, .ts or .arff "
                    "file, an image folder (one subfolder per class) or a dataset folder", where=text)


# --- labels ----------------------------------------------------------------------------------

def _encode_labels(values: np.ndarray, names: list[str] | None = None) -> tuple[np.ndarray, list[str] | None]:
    """Classification when labels are strings, booleans or integers; regression for real values.

    Integer labels keep their numeric order (class ``i`` is ``sorted(unique)[i]``).
    """
    values = np.asarray(values)
    if values.dtype.kind in "USO":
        str_values = values.astype(str)
        # numbers written as text (a CSV column): decide as for numbers
        try:
            numeric = str_values.astype(np.float64)
        except ValueError:
            uniq = sorted(set(str_values.tolist()))
            index = {c: i for i, c in enumerate(uniq)}
            return np.array([index[v] for v in str_values.tolist()], dtype=np.int64), uniq
        values = numeric
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise DataError("labels hold NaN or infinite values")
        if np.all(values == np.round(values)) and len(np.unique(values)) <= max(20, len(values) // 50):
            values = values.astype(np.int64)
        else:
            return values.astype(np.float32), None
    uniq, inv = np.unique(values, return_inverse=True)
    classes = [str(int(u)) for u in uniq]
    if names is not None and len(names) > 0:
        if uniq.min() >= 0 and uniq.max() < len(names):
            return values.astype(np.int64), [str(n) for n in names]
        classes = [str(names[int(u)]) if 0 <= int(u) < len(names) else str(int(u)) for u in uniq]
    elif uniq.min() == 0 and uniq.max() == len(uniq) - 1:
        return values.astype(np.int64), classes
    return inv.astype(np.int64).reshape(-1), classes


def _float32(x: np.ndarray, where: str, what: str = "x") -> np.ndarray:
    try:
        out = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(f"array '{what}' is not numeric (dtype {np.asarray(x).dtype})", where=where) from None
    if out.size and not np.all(np.isfinite(out)):
        bad = int(np.argwhere(~np.isfinite(out.reshape(len(out), -1)))[0][0])
        raise DataError(f"array '{what}' holds NaN or infinite values (first at row {bad})", where=where)
    return out


# --- .npz ------------------------------------------------------------------------------------

def read_npz(path: Path) -> RawData:
    where = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"cannot read .npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        where=where) from None
    with archive:
        names = set(archive.files)

        def get(key: str, required: bool) -> np.ndarray | None:
            for k in (key, key.upper()):
                if k in names:
                    try:
                        return archive[k]
                    except Exception as e:
                        raise DataError(f"cannot read array '{k}' ({e})", where=where) from None
            if required:
                what = " (no labels)" if key == "y" else ""
                raise DataError(f"missing array '{key}'{what} (the file holds: "
                                f"{', '.join(sorted(names)) or 'nothing'}); expected arrays x and y, "
                                "optionally x_calib", where=where)
            return None

        x = get("x", True)
        y = get("y", True)
        x_calib = get("x_calib", False)
        class_names = get("classes", False)
    assert x is not None and y is not None
    return from_arrays(x, y, x_calib, None if class_names is None else [str(c) for c in class_names.tolist()],
                       where=where)


def from_arrays(x: np.ndarray, y: np.ndarray, x_calib: np.ndarray | None = None,
                class_names: list[str] | None = None, *, where: str = "<arrays>") -> RawData:
    """Samples and labels held in memory (or read from a .npz), checked and encoded as a reader does."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise DataError(f"array 'x' must have a sample axis and features, got shape {list(x.shape)}", where=where)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise DataError(f"array 'y' must be one label per sample, got shape {list(y.shape)}", where=where)
    if len(x) != len(y):
        raise DataError(f"'x' has {len(x)} samples but 'y' has {len(y)} labels", where=where)
    if len(x) == 0:
        raise DataError("holds no samples", where=where)
    xf = _float32(x, where)
    try:
        yy, classes = _encode_labels(y, class_names)
    except DataError as e:
        raise e.with_where(where)
    calib = None
    if x_calib is not None:
        calib = _float32(x_calib, where, "x_calib")
        if calib.shape[1:] != xf.shape[1:]:
            raise DataError(f"'x_calib' samples have shape {list(calib.shape[1:])}, 'x' samples "
                            f"{list(xf.shape[1:])}", where=where)
    kind = "image" if xf.ndim == 4 else "series" if xf.ndim == 3 else "table"
    return RawData(xf, yy, classes, calib, None, where, kind)


# --- CSV -------------------------------------------------------------------------------------

def read_csv(path: Path, label_column: str | None = None) -> RawData:
    """A CSV with a header row; every column but the label is a numeric feature."""
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(65536)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample.strip() else csv.excel
            except csv.Error:
                dialect = csv.excel
            rows = list(csv.reader(f, dialect))
    except UnicodeDecodeError:
        raise DataError("is not a UTF-8 text file", where=where) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror})", where=where) from None
    # physical line numbers, counting the header as row 1; blank lines are skipped
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not numbered:
        raise DataError("is empty", where=where)
    _, header = numbered[0]
    header = [h.strip() for h in header]
    if all(_is_number(h) for h in header):
        raise DataError("row 1: expected a header row naming the columns, found numbers", where=where)
    if label_column is None:
        lowered = [h.lower() for h in header]
        found = [n for n in LABEL_NAMES if n in lowered]
        if not found:
            raise DataError(f"no label column: none of the columns ({', '.join(header)}) is named "
                            f"{'/'.join(LABEL_NAMES)}; choose one with --label-column", where=where)
        label_index = lowered.index(found[0])
    else:
        if label_column not in header:
            raise DataError(f"label column '{label_column}' does not exist (columns: {', '.join(header)})",
                            where=where)
        label_index = header.index(label_column)
    width = len(header)
    if width < 2:
        raise DataError("needs at least one feature column besides the label", where=where)
    body = numbered[1:]
    if not body:
        raise DataError("has a header but no data rows", where=where)
    features = np.empty((len(body), width - 1), dtype=np.float32)
    labels: list[str] = []
    feature_names = [h for j, h in enumerate(header) if j != label_index]
    for k, (line, row) in enumerate(body):
        if len(row) != width:
            raise DataError(f"row {line}: has {len(row)} fields, the header has {width}", where=where)
        values = []
        for j, cell in enumerate(row):
            if j == label_index:
                if not cell.strip():
                    raise DataError(f"row {line}: the label ('{header[j]}') is empty", where=where)
                labels.append(cell.strip())
                continue
            try:
                v = float(cell)
            except ValueError:
                raise DataError(f"row {line}: column '{header[j]}' is not a number: {cell.strip()!r}",
                                where=where) from None
            if not np.isfinite(v):
                raise DataError(f"row {line}: column '{header[j]}' is {cell.strip()}", where=where)
            values.append(v)
        features[k] = values
    y, classes = _encode_labels(np.array(labels))
    return RawData(features, y, classes, None, None, where, "table",
                   info={"feature_names": feature_names, "label_column": header[label_index]})


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --- image folders ---------------------------------------------------------------------------

def _import_pil():
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("pillow", "data") from None
    return Image


def read_image_folder(path: Path, *, image_size: int | None = None, grayscale: bool | None = None) -> RawData:
    """One subfolder per class; images resized to ``image_size`` squared (default: the first image's size).

    ``grayscale=None`` keeps RGB unless every image is single-channel.
    """
    Image = _import_pil()
    where = str(path)
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError("is a folder without class subfolders (expected one subfolder of images per class), "
                        "a card.json or idx files", where=where)
    loose = [f.name for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(f"image '{loose[0]}' is not inside a class subfolder", where=where)
    files: list[tuple[Path, int]] = []
    for ci, d in enumerate(class_dirs):
        members = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        if not members:
            raise DataError(f"class '{d.name}' has no images", where=str(d))
        files.extend((f, ci) for f in members)
    if image_size is not None and image_size <= 0:
        raise UsageError(f"image size must be positive, got {image_size}")
    opened = []
    any_color = False
    for f, ci in files:
        try:
            with Image.open(f) as im:
                im.load()
                # an image is grey when its mode says so (palette images are checked after conversion)
                mode = im.mode
                im = im.convert("RGB") if mode not in ("L", "1", "I;16", "I", "F", "LA") else im.convert("L")
        except Exception as e:
            raise DataError(f"cannot read image (class '{f.parent.name}'): {type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0]}", where=str(f)) from None
        if im.mode == "RGB":
            arr = np.asarray(im)
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])):
                any_color = True
        opened.append(im)
    gray = (not any_color) if grayscale is None else bool(grayscale)
    size = (image_size, image_size) if image_size is not None else opened[0].size
    channels = 1 if gray else 3
    x = np.empty((len(opened), channels, size[1], size[0]), dtype=np.float32)
    for i, im in enumerate(opened):
        im = im.convert("L" if gray else "RGB")
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        x[i] = arr[None] if gray else arr.transpose(2, 0, 1)
    y = np.array([ci for _, ci in files], dtype=np.int64)
    return RawData(x, y, [d.name for d in class_dirs], None, None, where, "image",
                   info={"image_size": [size[1], size[0]], "channels": channels, "scale": "1/255"})


# --- MNIST-style idx files -------------------------------------------------------------------

_IDX_NAMES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def _idx_files(path: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in _IDX_NAMES.items():
        for cand in (path / stem, path / (stem + ".gz")):
            if cand.is_file():
                found[key] = cand
    return found if len(found) == 4 else None


def _read_idx(path: Path) -> np.ndarray:
    # The idx format (4-byte magic: 0, 0, dtype code, ndim; then big-endian int32 dims; then data)
    # is small enough that a parser is shorter than a dependency.
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file ({e})", where=str(path)) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError("not an unsigned-byte idx file", where=str(path))
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - start != count:
        raise DataError(f"idx file is truncated: {len(data) - start} bytes of data for shape {dims}",
                        where=str(path))
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims)


def read_idx_folder(path: Path) -> RawData:
    files = _idx_files(path)
    assert files is not None
    arrays = {k: _read_idx(v) for k, v in files.items()}
    for part in ("train", "test"):
        if len(arrays[f"{part}_x"]) != len(arrays[f"{part}_y"]):
            raise DataError(f"{part} images and labels differ in count", where=str(path))
    xs = np.concatenate([arrays["train_x"], arrays["test_x"]])
    x = (xs.astype(np.float32) / 255.0)[:, None, :, :]
    y = np.concatenate([arrays["train_y"], arrays["test_y"]]).astype(np.int64)
    n_train = len(arrays["train_x"])
    n_classes = int(y.max()) + 1
    classes = FASHION_CLASSES if "fashion" in str(path.resolve()).lower() and n_classes == 10 \
        else [str(i) for i in range(n_classes)]
    splits = {"train": np.arange(n_train), "test": np.arange(n_train, len(x))}
    return RawData(x, y, list(classes), None, splits, str(path), "image",
                   info={"image_size": list(x.shape[2:]), "channels": 1, "scale": "1/255"})


# --- time series -----------------------------------------------------------------------------

def _series_pair(path: Path) -> tuple[Path, Path] | None:
    for ext in (".ts", ".arff"):
        trains = sorted(path.glob(f"*_TRAIN{ext}"))
        for tr in trains:
            te = tr.with_name(tr.name.replace("_TRAIN", "_TEST"))
            if te.is_file():
                return tr, te
    return None


def _parse_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    where = str(path)
    if path.suffix.lower() == ".ts":
        try:  # pyts parses the aeon/sktime .ts format; the module is private, hence the guard
            from pyts.datasets._ts_format import parse_ts_file
        except ImportError:
            raise MissingDependencyError("pyts", "data", where=where) from None
        try:
            X, y, _ = parse_ts_file(str(path))
        except Exception as e:
            raise DataError(f"cannot parse .ts file: {(str(e).splitlines() or [type(e).__name__])[0]}",
                            where=where) from None
        X = np.asarray(X, dtype=np.float64)
        if X.size and np.isnan(X).any():
            raise DataError("series of unequal length or with missing values are not supported", where=where)
        return X, np.asarray(y)
    try:
        from scipy.io.arff import loadarff
    except ImportError:
        raise MissingDependencyError("scipy", "data", where=where) from None
    try:
        data, meta = loadarff(str(path))
    except Exception as e:
        raise DataError(f"cannot parse .arff file: {(str(e).splitlines() or [type(e).__name__])[0]}",
                        where=where) from None
    names = data.dtype.names
    if not names or len(names) < 2:
        raise DataError("an .arff time-series file needs the series and a class attribute", where=where)
    first = data[names[0]]
    if len(data) and getattr(first[0], "dtype", None) is not None and first[0].dtype.names:
        # multivariate (relational attribute): each sample is a table of channels x time steps
        rows = []
        for i, rel in enumerate(first):
            try:
                rows.append(np.array([list(r) for r in rel], dtype=np.float64))
            except ValueError:
                raise DataError(f"sample {i + 1}: non-numeric values in the series", where=where) from None
        shapes = {r.shape for r in rows}
        if len(shapes) != 1:
            raise DataError(f"samples differ in shape ({sorted(shapes)[:2]}...)", where=where)
        X = np.stack(rows)
        y = data[names[-1]]
    else:  # univariate: one numeric attribute per time step, the last attribute is the class
        X = np.stack([data[n].astype(np.float64) for n in names[:-1]], axis=1)[:, None, :]
        y = data[names[-1]]
    y = np.array([v.decode() if isinstance(v, bytes) else v for v in y])
    return X, y


def read_series_file(path: Path) -> RawData:
    X, y = _parse_series(path)
    return _series_raw(X, y, str(path), None)


def read_series_folder(path: Path) -> RawData:
    pair = _series_pair(path)
    assert pair is not None
    Xtr, ytr = _parse_series(pair[0])
    Xte, yte = _parse_series(pair[1])
    if Xtr.shape[1:] != Xte.shape[1:]:
        raise DataError(f"train series have shape {list(Xtr.shape[1:])}, test series {list(Xte.shape[1:])}",
                        where=str(path))
    splits = {"train": np.arange(len(Xtr)), "test": np.arange(len(Xtr), len(Xtr) + len(Xte))}
    return _series_raw(np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte]), str(path), splits)


def _series_raw(X: np.ndarray, y: np.ndarray, where: str, splits) -> RawData:
    if len(X) == 0:
        raise DataError("holds no series", where=where)
    try:
        yy, classes = _encode_labels(y)
    except DataError as e:
        raise e.with_where(where)
    return RawData(_float32(X, where), yy, classes, None, splits, where, "series",
                   info={"channels": int(X.shape[1]), "length": int(X.shape[2])})


# --- built-in datasets -----------------------------------------------------------------------

def read_builtin(name: str) -> RawData:
    """``sklearn:digits`` and friends (bundled with scikit-learn), ``pyts:basicmotions`` (bundled with pyts)."""
    lib, _, which = name.partition(":")
    which = which.lower()
    if lib == "sklearn":
        if which not in BUILTIN_SKLEARN:
            raise UsageError(f"unknown built-in dataset '{name}'; choose one of "
                             + ", ".join(f"sklearn:{n}" for n in BUILTIN_SKLEARN) + ", pyts:basicmotions")
        try:
            import sklearn.datasets as skd
        except ImportError:
            raise MissingDependencyError("scikit-learn", "sklearn", where=name) from None
        bunch = getattr(skd, f"load_{which}")()
        x = bunch.data.astype(np.float32)
        if which == "diabetes":
            return RawData(x, bunch.target.astype(np.float32), None, None, None, name, "table")
        classes = [str(c) for c in getattr(bunch, "target_names", range(int(bunch.target.max()) + 1))]
        if which == "digits":
            return RawData(x, bunch.target.astype(np.int64), classes, None, None, name, "table",
                           info={"feature_names": list(getattr(bunch, "feature_names", []))})
        return RawData(x, bunch.target.astype(np.int64), classes, None, None, name, "table",
                       info={"feature_names": [str(f) for f in bunch.feature_names]})
    if lib == "pyts" and which in ("basicmotions", "basic_motions"):
        try:
            from pyts.datasets import load_basic_motions
        except ImportError:
            raise MissingDependencyError("pyts", "data", where=name) from None
        Xtr, Xte, ytr, yte = load_basic_motions(return_X_y=True)
        splits = {"train": np.arange(len(Xtr)), "test": np.arange(len(Xtr), len(Xtr) + len(Xte))}
        return _series_raw(np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte]), name, splits)
    raise UsageError(f"unknown built-in dataset '{name}'; choose one of "
                     + ", ".join(f"sklearn:{n}" for n in BUILTIN_SKLEARN) + ", pyts:basicmotions")


# --- unlabelled sources (shrink --metric agreement|fidelity) ----------------------------------

def read_unlabelled(path: str | os.PathLike, image_spec: dict | None = None) -> RawData:
    """Inputs without labels: a folder of images (any nesting, no class subfolders needed), a .npy of
    inputs, a .npz (``x``, or its only array; ``x_calib`` kept, labels ignored) or a CSV whose columns
    are all features (a header row is optional). Labelled sources work too (labels are ignored).

    Images are preprocessed as ``image_spec`` says (:func:`edgeloop.search.unlabelled.image_spec`:
    layout NHWC/NCHW, size [h, w], channels, value range [lo, hi]); without one, as
    :func:`read_image_folder` does. ``y`` is a placeholder of zeros: the caller sets the reference.
    """
    text = os.fspath(path)
    if ":" in text and text.split(":", 1)[0] in ("sklearn", "pyts") and not Path(text).exists():
        return _unlabelled(read_builtin(text))
    p = Path(text)
    if not p.exists():
        raise DataError("no such file or folder", where=text)
    if p.is_dir():
        if (p / "card.json").is_file() or _idx_files(p) or _series_pair(p):
            return _unlabelled(read_any(p))
        return _read_image_files(p, image_spec)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except Exception as e:
            raise DataError(f"cannot read .npy ({type(e).__name__})", where=text) from None
        return _unlabelled_arrays(x, None, text)
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except Exception as e:
            raise DataError(f"cannot read .npz ({type(e).__name__})", where=text) from None
        key = next((k for k in ("x", "X") if k in arrays), None)
        if key is None:
            inputs = [k for k in arrays if k not in ("y", "Y", "x_calib", "classes")]
            if len(inputs) != 1:
                raise DataError(f"expected an array 'x' (the file holds: {', '.join(sorted(arrays)) or 'nothing'})",
                                where=text)
            key = inputs[0]
        return _unlabelled_arrays(arrays[key], arrays.get("x_calib"), text)
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_csv_unlabelled(p)
    if suffix in (".ts", ".arff"):
        return _unlabelled(read_series_file(p))
    raise DataError(f"unknown data format '{p.suffix or '(no suffix)'}'; expected a folder of images, a .npy "
                    "or .npz of inputs or a CSV of features", where=text)


def _unlabelled(raw: RawData) -> RawData:
    raw.y = np.zeros(len(raw.x), dtype=np.float32)
    raw.classes = None
    raw.info = {**raw.info, "unlabelled": True}
    return raw


def _unlabelled_arrays(x: np.ndarray, x_calib: np.ndarray | None, where: str) -> RawData:
    x = np.asarray(x)
    if x.ndim < 2:
        raise DataError(f"the inputs must have a sample axis and features, got shape {list(x.shape)}", where=where)
    if len(x) == 0:
        raise DataError("holds no samples", where=where)
    xf = _float32(x, where)
    calib = None if x_calib is None else _float32(x_calib, where, "x_calib")
    if calib is not None and calib.shape[1:] != xf.shape[1:]:
        raise DataError(f"'x_calib' samples have shape {list(calib.shape[1:])}, 'x' samples "
                        f"{list(xf.shape[1:])}", where=where)
    kind = "image" if xf.ndim == 4 else "series" if xf.ndim == 3 else "table"
    return RawData(xf, np.zeros(len(xf), dtype=np.float32), None, calib, None, where, kind,
                   info={"unlabelled": True})


def _read_csv_unlabelled(path: Path) -> RawData:
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise DataError("is not a UTF-8 text file", where=where) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror})", where=where) from None
    if not rows:
        raise DataError("is empty", where=where)
    first = 0 if all(_is_number(c) for c in rows[0]) else 1  # the header row is optional
    width = len(rows[0])
    body = rows[first:]
    if not body:
        raise DataError("has a header but no data rows", where=where)
    x = np.empty((len(body), width), dtype=np.float32)
    for k, row in enumerate(body):
        line = k + first + 1
        if len(row) != width:
            raise DataError(f"row {line}: has {len(row)} fields, the first row has {width}", where=where)
        for j, cell in enumerate(row):
            try:
                x[k, j] = float(cell)
            except ValueError:
                raise DataError(f"row {line}: column {j + 1} is not a number: {cell.strip()!r}",
                                where=where) from None
    return _unlabelled_arrays(x, None, where)


def _read_image_files(path: Path, spec: dict | None) -> RawData:
    Image = _import_pil()
    where = str(path)
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    if not files:
        raise DataError("holds no images (png, jpeg, ...), .npy or dataset files", where=where)
    if spec is None:  # no image input to follow: as read_image_folder would, without classes
        spec = {"layout": "NCHW", "size": None, "channels": None, "range": [0.0, 1.0]}
    lo, hi = spec.get("range") or (0.0, 1.0)
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                c = spec.get("channels") or (1 if im.mode in ("L", "1", "I;16", "I", "F", "LA") else 3)
                im = im.convert({1: "L", 3: "RGB", 4: "RGBA"}.get(c, "RGB"))
                size = spec.get("size") or (arrays[0].shape[:2] if arrays else (im.size[1], im.size[0]))
                if (im.size[1], im.size[0]) != tuple(size):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32)
        except Exception as e:
            raise DataError(f"cannot read image: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
                            where=str(f)) from None
        arrays.append(a[..., None] if a.ndim == 2 else a)
    x = np.stack(arrays) / 255.0 * (hi - lo) + lo
    if spec.get("layout") == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return RawData(np.ascontiguousarray(x, dtype=np.float32), np.zeros(len(x), dtype=np.float32), None, None,
                   None, where, "image", info={"unlabelled": True, "files": len(files),
                                               "image_spec": spec})
