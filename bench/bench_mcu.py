"""Microcontroller benchmark: edgeloop's generated C against TFLite Micro and onnxruntime.

    .venv/bin/python bench/bench_mcu.py [--json FILE] [--qemu-inputs N] [--min-time S]

For the two MLPerf Tiny int8 models (../shared/mlperf-tiny), a digits CNN built
here (a small torch CNN trained briefly on scikit-learn's digits, quantized with
onnxruntime's quantize_static to QDQ int8) and the ResNet-8 (32x32, MLPerf Tiny image
classification) and MobileNetV1-0.25 (96x96, visual wake words) shaped int8 TFLite
models that bench/make_bench_models.py writes to ~/.cache/edgeloop-bench (random
weights; it needs TensorFlow, in a separate venv), every column is measured in this run:

- RAM: the generated C's arena plus its stack high-water mark (painted stack, on the
  emulated Cortex-M4) against TFLite Micro's arena, read from the tflite-micro
  interpreter's recording allocator (the README quotes 24,272 and 3,984 bytes).
- flash: text plus rodata of the model's object file (arm-none-eabi-size) against
  the .tflite file plus TFLite Micro's own code. TFLM's code is not measured here: the
  figure is the low end of the 33-76 KB "TFLM library part" in the README's
  whole-program flash table (the most favourable to TFLM).
- host latency: the generated C (gcc -O2, ctypes), the tflite-micro interpreter
  (reference kernels) and onnxruntime (1 thread), all timed by one Python harness.
- instructions per inference on QEMU's mps2-an386 (Cortex-M4F), exact, against
  the README's TFLM counts (reference kernels and CMSIS-NN, counted with an
  instruction-counting plugin). QEMU counts instructions, not cycles. For ResNet-8
  and MobileNet no CMSIS-NN count was measured here: the figure is derived from
  issue 10's ratios (edgeloop's count before the fast kernels / 3.9 and / 1.7).
- instructions per MAC, overall and per kernel, from the per-layer profile of the
  verify step (a second firmware build with a mark between kernel calls).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MLPERF = REPO.parent / "shared" / "mlperf-tiny"

# ../shared/mlperf-tiny/README.md: TFLite Micro on Cortex-M4 (QEMU mps2-an386, counted
# with an instruction-counting plugin from Invoke() to its return), and its arena on x86.
README = {
    "kws_ref_model": {"arena": 24272, "insn_ref": 43_023_473, "insn_cmsis": 7_697_382,
                      "flash_whole_ref": 105_252, "flash_whole_cmsis": 148_140},
    "ad01_int8": {"arena": 3984, "insn_ref": 1_951_946, "insn_cmsis": 582_901,
                  "flash_whole_ref": 307_820, "flash_whole_cmsis": 319_340},
}
# ResNet-8 / MobileNetV1-0.25 bench models: CMSIS-NN's count derived from issue 10's
# ratios, edgeloop's count before the fast kernels (commit 72940cd) / 3.9 and / 1.7
DERIVED_CMSIS = {"resnet8_int8": round(115_476_229 / 3.9), "mobilenet_v1_025_int8": round(41_168_897 / 1.7)}
BENCH_CACHE = Path.home() / ".cache" / "edgeloop-bench"
TFLM_LIBRARY_BYTES = 33_000  # README: "the TFLM library part (33-76 KB)"; low end
AD_IN_SCALE, AD_IN_ZP = 0.39101523, 89
AD_OUT_SCALE, AD_OUT_ZP = 0.36449847, 96


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data and models

def kws_input() -> np.ndarray:
    text = (MLPERF / "kws_input_data.cc").read_text()
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    values = [int(v) for v in re.findall(r"-?\d+", text[text.index("=") + 1:])]
    return np.array(values, np.int8).reshape(1, 49, 10, 1)


def ad_windows() -> np.ndarray:
    spec = np.fromfile(MLPERF / "normal_id_01_00000000_hist_librosa.bin", "<f4").reshape(200, 128)
    return np.stack([spec[i:i + 5].reshape(-1) for i in range(196)]).astype(np.float32)


def ad_score(windows: np.ndarray, outputs_q: list[np.ndarray]) -> float:
    rec = (np.stack([o.reshape(-1) for o in outputs_q]).astype(np.float32) - AD_OUT_ZP) * AD_OUT_SCALE
    return float(np.mean(np.mean((windows - rec) ** 2, axis=1)))


def digits_cnn(seed: int = 0, epochs: int = 25):
    """A small CNN trained briefly on scikit-learn's digits, exported and quantized to
    QDQ int8 with onnxruntime's quantize_static (per-channel int8 weights)."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    import edgeloop

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.AvgPool2d(4), nn.Flatten(), nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        float_acc = float((net(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean())
    fmodel = edgeloop.load(net, example_input=torch.from_numpy(Xte[:1]))
    name = fmodel.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self, xs):
            self._it = iter([{name: x[None]} for x in xs])

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as d:
        onnx.save(fmodel, f"{d}/f.onnx")
        import logging
        logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
        quantize_static(f"{d}/f.onnx", f"{d}/q.onnx", Reader(Xtr[:300]), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        qmodel = onnx.load(f"{d}/q.onnx")
    return qmodel, Xte, yte, float_acc


# ------------------------------------------------------------------ harness pieces

def time_per_call(fn, xs: list[np.ndarray], min_time: float) -> float:
    """Median seconds per call over rounds of calls cycling through ``xs``."""
    for x in xs[:3]:
        fn(x)
    rounds = []
    t_end = time.perf_counter() + min_time
    while time.perf_counter() < t_end or len(rounds) < 5:
        t0 = time.perf_counter()
        for x in xs:
            fn(x)
        rounds.append((time.perf_counter() - t0) / len(xs))
    return float(np.median(rounds))


@contextlib.contextmanager
def captured_fds():
    """Capture what C code writes to file descriptors 1 and 2."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        box = {}
        try:
            yield box
        finally:
            libc.fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            f.seek(0)
            box["text"] = f.read().decode("utf-8", "replace")


def tflm_interpreter(path: Path):
    from tflite_micro.python.tflite_micro import runtime
    return runtime.Interpreter.from_file(str(path))


def tflm_arena_bytes(interp) -> int | None:
    with captured_fds() as box:
        interp.print_allocations()
    m = re.search(r"Arena allocation total (\d+) bytes", box["text"])
    return int(m.group(1)) if m else None


def tflm_run(interp):
    def run(x):
        interp.set_input(x, 0)
        interp.invoke()
        return interp.get_output(0)
    return run


def ort_run(model):
    from edgeloop import graph
    sess = graph.session(model, threads=1)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


# ------------------------------------------------------------------ one model

def measure(name: str, model, inputs: list[np.ndarray], qemu_inputs: int, tflite: Path | None,
            min_time: float, work: Path, extra_check=None) -> dict:
    row: dict = {"model": name, "notes": []}
    ort_fn = ort_run(model)
    row["ort_s"] = time_per_call(ort_fn, inputs, min_time)
    if tflite is not None:
        interp = tflm_interpreter(tflite)
        row["tflm_arena"] = tflm_arena_bytes(interp)
        tflm_fn = tflm_run(interp)
        tflm_out = [tflm_fn(x).copy() for x in inputs]
        row["tflm_s"] = time_per_call(tflm_fn, inputs, min_time)
        row["tflite_bytes"] = tflite.stat().st_size
        row["tflm_flash"] = row["tflite_bytes"] + TFLM_LIBRARY_BYTES
        row.update({k: v for k, v in README.get(name, {}).items()})
    else:
        tflm_out = None
        row["notes"].append("TFLM n/a: no converter from ONNX to .tflite on this machine")

    try:
        from edgeloop.backends.c import CModel, generate
    except ImportError as e:  # the generator is not there yet
        row["notes"].append(f"generated C n/a: {e}")
        return row
    out = work / name
    try:
        info = generate(model, out, "model")
        host = CModel(out, info)
        host_out = [host.run(x) for x in inputs]
    except Exception as e:  # report and carry on with the other models
        row["notes"].append(f"generated C failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return row
    row["arena"] = int(info["arena_size"])
    row["c_s"] = time_per_call(host.run, inputs, min_time)
    ort_out = [ort_fn(x) for x in inputs]
    if tflm_out is not None:
        same = sum(np.array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))
                   for a, b in zip(host_out, tflm_out))
        row["vs_reference"] = f"{same}/{len(inputs)} bit-exact vs TFLM"
    else:
        agree = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(host_out, ort_out))
        diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                   for a, b in zip(host_out, ort_out))
        row["vs_reference"] = f"{agree}/{len(inputs)} same class as ORT (max diff {diff:.3g})"
    if extra_check:
        row["check"] = extra_check(host_out)

    from edgeloop.backends.c import cortexm
    tools = cortexm.toolchain()
    if tools["missing"]:
        row["notes"].append(f"Cortex-M n/a: missing {', '.join(tools['missing'])} ({tools['install']})")
        return row
    sub = inputs[:qemu_inputs]
    try:
        rep = cortexm.verify(out, "model", info, sub, host_out[:len(sub)], timeout=900,
                             profile_layers=True)
    except Exception as e:
        row["notes"].append(f"Cortex-M failed: {str(e).splitlines()[0][:200]}")
        return row
    row.update(flash=rep["flash_bytes"], stack=rep["stack_bytes"], ram=rep["ram_bytes"],
               insns=rep["instructions_per_inference"], m4_match=f"{rep['matches']}/{rep['inputs']}")
    if name in DERIVED_CMSIS:
        row["insn_cmsis"] = DERIVED_CMSIS[name]
        row["notes"].append("CMSIS-NN count derived from issue 10's ratio, not measured")
    layers = rep.get("layers") or []
    row["macs"] = sum(r["macs"] for r in layers)
    per: dict = {}
    for r in layers:
        k = per.setdefault(r["kernel"], {"macs": 0, "instructions": 0, "calls": 0})
        k["macs"] += r["macs"]
        k["instructions"] += r["instructions"]
        k["calls"] += 1
    row["kernels"] = per
    return row


# ------------------------------------------------------------------ table

def fmt_int(v) -> str:
    return f"{int(v):,}" if v is not None else "n/a"


def ratio(a, b) -> str:
    if a is None or not b:
        return "n/a"
    r = a / b
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x"


def print_tables(rows: list[dict]) -> None:
    def table(title, header, lines):
        print(f"\n{title}")
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        print("  ".join("-" * w for w in widths))
        for ln in lines:
            print("  ".join(str(x).ljust(w) for x, w in zip(ln, widths)))

    table("Memory (bytes)",
          ["model", "arena", "stack", "RAM total", "TFLM arena", "RAM/TFLM",
           "flash (model.o)", ".tflite", "TFLM flash*", "flash/TFLM"],
          [[r["model"], fmt_int(r.get("arena")), fmt_int(r.get("stack")), fmt_int(r.get("ram")),
            fmt_int(r.get("tflm_arena")), ratio(r.get("ram"), r.get("tflm_arena")),
            fmt_int(r.get("flash")), fmt_int(r.get("tflite_bytes")), fmt_int(r.get("tflm_flash")),
            ratio(r.get("flash"), r.get("tflm_flash"))] for r in rows])
    us = (lambda v: f"{v * 1e6:,.1f}" if v is not None else "n/a")
    table("Host latency (microseconds per inference, batch 1, one thread)",
          ["model", "generated C", "TFLM interp", "onnxruntime", "TFLM/C", "ORT/C", "outputs"],
          [[r["model"], us(r.get("c_s")), us(r.get("tflm_s")), us(r.get("ort_s")),
            ratio(r.get("tflm_s"), r.get("c_s")), ratio(r.get("ort_s"), r.get("c_s")),
            r.get("vs_reference", "n/a")] for r in rows])
    ipm = (lambda i, m: f"{i / m:.2f}" if i and m else "n/a")
    table("Cortex-M4 (QEMU mps2-an386; instructions, not cycles)",
          ["model", "instructions", "MACs", "instr/MAC", "TFLM ref", "TFLM CMSIS-NN", "ours/CMSIS-NN",
           "arena", "TFLM arena", "arena/TFLM", "flash", "stack", "M4 = host", "check"],
          [[r["model"], fmt_int(r.get("insns")), fmt_int(r.get("macs")), ipm(r.get("insns"), r.get("macs")),
            fmt_int(r.get("insn_ref")), fmt_int(r.get("insn_cmsis")), ratio(r.get("insns"), r.get("insn_cmsis")),
            fmt_int(r.get("arena")), fmt_int(r.get("tflm_arena")), ratio(r.get("arena"), r.get("tflm_arena")),
            fmt_int(r.get("flash")), fmt_int(r.get("stack")), r.get("m4_match", "n/a"), r.get("check", "")]
           for r in rows])
    table("Cortex-M4 instructions per kernel (per-layer profile of the first input)",
          ["model", "kernel", "calls", "MACs", "instructions", "share", "instr/MAC"],
          [[r["model"], k, v["calls"], fmt_int(v["macs"]), fmt_int(v["instructions"]),
            f"{100 * v['instructions'] / max(sum(x['instructions'] for x in r['kernels'].values()), 1):.1f}%",
            ipm(v["instructions"], v["macs"])]
           for r in rows for k, v in sorted((r.get("kernels") or {}).items(),
                                             key=lambda kv: -kv[1]["instructions"])])
    print("\n* TFLM flash = the .tflite file + 33,000 B of TFLite Micro code (low end of the 33-76 KB "
          "library part in ../shared/mlperf-tiny/README.md; its whole-program figures are "
          + ", ".join(f"{k} {v['flash_whole_ref']:,} (ref) / {v['flash_whole_cmsis']:,} (CMSIS-NN)"
                      for k, v in README.items()) + ").")
    print("Ratios: RAM/TFLM and flash/TFLM below 1 favour the generated C (the issue aims at RAM <= 0.6x); "
          "TFLM/C, ORT/C and TFLM ref/ours above 1 mean the generated C is faster.")
    print("TFLM arena: measured by the tflite-micro interpreter's recording allocator (x86); "
          "TFLM instruction counts from the README (Cortex-M4, QEMU, TFLM 90b983c).")
    print("Instructions: exact counts of <prefix>_run from entry to return (QEMU -icount shift=0 and the "
          "board's timer, checked against a single-step trace in tests/test_cortexm.py); QEMU counts "
          "instructions, not cycles. RAM total = arena + measured stack high-water mark.")
    for r in rows:
        for n in r["notes"]:
            print(f"note: {r['model']}: {n}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--qemu-inputs", type=int, default=8, help="inputs run on the emulated Cortex-M4")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per runtime")
    ap.add_argument("--bench-cache", type=Path, default=BENCH_CACHE,
                    help="folder with resnet8_int8.tflite and mobilenet_v1_025_int8.tflite "
                         "(bench/make_bench_models.py)")
    args = ap.parse_args(argv)
    if not MLPERF.is_dir():
        print(f"error: MLPerf Tiny files not found at {MLPERF}", file=sys.stderr)
        return 2

    import edgeloop

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mcu-") as tmp:
        work = Path(tmp)
        log("kws_ref_model ...")
        kws = edgeloop.load(MLPERF / "kws_ref_model.tflite")
        rows.append(measure("kws_ref_model", kws, [kws_input()], args.qemu_inputs,
                            MLPERF / "kws_ref_model.tflite", args.min_time, work,
                            lambda outs: f"class {int(np.argmax(outs[0]))} (golden 5)"))
        log("ad01_int8 ...")
        ad = edgeloop.load(MLPERF / "ad01_int8.tflite")
        wins = ad_windows()
        xq = [np.clip(np.round(w / AD_IN_SCALE) + AD_IN_ZP, -128, 127).astype(np.int8)[None] for w in wins]
        rows.append(measure("ad01_int8", ad, xq, args.qemu_inputs, MLPERF / "ad01_int8.tflite",
                            args.min_time, work,
                            lambda outs: f"AD score {ad_score(wins, outs):.4f} (golden 10.26)"))
        log("digits CNN (training) ...")
        t0 = time.time()
        qmodel, Xte, yte, facc = digits_cnn()
        log(f"  trained and quantized in {time.time() - t0:.0f} s (float accuracy {facc:.3f})")
        xs = [x[None] for x in Xte]

        def digits_check(outs):
            return f"int8 C accuracy {np.mean([int(np.argmax(o)) == t for o, t in zip(outs, yte)]):.3f}" \
                   f" (float {facc:.3f})"
        rows.append(measure("digits_cnn", qmodel, xs, args.qemu_inputs, None, args.min_time, work,
                            digits_check))
        rng = np.random.default_rng(0)
        for bench, shape in (("resnet8_int8", (1, 32, 32, 3)), ("mobilenet_v1_025_int8", (1, 96, 96, 3))):
            path = args.bench_cache / f"{bench}.tflite"
            if not path.is_file():
                rows.append({"model": bench, "notes": [f"{path} missing: run bench/make_bench_models.py "
                                                       "with a TensorFlow venv"]})
                continue
            log(f"{bench} ...")
            xs = [rng.integers(-128, 128, shape).astype(np.int8) for _ in range(2)]
            rows.append(measure(bench, edgeloop.load(path), xs, min(args.qemu_inputs, 2), path,
                                args.min_time, work))
    print_tables(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
