"""`edgeloop export`: one command, two backends chosen by the target's kind.

Microcontroller targets get dependency-free C (``edgeloop.backends.c``);
Linux boards get a deployable bundle (``edgeloop.backends.bundle``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeloop.errors import UsageError
from edgeloop.shapes import cli_option as input_shape_option, using_input_shapes


def register(app: typer.Typer) -> None:
    from edgeloop.cli import trust_pickle_option

    @app.command()
    def export(
        model: str = typer.Argument(..., help="Model file: .onnx, .skops, .joblib/.pkl, .pt2 or .tflite."),
        target: str = typer.Option(..., "--target", "-t", help="Catalogue target (see `edgeloop targets`): a microcontroller gets C, a Linux board a bundle."),
        output: Path = typer.Option(..., "--output", "-o", help="Output folder, written only when the export succeeds. Over an earlier export of the same kind (edgeloop's .edgeloop-output.json marker) only the files edgeloop wrote are replaced and the rest (a bundle's captures/) is kept; any other non-empty folder is refused."),
        name: str = typer.Option("model", "--name", help="C symbol prefix for microcontroller exports."),
        verify: bool = typer.Option(False, "--verify", help="Microcontrollers: cross-compile for the target's own core and run it under QEMU (Cortex-M7 on mps2-an500, M4 on mps2-an386, M3 and M0+ code on mps2-an385), compare outputs (and a detector's boxes) with the host; cores QEMU lacks (Xtensa, RISC-V) skip it with a reason."),
        as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
        sign: Optional[Path] = typer.Option(None, "--sign", help="Linux bundles: sign the manifest with this Ed25519 private key (from `edgeloop keys create KEY`) into manifest.sig; devices check it with `serve --trust KEY.pub`."),
        input_shape: Optional[list[str]] = input_shape_option(),
        trust_pickle: bool = trust_pickle_option(),
    ) -> None:
        """Export a model for a device: C source for a microcontroller, a bundle for a Linux board."""
        from edgeloop.hardware import get_target

        tgt = get_target(target)
        if tgt.kind == "mcu":
            if sign is not None:
                raise UsageError(f"--sign signs Linux bundles; '{tgt.id}' is a microcontroller, which gets C source")
            from edgeloop.backends.c.export import export_cli
        elif tgt.kind == "linux":
            from edgeloop.backends.bundle import export_cli  # type: ignore[no-redef]
        else:
            raise UsageError(f"target '{tgt.id}' is an accelerator; export supports microcontrollers and "
                             "Linux boards (run the model on the accelerator's host board)")
        extra = {"sign": sign} if tgt.kind == "linux" else {}
        with using_input_shapes(input_shape):  # the backend's own load_file gets the shapes
            export_cli(model, tgt, output, prefix=name, verify=verify, as_json=as_json, trust_pickle=trust_pickle, **extra)
