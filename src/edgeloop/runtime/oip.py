"""The Open Inference Protocol (KServe v2) over REST: typed tensors in and out (numpy only).

Written here rather than taken from a library: KServe's and Triton's servers are whole serving
stacks (and MLServer pulls pydantic, fastapi and more) where the device needs ~150 lines of
tensor (de)coding next to the existing Starlette app.

A request is JSON (``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [...]}``) or,
with the binary tensor extension that ``tritonclient`` uses by default, a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors of the inputs whose
``parameters.binary_data_size`` is set.  ``BYTES`` elements are length-prefixed (4-byte little
endian) in binary form; in JSON they are strings, base64 for encoded images.  Answers are JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .model import InputError

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
             "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
             "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_}
BY_DTYPE = {np.dtype(v).name: k for k, v in DATATYPES.items()}
MAX_ELEMENTS = 1 << 26


def datatype_of(dtype: Any) -> str:
    """The protocol's datatype name of a numpy/manifest dtype (``float32`` -> ``FP32``)."""
    if isinstance(dtype, str) and dtype in DATATYPES:
        return dtype
    try:
        return BY_DTYPE.get(np.dtype(dtype).name, "BYTES")
    except TypeError:
        return "BYTES"


def shape_of(shape: List[Any]) -> List[int]:
    """A manifest shape (null for a free dimension) in the protocol's form (-1)."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def _flatten(data: Any, where: str) -> List[Any]:
    if not isinstance(data, list):
        return [data]
    out: List[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested request cannot exhaust the recursion limit
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > MAX_ELEMENTS:
                raise InputError(f"{where}: more than {MAX_ELEMENTS} elements", status=413)
        else:
            stack.pop()
    return out


def _bytes_elements(raw: bytes, where: str) -> List[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InputError(f"{where}: truncated BYTES element length", status=400)
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise InputError(f"{where}: a BYTES element says {n} bytes, {len(raw) - i} are left", status=400)
        out.append(raw[i:i + n])
        i += n
    return out


def parse_request(body: bytes, header_length: Optional[str]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The request document and its inputs, each with ``name``, ``datatype``, ``shape`` and
    ``value`` (a numpy array, or a list of bytes for BYTES)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InputError("bad Inference-Header-Content-Length header", status=400) from None
        if not 0 < n <= len(body):
            raise InputError(f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body",
                             status=400)
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        doc = json.loads(head, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"malformed JSON: {e}", status=400) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InputError("an infer request is an object with a non-empty 'inputs' list", status=400)
    offset = 0
    inputs = []
    for i, spec in enumerate(doc["inputs"]):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InputError(f"{where} must be an object with 'name', 'shape', 'datatype' and 'data'", status=400)
        where = f"input '{spec['name']}'"
        dt = spec.get("datatype")
        if dt != "BYTES" and dt not in DATATYPES:
            raise InputError(f"{where}: datatype must be one of BYTES, {', '.join(DATATYPES)}; got {dt!r}", status=400)
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise InputError(f"{where}: shape must be a list of non-negative integers", status=400)
        count = int(np.prod(shape)) if shape else 1
        if count > MAX_ELEMENTS:
            raise InputError(f"{where}: {count} elements is above the limit of {MAX_ELEMENTS}", status=413)
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise InputError(f"{where}: binary_data_size {size!r} does not fit the binary part", status=400)
            raw = rest[offset:offset + size]
            offset += size
            if dt == "BYTES":
                value: Any = _bytes_elements(raw, where)
            else:
                itemsize = np.dtype(DATATYPES[dt]).itemsize
                if len(raw) != count * itemsize:
                    raise InputError(f"{where}: {len(raw)} bytes of {dt} for shape {shape} "
                                     f"({count * itemsize} expected)", status=400)
                value = np.frombuffer(raw, dtype=DATATYPES[dt]).reshape(shape)
        else:
            if "data" not in spec:
                raise InputError(f"{where}: no 'data' (and no binary_data_size)", status=400)
            flat = _flatten(spec["data"], where)
            if dt == "BYTES":
                value = [_text_element(v, where) for v in flat]
            else:
                if not all(isinstance(v, (int, float)) and (dt == "BOOL" or not isinstance(v, bool)) for v in flat):
                    raise InputError(f"{where}: {dt} data must hold only numbers", status=400)
                try:
                    arr = np.asarray(flat, dtype=np.float64 if dt.startswith("FP") else None)
                except (ValueError, TypeError, OverflowError):
                    raise InputError(f"{where}: data is not {dt}", status=400) from None
                if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                    raise InputError(f"{where}: data holds NaN or infinite values", status=400)
                value = arr
            if len(value) != count:
                raise InputError(f"{where}: {len(value)} values for shape {shape} ({count} expected)", status=400)
            if dt != "BYTES":
                info = np.iinfo(DATATYPES[dt]) if np.dtype(DATATYPES[dt]).kind in "iu" else None
                if info is not None and value.size and (value.min() < info.min or value.max() > info.max
                                                        or np.any(value != np.round(value))):
                    raise InputError(f"{where}: values are not {dt}", status=400)
                value = value.astype(DATATYPES[dt]).reshape(shape)
        inputs.append({"name": spec["name"], "datatype": dt, "shape": shape, "value": value})
    return doc, inputs


def _text_element(v: Any, where: str) -> bytes:
    """A JSON BYTES element: base64 (an encoded image in JSON), else the UTF-8 text itself."""
    if not isinstance(v, str):
        raise InputError(f"{where}: BYTES data in JSON must be strings (base64 for images)", status=400)
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        return v.encode("utf-8")


def _no_constant(name: str) -> Any:
    raise InputError(f"JSON holds {name}; send finite numbers", status=400)


def tensor(name: str, value: Any) -> Dict[str, Any]:
    """An output tensor in the protocol's JSON form (flat row-major ``data``)."""
    if isinstance(value, list) and (not value or isinstance(value[0], (str, bytes))):
        data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value]
        return {"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data}
    arr = np.asarray(value)
    if arr.dtype.kind in "OUS":
        data = [str(v) for v in arr.reshape(-1).tolist()]
        return {"name": name, "datatype": "BYTES", "shape": list(arr.shape), "data": data}
    flat = arr.reshape(-1)
    if flat.dtype.kind == "f" and not np.all(np.isfinite(flat)):
        raise InputError(f"the model's output '{name}' holds NaN or infinite values for this input")
    return {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape), "data": flat.tolist()}


def requested(doc: Dict[str, Any], available: List[str]) -> List[str]:
    """The output names the request asks for (all when it names none); 400 for an unknown one."""
    outs = doc.get("outputs")
    if outs is None:
        return available
    if not isinstance(outs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outs):
        raise InputError("'outputs' must be a list of objects with a 'name'", status=400)
    names = [o["name"] for o in outs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"no output '{unknown[0]}' (outputs: {', '.join(available)})", status=400)
    return names
