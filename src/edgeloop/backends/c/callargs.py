"""A kernel call's arguments, turned into C text (the generator) or numpy views (the reference).

Each argument of a :class:`~edgeloop.backends.c.lower_base.Call` is a tuple whose first item
is its kind: ``("in", tensor[, offset])``, ``("out", tensor[, offset])``, ``("const",
ndarray)``, ``("null",)``, ``("int", v)``, ``("float", v)``, ``("arena", buffer, dtype)`` (a
planned work buffer of an in-place step) or ``("scratch", ctype, n)`` (a small static work
array). :func:`resolve` walks them once for both consumers, each giving one handler per kind.
The C literal printing (exact float32 text, int32/int64 extremes) lives here too.
"""

from __future__ import annotations

import numpy as np

from edgeloop.errors import EdgeloopError

KINDS = ("in", "out", "const", "null", "int", "float", "arena", "scratch")

NP_C = {np.dtype(np.float32): "float", np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t",
        np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t", np.dtype(np.int16): "int16_t",
        np.dtype(np.bool_): "uint8_t", np.dtype(np.float64): "double"}


def resolve(call, handlers: dict) -> list:
    """``[handlers[kind](*rest) for (kind, *rest) in call.args]``; every kind must be handled."""
    out = []
    for arg in call.args:
        fn = handlers.get(arg[0])
        if fn is None:
            raise EdgeloopError(f"internal: call of {call.kernel} has an argument of kind "
                                f"{arg[0]!r} (known: {', '.join(KINDS)})")
        out.append(fn(*arg[1:]))
    return out


def float_lit(v: float) -> str:
    v = float(np.float32(v))
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    # numpy's shortest repr that reads back as the same float32 (C rounds correctly)
    text = str(np.float32(v))
    if not any(ch in text for ch in ".e"):
        text += ".0"
    return text + "f"


def int_lit(v) -> str:
    v = int(v)
    return str(v) if v != -2 ** 31 else "(-2147483647 - 1)"


def array_text(a: np.ndarray) -> str:
    flat = a.ravel()
    if flat.dtype == np.float32 or flat.dtype == np.float64:
        items = [float_lit(v) for v in flat.astype(np.float32)]
    elif flat.dtype == np.int64:
        items = [f"INT64_C({int(v)})" if abs(int(v)) >= 2 ** 31 - 1 else str(int(v)) for v in flat]
    elif flat.dtype == np.int32:
        items = [int_lit(v) for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    if not items:
        items = ["0"]
    lines = []
    per = 12 if flat.dtype.kind == "f" else 24
    for i in range(0, len(items), per):
        lines.append("    " + ", ".join(items[i:i + per]))
    return ",\n".join(lines)
