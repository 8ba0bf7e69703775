"""`edgeloop predict`: run a model (or a bundle's model) on images, locally with onnxruntime.

Detectors answer boxes in each image's own pixels; classifiers a label and scores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import typer

from edgeloop.errors import EdgeloopError, UsageError

DRAWN_BY = "edgeloop predict --draw"
MAX_IMAGE_PIXELS = 50_000_000


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UsageError("no such image file", where=path)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        img = Image.open(p)
        if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
            raise UsageError(f"image of {img.size[0]}x{img.size[1]} pixels is above the limit of "
                             f"{MAX_IMAGE_PIXELS:,}", where=path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UsageError(f"not a readable image ({type(e).__name__})", where=path) from None
    return img.convert("RGB")


def load_model_or_bundle(path: str, trust_kwargs: Optional[Dict[str, Any]] = None):
    """The ONNX graph of a model file, or of a bundle folder's model.onnx."""
    from edgeloop.frontends import load_file

    p = Path(path)
    if p.is_dir():
        if not (p / "manifest.json").is_file() or not (p / "model.onnx").is_file():
            raise UsageError("a folder must be a bundle (manifest.json and model.onnx)", where=path)
        import onnx

        model = onnx.load(str(p / "model.onnx"))
        try:
            manifest = json.loads((p / "manifest.json").read_text())
        except ValueError:
            raise UsageError("manifest.json is not valid JSON", where=path) from None
        if isinstance(manifest, dict) and isinstance(manifest.get("head"), dict):
            from edgeloop.graph import get_metadata, set_metadata
            if "head" not in get_metadata(model):
                set_metadata(model, head=manifest["head"])
        return model
    return load_file(path, **(trust_kwargs or {}))


def _classify(model, images: List[str]) -> List[Dict[str, Any]]:
    """label and scores per image for an image classifier (input resized to the model's input)."""
    import onnxruntime as ort

    from edgeloop.graph import get_metadata
    from edgeloop.runtime.model import softmax

    meta = get_metadata(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    if len(shape) not in (2, 4):
        raise UsageError(f"input '{inp.name}' of shape {inp.shape} is not an image; predict takes "
                         "image models (detectors or image classifiers)")
    last = sess.get_outputs()[-1]
    if len(sess.get_outputs()) > 2 or len(last.shape) > 2:
        from edgeloop.detect import NO_HEAD

        raise UsageError(NO_HEAD + f"; its outputs {', '.join(o.name + str(o.shape) for o in sess.get_outputs())} "
                         "are not a classifier's scores")
    labels = meta.get("labels") if isinstance(meta.get("labels"), list) else None
    results = []
    for path in images:
        img = _open_image(path)
        if len(shape) == 4:
            nchw = shape[1] in (1, 3) and shape[3] not in (1, 3)
            c, h, w = (shape[1], shape[2], shape[3]) if nchw else (shape[3], shape[1], shape[2])
        else:
            side = int(round(np.sqrt(shape[1])))
            c, h, w, nchw = 1, side, side, False
        g = img.convert("L" if c == 1 else "RGB").resize((w, h))
        x = np.asarray(g, dtype=np.float32) / 255.0
        x = x.reshape(h, w, c)
        x = np.transpose(x, (2, 0, 1))[None] if nchw else x[None]
        x = x.reshape(shape).astype(np.float32)
        outs = sess.run(None, {inp.name: x})
        scores = np.asarray(outs[-1], dtype=np.float64).reshape(-1)
        if scores.min() < 0 or scores.max() > 1 or abs(scores.sum() - 1) > 1e-3:
            scores = softmax(scores)
        k = int(np.argmax(scores))
        results.append({"input": path, "label": labels[k] if labels and k < len(labels) else k,
                        "scores": [round(float(s), 6) for s in scores]})
    return results


def draw(image, detections: List[Dict[str, Any]], out: Path) -> None:
    """Write the image with its boxes and labels (PNG, tagged as ours)."""
    from PIL import ImageDraw
    from PIL.PngImagePlugin import PngInfo

    colours = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60)]
    canvas = image.copy()
    d = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 250))
    names: Dict[str, int] = {}
    for det in detections:
        colour = colours[names.setdefault(str(det["label"]), len(names)) % len(colours)]
        x1, y1, x2, y2 = det["box"]
        d.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{det['label']} {det['score']:.2f}"
        tb = d.textbbox((x1, y1), text)
        ty = max(0, y1 - (tb[3] - tb[1]) - 4)
        d.rectangle([x1, ty, x1 + (tb[2] - tb[0]) + 4, ty + (tb[3] - tb[1]) + 4], fill=colour)
        d.text((x1 + 2, ty + 1), text, fill=(255, 255, 255))
    info = PngInfo()
    info.add_text("Software", DRAWN_BY)
    tmp = out.with_name(out.name + ".part")
    canvas.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(out)


def _drawn_by_us(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.info.get("Software") == DRAWN_BY
    except Exception:  # not an image we can read: not ours
        return False


def draw_targets(images: List[str], folder: Path) -> List[Path]:
    """Where each drawn image goes; refuses to overwrite a file edgeloop did not draw."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = []
    seen = set()
    for path in images:
        stem = Path(path).stem
        name = f"{stem}.png"
        i = 1
        while name in seen:
            i += 1
            name = f"{stem}-{i}.png"
        seen.add(name)
        t = folder / name
        if t.exists() and (t.resolve() == Path(path).resolve() or not _drawn_by_us(t)):
            raise UsageError(f"{t} exists and was not drawn by edgeloop; choose another --draw folder",
                             where=str(folder))
        targets.append(t)
    return targets


CENTROID_NOTE = ("a centroid (FOMO-style) model finds object centres: each box is the heatmap cells "
                 "around a centre (one cell for a single-cell hit), not the object's extent")


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(
        model: str = typer.Argument(..., help="A model file (.onnx, .tflite, ...) or a bundle folder."),
        images: List[str] = typer.Argument(..., help="Image files (PNG, JPEG, ...)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON array, one object per image."),
        draw_dir: Optional[Path] = typer.Option(None, "--draw", help="Write each image with its boxes and labels drawn into this folder."),
        min_score: Optional[float] = typer.Option(None, "--min-score", help="Keep detections scoring at least this (default: the head's min_score)."),
    ) -> None:
        """Run a detector or an image classifier on images (onnxruntime, on this machine).

        Detectors print boxes [x1, y1, x2, y2] in each image's own pixels, with score and
        label; classifiers print a label and the class scores."""
        from rich.console import Console
        from rich.table import Table

        from edgeloop.detect import Detector, head_of

        if min_score is not None and not (0.0 <= min_score <= 1.0):
            raise UsageError(f"--min-score must be between 0 and 1, got {min_score}")
        m = load_model_or_bundle(model)
        try:
            head = head_of(m)
        except EdgeloopError as e:
            raise e.with_where(model)
        targets = draw_targets(images, draw_dir) if draw_dir is not None else None
        if head is None:
            results = _classify(m, images)
        else:
            det = Detector(m, head)
            results = []
            for i, path in enumerate(images):
                img = _open_image(path)
                found = det.detect(img, min_score)
                results.append({"input": path, "detections": found})
                if head["kind"] == "centroids":
                    results[-1]["note"] = CENTROID_NOTE
                if targets is not None:
                    draw(img, found, targets[i])
        if as_json:
            sys.stdout.write(json.dumps(results, indent=2) + "\n")
            return
        out = Console(highlight=False)
        t = Table(title=f"{model}: {len(images)} image(s)")
        if head is None:
            for c in ("image", "label", "score"):
                t.add_column(c)
            for r in results:
                t.add_row(r["input"], str(r["label"]), f"{max(r['scores']):.3f}")
        else:
            for c in ("image", "label", "score", "box (x1, y1, x2, y2)"):
                t.add_column(c)
            for r in results:
                if not r["detections"]:
                    t.add_row(r["input"], "-", "-", "no detections")
                for d in r["detections"]:
                    t.add_row(r["input"], str(d["label"]), f"{d['score']:.3f}",
                              ", ".join(f"{v:.0f}" for v in d["box"]))
        out.print(t)
        if head is not None and head["kind"] == "centroids":
            out.print(f"note: {CENTROID_NOTE}")
        if targets is not None:
            Console(stderr=True).print(f"drew {len(targets)} image(s) into {draw_dir}")
