"""`edgeloop label STORE`: a local page for labelling the samples a capture store holds.

The page (:mod:`edgeloop.label_page.page`, inlined HTML + vanilla JavaScript, no CDN) reads a small
JSON API:

- ``GET /api/samples``: ``{"store", "classes", "total", "labelled", "samples": [...]}``, each sample
  with why it was captured, the model's prediction (``detections`` for a detector's frame, ``top``
  classes for a classifier) and its ``label`` (``null`` until labelled);
- ``GET /api/samples/{id}/image``: a detector's frame as it was uploaded, or a classifier's image
  input rendered as PNG;
- ``POST /api/samples/{id}/label`` with ``{"status": "accepted" | "corrected" | "discarded"}`` and
  ``"boxes": [{"label", "box": [x1, y1, x2, y2]}]`` (detectors, image pixels) or ``"label"``
  (classifiers): stored in the capture store in one SQLite transaction.

Requests whose Host header does not name this server are refused (DNS rebinding), and a POST from
a foreign Origin or without a JSON content type too (cross-site forms), as the serving admin API
does. Every bad request is a 4xx with ``{"error": "..."}``.
"""

from __future__ import annotations

import io
import json
import math
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np

from edgeloop.runtime.capture import CaptureStore, _image_size, class_names, is_encoded_image

MAX_BODY = 1 << 20
TOP_K = 3


class LabelError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _kind(row: Dict[str, Any]) -> str:
    return "detection" if is_encoded_image(row["dtype"]) or row.get("detections") is not None else "classification"


def _picture_shape(shape: Optional[List[int]]) -> Optional[tuple]:
    """(H, W, C, channels_first) when a classifier's input looks like an image: HxW, HxWxC or
    CxHxW with C 1 or 3 (leading 1s dropped); None for vectors and anything else."""
    if not shape:
        return None
    dims = [int(d) for d in shape]
    while len(dims) > 3 and dims[0] == 1:
        dims.pop(0)
    if len(dims) == 2 and min(dims) > 1:
        return dims[0], dims[1], 1, False
    if len(dims) == 3 and dims[0] in (1, 3) and dims[2] not in (1, 3):
        return dims[1], dims[2], dims[0], True
    if len(dims) == 3 and dims[2] in (1, 3) and min(dims[:2]) > 1:
        return dims[0], dims[1], dims[2], False
    return None


def array_png(x: np.ndarray) -> bytes:
    """A classifier's image input as a PNG (min-max scaled to 0-255)."""
    from PIL import Image

    h, w, c, first = _picture_shape(list(x.shape))  # type: ignore[misc]
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape(c, h, w).transpose(1, 2, 0) if first else a.reshape(h, w, c)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    a = np.nan_to_num((a - lo) / (hi - lo) * 255.0 if hi > lo else a * 0.0)
    a = np.clip(a, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a[:, :, 0] if c == 1 else a).save(buf, format="PNG")
    return buf.getvalue()


class LabelSession:
    """The store and what the page needs from it (the class names, the samples as JSON)."""

    def __init__(self, store_path: "str | Path"):
        self.path = Path(store_path)
        # writes only labels: no byte budget of its own (the serving side keeps the budget)
        self.store = CaptureStore(self.path, budget_bytes=2**62)

    def close(self) -> None:
        self.store.close()

    def _model_labels(self) -> Dict[tuple, List[str]]:
        return {(m["name"], m["version"]): m["labels"] for m in self.store.models() if m["labels"]}

    def classes(self, rows: Optional[List[Dict[str, Any]]] = None) -> List[str]:
        """The class names to pick from (:func:`edgeloop.runtime.capture.class_names`)."""
        return class_names(self.store, rows)

    def listing(self) -> Dict[str, Any]:
        rows = list(self.store.rows())
        labels = self.store.labels()
        names = self._model_labels()
        samples = []
        for r in rows:
            kind = _kind(r)
            doc = {"id": r["id"], "kind": kind, "reason": r["reason"], "score": r["score"],
                   "model_name": r["model_name"], "model_version": r["model_version"], "created": r["created"],
                   "predicted": r["predicted"], "confidence": r["confidence"], "margin": r["margin"],
                   "entropy": r["entropy"], "shape": r["shape"], "has_input": r["has_input"],
                   "image": bool(r["has_input"]) and (kind == "detection" or _picture_shape(r["shape"]) is not None),
                   "detections": r["detections"] if kind == "detection" else None, "top": None,
                   "label": _public(labels.get(r["id"]))}
            if r["probabilities"]:
                p = np.asarray(r["probabilities"], dtype=np.float64)
                model_labels = names.get((r["model_name"], r["model_version"]))
                order = np.argsort(-p, kind="stable")[:TOP_K]
                doc["top"] = [{"label": model_labels[i] if model_labels and i < len(model_labels) else str(i),
                               "score": float(p[i])} for i in order]
            samples.append(doc)
        return {"store": str(self.path), "classes": self.classes(rows), "total": len(rows),
                "labelled": sum(1 for r in rows if r["id"] in labels), "samples": samples}

    def _row(self, sample_id: int) -> Dict[str, Any]:
        row = self.store.sample(sample_id)
        if row is None:
            raise LabelError(404, f"no sample {sample_id} in {self.path}")
        return row

    def image(self, sample_id: int) -> tuple[bytes, str]:
        row = self._row(sample_id)
        if row["input"] is None:
            raise LabelError(404, f"sample {sample_id} has no stored input (captured in privacy mode)")
        if is_encoded_image(row["dtype"]):
            return row["input"], row["dtype"] if "/" in row["dtype"] else "application/octet-stream"
        if _picture_shape(list(row["input"].shape)) is None:
            raise LabelError(404, f"sample {sample_id}'s input (shape {list(row['input'].shape)}) is not an image")
        return array_png(row["input"]), "image/png"

    def label(self, sample_id: int, doc: Any) -> Dict[str, Any]:
        if not isinstance(doc, dict):
            raise LabelError(400, "the body must be a JSON object with 'status'")
        status = doc.get("status")
        if status not in ("accepted", "corrected", "discarded"):
            raise LabelError(400, f"'status' must be accepted, corrected or discarded, got {status!r}"[:200])
        row = self._row(sample_id)
        classes = self.classes()
        label, boxes = None, None
        if status != "discarded":
            if _kind(row) == "detection":
                boxes = _check_boxes(doc.get("boxes"), classes, _frame_size(row))
            else:
                label = doc.get("label")
                if not isinstance(label, str) or label not in classes:
                    raise LabelError(400, f"'label' must be one of the classes {classes[:20]}, got {label!r}"[:300])
        self.store.set_label(sample_id, status, label=label, boxes=boxes)
        labels = self.store.labels()
        return {"id": sample_id, "label": _public(labels.get(sample_id)), "labelled": len(labels),
                "total": self.store.count()}


def _public(lab: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return None if lab is None else {"status": lab["status"], "label": lab["label"], "boxes": lab["boxes"]}


def _frame_size(row: Dict[str, Any]) -> Optional[tuple]:
    """(width, height) of a stored frame, read from its header; None without a decodable frame."""
    return None if row["input"] is None else _image_size(row["input"])


def _check_boxes(boxes: Any, classes: List[str], size: Optional[tuple]) -> List[Dict[str, Any]]:
    """Boxes from the page: known classes, four finite numbers, x1 < x2 and y1 < y2 inside the frame
    (a drag may overshoot by a pixel: clipped)."""
    if not isinstance(boxes, list):
        raise LabelError(400, "'boxes' must be a list of {\"label\", \"box\": [x1, y1, x2, y2]}")
    out = []
    for k, b in enumerate(boxes):
        at = f"boxes[{k}]"
        if not isinstance(b, dict) or not isinstance(b.get("label"), str) or not isinstance(b.get("box"), list):
            raise LabelError(400, f"{at}: needs 'label' (a string) and 'box' [x1, y1, x2, y2]")
        if b["label"] not in classes:
            raise LabelError(400, f"{at}: '{b['label'][:60]}' is not one of the classes {classes[:20]}")
        v = b["box"]
        if len(v) != 4 or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                                  for t in v):
            raise LabelError(400, f"{at}: 'box' must be four finite numbers [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (float(t) for t in v)
        if size is not None:
            w, h = size
            if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
                raise LabelError(400, f"{at}: [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {w}x{h} frame")
            x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
        if not (x1 < x2 and y1 < y2):
            raise LabelError(400, f"{at}: needs x1 < x2 and y1 < y2, got [{x1:g}, {y1:g}, {x2:g}, {y2:g}]")
        out.append({"label": b["label"], "box": [round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3)]})
    return out


def create_app(store_path: "str | Path", host: str = "127.0.0.1", port: int = 8090) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from edgeloop.runtime.server import _own_hosts

    from .page import PAGE

    session = LabelSession(store_path)
    config = SimpleNamespace(host=host, port=port)

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status)

    def refusal(request: Request) -> Optional[Any]:
        own = _own_hosts(request.scope.get("server"), config)
        hdr = request.headers.get("host", "").strip().lower()
        if hdr not in own:
            return error(403, f"Host header '{hdr[:100]}' is not this server's address (expected "
                              f"{sorted(own)[0]}); refusing a DNS-rebinding request")
        if request.method == "POST":
            origin = request.headers.get("origin")
            if origin is not None and origin.strip().lower().rstrip("/") not in {f"http://{h}" for h in own}:
                return error(403, f"cross-site request from Origin '{origin[:100]}' refused")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return error(415, f"labels are posted as Content-Type application/json, got '{ctype or '(none)'}'")
        return None

    def sample_id(request: Request) -> int:
        text = request.path_params["sid"]
        try:
            return int(text)
        except ValueError:
            raise LabelError(404, f"'{text[:40]}' is not a sample id") from None

    async def guarded(request: Request, work: Any) -> Response:
        bad = refusal(request)
        if bad is not None:
            return bad
        try:
            return await work()
        except LabelError as e:
            return error(e.status, e.message)

    async def page(request: Request) -> Response:
        async def work() -> Response:
            return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})
        return await guarded(request, work)

    async def samples(request: Request) -> Response:
        async def work() -> Response:
            return JSONResponse(await run_in_threadpool(session.listing))
        return await guarded(request, work)

    async def image(request: Request) -> Response:
        async def work() -> Response:
            data, media = await run_in_threadpool(session.image, sample_id(request))
            return Response(data, media_type=media, headers={"Cache-Control": "no-store"})
        return await guarded(request, work)

    async def label(request: Request) -> Response:
        async def work() -> Response:
            sid = sample_id(request)
            body = await request.body()
            if len(body) > MAX_BODY:
                raise LabelError(413, f"the body is {len(body)} bytes; at most {MAX_BODY}")
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise LabelError(400, f"the body is not JSON ({e})"[:200]) from None
            return JSONResponse(await run_in_threadpool(session.label, sid, doc))
        return await guarded(request, work)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, f"no such page: {request.url.path[:100]}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error(405, f"{request.method} is not allowed on {request.url.path[:100]}")

    routes = [Route("/", page), Route("/api/samples", samples),
              Route("/api/samples/{sid}/image", image), Route("/api/samples/{sid}/label", label, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    app.state.session = session
    return app


def run(store_path: "str | Path", host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve the labelling page until interrupted; a busy port is one line (StartupError)."""
    import uvicorn

    from edgeloop.runtime.server import StartupError

    app = create_app(store_path, host, port)
    try:  # as `serve` does: a busy port or a bad address is one clear line, not a uvicorn log record
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
    except OSError as e:
        app.state.session.close()
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    n = app.state.session.store.count()
    shown = f"[{host}]" if ":" in host else host
    print(f"labelling {store_path} ({n} samples) on http://{shown}:{port}/", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                      server_header=False, lifespan="off")).run()
    finally:
        app.state.session.close()
