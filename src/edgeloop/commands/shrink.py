"""CLI commands of this area, registered on the main `edgeloop` app by `register`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the main app (none yet)."""
