"""`edgeloop label STORE`: label captured samples in a local browser page."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeloop.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command()
    def label(
        store: Path = typer.Argument(..., help="Capture store (the SQLite file given to `serve --capture`)."),
        port: int = typer.Option(8090, "--port", help="TCP port of the labelling page."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only)."),
    ) -> None:
        """Serve a local page to label captured samples: each with why it was captured and the model's
        prediction; accept, correct (draw, move or delete boxes, pick classes) or discard, by mouse or
        keyboard. Labels go into the capture store (one SQLite transaction each); `samples export`
        writes them out (YOLO/COCO for detectors, samples.csv for classifiers)."""
        from edgeloop.commands.serve import _need_store
        from edgeloop.label_page import run
        from edgeloop.runtime.capture import CaptureError
        from edgeloop.runtime.server import StartupError

        if not 0 < port < 65536:
            raise UsageError(f"--port must be between 1 and 65535, got {port}")
        _need_store(store)
        try:
            run(store, host=host, port=port)
        except (CaptureError, StartupError) as e:
            raise UsageError(str(e)) from None
