"""Smallest-first detector training on a small real-object detection set.

The set: scikit-learn's handwritten digits (two classes) pasted on crops of
scikit-image photographs, written directly in the agreed detection dataset
folder format (images/, boxes.json, splits.json, card.json).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.wheel_assets import photo

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "camera.png")


def make_detection_folder(out: Path, n_images: int = 240, size: int = 96, digits=(0, 7), seed: int = 0,
                          photos=PHOTOS, scale=(2, 3)) -> Path:
    """Digits (ink blended by their stroke intensity, a random bright colour) at 2-3x scale on
    random crops of real photos; 1-3 non-overlapping objects per image; 70/15/15 split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    d = load_digits()
    pools = {k: d.images[d.target == k] for k in digits}
    labels = [f"digit{k}" for k in digits]
    backs = []
    for name in photos:
        im = Image.open(photo(name)).convert("RGB")
        im = im.resize((im.width // 2, im.height // 2), Image.BILINEAR)
        backs.append(np.asarray(im))
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for n in range(n_images):
        bg = backs[n % len(backs)]
        y0 = int(rng.integers(0, bg.shape[0] - size))
        x0 = int(rng.integers(0, bg.shape[1] - size))
        img = bg[y0:y0 + size, x0:x0 + size].astype(np.float32)
        boxes: list[dict] = []
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(len(digits)))
            glyph = pools[digits[c]][int(rng.integers(len(pools[digits[c]])))]
            s = int(rng.integers(scale[0], scale[1] + 1))
            g = np.kron(glyph, np.ones((s, s))) / 16.0
            gh, gw = g.shape
            for _try in range(20):
                x, y = int(rng.integers(0, size - gw)), int(rng.integers(0, size - gh))
                if all(x + gw <= b["box"][0] or b["box"][2] <= x or y + gh <= b["box"][1] or b["box"][3] <= y
                       for b in boxes):
                    break
            else:
                continue
            ink = rng.uniform(180, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 60, 3)
            a = g[:, :, None]
            img[y:y + gh, x:x + gw] = img[y:y + gh, x:x + gw] * (1 - a) + ink * a
            boxes.append({"label": labels[c], "box": [x, y, x + gw, y + gh]})
        f = f"images/{n:04d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / f)
        records.append({"file": f, "width": size, "height": size, "boxes": boxes})
    order = rng.permutation(n_images).tolist()
    a, b = int(0.7 * n_images), int(0.85 * n_images)
    splits = {"seed": seed, "train": sorted(order[:a]), "validation": sorted(order[a:b]), "test": sorted(order[b:])}
    (out / "boxes.json").write_text(json.dumps({"labels": labels, "images": records}))
    (out / "splits.json").write_text(json.dumps(splits))
    sums = {p.relative_to(out).as_posix(): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}
    card = {"format": "edgeloop-dataset", "kind": "detection", "task": "detection", "classes": labels,
            "images": n_images, "boxes": sum(len(r["boxes"]) for r in records), "checksums": sums}
    (out / "card.json").write_text(json.dumps(card))
    return out


@pytest.fixture(scope="module")
def det_folder(tmp_path_factory):
    return make_detection_folder(tmp_path_factory.mktemp("det") / "ds", n_images=200, size=64, scale=(2, 2))


@pytest.fixture(scope="module")
def trained(det_folder, tmp_path_factory):
    from edgeloop.train import train_dataset

    out = tmp_path_factory.mktemp("model") / "det.onnx"
    result = train_dataset(det_folder, out, target="stm32f746", min_score=0.3, epochs=20, seed=0,
                           candidates=["fomo"], size="64x64")
    return out, result


def test_centroid_f1_counts_centres_inside_unmatched_boxes_of_the_class():
    from edgeloop.detect.metrics import centroid_f1

    truths = [[{"box": [0, 0, 10, 10], "label": "a"}, {"box": [20, 20, 30, 30], "label": "b"}]]
    preds = [[{"box": [4, 4, 6, 6], "score": 0.9, "label": "a"},     # centre in the 'a' box: TP
              {"box": [3, 3, 5, 5], "score": 0.8, "label": "a"},     # same box again: FP
              {"box": [24, 24, 26, 26], "score": 0.7, "label": "a"},  # inside 'b' but class 'a': FP
              {"box": [50, 50, 52, 52], "score": 0.6, "label": "b"}]]  # nothing there: FP
    r = centroid_f1(preds, truths)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 3, 1)
    assert r["f1"] == pytest.approx(2 / (2 + 3 + 1))
    assert centroid_f1([[]], [[]])["f1"] == 1.0
    assert centroid_f1([[]], truths)["f1"] == 0.0


def test_fomo_trains_int8_reaches_score_and_carries_its_head(trained):
    import onnx

    from edgeloop.detect import head_of

    out, r = trained
    assert r["chosen"] == "fomo" and r["task"] == "detection"
    row = r["candidates"][0]
    assert row["reached"] and row["score"] >= 0.3 and row["fits"] is True
    assert row["precision"] == "int8" and row["params"] < 100_000 and row["est_fps"] > 0
    assert r["test_score"] is not None and r["test_score"] > 0.2
    m = onnx.load(out)
    assert sum(n.op_type == "QuantizeLinear" for n in m.graph.node) > 5
    head = head_of(m)
    assert head["kind"] == "centroids" and head["labels"] == ["digit0", "digit7"]
    assert head["input"]["size"] == [64, 64] and 0.3 <= head["min_score"] <= 0.8
    assert out.with_suffix(".pt2").is_file()


def test_predict_json_on_trained_model_gives_boxes(trained, det_folder):
    out, _ = trained
    splits = json.loads((det_folder / "splits.json").read_text())
    records = json.loads((det_folder / "boxes.json").read_text())["images"]
    i = next(k for k in splits["test"] if records[k]["boxes"])
    img = det_folder / records[i]["file"]
    p = subprocess.run([sys.executable, "-m", "edgeloop", "predict", str(out), str(img), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    text = json.dumps(doc)
    assert '"box"' in text and ("digit0" in text or "digit7" in text)


def test_detection_train_bad_input_is_one_line(det_folder, tmp_path):
    from edgeloop.errors import EdgeloopError
    from edgeloop.train import train_dataset

    for kw, word in (({"size": "90x96"}, "multiples of 8"), ({"min_score": 3.0}, "between 0 and 1"),
                     ({"candidates": ["ssd"]}, "unknown detection candidate"),
                     ({"metric": "accuracy"}, "--metric")):
        with pytest.raises(EdgeloopError) as e:
            train_dataset(det_folder, tmp_path / "m.onnx", **kw)
        assert word in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def test_box_detector_outputs_yolov8_layout_and_learns():
    """The box net's loss falls on one batch and its output is [1, 4 + nc, N] in input pixels."""
    import torch

    from edgeloop.train.detect import _box_loss, _box_net_class

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trainer does: small nets, no thread pool spinning on a busy CPU
    net = _box_net_class()(2, 64, 64)
    params = sum(p.numel() for p in net.parameters())
    assert 100_000 < params < 1_000_000
    x = torch.rand(4, 3, 64, 64)
    boxes = [np.array([[10, 10, 30, 34, 0], [40, 8, 60, 28, 1]], np.float32)] * 4
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = _box_loss(net, x, boxes)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first * 0.5
    net.eval()
    with torch.no_grad():
        y = net(x[:1])
    assert tuple(y.shape) == (1, 6, 64)
    torch.set_num_threads(threads)
    assert 0 <= float(y[0, 4:].min()) and float(y[0, 4:].max()) <= 1
    assert float(y[0, 2:4].max()) <= 64  # widths and heights in input pixels


def test_cli_train_detection_bad_size_is_one_line_error(det_folder, tmp_path):
    p = subprocess.run([sys.executable, "-m", "edgeloop", "train", str(det_folder), "--size", "64by64",
                        "-o", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "--size" in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_shipped_net_folds_batchnorm_and_computes_the_same():
    import torch

    from edgeloop.train.detect import _fused, build_fomo

    torch.manual_seed(0)
    net = build_fomo(2, 0.25)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from the identity
            net(torch.rand(8, 3, 32, 32) * 3)
    net.eval()
    fused = _fused(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the trained net is untouched
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), fused(x), atol=1e-4)
