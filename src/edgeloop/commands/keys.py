"""`edgeloop keys create KEY`: an Ed25519 key pair for signing bundles (`export --sign`, `serve --trust`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="Keys that sign bundles (export --sign KEY) and that devices trust (serve --trust KEY.pub).",
                       no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    def create(
        key: Path = typer.Argument(..., help="Private key file to write (mode 0600); the public key goes to KEY.pub. "
                                             "An existing file is never overwritten."),
        as_json: bool = typer.Option(False, "--json", help="Print the paths and the key fingerprint as JSON."),
    ) -> None:
        """Create an Ed25519 key pair: KEY signs bundles, KEY.pub goes on the devices that must trust them."""
        from edgeloop.backends.bundle.signing import create_keys

        info = create_keys(key)
        if as_json:
            sys.stdout.write(json.dumps(info, indent=2) + "\n")
            return
        typer.echo(f"wrote private key {info['private_key']} (mode 0600, keep it secret) and public key "
                   f"{info['public_key']}; fingerprint {info['key_fingerprint']}")
        typer.echo(f"sign: edgeloop export MODEL --target <board> -o BUNDLE --sign {info['private_key']}")
        typer.echo(f"trust: edgeloop serve BUNDLE --trust {info['public_key']}")
