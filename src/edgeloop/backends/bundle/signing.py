"""Ed25519 keys and bundle signatures, through the ``cryptography`` package (extra ``sign``).

``create_keys(KEY)`` writes the private key ``KEY`` (PEM PKCS#8, mode 0600) and
the public key ``KEY.pub`` (PEM); ``sign_manifest`` turns the exact bytes of a
bundle's ``manifest.json`` into the detached signature document
``manifest.sig``, which :func:`edgeloop.runtime.bundle.check_bundle` verifies.
Ed25519 (RFC 8032) needs no parameters to choose and its signatures are
deterministic, so signing the same manifest twice gives the same bytes.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from edgeloop.errors import MissingDependencyError, UsageError


def _serialization() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise MissingDependencyError("cryptography", "sign") from None
    return serialization


def public_path(key: "str | os.PathLike[str]") -> Path:
    """``KEY.pub`` beside ``KEY`` (the suffix is appended, as ssh-keygen does)."""
    key = Path(key)
    return key.with_name(key.name + ".pub")


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Write a new file that did not exist (O_EXCL: an existing file, even one created meanwhile, is kept)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path} exists; refusing to overwrite a key (choose another name)") from None
    except OSError as e:
        raise UsageError(f"cannot write here ({e.strerror or e})", where=str(path)) from None
    try:
        os.fchmod(fd, mode)  # exactly this mode, whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(path)
        raise


def create_keys(key: "str | os.PathLike[str]") -> dict:
    """Write a new Ed25519 key pair: ``KEY`` (private, 0600) and ``KEY.pub``; return paths and fingerprint."""
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgeloop.runtime.bundle import key_fingerprint

    key = Path(key)
    pub = public_path(key)
    for p in (key, pub):
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p} exists; refusing to overwrite a key (choose another name)")
    if not key.parent.is_dir():
        raise UsageError(f"{key.parent} is not a folder", where=str(key))
    private = Ed25519PrivateKey.generate()
    _create_exclusive(key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    try:
        _create_exclusive(pub, private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    except BaseException:
        os.unlink(key)  # no half a key pair
        raise
    return {"private_key": str(key), "public_key": str(pub), "algorithm": "ed25519",
            "key_fingerprint": key_fingerprint(private.public_key())}


def load_private_key(path: "str | os.PathLike[str]") -> Any:
    """The Ed25519 private key ``edgeloop keys create`` wrote (unencrypted PEM PKCS#8)."""
    serialization = _serialization()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the signing key ({e.strerror or e})", where=str(path)) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError("the signing key is encrypted; edgeloop reads unencrypted keys "
                         "(`edgeloop keys create` writes one with mode 0600)", where=str(path)) from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " (that is the public key; --sign takes the private KEY)" if b"PUBLIC KEY" in data else ""
        raise UsageError(f"not a PEM private key{hint}", where=str(path)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError("not an Ed25519 private key (bundles are signed with Ed25519)", where=str(path))
    return key


def signature_document(private_key: Any, manifest_bytes: bytes) -> bytes:
    """The text of ``manifest.sig``: the Ed25519 signature of ``manifest_bytes``, and the signer's fingerprint."""
    from edgeloop.runtime.bundle import MANIFEST, SIGNATURE_FORMAT, key_fingerprint

    doc = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "signed_file": MANIFEST,
           "key_fingerprint": key_fingerprint(private_key.public_key()),
           "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii")}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")
