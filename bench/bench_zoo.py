"""Model-zoo matrix: public trained models read out of wheels, through edgeloop end to end.

For every .tflite model in MediaPipe 0.10.21 and every PaddleOCR .onnx model in
rapidocr-onnxruntime 1.4.4 this prints one markdown row: import (``edgeloop convert``),
agreement of onnxruntime on the converted model with the model's own runtime (LiteRT for
.tflite, onnxruntime on the original .onnx) on scikit-image's astronaut photograph (max
relative error over outputs), params, MACs, peak RAM (``edgeloop profile --json``), the
smallest catalogue board it fits (``edgeloop targets --json``), C export (+ QEMU verify when
small) for that board if it is a microcontroller, and a raspberry-pi-4 bundle export.
Every CLI step runs in a subprocess with a timeout so one model cannot hang the run; every
failure cell says why (first line of the error).

    PYTHONPATH=$PWD/src python bench/bench_zoo.py [--only NAME] [--no-verify] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import wheel_assets  # noqa: E402  (the test suite's cached `pip download --no-deps` of wheels)

RAPIDOCR = "rapidocr-onnxruntime"
wheel_assets.WHEELS.setdefault(RAPIDOCR, "rapidocr-onnxruntime==1.4.4")

MEDIAPIPE_MODELS = [
    "face_detection/face_detection_short_range.tflite",
    "face_detection/face_detection_full_range_sparse.tflite",
    "face_landmark/face_landmark.tflite",
    "face_landmark/face_landmark_with_attention.tflite",
    "hand_landmark/hand_landmark_full.tflite",
    "hand_landmark/hand_landmark_lite.tflite",
    "holistic_landmark/hand_recrop.tflite",
    "iris_landmark/iris_landmark.tflite",
    "palm_detection/palm_detection_full.tflite",
    "palm_detection/palm_detection_lite.tflite",
    "pose_detection/pose_detection.tflite",
    "pose_landmark/pose_landmark_full.tflite",
    "selfie_segmentation/selfie_segmentation.tflite",
    "selfie_segmentation/selfie_segmentation_landscape.tflite",
]
# PaddleOCR models have symbolic input dimensions: the shape each is run at.
PADDLE_MODELS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": "x=1x3x48x192",
    "ch_PP-OCRv4_det_infer.onnx": "x=1x3x96x128",
    "ch_PP-OCRv4_rec_infer.onnx": "x=1x3x48x320",
}
VERIFY_MAX_MACS = 50_000_000
TIMEOUT = 900


class StepError(Exception):
    pass


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines:
        return "no error message"
    # a traceback's last line names the error; a CLI error is one line
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line.replace("|", "/")[:120]


def cli(*args: str, timeout: int = TIMEOUT) -> str:
    try:
        r = subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepError(f"timed out after {timeout} s") from None
    if r.returncode != 0:
        raise StepError(first_line(r.stderr or r.stdout))
    return r.stdout


def cli_json(*args: str, timeout: int = TIMEOUT):
    out = cli(*args, timeout=timeout)
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise StepError(f"not JSON: {first_line(out)}") from None


def astronaut() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(wheel_assets.photo("astronaut.png")).convert("RGB"))


def resized(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), np.float32)


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def litert_reference(path: Path, img: np.ndarray):
    """The photo MediaPipe-style in [-1, 1] and LiteRT's outputs on it."""
    from wheel_assets import litert_interpreter

    interp = litert_interpreter(path)
    inp = interp.get_input_details()[0]
    h, w = (int(d) for d in inp["shape"][1:3])
    x = (resized(img, h, w) / 127.5 - 1.0)[None].astype(np.float32)
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return x, [interp.get_tensor(o["index"]) for o in interp.get_output_details()]


def onnx_reference(path: Path, shape: str, img: np.ndarray):
    """A crop of the photo PaddleOCR-style (NCHW, (x/255-0.5)/0.5) and onnxruntime's outputs."""
    import onnxruntime as ort

    _, _, h, w = (int(d) for d in shape.split("=")[1].split("x"))
    x = (resized(img[100:228, 0:512], h, w) / 255.0 - 0.5) / 0.5
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return x, sess.run(None, {sess.get_inputs()[0].name: x})


def agreement(src: Path, converted: Path, shape: str | None, img: np.ndarray) -> str:
    import onnxruntime as ort

    x, refs = onnx_reference(src, shape, img) if shape else litert_reference(src, img)
    sess = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    if len(got) != len(refs):
        return f"{len(got)} outputs, reference has {len(refs)}"
    worst = 0.0
    for g, r in zip(got, refs):
        if g.shape != r.shape:
            return f"shape {list(g.shape)} vs reference {list(r.shape)}"
        worst = max(worst, rel_error(np.asarray(g, np.float64), np.asarray(r, np.float64)))
    return f"{worst:.1e}"


def smallest_fit(fits: list[dict]) -> dict | None:
    ok = [t for t in fits if t.get("fits")]
    return min(ok, key=lambda t: (t.get("ram_bytes") or 0, t.get("price_usd") or 0)) if ok else None


def bench_model(name: str, src: Path, shape: str | None, img: np.ndarray, work: Path,
                verify: bool) -> dict:
    row = {"model": name}
    converted = work / (Path(name).stem + ".onnx")
    try:
        cli("convert", str(src), *(["--input-shape", shape] if shape else []), "-o", str(converted))
        row["import"] = "ok"
    except StepError as e:
        row["import"] = f"fails: {e}"
        return row
    try:
        row["agreement"] = agreement(src, converted, shape, img)
    except Exception as e:  # noqa: BLE001  (a row says why; the run goes on)
        row["agreement"] = f"fails: {first_line(str(e)) or type(e).__name__}"
    try:
        prof = cli_json("profile", str(converted), "--json", "--no-latency")
        row.update(params=prof["params"], macs=prof["macs"], peak_ram_bytes=prof["peak_ram_bytes"])
    except StepError as e:
        row["profile"] = f"fails: {e}"
    try:
        board = smallest_fit(cli_json("targets", str(converted), "--json"))
        row["board"] = board["name"] if board else "fits no board"
        row["board_kind"] = board["kind"] if board else None
    except StepError as e:
        row["board"] = f"fails: {e}"
        row["board_kind"] = None
    if row["board_kind"] and row["board_kind"] != "linux":
        args = ["export", str(converted), "--target", row["board"], "-o", str(work / (name + "-c")),
                "--json"]
        macs = row.get("macs")
        if not verify:
            row["verify"] = "skipped: --no-verify"
        elif macs is None or macs >= VERIFY_MAX_MACS:
            row["verify"] = f"skipped: {macs} MACs"
        else:
            args.append("--verify")
        try:
            rep = cli_json(*args)
            row["c_export"] = "ok"
            if "--verify" in args:
                row["verify"] = first_line(json.dumps(rep.get("verify", "no verify key in report")))
        except StepError as e:
            row["c_export"] = f"fails: {e}"
            if "--verify" in args:
                row["verify"] = "not run: export failed"
    else:
        row["c_export"] = "n/a (Linux board)" if row["board_kind"] else "n/a"
        row.setdefault("verify", "n/a")
    try:
        cli_json("export", str(converted), "--target", "raspberry-pi-4",
                 "-o", str(work / (name + "-pi4")), "--json")
        row["bundle_pi4"] = "ok"
    except StepError as e:
        row["bundle_pi4"] = f"fails: {e}"
    return row


def models(work: Path):
    for m in MEDIAPIPE_MODELS:
        yield Path(m).stem, (lambda m=m: wheel_assets.mediapipe_model(m)), None
    for f, shape in PADDLE_MODELS.items():
        def extract(f=f):
            out = work / "paddle" / f
            if not out.is_file():
                out.parent.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(wheel_assets.wheel(RAPIDOCR)) as z:
                    out.write_bytes(z.read(f"rapidocr_onnxruntime/models/{f}"))
            return out
        yield Path(f).stem, extract, shape


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        if v >= 1_000_000:
            return f"{v / 1e6:.1f} M"
        if v >= 1_000:
            return f"{v / 1e3:.1f} k"
        return str(v)
    return str(v)


COLUMNS = [("model", "model"), ("import", "import"), ("agreement", "max rel. err"),
           ("params", "params"), ("macs", "MACs"), ("peak_ram_bytes", "peak RAM (B)"),
           ("board", "smallest board"), ("c_export", "C export"), ("verify", "QEMU verify"),
           ("bundle_pi4", "Pi 4 bundle")]


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for k, _ in COLUMNS:
            v = r.get(k)
            if k in ("params", "macs", "peak_ram_bytes") and v is None and "profile" in r:
                v = r["profile"] if k == "params" else "-"
            cells.append(fmt(v) if v is not None or k not in ("agreement",) else "-")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", metavar="NAME", help="run only models whose name contains NAME")
    ap.add_argument("--no-verify", action="store_true", help="skip the QEMU verify of C exports")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    a = ap.parse_args(argv)
    print(f"edgeloop model zoo, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    try:
        img = astronaut()
    except BaseException as e:  # wheel_assets skips (BaseException) when the index is unreachable
        print(f"error: cannot read the astronaut photograph: {first_line(str(e))}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        work = Path(tmp)
        for name, fetch, shape in models(work):
            if a.only and a.only not in name:
                continue
            try:
                src = fetch()
            except BaseException as e:  # noqa: BLE001  (download failure or skip)
                if isinstance(e, KeyboardInterrupt):
                    raise
                rows.append({"model": name, "import": f"no file: {first_line(str(e))}"})
                continue
            row = bench_model(name, src, shape, img, work, verify=not a.no_verify)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    print(table(rows))
    if a.json:
        tmp = Path(a.json).with_suffix(".part")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
