"""`edgeloop shrink`: the smallest model that still does the job, within a device's limits."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from edgeloop.errors import EdgeloopError, UsageError
from edgeloop.fsutil import check_output_dir, staged_dir
from edgeloop.shapes import cli_option as input_shape_option, using_input_shapes


def _find_source(model_path: str, model: Any, source: Optional[str]) -> Optional[str]:
    """The source file for refits and fine-tunes (scikit-learn .skops/.joblib/.pkl or PyTorch .pt2):
    --source, MODEL itself, or the source recorded in the model's metadata."""
    from edgeloop.frontends.sklearn import SOURCE_SUFFIXES

    sk = SOURCE_SUFFIXES + (".pt2",)
    if source is not None:
        if not Path(source).is_file():
            raise UsageError(f"--source {source}: no such file")
        return source
    if model_path.lower().endswith(sk):
        return model_path
    from edgeloop.graph import get_metadata, resolve_source

    recorded = resolve_source(model_path, get_metadata(model))
    return recorded if recorded and recorded.lower().endswith(sk) else None


def _detection_splits(model: Any, data_path: str, metric: Optional[str]) -> Any:
    """A detection dataset folder's splits for the detector; a YOLO or VOC folder is imported first
    (into a temporary folder, since the splits hold every image they need)."""
    import tempfile

    from edgeloop.data import load_dataset
    from edgeloop.data.detection import import_detection
    from edgeloop.data.splits import detection_splits

    metric = metric or "map50"
    if (Path(data_path) / "card.json").is_file():
        return detection_splits(model, load_dataset(data_path), metric)
    with tempfile.TemporaryDirectory(prefix="edgeloop-detdata-") as tmp:
        ds = load_dataset(import_detection(data_path, Path(tmp) / "dataset"))
        return detection_splits(model, ds, metric)


def shrink_files(model_path: str, data_path: str, out_dir: str, *, metric: Optional[str] = None,
                 max_drop: float = 0.01, target: Optional[str] = None, max_ram_kb: Optional[float] = None,
                 max_flash_kb: Optional[float] = None, max_latency_ms: Optional[float] = None,
                 source: Optional[str] = None, label_column: Optional[str] = None, quick: bool = False,
                 progress: Any = None, trust_pickle: bool = False) -> dict:
    """The whole command from Python: returns results.json's content; raises NoCandidateError (exit 3).

    A pickle model or source (.joblib/.pkl) is refused unless ``trust_pickle``."""
    from edgeloop.data import read_any, split_for_model
    from edgeloop.data.splits import is_detection_data
    from edgeloop.frontends import load_file
    from edgeloop.search import Limits, NoCandidateError, closest, run_search
    from edgeloop.search.report import recipe_text, render

    limits = Limits(max_drop=max_drop, target=target, max_ram_kb=max_ram_kb, max_flash_kb=max_flash_kb,
                    max_latency_ms=max_latency_ms)
    limits.check()  # fail fast, before loading anything
    check_output_dir(out_dir, kind="shrink")
    model = load_file(model_path, trust_pickle=trust_pickle)
    from edgeloop.profile.weights import check_finite
    from edgeloop.search.unlabelled import UNLABELLED_METRICS, image_spec, unlabelled_splits

    check_finite(model, where=model_path)
    try:
        if metric in UNLABELLED_METRICS:  # no labels needed: the float model is the reference
            from edgeloop.data.readers import read_unlabelled

            splits = unlabelled_splits(model, read_unlabelled(data_path, image_spec(model)), metric)
        elif is_detection_data(data_path):
            splits = _detection_splits(model, data_path, metric)
        else:
            splits = split_for_model(model, read_any(data_path, label_column), metric or "accuracy")
    except EdgeloopError as e:
        raise e.with_where(data_path)
    src = _find_source(model_path, model, source)
    loaded = None  # the source, read once here so that an untrusted pickle is refused naming its file
    if src is not None and src.lower().endswith(".pt2"):
        from edgeloop.frontends.torch import load_program

        loaded = load_program(src, trust_pickle=trust_pickle).module()
    elif src is not None:
        from edgeloop.frontends.sklearn import load_estimator

        loaded = load_estimator(src, trust_pickle=trust_pickle)
    result = run_search(model, splits, limits, source=loaded if loaded is not None else src,
                        progress=progress, quick=quick)
    doc = result.to_json()
    doc["model"] = model_path
    doc["data"] = data_path
    doc["source"] = src
    out = Path(out_dir)
    near = [c.to_json() for c in closest(result)] if result.chosen is None else []
    if near:
        doc["closest"] = [c["id"] for c in near]
    import onnx

    from edgeloop.graph import save, set_metadata

    # OUT is replaced whole: results, report and model always belong to the same run, and a run
    # whose candidates all miss the limits leaves no model.onnx behind.
    with staged_dir(out, kind="shrink") as tmp:
        (tmp / "results.json").write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
        (tmp / "report.html").write_text(render(doc, Path(model_path).name, near))
        if result.chosen is not None:
            chosen = result.chosen.model
            if src:  # keep the way back to the source for refits (improve), relative to OUT
                chosen = onnx.ModelProto()
                chosen.CopyFrom(result.chosen.model)
                set_metadata(chosen, source=os.path.relpath(os.path.abspath(src), os.path.abspath(out)))
            save(chosen, tmp / "model.onnx")
    if result.chosen is None:
        parts = [f"{c['id']} ({recipe_text(c['passes']) or 'original'}) misses: {'; '.join(c['misses'])}"
                 for c in near[:2]]
        raise NoCandidateError("no candidate meets the limits; closest: " + " | ".join(parts)
                               + f" (see {out / 'report.html'})")
    return doc


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def register(app: typer.Typer) -> None:
    """Add `edgeloop shrink` to the main app."""
    from edgeloop.cli import trust_pickle_option

    @app.command("shrink")
    def shrink(
        model: str = typer.Argument(..., help="Model file: .onnx, .skops, .joblib/.pkl, .pt2 or .tflite."),
        data: str = typer.Option(..., "--data", "-d", help="Labelled data: .npz (x, y, optional x_calib), "
                                 "a CSV with a label column, an image folder (one subfolder per class), a "
                                 "dataset folder (edgeloop data) or a built-in name such as sklearn:digits. "
                                 "With --metric agreement|fidelity no labels are needed: a folder of images "
                                 "(preprocessed as the model's input says), a .npy/.npz of inputs or a CSV "
                                 "of features."),
        output: Path = typer.Option(..., "--output", "-o", help="Output folder: model.onnx, results.json, report.html."),
        metric: Optional[str] = typer.Option(None, "--metric", help="accuracy | f1 | auc (classifiers), mae (regression), "
                                             "map50 | map (detectors on a detection dataset; COCO mAP), or, without "
                                             "labels, agreement (top-1 agreement with the float model) | fidelity "
                                             "(relative output error against the float model). "
                                             "Default: accuracy, map50 on a detection dataset."),
        max_drop: float = typer.Option(0.01, "--max-drop", help="Largest metric loss accepted, in the metric's units "
                                       "(0.01 = one accuracy point; for mae, the largest increase; for "
                                       "agreement, the largest loss of agreement; for fidelity, the largest "
                                       "relative error)."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Catalogue target whose RAM, flash and "
                                             "precisions the model must fit (see `edgeloop targets`)."),
        max_ram_kb: Optional[float] = typer.Option(None, "--max-ram-kb", help="Peak activation RAM limit, KB."),
        max_flash_kb: Optional[float] = typer.Option(None, "--max-flash-kb", help="Flash limit (weights + layer records), KB."),
        max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Latency limit: estimated "
                                                       "on --target if given, else measured on this host."),
        source: Optional[str] = typer.Option(None, "--source", help="The source model for refits and fine-tunes: "
                                             "scikit-learn .skops or .joblib (feature reduction, smaller algorithms) or "
                                             "PyTorch .pt2 (fine-tune after pruning); default: MODEL if it is one."),
        label_column: Optional[str] = typer.Option(None, "--label-column", help="CSV data: the label column."),
        quick: bool = typer.Option(False, "--quick", help="Fewer settings per pass (faster, coarser)."),
        as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout instead of a summary."),
        input_shape: Optional[list[str]] = input_shape_option(),
        trust_pickle: bool = trust_pickle_option(),
    ) -> None:
        """Quantize, prune, drop features or layers; keep the smallest model within --max-drop and the limits.

        Refits train on the train split, every choice (settings and the candidate)
        is made on the validation split, and the test split is measured once, for
        the baseline and the chosen model (calibration uses separate samples). Exit code 3 when no candidate meets the limits (the report
        names the closest ones), 2 on bad input.
        """
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        err = Console(stderr=True, highlight=False)
        with using_input_shapes(input_shape), Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True,
                      disable=not err.is_terminal) as bar:
            task = bar.add_task("shrink", total=None)
            state = {"n": 0}

            def progress(label: str) -> None:
                state["n"] += 1
                bar.update(task, completed=state["n"] - 1, description=label[:60])

            doc = shrink_files(model, data, str(output), metric=metric, max_drop=max_drop, target=target,
                               max_ram_kb=max_ram_kb, max_flash_kb=max_flash_kb, max_latency_ms=max_latency_ms,
                               source=source, label_column=label_column, quick=quick, progress=progress,
                               trust_pickle=trust_pickle)
        if as_json:
            sys.stdout.write(json.dumps(doc, indent=2, default=_json_default) + "\n")
            return
        _print_summary(doc, output)


def _print_summary(doc: dict, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgeloop.search.report import recipe_text

    out = Console(highlight=False, width=160)
    metric = doc["metric"]
    t = Table(title=f"{doc['model']}: Pareto front ({len(doc['candidates'])} candidates tried)", title_justify="left")
    for col in ("id", "passes", metric, "drop", "file", "flash", "peak RAM", "precision", "limits"):
        t.add_column(col, justify="left" if col in ("id", "passes", "precision", "limits") else "right")
    for c in [doc["baseline"]] + doc["candidates"]:
        if not c["on_front"] and not c["chosen"]:
            continue
        m = c["metrics"]
        t.add_row(c["id"] + (" *" if c["chosen"] else ""), recipe_text(c["passes"]) or "(original)",
                  f"{m[metric]:.4f}", f"{m.get('drop', 0.0):+.4f}", f"{m['file_bytes'] / 1024:.1f} KB", f"{m['flash_bytes'] / 1024:.1f} KB",
                  f"{m['peak_ram_bytes'] / 1024:.1f} KB", m["precision"], "meets" if not c["misses"] else "; ".join(c["misses"]))
    out.print(t)
    ch = next(c for c in doc["candidates"] + [doc["baseline"]] if c["chosen"])
    b = doc["baseline"]["metrics"]
    key = doc.get("size_key", "file_bytes")
    what = "flash image" if key == "flash_bytes" else "file"
    out.print(f"chosen {ch['id']}: {metric} {ch['metrics'][metric]:.4f} (baseline {b[metric]:.4f}), "
              f"{what} {b[key] / max(1, ch['metrics'][key]):.2f}x smaller; wrote {output}/model.onnx, "
              f"results.json, report.html")
    q = doc.get("int8_drop")
    if q:  # detectors: what int8 costs, and what keeping the head float wins back
        line = (f"int8 ({q['int8_candidate']}): {metric} {q['int8']:.4f} on validation, a drop of {q['drop']:.4f} "
                f"(max-drop {q['max_drop']:g})")
        if q.get("mixed"):
            best = max(q["mixed"], key=lambda r: r[metric])
            line += (f"; mixed {best['id']} ({len(best['float_layers'])} head/last nodes float): "
                     f"{metric} {best[metric]:.4f}, drop {best['drop']:.4f}")
        out.print(line)
    test = doc.get("test") or {}
    if test.get("chosen") is not None:
        out.print(f"test {metric} (test split, {test['samples']} samples, used once): {test['chosen']:.4f} "
                  f"(baseline {test['baseline']:.4f})")
