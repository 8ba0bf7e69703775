"""Detection datasets: a real set built in code (coins from scikit-image's coins.png with boxes from
connected components, handwritten digits pasted on crops of real photographs), written as a YOLO
folder, as COCO JSON and as Pascal VOC, imported all three ways to identical datasets; bad labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeloop.data import import_data, load_dataset
from edgeloop.errors import EdgeloopError
from wheel_assets import photo

LABELS = ["coin", "digit"]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def coin_boxes(gray: np.ndarray) -> list[list[int]]:
    """Boxes of the coins: connected components of a threshold, small specks dropped."""
    from scipy import ndimage

    mask = ndimage.binary_opening(gray > 110, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    lab, n = ndimage.label(mask)
    boxes = []
    for sl in ndimage.find_objects(lab):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if 20 <= h <= 120 and 20 <= w <= 120:
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return boxes


def build_scenes(n_coin: int = 8, n_digit: int = 6) -> list[tuple[str, np.ndarray, list[dict]]]:
    """(file name, RGB image, boxes) of real objects: crops of coins.png and digits on photographs."""
    from sklearn.datasets import load_digits

    coins = np.asarray(Image.open(photo("coins.png")).convert("L"))
    all_boxes = coin_boxes(coins)
    assert len(all_boxes) >= 15  # the photograph shows 24 coins; the threshold finds most
    rng = np.random.default_rng(0)
    scenes = []
    H, W = coins.shape
    for k in range(n_coin):
        cw, ch = int(rng.integers(180, 260)), int(rng.integers(150, 220))
        x0, y0 = int(rng.integers(0, W - cw)), int(rng.integers(0, H - ch))
        crop = coins[y0:y0 + ch, x0:x0 + cw]
        boxes = [{"label": "coin", "box": [b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0]} for b in all_boxes
                 if b[0] >= x0 and b[1] >= y0 and b[2] <= x0 + cw and b[3] <= y0 + ch]
        scenes.append((f"coins_{k:02d}.png", np.repeat(crop[:, :, None], 3, axis=2), boxes))
    digits = load_digits()
    backs = ["astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]
    for k in range(n_digit):
        back = np.asarray(Image.open(photo(backs[k % len(backs)])).convert("RGB"))
        y0, x0 = int(rng.integers(0, back.shape[0] - 160)), int(rng.integers(0, back.shape[1] - 200))
        img = back[y0:y0 + 160, x0:x0 + 200].copy()
        boxes = []
        for j in range(k % 3 + 1):
            d = digits.images[int(rng.integers(0, len(digits.images)))]
            size = int(rng.integers(24, 48))
            patch = np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8)).resize((size, size)))
            px, py = 8 + j * 62, int(rng.integers(4, 160 - size - 4))
            region = img[py:py + size, px:px + size]
            region[patch > 60] = 255  # white ink on the photograph
            boxes.append({"label": "digit", "box": [px, py, px + size, py + size]})
        scenes.append((f"digits_{k:02d}.jpg" if k % 2 else f"digits_{k:02d}.png", img, boxes))
    back = np.asarray(Image.open(photo("coffee.png")).convert("RGB"))[:120, :160]
    scenes.append(("empty.png", back.copy(), []))
    return scenes


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(img).save(path)


def write_yolo(scenes, root: Path, splits: dict | None = None) -> Path:
    for name, img, boxes in scenes:
        sub = (splits or {}).get(name, "")
        _save(img, root / "images" / sub / name)
        h, w = img.shape[:2]
        lines = [f"{LABELS.index(b['label'])} {repr((b['box'][0] + b['box'][2]) / 2 / w)} "
                 f"{repr((b['box'][1] + b['box'][3]) / 2 / h)} {repr((b['box'][2] - b['box'][0]) / w)} "
                 f"{repr((b['box'][3] - b['box'][1]) / h)}" for b in boxes]
        lab = root / "labels" / sub / (Path(name).stem + ".txt")
        lab.parent.mkdir(parents=True, exist_ok=True)
        if boxes or name != "empty.png":  # an image without a label file has no boxes
            lab.write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "data.yaml").write_text("path: .\nnames:\n  0: coin\n  1: digit\n")
    return root


def write_coco(scenes, json_path: Path, image_dir: Path) -> Path:
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "coin"}, {"id": 2, "name": "digit"}]}
    for i, (name, img, boxes) in enumerate(scenes):
        _save(img, image_dir / name)
        doc["images"].append({"id": 100 + i, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
        for b in boxes:
            x1, y1, x2, y2 = b["box"]
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": 100 + i,
                                       "category_id": LABELS.index(b["label"]) + 1,
                                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                       "iscrowd": 0})
    json_path.write_text(json.dumps(doc))
    return json_path


def write_voc(scenes, root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    for name, img, boxes in scenes:
        _save(img, root / "JPEGImages" / name)
        objs = "".join(f"<object><name>{b['label']}</name><difficult>0</difficult><bndbox><xmin>{b['box'][0] + 1}"
                       f"</xmin><ymin>{b['box'][1] + 1}</ymin><xmax>{b['box'][2]}</xmax><ymax>{b['box'][3]}</ymax>"
                       f"</bndbox></object>" for b in boxes)
        (root / "Annotations" / (Path(name).stem + ".xml")).write_text(
            f"<annotation><filename>{name}</filename><size><width>{img.shape[1]}</width>"
            f"<height>{img.shape[0]}</height><depth>3</depth></size>{objs}</annotation>")
    (root / "classes.txt").write_text("coin\ndigit\n")
    return root


@pytest.fixture(scope="module")
def scenes():
    return build_scenes()


@pytest.fixture(scope="module")
def imported(scenes, tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    write_yolo(scenes, d / "yolo")
    write_coco(scenes, d / "coco" / "annotations.json", d / "coco" / "imgs")
    write_voc(scenes, d / "voc")
    out = {}
    r = _cli("data", "import", d / "yolo", "-o", d / "ds_yolo", "--json")
    assert r.returncode == 0, r.stderr
    out["yolo_card"] = json.loads(r.stdout)
    r = _cli("data", "import", d / "coco" / "annotations.json", "--images", d / "coco" / "imgs", "-o", d / "ds_coco")
    assert r.returncode == 0, r.stderr
    import_data(d / "voc", d / "ds_voc")
    return d


def test_three_formats_import_to_identical_datasets(imported, scenes):
    d = imported
    sets = {k: load_dataset(d / f"ds_{k}") for k in ("yolo", "coco", "voc")}
    ref = sets["yolo"]
    for k, ds in sets.items():
        assert (d / f"ds_{k}" / "boxes.json").read_bytes() == (d / "ds_yolo" / "boxes.json").read_bytes(), k
        assert (d / f"ds_{k}" / "splits.json").read_bytes() == (d / "ds_yolo" / "splits.json").read_bytes(), k
        assert ds.card["checksums"] == ref.card["checksums"], k
        assert ds.card["source_format"] == k
    # the dataset holds what was drawn, in pixels, through the API the trainer uses
    ds = ref
    assert ds.labels == LABELS
    by_file = {Path(r["file"]).name: i for i, r in enumerate(ds.records)}
    assert set(by_file) == {s[0] for s in scenes}
    for name, img, boxes in scenes:
        i = by_file[name]
        arr = ds.image(i)
        assert arr.dtype == np.uint8 and arr.shape == img.shape
        if name.endswith(".png"):
            np.testing.assert_array_equal(arr, img)
        got = ds.truths(i)
        assert [t["label"] for t in got] == [b["label"] for b in boxes]
        np.testing.assert_allclose([t["box"] for t in got], [b["box"] for b in boxes], atol=1e-9)
        assert (d / "ds_yolo" / "images" / name).read_bytes() == (d / "yolo" / "images" / name).read_bytes()
    parts = [set(ds.split(s)) for s in ("train", "validation", "test")]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(len(scenes)))


def test_card_counts_and_show(imported, scenes):
    card = load_dataset(imported / "ds_yolo").card
    n_coin = sum(1 for s in scenes for b in s[2] if b["label"] == "coin")
    n_digit = sum(1 for s in scenes for b in s[2] if b["label"] == "digit")
    assert card["kind"] == "detection" and card["task"] == "detection" and card["format"] == "edgeloop-dataset"
    assert card["classes"] == LABELS
    assert card["n_images"] == len(scenes)
    assert card["boxes_per_class"] == {"coin": n_coin, "digit": n_digit}
    assert card["images_without_boxes"] == 1
    assert sum(b["boxes"] for b in card["box_sizes"]["bins"]) == n_coin + n_digit
    assert sum(card["counts"][s]["boxes"] for s in ("train", "validation", "test")) == n_coin + n_digit
    r = _cli("data", "show", imported / "ds_yolo")
    assert r.returncode == 0, r.stderr
    assert "boxes per class" in r.stdout and "#" in r.stdout and "without boxes" in r.stdout
    assert f"{n_coin}" in r.stdout
    j = json.loads(_cli("data", "show", imported / "ds_yolo", "--json").stdout)
    assert j["boxes_per_class"] == card["boxes_per_class"]
    # a changed image is refused
    victim = next((imported / "ds_coco" / "images").iterdir())
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(EdgeloopError, match="checksum"):
        load_dataset(imported / "ds_coco")


def test_yolo_split_folders_are_kept(scenes, tmp_path):
    names = [s[0] for s in scenes]
    splits = {n: ("val" if i % 4 == 0 else "train") for i, n in enumerate(names)}
    write_yolo(scenes, tmp_path / "y", splits)
    (tmp_path / "y" / "data.yaml").unlink()
    (tmp_path / "y" / "classes.txt").write_text("coin\ndigit\n")
    ds = load_dataset(import_data(tmp_path / "y", tmp_path / "ds", seed=3))
    val = {Path(ds.records[i]["file"]).name for i in ds.split("validation")}
    assert val == {n for n, s in splits.items() if s == "val"}
    test = {Path(ds.records[i]["file"]).name for i in ds.split("test")}
    assert test and all(splits[n] == "train" for n in test)  # carved out of train
    assert ds.card["split"]["kept_from_source"] == ["train", "validation"]


def _clean_failure(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("case", ["class", "outside", "orphan", "unreadable", "malformed", "yaml"])
def test_bad_yolo_labels_one_line_nothing_written(scenes, tmp_path, case):
    root = write_yolo(scenes[:3] + scenes[-1:], tmp_path / "y")
    lab = root / "labels" / "coins_00.txt"
    lines = lab.read_text().splitlines()
    needles = []
    if case == "class":
        lines[1] = "7" + lines[1][1:]
        needles = ["coins_00.txt:2", "class index 7 out of range"]
    elif case == "outside":
        lines[0] = "0 0.98 0.5 0.3 0.2"
        needles = ["coins_00.txt:1", "outside"]
    elif case == "orphan":
        (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        needles = ["ghost.txt", "label file without an image"]
    elif case == "unreadable":
        (root / "images" / "broken.png").write_bytes(b"\x89PNG not really")
        needles = ["broken.png", "cannot read the image"]
    elif case == "malformed":
        lines[2] = "0 0.5 0.5"
        needles = ["coins_00.txt:3", "5 values"]
    else:
        (root / "data.yaml").write_text("names: [coin\n")
        needles = ["data.yaml", "YAML"]
    lab.write_text("\n".join(lines) + "\n")
    r = _cli("data", "import", root, "-o", tmp_path / "out")
    _clean_failure(r, *needles)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_coco_and_voc(scenes, tmp_path):
    j = write_coco(scenes[:4], tmp_path / "a.json", tmp_path / "imgs")
    doc = json.loads(j.read_text())
    doc["annotations"][1]["category_id"] = 9
    j.write_text(json.dumps(doc))
    _clean_failure(_cli("data", "import", j, "--images", tmp_path / "imgs", "-o", tmp_path / "o"),
                   "annotations[1]", "category_id 9")
    _clean_failure(_cli("data", "import", j, "-o", tmp_path / "o"), "--images")
    voc = write_voc(scenes[:4], tmp_path / "voc")
    xml = voc / "Annotations" / "coins_01.xml"
    xml.write_text(xml.read_text().replace("<name>coin</name>", "<name>dog</name>", 1))
    _clean_failure(_cli("data", "import", voc, "-o", tmp_path / "o"), "coins_01.xml", "object 1", "dog")
    assert not (tmp_path / "o").exists()


def test_yaml_list_names_and_voc_image_sets(scenes, tmp_path):
    root = write_yolo(scenes[:6], tmp_path / "y")
    (root / "data.yaml").write_text("names: [coin, digit]\nnc: 2\n")
    assert load_dataset(import_data(root, tmp_path / "a")).labels == LABELS
    voc = write_voc(scenes[:8], tmp_path / "voc")
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    stems = [Path(s[0]).stem for s in scenes[:8]]
    (main / "train.txt").write_text("\n".join(stems[:5]) + "\n")
    (main / "val.txt").write_text("\n".join(stems[5:7]) + "\n")
    (main / "test.txt").write_text(stems[7] + "\n")
    ds = load_dataset(import_data(voc, tmp_path / "b"))
    assert [Path(ds.records[i]["file"]).stem for i in ds.split("test")] == [stems[7]]
    assert sorted(Path(ds.records[i]["file"]).stem for i in ds.split("validation")) == sorted(stems[5:7])
    assert ds.card["split"]["kept_from_source"] == ["train", "validation", "test"]
