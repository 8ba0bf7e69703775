"""Helpers around the one model representation: an ONNX ModelProto.

Metadata that the device needs travels in ``metadata_props`` under keys
prefixed ``edgeloop.`` (source, task, labels, passes applied, ...).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnx

META_PREFIX = "edgeloop."


def set_metadata(model: onnx.ModelProto, **values: Any) -> None:
    """Store values (JSON-encoded unless already str) in the model's metadata_props."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        full = META_PREFIX + key
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if full in existing:
            existing[full].value = text
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = full, text


def get_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """Read back edgeloop metadata (JSON-decoded where possible)."""
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if p.key.startswith(META_PREFIX):
            try:
                out[p.key[len(META_PREFIX):]] = json.loads(p.value)
            except ValueError:
                out[p.key[len(META_PREFIX):]] = p.value
    return out


def reinfer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose value_info is inferred afresh (stale exporter shapes dropped); best effort."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:  # shapes stay unknown where inference cannot follow; callers cope
        pass
    return m


def resolve_source(model_path: str | os.PathLike | None, meta: dict[str, Any]) -> str | None:
    """The file a graph was imported from (``meta`` is its ``get_metadata``), if it still exists.

    ``source`` is stored as given at import, or relative to the model file's
    folder (edgeloop train and shrink write it so, to keep folders movable).
    """
    recorded = meta.get("source")
    if not isinstance(recorded, str) or recorded.startswith("<"):
        return None
    here = os.path.dirname(os.fspath(model_path)) if model_path is not None else ""
    for candidate in (os.path.join(here, recorded), recorded):
        if os.path.isfile(candidate):
            return candidate
    return None


def finalize(model: onnx.ModelProto, *, source: str, source_format: str,
             **metadata: Any) -> onnx.ModelProto:
    """Check a freshly imported graph, infer its shapes, and record where it came from."""
    from edgeloop import __version__

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # shape inference is best-effort; the profiler falls back to onnxruntime
        inferred = model
    if not inferred.producer_name:
        inferred.producer_name = "edgeloop"
    set_metadata(inferred, source=source, source_format=source_format,
                 edgeloop_version=__version__, **metadata)
    return inferred


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a model atomically: a reader never sees a half-written file."""
    from edgeloop.fsutil import write_bytes_atomic

    write_bytes_atomic(path, model.SerializeToString())


def session(model: onnx.ModelProto | bytes, threads: int = 1):
    """An onnxruntime session pinned to ``threads`` threads (batch-1 device-like timing)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, *inputs: np.ndarray) -> list[np.ndarray]:
    """Run a model on positional inputs with onnxruntime (the reference executor)."""
    sess = session(model)
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feeds)


def tensor_shape(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Shape of a ValueInfo: ints for known dims, the symbolic name or None otherwise."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims
