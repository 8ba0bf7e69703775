"""Importers: every source format becomes one ONNX graph.

``load`` is the single entry point, for Python objects (scikit-learn
estimators, PyTorch modules) and for files (.onnx, .skops, .joblib/.pkl, .pt2,
.tflite). Pickles (.joblib/.pkl) run code from the file while they load, so they
are refused unless the caller passes ``trust_pickle=True``.
Each importer module imports its heavy library inside its functions, so a
device with only onnxruntime and numpy can still load .onnx files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx as _onnx  # aliased: the submodule edgeloop.frontends.onnx shadows the name

from edgeloop.errors import EdgeloopError, ModelLoadError
from edgeloop.shapes import apply_active_input_shapes

SUFFIXES = {
    ".onnx": "onnx",
    ".skops": "sklearn",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".pt2": "torch",
    ".tflite": "tflite",
}


# ONNX ModelProto field tags that follow ir_version (field 1) in a serialised model: producer_name,
# producer_version, domain, model_version, doc_string, graph, opset_import, metadata_props, ...
_ONNX_NEXT_TAGS = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72, 0x7a, 0xa2, 0xca}


def _looks_like_onnx(head: bytes) -> bool:
    """A protobuf ModelProto starts with ir_version (tag 0x08, a small varint), then another field."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 0x7f and head[2] in _ONNX_NEXT_TAGS


def _sniff(path: Path, head: bytes) -> str | None:
    """Guess a format from the file's first bytes when the suffix does not say."""
    from edgeloop.frontends.sklearn import _joblib_magic, is_skops_zip

    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head[:2] == b"PK":  # a zip: a skops file holds schema.json, a torch.export archive does not
        return "sklearn" if is_skops_zip(path) else "torch"
    if _looks_like_onnx(head):
        return "onnx"
    if _joblib_magic(head):  # a pickle protocol marker, or a joblib-compressed pickle
        return "sklearn"
    return None


@apply_active_input_shapes  # --input-shape (edgeloop.shapes)
def load_file(path: str | os.PathLike, *, trust_pickle: bool = False, **kwargs: Any) -> _onnx.ModelProto:
    """Import a model file; raises ModelLoadError naming the file on any problem.

    A pickle (.joblib/.pkl, or a file whose first bytes are a pickle) is refused
    unless ``trust_pickle``: unpickling runs code from the file.
    """
    p = Path(path)
    where = str(path)
    if not p.exists():
        raise ModelLoadError("no such file", where=where)
    if p.is_dir():
        raise ModelLoadError("is a directory, not a model file", where=where)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ModelLoadError(f"cannot read file ({e.strerror})", where=where) from None
    if size == 0:
        raise ModelLoadError("file is empty", where=where)
    fmt = SUFFIXES.get(p.suffix.lower()) or _sniff(p, head)
    if fmt is None:
        raise ModelLoadError(
            f"unknown model format '{p.suffix or '(no suffix)'}'; expected one of "
            + ", ".join(sorted(SUFFIXES)), where=where)
    try:
        if fmt == "onnx":
            from edgeloop.frontends.onnx import load_onnx
            return load_onnx(p)
        if fmt == "sklearn":
            from edgeloop.frontends.sklearn import load_pickle
            return load_pickle(p, trust_pickle=trust_pickle, **kwargs)
        if fmt == "torch":
            from edgeloop.frontends.torch import load_pt2
            return load_pt2(p, trust_pickle=trust_pickle, **kwargs)
        from edgeloop.frontends.tflite import load_tflite
        return load_tflite(p)
    except EdgeloopError as e:
        raise e.with_where(where)


def _is_torch_object(obj: Any) -> bool:
    return any(c.__module__.startswith("torch") for c in type(obj).__mro__)


def _is_sklearn_object(obj: Any) -> bool:
    return hasattr(obj, "get_params") and (hasattr(obj, "predict") or hasattr(obj, "transform"))


def load(source: Any, example_input: Any = None, *, trust_pickle: bool = False, **kwargs: Any) -> _onnx.ModelProto:
    """Import ``source`` into one ONNX graph.

    ``source`` is a path to a .onnx, .skops, .joblib/.pkl, .pt2 or .tflite file, an
    ``onnx.ModelProto``, a fitted scikit-learn estimator or Pipeline, or a
    PyTorch ``nn.Module`` / ``torch.export.ExportedProgram`` (a module needs
    ``example_input``, one tensor or a tuple of tensors).

    A pickle file (.joblib/.pkl) is refused unless ``trust_pickle=True``:
    unpickling runs code from the file. A .skops file loads without it, as long
    as it holds only types skops (and edgeloop) trust.
    """
    if isinstance(source, (str, os.PathLike)):
        return load_file(source, trust_pickle=trust_pickle, example_input=example_input, **kwargs)
    if isinstance(source, _onnx.ModelProto):
        from edgeloop.frontends.onnx import from_proto
        return from_proto(source, where="<ModelProto>")
    if _is_torch_object(source):
        from edgeloop.frontends.torch import from_torch
        return from_torch(source, example_input, **kwargs)
    if _is_sklearn_object(source):
        from edgeloop.frontends.sklearn import from_sklearn
        return from_sklearn(source, **kwargs)
    raise ModelLoadError(
        f"cannot import an object of type {type(source).__module__}.{type(source).__name__}; "
        "expected a model path, an onnx.ModelProto, a scikit-learn estimator or a torch module")
