"""The operator registry is the one place: every pattern it (and so the profiler's analysis)
accepts lowers, compiles and runs equal to its reference; nothing else keeps a list.

One graph per float operator (checked against onnxruntime) and one per int8 kernel and
fused epilogue (checked bit for bit against the numpy reference), all compiled into one
shared library in one gcc run.
"""

from __future__ import annotations

import inspect
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.backends.c import CFLAGS, CModel, kernel_lib, reference, registry
from edgeloop.backends.c.codegen import render
from edgeloop.backends.c.lower import Lowerer
from edgeloop.passes.quantize import INT8_OPS
from edgeloop.profile import profile_model
from edgeloop.profile.analysis import EPILOGUE_OPS, analyze

from c_harness import run_sanitized

OPSET = [helper.make_opsetid("", 14)]   # 14: HardSwish
X_Q = [(0.05, 3), (0.08, -5)]      # (scale, zero point) of the int8 activations
Y_Q = (0.06, -2)


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=OPSET)
    m.ir_version = 8
    return m


def _with_output_shapes(m, outs):
    del m.graph.output[:]
    m = onnx.shape_inference.infer_shapes(m)
    m.graph.output.extend([vi for vi in m.graph.value_info if vi.name in outs])
    onnx.checker.check_model(m, full_check=True)
    return m


def _const(name, value, inits):
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def float_case(op, impl, rng):
    """(model, feeds) for the float implementation's sample."""
    nodes, inputs, inits, feeds = [], [], [], {}
    names = []
    for k, (kind, *v) in enumerate(impl.sample.operands):
        nm = f"in{k}"
        if kind in ("x", "x8"):
            if kind == "x":
                feeds[nm] = rng.uniform(-2, 2, v[0]).astype(np.float32)
            else:
                feeds[nm] = rng.integers(-128, 128, v[0]).astype(np.int8)
            inputs.append(helper.make_tensor_value_info(
                nm, TensorProto.FLOAT if kind == "x" else TensorProto.INT8, list(v[0])))
        elif kind == "w":
            _const(nm, rng.normal(0, 0.5, v[0]).astype(np.float32), inits)
        elif kind == "var":
            _const(nm, rng.uniform(0.5, 2, v[0]).astype(np.float32), inits)
        elif kind == "b":
            _const(nm, rng.normal(0, 0.5, v[0]).astype(np.float32), inits)
        elif kind == "i64":
            _const(nm, np.asarray(v[0], np.int64), inits)
        elif kind == "f":
            _const(nm, np.float32(v[0]), inits)
        elif kind == "i8":
            _const(nm, np.int8(v[0]), inits)
        elif kind == "none":
            nm = ""
        names.append(nm)
    outs = [f"out{k}" for k in range(impl.sample.outputs)]
    nodes.append(helper.make_node(op.name, names, outs, **impl.sample.attrs))
    m = _model(nodes, inputs, [helper.make_tensor_value_info(o, 0, None) for o in outs], inits)
    return _with_output_shapes(m, outs), feeds


def int8_case(op, impl, epilogue, rng):
    """(model, feeds) for ``DequantizeLinear -> op -> epilogue -> QuantizeLinear``.

    ``epilogue`` is a tuple of "bias" (a constant Add right after the main op, which then
    has no bias input of its own), "Relu" and "Clip"."""
    nodes, inputs, inits, feeds = [], [], [], {}
    names, x_scales = [], []
    operands = [o for o in impl.sample.operands if not ("bias" in epilogue and o[0] == "b")]
    same = impl.same_q
    for k, (kind, *v) in enumerate(operands):
        nm = f"in{k}"
        if kind == "x":
            s, z = Y_Q if same else X_Q[len(x_scales) % 2]
            feeds[nm] = rng.integers(-128, 128, v[0]).astype(np.int8)
            inputs.append(helper.make_tensor_value_info(nm, TensorProto.INT8, list(v[0])))
            nodes.append(helper.make_node("DequantizeLinear", [nm, _const(f"{nm}_s", np.float32(s), inits),
                                                               _const(f"{nm}_z", np.int8(z), inits)],
                                          [f"{nm}_f"]))
            x_scales.append(s)
            nm = f"{nm}_f"
        elif kind == "w":
            w = rng.integers(-127, 128, v[0]).astype(np.int8)
            per_channel = op.name == "Conv"
            ws = (rng.uniform(0.005, 0.03, v[0][0]) if per_channel else np.asarray(0.02)).astype(np.float32)
            attrs = {"axis": 0} if per_channel else {}
            nodes.append(helper.make_node("DequantizeLinear", [
                _const(f"{nm}_q", w, inits), _const(f"{nm}_s", ws, inits),
                _const(f"{nm}_z", np.zeros(ws.shape, np.int8), inits)], [f"{nm}_f"], **attrs))
            w_scale = ws
            nm = f"{nm}_f"
        elif kind == "b":
            bs = (np.float32(x_scales[0]) * w_scale).astype(np.float32)
            b = rng.integers(-500, 500, v[0]).astype(np.int32)
            nodes.append(helper.make_node("DequantizeLinear", [
                _const(f"{nm}_q", b, inits), _const(f"{nm}_s", bs, inits),
                _const(f"{nm}_z", np.zeros(bs.shape, np.int32), inits)], [f"{nm}_f"],
                **({"axis": 0} if bs.ndim else {})))
            nm = f"{nm}_f"
        elif kind == "i64":
            _const(nm, np.asarray(v[0], np.int64), inits)
        elif kind == "f":
            _const(nm, np.float32(v[0]), inits)
        elif kind == "none":
            nm = ""
        names.append(nm)
    cur = "main"
    if op.name == "QuantizeLinear":     # DequantizeLinear -> QuantizeLinear: a requantization
        cur = names[0]
    else:
        nodes.append(helper.make_node(op.name, names, [cur], **impl.sample.attrs))
    for k, e in enumerate(e for e in epilogue if e != "residual"):
        nxt = f"ep{k}"
        if e == "bias":
            wshape = next(v[0] for kind, *v in impl.sample.operands if kind == "w")
            first = op.name == "Conv" or impl.sample.attrs.get("transB")
            shape = wshape[0] if first else wshape[-1]     # the output channels
            b = rng.normal(0, 0.3, shape).astype(np.float32)
            b = b.reshape(1, -1, 1, 1) if op.name == "Conv" else b
            nodes.append(helper.make_node("Add", [cur, _const(f"bias{k}", b, inits)], [nxt]))
        elif e == "Relu":
            nodes.append(helper.make_node("Relu", [cur], [nxt]))
        elif e == "Clip":
            nodes.append(helper.make_node("Clip", [cur, _const(f"lo{k}", np.float32(-0.3), inits),
                                                   _const(f"hi{k}", np.float32(0.4), inits)], [nxt]))
        cur = nxt
    ys, yz = impl.out_q or Y_Q
    nodes.append(helper.make_node("QuantizeLinear", [cur, _const("y_s", np.float32(ys), inits),
                                                     _const("y_z", np.int8(yz), inits)], ["y"]))
    m = _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits)
    m = _with_output_shapes(m, ["y"])
    if impl.residual_add and "residual" in epilogue:
        # ... -> QuantizeLinear(c) -> DequantizeLinear -> Add(., DequantizeLinear(skip)) -> Q
        shape = [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
        feeds["skip"] = rng.integers(-128, 128, shape).astype(np.int8)
        del m.graph.output[:]
        m.graph.node.extend([
            helper.make_node("DequantizeLinear", ["y", "y_s", "y_z"], ["c_f"]),
            helper.make_node("DequantizeLinear", ["skip", _const("skip_s", np.float32(0.07), inits),
                                                  _const("skip_z", np.int8(4), inits)], ["skip_f"]),
            helper.make_node("Add", ["skip_f", "c_f"], ["sum"]),
            helper.make_node("QuantizeLinear", ["sum", _const("out_s", np.float32(0.09), inits),
                                                _const("out_z", np.int8(-1), inits)], ["out"])])
        m.graph.initializer.extend(inits[-4:])
        m.graph.input.append(helper.make_tensor_value_info("skip", TensorProto.INT8, shape))
        m = _with_output_shapes(m, ["out"])
    return m, feeds


def int8_patterns(impl):
    pats = [()] + [(e,) for e in impl.epilogues]
    if impl.bias_add:
        pats += [("bias",), ("bias", "Relu")]
    if impl.residual_add:    # the residual Add fused into the kernel, written over the skip
        pats += [("residual",), ("Relu", "residual")]
    return pats


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for op in registry.OPS.values():
        if op.float is not None and op.float.sample is not None:
            out.append(("float", op.name, ()) + float_case(op, op.float, rng))
        if op.int8 is not None:
            for pat in int8_patterns(op.int8):
                out.append(("int8", op.name, pat) + int8_case(op, op.int8, pat, rng))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("registry")
    cases = []
    for k, (kind, name, pat, model, feeds) in enumerate(_cases()):
        text, header, info = render(model, f"r{k}")
        (d / f"r{k}.c").write_text(text)
        (d / f"r{k}.h").write_text(header)
        cases.append((k, kind, name, pat, model, feeds, info))
    lib = d / "libregistry.so"
    r = subprocess.run(["gcc", *CFLAGS, "-O1", "-shared", "-fPIC", "-o", str(lib),
                        *[str(d / f"r{k}.c") for k, *_ in cases], "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:3000]
    return lib, cases, d


def test_every_registry_pattern_lowers_compiles_and_matches_its_reference(built):
    lib, cases, _ = built
    covered_float = {name for _, kind, name, *_ in cases if kind == "float"}
    covered_int8 = {name for _, kind, name, *_ in cases if kind == "int8"}
    # every operator has a case, except the ONNX-ML ones (tests/test_backend_c_ml.py)
    assert {o.name for o in registry.OPS.values() if o.float} - covered_float == \
        {o.name for o in registry.OPS.values() if o.domain == "ai.onnx.ml"}
    assert covered_int8 == {o.name for o in registry.OPS.values() if o.int8}
    failures = []
    for k, kind, name, pat, model, feeds, info in cases:
        label = f"{kind} {name} {'+'.join(pat) or '-'}"
        xs = [feeds[i["name"]] for i in info["inputs"]]
        got = CModel(lib, info).run_all(*xs)
        if kind == "int8":
            a = analyze(model)
            work = [s for s in a.steps if s.kind != "alias"]
            if len(work) != 1 or work[0].kind != "kernel" or work[0].op != name:
                failures.append(f"{label}: not one int8 kernel: {[(s.kind, s.op) for s in work]}")
                continue
            if "residual" in pat and (work[0].residual is None or work[0].inplace_input != "skip"):
                failures.append(f"{label}: the residual Add is not fused over the skip tensor")
            low = Lowerer(model).run()
            # fast kernels too (a generated per-shape copy counts as the file it specialises)
            used = {kernel_lib.base(k.kernel) for c in low.calls for k in (c, c.alt) if k}
            assert used <= set(registry.OPS[name].int8.kernels), label
            want = reference.run(low, *xs)
            if not all(np.array_equal(g, w) for g, w in zip(got, want)):
                failures.append(f"{label}: C != numpy reference")
        else:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            want = sess.run(None, feeds)
            for g, w in zip(got, want):
                w = np.asarray(w)
                if g.dtype.kind == "f":
                    ok = np.allclose(g, w.reshape(g.shape), rtol=1e-5, atol=1e-6, equal_nan=True)
                else:
                    ok = np.array_equal(g, w.reshape(g.shape))
                if not ok:
                    failures.append(f"{label}: C != onnxruntime")
    assert not failures, failures


def test_every_registry_pattern_is_clean_under_address_and_undefined_sanitizers(built, tmp_path):
    """The same C under ASan + UBSan: no out-of-bounds access or undefined behaviour in any
    kernel (the int8 ones included), and the same answers as the normal build."""
    lib, cases, src = built
    runs = [(src / f"r{k}.c", info, [feeds[i["name"]] for i in info["inputs"]])
            for k, kind, name, pat, model, feeds, info in cases]
    for (_, info, xs), got in zip(runs, run_sanitized(runs, tmp_path)):
        want = CModel(lib, info).run_all(*xs)
        assert all(np.array_equal(g, w, equal_nan=g.dtype.kind == "f") for g, w in zip(got, want)), \
            info["prefix"]


def _conv_then(op_type, *, bias_in_conv=False):
    """DequantizeLinear -> Conv -> <op_type>(constant) -> QuantizeLinear."""
    rng = np.random.default_rng(1)
    inits = []
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    conv_in = ["x_f", "w_f"] + (["cb"] if bias_in_conv else [])
    if bias_in_conv:
        _const("cb", rng.normal(0, 0.2, 4).astype(np.float32), inits)
    nodes = [
        helper.make_node("DequantizeLinear", ["x", _const("xs", np.float32(0.05), inits),
                                              _const("xz", np.int8(1), inits)], ["x_f"]),
        helper.make_node("DequantizeLinear", [_const("wq", w, inits), _const("ws", np.float32(0.01), inits),
                                              _const("wz", np.int8(0), inits)], ["w_f"]),
        helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(op_type, ["c", _const("k", np.full((1, 4, 1, 1), 0.7, np.float32), inits)], ["e"]),
        helper.make_node("QuantizeLinear", ["e", _const("ys", np.float32(0.1), inits),
                                            _const("yz", np.int8(0), inits)], ["y"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 3, 6, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4, 6, 6])], inits)


@pytest.mark.parametrize("op_type,bias_in_conv", [("Mul", False), ("Sub", False), ("Add", True)])
def test_epilogue_no_kernel_fuses_stays_float_and_exports(op_type, bias_in_conv, tmp_path):
    # the profiler used to plan these as one int8 kernel, which export then refused
    from edgeloop.backends.c import compile_shared, generate

    m = _conv_then(op_type, bias_in_conv=bias_in_conv)
    steps = [s for s in analyze(m).steps if s.kind != "alias"]
    assert not any(s.kind == "kernel" for s in steps), [(s.kind, s.op) for s in steps]
    info = generate(m, tmp_path)
    assert info["arena_size"] == profile_model(m, latency=False)["peak_ram_bytes"]
    x = np.random.default_rng(2).integers(-128, 128, (1, 3, 6, 6)).astype(np.int8)
    got = CModel(compile_shared(tmp_path), info).run(x)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_reference_functions_take_the_c_kernels_parameters():
    assert reference.KERNELS
    for name, fn in reference.KERNELS.items():
        c = [p.name for p in kernel_lib.signature(name)]
        assert list(inspect.signature(fn).parameters) == c, name


def test_registry_names_real_kernels_methods_and_codes():
    files = kernel_lib.files()
    used = set()
    for op in registry.OPS.values():
        for impl in (op.float, op.int8):
            if impl is None:
                continue
            assert hasattr(Lowerer, impl.lower), (op.name, impl.lower)
            for k in impl.kernels:
                assert k in files and files[k].path.suffix == ".c", (op.name, k)
                used.add(k)
            if impl.code:
                assert isinstance(registry.code(impl), int)
    # every kernel file belongs to some operator or detection head
    used |= {k for h in registry.HEADS.values() for k in h.kernels}
    assert {n for n, f in files.items() if f.path.suffix == ".c"} == used
    # the codes are the C file's: Relu and Ceil differ and Clip is what unary_f32 switches on
    codes = kernel_lib.constants("unary_f32")
    assert codes["EL_UNARY_CLIP"] == registry.code(registry.OPS["Clip"].float)
    assert len(set(codes.values())) == len(codes)


def test_quantizer_and_analysis_read_the_registry():
    assert set(INT8_OPS) == {o.name for o in registry.OPS.values() if o.int8 and o.int8.quantize}
    assert EPILOGUE_OPS == {"Relu", "Clip", "Add"}
    for op in ("LeakyRelu", "Sub", "Mul", "Div"):
        assert op not in EPILOGUE_OPS


def test_profiler_reads_the_registry_without_loading_the_generator():
    import ast
    import sys

    code = ("import sys, edgeloop.profile, edgeloop.passes.quantize; "
            "print(sorted(m for m in sys.modules if m.startswith('edgeloop.backends')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ast.literal_eval(r.stdout) == ["edgeloop.backends", "edgeloop.backends.c",
                              "edgeloop.backends.c.registry"]
