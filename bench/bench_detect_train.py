"""Benchmark: detectors from data, smallest first (issue 12).

    PYTHONPATH=src .venv/bin/python bench/bench_detect_train.py [--images 600] [--size 96] [--epochs 200]

Builds the detection set of tests/test_detect_train.py (scikit-learn's handwritten
digits pasted on crops of scikit-image photographs, written in the detection
dataset folder format) and trains through `edgeloop.train.train_dataset`:

- the centroid detector (fomo) for stm32f746 with --min-score 0.8 (the issue's goal:
  centroid F1 >= 0.8 on held-out images within 10 minutes on 2 cores; aim: under 10 M
  instructions per 96x96 frame on the Cortex-M4 and under 250 KB RAM);
- beside it the same data through the box detector (yolo) for raspberry-pi-4.

Reports validation and test scores (centroid F1 for both, mAP@0.5 for the box
detector), params, training time, and for the int8 centroid model what
`edgeloop export MODEL --target stm32l4r5 --verify --json` measures on the emulated
Cortex-M4 (QEMU): instructions per frame, the arena, the model object's flash; beside
the measured instructions the trainer's estimate (calibrated instructions per MAC and
per output value, edgeloop.train.detect.M4_INSTRUCTIONS) and the fps on the target it
gives. A peer (torchvision's SSDlite trained from scratch) runs only where torchvision
imports; otherwise the table says why not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure_m4(model: Path, out: Path) -> dict:
    """`edgeloop export MODEL --target stm32l4r5 --verify --json`: the Cortex-M4 section, or
    {"error": why} when the export or the emulator is not available."""
    p = subprocess.run([sys.executable, "-m", "edgeloop", "export", str(model), "--target", "stm32l4r5",
                        "-o", str(out), "--verify", "--json"], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["export failed"])[-1]}
    doc = json.loads(p.stdout)
    v = doc.get("verify") or {}
    if not v.get("available"):
        return {"error": v.get("error", "not verified")}
    return {"instructions": v["instructions_per_inference"], "arena_bytes": doc["arena_bytes"],
            "flash_bytes": v["flash_bytes"], "ram_bytes": v["ram_bytes"], "outputs_match": v["outputs_match"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600, help="images in the generated set")
    ap.add_argument("--size", type=int, default=96, help="image and input size (square)")
    ap.add_argument("--epochs", type=int, default=200, help="most epochs for the centroid detector (early stopping)")
    ap.add_argument("--box-epochs", type=int, default=40, help="most epochs for the box detector")
    ap.add_argument("--only", default="fomo,yolo", help="comma-separated detectors to run")
    args = ap.parse_args()

    from tests.test_detect_train import make_detection_folder

    from edgeloop.hardware import get_target
    from edgeloop.train import train_dataset
    from edgeloop.train.detect import instruction_budget

    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    ds = make_detection_folder(work / "ds", n_images=args.images, size=args.size)
    size = f"{args.size}x{args.size}"
    rows = []
    for name, target, goal in (("fomo", "stm32f746", 0.8), ("yolo", "raspberry-pi-4", 0.5)):
        if name not in args.only.split(","):
            continue
        t0 = time.perf_counter()
        r = train_dataset(ds, work / f"{name}.onnx", target=target, min_score=goal,
                          epochs=args.epochs if name == "fomo" else args.box_epochs,
                          candidates=[name], size=size, progress=True)
        wall = time.perf_counter() - t0
        row = r["candidates"][0]
        m4 = measure_m4(work / f"{name}.onnx", work / f"{name}-c") if row["precision"] == "int8" else {}
        rows.append((name, target, row, r, wall, m4))

    print(f"\ndetection set: {args.images} images {size}, 2 digit classes on real photographs; "
          f"--epochs {args.epochs} (early stopping)")
    print(HEADER)
    for item in rows:
        _print(*item)
    print("M4 instr: measured on the emulated Cortex-M4 (QEMU mps2-an386 counts instructions, not cycles) by "
          "`edgeloop export MODEL --target stm32l4r5 --verify --json`; flash and arena from that export. "
          "est instr / est fps: the trainer's calibrated estimate (fps on the target).")
    for name, target, row, r, wall, m4 in rows:
        if m4.get("error"):
            print(f"{name}: Cortex-M4 measurement not available: {m4['error']}")
        budget = instruction_budget(get_target(target))
        if budget:
            print(f"{name}: {target} runs 10 fps at up to {budget / 1e6:.1f} M instructions per frame "
                  f"(clock / 10 / its cycles per instruction)")
    print(_peer())


def _peer() -> str:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return ("peer: not run (torchvision's SSDlite needs torchvision, which installs only beside torch==2.14.1, "
                "a 5.5 GB CUDA build; the project venv pins torch==2.13.0 and no separate bench venv with "
                "torchvision was set up here)")
    return "peer: not run (torchvision imports, but this benchmark has no SSDlite training loop yet)"


HEADER = (f"{'detector':8} {'target':15} {'val':>17} {'test F1':>8} {'mAP50':>6} {'params':>7} "
          f"{'flash':>8} {'arena':>8} {'M4 instr':>10} {'est instr':>10} {'est fps':>8} {'epochs':>6} "
          f"{'train s':>8} {'total s':>8}")


def _n(v, fmt=","):
    return "-" if v is None else format(v, fmt)


def _print(name, target, row, r, wall, m4) -> None:
    tm = r["test_metrics"]
    m50 = tm.get("map50")
    flash = m4.get("flash_bytes", row["flash_bytes"])
    arena = m4.get("arena_bytes", row["peak_ram_bytes"])
    print(f"{name:8} {target:15} {row['metric'] + ' ' + format(row['score'], '.3f'):>17} "
          f"{tm.get('centroid_f1', float('nan')):8.3f} {_n(m50, '.3f'):>6} {row['params']:7,} "
          f"{flash:8,} {arena:8,} {_n(m4.get('instructions')):>10} {_n(row.get('est_instructions')):>10} "
          f"{_n(row.get('est_fps'), '.1f'):>8} {row['epochs_run']:6} {row['train_seconds']:8.1f} {wall:8.1f}",
          flush=True)


if __name__ == "__main__":
    main()
