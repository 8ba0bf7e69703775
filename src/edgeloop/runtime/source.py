"""Frames in: a video file, a folder of images, an RTSP/HTTP stream or a camera; a model on each.

:func:`open_source` names what ``SRC`` is and opens it:

- a camera: an index (``0``) or a V4L2 device (``/dev/video0``);
- a stream: an ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http://``, ``https://``, ``udp://``,
  ``tcp://`` or ``srt://`` URL;
- a folder: its images (PNG, JPEG, ...) in natural name order, opened with Pillow exactly as
  ``edgeloop predict IMAGE`` opens them (so a frame is the same frame either way);
- anything else: a video file.

Cameras and streams are *live*: a reader thread decodes frames as they come and keeps only
the latest one, so a model slower than the source drops frames instead of falling further
and further behind (the frames dropped are counted). Files and folders are read in order,
none dropped. Videos, streams and cameras are read with OpenCV (``opencv-python-headless``),
imported only here and only when a source needs it; the rest is numpy.

:func:`run` drives a *step* (``preprocess(rgb) -> (x, ctx)``, ``infer(x) -> outputs``,
``postprocess(outputs, ctx, frame) -> dict``) over the frames and times each stage;
:class:`Stats` gives frames, fps and latency percentiles per stage. :class:`BundleStep` is the
step for a bundle (``python -m edgeloop_runtime BUNDLE --source SRC``), capturing uncertain
frames with the server's own rules.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm")
OPEN_TIMEOUT_S = 10.0  # a stream or camera that gives no frame within this is an error
STAGES = ("decode", "preprocess", "inference", "post-processing", "end-to-end")
WINDOW = 100_000  # latencies kept per stage: percentiles over the last this many frames
INSTALL_CV2 = "reading videos, streams and cameras needs OpenCV: pip install opencv-python-headless"


class SourceError(Exception):
    """A source that cannot be read (missing file, unreadable video, absent camera): one line, exit 2."""

    exit_code = 2


@dataclass
class Frame:
    index: int            # the frame's number in the source, from 0 (frames skipped by ``every`` count)
    time: float           # seconds: the frame's position in a video file, else since the first frame
    rgb: np.ndarray       # [H, W, 3] uint8
    decode: float         # seconds spent reading and decoding it
    start: float          # time.perf_counter() when the frame began (its end-to-end latency counts from here)
    name: Optional[str] = None  # a folder's image file


def _cv2() -> Any:
    # OpenCV and FFmpeg print warnings of their own to stderr (a missing camera, a broken file);
    # the error edgeloop reports is one line, so they are silenced unless the user set a level.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError:
        raise SourceError(INSTALL_CV2) from None
    return cv2


def kind_of(src: str) -> str:
    """``camera``, ``stream``, ``folder`` or ``video``."""
    s = src.strip()
    if (re.fullmatch(r"\d+", s) and not Path(s).exists()) or s.startswith("/dev/"):
        return "camera"
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", s)
    if m:
        if m.group(1).lower() not in LIVE_SCHEMES:
            raise SourceError(f"{src}: unsupported URL scheme '{m.group(1)}' (use {', '.join(LIVE_SCHEMES)})")
        return "stream"
    return "folder" if Path(s).is_dir() else "video"


def _natural(name: str) -> List[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


class Source:
    """Frames, in order, as an iterator; ``close`` frees the device. ``live`` sources drop frames."""

    live = False
    dropped = 0

    def __init__(self, src: str, every: int):
        self.src = src
        self.every = every

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - every source overrides it
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderSource(Source):
    def __init__(self, src: str, every: int, max_pixels: int):
        super().__init__(src, every)
        self.max_pixels = max_pixels
        self.paths = sorted((p for p in Path(src).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                            key=lambda p: _natural(p.name))
        if not self.paths:
            raise SourceError(f"{src}: no images in this folder ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")

    def _open(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        Image.MAX_IMAGE_PIXELS = self.max_pixels
        try:
            with Image.open(path) as img:
                if img.size[0] * img.size[1] > self.max_pixels:
                    raise SourceError(f"{path}: image of {img.size[0]}x{img.size[1]} pixels is above the limit "
                                      f"of {self.max_pixels:,}")
                return np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise SourceError(f"{path}: not a readable image ({type(e).__name__})") from None

    def __iter__(self) -> Iterator[Frame]:
        first = None
        for i, path in enumerate(self.paths):
            if i % self.every:
                continue
            t0 = time.perf_counter()
            first = t0 if first is None else first
            rgb = self._open(path)
            yield Frame(i, t0 - first, rgb, time.perf_counter() - t0, t0, name=str(path))


class VideoSource(Source):
    """A video file, read in order: every frame decoded (an ``every`` skip still has to decode
    the frames the codec predicts from), only the kept ones converted."""

    def __init__(self, src: str, every: int):
        super().__init__(src, every)
        p = Path(src)
        if not p.exists():
            raise SourceError(f"{src}: no such file or folder")
        if not p.is_file():
            raise SourceError(f"{src}: not a regular file")
        if not os.access(p, os.R_OK):
            raise SourceError(f"{src}: permission denied")
        self.cv2 = _cv2()
        self.cap = self.cv2.VideoCapture(str(p))
        if not self.cap.isOpened():
            raise SourceError(f"{src}: not a video OpenCV can read (unknown format or damaged file)")

    def __iter__(self) -> Iterator[Frame]:
        cv2, cap = self.cv2, self.cap
        got = False
        for index, t0, _, rgb in _decoded(cv2, cap, self.every):
            got = True
            yield Frame(index, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, rgb, time.perf_counter() - t0, t0)
        if not got:
            raise SourceError(f"{self.src}: no frame could be decoded (not a video OpenCV can read?)")

    def close(self) -> None:
        self.cap.release()


def _decoded(cv2: Any, cap: Any, every: int, running: Callable[[], bool] = lambda: True
             ) -> Iterator[Tuple[int, float, float, np.ndarray]]:
    """(index, grab started, grab returned, RGB frame) for every ``every``-th frame of an open capture.
    Frames skipped are grabbed (the codec needs them) but never converted."""
    index = -1
    while running():
        t0 = time.perf_counter()
        if not cap.grab():
            return
        t1 = time.perf_counter()
        index += 1
        if index % every:
            continue
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
            return
        yield index, t0, t1, _to_rgb(cv2, bgr)


def _to_rgb(cv2: Any, frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class LiveSource(Source):
    """A camera or a stream: a reader thread decodes frames as they arrive and keeps only the
    latest, so the model always gets the newest frame and latency does not grow.

    A frame's latency counts from the moment the reader had it (``grab`` returned): for a camera,
    time spent waiting for the sensor is not the pipeline's. Its ``decode`` is the retrieve and
    colour conversion after that."""

    live = True

    def __init__(self, src: str, every: int, timeout: float = OPEN_TIMEOUT_S):
        super().__init__(src, every)
        self.cv2 = cv2 = _cv2()
        self.timeout = timeout
        s = src.strip()
        if re.fullmatch(r"\d+", s) and not s.startswith("/dev/"):
            self.cap = cv2.VideoCapture(int(s))
            what = f"camera {s}: cannot open it (no such camera, busy, or no permission)"
        elif s.startswith("/dev/"):
            if not os.path.exists(s):
                raise SourceError(f"{src}: no such camera device (is it plugged in, and passed through to "
                                  "the container?)")
            if not os.access(s, os.R_OK | os.W_OK):
                raise SourceError(f"{src}: permission denied (add the user to the 'video' group)")
            self.cap = cv2.VideoCapture(s, cv2.CAP_V4L2)
            what = f"{src}: cannot open the camera (not a video capture device, or busy)"
        else:
            ms = int(timeout * 1000)
            self.cap = cv2.VideoCapture(s, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                             cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
            what = f"{_redact(src)}: cannot open the stream (unreachable, refused, or not a video)"
        if not self.cap.isOpened():
            raise SourceError(what)
        self._cond = threading.Condition()
        self._latest: Optional[Frame] = None
        self._done = False
        self._stop = False
        self.read = 0
        self._thread = threading.Thread(target=self._reader, name="edgeloop-frames", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        first = None
        try:
            for index, _, t0, rgb in _decoded(self.cv2, self.cap, self.every, lambda: not self._stop):
                first = t0 if first is None else first
                frame = Frame(index, t0 - first, rgb, time.perf_counter() - t0, t0)
                with self._cond:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                    self.read += 1
                    self._cond.notify()
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def __iter__(self) -> Iterator[Frame]:
        got = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._latest is not None or self._done,
                                    timeout=None if got else self.timeout)
                frame, self._latest = self._latest, None
                done = self._done
            if frame is None:
                if got == 0:
                    raise SourceError(f"{_redact(self.src)}: no frame "
                                      + ("came" if done else f"within {self.timeout:g} s"))
                if done:
                    return
                continue
            got += 1
            yield frame

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2 * self.timeout)
        if not self._thread.is_alive():  # never release a capture a blocked reader still uses
            self.cap.release()


def _redact(url: str) -> str:
    """A URL without its password (rtsp://user:secret@host/...), for messages."""
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", url)


def open_source(src: str, every: int = 1, *, max_pixels: int = 50_000_000,
                timeout: float = OPEN_TIMEOUT_S) -> Source:
    """Open ``src`` (see the module docstring); SourceError with one line if it cannot be read."""
    if not isinstance(every, int) or every < 1:
        raise SourceError(f"--every must be a whole number of at least 1, got {every}")
    kind = kind_of(src)
    if kind == "folder":
        return FolderSource(src, every, max_pixels)
    if kind == "video":
        return VideoSource(src, every)
    return LiveSource(src, every, timeout)


# ------------------------------------------------------------------ the loop and its numbers

class Stats:
    """Frames, fps and per-stage latencies (seconds) of one run."""

    def __init__(self) -> None:
        self.samples: Dict[str, Deque[float]] = {s: deque(maxlen=WINDOW) for s in STAGES}
        self.frames = 0
        self.dropped = 0
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self.stopped: Optional[str] = None  # why the run ended early (interrupted, output closed)

    def add(self, frame: Frame, pre: float, infer: float, post: float, end: float) -> None:
        if self.started is None:
            self.started = frame.start
        for stage, v in zip(STAGES, (frame.decode, pre, infer, post, end - frame.start)):
            self.samples[stage].append(v)
        self.frames += 1
        self.ended = end

    @property
    def seconds(self) -> float:
        return 0.0 if self.started is None or self.ended is None else self.ended - self.started

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def percentiles(self) -> Dict[str, Dict[str, float]]:
        """Milliseconds: {stage: {"p50", "p90", "p99"}}."""
        out = {}
        for stage, xs in self.samples.items():
            q = np.quantile(np.fromiter(xs, float), [0.5, 0.9, 0.99]) * 1000 if xs else [float("nan")] * 3
            out[stage] = {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}
        return out

    def lines(self, src: str) -> List[str]:
        head = f"{_redact(src)}: {self.frames} frames in {self.seconds:.2f} s, {self.fps:.1f} fps"
        if self.dropped:
            head += f"; {self.dropped} frames dropped (live source: only the latest frame is kept)"
        if self.stopped:
            head += f" ({self.stopped})"
        rows = [head, f"{'latency (ms)':<16}{'p50':>9}{'p90':>9}{'p99':>9}"]
        for stage, q in self.percentiles().items():
            rows.append(f"{stage:<16}{q['p50']:>9.2f}{q['p90']:>9.2f}{q['p99']:>9.2f}")
        return rows


class OutputClosed(Exception):
    """The reader of the output went away (``| head``): stop, not an error."""


def run(source: Source, step: Any, emit: Callable[[Frame, Dict[str, Any]], None],
        max_frames: Optional[int] = None) -> Stats:
    """Run ``step`` on every frame of ``source`` (until ``max_frames`` frames, the end of the
    source, Ctrl-C or a closed output) and hand each ``{"frame", "time", ...}`` to ``emit``.
    Post-processing is timed with ``emit`` (writing the line, drawing)."""
    stats = Stats()
    try:
        for frame in source:
            t1 = time.perf_counter()
            x, ctx = step.preprocess(frame.rgb)
            t2 = time.perf_counter()
            outputs = step.infer(x)
            t3 = time.perf_counter()
            doc = {"frame": frame.index, "time": round(frame.time, 6), **step.postprocess(outputs, ctx, frame)}
            emit(frame, doc)
            t4 = time.perf_counter()
            stats.add(frame, t2 - t1, t3 - t2, t4 - t3, t4)
            if max_frames is not None and stats.frames >= max_frames:
                break
    except KeyboardInterrupt:
        stats.stopped = "interrupted"
    except OutputClosed:
        stats.stopped = "output closed"
    finally:
        stats.dropped = source.dropped
        source.close()
    return stats


def json_lines(stream: Any) -> Callable[[Frame, Dict[str, Any]], None]:
    """An ``emit`` writing one JSON object a line, flushed, to ``stream``."""
    import json

    def emit(frame: Frame, doc: Dict[str, Any]) -> None:
        try:
            stream.write(json.dumps(doc) + "\n")
            stream.flush()
        except BrokenPipeError:
            try:  # no "Exception ignored" when Python flushes the dead pipe at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            raise OutputClosed() from None

    return emit


# ------------------------------------------------------------------ a bundle on frames

def encode_png(rgb: np.ndarray) -> bytes:
    """A frame as PNG bytes (what a capture stores: lossless, the frame the model saw)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class BundleStep:
    """A verified bundle (``BundleModel``) on frames: detectors answer ``detections``, image
    classifiers ``label`` and ``scores``; with a ``capturer``, uncertain frames are kept as
    ``/predict`` keeps uploads (``captured``: the sample's id, or None)."""

    def __init__(self, model: Any, capturer: Any = None):
        if not model.is_image:
            raise SourceError(f"{model.path}: this bundle takes arrays, not images; --source needs an image "
                              "model (a detector or an image classifier)")
        self.model = model
        self.capturer = capturer

    def preprocess(self, rgb: np.ndarray) -> Tuple[np.ndarray, Any]:
        m = self.model
        if m.is_detector:
            from .detect import preprocess

            x, box = preprocess(rgb, m.head, m.input_dtype)
            return m._batch(x), box
        from PIL import Image

        return m.image_batch(Image.fromarray(rgb)), None

    def infer(self, batch: np.ndarray) -> Any:
        m = self.model
        return (m.run(batch) if m.is_detector else m.predict(batch)), batch

    def postprocess(self, outputs: Any, box: Any, frame: Frame) -> Dict[str, Any]:
        m, cap = self.model, self.capturer
        result, batch = outputs
        doc: Dict[str, Any]
        if m.is_detector:
            detections = m.detect(result, box)
            doc = {"detections": detections}
            if cap is not None:
                low = cap.policy.score_band_low
                # as /predict: the best score over every candidate (also those under min_score) decides
                candidates = (m.detect(result, box, min_score=low)
                              if low is not None and low < m.head["min_score"] else detections)
                doc["captured"] = cap.consider_frame(m, batch, lambda: encode_png(frame.rgb), "image/png",
                                                     candidates, detections)
            return doc
        probs = result.get("probabilities")
        if probs is None or not np.all(np.isfinite(probs)):
            raise SourceError(f"{m.path}: the model gives no finite class scores for frame {frame.index}")
        doc = {"label": result["label"][0], "scores": [round(float(s), 6) for s in probs[0]]}
        if cap is not None:
            doc["captured"] = cap.consider(m, batch, result)[0]
        return doc
