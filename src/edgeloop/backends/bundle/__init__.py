"""The Linux-board backend: a deployable bundle folder.

``build_bundle(model, out, target)`` writes, atomically:

- ``model.onnx``;
- ``manifest.json``: name, version, creation time, edgeloop version, target, input/output spec
  (names, dtypes, shapes), preprocessing, labels, kept features, provenance (source file and
  format, shrink recipe), the hash algorithm (``"hash": "sha256"``) and the hash of every other
  file (all of them: the runtime refuses a file the manifest does not list);
- ``manifest.sig`` with ``--sign KEY``: the Ed25519 signature of ``manifest.json``'s bytes, which
  ``serve --trust KEY.pub`` checks (see :mod:`.signing` and :mod:`edgeloop.runtime.bundle`);
- ``requirements.txt``: the runtime's needs only (onnxruntime, numpy, starlette, uvicorn; Pillow
  and python-multipart for image models; cryptography for a signed bundle);
- ``Dockerfile`` for the board, ``docker-compose.yml`` mounting the capture store, ``.dockerignore``
  (the captures stay out of the image), ``README.md``;
- ``edgeloop_runtime/``: a copy of :mod:`edgeloop.runtime`, which imports nothing but those
  requirements, so ``python -m edgeloop_runtime .`` serves the bundle without edgeloop installed
  (chosen over ``pip install edgeloop`` on the device: edgeloop pulls onnx, typer and rich, and on a
  Jetson each extra wheel is a fight);
- ``source/<file>``: the trainable source model (.skops/.joblib/.pkl/.pt2) when known, for ``improve``;
  ``provenance.source_needs_trust`` says whether it is a pickle (loading it runs code from the file,
  so ``improve`` asks for ``--trust-pickle`` again) and ``provenance.source_file_format`` its format.


The folder is owned through edgeloop's output marker (:mod:`edgeloop.fsutil`): exporting again
over it replaces the files the previous export wrote and keeps the rest (``captures/`` above all).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from edgeloop.errors import EdgeloopError, UsageError

from .targets import Packaging, packaging_for

SOURCE_SUFFIXES = (".skops", ".joblib", ".pkl", ".pickle", ".pt2")
RUNTIME_DIR = "edgeloop_runtime"


# --------------------------------------------------------------------------------------------
# manifest pieces
# --------------------------------------------------------------------------------------------
def _value_spec(vi: onnx.ValueInfoProto) -> dict:
    from edgeloop.graph import tensor_shape

    t = vi.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
    except Exception:
        dtype = "unknown"
    shape = [d if isinstance(d, int) and d > 0 else None for d in tensor_shape(vi)]
    return {"name": vi.name, "dtype": dtype, "shape": shape}


def _graph_inputs(model: onnx.ModelProto) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def default_preprocessing(inputs: list[dict]) -> dict:
    """Rank-4 float inputs are images: NCHW when dim 1 is 1 or 3 channels, NHWC otherwise;
    pixels scaled by 1/255 (override with the model's ``preprocessing`` metadata)."""
    if len(inputs) == 1 and len(inputs[0]["shape"]) == 4 and inputs[0]["dtype"].startswith("float"):
        s = inputs[0]["shape"]
        nchw = s[1] in (1, 3)
        c, h, w = (s[1], s[2], s[3]) if nchw else (s[3], s[1], s[2])
        if all(isinstance(v, int) for v in (c, h, w)) and c in (1, 3):  # an image decodes to grey or RGB
            return {"type": "image", "layout": "NCHW" if nchw else "NHWC", "channels": c, "height": h,
                    "width": w, "scale": 1.0 / 255.0, "mean": [0.0] * c, "std": [1.0] * c,
                    "resize": "bilinear"}
    return {"type": "none"}


def _postprocess(model: onnx.ModelProto, meta: dict, outputs: list[dict]) -> dict:
    names = [o["name"] for o in outputs]
    if "probabilities" in names:
        return {"scores": "probabilities", "scores_kind": "probabilities",
                "label": "label" if "label" in names else None}
    task = meta.get("task")
    if task == "regression":
        return {"scores": None, "scores_kind": None, "label": None}
    floats = [o for o in outputs if o["dtype"].startswith("float") and len(o["shape"]) == 2]
    if floats and (task == "classification" or meta.get("labels") or len(outputs) == 1):
        last = model.graph.node[-1].op_type if len(model.graph.node) else ""
        kind = "probabilities" if last == "Softmax" else "logits"
        return {"scores": floats[0]["name"], "scores_kind": kind, "label": None}
    return {"scores": None, "scores_kind": None, "label": None}


def fit_runtime(model: onnx.ModelProto, pack: Packaging) -> tuple[onnx.ModelProto, Optional[str]]:
    """Convert the graph down to the opset/IR version the board's onnxruntime build reads.

    Checked against the original with onnxruntime on random input; a graph that cannot be
    converted is refused here rather than failing on the device."""
    if pack.max_opset is None:
        return model, None
    seen: set = set()
    for imp in list(model.opset_import):  # some converters list a domain twice
        if imp.domain in seen:
            model.opset_import.remove(imp)
        seen.add(imp.domain)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset <= pack.max_opset and model.ir_version <= (pack.max_ir or model.ir_version):
        return model, None
    note = f"converted from opset {opset} (IR {model.ir_version}) to opset {pack.max_opset} (IR {pack.max_ir})"
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, pack.max_opset) if opset > pack.max_opset else model
        converted.ir_version = min(converted.ir_version, pack.max_ir or converted.ir_version)
        onnx.checker.check_model(converted)
        _same_outputs(model, converted)
    except EdgeloopError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"the model needs ONNX opset {opset}, the {pack.ort_package} build for this board "
                         f"runs opset {pack.max_opset} at most, and converting failed: {first[:200]}") from None
    return converted, note


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    from edgeloop.graph import run

    spec = _value_spec(_graph_inputs(a)[0])
    shape = [d if isinstance(d, int) else 3 for d in spec["shape"]]
    x = np.random.default_rng(0).random(shape).astype(np.dtype(spec["dtype"]))
    for ya, yb in zip(run(a, x), run(b, x)):
        if not np.allclose(np.asarray(ya, dtype=np.float64), np.asarray(yb, dtype=np.float64), rtol=1e-5, atol=1e-6):
            raise EdgeloopError("the opset conversion changed the model's outputs")


def _detection_head(model: onnx.ModelProto) -> Optional[dict]:
    """The detector's head (attached with `convert --head`, or an Ultralytics export's), or None."""
    from edgeloop.detect import head_of, fit_head

    head = head_of(model)
    return None if head is None else fit_head(model, head, where="head")


def _installed(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise EdgeloopError(f"cannot pin {dist}: it is not installed on this machine") from None


def requirements(pack: Packaging, image: bool, signed: bool = False) -> tuple[str, list[str]]:
    """requirements.txt text and the pinned lines (the runtime's needs only)."""
    names = (["numpy", "starlette", "uvicorn"] + (["pillow", "python-multipart"] if image else [])
             + (["cryptography"] if signed else []))  # --trust checks the Ed25519 signature
    pins = [f"{pack.ort_package}=={pack.ort_version or _installed(pack.ort_package)}"]
    pins += [f"{n}=={pack.fixed_pins.get(n) or _installed(n)}" for n in names]
    head = [f"# Runtime needs of this bundle only (Python {pack.python}): no torch, no scikit-learn, no onnx."]
    if pack.extra_index_url:
        head.append(f"--extra-index-url {pack.extra_index_url}")
    if pack.ort_wheel:
        head.append(f"# {pack.ort_package} is installed from NVIDIA's wheel ({pack.ort_wheel}); see README.md")
    return "\n".join(head + pins) + "\n", pins


def _dockerfile(pack: Packaging, target: Any) -> str:
    cmd = ('CMD ["python", "-m", "edgeloop_runtime", "/app", "--host", "0.0.0.0", "--port", "8080", '
           '"--capture", "/data/captures.db"]')
    health = ('HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", '
              '"import urllib.request; urllib.request.urlopen(\'http://127.0.0.1:8080/health\', timeout=4)"]')
    tail = [
        "COPY . /app",
        "RUN useradd --system --uid 10001 --no-create-home edgeloop \\",
        "    && mkdir -p /data && chown edgeloop /data",
        "USER 10001",
        "VOLUME /data",
        "EXPOSE 8080",
        health,
        cmd,
    ]
    env = "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1"
    if pack.family != "jetson":
        return "\n".join([
            f"# {target.name}: arm64 (aarch64) image; build on the board, or elsewhere with",
            "#   docker buildx build --platform linux/arm64 -t edgeloop-model .",
            f"FROM {pack.base_image}",
            env,
            "WORKDIR /app",
            "COPY requirements.txt /app/requirements.txt",
            "RUN pip install --no-cache-dir -r /app/requirements.txt",
            *tail,
        ]) + "\n"
    py = f"python{pack.python}"
    lines = [
        f"# {target.name}: NVIDIA L4T {pack.l4t} base = JetPack {pack.jetpack}; run with the NVIDIA",
        "# container runtime (docker-compose.yml sets runtime: nvidia) so CUDA is visible.",
        f"# onnxruntime: {pack.ort_note}",
        f"FROM {pack.base_image}",
        env + " PATH=/opt/venv/bin:$PATH",
        "WORKDIR /app",
        "# hadolint ignore=DL3008",
        "RUN apt-get update \\",
        f"    && apt-get install -y --no-install-recommends {py} {py}-venv {py}-dev ca-certificates"
        + "".join(f" {p}" for p in pack.apt_packages) + " \\",
        "    && rm -rf /var/lib/apt/lists/* \\",
        f"    && {py} -m venv /opt/venv",
    ]
    if pack.ort_wheel:
        lines += [f"COPY {pack.ort_wheel} /tmp/{pack.ort_wheel}",
                  f"RUN pip install --no-cache-dir /tmp/{pack.ort_wheel} && rm /tmp/{pack.ort_wheel}"]
    lines += ["COPY requirements.txt /app/requirements.txt",
              "RUN pip install --no-cache-dir -r /app/requirements.txt"]
    return "\n".join(lines + tail) + "\n"


def _compose(pack: Packaging, name: str, version: int, signed: bool = False, image: bool = False) -> str:
    lines = [
        "services:",
        "  model:",
        "    build: .",
        f"    image: edgeloop/{_slug(name)}:{version}",
        "    restart: unless-stopped",
        "    ports:",
        '      - "127.0.0.1:8080:8080"   # loopback only; change the address to expose it',
        "    volumes:",
        "      # the capture store (captures.db, SQLite WAL) lives outside the container",
        "      - ./captures:/data",
    ]
    if signed:  # the trusted public key comes from outside the bundle: a key inside it would prove nothing
        lines += ['      - "${EDGELOOP_TRUST_KEY:?set EDGELOOP_TRUST_KEY to the public key file, KEY.pub}:/trust/key.pub:ro"',
                  '    command: ["python", "-m", "edgeloop_runtime", "/app", "--host", "0.0.0.0", "--port", "8080", '
                  '"--capture", "/data/captures.db", "--trust", "/trust/key.pub"]']
    if pack.gpu:
        lines.append("    runtime: nvidia")
    if image:  # the frames mode: a camera on the device, no HTTP client (README.md, "Camera or video")
        trust = ', "--trust", "/trust/key.pub"' if signed else ""
        lines += ["    # A camera instead of HTTP: add opencv-python-headless to requirements.txt, then uncomment",
                  "    # devices:",
                  "    #   - /dev/video0:/dev/video0",
                  '    # group_add: ["video"]   # the container user may open the camera',
                  '    # command: ["python", "-m", "edgeloop_runtime", "/app", "--source", "/dev/video0", '
                  f'"--capture", "/data/captures.db"{trust}]']
    return "\n".join(lines) + "\n"


def _readme(manifest: dict, pack: Packaging) -> str:
    inp = manifest["inputs"][0]
    shape = "x".join("N" if d is None else str(d) for d in inp["shape"])
    detector = manifest["preprocessing"].get("type") == "detection"
    image = manifest["preprocessing"].get("type") == "image" or detector
    lines = [
        f"# {manifest['name']} v{manifest['version']} for {manifest['target']['name']}",
        "",
        f"Exported by edgeloop {manifest['edgeloop_version']} on {manifest['created']}.",
        f"Input `{inp['name']}`: {inp['dtype']} [{shape}]"
        + (f"; labels: {', '.join(map(str, manifest['labels']))}." if manifest.get("labels") else "."),
        "",
        "## Run with Docker",
        "",
        "    mkdir -p captures && sudo chown 10001 captures",
        "    docker compose up -d --build",
        "    curl -s localhost:8080/health",
        "",
        f"onnxruntime: {pack.ort_note}",
        "",
        f"Image size: the base image `{pack.base_image}` is {pack.base_image_size or 'listed in its registry'};",
        "the image adds the packages of requirements.txt and this folder (`docker images` shows the total)."
        + (" /health lists the onnxruntime execution providers in use (`providers`): TensorRT and CUDA when"
           " the GPU is visible, else CPU with a note saying so." if pack.gpu else ""),
        "",
        "## Run without Docker",
        "",
        f"    python{pack.python} -m venv ../edgeloop-venv && ../edgeloop-venv/bin/pip install -r requirements.txt",
        "    ../edgeloop-venv/bin/python -m edgeloop_runtime . --port 8080 --capture captures/captures.db"
        + (" --trust /path/to/KEY.pub" if manifest.get("signed") else ""),
        "",
        "The server checks every file's SHA-256 against manifest.json at start and refuses a changed or",
        "missing file, and any file the manifest does not list (keep the venv and your own files outside",
        "this folder; captures/ is the runtime's). It listens on 127.0.0.1 by default and opens no",
        "outbound connection.",
        "",
    ]
    if manifest.get("signed"):
        lines += [
            f"This bundle is signed (manifest.sig, Ed25519 key {manifest['signed']['key_fingerprint']}). Start it",
            "with `--trust KEY.pub` (the public key, kept on the device outside this folder) and it refuses",
            "an unsigned bundle or one whose signature does not verify, at start and on every reload. With",
            "Docker: `EDGELOOP_TRUST_KEY=/path/to/KEY.pub docker compose up -d --build`.",
            "",
        ]
    lines += [
        "## Use",
        "",
        "    curl -s localhost:8080/predict -H 'Content-Type: application/json' \\",
        "         -d '{\"inputs\": [[...]]}'     # a batch; {\"input\": [...]} for one sample",
    ]
    if image:
        lines += ["    curl -s localhost:8080/predict -H 'Content-Type: image/png' --data-binary @photo.png"]
    if detector:
        lines += ["    # -> {\"model\", \"version\", \"detections\": [{\"box\": [x1, y1, x2, y2], \"score\", \"label\"}]}",
                  "    curl -s localhost:8080/predict -F file=@photo.jpg          # multipart works too"]
    lines += ["    curl -s localhost:8080/v2/models/" + manifest["name"] + "      # Open Inference Protocol (KServe v2)"]
    lines += [
        "    curl -s localhost:8080/metrics          # Prometheus text",
        "",
    ]
    if detector:
        size = manifest["head"]["input"]["size"]
        lines += [f"Images are letterboxed to {size[0]}x{size[1]} as manifest.json's `head` says; boxes come back in",
                  "the uploaded image's own pixels, decoded by edgeloop_runtime/detect.py (numpy only).", ""]
    elif image:
        lines += [f"Images are converted, resized to {manifest['preprocessing']['width']}x"
                  f"{manifest['preprocessing']['height']} and scaled as manifest.json's `preprocessing` says.", ""]
    if image:
        lines += [
            "## Camera or video (no HTTP)",
            "",
            "    pip install opencv-python-headless    # reads cameras, streams and videos; not in requirements.txt",
            "    python -m edgeloop_runtime . --source /dev/video0 --capture captures/captures.db",
            "    python -m edgeloop_runtime . --source rtsp://camera.local/stream --json   # a JSON line per frame",
            "",
            "`--source` takes a camera (`/dev/video0` or an index), an rtsp:// or http:// stream, a video file or",
            "a folder of images (folders need no OpenCV). Cameras and streams keep only the latest frame, so",
            "latency does not grow; uncertain frames are captured as for `/predict`. `--every N` and",
            "`--max-frames N` thin and bound the run; frames, fps and latency percentiles go to stderr at the",
            "end (Ctrl-C or `docker compose stop`). docker-compose.yml shows how to pass the camera through.",
            "",
        ]
    lines += [
        "Uncertain inputs are kept in captures/captures.db (`--privacy` keeps no raw input).",
        "Export them for labelling with `edgeloop samples export captures/captures.db -o to-label/`,",
        "retrain with `edgeloop improve --bundle . --data to-label/ -o ../v2`, then switch versions",
        "without downtime: `curl -X POST localhost:8080/admin/reload -H \"Authorization: Bearer $(cat captures/admin-token)\"",
        "-H 'Content-Type: application/json' -d '{\"bundle\": \"../v2\"}'` (the server writes that token at start;",
        "bundles must be in this bundle's parent folder, or `--bundles-dir`), or SIGHUP to reload this",
        "folder; `POST /admin/rollback` (same headers) returns to the previous version.",
        "Admin endpoints answer loopback clients only: in Docker, send SIGHUP",
        "(`docker compose kill -s HUP model`) after replacing the bundle mounted at /app, or rebuild.",
        "",
    ]
    return "\n".join(lines)


def _slug(name: str) -> str:
    s = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return s or "model"


def _runtime_source() -> Path:
    import edgeloop.runtime as rt

    return Path(rt.__file__).parent


def find_source(model_path: Optional[str], meta: dict) -> Optional[Path]:
    """The trainable source file: the model file itself, or the file its metadata names."""
    from edgeloop.graph import resolve_source

    if isinstance(model_path, str) and model_path.lower().endswith(SOURCE_SUFFIXES) and Path(model_path).is_file():
        return Path(model_path)
    recorded = resolve_source(model_path, meta)
    return Path(recorded) if recorded and recorded.lower().endswith(SOURCE_SUFFIXES) else None


def _source_trust(src: Optional[Path]) -> dict:
    """``source_file_format`` (skops | pickle | pt2) and ``source_needs_trust`` for the manifest."""
    if src is None:
        return {"source_file_format": None, "source_needs_trust": None}
    from edgeloop.frontends.sklearn import estimator_file_format

    fmt = "pt2" if src.suffix.lower() == ".pt2" else estimator_file_format(src)
    return {"source_file_format": fmt, "source_needs_trust": fmt == "pickle"}


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def write_atomically(out: Path, fill: Any, kind: str = "bundle") -> list[str]:
    """Build the folder with ``fill(tmp)`` beside ``out``, then swap it in (see edgeloop.fsutil.staged_dir).

    An existing ``out`` must be missing, empty or an earlier output of this ``kind`` (by its marker);
    returns the entries of ``out`` that edgeloop did not write, which are kept."""
    from edgeloop.fsutil import staged_dir

    kept: list[str] = []
    with staged_dir(out, kind=kind, kept=kept) as tmp:
        fill(tmp)
    return kept


def build_bundle(model: onnx.ModelProto, out: "str | os.PathLike[str]", target: Any, *,
                 name: Optional[str] = None, version: int = 1, source_path: Optional[str] = None,
                 preprocessing: Optional[dict] = None, provenance: Optional[dict] = None,
                 verify: bool = False, sign: "str | os.PathLike[str] | None" = None,
                 kept: Optional[list] = None) -> dict:
    """Write a bundle for ``target`` (a catalogue Target or its id); return the manifest.

    ``sign``: the Ed25519 private key (``edgeloop keys create``) that signs the manifest into
    ``manifest.sig``.  ``kept``, when given, receives the entries of an earlier bundle at ``out``
    that edgeloop did not write (kept in place)."""
    from edgeloop import __version__
    from edgeloop.graph import get_metadata
    from edgeloop.runtime.bundle import (FORMAT, HASH, MANIFEST, MODEL, SIGNATURE, UNLISTED, BundleError,
                                         hash_tree, key_fingerprint, validate_manifest)

    if isinstance(target, str):
        from edgeloop.hardware import get_target

        target = get_target(target)
    if target.kind != "linux":
        raise UsageError(f"target '{target.id}' is not a Linux board; bundles are for Linux boards")
    pack = packaging_for(target.id)
    private_key = None
    if sign is not None:  # read the key before any work: a wrong path fails at once
        from .signing import load_private_key

        private_key = load_private_key(sign)
    meta = get_metadata(model)
    model, conversion = fit_runtime(model, pack)
    inputs = [_value_spec(v) for v in _graph_inputs(model)]
    outputs = [_value_spec(v) for v in model.graph.output]
    if len(inputs) != 1:
        raise UsageError(f"the bundle runtime serves single-input models; this model has {len(inputs)} inputs")
    head = _detection_head(model)
    if head is not None:  # the runtime letterboxes and decodes as the head says
        pre = {"type": "detection"}
    else:
        pre = preprocessing or meta.get("preprocessing") or default_preprocessing(inputs)
    image = pre.get("type") in ("image", "detection")
    src = find_source(source_path, meta)
    name = name or meta.get("name") or (Path(source_path).stem if source_path else "model")
    req_text, pins = requirements(pack, image, signed=private_key is not None)
    prov = {"source": meta.get("source", source_path), "source_format": meta.get("source_format"),
            "source_file": f"source/{src.name}" if src else None, **_source_trust(src),
            "recipe": meta.get("recipe"), "estimator": meta.get("estimator")}
    prov.update(provenance or {})
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "version": int(version),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "edgeloop_version": __version__,
        "target": {"id": target.id, "name": target.name, "arch": target.arch, "family": pack.family,
                   "python": pack.python, "base_image": pack.base_image, "jetpack": pack.jetpack,
                   "l4t": pack.l4t, "onnxruntime": pack.ort_package},
        "task": "detection" if head is not None else meta.get("task"),
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": pre,
        "postprocess": ({"scores": None, "scores_kind": None, "label": None} if head is not None
                        else _postprocess(model, meta, outputs)),
        "labels": head["labels"] if head is not None else meta.get("labels"),
        "kept_features": meta.get("kept_features"),
        "n_features_original": meta.get("n_features_original"),
        "provenance": prov,
        "requirements": pins,
        "onnx": {"ir_version": model.ir_version,
                 "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                 "conversion": conversion},
        "signed": ({"algorithm": "ed25519", "file": SIGNATURE,
                    "key_fingerprint": key_fingerprint(private_key.public_key())} if private_key else None),
        # runtime-owned state (and the Jetson wheel the user downloads) that the manifest does not list
        "unlisted_allowed": list(UNLISTED) + ([pack.ort_wheel] if pack.ort_wheel else []),
        "hash": HASH,
        "files": {},
    }
    if head is not None:
        manifest["head"] = head

    def fill(tmp: Path) -> None:
        (tmp / MODEL).write_bytes(model.SerializeToString())
        (tmp / "requirements.txt").write_text(req_text)
        (tmp / "Dockerfile").write_text(_dockerfile(pack, target))
        (tmp / "docker-compose.yml").write_text(_compose(pack, name, version, signed=private_key is not None,
                                                             image=image))
        (tmp / ".dockerignore").write_text("# the capture store stays on the device, never in an image layer\n"
                                           "captures/\n")
        (tmp / "README.md").write_text(_readme(manifest, pack))
        (tmp / RUNTIME_DIR).mkdir()
        for f in sorted(_runtime_source().glob("*.py")):
            shutil.copyfile(f, tmp / RUNTIME_DIR / f.name)
        if src is not None:
            (tmp / "source").mkdir()
            shutil.copyfile(src, tmp / "source" / src.name)
        manifest["files"] = hash_tree(tmp, HASH, tuple(manifest["unlisted_allowed"]))
        try:  # what the runtime would refuse at start is refused here, naming the field
            validate_manifest(manifest, MANIFEST)
        except BundleError as e:
            raise EdgeloopError(f"the bundle would not load: {e}") from None
        data = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
        (tmp / MANIFEST).write_bytes(data)
        if private_key is not None:
            from .signing import signature_document

            (tmp / SIGNATURE).write_bytes(signature_document(private_key, data))
        if verify:
            verify_loads(tmp, model, private_key.public_key() if private_key is not None else None)

    found = write_atomically(Path(out), fill)
    if kept is not None:
        kept += found
    return manifest


def verify_loads(bundle: Path, model: onnx.ModelProto, public_key: Any = None) -> None:
    """--verify for bundles: the runtime loads it (signature and hashes check) and agrees with the model."""
    from edgeloop.graph import run
    from edgeloop.runtime.bundle import BundleError, check_bundle
    from edgeloop.runtime.model import BundleModel

    try:
        if public_key is not None:
            check_bundle(bundle, public_key)
        bm = BundleModel(bundle)
    except BundleError as e:
        raise EdgeloopError(f"bundle does not verify: {e}") from None
    shape = [d if isinstance(d, int) else 2 for d in bm.input["shape"]]
    x = np.random.default_rng(0).random(shape).astype(bm.input_dtype)
    got = bm.run(x)
    want = run(model, x)
    for (k, a), b in zip(got.items(), want):
        if not np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-5, atol=1e-6):
            raise EdgeloopError(f"bundle output '{k}' differs from the model's")


def export_cli(model_path: str, target: Any, output: Path, *, prefix: str = "model", verify: bool = False,
               as_json: bool = False, sign: Optional[Path] = None, trust_pickle: bool = False) -> None:
    """`edgeloop export MODEL --target <linux board> -o OUT [--sign KEY]`."""
    from edgeloop.frontends import load_file
    from edgeloop.fsutil import check_output_dir
    from edgeloop.profile.weights import check_finite

    check_output_dir(output, kind="bundle")  # a user's folder is refused before any work
    if sign is not None:
        from .signing import load_private_key

        load_private_key(sign)  # so is a key that cannot sign
    model = load_file(model_path, trust_pickle=trust_pickle)
    check_finite(model, where=model_path)
    name = prefix if prefix and prefix != "model" else Path(model_path).stem
    kept: list[str] = []
    try:
        manifest = build_bundle(model, output, target, name=name, source_path=model_path, verify=verify,
                                sign=sign, kept=kept)
    except EdgeloopError as e:
        raise e.with_where(str(output))
    report = {"bundle": str(output), "target": target.id, "name": manifest["name"],
              "version": manifest["version"], "files": {k: (output / k).stat().st_size for k in manifest["files"]},
              "requirements": manifest["requirements"], "source_file": manifest["provenance"]["source_file"],
              "verified": verify, "hash": manifest["hash"],
              "signed": manifest["signed"]["key_fingerprint"] if manifest["signed"] else None,
              "kept": kept}
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    total = sum(report["files"].values())
    err.print(f"wrote bundle {output} for {target.name}: {len(report['files'])} files, {total:,} bytes; "
              f"needs {', '.join(manifest['requirements'])}" + ("; verified" if verify else "")
              + (f"; signed by {report['signed']}" if report["signed"] else ""), markup=False)
    from edgeloop.runtime.bundle import is_unlisted

    foreign = [k for k in kept if not is_unlisted(k, tuple(manifest["unlisted_allowed"]))]
    if foreign:
        err.print(f"note: kept {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} (not written by edgeloop); "
                  "the runtime refuses files the manifest does not list, so move them out before serving",
                  markup=False)
    if manifest["provenance"]["source_file"] is None:
        err.print("note: no trainable source (.skops/.joblib/.pt2) found, so `edgeloop improve` cannot refit this bundle",
                  markup=False)


__all__ = ["build_bundle", "export_cli", "default_preprocessing", "find_source", "write_atomically", "fit_runtime"]
