"""`edgeloop serve`, `edgeloop samples list|export` and `edgeloop improve`: the on-device loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from edgeloop.errors import EdgeloopError, UsageError


def _bundle_error(e: Exception) -> EdgeloopError:
    return EdgeloopError(str(e))


def register(app: typer.Typer) -> None:
    """Add serve, samples and improve to the main app."""
    from edgeloop.cli import trust_pickle_option

    @app.command()
    def serve(
        bundle: Path = typer.Argument(..., help="Bundle folder written by `edgeloop export --target <linux board>`."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes it to the network)."),
        port: int = typer.Option(8080, "--port", help="TCP port."),
        threads: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads."),
        capture: Optional[Path] = typer.Option(None, "--capture", help="SQLite file for captured samples (off when not given)."),
        budget_mb: float = typer.Option(100.0, "--capture-budget-mb", help="Disk budget of the capture store; the least informative samples are evicted first."),
        privacy: bool = typer.Option(False, "--privacy", help="Store no raw input: only predictions, scores and reasons."),
        confidence_below: float = typer.Option(0.6, "--confidence-below", help="Capture when the top-1 probability is below this (0 disables)."),
        margin_below: float = typer.Option(0.2, "--margin-below", help="Capture when top-1 minus top-2 is below this (0 disables)."),
        entropy_above: float = typer.Option(0.6, "--entropy-above", help="Capture when the normalised entropy is above this (1 disables)."),
        random_rate: float = typer.Option(0.01, "--random-rate", help="Also capture this fraction at random (an unbiased baseline)."),
        per_class_quota: Optional[int] = typer.Option(None, "--per-class-quota", help="At most this many samples per predicted class."),
        max_per_minute: float = typer.Option(120.0, "--max-captures-per-minute", help="Rate limit of captures (0 = no limit)."),
        band_low: float = typer.Option(0.3, "--score-band-low", help="Detectors: capture a frame whose best score is at least this and at most --score-band-high."),
        band_high: float = typer.Option(0.6, "--score-band-high", help="Detectors: upper end of the uncertain score band (low = high = 0 disables the band)."),
        overlap_iou: float = typer.Option(0.5, "--overlap-iou", help="Detectors: capture a frame where boxes of different classes overlap by more than this IoU (1 disables)."),
        max_body: int = typer.Option(1 << 20, "--max-body-bytes", help="Larger request bodies get 413."),
        max_image_pixels: int = typer.Option(4_000_000, "--max-image-pixels", help="Uploaded images with more pixels get 413, before decoding."),
        bundles_dir: Optional[Path] = typer.Option(None, "--bundles-dir", help="POST /admin/reload takes only bundles under this folder (default: the bundle's parent)."),
        admin_token_file: Optional[Path] = typer.Option(None, "--admin-token-file", help="Where to write the admin bearer token, mode 0600 (default: next to the capture store)."),
        trust: Optional[Path] = typer.Option(None, "--trust", help="Ed25519 public key (KEY.pub from `edgeloop keys create`): serve only bundles whose manifest.sig it verifies, at start, on /admin/reload and on SIGHUP."),
    ) -> None:
        """Serve a bundle over HTTP: POST /predict, GET /health, GET /metrics, POST /admin/reload|rollback,
        and the Open Inference Protocol (KServe v2): /v2/health/live|ready, /v2/models/NAME[/ready|/infer].

        Detector bundles take an image body (png, jpeg, multipart 'file') and answer boxes.

        Checks every file's SHA-256 at start (a changed bundle is refused) and opens no outbound connection.
        Admin requests need the bearer token the server writes at start (its path is printed).
        """
        from edgeloop.runtime.bundle import BundleError
        from edgeloop.runtime.capture import CapturePolicy
        from edgeloop.runtime.server import ServerConfig, _capture_budget_bytes, check_config, serve as run_server

        for flag, v in [("--confidence-below", confidence_below), ("--margin-below", margin_below),
                        ("--entropy-above", entropy_above), ("--random-rate", random_rate),
                        ("--score-band-low", band_low), ("--score-band-high", band_high), ("--overlap-iou", overlap_iou)]:
            if not 0.0 <= v <= 1.0:  # NaN fails too
                raise UsageError(f"{flag} must be between 0 and 1, got {v:g}")
        policy = CapturePolicy(confidence_below=confidence_below or None, margin_below=margin_below or None,
                               entropy_above=None if entropy_above >= 1.0 else entropy_above,
                               random_rate=random_rate, per_class_quota=per_class_quota,
                               max_per_minute=max_per_minute or None,
                               score_band_low=None if band_low == band_high == 0 else band_low,
                               score_band_high=None if band_low == band_high == 0 else band_high,
                               overlap_iou=None if overlap_iou >= 1.0 else overlap_iou)
        try:
            config = ServerConfig(bundle=str(bundle), host=host, port=port, threads=threads, max_body_bytes=max_body,
                                  capture=str(capture) if capture else None,
                                  capture_budget_bytes=_capture_budget_bytes(budget_mb), privacy=privacy,
                                  policy=policy, max_image_pixels=max_image_pixels,
                                  bundles_dir=str(bundles_dir) if bundles_dir else None,
                                  admin_token_file=str(admin_token_file) if admin_token_file else None,
                                  trust=str(trust) if trust else None)
            check_config(config)
            run_server(config)
        except BundleError as e:
            raise _bundle_error(e) from None

    samples = typer.Typer(help="Inspect and export captured samples.", no_args_is_help=True)
    app.add_typer(samples, name="samples")

    @samples.command("list")
    def samples_list(
        store: Path = typer.Argument(..., help="Capture store (the SQLite file given to `serve --capture`)."),
        limit: int = typer.Option(50, "--limit", help="Show at most this many (most informative first)."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
    ) -> None:
        """List captured samples: prediction, confidence, margin, reason."""
        from edgeloop.runtime.capture import CaptureError, CaptureStore

        _need_store(store)
        try:
            with CaptureStore(store, budget_bytes=2**62, readonly=True) as s:
                rows = list(s.rows())
        except CaptureError as e:
            raise UsageError(str(e)) from None
        rows.sort(key=lambda r: (-r["score"], r["id"]))
        if as_json:
            sys.stdout.write(json.dumps(rows[:limit], indent=2) + "\n")
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{store}: {len(rows)} samples", title_justify="left")
        for col in ("id", "version", "predicted", "confidence", "margin", "entropy", "reason", "raw"):
            t.add_column(col, justify="right" if col in ("id", "confidence", "margin", "entropy") else "left")
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for r in rows[:limit]:
            if r.get("detections") is not None:  # a detector's frame: its boxes
                dets = r["detections"]
                shown = ", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]"
                                  for d in dets[:3]) + (f" +{len(dets) - 3}" if len(dets) > 3 else "")
                t.add_row(str(r["id"]), str(r["model_version"]), f"{len(dets)} boxes: {shown}" if dets else "no boxes",
                          fmt(r["confidence"]), "-", "-", r["reason"], "frame" if r["has_input"] else "no")
                continue
            t.add_row(str(r["id"]), str(r["model_version"]), str(r["predicted"]), fmt(r["confidence"]),
                      fmt(r["margin"]), fmt(r["entropy"]), r["reason"], "yes" if r["has_input"] else "no")
        Console(highlight=False, width=120).print(t)

    @samples.command("export")
    def samples_export(
        store: Path = typer.Argument(..., help="Capture store (SQLite file)."),
        output: Path = typer.Option(..., "--output", "-o", help="Folder to write samples.npz, samples.csv and README.txt into (and, for a detector's frames, detections.json and the labelled frames as a YOLO folder)."),
        version: Optional[str] = typer.Option(None, "--version", help="Export only the samples this model version captured (needed when versions take inputs of different shapes)."),
        coco: bool = typer.Option(False, "--coco", help="Also write the labelled detector frames as COCO JSON (annotations.json, file names relative to images/)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Export captured samples: samples.npz + samples.csv (labels from `edgeloop label` filled in); a
        detector's labelled frames as a YOLO folder (images/, labels/*.txt, classes.txt, data.yaml) that
        `edgeloop data import` reads, and as COCO JSON with --coco."""
        from edgeloop.backends.bundle import write_atomically
        from edgeloop.runtime.capture import CaptureError, export_dataset

        _need_store(store)
        summary: dict = {}

        def fill(tmp: Path) -> None:
            try:
                summary.update(export_dataset(store, tmp, version=version, coco=coco))
            except (ValueError, CaptureError) as e:
                raise UsageError(str(e), where=str(store)) from None

        write_atomically(output, fill, kind="samples")
        summary["dir"] = str(output)
        if as_json:
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        else:
            typer.echo(f"exported {summary['samples']} samples ({summary['with_input']} with input, "
                       f"{summary['labelled']} labelled) to {output}; reasons: {summary['reasons']}", err=True)
            if summary["labelled_frames"]:
                typer.echo(f"{summary['labelled_frames']} labelled frames as a YOLO folder"
                           + (" and COCO annotations.json" if summary["coco"] else "")
                           + f": `edgeloop data import {output} -o DATASET` reads it", err=True)

    @app.command()
    def improve(
        bundle: Path = typer.Option(..., "--bundle", "-b", help="The bundle to improve (its source model is refitted)."),
        data: Path = typer.Option(..., "--data", help="Labelled data: a `samples export` folder with labels filled, or a .npz with x and y; detectors: the YOLO folder `samples export` writes (or COCO JSON, VOC, a detection dataset)."),
        base_data: Optional[Path] = typer.Option(None, "--base-data", help="The original training data (.npz x, y), trained on together with the new data; detectors: the detection dataset it was trained on (default: the one the model records)."),
        output: Path = typer.Option(..., "--output", "-o", help="Folder for the new bundle (next version)."),
        holdout: float = typer.Option(0.25, "--holdout", help="Fraction of the data held out to compare old and new."),
        epochs: int = typer.Option(15, "--epochs", help="Fine-tuning epochs (PyTorch sources)."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
        trust_pickle: bool = trust_pickle_option(),
    ) -> None:
        """Refit or fine-tune a bundle's model on labelled captures, re-apply its shrink recipe, write the next version."""
        from rich.console import Console

        from edgeloop.backends.bundle.improve import improve as run_improve

        if not 0.0 <= holdout < 1.0:
            raise UsageError(f"--holdout must be in [0, 1), got {holdout:g}")
        if output.resolve() == bundle.resolve():
            raise UsageError("--output must differ from --bundle (the old version stays for rollback)")
        err = Console(stderr=True, highlight=False)
        with err.status("improving...") as status:
            comp = run_improve(bundle, data, output, base_data=base_data, holdout=holdout, seed=seed,
                               epochs=epochs, progress=lambda m: status.update(m), trust_pickle=trust_pickle)
        if as_json:
            sys.stdout.write(json.dumps(comp, indent=2) + "\n")
            return
        m = comp["metric"]
        lines = [f"wrote {output} (version {comp['new_version']}, {comp['method']} on {comp['trained_on']} samples)"]
        for key, title in (("holdout_new", "held-out new data"), ("holdout_base", "held-out base data")):
            if key in comp and comp[key]["n"]:
                c = comp[key]
                lines.append(f"{title} (n={c['n']}): {m} old {c['old']:.4f} -> new {c['new']:.4f}")
        lines.append(f"shrink recipe: {comp['recipe_note']}")
        for line in lines:
            typer.echo(line)


def _need_store(store: Path) -> None:
    """Refuse, before opening it for writing, anything that is not a capture store."""
    import sqlite3

    if not store.is_file():
        raise UsageError("no such capture store", where=str(store))
    try:
        con = sqlite3.connect(store.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise UsageError(f"not a capture store ({e})", where=str(store)) from None
    if "samples" not in tables:
        raise UsageError("not a capture store (an SQLite file without a 'samples' table)", where=str(store))
