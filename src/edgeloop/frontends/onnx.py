"""ONNX files: the interchange format itself, checked on the way in."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgeloop.errors import ModelLoadError
from edgeloop.graph import finalize, get_metadata


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def from_proto(model: onnx.ModelProto, *, where: str, source_format: str = "onnx") -> onnx.ModelProto:
    """Validate a ModelProto and return it with shapes inferred and its source recorded."""
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError("ONNX model has no graph nodes (empty or truncated file?)", where=where)
    if len(model.graph.output) == 0:
        raise ModelLoadError("ONNX graph declares no outputs", where=where)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError and friends
        raise ModelLoadError(f"invalid ONNX model: {_first_line(e)}", where=where) from None
    # A graph edgeloop made earlier (imported from scikit-learn, PyTorch or
    # TFLite, then shrunk) keeps its provenance: `source` still names the model
    # it came from, so refits and improve can find it; `file` says where this
    # copy was read from.
    meta = get_metadata(model)
    if isinstance(meta.get("source"), str) and meta.get("source_format") not in (None, "onnx"):
        return finalize(model, source=meta["source"], source_format=meta["source_format"], file=where)
    return finalize(model, source=where, source_format=source_format, file=where)


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read an .onnx file (with its external data, if any) and validate it."""
    where = str(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise ModelLoadError(f"not a valid ONNX file: {_first_line(e)}", where=where) from None
    return from_proto(model, where=where)
