"""The Cortex-M4 harness: C run on QEMU's mps2-an386 gives the host's outputs,
instruction counts are exact, and a missing toolchain is one clear line."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeloop.backends.c import cortexm
from edgeloop.errors import EdgeloopError

TOOLS = cortexm.toolchain()
HOST_CC = "gcc"


def _need_toolchain():
    if TOOLS["missing"]:
        msg = f"Cortex-M toolchain missing: {TOOLS['missing']} ({TOOLS['install']})"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI installs it (.ci/run): never skip there
        pytest.skip(msg)


needs_toolchain = pytest.mark.usefixtures("_toolchain")


@pytest.fixture
def _toolchain():
    _need_toolchain()


def _c_list(values) -> str:
    return ", ".join(str(int(v)) for v in np.asarray(values).ravel())


def _write_model(d: Path, prefix: str, header_macros: dict, body: str) -> None:
    up = prefix.upper()
    macros = "\n".join(f"#define {up}_{k} {v}" for k, v in header_macros.items())
    (d / f"{prefix}.h").write_text(
        f"#ifndef {up}_H\n#define {up}_H\n{macros}\n"
        f"int {prefix}_run(const void *input, void *output);\n#endif\n")
    (d / f"{prefix}.c").write_text(f'#include <stdint.h>\n#include <math.h>\n#include "{prefix}.h"\n{body}\n')


def _host_lib(d: Path, prefix: str):
    lib = d / f"lib{prefix}_host.so"
    subprocess.run([HOST_CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    str(d / f"{prefix}.c"), "-o", str(lib), "-lm"], check=True)
    so = ctypes.CDLL(str(lib))
    fn = getattr(so, f"{prefix}_run")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _host_run(fn, x: np.ndarray, out_dtype, out_len: int) -> np.ndarray:
    x = np.ascontiguousarray(x)
    y = np.zeros(out_len, dtype=out_dtype)
    assert fn(x.ctypes.data, y.ctypes.data) == 0
    return y


def _quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite-style: real = m * 2**(shift - 31), m in [2**30, 2**31)."""
    mant, exp = np.frexp(real)
    m = int(round(mant * (1 << 31)))
    if m == 1 << 31:
        m //= 2
        exp += 1
    return m, int(exp)


def _requant_ref(acc: np.ndarray, m: int, shift: int, zp: int) -> np.ndarray:
    """numpy model of the C kernel's fixed-point requantization (rounding doubling
    high multiply, then rounding right shift), as integers in Python."""
    out = []
    for a in acc.astype(np.int64).ravel():
        prod = int(a) * m
        nudge = (1 << 30) if prod >= 0 else 1 - (1 << 30)
        hi = int((prod + nudge) / (1 << 31))  # C truncating division
        rs = -shift
        if rs > 0:
            mask = (1 << rs) - 1
            rem = hi & mask
            thr = (mask >> 1) + (1 if hi < 0 else 0)
            hi = (hi >> rs) + (1 if rem > thr else 0)
        else:
            hi = hi << (-rs)
        out.append(min(127, max(-128, hi + zp)))
    return np.array(out, dtype=np.int8).reshape(acc.shape)


@pytest.fixture(scope="module")
def digits_kernels(tmp_path_factory):
    """Two small hand-written C "models" fitted to scikit-learn's digits: an int8
    template-matching layer with TFLite-style requantization, and a float layer
    with a softmax (expf). Weights come from the training half, inputs are the
    test half."""
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("kernels")
    X, y = load_digits(return_X_y=True)
    Xtr, ytr, Xte = X[::2], y[::2], X[1::2]
    means = np.stack([Xtr[ytr == c].mean(0) for c in range(10)])          # [10, 64], 0..16
    w = means - means.mean(0)
    w_q = np.clip(np.round(w / np.abs(w).max() * 127), -127, 127).astype(np.int8)
    bias = (-64 * w_q.astype(np.int64).sum(1)).astype(np.int32)  # centres the pixel range
    x_q = np.clip(np.round(Xte * 255 / 16) - 128, -128, 127).astype(np.int8)  # int8, zero point -128
    acc = (x_q.astype(np.int64) + 128) @ w_q.T.astype(np.int64) + bias
    m, shift = _quantize_multiplier(255.0 / float(np.abs(acc).max()) * 0.9)
    _write_model(d, "qi", {"INPUT_SIZE": 64, "OUTPUT_SIZE": 10, "ARENA_SIZE": 40}, f"""
static const int8_t qi_w[640] = {{{_c_list(w_q)}}};
static const int32_t qi_b[10] = {{{_c_list(bias)}}};
static int32_t qi_arena[10];
static int32_t qi_rdhm(int32_t a, int32_t b)
{{
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1ll << 30) : (1 - (1ll << 30));
    return (int32_t)((ab + nudge) / (1ll << 31));
}}
static int32_t qi_rshift(int32_t x, int e)
{{
    int32_t mask = (int32_t)((1u << e) - 1u), rem = x & mask, thr = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > thr ? 1 : 0);
}}
int qi_run(const void *input, void *output)
{{
    const int8_t *x = (const int8_t *)input;
    int8_t *o = (int8_t *)output;
    int i, k;
    for (k = 0; k < 10; ++k) {{
        int32_t a = qi_b[k];
        for (i = 0; i < 64; ++i) {{
            a += ((int32_t)x[i] + 128) * qi_w[k * 64 + i];
        }}
        qi_arena[k] = a;
    }}
    for (k = 0; k < 10; ++k) {{
        int32_t v = qi_rdhm(qi_arena[k], {m});
        v = {shift} < 0 ? qi_rshift(v, -({shift})) : v * (1 << ({shift} > 0 ? {shift} : 0));
        o[k] = (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
    }}
    return 0;
}}""")
    wf = (w / 16.0).astype(np.float32)
    _write_model(d, "qf", {"INPUT_SIZE": 256, "OUTPUT_SIZE": 40, "ARENA_SIZE": 40}, f"""
static const float qf_w[640] = {{{", ".join(repr(float(v)) + "f" for v in wf.ravel())}}};
static float qf_arena[10];
int qf_run(const void *input, void *output)
{{
    const float *x = (const float *)input;
    float *o = (float *)output, mx, sum = 0.0f;
    int i, k;
    for (k = 0; k < 10; ++k) {{
        float a = 0.0f;
        for (i = 0; i < 64; ++i) {{
            a += x[i] * qf_w[k * 64 + i];
        }}
        qf_arena[k] = a * 0.05f;
    }}
    mx = qf_arena[0];
    for (k = 1; k < 10; ++k) {{
        mx = qf_arena[k] > mx ? qf_arena[k] : mx;
    }}
    for (k = 0; k < 10; ++k) {{
        o[k] = expf(qf_arena[k] - mx);
        sum += o[k];
    }}
    for (k = 0; k < 10; ++k) {{
        o[k] /= sum;
    }}
    return 0;
}}""")
    return {"dir": d, "x_q": x_q, "x_f": Xte.astype(np.float32), "acc": acc, "m": m, "shift": shift,
            "y": y[1::2], "wf": wf}


@needs_toolchain
def test_int8_kernel_on_cortex_m4_equals_host_bit_for_bit(digits_kernels, tmp_path):
    k = digits_kernels
    xs = list(k["x_q"][:40])
    host = _host_lib(k["dir"], "qi")
    want = [_host_run(host, x, np.int8, 10) for x in xs]
    # The host build is itself right: it equals the integer model in numpy.
    ref = _requant_ref(k["acc"][:40], k["m"], k["shift"], 0)
    np.testing.assert_array_equal(np.stack(want), ref)
    # ... and it classifies digits (templates, so well above chance).
    assert (ref.argmax(1) == k["y"][:40]).mean() > 0.8

    elf = cortexm.build_firmware(k["dir"], "qi", xs, tmp_path)
    outs, insns = cortexm.run_firmware(elf)
    got = [np.frombuffer(o, dtype=np.int8) for o in outs]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))
    # 640 MACs plus requantization, per inference; only the rounding and clamping
    # branches depend on the data.
    assert len(insns) == 40 and max(insns) - min(insns) < 64
    assert 640 * 3 < insns[0] < 640 * 12


@needs_toolchain
def test_verify_reports_sizes_ram_and_match(digits_kernels):
    k = digits_kernels
    xs = list(k["x_f"][:30])
    host = _host_lib(k["dir"], "qf")
    want = [_host_run(host, x, np.float32, 10) for x in xs]
    np.testing.assert_allclose(np.stack(want).sum(1), 1.0, rtol=1e-5)
    rep = cortexm.verify(k["dir"], "qf", {"arena_size": 40}, xs, want)
    assert rep["outputs_match"] and rep["matches"] == 30
    assert rep["max_abs_diff"] <= 1e-5
    assert rep["board"] == "mps2-an386" and rep["cpu"] == "cortex-m4"
    assert "not cycles" in rep["instruction_count_note"]
    # Flash: the float weights (2,560 bytes of rodata) plus the code, and nothing of the harness.
    assert rep["flash"]["rodata_bytes"] >= 640 * 4
    assert 640 * 4 < rep["flash_bytes"] < 640 * 4 + 1024
    # RAM: the 40-byte static arena plus a small measured stack.
    assert rep["arena_bytes"] == 40 and 0 < rep["stack_bytes"] < 256
    assert rep["ram_bytes"] == 40 + rep["stack_bytes"]
    assert rep["instructions_per_inference"] > 640 * 2

    # A wrong expectation is reported, not hidden.
    bad = [w.copy() for w in want]
    bad[3][0] *= 1.001
    rep = cortexm.verify(k["dir"], "qf", {"arena_size": 40}, xs, bad)
    assert not rep["outputs_match"] and rep["matches"] == 29


LOOP_C = """
__attribute__((noinline)) static void lp_nops(void)
{
    /* 1000 instructions of straight-line code */
    __asm__ volatile(".rept 1000\\n\\tnop\\n\\t.endr");
}

int lp_run(const void *input, void *output)
{
    const uint32_t *p = (const uint32_t *)input;
    uint32_t n = p[0];
    ((uint32_t *)output)[0] = n;
    if (p[1]) {
        lp_nops();
    }
    if (n) {
        /* two instructions per iteration */
        __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+r"(n) : : "cc");
    }
    return 0;
}
"""


def _loop_model(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    _write_model(d, "lp", {"INPUT_SIZE": 8, "OUTPUT_SIZE": 4, "ARENA_SIZE": 0}, LOOP_C)


@needs_toolchain
def test_instruction_count_is_exact_on_known_code(tmp_path):
    _loop_model(tmp_path / "src")
    ns = [1, 2, 3, 4, 5, 6, 7, 8, 10, 100, 1000, 12345, 200000]
    xs = [np.array([n, 0], dtype=np.uint32) for n in ns] + [np.array([n, 1], dtype=np.uint32) for n in (1, 7)]
    elf = cortexm.build_firmware(tmp_path / "src", "lp", xs, tmp_path / "build")
    outs, insns = cortexm.run_firmware(elf)
    assert [int(np.frombuffer(o, np.uint32)[0]) for o in outs] == ns + [1, 7]
    loop = np.array(insns[:len(ns)])
    # Linear in n with slope exactly 2 (subs + bne), to the instruction, for every n:
    # the phase of the loop against the 40-instruction timer tick does not show.
    fixed = loop - 2 * np.array(ns)
    assert len(set(fixed.tolist())) == 1, fixed
    # The fixed part is lp_run's own straight-line code (loads, stores, two tests,
    # return): a handful of instructions, no harness overhead.
    assert 4 <= fixed[0] <= 12
    # 1000 nops of straight-line code add exactly 1000 instructions plus the call
    # and return around them and the not-taken branch that skips them: 1003.
    nops = np.array(insns[len(ns):]) - loop[[ns.index(1), ns.index(7)]]
    assert nops.tolist() == [1003, 1003]


def _trace_counts(elf: Path, func: str, tmp_path: Path) -> list[int]:
    """Independent count: QEMU single-stepping with an execution log (one line per
    instruction), counting the instructions from each entry of ``func`` until the
    caller resumes."""
    nm = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    syms = {parts[2]: int(parts[0], 16) for parts in (ln.split() for ln in nm.splitlines()) if len(parts) == 3}
    entry, caller = syms[func] & ~1, syms["el_measure"] & ~1
    callee_end = min(a for a in syms.values() if a > caller) & ~1
    log = tmp_path / "exec.log"
    base = [c for c in cortexm.qemu_command(elf) if c not in ("-icount", "shift=0")]
    for step in (["-singlestep"], ["-accel", "tcg,one-insn-per-tb=on"]):
        proc = subprocess.run(base + step + ["-d", "exec,nochain", "-D", str(log)], capture_output=True,
                              timeout=120)
        if proc.returncode == 0 and log.exists():
            break
    pcs = [int(m.group(1), 16) for m in re.finditer(r"\[[0-9a-f]+/([0-9a-f]+)/", log.read_text())]
    counts, k = [], 0
    while k < len(pcs):
        if pcs[k] == entry:
            start = k
            while not (caller <= pcs[k] < callee_end):
                k += 1
            counts.append(k - start)
        k += 1
    return counts


@needs_toolchain
def test_instruction_count_equals_a_single_step_trace(tmp_path):
    _loop_model(tmp_path / "src")
    xs = [np.array([n, f], dtype=np.uint32) for n, f in ((3, 0), (50, 0), (9, 1))]
    elf = cortexm.build_firmware(tmp_path / "src", "lp", xs, tmp_path / "build", stack_paint_bytes=256)
    _, insns = cortexm.run_firmware(elf)
    assert _trace_counts(elf, "lp_run", tmp_path) == insns


@needs_toolchain
def test_stack_high_water_mark_is_measured(tmp_path):
    _write_model(tmp_path, "st", {"INPUT_SIZE": 4, "OUTPUT_SIZE": 4, "ARENA_SIZE": 0}, """
int st_run(const void *input, void *output)
{
    volatile uint8_t buf[2000];
    uint32_t n = ((const uint32_t *)input)[0], i, s = 0;
    for (i = 0; i < n; ++i) buf[1999 - i] = (uint8_t)i; /* from the top of the frame down */
    for (i = 0; i < n; ++i) s += buf[1999 - i];
    ((uint32_t *)output)[0] = s;
    return 0;
}""")
    xs = [np.array([n], dtype=np.uint32) for n in (16, 2000)]
    res = cortexm.run_firmware(cortexm.build_firmware(tmp_path, "st", xs, tmp_path / "b"))
    assert [int(np.frombuffer(o, np.uint32)[0]) for o in res.outputs] == [120, sum(i % 256 for i in range(2000))]
    # The whole buffer was written in run 2; only its top 16 bytes in run 1.
    assert 2000 <= res.stack_bytes[1] < 2000 + 64
    assert 16 <= res.stack_bytes[0] < 64


@needs_toolchain
def test_fault_and_hang_are_clear_errors(tmp_path):
    _write_model(tmp_path, "bad", {"INPUT_SIZE": 4, "OUTPUT_SIZE": 4, "ARENA_SIZE": 0}, """
int bad_run(const void *input, void *output)
{
    uint32_t v = ((const uint32_t *)input)[0];
    if (v == 1u) {
        v = *(volatile uint32_t *)0xF0000000u; /* no memory there: bus fault */
    }
    while (v == 2u) {
    }
    ((uint32_t *)output)[0] = v;
    return 0;
}""")
    elf = cortexm.build_firmware(tmp_path, "bad", [np.array([1], np.uint32)], tmp_path / "f")
    with pytest.raises(EdgeloopError, match="faulted"):
        cortexm.run_firmware(elf, timeout=30)
    elf = cortexm.build_firmware(tmp_path, "bad", [np.array([2], np.uint32)], tmp_path / "h")
    with pytest.raises(EdgeloopError, match="did not finish within 2 s"):
        cortexm.run_firmware(elf, timeout=2)
    # An input of the wrong size is refused before compiling.
    with pytest.raises(EdgeloopError, match="BAD_INPUT_SIZE = 4"):
        cortexm.build_firmware(tmp_path, "bad", [np.zeros(3, np.uint32)], tmp_path / "s")


def test_missing_toolchain_is_one_line_naming_the_packages(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    tools = cortexm.toolchain()
    assert set(tools["missing"]) >= {"arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"}
    (tmp_path / "m.c").write_text("int m_run(const void *i, void *o) { (void)i; (void)o; return 0; }\n")
    (tmp_path / "m.h").write_text("int m_run(const void *i, void *o);\n")
    with pytest.raises(EdgeloopError) as err:
        cortexm.verify(tmp_path, "m", {"arena_size": 0}, [np.zeros(1, np.int8)], [np.zeros(1, np.int8)])
    msg = str(err.value)
    assert "\n" not in msg
    assert "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm" in msg
    assert "arm-none-eabi-gcc" in msg.split("install them")[0]
    with pytest.raises(EdgeloopError, match="apt-get install"):
        cortexm.build_firmware(tmp_path, "m", [np.zeros(1, np.int8)], tmp_path / "w")


# ----- the C backend's generated code, on the emulated Cortex-M4 ---------------------------


@needs_toolchain
def test_generated_digits_mlp_runs_on_cortex_m4_like_on_the_host(tmp_path):
    """A float MLP on scikit-learn's digits: the generated C under QEMU gives the host
    build's probabilities for the whole test half and scikit-learn's labels."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    import edgeloop
    from edgeloop.backends.c import CModel, generate

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    clf = MLPClassifier((24,), max_iter=400, random_state=0).fit(X[::2], y[::2])
    info = generate(edgeloop.load(clf), tmp_path / "c", "digits")
    host = CModel(tmp_path / "c", info)
    Xte = X[1::2][:150]
    xs = [Xte[i:i + 1] for i in range(len(Xte))]
    want = [host.run(x) for x in xs]
    rep = cortexm.verify(tmp_path / "c", "digits", info, xs, want)
    assert rep["outputs_match"] and rep["matches"] == len(xs), rep["max_abs_diff"]
    assert rep["max_abs_diff"] < 1e-5
    # The probabilities the device computes give scikit-learn's labels on every input.
    np.testing.assert_array_equal(np.array([int(np.argmax(w)) for w in want]), clf.predict(Xte))
    # Flash is the float weights plus the kernels' code; RAM the arena plus the stack.
    weights = 4 * (64 * 24 + 24 + 24 * 10 + 10)
    assert weights <= rep["flash_bytes"] < weights + 4096
    assert rep["arena_bytes"] == info["arena_size"]
    assert rep["ram_bytes"] == info["arena_size"] + rep["stack_bytes"] and 0 < rep["stack_bytes"] < 1024
    macs = 64 * 24 + 24 * 10
    assert macs < rep["instructions_per_inference"] < 40 * macs


@needs_toolchain
def test_generated_mlperf_int8_models_are_bit_exact_on_cortex_m4(mlperf_dir, tmp_path):
    """The MLPerf Tiny int8 models: the Cortex-M4 build's outputs equal the host build's
    and TFLite Micro's bit for bit (KWS gives class 5 on the reference input)."""
    from tflite_micro.python.tflite_micro import runtime
    import edgeloop
    from edgeloop.backends.c import CModel, generate
    from test_frontend_tflite import ad_quantize, ad_windows, kws_input

    cases = {
        "kws_ref_model": [kws_input(mlperf_dir)],
        "ad01_int8": [ad_quantize(w) for w in ad_windows(mlperf_dir)[::40]],
    }
    insns = {}
    for name, xs in cases.items():
        path = mlperf_dir / f"{name}.tflite"
        out = tmp_path / name
        info = generate(edgeloop.load(path), out, "model")
        host = CModel(out, info)
        want = [host.run(x) for x in xs]
        tflm = runtime.Interpreter.from_file(str(path))
        for x, w in zip(xs, want):
            tflm.set_input(x, 0)
            tflm.invoke()
            np.testing.assert_array_equal(w.reshape(-1), tflm.get_output(0).reshape(-1))
        rep = cortexm.verify(out, "model", info, xs, want)
        assert rep["outputs_match"] and rep["matches"] == len(xs) and rep["max_abs_diff"] == 0
        # the weights are int8 in flash: at least one byte per weight
        assert rep["flash_bytes"] >= info["const_bytes"]
        insns[name] = rep["instructions_per_inference"]
        if name == "kws_ref_model":
            assert int(np.argmax(want[0])) == 5
    # KWS does ten times AD's multiply-accumulates (2.66 M against 0.26 M).
    assert insns["kws_ref_model"] > 5 * insns["ad01_int8"]


def test_missing_newlib_is_named(tmp_path, monkeypatch):
    """The compiler without libnewlib-arm-none-eabi: no rdimon.specs to link with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"):
        script = bin_dir / tool
        # gcc -print-file-name echoes the bare name when it cannot find the file
        script.write_text("#!/bin/sh\necho rdimon.specs\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    tools = cortexm.toolchain()
    assert tools["gcc"] == str(bin_dir / "arm-none-eabi-gcc") and not tools["newlib"]
    assert tools["missing"] == ["newlib for arm-none-eabi (rdimon.specs)"]
    with pytest.raises(EdgeloopError, match="newlib.*apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi"):
        cortexm.verify(tmp_path, "m", {}, [np.zeros(1, np.int8)], [np.zeros(1, np.int8)])
