"""Read and verify a bundle directory (standard library only).

A bundle is a folder with ``model.onnx``, ``manifest.json`` and friends; the
manifest lists the SHA-256 of every other file.  Anything that reads a bundle
for running it first calls :func:`verify_bundle`, so a tampered or corrupted
file is refused before onnxruntime ever parses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict

MANIFEST = "manifest.json"
MODEL = "model.onnx"
FORMAT = "edgeloop-bundle/1"


class BundleError(Exception):
    """A bundle that cannot be used (missing, malformed, tampered). One line, exit code 2."""

    exit_code = 2


def sha256_file(path: "str | os.PathLike[str]") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: "str | os.PathLike[str]") -> Dict[str, str]:
    """SHA-256 of every regular file under ``root`` except the manifest, keyed by POSIX relative path."""
    root = Path(root)
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST or name.endswith(".pyc"):
                continue
            out[rel] = sha256_file(p)
    return out


def read_manifest(bundle: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Parse ``manifest.json``; raises BundleError with the path on any problem."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory")
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{bundle}: no {MANIFEST}; is this an edgeloop bundle?") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read manifest ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an edgeloop bundle manifest (format must be '{FORMAT}')")
    if not isinstance(manifest.get("files"), dict) or MODEL not in manifest["files"]:
        raise BundleError(f"{path}: manifest lists no file hashes for {MODEL}")
    return manifest


def verify_bundle(bundle: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Check every file hash the manifest lists; return the manifest or raise BundleError."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    root = bundle.resolve()
    for rel, expected in sorted(manifest["files"].items()):
        p = (bundle / rel)
        try:
            inside = p.resolve().relative_to(root)
        except ValueError:
            inside = None
        if inside is None or rel.startswith("/"):
            raise BundleError(f"{bundle}: manifest lists a file outside the bundle: {rel}")
        if not p.is_file():
            raise BundleError(f"{bundle}: {rel} is missing (listed in the manifest)")
        actual = sha256_file(p)
        if actual != expected:
            raise BundleError(f"{bundle}: {rel} does not match its SHA-256 in the manifest "
                              f"(tampered or corrupted; expected {expected[:12]}..., got {actual[:12]}...)")
    return manifest
