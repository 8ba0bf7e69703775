"""The on-device HTTP server: Starlette + uvicorn, loopback by default, no outbound connections.

Endpoints:
  POST /predict          JSON ``{"inputs": [[...], ...]}`` (a batch), ``{"input": [...]}`` (one
                         sample) or a bare array; image models also take an image body
                         (``image/png``, ``image/jpeg``, ...) or a multipart form field ``file``.
                         A detector bundle (manifest ``head``) answers an image with
                         ``{"model", "version", "detections": [{"box", "score", "label"}]}``, boxes in
                         the image's own pixels (edgeloop_runtime.detect); other bodies are 415.
  GET  /health           model name, version, capture state and onnxruntime's ``providers``.
  GET  /metrics          Prometheus text: request counts by path and status, latency quantiles.
  POST /admin/reload     load the bundle again (or ``{"bundle": "/path"}``, a folder under the
                         bundles folder), verify its hashes, switch atomically; a failed load
                         keeps the current version, reloading the version being served is a no-op.
  POST /admin/rollback   switch back to the previous version.
  /v2/...                the Open Inference Protocol (KServe v2, REST): GET /v2, /v2/health/live,
                         /v2/health/ready, /v2/models/NAME[/ready], POST /v2/models/NAME/infer with
                         typed tensors (BYTES for encoded images); see :mod:`.oip`. Capture and
                         metrics count it as they count /predict.
Admin endpoints answer only loopback clients, and only a request a web page cannot forge: it must
say ``Content-Type: application/json``, carry ``Authorization: Bearer TOKEN`` (a token made at
start and written to a 0600 file), have a ``Host`` that is the server's own address (no DNS
rebinding) and no foreign ``Origin``.  SIGHUP reloads the bundle path given at start.

Decoding, inference and capture run in a worker thread, so /health answers while a slow request
runs; an image above ``max_image_pixels`` is refused (413) from its header, before decoding.  A
capture failure (disk full, read-only or corrupt store) never fails a prediction: it is counted
and /health reports the capture as degraded until a later write succeeds.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from . import oip
from .bundle import BundleError
from .capture import MIN_BUDGET, CaptureError, CapturePolicy, CaptureStore, Capturer
from .model import MAX_IMAGE_PIXELS, BundleModel, InputError

log = logging.getLogger("edgeloop.runtime")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/bmp", "image/gif", "image/webp", "image/tiff",
               "image/x-portable-graymap", "image/x-portable-anymap")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
TOKEN_FILE = "admin-token"


class StartupError(BundleError):
    """The server cannot start (address in use, ...): one line, exit code 2."""


@dataclass
class ServerConfig:
    bundle: str
    trust: Optional[str] = None  # public key file: only bundles signed by it load (at start and on reload)
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 1
    max_body_bytes: int = 1 << 20
    capture: Optional[str] = None
    capture_budget_bytes: int = 100 * 2**20
    privacy: bool = False
    policy: CapturePolicy = field(default_factory=CapturePolicy)
    keep_versions: int = 3
    max_image_pixels: int = MAX_IMAGE_PIXELS
    bundles_dir: Optional[str] = None  # reload paths must be under it; default: the bundle's parent
    admin_token_file: Optional[str] = None  # default: next to the capture store
    admin_token: Optional[str] = None  # default: a new random token at every start


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(config: ServerConfig) -> None:
    """Refuse nonsensical numbers with one line naming the option (StartupError, exit 2)."""
    pol = config.policy
    problems = []
    if not (_whole(config.port) and 0 < config.port < 65536):
        problems.append(f"--port must be between 1 and 65535, got {config.port}")
    if not (_whole(config.threads) and config.threads >= 1):
        problems.append(f"--threads must be a whole number of at least 1, got {config.threads}")
    if not (_whole(config.max_body_bytes) and config.max_body_bytes >= 1):
        problems.append(f"--max-body-bytes must be at least 1, got {config.max_body_bytes}")
    if not (_whole(config.max_image_pixels) and config.max_image_pixels >= 1):
        problems.append(f"--max-image-pixels must be at least 1, got {config.max_image_pixels}")
    if not (_whole(config.capture_budget_bytes) and config.capture_budget_bytes >= MIN_BUDGET):
        problems.append(f"--capture-budget-mb must be a number of at least {MIN_BUDGET / 2**20:g} "
                        f"(64 KiB), got {config.capture_budget_bytes / 2**20:g}")
    for flag, v in [("--confidence-below", pol.confidence_below), ("--margin-below", pol.margin_below),
                    ("--entropy-above", pol.entropy_above), ("--random-rate", pol.random_rate),
                    ("--score-band-low", pol.score_band_low), ("--score-band-high", pol.score_band_high),
                    ("--overlap-iou", pol.overlap_iou)]:
        if v is not None and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):  # NaN fails too
            problems.append(f"{flag} must be between 0 and 1, got {v}")
    lo, hi = pol.score_band_low, pol.score_band_high
    if (lo is None) != (hi is None):
        problems.append("--score-band-low and --score-band-high go together (give both, or 'off' for both)")
    elif isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        problems.append(f"--score-band-low ({lo}) must not be above --score-band-high ({hi})")
    if pol.per_class_quota is not None and not (_whole(pol.per_class_quota) and pol.per_class_quota >= 1):
        problems.append(f"--per-class-quota must be a whole number of at least 1, got {pol.per_class_quota}")
    m = pol.max_per_minute
    if m is not None and not (isinstance(m, (int, float)) and math.isfinite(m) and m >= 0):
        problems.append(f"--max-captures-per-minute must be a finite number of at least 0, got {m}")
    if problems:
        raise StartupError(problems[0])


def _capture_budget_bytes(mb: float) -> int:
    """``--capture-budget-mb`` to bytes (StartupError for NaN or infinity; check_config does the rest)."""
    if not math.isfinite(mb):
        raise StartupError(f"--capture-budget-mb must be a finite number, got {mb}")
    return int(mb * 2**20)


def _write_token(path: Path, token: str) -> None:
    """Write the admin token to ``path`` with mode 0600, atomically (a reader never sees half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise StartupError(f"{path}: cannot write the admin token file ({e.strerror or e}); "
                           "choose another place with --admin-token-file") from None


class Metrics:
    """Counters and a window of recent latencies, rendered in Prometheus text format.

    Written by hand: prometheus_client would be one more device dependency for ~40 lines."""

    WINDOW = 4096

    def __init__(self) -> None:
        self.counts: Dict[Tuple[str, int], int] = {}
        self.latency: Dict[str, Deque[float]] = {}
        self.latency_sum: Dict[str, float] = {}
        self.latency_count: Dict[str, int] = {}
        self.inference: Deque[float] = deque(maxlen=self.WINDOW)
        self.started = time.time()

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.counts[(path, status)] = self.counts.get((path, status), 0) + 1
        self.latency.setdefault(path, deque(maxlen=self.WINDOW)).append(seconds)
        self.latency_sum[path] = self.latency_sum.get(path, 0.0) + seconds
        self.latency_count[path] = self.latency_count.get(path, 0) + 1

    def render(self, extra: Dict[str, float]) -> str:
        lines = ["# HELP edgeloop_requests_total HTTP requests by path and status.",
                 "# TYPE edgeloop_requests_total counter"]
        for (path, status), n in sorted(self.counts.items()):
            lines.append(f'edgeloop_requests_total{{path="{path}",status="{status}"}} {n}')
        lines += ["# HELP edgeloop_request_latency_seconds Request latency (quantiles over the last "
                  f"{self.WINDOW} requests per path).",
                  "# TYPE edgeloop_request_latency_seconds summary"]
        for path, window in sorted(self.latency.items()):
            qs = np.quantile(np.fromiter(window, float), [0.5, 0.9, 0.99]) if window else [0, 0, 0]
            for q, v in zip(("0.5", "0.9", "0.99"), qs):
                lines.append(f'edgeloop_request_latency_seconds{{path="{path}",quantile="{q}"}} {v:.6g}')
            lines.append(f'edgeloop_request_latency_seconds_sum{{path="{path}"}} {self.latency_sum[path]:.6g}')
            lines.append(f'edgeloop_request_latency_seconds_count{{path="{path}"}} {self.latency_count[path]}')
        if self.inference:
            lines += ["# HELP edgeloop_inference_seconds onnxruntime time per request.",
                      "# TYPE edgeloop_inference_seconds summary"]
            qs = np.quantile(np.fromiter(self.inference, float), [0.5, 0.9, 0.99])
            for q, v in zip(("0.5", "0.9", "0.99"), qs):
                lines.append(f'edgeloop_inference_seconds{{quantile="{q}"}} {v:.6g}')
        for name, value in extra.items():
            lines += [f"# TYPE {name} gauge", f"{name} {value:.6g}"]
        return "\n".join(lines) + "\n"


class State:
    """The current model and its predecessors; switching is one reference assignment."""

    def __init__(self, config: ServerConfig):
        check_config(config)
        self.config = config
        self.model = BundleModel(config.bundle, threads=config.threads, trust=config.trust)
        self.first = self.model
        self.history: List[BundleModel] = []
        self.lock = threading.Lock()
        self.bundles_dir = Path(config.bundles_dir or Path(config.bundle).resolve().parent).resolve()
        if not self.bundles_dir.is_dir():
            raise StartupError(f"{self.bundles_dir}: --bundles-dir is not a folder")
        self.capturer: Optional[Capturer] = None
        if config.capture:
            try:
                store = CaptureStore(config.capture, budget_bytes=config.capture_budget_bytes,
                                     privacy=config.privacy)
            except CaptureError as e:
                raise StartupError(f"--capture {e}") from None
            self.capturer = Capturer(store, config.policy)
        self.admin_token = config.admin_token or secrets.token_urlsafe(32)
        self.token_file: Optional[Path] = None
        if config.admin_token_file:
            self.token_file = Path(config.admin_token_file)
        elif config.capture:
            self.token_file = Path(config.capture).parent / TOKEN_FILE
        if self.token_file is not None:
            _write_token(self.token_file, self.admin_token)

    def reload(self, path: Optional[str] = None) -> Tuple[BundleModel, bool]:
        """Load, verify and switch to a bundle; returns (the model now serving, whether it changed).

        Reloading the version being served (same folder, same manifest) changes nothing; the history
        holds each version once, at most ``keep_versions``, and always the one served at start."""
        with self.lock:
            new = BundleModel(path or self.config.bundle, threads=self.config.threads, trust=self.config.trust)
            if _same(new, self.model):
                return self.model, False
            self.history = [m for m in self.history if not _same(m, self.model)] + [self.model]
            while len(self.history) > max(1, self.config.keep_versions):
                oldest = next((i for i, m in enumerate(self.history) if m is not self.first), 0)
                del self.history[oldest]
            self.model = new
            return new, True

    def rollback(self) -> BundleModel:
        with self.lock:
            if not self.history:
                raise InputError("no previous version to roll back to", status=409)
            self.model = self.history.pop()
            return self.model


def _same(a: BundleModel, b: BundleModel) -> bool:
    return a.path.resolve() == b.path.resolve() and a.manifest == b.manifest


def _error(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _reject_constant(name: str) -> Any:
    raise InputError(f"JSON holds {name}; send finite numbers", status=400)


async def _read_body(request: Any, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise InputError(f"body of {int(length)} bytes is above the limit of {limit}", status=413)
        except ValueError:
            raise InputError("bad Content-Length header", status=400) from None
    chunks: List[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"body is above the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _inputs_from_json(body: bytes, model: BundleModel) -> np.ndarray:
    if not body.strip():
        raise InputError("empty body; send JSON such as {\"inputs\": [[...]]}", status=400)
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except InputError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"malformed JSON: {e}", status=400) from None
    if isinstance(doc, dict):
        keys = [k for k in ("inputs", "input", model.input["name"]) if k in doc]
        if not keys:
            raise InputError(f"JSON object needs an 'inputs' (batch) or 'input' (one sample) key; "
                             f"got keys {sorted(doc)[:5]}")
        data = doc[keys[0]]
        if keys[0] == "input":
            arr = model.coerce(data)
            if arr.shape[0] != 1:
                raise InputError("'input' takes one sample; use 'inputs' for a batch")
            return arr
        return model.coerce(data)
    return model.coerce(doc)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f":
            x = np.where(np.isfinite(x), x, None) if not np.all(np.isfinite(x)) else x
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def create_app(config: ServerConfig, state: Optional[State] = None) -> Any:
    """The Starlette application (raises BundleError if the bundle does not verify)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    state = state or State(config)
    metrics = Metrics()

    async def predict(request: Request) -> Response:
        model = state.model  # one read: a concurrent reload never mixes versions in a request
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await _read_body(request, config.max_body_bytes)
        if ctype in ("application/json", "text/json") or ctype.endswith("+json"):
            decode = lambda: _inputs_from_json(body, model)  # noqa: E731
        elif model.is_detector and (ctype in IMAGE_TYPES or ctype in ("application/octet-stream", "multipart/form-data")):
            frame = await _multipart_file(request, body) if ctype == "multipart/form-data" else body
            return JSONResponse(await run_in_threadpool(_detect_doc, model, frame))
        elif ctype in IMAGE_TYPES or (ctype == "application/octet-stream" and model.is_image):
            decode = lambda: model.decode_image(body, max_pixels=config.max_image_pixels)  # noqa: E731
        elif ctype == "multipart/form-data":
            upload = await _multipart_file(request, body)
            decode = lambda: model.decode_image(upload, max_pixels=config.max_image_pixels)  # noqa: E731
        else:
            kinds = "application/json" + (", an image type or multipart/form-data" if model.is_image else "")
            raise InputError(f"unsupported Content-Type '{ctype or '(none)'}'; send {kinds}", status=415)
        # Parsing, decoding, inference and capture are CPU or disk work: a worker thread does them,
        # so the event loop keeps answering /health and other requests meanwhile.
        return JSONResponse(await run_in_threadpool(_answer, model, decode))

    def _classify(model: BundleModel, batch: np.ndarray) -> Tuple[Dict[str, Any], Optional[List[Optional[int]]]]:
        """Inference, the finiteness check and capture for a checked batch (/predict and /v2 infer)."""
        t0 = time.perf_counter()
        result = model.predict(batch)
        metrics.inference.append(time.perf_counter() - t0)
        probs = result.get("probabilities")
        if probs is not None and not np.all(np.isfinite(probs)):
            raise InputError("the model's scores are not finite for this input (values far outside the range "
                             "it was trained on?)")
        captured = state.capturer.consider(model, batch, result) if state.capturer is not None else None
        return result, captured

    def _detect(model: BundleModel, frame: bytes) -> Tuple[List[Dict[str, Any]], Optional[int]]:
        """One encoded frame to boxes in its own pixels (edgeloop_runtime.detect), with capture."""
        batch, box, media = model.detector_input(frame, max_pixels=config.max_image_pixels)
        t0 = time.perf_counter()
        outputs = model.run(batch)
        metrics.inference.append(time.perf_counter() - t0)
        detections = model.detect(outputs, box)
        captured = None
        if state.capturer is not None:
            low = config.policy.score_band_low
            # the best score over every candidate (also those below the head's min_score) decides
            candidates = (model.detect(outputs, box, min_score=low)
                          if low is not None and low < model.head["min_score"] else detections)
            captured = state.capturer.consider_frame(model, batch, frame, media, candidates, detections)
        return detections, captured

    def _tensor_detections(model: BundleModel, outputs: Dict[str, np.ndarray]) -> List[Dict[str, Any]]:
        """Boxes of a detector fed a ready tensor (no image, no letterbox): in the tensor's pixels."""
        from .detect import Letterbox

        tw, th = model.head["input"]["size"]
        return model.detect(outputs, Letterbox(tw, th, 1.0, 1.0, 0.0, 0.0))

    def _box_tensors(dets: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {"boxes": np.asarray([d["box"] for d in dets], np.float32).reshape(-1, 4),
                "scores": np.asarray([d["score"] for d in dets], np.float32),
                "labels": [str(d["label"]) for d in dets]}

    def _detect_doc(model: BundleModel, frame: bytes) -> Dict[str, Any]:
        detections, captured = _detect(model, frame)
        doc: Dict[str, Any] = {"model": model.name, "version": model.version, "detections": detections}
        if state.capturer is not None:
            doc["captured"] = captured
        return doc

    def _answer(model: BundleModel, decode: Any) -> Dict[str, Any]:
        batch = decode()
        result, captured = _classify(model, batch)
        doc: Dict[str, Any] = {"model": model.name, "version": model.version,
                               "outputs": {k: _jsonable(v) for k, v in result["outputs"].items()}}
        if "label" in result:
            doc["label"] = [_jsonable(v) for v in result["label"]]
            doc["confidence"] = [round(float(c), 6) for c in result["confidence"]]
        if model.is_detector and batch.shape[0] == 1:
            doc["detections"] = _tensor_detections(model, result["outputs"])
        if captured is not None:
            doc["captured"] = captured
        return doc

    async def _multipart_file(request: Request, body: bytes) -> bytes:
        # The body was already read under the size limit; let Starlette parse it from memory.
        async def receive() -> Dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        req = Request(request.scope, receive)
        try:
            form = await req.form(max_files=1, max_fields=8)
        except AssertionError:
            raise InputError("multipart upload needs python-multipart on this device", status=415) from None
        except Exception as e:
            raise InputError(f"malformed multipart body: {e}", status=400) from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError("multipart body needs an image in a field named 'file'", status=400)
        return await upload.read()

    async def health(request: Request) -> Response:
        m = state.model
        doc = {"status": "ok", "model": m.name, "version": m.version, "bundle": str(m.path),
               "previous_versions": [h.version for h in state.history],
               "capture": None, "providers": m.providers, **m.signature}
        if m.provider_note:
            doc["providers_note"] = m.provider_note
        if state.capturer is not None:
            cap = state.capturer
            doc["capture"] = {"store": str(cap.store.path), "privacy": cap.store.privacy,
                              "captured": cap.captured, "used_bytes": cap.store.used_bytes,
                              "budget_bytes": cap.store.budget_bytes, **cap.status()}
        return JSONResponse(doc)

    async def metrics_endpoint(request: Request) -> Response:
        extra = {"edgeloop_uptime_seconds": time.time() - metrics.started}
        try:
            extra["edgeloop_model_version"] = float(state.model.version)
        except (TypeError, ValueError):
            pass
        if state.capturer is not None:
            extra["edgeloop_captured_total"] = state.capturer.captured
            extra["edgeloop_capture_rate_limited_total"] = state.capturer.skipped_rate
            extra["edgeloop_capture_store_bytes"] = state.capturer.store.used_bytes
            extra["edgeloop_capture_errors_total"] = state.capturer.errors
            extra["edgeloop_capture_degraded"] = 1.0 if state.capturer.degraded else 0.0
        return PlainTextResponse(metrics.render(extra), media_type="text/plain; version=0.0.4")

    def _admin_refusal(request: Request) -> Optional[Any]:
        """None if an admin request may go on, else the 4xx answer that refuses it."""
        if (request.client.host if request.client else "") not in LOOPBACK:
            return _error(403, "admin endpoints answer loopback clients only")
        own = _own_hosts(request.scope.get("server"), config)
        host = request.headers.get("host", "").strip().lower()
        if host not in own:
            return _error(403, f"Host header '{host[:100]}' is not this server's address "
                               f"(expected {sorted(own)[0]}); refusing a DNS-rebinding request")
        origin = request.headers.get("origin")
        if origin is not None and origin.strip().lower().rstrip("/") not in {f"http://{h}" for h in own}:
            return _error(403, f"cross-site request from Origin '{origin[:100]}' refused")
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 state.admin_token.encode()):
            where = f" (the token is in {state.token_file})" if state.token_file else ""
            return _error(401, f"admin endpoints need 'Authorization: Bearer TOKEN'{where}")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _error(415, f"admin endpoints take Content-Type application/json, got '{ctype or '(none)'}'")
        return None

    async def reload(request: Request) -> Response:
        refusal = _admin_refusal(request)
        if refusal is not None:
            return refusal
        body = await _read_body(request, 64 * 1024)
        path = None
        if body.strip():
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise InputError(f"malformed JSON: {e}", status=400) from None
            path = doc.get("bundle") if isinstance(doc, dict) else None
            if path is not None and not isinstance(path, str):
                raise InputError("'bundle' must be a path string", status=400)
        if path is not None:
            try:
                Path(path).resolve().relative_to(state.bundles_dir)
            except (ValueError, OSError):
                return _error(403, f"reload path {path[:200]} is outside the bundles folder {state.bundles_dir} "
                                   "(--bundles-dir)")
        old = state.model.version
        try:
            new, changed = await run_in_threadpool(state.reload, path)
        except BundleError as e:
            return _error(409, f"reload refused, still serving version {old}: {e}")
        return JSONResponse({"status": "reloaded" if changed else "unchanged", "version": new.version,
                             "previous": old, "bundle": str(new.path)})

    async def rollback(request: Request) -> Response:
        refusal = _admin_refusal(request)
        if refusal is not None:
            return refusal
        old = state.model.version
        m = state.rollback()
        return JSONResponse({"status": "rolled back", "version": m.version, "previous": old,
                             "bundle": str(m.path)})

    # ---------------------------------------------------------------- Open Inference Protocol (KServe v2)
    def _v2_model(request: Request) -> BundleModel:
        model = state.model
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != model.name:
            raise InputError(f"no model '{name[:100]}' here; this server serves '{model.name}'", status=404)
        if version is not None and version != str(model.version):
            raise InputError(f"model '{name}' has no version {version[:20]}; serving version {model.version}",
                             status=404)
        return model

    def _v2_io(model: BundleModel) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        inputs = [{"name": i["name"], "datatype": oip.datatype_of(i["dtype"]), "shape": oip.shape_of(i["shape"])}
                  for i in model.inputs]
        if model.is_image:  # or one BYTES tensor of encoded images (any name), decoded on the device
            inputs.append({"name": "image", "datatype": "BYTES", "shape": [-1]})
        outputs = [{"name": o["name"], "datatype": oip.datatype_of(o["dtype"]), "shape": oip.shape_of(o["shape"])}
                   for o in model.outputs]
        if model.is_detector:
            outputs += [{"name": "boxes", "datatype": "FP32", "shape": [-1, 4]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1]},
                        {"name": "labels", "datatype": "BYTES", "shape": [-1]}]
        elif model.scores_output:
            outputs.append({"name": "predicted_label", "datatype": "BYTES", "shape": [-1]})
        return inputs, outputs

    async def v2_server(request: Request) -> Response:
        return JSONResponse({"name": "edgeloop", "version": str(state.model.manifest.get("edgeloop_version", "")),
                             "extensions": ["binary_tensor_data"]})

    async def v2_live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def v2_model_ready(request: Request) -> Response:
        _v2_model(request)
        return JSONResponse({"name": state.model.name, "ready": True})

    async def v2_metadata(request: Request) -> Response:
        model = _v2_model(request)
        inputs, outputs = _v2_io(model)
        return JSONResponse({"name": model.name, "versions": [str(model.version)], "platform": "onnxruntime_onnx",
                             "inputs": inputs, "outputs": outputs})

    async def v2_infer(request: Request) -> Response:
        model = _v2_model(request)
        body = await _read_body(request, config.max_body_bytes)
        header = request.headers.get("inference-header-content-length")
        return JSONResponse(await run_in_threadpool(_v2_answer, model, body, header))

    def _v2_answer(model: BundleModel, body: bytes, header: Optional[str]) -> Dict[str, Any]:
        doc, inputs = oip.parse_request(body, header)
        if len(inputs) != 1:
            raise InputError(f"this model takes one input tensor, the request has {len(inputs)}", status=400)
        t = inputs[0]
        out: Dict[str, Any] = {}
        captured: Any = None
        if t["datatype"] == "BYTES":
            frames = t["value"]
            if not model.is_image:
                raise InputError("BYTES (encoded images) need an image model; this one takes "
                                 f"{oip.datatype_of(model.input['dtype'])} tensors", status=415)
            if not frames:
                raise InputError("the BYTES input holds no image", status=400)
            if model.is_detector:
                if len(frames) != 1:
                    raise InputError("a detector takes one image per request", status=400)
                dets, captured = _detect(model, frames[0])
                out = _box_tensors(dets)
            else:
                batch = np.concatenate([model.decode_image(f, max_pixels=config.max_image_pixels) for f in frames])
                result, captured = _classify(model, batch)
                out = dict(result["outputs"])
        else:
            batch = model.coerce(t["value"])
            result, captured = _classify(model, batch)
            out = dict(result["outputs"])
            if "label" in result and "predicted_label" not in out:
                out["predicted_label"] = [str(v) for v in result["label"]]
            if model.is_detector and batch.shape[0] == 1:
                out.update(_box_tensors(_tensor_detections(model, out)))
        names = oip.requested(doc, list(out))
        answer: Dict[str, Any] = {"model_name": model.name, "model_version": str(model.version),
                                  "outputs": [oip.tensor(n, out[n]) for n in names]}
        if isinstance(doc.get("id"), str):
            answer["id"] = doc["id"]
        if state.capturer is not None:
            answer["parameters"] = {"captured": json.dumps(captured)}
        return answer

    routes = [Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"]),
              Route("/v2", v2_server, methods=["GET"]),
              Route("/v2/health/live", v2_live, methods=["GET"]),
              Route("/v2/health/ready", v2_ready, methods=["GET"]),
              Route("/v2/models/{name}", v2_metadata, methods=["GET"]),
              Route("/v2/models/{name}/ready", v2_model_ready, methods=["GET"]),
              Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
              Route("/v2/models/{name}/versions/{version}", v2_metadata, methods=["GET"]),
              Route("/v2/models/{name}/versions/{version}/ready", v2_model_ready, methods=["GET"]),
              Route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"]),
              Route("/metrics", metrics_endpoint, methods=["GET"]),
              Route("/admin/reload", reload, methods=["POST"]),
              Route("/admin/rollback", rollback, methods=["POST"])]

    async def input_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputError)
        return _error(exc.status, exc.message)

    app = Starlette(routes=routes, exception_handlers={InputError: input_error})
    app.state.edgeloop = state

    async def timed(scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            metrics.observe(_metric_path(path), status[0], time.perf_counter() - t0)

    timed.state = state  # type: ignore[attr-defined]
    timed.metrics = metrics  # type: ignore[attr-defined]
    return timed


_KNOWN = {"/predict", "/health", "/metrics", "/admin/reload", "/admin/rollback",
          "/v2", "/v2/health/live", "/v2/health/ready"}


def _metric_path(path: str) -> str:
    """The path a request counts under: model names and versions folded into a template."""
    if path in _KNOWN:
        return path
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models":
        tail = parts[4:]
        if len(tail) >= 2 and tail[0] == "versions":
            tail = tail[2:]
        if tail in ([], ["ready"], ["infer"]):
            return "/v2/models/{name}" + "".join("/" + t for t in tail)
    return "other"


def _own_hosts(server: Any, config: ServerConfig) -> set:
    """The Host header values that name this server: the address the connection came in on
    (the ASGI ``server`` pair) and, for a loopback address, the other loopback spellings."""
    host, port = (server[0], server[1]) if server else (config.host, config.port)
    names = {str(host).lower()}
    if names & LOOPBACK or str(host) in ("0.0.0.0", "::"):
        names |= LOOPBACK
    out = set()
    for name in names:
        shown = f"[{name}]" if ":" in name else name
        out.add(f"{shown}:{port}")
        if port == 80:
            out.add(shown)
    return out


def serve(config: ServerConfig) -> None:
    """Verify the bundle, then run uvicorn until interrupted (SIGHUP reloads the bundle)."""
    private = None
    if not (config.admin_token_file or config.capture):
        # no capture store to put it beside: a private folder of its own (mode 0700), removed at exit
        private = tempfile.TemporaryDirectory(prefix="edgeloop-admin-")
        config.admin_token_file = str(Path(private.name) / TOKEN_FILE)
    def on_term(signum: int, frame: Any) -> None:
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler
        # it found: this one turns it into an exit (code 143) that still runs the cleanup below.
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        _run(config)
    finally:
        if private is not None:
            private.cleanup()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(config: ServerConfig) -> None:
    import uvicorn

    app = create_app(config)
    state: State = app.state  # type: ignore[attr-defined]

    def on_hup() -> None:  # loading a model is slow work: off the event loop like the requests
        asyncio.get_running_loop().run_in_executor(None, hup_reload)

    def hup_reload() -> None:
        try:
            m, changed = state.reload()
            log.warning("SIGHUP: %s %s version %s", "now serving" if changed else "unchanged, still serving",
                        m.name, m.version)
        except BundleError as e:
            log.error("SIGHUP reload refused, still serving version %s: %s", state.model.version, e)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
            except (NotImplementedError, AttributeError, RuntimeError):  # no SIGHUP on Windows
                pass

    # Try the address first so that a busy port is one clear line (exit 2), not a uvicorn log record.
    # (Handing uvicorn our own socket instead cost 40 ms a request: Nagle's algorithm stayed on.)
    try:
        family, _, _, _, addr = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
    except OSError as e:
        raise StartupError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None
    ucfg = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                          access_log=False, server_header=False, lifespan="off")
    print(f"serving {state.model.name} version {state.model.version} on http://{config.host}:{config.port}",
          flush=True)
    print(f"admin token written to {state.token_file} (send 'Authorization: Bearer TOKEN' to /admin/*)",
          flush=True)
    _Server(ucfg).run()
