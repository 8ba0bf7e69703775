"""`edgeloop export`: one command, two backends chosen by the target's kind.

Microcontroller targets get dependency-free C (``edgeloop.backends.c``);
Linux boards get a deployable bundle (``edgeloop.backends.bundle``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from edgeloop.errors import UsageError


def register(app: typer.Typer) -> None:
    from edgeloop.cli import trust_pickle_option

    @app.command()
    def export(
        model: str = typer.Argument(..., help="Model file: .onnx, .skops, .joblib/.pkl, .pt2 or .tflite."),
        target: str = typer.Option(..., "--target", "-t", help="Catalogue target (see `edgeloop targets`): a microcontroller gets C, a Linux board a bundle."),
        output: Path = typer.Option(..., "--output", "-o", help="Output folder, replaced whole and only when the export succeeds; a non-empty folder that is not an earlier export is refused."),
        name: str = typer.Option("model", "--name", help="C symbol prefix for microcontroller exports."),
        verify: bool = typer.Option(False, "--verify", help="Microcontrollers: cross-compile and run under QEMU (Cortex-M4) and compare with the host."),
        as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
        trust_pickle: bool = trust_pickle_option(),
    ) -> None:
        """Export a model for a device: C source for a microcontroller, a bundle for a Linux board."""
        from edgeloop.hardware import get_target

        tgt = get_target(target)
        if tgt.kind == "mcu":
            from edgeloop.backends.c.export import export_cli
        elif tgt.kind == "linux":
            from edgeloop.backends.bundle import export_cli  # type: ignore[no-redef]
        else:
            raise UsageError(f"target '{tgt.id}' is an accelerator; export supports microcontrollers and "
                             "Linux boards (run the model on the accelerator's host board)")
        export_cli(model, tgt, output, prefix=name, verify=verify, as_json=as_json, trust_pickle=trust_pickle)
