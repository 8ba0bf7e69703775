"""The one command, ``edgeloop``, and its subcommands.

Every user-caused problem surfaces as an EdgeloopError and is printed as one
line on stderr (``error: <file>: <node>: <problem>``) with exit code 2; tables
go to stdout, and ``--json`` prints exactly one JSON document there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgeloop.errors import EdgeloopError, UsageError
from edgeloop.shapes import cli_option as input_shape_option, using_input_shapes

app = typer.Typer(
    name="edgeloop",
    help="Embedded machine learning: import a model or a dataset, train smallest-first, shrink, profile, pick the hardware, export C or a Linux bundle, serve, capture and improve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Tables are wide: when stdout is not a terminal (a pipe, a log), lay them out for 160 columns.
out = Console(highlight=False, soft_wrap=False)
if not out.is_terminal:
    out = Console(highlight=False, soft_wrap=False, width=160)
err = Console(stderr=True, highlight=False)


TRUST_PICKLE_HELP = ("Allow loading a pickle (.joblib/.pkl) scikit-learn model or source: unpickling runs "
                     "code from the file, so give this only for files you trust (.skops files need no trust).")


def trust_pickle_option() -> Any:
    """The --trust-pickle flag, the same on every command that may load a pickle."""
    return typer.Option(False, "--trust-pickle", help=TRUST_PICKLE_HELP)


def _load(path: str, trust_pickle: bool = False):
    from edgeloop.frontends import load_file

    return load_file(path, trust_pickle=trust_pickle)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fmt_bytes(n: Optional[float]) -> str:
    from edgeloop.hardware import format_bytes

    return "-" if n is None else format_bytes(int(n))


def _fmt_int(n: Optional[int]) -> str:
    return "-" if n is None else f"{int(n):,}"


def _fmt_ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x < 1:
        return f"{x * 1000:.3g} µs"
    return f"{x:.3g} ms" if x < 100 else f"{x:,.0f} ms"


def _profile(model, path: str, latency: bool) -> dict:
    from edgeloop.profile import profile_model

    try:
        if latency and err.is_terminal:
            with err.status("measuring host latency with onnxruntime (batch 1, 1 thread)..."):
                return profile_model(model, latency=True)
        return profile_model(model, latency=latency)
    except EdgeloopError as e:
        raise e.with_where(path)


@app.command()
def profile(
    model: str = typer.Argument(..., help="Model file: .onnx, .skops or .joblib/.pkl (scikit-learn), .pt2 (torch.export) or .tflite."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Also show the fit and estimated latency on this catalogue target (see `edgeloop targets`)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure host latency with onnxruntime (batch 1, one thread)."),
    input_shape: Optional[list[str]] = input_shape_option(),
    trust_pickle: bool = trust_pickle_option(),
) -> None:
    """Per-layer and total parameters, MACs, weight bytes, activation sizes, flash, planned peak RAM and host latency."""
    tgt = None
    if target is not None:
        from edgeloop.hardware import get_target

        tgt = get_target(target)  # fail fast on a typo, before any work
    with using_input_shapes(input_shape):
        m = _load(model, trust_pickle)
    prof = _profile(m, model, latency)
    result: dict[str, Any] = {"model": model, **prof}
    if tgt is not None:
        from edgeloop.hardware import recommend

        result["target"] = recommend(prof, [tgt])[0]
    _warn_non_finite(model, prof)
    if as_json:
        _emit_json(result)
        return
    _print_profile(model, result)


def _warn_non_finite(path: str, prof: dict) -> None:
    """One warning line on stderr per model whose weights hold NaN or inf (export refuses them)."""
    from edgeloop.profile.weights import describe_non_finite

    bad = prof.get("non_finite_weights") or []
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        err.print(f"warning: {path}: {describe_non_finite(bad[0])}{more}; the model answers NaN and export "
                  "will refuse it", markup=False, soft_wrap=True)


def _print_profile(path: str, p: dict) -> None:
    layers = Table(title=f"{path}: layers", title_justify="left")
    for col, just in [("#", "right"), ("name", "left"), ("op", "left"), ("params", "right"),
                      ("MACs", "right"), ("output shape", "left"), ("output", "right")]:
        layers.add_column(col, justify=just)
    for i, layer in enumerate(p["layers"]):
        shape = layer.get("output_shape")
        layers.add_row(str(i), str(layer["name"]), layer["op"], _fmt_int(layer["params"]),
                       _fmt_int(layer["macs"]), "x".join(str(d) for d in shape) if shape else "-",
                       _fmt_bytes(layer["output_bytes"]))
    out.print(layers)

    totals = Table(title="totals", title_justify="left", show_header=False)
    totals.add_column("what")
    totals.add_column("value", justify="right")
    by_dtype = ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in sorted(p.get("weight_bytes_by_dtype", {}).items()))
    totals.add_row("parameters", _fmt_int(p["params"]))
    totals.add_row("MACs per inference", _fmt_int(p["macs"]))
    det = p.get("detection")
    if det:
        totals.add_row(f"detector ({det['kind']}, {det['classes']} classes)",
                       f"{_fmt_int(det['candidates'])} candidate boxes; pre-processing ~{_fmt_int(det['preprocess_ops'])} "
                       f"ops, decode + NMS ~{_fmt_int(det['postprocess_ops'])} ops (estimates)")
    totals.add_row("compute precision", str(p.get("precision", "-")))
    totals.add_row("weight bytes", f"{_fmt_bytes(p['weight_bytes'])} ({by_dtype})" if by_dtype else _fmt_bytes(p["weight_bytes"]))
    totals.add_row("flash (estimate)", f"{_fmt_bytes(p['flash_bytes'])} ({_fmt_int(p['flash_bytes'])} B)")
    totals.add_row("peak RAM (planned arena)", f"{_fmt_bytes(p['peak_ram_bytes'])} ({_fmt_int(p['peak_ram_bytes'])} B)")
    lat = p.get("latency_ms")
    if lat:
        totals.add_row("host latency, onnxruntime 1 thread",
                       f"median {_fmt_ms(lat['median'])}, p90 {_fmt_ms(lat['p90'])} ({lat.get('runs', '?')} runs)")
    elif p.get("latency_note"):
        totals.add_row("host latency", p["latency_note"])
    out.print(totals)
    if "target" in p:
        _print_targets([p["target"]], title="on the requested target")


def _fmt_fps(row: dict) -> str:
    """Frames per second beside the latency, for detectors (whose estimate includes pre/post)."""
    fps = row.get("est_fps")
    if not fps or not any("post-processing" in n for n in row.get("notes", [])):
        return ""
    return f" ({fps:,.1f} fps)" if fps < 100 else f" ({fps:,.0f} fps)"


def _print_targets(rows: list[dict], title: str) -> None:
    t = Table(title=title, title_justify="left")
    t.add_column("target", no_wrap=True)
    for col, just in [("kind", "left"), ("RAM", "right"), ("flash/storage", "right"),
                      ("precisions", "left"), ("power", "right"), ("price", "right"),
                      ("est. latency*", "right"), ("fits", "left")]:
        t.add_column(col, justify=just, no_wrap=col != "fits", min_width=30 if col == "fits" else None)
    for r in rows:
        fits = {True: "yes", False: "no", None: ""}[r.get("fits")]
        if r.get("reasons"):
            fits = (fits + ": " if fits else "") + "; ".join(r["reasons"])
        t.add_row(r["name"], r["kind"], _fmt_bytes(r["ram_bytes"]), _fmt_bytes(r["flash_bytes"]),
                  ",".join(p.replace("float", "fp") for p in r.get("precisions", [])), f"{r['power_w']:g} W", f"${r['price_usd']:,.0f}",
                  _fmt_ms(r.get("est_latency_ms")) + _fmt_fps(r), fits)
    out.print(t)
    out.print("* estimated from the model's MACs and each target's calibrated throughput, not measured.")


@app.command()
def targets(
    model: Optional[str] = typer.Argument(None, help="Optional model file: show how it fits each target."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Reject targets whose estimated latency is above this."),
    max_power_w: Optional[float] = typer.Option(None, "--max-power-w", help="Reject targets that draw more than this (typical, watts)."),
    max_price_usd: Optional[float] = typer.Option(None, "--max-price-usd", help="Reject targets that cost more than this (USD)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    trust_pickle: bool = trust_pickle_option(),
) -> None:
    """The device catalogue; with a model, every target's fit with the reason for each misfit, fits ranked by price."""
    from edgeloop.hardware import recommend

    for flag, value in [("--max-latency-ms", max_latency_ms), ("--max-power-w", max_power_w),
                        ("--max-price-usd", max_price_usd)]:
        if value is not None and not value > 0:  # also catches nan
            raise UsageError(f"{flag} must be a positive number, got {value:g}")
    prof = None
    if model is not None:
        prof = _profile(_load(model, trust_pickle), model, latency=False)
        _warn_non_finite(model, prof)
    if max_latency_ms is not None and prof is None:
        raise UsageError("--max-latency-ms needs a MODEL to estimate latency for")
    rows = recommend(prof, max_latency_ms=max_latency_ms, max_power_w=max_power_w, max_price_usd=max_price_usd)
    if as_json:
        _emit_json(rows)
        return
    if prof is None:
        title = "device catalogue"
    else:
        n = sum(1 for r in rows if r["fits"])
        title = (f"{model}: fits {n} of {len(rows)} targets (needs {_fmt_bytes(prof['peak_ram_bytes'])} RAM, "
                 f"{_fmt_bytes(prof['flash_bytes'])} flash, {prof['precision']}, {_fmt_int(prof['macs'])} MACs)")
    _print_targets(rows, title)


@app.command("convert")
def convert(
    model: str = typer.Argument(..., help="Model file in any supported format."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the imported ONNX graph."),
    input_shape: Optional[list[str]] = input_shape_option(),
    head: Optional[Path] = typer.Option(None, "--head", help="Attach a detection head (JSON: kind, labels, input, and the kind's boxes/scores/anchors keys) so predict, shrink, export and serve decode boxes."),
    trust_pickle: bool = trust_pickle_option(),
) -> None:
    """Import a model (scikit-learn, torch.export, TFLite or ONNX) and save it as one ONNX graph."""
    from edgeloop.graph import save

    with using_input_shapes(input_shape):
        m = _load(model, trust_pickle)
    if head is not None:
        from edgeloop.detect import attach_head, read_head_file

        attach_head(m, read_head_file(head), where=str(head))
    save(m, output)
    err.print(f"wrote {output} ({len(m.graph.node)} nodes)")


@app.command()
def version() -> None:
    """Print edgeloop's version."""
    from edgeloop import __version__

    out.print(__version__)


def _register_areas() -> None:
    """Each area (shrink, export, serve, data) owns its commands in edgeloop.commands.<area>."""
    from edgeloop.commands import data, detect, export, keys, label, serve, shrink

    for module in (shrink, export, serve, data, keys, detect, label):
        module.register(app)


_register_areas()


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, prog_name="edgeloop")
    except EdgeloopError as e:
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except OSError as e:
        # a path the user gave that cannot be read or written (a folder where a file is
        # expected, a read-only place, a full disk): one line naming it, not a traceback
        where = e.filename if e.filename is not None else "error"
        err.print(f"error: {where}: {e.strerror or e}", markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
