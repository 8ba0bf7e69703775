"""The profiler: how big, how much RAM, how many operations, how fast.

``profile_model(model)`` returns one JSON-serialisable dict; the CLI prints
it and the hardware recommender matches it against the device catalogue.
The pieces are usable on their own: :mod:`edgeloop.profile.macs` (MACs per
operator), :mod:`edgeloop.profile.memory` (the arena planner, shared with the
C backend), :mod:`edgeloop.profile.weights`, :mod:`edgeloop.profile.latency`.
"""

from __future__ import annotations

import math
from typing import Any

import onnx

from edgeloop.graph import tensor_shape
from edgeloop.profile.analysis import (GraphAnalysis, analyze, constant_bytes, dtype_name,
                                       type_string)
from edgeloop.profile.latency import measure_latency
from edgeloop.profile.macs import count_macs
from edgeloop.profile.memory import GreedyPlanner, MemoryPlan, plan, plan_model
from edgeloop.profile.weights import (constant_roots, ml_attribute_weights, non_finite_weights, param_tensors,
                                      weight_totals)

__all__ = ["profile_model", "plan_model", "plan", "GreedyPlanner", "MemoryPlan", "count_macs",
           "LAYER_OVERHEAD_BYTES"]

LAYER_OVERHEAD_BYTES = 32
"""Flash per executing layer besides its weights: the generated code's layer
record (operator, arena offsets, shapes, parameter pointers). A rough figure."""

LATENCY_MEMORY_LIMIT = 1 << 30
"""Host latency is not measured when one inference needs more than this (inputs plus
the planned activation arena plus the weights): the run itself could exhaust the host."""


def _latency(model: onnx.ModelProto, need_bytes: int, min_runs: int, min_seconds: float) -> tuple[Any, Any]:
    """(latency dict or None, the reason it was not measured or None)."""
    from edgeloop.hardware import format_bytes

    if need_bytes > LATENCY_MEMORY_LIMIT:
        return None, (f"not measured: one inference needs {format_bytes(need_bytes)} of memory "
                      f"(more than {format_bytes(LATENCY_MEMORY_LIMIT)})")
    try:
        return measure_latency(model, min_runs=min_runs, min_seconds=min_seconds), None
    except MemoryError:
        return None, "not measured: the host ran out of memory running the model"


def _io(values) -> list[dict[str, Any]]:
    out = []
    for vi in values:
        if vi.type.WhichOneof("value") == "tensor_type":
            out.append({"name": vi.name, "dtype": dtype_name(vi.type.tensor_type.elem_type),
                        "shape": tensor_shape(vi)})
        else:
            out.append({"name": vi.name, "dtype": type_string(vi.type), "shape": None})
    return out


def _overall_precision(a: GraphAnalysis) -> str:
    found = {s.precision for s in a.steps if s.kind != "alias" and s.precision}
    if len(found) == 1:
        return found.pop()
    if found:
        return "mixed"
    # nothing computes (a pure data-movement graph): the inputs' type
    types = {dtype_name(a.elem_types[i]) for i in a.graph_inputs if i in a.elem_types}
    return types.pop() if len(types) == 1 else "mixed"


def profile_model(model: onnx.ModelProto, *, latency: bool = True, min_runs: int = 50,
                  min_seconds: float = 0.5, alignment: int = 1) -> dict[str, Any]:
    """Profile ``model`` for one inference at batch 1.

    Returned keys:

    - ``params``, ``weight_bytes``, ``weight_bytes_by_dtype``: see
      :mod:`edgeloop.profile.weights` for what counts.
    - ``macs``: sum over executing layers, conventions in :mod:`edgeloop.profile.macs`.
    - ``flash_bytes``: an estimate of the model's flash footprint: ``weight_bytes``
      (constants as stored on the device, int8 weights at 1 byte) plus
      ``LAYER_OVERHEAD_BYTES`` per executing layer. It does not include the
      kernels' code or a runtime library (TFLite Micro adds 33-76 KB, a C
      backend its kernels): the hardware recommender adds those.
    - ``peak_ram_bytes``: the activation arena planned by
      :func:`edgeloop.profile.memory.plan_model` with ``alignment`` (also in
      ``memory``); a backend that aligns its buffers must pass the same value.
    - ``precision``: "int8" if every computing layer is an int8 QDQ kernel (8-bit
      activations, uint8 included), else the float type they use ("float32",
      "float16"), or "mixed".
    - ``latency_ms``: {median, p90, runs} with onnxruntime on one thread, or None
      (``latency_note`` then says why, e.g. a model too large to run on the host).
    - ``non_finite_weights``: [{tensor, node, nan, inf}], weights holding NaN or inf
      (such a model answers NaN; export refuses it).
    - ``inputs``, ``outputs``: [{name, dtype, shape}] as declared by the model.
    - ``layers``: one entry per device step (an int8 kernel covers its Q/DQ nodes),
      aliases (Reshape, ...) included with 0 MACs.
    - ``memory``: {peak_bytes, alignment, buffers: [{name, size, first_use, last_use, offset, dtype}]}.
    - ``assumptions``: e.g. a symbolic batch dimension taken as 1.
    """
    a = analyze(model)
    mem = plan_model(model, alignment=alignment, _analysis=a)
    params, weight_bytes, by_dtype = weight_totals(a)
    pnames = param_tensors(a)

    layers = []
    total_macs = 0
    for s in a.steps:
        node = a.nodes[s.main]
        macs = 0 if s.kind == "alias" else count_macs(node, a.shapes) + sum(
            count_macs(a.nodes[m], a.shapes) for m in s.fused_mains)
        total_macs += macs
        roots = constant_roots(a, s.nodes)
        l_params = sum(math.prod(a.constants[r].dims) for r in roots if r in pnames)
        l_bytes = sum(constant_bytes(a.constants[r]) for r in roots)
        for i in s.nodes:
            p, b = ml_attribute_weights(a.nodes[i])
            l_params += p
            l_bytes += sum(b.values())
        out = s.writes[0]
        shape_src = out if out in a.shapes else a.root(out)
        out_bytes = sum(a.tensor_bytes(t if t in a.shapes else a.root(t)) for t in s.writes
                        if (t if t in a.shapes else a.root(t)) in a.shapes)
        layers.append({
            "name": s.name, "op": s.op, "kind": s.kind, "precision": s.precision,
            "params": int(l_params), "macs": int(macs), "weight_bytes": int(l_bytes),
            "output_shape": list(a.shapes.get(shape_src, ())) if shape_src in a.shapes else None,
            "output_bytes": int(out_bytes),
        })
    n_exec = sum(1 for s in a.steps if s.kind != "alias")
    lat, lat_note = None, None
    if latency:
        input_bytes = sum(a.tensor_bytes(i) for i in a.graph_inputs if i in a.shapes)
        lat, lat_note = _latency(model, int(input_bytes + mem.peak_bytes + weight_bytes), min_runs, min_seconds)
    result = {
        "params": int(params),
        "macs": int(total_macs),
        "weight_bytes": int(weight_bytes),
        "weight_bytes_by_dtype": by_dtype,
        "flash_bytes": int(weight_bytes + LAYER_OVERHEAD_BYTES * n_exec),
        "peak_ram_bytes": int(mem.peak_bytes),
        "precision": _overall_precision(a),
        "latency_ms": lat,
        "latency_note": lat_note,
        "non_finite_weights": non_finite_weights(model),
        "inputs": _io([i for i in model.graph.input if i.name not in a.constants]),
        "outputs": _io(model.graph.output),
        "layers": layers,
        "memory": mem.to_dict(),
        "assumptions": list(a.assumptions),
    }
    det = detection_costs(model, result)
    if det is not None:
        result["detection"] = det
        result["pipeline_macs"] = int(total_macs + det["preprocess_ops"] + det["postprocess_ops"])
    return result


def detection_costs(model: onnx.ModelProto, prof: dict[str, Any]) -> dict[str, Any] | None:
    """For a detector (a model with a head), the work around the network, in MAC-equivalent
    operations: preprocessing (bilinear resize, about 4 per output value, and the value mapping)
    and postprocessing (decoding every candidate box, score activation, and greedy NMS over
    at most ``max_detections`` boxes above the threshold). An estimate, like the latencies made
    from it."""
    from edgeloop.detect import head_of

    try:
        head = head_of(model)
    except Exception:  # a broken stored head is reported by predict/export, not by profile
        return None
    if head is None:
        return None
    w, h = head["input"]["size"]
    pre = w * h * 3 * 5
    outs = {o["name"]: o["shape"] or [] for o in prof["outputs"]}
    dims = [d for shape in outs.values() for d in shape if isinstance(d, int)]
    sizes = [math.prod(d for d in shape if isinstance(d, int) and d > 0) for shape in outs.values()]
    values = sum(sizes)
    candidates = max(dims) if dims else 0
    k = min(candidates, head["max_detections"])
    post = values * 4 + k * k * 6
    return {"kind": head["kind"], "classes": len(head["labels"]), "candidates": int(candidates),
            "input_size": [w, h], "preprocess_ops": int(pre), "postprocess_ops": int(post)}

