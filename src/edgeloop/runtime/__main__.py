"""``python -m edgeloop_runtime BUNDLE``: serve a bundle with only the runtime's dependencies.

With ``--source SRC`` (a camera, a stream URL, a video file or a folder of images) it serves no
HTTP: it runs the model on the frames (edgeloop_runtime.source) and captures the uncertain ones
into ``--capture`` by the same rules as ``/predict``."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import List, Optional

from .bundle import BundleError
from .capture import CapturePolicy
from .model import MAX_IMAGE_PIXELS
from .server import ServerConfig, _capture_budget_bytes, serve


def _positive_or_none(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "off", "") else float(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # one line, like every other startup error (argparse would print the usage block first)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m edgeloop_runtime",
                description="Serve an edgeloop bundle over HTTP (no outbound connections), or run it on the "
                            "frames of a camera, stream, video or image folder (--source).")
    p.add_argument("bundle", help="bundle directory (with manifest.json and model.onnx)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--capture", default=None, help="SQLite file that stores captured samples (off if unset)")
    p.add_argument("--capture-budget-mb", type=float, default=100.0)
    p.add_argument("--privacy", action="store_true", help="store no raw input, only predictions and reasons")
    p.add_argument("--confidence-below", type=_positive_or_none, default=0.6)
    p.add_argument("--margin-below", type=_positive_or_none, default=0.2)
    p.add_argument("--entropy-above", type=_positive_or_none, default=0.6)
    p.add_argument("--random-rate", type=float, default=0.01)
    p.add_argument("--per-class-quota", type=int, default=None)
    p.add_argument("--max-captures-per-minute", type=_positive_or_none, default=120.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--score-band-low", type=_positive_or_none, default=0.3,
                   help="detectors: capture a frame whose best score is at least this ... (default 0.3; 'off' disables)")
    p.add_argument("--score-band-high", type=_positive_or_none, default=0.6,
                   help="... and at most this (default 0.6; 'off' disables)")
    p.add_argument("--overlap-iou", type=_positive_or_none, default=0.5,
                   help="detectors: capture a frame where boxes of different classes overlap by more than this IoU "
                        "(default 0.5; 'off' disables)")
    p.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                   help=f"refuse (413) uploaded images with more pixels, before decoding (default {MAX_IMAGE_PIXELS})")
    p.add_argument("--bundles-dir", default=None,
                   help="POST /admin/reload takes only bundles under this folder (default: the bundle's parent)")
    p.add_argument("--admin-token-file", default=None,
                   help="where to write the admin bearer token, mode 0600 (default: next to the capture store)")
    p.add_argument("--trust", default=None, metavar="KEY.pub",
                   help="serve only bundles signed by this Ed25519 public key (at start, /admin/reload and SIGHUP)")
    f = p.add_argument_group("frames instead of HTTP (needs opencv-python-headless, except for image folders)")
    f.add_argument("--source", default=None, metavar="SRC",
                   help="run the model on frames, no HTTP: a camera (/dev/video0 or an index), an rtsp:// or "
                        "http:// stream, a video file or a folder of images")
    f.add_argument("--json", action="store_true",
                   help="print one JSON object per frame: {frame, time, detections | label and scores, captured}")
    f.add_argument("--every", type=int, default=1, metavar="N", help="process every Nth frame of the source (default 1)")
    f.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N processed frames")
    return p


def config_from_args(a: argparse.Namespace) -> ServerConfig:
    policy = CapturePolicy(confidence_below=a.confidence_below, margin_below=a.margin_below,
                           entropy_above=a.entropy_above, random_rate=a.random_rate,
                           per_class_quota=a.per_class_quota, max_per_minute=a.max_captures_per_minute,
                           seed=a.seed, score_band_low=a.score_band_low, score_band_high=a.score_band_high,
                           overlap_iou=a.overlap_iou)
    return ServerConfig(bundle=a.bundle, host=a.host, port=a.port, threads=a.threads,
                        max_body_bytes=a.max_body_bytes, capture=a.capture,
                        capture_budget_bytes=_capture_budget_bytes(a.capture_budget_mb), privacy=a.privacy,
                        policy=policy, max_image_pixels=a.max_image_pixels, bundles_dir=a.bundles_dir,
                        admin_token_file=a.admin_token_file, trust=a.trust)


def run_source(a: argparse.Namespace) -> int:
    """The --source mode: frames through the bundle, uncertain ones captured; the numbers on stderr."""
    import signal

    from .capture import CaptureError, CaptureStore, Capturer
    from .model import BundleModel
    from .server import StartupError, check_config
    from .source import BundleStep, SourceError, json_lines, open_source, run

    if a.every < 1:
        raise StartupError(f"--every must be a whole number of at least 1, got {a.every}")
    if a.max_frames is not None and a.max_frames < 1:
        raise StartupError(f"--max-frames must be a whole number of at least 1, got {a.max_frames}")
    config = config_from_args(a)
    check_config(config)
    model = BundleModel(config.bundle, threads=config.threads, trust=config.trust)
    capturer = None
    if config.capture:
        try:
            store = CaptureStore(config.capture, budget_bytes=config.capture_budget_bytes, privacy=config.privacy)
        except CaptureError as e:
            raise StartupError(f"--capture {e}") from None
        capturer = Capturer(store, config.policy)
    try:
        step = BundleStep(model, capturer)
        source = open_source(a.source, a.every, max_pixels=a.max_image_pixels)
    except SourceError as e:
        raise StartupError(str(e)) from None

    def on_term(signum: int, frame: object) -> None:  # docker stop: end like Ctrl-C, with the numbers
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    emit = json_lines(sys.stdout) if a.json else (lambda frame, doc: None)
    try:
        stats = run(source, step, emit, a.max_frames)
    except SourceError as e:
        raise StartupError(str(e)) from None
    finally:
        if capturer is not None:
            capturer.store.close()
    for line in stats.lines(a.source):
        print(line, file=sys.stderr)
    if capturer is not None:
        print(f"captured {capturer.captured} frames into {config.capture}"
              + (f" ({capturer.errors} capture errors: {capturer.degraded})" if capturer.errors else ""),
              file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.source is not None:
            sys.exit(run_source(args))
        serve(config_from_args(args))
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
