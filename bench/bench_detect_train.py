"""Benchmark: detectors from data, smallest first (issue 12).

    PYTHONPATH=src .venv/bin/python bench/bench_detect_train.py [--images 600] [--size 96] [--epochs 60]

Builds the detection set of tests/test_detect_train.py (scikit-learn's handwritten
digits pasted on crops of scikit-image photographs, written in the detection
dataset folder format) and trains through `edgeloop.train.train_dataset`:

- the centroid detector (fomo) for stm32f746 with --min-score 0.8 (the issue's goal:
  centroid F1 >= 0.8 on held-out images within 10 minutes on 2 cores);
- beside it the same data through the box detector (yolo) for raspberry-pi-4.

Reports validation and test scores (centroid F1 for both, mAP@0.5 for the box
detector), params, flash, peak RAM (the int8 arena), estimated fps on the target
and training time. A peer (torchvision's SSDlite trained from scratch) runs only
when torchvision imports here; otherwise the table says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600, help="images in the generated set")
    ap.add_argument("--size", type=int, default=96, help="image and input size (square)")
    ap.add_argument("--epochs", type=int, default=120, help="most epochs for the centroid detector (early stopping)")
    ap.add_argument("--box-epochs", type=int, default=40, help="most epochs for the box detector")
    ap.add_argument("--only", default="fomo,yolo", help="comma-separated detectors to run")
    args = ap.parse_args()

    from tests.test_detect_train import make_detection_folder

    from edgeloop.train import train_dataset

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
        rows.append((name, target, row, r, wall))
        _print(name, target, row, r, wall)

    print(f"\ndetection set: {args.images} images {size}, 2 digit classes on real photographs; "
          f"--epochs {args.epochs} (early stopping)")
    print(HEADER)
    for name, target, row, r, wall in rows:
        _print(name, target, row, r, wall, header=False)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("peer: torchvision is not installed in this environment (no CPU build pinned for torch 2.13 "
              "here), so no SSDlite peer was trained")
    else:
        print("peer: torchvision imports, but the SSDlite peer run is not implemented in this benchmark yet")


HEADER = (f"{'detector':8} {'target':15} {'val':>14} {'test F1':>8} {'test mAP50':>10} {'params':>8} "
          f"{'flash':>9} {'peak RAM':>9} {'est fps':>8} {'epochs':>6} {'train s':>8} {'total s':>8}")


def _print(name, target, row, r, wall, header: bool = True) -> None:
    if header:
        print(HEADER)
    tm = r["test_metrics"]
    m50 = tm.get("map50")
    print(f"{name:8} {target:15} {row['metric'] + ' ' + format(row['score'], '.3f'):>14} "
          f"{tm.get('centroid_f1', float('nan')):8.3f} {('-' if m50 is None else format(m50, '.3f')):>10} "
          f"{row['params']:8,} {row['flash_bytes']:9,} {row['peak_ram_bytes']:9,} "
          f"{(row['est_fps'] or 0):8.1f} {row['epochs_run']:6} {row['train_seconds']:8.1f} {wall:8.1f}",
          flush=True)

if __name__ == "__main__":
    main()
