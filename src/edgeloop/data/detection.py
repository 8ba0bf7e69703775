"""Detection datasets: images with labelled boxes, read from YOLO, COCO or Pascal VOC, written as one folder.

The folder (``edgeloop data import`` writes it; see notes/DETECTION_DATASET.md)::

    images/        the images, copied byte for byte (original names; clashes get -2, -3 ...)
    boxes.json     {"labels": [...], "images": [{"file", "width", "height", "boxes": [{"label", "box"}]}]}
                   boxes [x1, y1, x2, y2] in the image's pixels, 0 <= x1 < x2 <= width (same for y)
    splits.json    {"seed": s, "train": [...], "validation": [...], "test": [...]} indices into "images"
    card.json      counts, boxes per class, box sizes, images without boxes, SHA-256 of every file

Sources:

- a YOLO folder: ``images/`` and ``labels/`` (one ``.txt`` per image, lines ``class cx cy w h``
  normalised to 0-1; an image without a label file has no boxes), class names from
  ``classes.txt`` or ``data.yaml`` ``names:`` (a list or a {index: name} mapping); split
  subfolders (``images/train``, ``images/val`` ...) are kept as splits;
- COCO JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``) with the
  image folder given apart; crowd annotations (``iscrowd``) are left out, as COCO's evaluator
  ignores them;
- a Pascal VOC folder: ``Annotations/*.xml`` and ``JPEGImages/``; VOC's corners are 1-based
  inclusive pixels, so ``x1 = xmin - 1`` and ``x2 = xmax``; class names from ``classes.txt``
  when present, else the names found, sorted; ``ImageSets/Main/{train,val,test}.txt`` are kept
  as splits when present.

Every problem is one :class:`DataError` naming the file (and the line or the entry).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.data.readers import IMAGE_SUFFIXES, DataError, _import_pil
from edgeloop.errors import UsageError

from edgeloop.data.store import DEFAULT_FRACTIONS as FRACTIONS, FORMAT, FORMAT_VERSION, SPLITS, _sha256, _stratified_split, check_files
# a box may reach this far outside its image (a fraction of the side, at least one pixel) and is
# clipped to it; beyond, it is an error. Hand labels and float round trips overshoot a little.
TOLERANCE = 0.01
SPLIT_DIRS = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation",
              "test": "test"}
# box sizes on the card: sqrt(w * h) in pixels, binned at powers of two
SIZE_EDGES = [0, 8, 16, 32, 64, 128, 256, 512]
DIGITS = 3  # boxes are stored to 1/1000 pixel, so every source gives identical numbers


@dataclass
class _Item:
    source: Path            # the image file in the source
    rel: str                # its path relative to the image root (order and split)
    width: int
    height: int
    boxes: list[dict] = field(default_factory=list)
    split: str | None = None


# --------------------------------------------------------------------------- images and boxes

def _open_image(path: Path, where: str | None = None):
    """The image, decoded and turned upright (EXIF orientation), or a one-line error."""
    Image = _import_pil()
    from PIL import ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except Exception as e:  # PIL raises many kinds for broken files
        raise DataError(f"cannot read the image ({type(e).__name__}: {str(e).strip()[:80]})",
                        where=where or str(path)) from None


def _size(path: Path) -> tuple[int, int]:
    img = _open_image(path)
    return int(img.width), int(img.height)


def _box(x1: float, y1: float, x2: float, y2: float, width: int, height: int, where: str) -> list[float]:
    """A box checked against its image (see TOLERANCE) and clipped into it."""
    vals = (x1, y1, x2, y2)
    if not all(np.isfinite(v) for v in vals):
        raise DataError(f"box {list(vals)} holds a non-finite value", where=where)
    tx, ty = max(1.0, TOLERANCE * width), max(1.0, TOLERANCE * height)
    if x1 < -tx or y1 < -ty or x2 > width + tx or y2 > height + ty:
        raise DataError(f"box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}] lies outside the {width}x{height} image",
                        where=where)
    b = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
         min(max(y2, 0.0), height)]
    b = [round(float(v), DIGITS) for v in b]
    if not (b[0] < b[2] and b[1] < b[3]):
        raise DataError(f"box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}] is empty (needs x1 < x2 and y1 < y2)",
                        where=where)
    return b


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# --------------------------------------------------------------------------- YOLO

def is_yolo(path: Path) -> bool:
    return path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir()


def _yaml_names(path: Path) -> list[str]:
    try:
        import yaml
    except ImportError:
        from edgeloop.errors import MissingDependencyError

        raise MissingDependencyError("pyyaml", "data") from None
    try:
        doc = yaml.safe_load(path.read_text())
    except Exception as e:
        raise DataError(f"not valid YAML ({type(e).__name__})", where=str(path)) from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError("names: a mapping needs integer class indices as keys", where=str(path)) from None
        if keys != list(range(len(keys))):
            raise DataError(f"names: class indices must be 0..{len(keys) - 1}, got {keys[:8]}", where=str(path))
        lookup = {int(k): v for k, v in names.items()}
        return [str(lookup[k]) for k in keys]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError("has no 'names:' list or mapping of class names", where=str(path))


def _yolo_classes(root: Path) -> list[str]:
    txt = root / "classes.txt"
    if txt.is_file():
        names = [line.strip() for line in txt.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError("holds no class names", where=str(txt))
        return names
    for name in ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml"):
        if (root / name).is_file():
            return _yaml_names(root / name)
    raise DataError("a YOLO folder needs its class names: classes.txt (one a line) or data.yaml (names:)",
                    where=str(root))


def _yolo_lines(path: Path, labels: list[str], width: int, height: int) -> list[dict]:
    boxes = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the label file ({type(e).__name__})", where=str(path)) from None
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{n}"
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise DataError(f"expected 'class cx cy w h' (5 values), got {len(parts)}: {line.strip()[:60]!r}",
                            where=where)
        try:
            cls = float(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise DataError(f"not a number in {line.strip()[:60]!r}", where=where) from None
        if cls != int(cls):
            raise DataError(f"class index {parts[0]} is not an integer", where=where)
        if not 0 <= cls < len(labels):
            raise DataError(f"class index {int(cls)} out of range: there are {len(labels)} classes "
                            f"(0..{len(labels) - 1})", where=where)
        if w <= 0 or h <= 0:
            raise DataError(f"box width and height must be positive, got {w:g} {h:g}", where=where)
        box = _box((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                   width, height, where)
        boxes.append({"label": labels[int(cls)], "box": box})
    return boxes


def read_yolo(root: Path) -> tuple[list[str], list[_Item]]:
    labels = _yolo_classes(root)
    img_root, lab_root = root / "images", root / "labels"
    subdirs = [d for d in sorted(img_root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_DIRS]
    images = _images_under(img_root)
    if not images:
        raise DataError("holds no images", where=str(img_root))
    items, used = [], set()
    for img in images:
        rel = img.relative_to(img_root)
        first = rel.parts[0].lower() if len(rel.parts) > 1 else None
        split = SPLIT_DIRS.get(first) if subdirs and first else None
        label_file = lab_root / rel.with_suffix(".txt")
        w, h = _size(img)
        boxes = []
        if label_file.is_file():
            used.add(label_file.resolve())
            boxes = _yolo_lines(label_file, labels, w, h)
        items.append(_Item(img, rel.as_posix(), w, h, boxes, split))
    for f in sorted(lab_root.rglob("*.txt")):
        if f.resolve() not in used:
            rel = f.relative_to(lab_root).with_suffix("")
            raise DataError(f"label file without an image (no images/{rel.as_posix()}.* beside it)", where=str(f))
    if subdirs and any(it.split is None for it in items):
        loose = next(it for it in items if it.split is None)
        raise DataError(f"image '{loose.rel}' is outside the split folders ({', '.join(d.name for d in subdirs)})",
                        where=str(img_root))
    return labels, items


# --------------------------------------------------------------------------- COCO

def read_coco(path: Path, images_dir: Path) -> tuple[list[str], list[_Item], dict]:
    where = str(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"not a readable JSON file ({type(e).__name__}: {e})", where=where) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("categories"), list):
        raise DataError("not COCO annotations (needs 'images' and 'categories' lists)", where=where)
    if not images_dir.is_dir():
        raise DataError("--images: no such folder", where=str(images_dir))
    cats = {}
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DataError(f"categories[{i}] needs 'id' and 'name'", where=where)
        cats[c["id"]] = str(c["name"])
    order = sorted(cats, key=lambda k: (str(type(k)), k))
    labels = [cats[k] for k in order]
    if len(set(labels)) != len(labels):
        raise DataError("two categories share a name", where=where)
    by_id: dict[Any, _Item] = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DataError(f"images[{i}] needs 'id' and 'file_name'", where=where)
        f = images_dir / str(im["file_name"])
        if not f.is_file():
            raise DataError(f"images[{i}]: '{im['file_name']}' is not in {images_dir}", where=where)
        w, h = _size(f)
        if ("width" in im and int(im["width"]) != w) or ("height" in im and int(im["height"]) != h):
            raise DataError(f"images[{i}]: says {im.get('width')}x{im.get('height')} but "
                            f"'{im['file_name']}' is {w}x{h}", where=where)
        if im["id"] in by_id:
            raise DataError(f"images[{i}]: id {im['id']} appears twice", where=where)
        by_id[im["id"]] = _Item(f, Path(str(im["file_name"])).as_posix(), w, h)
    crowd = 0
    for i, a in enumerate(doc.get("annotations") or []):
        at = f"{where}: annotations[{i}]"
        if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a or "category_id" not in a:
            raise DataError("needs 'image_id', 'category_id' and 'bbox'", where=at)
        item = by_id.get(a["image_id"])
        if item is None:
            raise DataError(f"image_id {a['image_id']} is not among the images", where=at)
        if a["category_id"] not in cats:
            raise DataError(f"category_id {a['category_id']} is not among the categories", where=at)
        if a.get("iscrowd"):
            crowd += 1
            continue
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
        except (TypeError, ValueError):
            raise DataError(f"bbox must be [x, y, width, height], got {a['bbox']!r}", where=at) from None
        if w <= 0 or h <= 0:
            raise DataError(f"bbox width and height must be positive, got {w:g} {h:g}", where=at)
        item.boxes.append({"label": cats[a["category_id"]],
                           "box": _box(x, y, x + w, y + h, item.width, item.height, at)})
    if not by_id:
        raise DataError("lists no images", where=where)
    return labels, list(by_id.values()), {"crowd_annotations_left_out": crowd}


# --------------------------------------------------------------------------- Pascal VOC

def is_voc(path: Path) -> bool:
    return path.is_dir() and (path / "Annotations").is_dir()


def _xml_root(path: Path):
    # defusedxml: annotation files come from anywhere, and the standard parser expands entities
    try:
        from defusedxml import ElementTree
    except ImportError:
        from edgeloop.errors import MissingDependencyError

        raise MissingDependencyError("defusedxml", "data") from None
    try:
        return ElementTree.parse(str(path)).getroot()
    except Exception as e:
        raise DataError(f"not a readable XML file ({type(e).__name__}: {str(e)[:80]})", where=str(path)) from None


def _voc_number(node, key: str, where: str) -> float:
    el = node.find(key)
    if el is None or el.text is None:
        raise DataError(f"missing <{key}>", where=where)
    try:
        return float(el.text.strip())
    except ValueError:
        raise DataError(f"<{key}> is not a number: {el.text.strip()[:20]!r}", where=where) from None


def read_voc(root: Path) -> tuple[list[str], list[_Item]]:
    ann = root / "Annotations"
    img_dir = root / "JPEGImages"
    xmls = sorted(ann.glob("*.xml"))
    if not xmls:
        raise DataError("holds no .xml annotation files", where=str(ann))
    given = None
    if (root / "classes.txt").is_file():
        given = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
    sets = {}
    main = root / "ImageSets" / "Main"
    for name, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        if (main / f"{name}.txt").is_file():
            for line in (main / f"{name}.txt").read_text().split():
                sets[line.strip()] = split
    items, seen = [], set()
    for x in xmls:
        node = _xml_root(x)
        fname = (node.findtext("filename") or "").strip()
        f = img_dir / fname if fname else None
        if f is None or not f.is_file():
            alts = sorted(p for p in img_dir.glob(x.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES) \
                if img_dir.is_dir() else []
            if not alts:
                raise DataError(f"annotation without an image (no JPEGImages/{fname or x.stem + '.*'})",
                                where=str(x))
            f = alts[0]
        w, h = _size(f)
        size = node.find("size")
        if size is not None and size.find("width") is not None:
            sw, sh = _voc_number(size, "width", str(x)), _voc_number(size, "height", str(x))
            if (sw, sh) != (0, 0) and (int(sw), int(sh)) != (w, h):
                raise DataError(f"<size> says {int(sw)}x{int(sh)} but {f.name} is {w}x{h}", where=str(x))
        boxes = []
        for k, obj in enumerate(node.findall("object"), 1):
            at = f"{x}: object {k}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DataError("has no <name>", where=at)
            if given is not None and name not in given:
                raise DataError(f"class '{name}' is not in classes.txt", where=at)
            bb = obj.find("bndbox")
            if bb is None:
                raise DataError("has no <bndbox>", where=at)
            vals = [_voc_number(bb, key, at) for key in ("xmin", "ymin", "xmax", "ymax")]
            boxes.append({"label": name, "box": _box(vals[0] - 1, vals[1] - 1, vals[2], vals[3], w, h, at)})
            seen.add(name)
        items.append(_Item(f, f.name, w, h, boxes, sets.get(x.stem)))
    if sets and any(it.split is None for it in items):
        sets = {}
        for it in items:
            it.split = None  # ImageSets that do not cover every annotation: make a split instead
    labels = given if given is not None else sorted(seen)
    if not labels:
        raise DataError("no class names: no object has a <name> and there is no classes.txt", where=str(root))
    return labels, items


# --------------------------------------------------------------------------- splits

def _carve(pool: np.ndarray, fractions: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """A seeded split of image indices by the given fractions (the one splitter, one stratum)."""
    pool = np.asarray(pool, dtype=np.int64)
    return [pool[p] for p in _stratified_split(np.zeros(len(pool), dtype=np.int64), fractions, rng)]


def make_detection_splits(items: list[_Item], seed: int) -> tuple[dict[str, list[int]], list[str]]:
    """train/validation/test image indices: the source's own splits kept, the missing ones carved from train."""
    rng = np.random.default_rng(seed)
    given = {s: np.asarray([i for i, it in enumerate(items) if it.split == s], dtype=np.int64) for s in SPLITS}
    kept = [s for s in SPLITS if len(given[s])]
    if not kept:
        parts = _carve(np.arange(len(items)), [FRACTIONS[s] for s in SPLITS], rng)
        return {s: [int(i) for i in p] for s, p in zip(SPLITS, parts)}, []
    if not len(given["train"]):
        raise DataError(f"the source has {'/'.join(kept)} images but no train images")
    missing = [s for s in ("validation", "test") if not len(given[s])]
    out = dict(given)
    if missing:
        parts = _carve(given["train"], [FRACTIONS["train"]] + [FRACTIONS[s] for s in missing], rng)
        out["train"] = parts[0]
        out.update(zip(missing, parts[1:]))
    return {s: [int(i) for i in out[s]] for s in SPLITS}, kept


# --------------------------------------------------------------------------- the card

def box_stats(records: list[dict], labels: list[str]) -> dict:
    boxes = [b["box"] for r in records for b in r["boxes"]]
    side = np.asarray([np.sqrt((b[2] - b[0]) * (b[3] - b[1])) for b in boxes], dtype=np.float64)
    edges = SIZE_EDGES + [None]
    counts = [int(np.sum((side >= lo) & (side < (hi if hi is not None else np.inf))))
              for lo, hi in zip(edges[:-1], edges[1:])]
    area = side ** 2
    return {
        "measure": "sqrt(width * height) in pixels",
        "bins": [{"from": lo, "to": hi, "boxes": n} for lo, hi, n in zip(edges[:-1], edges[1:], counts)],
        "coco_area": {"small": int(np.sum(area < 32 ** 2)), "medium": int(np.sum((area >= 32 ** 2) & (area < 96 ** 2))),
                      "large": int(np.sum(area >= 96 ** 2))},
        "min": float(side.min()) if len(side) else None,
        "median": float(np.median(side)) if len(side) else None,
        "max": float(side.max()) if len(side) else None,
    }


def _split_counts(records: list[dict], idx: list[int], labels: list[str]) -> dict:
    per = {lab: 0 for lab in labels}
    for i in idx:
        for b in records[i]["boxes"]:
            per[b["label"]] += 1
    return {"images": len(idx), "boxes": sum(per.values()), "per_class": per,
            "images_without_boxes": sum(1 for i in idx if not records[i]["boxes"])}


def make_card(records: list[dict], labels: list[str], splits: dict, *, seed: int, source: str,
              source_format: str, kept: list[str], info: dict) -> dict:
    per = {lab: 0 for lab in labels}
    for r in records:
        for b in r["boxes"]:
            per[b["label"]] += 1
    empty = [r["file"] for r in records if not r["boxes"]]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "detection",
        "task": "detection",
        "source": source,
        "source_format": source_format,
        "classes": list(labels),
        "n_samples": len(records),
        "n_images": len(records),
        "n_boxes": sum(per.values()),
        "boxes_per_class": per,
        "images_without_boxes": len(empty),
        "images_without_boxes_files": empty[:20],
        "box_sizes": box_stats(records, labels),
        "image_sizes": {"min": [min(r["width"] for r in records), min(r["height"] for r in records)],
                        "max": [max(r["width"] for r in records), max(r["height"] for r in records)]},
        "split": {"seed": int(seed), "sizes": {s: len(splits[s]) for s in SPLITS}, "kept_from_source": kept},
        "counts": {s: _split_counts(records, splits[s], labels) for s in SPLITS},
        "info": info,
    }


# --------------------------------------------------------------------------- import

def detection_source(source: Path) -> str | None:
    """'yolo', 'coco' or 'voc' when ``source`` is a detection source, else None."""
    if source.is_file() and source.suffix.lower() == ".json":
        return "coco"
    if is_yolo(source):
        return "yolo"
    if is_voc(source):
        return "voc"
    return None


def import_detection(source: str | os.PathLike, output: str | os.PathLike, *, images: str | os.PathLike | None = None,
                     seed: int = 0) -> Path:
    """Read a YOLO folder, COCO JSON (with ``images``) or a VOC folder and write the dataset folder atomically."""
    from edgeloop.fsutil import check_output_dir, staged_dir

    src = Path(source)
    out = Path(output)
    kind = detection_source(src)
    info: dict[str, Any] = {}
    if kind == "coco":
        if images is None:
            raise UsageError("COCO annotations need the image folder: --images DIR", where=str(src))
        labels, items, info = read_coco(src, Path(images))
    elif images is not None:
        raise UsageError("--images is for COCO JSON annotations only", where=str(src))
    elif kind == "yolo":
        labels, items = read_yolo(src)
    elif kind == "voc":
        labels, items = read_voc(src)
    else:
        raise DataError("not a detection source (a YOLO folder with images/ and labels/, COCO JSON, "
                        "or a VOC folder with Annotations/)", where=str(src))
    check_output_dir(out, kind="dataset")
    items.sort(key=lambda it: it.rel)
    names, taken = [], set()
    for it in items:
        stem, suffix = Path(it.source.name).stem, Path(it.source.name).suffix
        name, k = it.source.name, 1
        while name.lower() in taken:
            k += 1
            name = f"{stem}-{k}{suffix}"
        taken.add(name.lower())
        names.append(name)
    records = [{"file": f"images/{n}", "width": it.width, "height": it.height, "boxes": it.boxes}
               for n, it in zip(names, items)]
    splits, kept = make_detection_splits(items, seed)
    for s in SPLITS:
        if not splits[s]:
            raise DataError(f"too few images ({len(items)}) for a {s} split", where=str(src))
    card = make_card(records, labels, splits, seed=seed, source=str(src), source_format=kind, kept=kept, info=info)
    with staged_dir(out, kind="dataset") as tmp:
        (tmp / "images").mkdir()
        for n, it in zip(names, items):
            shutil.copyfile(it.source, tmp / "images" / n)
        (tmp / "boxes.json").write_text(json.dumps({"labels": labels, "images": records}, indent=1) + "\n")
        (tmp / "splits.json").write_text(json.dumps({"seed": int(seed), **splits}, separators=(",", ":")) + "\n")
        files = ["boxes.json", "splits.json"] + [r["file"] for r in records]
        card["checksums"] = {f: "sha256:" + _sha256(tmp / f) for f in files}
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- load

@dataclass
class DetectionDataset:
    """A detection dataset folder, loaded and checked (see the module docstring)."""

    path: Path
    card: dict
    labels: list[str]
    records: list[dict]
    splits: dict[str, list[int]]
    checksum: str

    kind = "detection"
    task = "detection"

    @property
    def classes(self) -> list[str]:
        return self.labels

    def __len__(self) -> int:
        return len(self.records)

    def split(self, name: str) -> list[int]:
        if name not in self.splits:
            raise KeyError(f"no split named {name!r}; the splits are {', '.join(self.splits)}")
        return list(self.splits[name])

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 [H, W, 3] RGB (upright, as its boxes are)."""
        f = self.path / self.records[i]["file"]
        return np.asarray(_open_image(f).convert("RGB"), dtype=np.uint8)

    def truths(self, i: int) -> list[dict]:
        return [{"box": list(b["box"]), "label": b["label"]} for b in self.records[i]["boxes"]]

    def raw(self):
        raise DataError("is a detection dataset (images with boxes); this command takes samples with class "
                        "labels or targets (for detectors: shrink --metric map50|map)", where=str(self.path))


def load_detection(p: Path, card: dict, card_bytes: bytes, verify: bool = True) -> DetectionDataset:
    where = str(p)
    check_files(p, card, ("boxes.json", "splits.json"), verify)
    try:
        doc = json.loads((p / "boxes.json").read_text())
        split_doc = json.loads((p / "splits.json").read_text())
        labels = [str(x) for x in doc["labels"]]
        records = list(doc["images"])
        for r in records:
            if not {"file", "width", "height", "boxes"} <= set(r):
                raise ValueError("an image entry needs file, width, height and boxes")
    except Exception as e:
        raise DataError(f"cannot read boxes.json / splits.json ({type(e).__name__}: {e})", where=where) from None
    splits = {}
    for k in SPLITS:
        idx = [int(i) for i in split_doc.get(k, [])]
        if idx and (min(idx) < 0 or max(idx) >= len(records)):
            raise DataError(f"splits.json: '{k}' holds indices outside 0..{len(records) - 1}", where=where)
        splits[k] = idx
    return DetectionDataset(p, card, labels, records, splits, "sha256:" + hashlib.sha256(card_bytes).hexdigest())
