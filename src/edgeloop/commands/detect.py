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


class ImageClassifier:
    """An image classifier on onnxruntime: an image resized to the model's input, label and scores out."""

    def __init__(self, model):
        import onnxruntime as ort

        from edgeloop.graph import get_metadata

        meta = get_metadata(model)
        self.session = sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        self.input_name = inp.name
        self.shape = shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        if len(shape) not in (2, 4):
            raise UsageError(f"input '{inp.name}' of shape {inp.shape} is not an image; predict takes "
                             "image models (detectors or image classifiers)")
        last = sess.get_outputs()[-1]
        if len(sess.get_outputs()) > 2 or len(last.shape) > 2:
            from edgeloop.detect import NO_HEAD

            raise UsageError(NO_HEAD + f"; its outputs {', '.join(o.name + str(o.shape) for o in sess.get_outputs())} "
                             "are not a classifier's scores")
        self.labels = meta.get("labels") if isinstance(meta.get("labels"), list) else None
        if len(shape) == 4:
            self.nchw = shape[1] in (1, 3) and shape[3] not in (1, 3)
            self.chw = (shape[1], shape[2], shape[3]) if self.nchw else (shape[3], shape[1], shape[2])
        else:
            side = int(round(np.sqrt(shape[1])))
            self.chw, self.nchw = (1, side, side), False

    def preprocess(self, img) -> np.ndarray:
        """The input tensor of a PIL image (or an RGB array)."""
        from PIL import Image

        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        c, h, w = self.chw
        g = img.convert("L" if c == 1 else "RGB").resize((w, h))
        x = np.asarray(g, dtype=np.float32) / 255.0
        x = x.reshape(h, w, c)
        x = np.transpose(x, (2, 0, 1))[None] if self.nchw else x[None]
        return x.reshape(self.shape).astype(np.float32)

    def infer(self, x: np.ndarray):
        return self.session.run(None, {self.input_name: x})

    def postprocess(self, outs) -> Dict[str, Any]:
        from edgeloop.runtime.model import softmax

        scores = np.asarray(outs[-1], dtype=np.float64).reshape(-1)
        if scores.min() < 0 or scores.max() > 1 or abs(scores.sum() - 1) > 1e-3:
            scores = softmax(scores)
        k = int(np.argmax(scores))
        labels = self.labels
        return {"label": labels[k] if labels and k < len(labels) else k,
                "scores": [round(float(s), 6) for s in scores]}


def _classify(model, images: List[str]) -> List[Dict[str, Any]]:
    """label and scores per image for an image classifier (input resized to the model's input)."""
    clf = ImageClassifier(model)
    return [{"input": path, **clf.postprocess(clf.infer(clf.preprocess(_open_image(path))))} for path in images]


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

# ------------------------------------------------------------------ --source: frames of a video, stream or camera

class _DetectorStep:
    """A detector as a frame step (edgeloop.runtime.source.run): the stages timed one by one."""

    def __init__(self, det, min_score: Optional[float]):
        self.det, self.min_score = det, min_score

    def preprocess(self, rgb):
        from edgeloop.runtime.detect import preprocess

        return preprocess(rgb, self.det.head, self.det.input_dtype)

    def infer(self, x):
        return dict(zip(self.det.output_names, self.det.session.run(None, {self.det.input_name: x})))

    def postprocess(self, outputs, box, frame) -> Dict[str, Any]:
        from edgeloop.runtime.detect import decode

        return {"detections": decode(self.det.head, outputs, box, self.min_score)}


class _ClassifierStep:
    def __init__(self, clf: ImageClassifier):
        self.clf = clf

    def preprocess(self, rgb):
        return self.clf.preprocess(rgb), None

    def infer(self, x):
        return self.clf.infer(x)

    def postprocess(self, outs, ctx, frame) -> Dict[str, Any]:
        return self.clf.postprocess(outs)


FRAME_PNG = "frame-{:06d}.png"


def _check_frame_draw_dir(folder: Path, source) -> None:
    """Refuse, before the first frame, a --draw folder holding files edgeloop did not draw under the
    names the frames would take."""
    if getattr(source, "paths", None) is not None:  # a folder of images: the images' own names
        draw_targets([str(p) for p in source.paths[::source.every]], folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    for t in sorted(folder.glob("frame-*.png")):
        if not _drawn_by_us(t):
            raise UsageError(f"{t} exists and was not drawn by edgeloop; choose another --draw folder",
                             where=str(folder))


def _frame_target(folder: Path, frame) -> Path:
    t = folder / (f"{Path(frame.name).stem}.png" if frame.name else FRAME_PNG.format(frame.index))
    if t.exists() and not _drawn_by_us(t):  # appeared since the check: still never overwritten
        raise UsageError(f"{t} exists and was not drawn by edgeloop; choose another --draw folder",
                         where=str(folder))
    return t


def _text_line(doc: Dict[str, Any]) -> str:
    where = f"frame {doc['frame']} ({doc['time']:.3f} s)"
    if "detections" not in doc:
        return f"{where}: {doc['label']} {max(doc['scores']):.3f}"
    if not doc["detections"]:
        return f"{where}: no detections"
    return f"{where}: " + "; ".join(f"{d['label']} {d['score']:.3f} [" + ", ".join(f"{v:.0f}" for v in d["box"]) + "]"
                                    for d in doc["detections"])


def predict_source(m, head, src: str, *, as_json: bool, draw_dir: Optional[Path], every: int,
                   max_frames: Optional[int], min_score: Optional[float]) -> None:
    """`predict --source`: every frame through the model, one line each; the numbers on stderr."""
    from PIL import Image

    from edgeloop.detect import Detector
    from edgeloop.runtime.source import SourceError, json_lines, open_source, run

    step = _ClassifierStep(ImageClassifier(m)) if head is None else _DetectorStep(Detector(m, head), min_score)
    try:
        source = open_source(src, every, max_pixels=MAX_IMAGE_PIXELS)
    except SourceError as e:
        raise UsageError(str(e)) from None
    try:
        if draw_dir is not None:
            _check_frame_draw_dir(draw_dir, source)
    except BaseException:
        source.close()
        raise
    write = json_lines(sys.stdout) if as_json else None

    def emit(frame, doc: Dict[str, Any]) -> None:
        if write is not None:
            write(frame, doc)
        else:
            print(_text_line(doc), flush=True)
        if draw_dir is not None:
            h, w = frame.rgb.shape[:2]
            found = doc.get("detections")
            if found is None:  # a classifier: the label over the whole frame
                found = [{"box": [0, 0, w - 1, h - 1], "label": doc["label"], "score": max(doc["scores"])}]
            draw(Image.fromarray(frame.rgb), found, _frame_target(draw_dir, frame))

    try:
        stats = run(source, step, emit, max_frames)
    except SourceError as e:
        raise UsageError(str(e)) from None
    for line in stats.lines(src):
        print(line, file=sys.stderr)
    if head is not None and head["kind"] == "centroids":
        print(f"note: {CENTROID_NOTE}", file=sys.stderr)
    if draw_dir is not None:
        print(f"drew {stats.frames} frame(s) into {draw_dir}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(
        model: str = typer.Argument(..., help="A model file (.onnx, .tflite, ...) or a bundle folder."),
        images: Optional[List[str]] = typer.Argument(None, help="Image files (PNG, JPEG, ...); or give --source."),
        source: Optional[str] = typer.Option(
            None, "--source", metavar="SRC",
            help="Frames instead of images: a video file, a folder of images, an rtsp:// or http:// stream URL, "
                 "or a camera (/dev/video0 or an index). Cameras and streams keep only the latest frame; files "
                 "and folders are read in order. Needs opencv-python-headless (pip install 'edgeloop[camera]') "
                 "except for folders. At the end, stderr shows frames, fps and latency percentiles per stage."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON array, one object per image; with --source, "
                                     "one JSON object per frame and line: {frame, time, detections} "
                                     "(classifiers: label, scores), time in seconds (a video's own clock, "
                                     "else since the first frame)."),
        draw_dir: Optional[Path] = typer.Option(None, "--draw", help="Write each image (or frame) with its boxes and labels drawn into this folder."),
        min_score: Optional[float] = typer.Option(None, "--min-score", help="Keep detections scoring at least this (default: the head's min_score)."),
        every: int = typer.Option(1, "--every", metavar="N", help="With --source: process every Nth frame (frame numbers keep counting the source's frames)."),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", metavar="N", help="With --source: stop after N processed frames."),
    ) -> None:
        """Run a detector or an image classifier on images, or on the frames of a video, an image
        folder, a stream or a camera (--source); onnxruntime, on this machine.

        Detectors print boxes [x1, y1, x2, y2] in each image's own pixels, with score and
        label; classifiers print a label and the class scores."""
        from rich.console import Console
        from rich.table import Table

        from edgeloop.detect import Detector, head_of

        if min_score is not None and not (0.0 <= min_score <= 1.0):
            raise UsageError(f"--min-score must be between 0 and 1, got {min_score}")
        if source is None and not images:
            raise UsageError("give image files, or --source SRC (a video, a folder, a stream URL or a camera)")
        if source is not None and images:
            raise UsageError("give image files or --source, not both")
        if source is None and (every != 1 or max_frames is not None):
            raise UsageError("--every and --max-frames go with --source")
        if every < 1:
            raise UsageError(f"--every must be a whole number of at least 1, got {every}")
        if max_frames is not None and max_frames < 1:
            raise UsageError(f"--max-frames must be a whole number of at least 1, got {max_frames}")
        m = load_model_or_bundle(model)
        try:
            head = head_of(m)
        except EdgeloopError as e:
            raise e.with_where(model)
        if source is not None:
            predict_source(m, head, source, as_json=as_json, draw_dir=draw_dir, every=every,
                           max_frames=max_frames, min_score=min_score)
            return
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
