"""Latency measured with onnxruntime: batch 1, one thread, random inputs."""

from __future__ import annotations

import time

import numpy as np
import onnx

from edgeloop.errors import EdgeloopError

_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def random_inputs(sess, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds of the right dtype and shape (symbolic dimensions as 1).

    Floats are standard normal; int8/uint8 use their full range (quantized
    data); wider integers are 0 or 1, safe as indices.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        dtype = _TYPES.get(i.type)
        if dtype is None:
            raise EdgeloopError(f"cannot time a model whose input '{i.name}' has type {i.type}")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        if np.issubdtype(dtype, np.floating):
            # drawn in float32/float64 directly: no float64 copy of a large float32 input
            x = rng.standard_normal(shape, dtype=dtype if dtype in (np.float32, np.float64) else np.float32).astype(
                dtype, copy=False)
        elif dtype in (np.int8, np.uint8):
            info = np.iinfo(dtype)
            x = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        elif dtype is np.bool_:
            x = rng.integers(0, 2, size=shape).astype(bool)
        else:
            x = rng.integers(0, 2, size=shape).astype(dtype)
        feeds[i.name] = x
    return feeds


def measure_latency(model: onnx.ModelProto, *, min_runs: int = 50, min_seconds: float = 0.5,
                    warmup: int = 5) -> dict:
    """Median and 90th percentile of single-inference wall time, in milliseconds.

    One onnxruntime thread, batch 1. After ``warmup`` runs, runs until both
    ``min_runs`` runs and ``min_seconds`` seconds are done.
    """
    from edgeloop.graph import session

    sess = session(model, threads=1)
    feeds = random_inputs(sess)
    for _ in range(max(0, warmup)):
        sess.run(None, feeds)
    times = []
    start = time.perf_counter()
    while len(times) < max(1, min_runs) or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append(time.perf_counter_ns() - t0)
    ms = np.asarray(times, dtype=np.float64) / 1e6
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "runs": len(times)}
