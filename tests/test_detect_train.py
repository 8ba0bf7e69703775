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


def make_scenes(n_images: int, width: int, height: int, digits=(0, 7), seed: int = 0, photos=PHOTOS,
                scale=(2, 3)):
    """(labels, [(image uint8 [H, W, 3], boxes)], rng): digits (ink blended by their stroke
    intensity, a random bright or dark colour) at 2-3x scale on random crops of real photos;
    1-3 non-overlapping objects per image, boxes [x1, y1, x2, y2] in pixels."""
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
    scenes = []
    for n in range(n_images):
        bg = backs[n % len(backs)]
        y0 = int(rng.integers(0, bg.shape[0] - height))
        x0 = int(rng.integers(0, bg.shape[1] - width))
        img = bg[y0:y0 + height, x0:x0 + width].astype(np.float32)
        boxes: list[dict] = []
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(len(digits)))
            glyph = pools[digits[c]][int(rng.integers(len(pools[digits[c]])))]
            s = int(rng.integers(scale[0], scale[1] + 1))
            g = np.kron(glyph, np.ones((s, s))) / 16.0
            gh, gw = g.shape
            for _try in range(20):
                x, y = int(rng.integers(0, width - gw)), int(rng.integers(0, height - gh))
                if all(x + gw <= b["box"][0] or b["box"][2] <= x or y + gh <= b["box"][1] or b["box"][3] <= y
                       for b in boxes):
                    break
            else:
                continue
            ink = rng.uniform(180, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 60, 3)
            a = g[:, :, None]
            img[y:y + gh, x:x + gw] = img[y:y + gh, x:x + gw] * (1 - a) + ink * a
            boxes.append({"label": labels[c], "box": [x, y, x + gw, y + gh]})
        scenes.append((np.clip(img, 0, 255).astype(np.uint8), boxes))
    return labels, scenes, rng


def make_detection_folder(out: Path, n_images: int = 240, size: int = 96, digits=(0, 7), seed: int = 0,
                          photos=PHOTOS, scale=(2, 3)) -> Path:
    """The scenes of :func:`make_scenes` (square) written in the detection dataset folder format,
    70/15/15 split."""
    from PIL import Image

    labels, scenes, rng = make_scenes(n_images, size, size, digits, seed, photos, scale)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for n, (img, boxes) in enumerate(scenes):
        f = f"images/{n:04d}.png"
        Image.fromarray(img).save(out / f)
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


def write_yolo_folder(root: Path, labels: list[str], scenes) -> Path:
    """A YOLO folder: images/NNNN.png, labels/NNNN.txt (class cx cy w h, normalised), classes.txt."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for n, (img, boxes) in enumerate(scenes):
        h, w = img.shape[:2]
        Image.fromarray(img).save(root / "images" / f"{n:04d}.png")
        lines = [f"{labels.index(b['label'])} {(b['box'][0] + b['box'][2]) / 2 / w:.6f} "
                 f"{(b['box'][1] + b['box'][3]) / 2 / h:.6f} {(b['box'][2] - b['box'][0]) / w:.6f} "
                 f"{(b['box'][3] - b['box'][1]) / h:.6f}" for b in boxes]
        (root / "labels" / f"{n:04d}.txt").write_text("".join(line + "\n" for line in lines))
    (root / "classes.txt").write_text("".join(name + "\n" for name in labels))
    return root


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
    picked = [k for k in splits["test"] if records[k]["boxes"]][:8]
    p = subprocess.run([sys.executable, "-m", "edgeloop", "predict", str(out),
                        *[str(det_folder / records[k]["file"]) for k in picked], "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert len(doc) == len(picked)
    found = [d for r in doc for d in r["detections"]]
    assert found and all(d["label"] in ("digit0", "digit7") for d in found)
    assert all(0 <= d["box"][0] < d["box"][2] <= 64 and 0 <= d["box"][1] < d["box"][3] <= 64 for d in found)
    assert all("centroid" in r["note"] and "one cell" in r["note"] for r in doc)


def _cortexm_tools():
    import os

    from edgeloop.backends.c import cortexm

    missing = cortexm.toolchain()["missing"]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Cortex-M toolchain missing: {missing}")  # CI installs it (.ci/run)
        pytest.skip(f"Cortex-M toolchain missing: {missing}")


def test_trained_fomo_runs_on_cortex_m4_as_estimated(trained, tmp_path):
    """The shipped int8 centroid graph exports to C (its softmax runs over the last axis, the
    heatmap channels-last), matches the host bit for bit on the emulated Cortex-M4, and its
    measured instructions per frame are what the trainer's calibrated estimate said."""
    _cortexm_tools()
    out, r = trained
    p = subprocess.run([sys.executable, "-m", "edgeloop", "export", str(out), "--target", "stm32l4r5",
                        "-o", str(tmp_path / "c"), "--verify", "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["detect"]["kind"] == "centroids" and doc["detect"]["int8_scores"]
    v = doc["verify"]
    assert v["available"] and v["outputs_match"], v
    est = r["candidates"][0]["est_instructions"]
    assert abs(v["instructions_per_inference"] - est) <= 0.05 * v["instructions_per_inference"]


def test_width_is_chosen_for_the_target_instruction_budget():
    from edgeloop.hardware import get_target
    from edgeloop.train.detect import (THIN_ALPHAS, build_fomo, choose_alpha, estimate_fps,
                                       estimate_instructions, instruction_budget)

    m7, m4 = get_target("stm32f746"), get_target("stm32l4r5")
    budget = instruction_budget(m7)
    assert budget < m7.clock_mhz * 1e6 / 10  # more than one cycle per instruction: fewer than the clock allows
    assert estimate_fps(m7, budget) == pytest.approx(10, rel=1e-3)
    assert instruction_budget(m4) < budget  # a slower clock, more cycles per instruction
    assert instruction_budget(get_target("raspberry-pi-4")) is None
    cost = {a: estimate_instructions(build_fomo(2, a, thin=True), (96, 96)) for a in THIN_ALPHAS}
    assert list(cost.values()) == sorted(cost.values())
    a = choose_alpha(m7, 2, (96, 96))
    assert cost[a] <= budget  # 10+ fps on the target itself
    wider = [w for w in THIN_ALPHAS if w > a]
    assert wider and cost[wider[0]] > budget  # the widest that fits, not merely a narrow one
    assert choose_alpha(get_target("stm32h743"), 2, (96, 96)) > a  # a 480 MHz M7 affords more


def test_yolo_folder_import_train_predict_cli(tmp_path):
    """A YOLO folder -> `data import` -> `train --target stm32f746` (no --min-score, no --candidates)
    -> `predict --json`: boxes in the images' own pixels (non-square images, letterboxed)."""
    from edgeloop.detect.metrics import centroid_f1

    labels, scenes, _ = make_scenes(160, 96, 72, scale=(2, 2))
    src = write_yolo_folder(tmp_path / "yolo", labels, scenes)

    def cli(*args, timeout=600):
        p = subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True,
                           timeout=timeout)
        assert p.returncode == 0, p.stderr
        return p.stdout

    cli("data", "import", src, "-o", tmp_path / "ds")
    r = json.loads(cli("train", tmp_path / "ds", "--target", "stm32f746", "-o", tmp_path / "m.onnx",
                       "--size", "64x64", "--epochs", "20", "--json"))
    assert r["chosen"] == "fomo" and r["target"] == "stm32f746"
    box_row = next(c for c in r["candidates"] if c["name"] == "yolo")
    assert "not tried" in box_row["skipped"] and "stm32f746" in box_row["skipped"]  # cannot fit: not trained
    assert r["candidates"][0]["est_basis"] == "instructions" and r["estimate_note"]
    boxes = json.loads((tmp_path / "ds" / "boxes.json").read_text())
    splits = json.loads((tmp_path / "ds" / "splits.json").read_text())
    test = [boxes["images"][k] for k in splits["test"]]
    doc = json.loads(cli("predict", tmp_path / "m.onnx", *[tmp_path / "ds" / t["file"] for t in test], "--json"))
    preds = [d["detections"] for d in doc]
    found = [d for p in preds for d in p]
    assert found and all(0 <= d["box"][0] < d["box"][2] <= 96 and 0 <= d["box"][1] < d["box"][3] <= 72
                         for d in found)
    assert all("one cell" in d["note"] for d in doc)
    # the centres land on the objects in the images' pixels (input-pixel boxes would miss the right third)
    assert centroid_f1(preds, [t["boxes"] for t in test])["f1"] > 0.15


def test_trainer_reads_through_the_data_layer(det_folder, tmp_path):
    """Checksums are checked (a changed file is refused) and a box label outside the dataset's
    labels is a one-line error naming the image, before any training."""
    import shutil

    from edgeloop.errors import EdgeloopError
    from edgeloop.train import train_dataset

    ds = shutil.copytree(det_folder, tmp_path / "ds")
    doc = json.loads((ds / "boxes.json").read_text())
    doc["images"][3]["boxes"] = [{"label": "cat", "box": [1, 1, 9, 9]}]
    (ds / "boxes.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeloopError) as e:
        train_dataset(ds, tmp_path / "m.onnx", candidates=["fomo"], size="64x64", epochs=1)
    assert "checksum" in str(e.value) and "\n" not in str(e.value)
    card = json.loads((ds / "card.json").read_text())
    card["checksums"]["boxes.json"] = "sha256:" + hashlib.sha256((ds / "boxes.json").read_bytes()).hexdigest()
    (ds / "card.json").write_text(json.dumps(card))
    i = next(k for k in json.loads((ds / "splits.json").read_text())["train"])
    doc["images"][i]["boxes"] = [{"label": "cat", "box": [1, 1, 9, 9]}]
    (ds / "boxes.json").write_text(json.dumps(doc))
    card["checksums"]["boxes.json"] = "sha256:" + hashlib.sha256((ds / "boxes.json").read_bytes()).hexdigest()
    (ds / "card.json").write_text(json.dumps(card))
    with pytest.raises(EdgeloopError) as e:
        train_dataset(ds, tmp_path / "m.onnx", candidates=["fomo"], size="64x64", epochs=1)
    assert "'cat'" in str(e.value) and doc["images"][i]["file"] in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


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
