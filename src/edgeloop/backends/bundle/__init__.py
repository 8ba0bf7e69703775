"""The Linux-board backend: a deployable bundle folder.

``build_bundle(model, out, target)`` writes, atomically:

- ``model.onnx``;
- ``manifest.json``: name, version, creation time, edgeloop version, target, input/output spec
  (names, dtypes, shapes), preprocessing, labels, kept features, provenance (source file and
  format, shrink recipe) and the SHA-256 of every other file;
- ``requirements.txt``: the runtime's needs only (onnxruntime, numpy, starlette, uvicorn; Pillow
  and python-multipart for image models);
- ``Dockerfile`` for the board, ``docker-compose.yml`` mounting the capture store, ``README.md``;
- ``edgeloop_runtime/``: a copy of :mod:`edgeloop.runtime`, which imports nothing but those
  requirements, so ``python -m edgeloop_runtime .`` serves the bundle without edgeloop installed
  (chosen over ``pip install edgeloop`` on the device: edgeloop pulls onnx, typer and rich, and on a
  Jetson each extra wheel is a fight);
- ``source/<file>``: the trainable source model (.skops/.joblib/.pkl/.pt2) when known, for ``improve``;
  ``provenance.source_needs_trust`` says whether it is a pickle (loading it runs code from the file,
  so ``improve`` asks for ``--trust-pickle`` again) and ``provenance.source_file_format`` its format.
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
        if all(isinstance(v, int) for v in (c, h, w)):
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


def _installed(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise EdgeloopError(f"cannot pin {dist}: it is not installed on this machine") from None


def requirements(pack: Packaging, image: bool) -> tuple[str, list[str]]:
    """requirements.txt text and the pinned lines (the runtime's needs only)."""
    names = ["numpy", "starlette", "uvicorn"] + (["pillow", "python-multipart"] if image else [])
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
        f"    && apt-get install -y --no-install-recommends {py} {py}-venv {py}-dev ca-certificates \\",
        "    && rm -rf /var/lib/apt/lists/* \\",
        f"    && {py} -m venv /opt/venv",
    ]
    if pack.ort_wheel:
        lines += [f"COPY {pack.ort_wheel} /tmp/{pack.ort_wheel}",
                  f"RUN pip install --no-cache-dir /tmp/{pack.ort_wheel} && rm /tmp/{pack.ort_wheel}"]
    lines += ["COPY requirements.txt /app/requirements.txt",
              "RUN pip install --no-cache-dir -r /app/requirements.txt"]
    return "\n".join(lines + tail) + "\n"


def _compose(pack: Packaging, name: str, version: int) -> str:
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
    if pack.gpu:
        lines.append("    runtime: nvidia")
    return "\n".join(lines) + "\n"


def _readme(manifest: dict, pack: Packaging) -> str:
    inp = manifest["inputs"][0]
    shape = "x".join("N" if d is None else str(d) for d in inp["shape"])
    image = manifest["preprocessing"].get("type") == "image"
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
        "## Run without Docker",
        "",
        f"    python{pack.python} -m venv .venv && .venv/bin/pip install -r requirements.txt",
        "    .venv/bin/python -m edgeloop_runtime . --port 8080 --capture captures/captures.db",
        "",
        "The server checks every file's SHA-256 against manifest.json at start and refuses a",
        "changed bundle. It listens on 127.0.0.1 by default and opens no outbound connection.",
        "",
        "## Use",
        "",
        "    curl -s localhost:8080/predict -H 'Content-Type: application/json' \\",
        "         -d '{\"inputs\": [[...]]}'     # a batch; {\"input\": [...]} for one sample",
    ]
    if image:
        lines += ["    curl -s localhost:8080/predict -H 'Content-Type: image/png' --data-binary @photo.png"]
    lines += [
        "    curl -s localhost:8080/metrics          # Prometheus text",
        "",
    ]
    if image:
        lines += [f"Images are converted, resized to {manifest['preprocessing']['width']}x"
                  f"{manifest['preprocessing']['height']} and scaled as manifest.json's `preprocessing` says.", ""]
    lines += [
        "Uncertain inputs are kept in captures/captures.db (`--privacy` keeps no raw input).",
        "Export them for labelling with `edgeloop samples export captures/captures.db -o to-label/`,",
        "retrain with `edgeloop improve --bundle . --data to-label/ -o ../v2`, then switch versions",
        "without downtime: `curl -X POST localhost:8080/admin/reload -d '{\"bundle\": \"/path/to/v2\"}'`",
        "(or SIGHUP to reload this folder); `POST /admin/rollback` returns to the previous version.",
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
def write_atomically(out: Path, fill: Any, marker: str = "manifest.json") -> None:
    """Build the folder with ``fill(tmp)`` beside ``out``, then swap it in (see edgeloop.fsutil.staged_dir).

    An existing ``out`` is replaced only if it holds ``marker`` (a previous output of the same kind)."""
    from edgeloop.fsutil import staged_dir

    with staged_dir(out, marker=marker) as tmp:
        fill(tmp)


def build_bundle(model: onnx.ModelProto, out: "str | os.PathLike[str]", target: Any, *,
                 name: Optional[str] = None, version: int = 1, source_path: Optional[str] = None,
                 preprocessing: Optional[dict] = None, provenance: Optional[dict] = None,
                 verify: bool = False) -> dict:
    """Write a bundle for ``target`` (a catalogue Target or its id); return the manifest."""
    from edgeloop import __version__
    from edgeloop.graph import get_metadata
    from edgeloop.runtime.bundle import MANIFEST, MODEL, FORMAT, hash_tree

    if isinstance(target, str):
        from edgeloop.hardware import get_target

        target = get_target(target)
    if target.kind != "linux":
        raise UsageError(f"target '{target.id}' is not a Linux board; bundles are for Linux boards")
    pack = packaging_for(target.id)
    meta = get_metadata(model)
    model, conversion = fit_runtime(model, pack)
    inputs = [_value_spec(v) for v in _graph_inputs(model)]
    outputs = [_value_spec(v) for v in model.graph.output]
    if len(inputs) != 1:
        raise UsageError(f"the bundle runtime serves single-input models; this model has {len(inputs)} inputs")
    pre = preprocessing or meta.get("preprocessing") or default_preprocessing(inputs)
    image = pre.get("type") == "image"
    src = find_source(source_path, meta)
    name = name or meta.get("name") or (Path(source_path).stem if source_path else "model")
    req_text, pins = requirements(pack, image)
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
        "task": meta.get("task"),
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": pre,
        "postprocess": _postprocess(model, meta, outputs),
        "labels": meta.get("labels"),
        "kept_features": meta.get("kept_features"),
        "n_features_original": meta.get("n_features_original"),
        "provenance": prov,
        "requirements": pins,
        "onnx": {"ir_version": model.ir_version,
                 "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                 "conversion": conversion},
        "files": {},
    }

    def fill(tmp: Path) -> None:
        (tmp / MODEL).write_bytes(model.SerializeToString())
        (tmp / "requirements.txt").write_text(req_text)
        (tmp / "Dockerfile").write_text(_dockerfile(pack, target))
        (tmp / "docker-compose.yml").write_text(_compose(pack, name, version))
        (tmp / "README.md").write_text(_readme(manifest, pack))
        (tmp / RUNTIME_DIR).mkdir()
        for f in sorted(_runtime_source().glob("*.py")):
            shutil.copyfile(f, tmp / RUNTIME_DIR / f.name)
        if src is not None:
            (tmp / "source").mkdir()
            shutil.copyfile(src, tmp / "source" / src.name)
        manifest["files"] = hash_tree(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if verify:
            verify_loads(tmp, model)

    write_atomically(Path(out), fill)
    return manifest


def verify_loads(bundle: Path, model: onnx.ModelProto) -> None:
    """--verify for bundles: the runtime loads it (hashes match) and agrees with the model."""
    from edgeloop.graph import run
    from edgeloop.runtime.bundle import BundleError
    from edgeloop.runtime.model import BundleModel

    try:
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
               as_json: bool = False, trust_pickle: bool = False) -> None:
    """`edgeloop export MODEL --target <linux board> -o OUT`."""
    from edgeloop.frontends import load_file
    from edgeloop.profile.weights import check_finite

    model = load_file(model_path, trust_pickle=trust_pickle)
    check_finite(model, where=model_path)
    name = prefix if prefix and prefix != "model" else Path(model_path).stem
    try:
        manifest = build_bundle(model, output, target, name=name, source_path=model_path, verify=verify)
    except EdgeloopError as e:
        raise e.with_where(str(output))
    report = {"bundle": str(output), "target": target.id, "name": manifest["name"],
              "version": manifest["version"], "files": {k: (output / k).stat().st_size for k in manifest["files"]},
              "requirements": manifest["requirements"], "source_file": manifest["provenance"]["source_file"],
              "verified": verify}
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    total = sum(report["files"].values())
    err.print(f"wrote bundle {output} for {target.name}: {len(report['files'])} files, {total:,} bytes; "
              f"needs {', '.join(manifest['requirements'])}" + ("; verified" if verify else ""), markup=False)
    if manifest["provenance"]["source_file"] is None:
        err.print("note: no trainable source (.skops/.joblib/.pt2) found, so `edgeloop improve` cannot refit this bundle",
                  markup=False)


__all__ = ["build_bundle", "export_cli", "default_preprocessing", "find_source", "write_atomically", "fit_runtime"]
