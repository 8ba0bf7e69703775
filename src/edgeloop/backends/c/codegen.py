"""Print the lowered kernel calls as one C99 source file and one header."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeloop.backends.c import fast, kernel_lib
from edgeloop.backends.c.callargs import NP_C, array_text, float_lit, int_lit, resolve
from edgeloop.backends.c.lower import CTYPES, Lowered
from edgeloop.errors import UsageError

def _cast_kernel(src: str, dst: str) -> str:
    s, d = CTYPES[src], CTYPES[dst]
    conv = "(x[i] != 0)" if dst == "bool" else f"({d})x[i]"
    return (f"static void k_cast_{src}_{dst}(const {s} *x, {d} *y, long n)\n{{\n    long i;\n"
            f"    for (i = 0; i < n; ++i) y[i] = {conv};\n}}\n")


def _c_ident(prefix: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix or ""):
        raise UsageError(f"--name '{prefix}' is not a valid C identifier")
    return prefix


def _primary_output(low: Lowered) -> int:
    names = [o["name"] for o in low.outputs]
    for want in ("probabilities", "probability_tensor", "output_probability"):
        if want in names:
            return names.index(want)
    for i, o in enumerate(low.outputs):
        if o["dtype"] == "float32":
            return i
    return 0


def _io_quant(model_a, low: Lowered, name: str, is_input: bool):
    """(scale, zero point) of an int8 graph input/output, from its Q/DQ node or metadata."""
    from edgeloop.profile.analysis import constant_array
    a = model_a
    if name in low.quant:
        return low.quant[name]
    nodes = a.nodes
    cands = ([nodes[i] for i, _ in a.consumers.get(name, []) if nodes[i].op_type == "DequantizeLinear"]
             if is_input else
             [nodes[a.producer[name]]] if name in a.producer and nodes[a.producer[name]].op_type
             == "QuantizeLinear" else [])
    for n in cands:
        s = constant_array(a.constants[n.input[1]]) if n.input[1] in a.constants else None
        z = (constant_array(a.constants[n.input[2]]) if len(n.input) > 2 and n.input[2] in a.constants
             else np.zeros(1, np.int8))
        if s is not None and s.size == 1:
            return float(s.ravel()[0]), int(z.ravel()[0])
    return None


def _kept_features(model: onnx.ModelProto) -> tuple[list[int], int | None]:
    """The original-input indices a feature-reduced model reads (metadata from the shrink pass)."""
    from edgeloop.graph import get_metadata

    meta = get_metadata(model)
    kept, n_original = meta.get("kept_features"), meta.get("n_features_original")
    if not kept or not isinstance(n_original, int):
        return [], None
    return [int(k) for k in kept], n_original


def _detect_plan(model, low: Lowered, a, prefix: str):
    """The C of the model's detection head (edgeloop.backends.c.detect), or None."""
    from edgeloop.detect import head_of

    head = head_of(model)
    if head is None:
        return None
    from edgeloop.backends.c import detect

    return detect.plan(head, low, prefix, lambda name: _io_quant(a, low, name, False))


def render(model: onnx.ModelProto, prefix: str = "model"):
    """(c text, h text, info) for ``model``."""
    from edgeloop.backends.c.lower import Lowerer
    prefix = _c_ident(prefix)
    lowerer = Lowerer(model)
    low = lowerer.run()
    a = lowerer.a
    P = prefix.upper()
    consts: list[str] = []
    const_names: dict[int, str] = {}
    body: list[str] = []
    used: list[str] = []
    casts: list[tuple[str, str]] = []

    def tensor_ptr(t: str, off: int, out: bool) -> str:
        dt = lowerer.dtype(t)
        ct = CTYPES[dt]
        base = low.plan.offset_of(t)
        q = "" if out else "const "
        ptr = f"(({q}{ct} *)(el_arena.bytes + {base}))"
        return ptr if not off else f"({ptr} + {off})"

    guard = [""]                    # "", "fast" or "gen": which build uses the call being printed
    const_guards: dict[str, set] = {}

    def const_ptr(arr: np.ndarray) -> str:
        key = id(arr)
        if key not in const_names:
            arr = np.ascontiguousarray(arr)
            nm = f"el_c{len(consts)}"
            ct = NP_C[arr.dtype]
            consts.append((nm, f"static const {ct} {nm}[{max(arr.size, 1)}] = {{\n{array_text(arr)}\n}};\n"))
            const_names[key] = nm
            keep.append(arr)
        const_guards.setdefault(const_names[key], set()).add(guard[0])
        return const_names[key]

    keep: list = []
    scratch: list[str] = []

    def scratch_array(ctype, n):   # a small static work array (not in the arena: no lifetime)
        nm = f"el_s{len(scratch)}"
        scratch.append(f"static {ctype} {nm}[{int(n)}];\n")
        return nm

    handlers = {
        "in": lambda t, off=0: tensor_ptr(t, off, False),
        "out": lambda t, off=0: tensor_ptr(t, off, True),
        # a planned work buffer (an in-place kernel's scratch)
        "arena": lambda buf, dt: f"(({CTYPES[dt]} *)(el_arena.bytes + {low.plan.buffer(buf).offset}))",
        "const": const_ptr, "null": lambda: "0", "scratch": scratch_array,
        "int": int_lit, "float": float_lit,
    }
    kernel_guards: dict[str, set] = {}

    def call_text(call) -> str:
        kname = call.kernel
        if kname.startswith("cast:"):
            _, s, d = kname.split(":")
            if (s, d) not in casts:
                casts.append((s, d))
            fname = f"k_cast_{s}_{d}"
        else:
            if kname not in used:
                used.append(kname)
            kernel_guards.setdefault(kname, set()).add(guard[0])
            fname = "k_" + kname
        args = resolve(call, handlers)
        return f"    {fname}({', '.join(args)});\n"

    for call in low.calls:
        if call.alt is None:
            guard[0] = ""
            text = call_text(call)
        else:   # a fast kernel on DSP cores, the generic one elsewhere (fast.FAST_PRELUDE)
            guard[0] = "fast"
            text = "#if EL_FAST\n" + call_text(call)
            guard[0] = "gen"
            text += "#else\n" + call_text(call.alt) + "#endif\n"
        body.append(f"    /* {call.name} ({call.op}) */\n{text}" + fast.layer_mark(len(body) + 1))

    det = _detect_plan(model, low, a, prefix)   # a detection head: <prefix>_detect
    if det is not None:
        used += [k for k in det.kernels if k not in used]
    kernels = kernel_lib.closure(used)
    # a kernel file only a fast call (or only a generic alternative) needs is compiled only
    # in that build: no unused static function, and no flash for the other one
    only = fast.kernel_guards(kernels, kernel_guards)

    def guarded(text, g):
        return text if not g else f"#if {'' if g == 'fast' else '!'}EL_FAST\n{text}#endif\n"

    system = [h for h in kernel_lib.system_includes(used) if h not in ("stdint.h", "string.h")]
    primary = _primary_output(low)
    in_size = sum(i["nbytes"] for i in low.inputs)
    out = low.outputs[primary]
    arena = max(int(low.arena_size), 1)

    # ---- header
    h = [f"/* {prefix}.h: generated by edgeloop. C99, no malloc, one static arena.",
         " *",
         f" * {prefix}_run(input, output): input is the model's input tensor(s) in its own dtype",
         " * and layout (several inputs: back to back in graph order); output is the primary",
         f" * output (output #{primary}, '{out['name']}'"
         + (": the class probabilities/scores" if len(low.outputs) > 1 else "") + ").",
         f" * {prefix}_run_all(inputs, outputs): one pointer per graph input and output, in graph",
         " * order; a NULL output pointer skips that output.",
         " * Both return 0 on success.", " *", " * Inputs:"]
    for i in low.inputs:
        h.append(f" *   {i['name']}: {i['dtype']} {i['shape']} ({i['nbytes']} bytes)")
    h.append(" * Outputs:")
    for k, o in enumerate(low.outputs):
        h.append(f" *   #{k} {o['name']}: {o['dtype']} {o['shape']} ({o['nbytes']} bytes)")
    h += [" */", f"#ifndef {P}_H", f"#define {P}_H", "", "#include <stdint.h>", "",
          "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
          f"#define {P}_INPUT_SIZE {in_size}", f"#define {P}_OUTPUT_SIZE {out['nbytes']}",
          f"#define {P}_ARENA_SIZE {int(low.arena_size)}",
          f"#define {P}_NUM_INPUTS {len(low.inputs)}", f"#define {P}_NUM_OUTPUTS {len(low.outputs)}",
          f"#define {P}_PRIMARY_OUTPUT {primary}"]
    for k, i in enumerate(low.inputs):
        h.append(f"#define {P}_INPUT{k}_SIZE {i['nbytes']}")
    for k, o in enumerate(low.outputs):
        h.append(f"#define {P}_OUTPUT{k}_SIZE {o['nbytes']}")
    qin = _io_quant(a, low, low.inputs[0]["name"], True) if low.inputs and low.inputs[0]["dtype"] == "int8" else None
    qout = _io_quant(a, low, out["name"], False) if out["dtype"] == "int8" else None
    if qin:
        h += [f"#define {P}_INPUT_SCALE {float_lit(qin[0])}", f"#define {P}_INPUT_ZERO_POINT {qin[1]}"]
    if qout:
        h += [f"#define {P}_OUTPUT_SCALE {float_lit(qout[0])}", f"#define {P}_OUTPUT_ZERO_POINT {qout[1]}"]
    kept, n_original = _kept_features(model)
    if kept:
        h += ["", f"/* Feature reduction: the input holds {len(kept)} of the {n_original} original features,",
              f" * in this order: input[i] = original[{P}_KEPT_FEATURES[i]]. Use as",
              f" * static const int kept[{P}_N_KEPT_FEATURES] = {P}_KEPT_FEATURES; */",
              f"#define {P}_N_FEATURES_ORIGINAL {n_original}", f"#define {P}_N_KEPT_FEATURES {len(kept)}",
              f"#define {P}_KEPT_FEATURES {{{', '.join(str(k) for k in kept)}}}"]
    h += ["", f"int {prefix}_run(const void *input, void *output);",
          f"int {prefix}_run_all(const void *const *inputs, void *const *outputs);",
          *(det.h if det is not None else []), "",
          "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {P}_H */", ""]

    # ---- source
    c = [f"/* {prefix}.c: generated by edgeloop from an ONNX graph; do not edit. */",
         f'#include "{prefix}.h"', "", "#include <stdint.h>", "#include <string.h>"]
    c += [f"#include <{h}>" for h in system]
    c += ["", f"/* the activation arena: {int(low.arena_size)} bytes, laid out by edgeloop's memory "
          f"planner (alignment {low.alignment}) */",
          f"static union {{ uint64_t align; unsigned char bytes[{arena}]; }} el_arena;", "",
          fast.PROFILE_PRELUDE]
    if any(cl.alt is not None for cl in low.calls):
        c.append(fast.FAST_PRELUDE)
    for k in kernels:
        c.append(guarded(kernel_lib.source(k), only.get(k, "")))
    for s, d in casts:
        c.append(_cast_kernel(s, d))
    c += [guarded(text, fast.one_guard(const_guards[nm])) for nm, text in consts]
    c += scratch
    c.append(f"int {prefix}_run_all(const void *const *inputs, void *const *outputs)\n{{")
    for k, i in enumerate(low.inputs):
        c.append(f"    memcpy(el_arena.bytes + {i['offset']}, inputs[{k}], {i['nbytes']});")
    c += [fast.layer_mark(0).rstrip("\n")] + body
    for k, o in enumerate(low.outputs):
        c.append(f"    if (outputs[{k}]) memcpy(outputs[{k}], el_arena.bytes + {o['offset']}, "
                 f"{o['nbytes']});")
    c += ["    return 0;", "}", "",
          f"int {prefix}_run(const void *input, void *output)\n{{",
          f"    const void *ins[{max(len(low.inputs), 1)}];",
          f"    void *outs[{max(len(low.outputs), 1)}];",
          "    int k;"]
    off = 0
    for k, i in enumerate(low.inputs):
        c.append(f"    ins[{k}] = (const unsigned char *)input + {off};")
        off += i["nbytes"]
    c += [f"    for (k = 0; k < {max(len(low.outputs), 1)}; ++k) outs[k] = 0;",
          f"    outs[{primary}] = output;", f"    return {prefix}_run_all(ins, outs);", "}", ""]
    if det is not None:
        c.append(det.c)

    def qinfo(q):
        return {"scale": q[0], "zero_point": q[1]} if q else None

    info = {
        "prefix": prefix,
        "kept_features": kept or None,
        "n_features_original": n_original,
        "files": [f"{prefix}.c", f"{prefix}.h"],
        "arena_size": int(low.arena_size),
        "arena_alignment": low.alignment,
        "precision": low.precision,
        "inputs": low.inputs,
        "outputs": low.outputs,
        "primary_output": primary,
        "input_size": in_size,
        "output_size": out["nbytes"],
        "input_dtype": low.inputs[0]["dtype"] if low.inputs else None,
        "output_dtype": out["dtype"],
        "input_shape": low.inputs[0]["shape"] if low.inputs else None,
        "output_shape": out["shape"],
        "input_quant": qinfo(qin),
        "output_quant": qinfo(qout),
        "kernels": kernels + [f"cast_{s}_{d}" for s, d in casts],
        # the constants of the DSP build (a generic twin's own weights are not compiled there)
        "const_bytes": int(sum(x.nbytes for x, nm in zip(keep, const_names.values())
                               if const_guards.get(nm) != {"gen"})),
        "scratch_bytes": int(sum(int(a[2]) * 8 for cl in low.calls for a in cl.args
                                 if a[0] == "scratch")),
        "n_calls": len(low.calls),
        "detect": det.info if det is not None else None,
        "layers": fast.layer_table(lowerer, low.calls),
    }
    return "\n".join(c), "\n".join(h), info


def generate(model: onnx.ModelProto, out_dir, prefix: str = "model") -> dict:
    """Write ``<prefix>.c`` and ``<prefix>.h`` for ``model`` into ``out_dir``; returns info."""
    c, h, info = render(model, prefix)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((f"{prefix}.c", c), (f"{prefix}.h", h)):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out_dir / name)
    return info


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
