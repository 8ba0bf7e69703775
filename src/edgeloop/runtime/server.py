"""The on-device HTTP server: Starlette + uvicorn, loopback by default, no outbound connections.

Endpoints:
  POST /predict          JSON ``{"inputs": [[...], ...]}`` (a batch), ``{"input": [...]}`` (one
                         sample) or a bare array; image models also take an image body
                         (``image/png``, ``image/jpeg``, ...) or a multipart form field ``file``.
  GET  /health           model name, version and capture state.
  GET  /metrics          Prometheus text: request counts by path and status, latency quantiles.
  POST /admin/reload     load the bundle again (or ``{"bundle": "/path"}``), verify its hashes,
                         switch atomically; a failed load keeps the current version.
  POST /admin/rollback   switch back to the previous version.
Admin endpoints answer only loopback clients.  SIGHUP reloads the bundle path given at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from .bundle import BundleError
from .capture import CapturePolicy, CaptureStore, Capturer
from .model import BundleModel, InputError

log = logging.getLogger("edgeloop.runtime")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp", "image/tiff",
               "image/x-portable-graymap", "image/x-portable-anymap")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


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
        self.config = config
        self.model = BundleModel(config.bundle, threads=config.threads, trust=config.trust)
        self.history: List[BundleModel] = []
        self.lock = threading.Lock()
        self.capturer: Optional[Capturer] = None
        if config.capture:
            store = CaptureStore(config.capture, budget_bytes=config.capture_budget_bytes,
                                 privacy=config.privacy)
            self.capturer = Capturer(store, config.policy)

    def reload(self, path: Optional[str] = None) -> BundleModel:
        with self.lock:
            new = BundleModel(path or self.config.bundle, threads=self.config.threads, trust=self.config.trust)
            self.history.append(self.model)
            del self.history[:-self.config.keep_versions]
            self.model = new
            return new

    def rollback(self) -> BundleModel:
        with self.lock:
            if not self.history:
                raise InputError("no previous version to roll back to", status=409)
            self.model = self.history.pop()
            return self.model


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
            batch = _inputs_from_json(body, model)
        elif ctype in IMAGE_TYPES or (ctype == "application/octet-stream" and model.is_image):
            batch = model.decode_image(body)
        elif ctype == "multipart/form-data":
            batch = model.decode_image(await _multipart_file(request, body))
        else:
            kinds = "application/json" + (", an image type or multipart/form-data" if model.is_image else "")
            raise InputError(f"unsupported Content-Type '{ctype or '(none)'}'; send {kinds}", status=415)
        t0 = time.perf_counter()
        result = model.predict(batch)
        metrics.inference.append(time.perf_counter() - t0)
        probs = result.get("probabilities")
        if probs is not None and not np.all(np.isfinite(probs)):
            raise InputError("the model's scores are not finite for this input (values far outside the range "
                             "it was trained on?)")
        doc: Dict[str, Any] = {"model": model.name, "version": model.version,
                               "outputs": {k: _jsonable(v) for k, v in result["outputs"].items()}}
        if "label" in result:
            doc["label"] = [_jsonable(v) for v in result["label"]]
            doc["confidence"] = [round(float(c), 6) for c in result["confidence"]]
        if state.capturer is not None:
            doc["captured"] = state.capturer.consider(model, batch, result)
        return JSONResponse(doc)

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
               "capture": None, **m.signature}
        if state.capturer is not None:
            doc["capture"] = {"store": str(state.capturer.store.path), "privacy": state.capturer.store.privacy,
                              "captured": state.capturer.captured,
                              "used_bytes": state.capturer.store.used_bytes,
                              "budget_bytes": state.capturer.store.budget_bytes}
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
        return PlainTextResponse(metrics.render(extra), media_type="text/plain; version=0.0.4")

    def _admin_allowed(request: Request) -> bool:
        host = request.client.host if request.client else ""
        return host in LOOPBACK

    async def reload(request: Request) -> Response:
        if not _admin_allowed(request):
            return _error(403, "admin endpoints answer loopback clients only")
        body = await _read_body(request, 64 * 1024)
        path = None
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise InputError(f"malformed JSON: {e}", status=400) from None
            path = doc.get("bundle") if isinstance(doc, dict) else None
            if path is not None and not isinstance(path, str):
                raise InputError("'bundle' must be a path string", status=400)
        old = state.model.version
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, state.reload, path)
        except BundleError as e:
            return _error(409, f"reload refused, still serving version {old}: {e}")
        return JSONResponse({"status": "reloaded", "version": new.version, "previous": old,
                             "bundle": str(new.path)})

    async def rollback(request: Request) -> Response:
        if not _admin_allowed(request):
            return _error(403, "admin endpoints answer loopback clients only")
        old = state.model.version
        m = state.rollback()
        return JSONResponse({"status": "rolled back", "version": m.version, "previous": old,
                             "bundle": str(m.path)})

    routes = [Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"]),
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
            metrics.observe(path if path in _KNOWN else "other", status[0], time.perf_counter() - t0)

    timed.state = state  # type: ignore[attr-defined]
    timed.metrics = metrics  # type: ignore[attr-defined]
    return timed


_KNOWN = {"/predict", "/health", "/metrics", "/admin/reload", "/admin/rollback"}


def serve(config: ServerConfig) -> None:
    """Verify the bundle, then run uvicorn until interrupted (SIGHUP reloads the bundle)."""
    import uvicorn

    app = create_app(config)
    state: State = app.state  # type: ignore[attr-defined]

    def on_hup() -> None:
        try:
            m = state.reload()
            log.warning("SIGHUP: now serving %s version %s", m.name, m.version)
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
    _Server(ucfg).run()
