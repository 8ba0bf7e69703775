"""A detection head decoded in C: ``int <prefix>_detect(input, boxes, max_boxes)``.

When the exported model carries a head (``edgeloop.head``), :func:`plan` adds, beside
``<prefix>_run``, a function that runs the model and turns its raw outputs into boxes with
the kernels ``kernels/detect_ssd.c`` (``ssd_anchors``, ``tflite_ssd``),
``kernels/detect_yolo.c`` (``yolov8``, ``yolov5``) or ``kernels/detect_centroids.c``
(``centroids``); which kinds have C is :data:`edgeloop.backends.c.registry.HEADS`. Everything the device needs that does
not change per frame is computed here once, with :mod:`edgeloop.runtime.detect` itself:
the anchors (``static const`` table), the int8 scores' values (a 256-entry table of the
numpy decoder's own float64 results) and the score threshold in the int8 domain (the
smallest q whose score reaches it: the activations are monotone). The kernels then work in
double in numpy's operation order, so an int8 head gives the numpy decoder's boxes bit for
bit; a float head agrees within float rounding (the C library's ``exp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgeloop.backends.c.registry import HEADS
from edgeloop.errors import UsageError
from edgeloop.runtime import detect as rd

SUPPORTED = tuple(HEADS)


@dataclass
class DetectPlan:
    kernels: list[str]
    c: str                          # tables, work arrays and <prefix>_detect
    h: list[str]                    # header lines: box type, defines, prototype
    info: dict = field(default_factory=dict)


def _d(v: float) -> str:
    """A double literal that reads back as exactly ``v``."""
    v = float(v)
    if math.isnan(v):
        raise UsageError("internal: NaN in a detection table")
    if math.isinf(v):
        return "HUGE_VAL" if v > 0 else "(-HUGE_VAL)"
    return repr(v)


def _table(name: str, ctype: str, values) -> str:
    vals = list(values) or [0]
    fmt = _d if ctype == "double" else (lambda x: str(int(x)))
    rows = [", ".join(fmt(x) for x in vals[i:i + 6]) for i in range(0, len(vals), 6)]
    return f"static const {ctype} {name}[{len(vals)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def _fail(message: str):
    raise UsageError(f"C detection head: {message}")


def _output(low, head, name, index: int, what: str) -> dict:
    outs = low.outputs
    if name is None:
        return outs[min(index, len(outs) - 1)]
    for o in outs:
        if o["name"] == name:
            return o
    _fail(f"head key '{what}': the model has no output '{name}' "
          f"(it has {', '.join(o['name'] for o in outs)})")


def _quant(head, out, quant_of) -> tuple[float, float] | None:
    """(scale, zero point) of an int8 output; None for a float one."""
    if out["dtype"] == "float32":
        return None
    if out["dtype"] != "int8":
        _fail(f"output '{out['name']}' is {out['dtype']}; the C decoder reads int8 or float32")
    q = head.get("output_quant", {}).get(out["name"]) or quant_of(out["name"])
    if q is None:
        _fail(f"int8 output '{out['name']}' has no known scale and zero point "
              "(head key 'output_quant')")
    return float(q[0]), float(q[1])


def _int8_table(head, name: str, q, activation: str, clip) -> np.ndarray:
    """The float64 score of every int8 value, by the numpy decoder's own code."""
    raw = np.arange(-128, 128, dtype=np.int8)
    vals = rd._activate(rd.output_float({"output_quant": {name: list(q)}}, name, raw), activation, clip)
    if np.any(np.diff(vals) < 0) or not np.all(np.isfinite(vals)):
        _fail(f"the scores of output '{name}' do not grow with the int8 value (scale {q[0]})")
    return vals


def _q_threshold(table: np.ndarray, thr: float) -> int:
    """The smallest int8 value whose score reaches ``thr`` (128: none does)."""
    hit = np.nonzero(table >= thr)[0]
    return int(hit[0]) - 128 if hit.size else 128


def _raw_threshold(thr: float, activation: str, clip) -> float:
    """A bound on the raw float score below which no score reaches ``thr`` (the logit for
    sigmoid, widened a little so float64 rounding never drops a candidate)."""
    if activation == "none":
        return thr
    if thr <= 0.0:
        return -1e300
    t = 30.0 if thr >= 1.0 else math.log(thr / (1.0 - thr))
    t -= 1e-9 * (1.0 + abs(t))
    if clip is not None and t <= -clip:
        return -1e300
    return t


def _common_header(prefix: str, head: dict, what: str, keypoints: int = 0) -> list[str]:
    P = prefix.upper()
    kp = f" float keypoints[{keypoints}][2];" if keypoints else ""
    tw, th = head["input"]["size"]
    labels = head["labels"]
    return [
        "",
        f"/* Detection head ({head['kind']}{', labels: ' + ', '.join(labels) if labels else ''}).",
        f" * {prefix}_detect(input, boxes, max_boxes) runs the model on input (as {prefix}_run)",
        " * (the input tensor: the image already resized and scaled as the head says) and",
        " * decodes its head in C:",
        f" *   {what};",
        f" * at most {P}_MAX_DETECTIONS detections, best first; the first min(count, max_boxes)",
        " * are written to boxes.",
        " * Returns that number, or -1 when the model failed. Boxes are in INPUT-TENSOR pixels",
        f" * ({tw} x {th}, not clipped); the caller maps them back to its image: for a letterbox",
        " * of scales (sx, sy) and padding (pad_x, pad_y), x = (x_in - pad_x) / sx and",
        " * y = (y_in - pad_y) / sy (edgeloop.runtime.detect.Letterbox.to_original).",
        " * class_id indexes the head's labels."
        + (f" keypoints: the head's {keypoints} (x, y) points of each box, in the same pixels."
           if keypoints else "") + " Not reentrant (static work arrays). */",
        f"typedef struct {{ float x1, y1, x2, y2; float score; int class_id;{kp} }} {prefix}_box_t;",
        f"#define {P}_MAX_DETECTIONS {head['max_detections']}",
        *([f"#define {P}_NUM_KEYPOINTS {keypoints}"] if keypoints else []),
        f"#define {P}_NUM_CLASSES {max(len(labels), 1)}",
        f"#define {P}_DETECT_INPUT_WIDTH {tw}",
        f"#define {P}_DETECT_INPUT_HEIGHT {th}",
        f"#define {P}_MIN_SCORE {_d(head['min_score'])}",
        f"int {prefix}_detect(const void *input, {prefix}_box_t *boxes, int max_boxes);",
    ]


def _wrapper(prefix: str, low, call: str, keypoints: int = 0) -> str:
    n_out = max(len(low.outputs), 1)
    off = 0
    ins = []
    for k, i in enumerate(low.inputs):
        ins.append(f"    ins[{k}] = (const unsigned char *)input + {off};")
        off += i["nbytes"]
    return "\n".join([
        f"int {prefix}_detect(const void *input, {prefix}_box_t *boxes, int max_boxes)\n{{",
        f"    const void *ins[{max(len(low.inputs), 1)}];",
        f"    void *outs[{n_out}];",
        "    int k, count = 0;" + (" int j;" if keypoints else ""),
        *ins,
        f"    for (k = 0; k < {n_out}; ++k) outs[k] = 0;   /* the outputs stay in the arena */",
        f"    if ({prefix}_run_all(ins, outs) != 0) return -1;",
        call,
        "    if (count > max_boxes) count = max_boxes;",
        "    for (k = 0; k < count; ++k) {",
        "        boxes[k].x1 = (float)el_det_kb[4 * k];",
        "        boxes[k].y1 = (float)el_det_kb[4 * k + 1];",
        "        boxes[k].x2 = (float)el_det_kb[4 * k + 2];",
        "        boxes[k].y2 = (float)el_det_kb[4 * k + 3];",
        "        boxes[k].score = (float)el_det_ks[k];",
        "        boxes[k].class_id = el_det_kc[k];",
        *([f"        for (j = 0; j < {keypoints}; ++j) {{",
           f"            boxes[k].keypoints[j][0] = (float)el_det_kk[2 * ({keypoints} * k + j)];",
           f"            boxes[k].keypoints[j][1] = (float)el_det_kk[2 * ({keypoints} * k + j) + 1];",
           "        }"] if keypoints else []),
        "    }",
        "    return count < 0 ? 0 : count;",
        "}", ""])


def _call(kernel: str, args: dict) -> str:
    """``k_<kernel>(...)`` bound by keyword against the kernel file's C signature (a missing
    or unknown argument fails here, naming it, not in the C compiler)."""
    from edgeloop.backends.c import kernel_lib

    params = {p.name: p for p in kernel_lib.signature(kernel)}
    tagged = {k: ("const" if k in params and params[k].is_pointer else "int", v) for k, v in args.items()}
    bound = kernel_lib.bind(kernel, tagged)
    return f"    k_{kernel}(" + ", ".join(str(v) for _, v in bound) + ");"


def _ptr(out) -> str:
    return f"(const void *)(el_arena.bytes + {out['offset']})"


def _plan_ssd(head, low, prefix, quant_of) -> DetectPlan:
    bspec, sspec = head["boxes"], head["scores"]
    bout = _output(low, head, bspec["output"], 0, "boxes.output")
    sout = _output(low, head, sspec["output"], 1, "scores.output")
    if sspec["activation"] == "softmax":
        _fail("scores.activation 'softmax' is not supported in C (use sigmoid or none)")
    if head["kind"] == "ssd_anchors":
        anchors = rd.ssd_anchors(head["anchors"], head["input"]["size"])
    else:
        anchors = np.asarray(head["anchors"], np.float64)[:, [1, 0, 3, 2]]
    n = len(anchors)
    bsize = int(np.prod(bout["shape"]))
    ssize = int(np.prod(sout["shape"]))
    stride = int(bout["shape"][-1]) if bout["shape"] else 0
    if stride < 4 or bsize != n * stride:
        _fail(f"head key 'anchors': {n} anchors but output '{bout['name']}' has shape {bout['shape']}")
    if ssize % n:
        _fail(f"output '{sout['name']}' (shape {sout['shape']}) does not hold a score row per anchor")
    nc = ssize // n
    c0 = 1 if sspec["background"] and nc > 1 else 0
    bq, sq = _quant(head, bout, quant_of), _quant(head, sout, quant_of)
    clip = sspec.get("clip")
    thr = float(head["min_score"])
    if sq is not None:
        lut = _int8_table(head, sout["name"], sq, sspec["activation"], clip)
        q_thr = _q_threshold(lut, thr)
    else:
        lut, q_thr = np.zeros(1), 128
    raw_thr = _raw_threshold(thr, sspec["activation"], clip)
    max_det = head["max_detections"]
    nms = head["nms"]
    if nms == "weighted":
        _fail("nms 'weighted' is not supported in C (use greedy or none)")
    # keypoints after the box in each row, when the rows hold them (the numpy decoder's rule)
    nk = int(bspec.get("keypoints") or 0)
    nk = nk if nk and stride >= 4 + 2 * nk else 0
    c = [f"/* ---- detection head ({head['kind']}): {n} anchors, decoded by k_detect_ssd */",
         _table("el_det_anchors", "double", anchors.reshape(-1)),
         _table("el_det_scale", "double", bspec["scale"]),
         _table("el_det_lut", "double", lut),
         f"static long el_det_cand[{n}];", f"static double el_det_cand_s[{n}];",
         f"static int el_det_cand_c[{n}];",
         f"static double el_det_kb[{4 * max_det}];", f"static double el_det_ks[{max_det}];",
         f"static int el_det_kc[{max_det}];", f"static long el_det_ki[{max_det}];",
         f"static double el_det_kk[{max(2 * nk * max_det, 1)}];", ""]
    tw, th = head["input"]["size"]
    act = 1 if sspec["activation"] == "sigmoid" else 0
    call = _call("detect_ssd", {
        "b": _ptr(bout), "b_int8": int(bq is not None), "b_scale": _d(bq[0] if bq else 1.0),
        "b_zp": _d(bq[1] if bq else 0.0), "stride": stride,
        "s": _ptr(sout), "s_int8": int(sq is not None), "nc": nc, "c0": c0,
        "lut": "el_det_lut", "q_thr": q_thr, "act": act, "clip": _d(clip or 0.0),
        "raw_thr": _d(raw_thr), "thr": _d(thr), "anchors": "el_det_anchors", "n": n,
        "yx": int(bspec["coords"] == "yxhw"), "scale": "el_det_scale",
        "exp_size": int(bspec["exp_size"]), "tw": _d(float(tw)), "th": _d(float(th)),
        "nms": int(nms == "greedy"), "iou": _d(head["nms_iou"]),
        "by_class": int(not head["class_agnostic"]), "max_det": max_det,
        "cand": "el_det_cand", "cand_s": "el_det_cand_s", "cand_c": "el_det_cand_c",
        "kb": "el_det_kb", "ks": "el_det_ks", "kc": "el_det_kc", "nk": nk, "ki": "el_det_ki",
        "kk": "el_det_kk", "count": "&count"})
    c.append(_wrapper(prefix, low, call, nk))
    what = (f"scores >= {prefix.upper()}_MIN_SCORE"
            + (f" (int8 >= {q_thr})" if sq is not None else "")
            + (f", greedy NMS at IoU {head['nms_iou']}" if nms == "greedy" else ""))
    h = _common_header(prefix, head, what, nk)
    work = n * (8 + 8 + 4) + max_det * (32 + 8 + 4 + 8 + 16 * nk)
    return DetectPlan(list(HEADS[head["kind"]].kernels), "\n".join(c), h,
                      {"kind": head["kind"], "anchors": n, "int8_scores": sq is not None,
                       "bit_exact": sq is not None and bq is not None,
                       "int8_threshold": q_thr if sq is not None else None,
                       "max_detections": max_det, "keypoints": nk, "work_bytes": work,
                       "table_bytes": int(anchors.size * 8 + 32 + lut.size * 8)})


def _plan_centroids(head, low, prefix, quant_of) -> DetectPlan:
    hspec = head["heatmap"]
    out = _output(low, head, hspec["output"], 0, "heatmap.output")
    shape = list(out["shape"])
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        _fail(f"heatmap output '{out['name']}' has shape {out['shape']}, expected 3 or 4 dimensions")
    nchw = hspec["layout"] == "NCHW"
    nch, h, w = (shape[0], shape[1], shape[2]) if nchw else (shape[2], shape[0], shape[1])
    q = _quant(head, out, quant_of)
    act = hspec["activation"]
    if act == "softmax" or (q is None and act != "none"):
        _fail(f"heatmap.activation '{act}' is not supported in C "
              f"({'none or sigmoid' if q is not None else 'none'} for a {out['dtype']} heatmap)")
    lut = _int8_table(head, out["name"], q, act, None) if q is not None else np.zeros(1)
    c0 = 1 if hspec["background"] else 0
    if nch <= c0:
        _fail(f"heatmap output '{out['name']}' has {nch} channel(s), no class besides the background")
    tw, th = head["input"]["size"]
    thr = float(head["min_score"])
    max_det = head["max_detections"]
    cells = h * w
    c = [f"/* ---- detection head (centroids): {h} x {w} cells, decoded by k_detect_centroids */",
         _table("el_det_lut", "double", lut),
         f"static double el_det_best[{cells}];", f"static int el_det_cls[{cells}];",
         f"static long el_det_stack[{cells}];",
         f"static double el_det_kb[{4 * max_det}];", f"static double el_det_ks[{max_det}];",
         f"static int el_det_kc[{max_det}];", f"static long el_det_key[{max_det}];", ""]
    call = _call("detect_centroids", {
        "m": _ptr(out), "is_int8": int(q is not None), "lut": "el_det_lut", "h": h, "w": w,
        "nch": nch, "nchw": int(nchw), "c0": c0, "thr": _d(thr), "cell_w": _d(tw / w),
        "cell_h": _d(th / h), "max_det": max_det, "best": "el_det_best", "cls": "el_det_cls",
        "stack": "el_det_stack", "kb": "el_det_kb", "ks": "el_det_ks", "kc": "el_det_kc",
        "kkey": "el_det_key", "count": "&count"})
    c.append(_wrapper(prefix, low, call))
    h_lines = _common_header(prefix, head, f"cells scoring >= {prefix.upper()}_MIN_SCORE, "
                                           "adjacent cells of one class merged into one object")
    return DetectPlan(list(HEADS["centroids"].kernels), "\n".join(c), h_lines,
                      {"kind": "centroids", "cells": [h, w], "int8_scores": q is not None, "bit_exact": q is not None,
                       "max_detections": max_det, "work_bytes": cells * 20 + max_det * 52,
                       "table_bytes": int(lut.size * 8)})


def _plan_yolo(head, low, prefix, quant_of) -> DetectPlan:
    kind = head["kind"]
    out = _output(low, head, head.get("output"), 0, "output")
    shape = list(out["shape"])
    if len(shape) == 3:
        shape = shape[1:]
    if len(shape) != 2:
        _fail(f"output '{out['name']}' has shape {out['shape']}, expected [1, N, k] or [1, k, N]")
    rows, cols = shape
    nc = len(head["labels"]) or None
    transposed = kind == "yolov8" and ((nc is not None and rows == 4 + nc and cols != 4 + nc)
                                       or (nc is None and rows < cols))
    n, k = (cols, rows) if transposed else (rows, cols)
    si, sj = (1, cols) if transposed else (cols, 1)
    first = 5 if kind == "yolov5" else 4
    if k < first + (kind == "yolov8"):
        _fail(f"output '{out['name']}' has {k} values per box, too few for {kind}")
    q = _quant(head, out, quant_of)
    thr = float(head["min_score"])
    lut = _int8_table(head, out["name"], q, "none", None) if q is not None else np.zeros(1)
    q_thr = _q_threshold(lut, thr) if q is not None else 128
    nms, max_det = head["nms"], head["max_detections"]
    if nms == "weighted":
        _fail("nms 'weighted' is not supported in C (use greedy or none)")
    c = [f"/* ---- detection head ({kind}): {n} boxes, decoded by k_detect_yolo */",
         _table("el_det_lut", "double", lut),
         f"static long el_det_cand[{n}];", f"static double el_det_cand_s[{n}];",
         f"static int el_det_cand_c[{n}];",
         f"static double el_det_kb[{4 * max_det}];", f"static double el_det_ks[{max_det}];",
         f"static int el_det_kc[{max_det}];", ""]
    call = _call("detect_yolo", {
        "a": _ptr(out), "is_int8": int(q is not None), "lut": "el_det_lut", "n": n, "k": k,
        "si": si, "sj": sj, "obj": int(kind == "yolov5"), "q_thr": q_thr, "thr": _d(thr),
        "nms": int(nms == "greedy"), "iou": _d(head["nms_iou"]),
        "by_class": int(not head["class_agnostic"]), "max_det": max_det,
        "cand": "el_det_cand", "cand_s": "el_det_cand_s", "cand_c": "el_det_cand_c",
        "kb": "el_det_kb", "ks": "el_det_ks", "kc": "el_det_kc", "count": "&count"})
    c.append(_wrapper(prefix, low, call))
    what = (f"scores >= {prefix.upper()}_MIN_SCORE"
            + (f" (int8 >= {q_thr})" if q is not None and kind == "yolov8" else "")
            + (f", greedy NMS at IoU {head['nms_iou']}" if nms == "greedy" else ""))
    return DetectPlan(list(HEADS[kind].kernels), "\n".join(c), _common_header(prefix, head, what),
                      {"kind": kind, "boxes": n, "int8_scores": q is not None, "bit_exact": q is not None,
                       "int8_threshold": q_thr if q is not None and kind == "yolov8" else None,
                       "max_detections": max_det, "work_bytes": n * 20 + max_det * 44,
                       "table_bytes": int(lut.size * 8)})


def plan(head: dict, low, prefix: str, quant_of) -> DetectPlan:
    """The C for ``head`` on the lowered model ``low``; ``quant_of(name)`` gives an int8
    output's (scale, zero point) when the head does not record it."""
    kind = head["kind"]
    if kind not in SUPPORTED:
        _fail(f"kind '{kind}' is not decoded in C yet (supported: {', '.join(SUPPORTED)})")
    if len(low.inputs) != 1:
        _fail(f"a detector takes one input; this model takes {len(low.inputs)}")
    if kind == "centroids":
        return _plan_centroids(head, low, prefix, quant_of)
    if kind in ("yolov8", "yolov5"):
        return _plan_yolo(head, low, prefix, quant_of)
    return _plan_ssd(head, low, prefix, quant_of)
