"""Read and verify a bundle directory (standard library; ``cryptography`` only for signatures).

A bundle is a folder with ``model.onnx``, ``manifest.json`` and friends.  The
manifest names its hash algorithm (``"hash": "sha256"``) and lists the hash of
EVERY file of the bundle; ``manifest.sig`` is an Ed25519 signature of the
manifest's exact bytes.  Anything that reads a bundle for running it first
calls :func:`check_bundle` (or :func:`verify_bundle`), which refuses, before
onnxruntime ever parses a byte:

- with a trusted public key (``--trust KEY.pub``): an unsigned bundle or a
  signature that does not verify with that key;
- always: a manifest that is malformed or whose values have the wrong type or
  range, a listed file that is missing or whose hash differs, and a file on
  disk the manifest does not list.

Files a bundle may hold without listing them (runtime-owned state, see
:data:`UNLISTED`): the manifest and its signature, edgeloop's output marker,
the capture store folder ``captures/`` and Python's byte-code cache of the
bundled runtime; a manifest may name more (``unlisted_allowed``, e.g. the
onnxruntime wheel a Jetson image installs), and a signed manifest signs that
list too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.onnx"
FORMAT = "edgeloop-bundle/1"
SIGNATURE_FORMAT = "edgeloop-signature/1"
# the ownership marker every edgeloop output folder carries (written by edgeloop.fsutil)
MARKER = ".edgeloop-output.json"
HASH = "sha256"
HASHES = {"sha256": "SHA-256", "sha512": "SHA-512"}
# Never listed, never hashed: a folder entry ends with "/" and covers everything below it.
UNLISTED = (MANIFEST, SIGNATURE, MARKER, "captures/", "edgeloop_runtime/__pycache__/")
# the input dtypes the runtime converts requests to (edgeloop_runtime.model.DTYPES)
# "detection": images become the input tensor as the manifest's `head` says (letterbox and all)
PREPROCESSING_TYPES = ("none", "image", "detection")
DTYPE_NAMES = ("float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool")


class BundleError(Exception):
    """A bundle that cannot be used (missing, malformed, tampered, unsigned). One line, exit code 2."""

    exit_code = 2


class Verified(NamedTuple):
    """What :func:`check_bundle` established: the manifest, and how far it is trusted."""

    manifest: Dict[str, Any]
    signature: Dict[str, Any]  # {"signature": "verified", "key_fingerprint": ...} or {"signature": "unsigned"}


def file_hash(path: "str | os.PathLike[str]", algorithm: str = HASH) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: "str | os.PathLike[str]") -> str:
    return file_hash(path, "sha256")


def is_unlisted(rel: str, allowed: "Tuple[str, ...]") -> bool:
    return any(rel == a or (a.endswith("/") and (rel + "/").startswith(a)) for a in allowed)


def walk_files(root: "str | os.PathLike[str]", allowed: "Tuple[str, ...]" = UNLISTED) -> List[str]:
    """POSIX relative paths of every entry under ``root`` a manifest must list, sorted.

    Symbolic links count as entries of their own (never followed), so a link to a folder
    outside the bundle is an unlisted entry, not a way around the check."""
    root = Path(root)
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            rel = (here / d).relative_to(root).as_posix()
            if is_unlisted(rel, allowed):
                continue
            if (here / d).is_symlink():
                found.append(rel)
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            rel = (here / name).relative_to(root).as_posix()
            if not is_unlisted(rel, allowed):
                found.append(rel)
    return sorted(found)


def hash_tree(root: "str | os.PathLike[str]", algorithm: str = HASH,
              allowed: "Tuple[str, ...]" = UNLISTED) -> Dict[str, str]:
    """The hash of every file under ``root`` that a manifest must list, keyed by POSIX relative path."""
    root = Path(root)
    return {rel: file_hash(root / rel, algorithm) for rel in walk_files(root, allowed)}


# --------------------------------------------------------------------------------------------
# reading and checking the manifest
# --------------------------------------------------------------------------------------------
def _read_manifest_bytes(bundle: Path) -> bytes:
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory")
    try:
        return (bundle / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{bundle}: no {MANIFEST}; is this an edgeloop bundle?") from None
    except OSError as e:
        raise BundleError(f"{bundle / MANIFEST}: cannot read manifest ({e.strerror or e})") from None


def _parse_manifest(bundle: Path, data: bytes) -> Dict[str, Any]:
    path = bundle / MANIFEST
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: cannot read manifest ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an edgeloop bundle manifest (format must be '{FORMAT}')")
    validate_manifest(manifest, str(path))
    return manifest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_manifest(bundle: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Parse and check ``manifest.json`` (types and ranges); raises BundleError with the path on any problem."""
    bundle = Path(bundle)
    return _parse_manifest(bundle, _read_manifest_bytes(bundle))


class _Bad(Exception):
    """One manifest field with a wrong type or value: (field, problem)."""


def _need(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise _Bad(f"manifest field '{field}' {problem}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _opt_str(m: Dict[str, Any], key: str, field: Optional[str] = None) -> None:
    _need(m.get(key) is None or isinstance(m.get(key), str), field or key, "must be a string")


def _relative_path(rel: Any, field: str) -> None:
    _need(isinstance(rel, str) and rel != "", field, "must name a path")
    parts = rel.rstrip("/").split("/")
    _need(not rel.startswith("/") and "\\" not in rel and all(p not in ("", ".", "..") for p in parts),
          field, f"names a path outside the bundle or not in POSIX form: {rel!r}")


def _tensor_specs(m: Dict[str, Any], key: str, min_rank: int) -> List[Dict[str, Any]]:
    specs = m.get(key)
    _need(isinstance(specs, list), key, "must be a list of tensors")
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        _need(isinstance(spec, dict), where, "must be an object with name, dtype and shape")
        _need(isinstance(spec.get("name"), str) and spec["name"] != "", f"{where}.name", "must be a non-empty string")
        _need(isinstance(spec.get("dtype"), str), f"{where}.dtype", "must be a string")
        shape = spec.get("shape")
        _need(isinstance(shape, list) and len(shape) >= min_rank, f"{where}.shape",
              "must be a list" + (" with a batch dimension" if min_rank else ""))
        _need(all(d is None or (_is_int(d) and d > 0) for d in shape), f"{where}.shape",
              "must hold positive integers or null")
    return specs


def _check_preprocessing(pre: Any) -> None:
    if pre is None:
        return
    _need(isinstance(pre, dict), "preprocessing", "must be an object")
    kind = pre.get("type", "none")
    _need(kind in PREPROCESSING_TYPES, "preprocessing.type",
          f"must be one of {', '.join(PREPROCESSING_TYPES)}, got {kind!r}")
    if kind != "image":
        return
    channels = pre.get("channels", 1)
    _need(_is_int(channels) and channels in (1, 3), "preprocessing.channels", "must be 1 or 3")
    for key in ("width", "height"):
        _need(_is_int(pre.get(key)) and 0 < pre[key] <= 65536, f"preprocessing.{key}", "must be a positive integer")
    _need(_is_number(pre.get("scale", 1.0)), "preprocessing.scale", "must be a finite number")
    for key, default in (("mean", 0.0), ("std", 1.0)):
        values = pre.get(key, [default] * channels)
        _need(isinstance(values, list) and len(values) == channels and all(_is_number(v) for v in values),
              f"preprocessing.{key}", f"must be a list of {channels} finite numbers")
    _need(all(v != 0 for v in pre.get("std", [1.0])), "preprocessing.std", "must not hold 0")
    _need(pre.get("layout", "NCHW") in ("NCHW", "NHWC"), "preprocessing.layout", "must be 'NCHW' or 'NHWC'")


def _check_head(m: Dict[str, Any], outputs: List[str]) -> None:
    """A detector's manifest carries its head (edgeloop_runtime.detect parses it) and says so in
    ``task`` and ``preprocessing``; the head's output names must be outputs of the model."""
    head = m.get("head")
    pre = m.get("preprocessing") or {}
    if head is None:
        _need(m.get("task") != "detection", "head", "is needed when 'task' is 'detection'")
        _need(pre.get("type") != "detection", "head", "is needed when 'preprocessing.type' is 'detection'")
        return
    from .detect import HeadError, parse_head  # numpy only, like the rest of the runtime

    _need(isinstance(head, dict), "head", "must be an object (a detection head)")
    try:
        parsed = parse_head(head)
    except HeadError as e:
        raise _Bad(f"manifest field 'head.{e.key}' {e.message}") from None
    _need(m.get("task") == "detection", "task", f"must be 'detection' for a bundle with a head, got {m.get('task')!r}")
    _need(pre.get("type") == "detection", "preprocessing.type",
          f"must be 'detection' for a bundle with a head, got {pre.get('type')!r}")
    named = [("head.output", parsed.get("output"))] if parsed["kind"] in ("yolov8", "yolov5") else []
    for section in ("boxes", "scores", "heatmap"):
        if isinstance(parsed.get(section), dict):
            named.append((f"head.{section}.output", parsed[section].get("output")))
    for field, name in named:
        _need(name is None or name in outputs, field, f"names '{name}', not one of the outputs {outputs}")


def validate_manifest(m: Dict[str, Any], where: str) -> None:
    """Refuse (BundleError naming the field) a manifest whose values the runtime or improve would misread."""
    try:
        _validate(m)
    except _Bad as e:
        raise BundleError(f"{where}: {e}") from None


def _validate(m: Dict[str, Any]) -> None:
    algorithm = m.get("hash", HASH)  # bundles written before the field existed used SHA-256
    _need(algorithm in HASHES, "hash", f"names an unsupported hash algorithm {algorithm!r} "
          f"(supported: {', '.join(HASHES)})")
    files = m.get("files")
    _need(isinstance(files, dict) and MODEL in files, "files", f"must map every file to its hash, {MODEL} included")
    length = hashlib.new(algorithm).digest_size * 2
    for rel, digest in files.items():
        _relative_path(rel, "files")
        _need(isinstance(digest, str) and len(digest) == length and all(c in "0123456789abcdef" for c in digest),
              f"files.{rel}", f"must be a {HASHES[algorithm]} hex digest")
    allowed = m.get("unlisted_allowed", [])
    _need(isinstance(allowed, list), "unlisted_allowed", "must be a list of paths")
    for rel in allowed:
        _relative_path(rel, "unlisted_allowed")
    _opt_str(m, "name")
    _need(_is_int(m.get("version", 1)) and m.get("version", 1) >= 0, "version", "must be a non-negative integer")
    _opt_str(m, "task")
    _opt_str(m, "created")
    target = m.get("target")
    _need(target is None or (isinstance(target, dict) and isinstance(target.get("id"), str)), "target",
          "must be an object with a string 'id'")
    inputs = _tensor_specs(m, "inputs", 1)
    _need(len(inputs) >= 1, "inputs", "lists no input")
    for i, spec in enumerate(inputs):
        _need(spec["dtype"] in DTYPE_NAMES, f"inputs[{i}].dtype",
              f"must be one of {', '.join(DTYPE_NAMES)}, got {spec['dtype']!r}")
    outputs = _tensor_specs(m, "outputs", 0)
    _need(len(outputs) >= 1, "outputs", "lists no output")
    names = [o["name"] for o in outputs]
    post = m.get("postprocess") or {}
    _need(isinstance(post, dict), "postprocess", "must be an object")
    for key in ("scores", "label"):
        v = post.get(key)
        _need(v is None or (isinstance(v, str) and v in names), f"postprocess.{key}",
              f"must be null or one of the outputs {names}")
    _need(post.get("scores_kind") in (None, "probabilities", "logits"), "postprocess.scores_kind",
          "must be null, 'probabilities' or 'logits'")
    labels = m.get("labels")
    _need(labels is None or (isinstance(labels, list) and all(isinstance(v, (str, int, float)) for v in labels)),
          "labels", "must be null or a list of strings or numbers")
    if labels and post.get("scores"):
        width = next((o["shape"] or [None])[-1] for o in outputs if o["name"] == post["scores"])
        _need(width is None or width == 1 or width == len(labels), "labels",
              f"lists {len(labels)} labels, the scores output '{post['scores']}' has {width} classes")
    _check_preprocessing(m.get("preprocessing"))
    _check_head(m, names)
    n_orig = m.get("n_features_original")
    _need(n_orig is None or (_is_int(n_orig) and n_orig > 0), "n_features_original",
          "must be null or a positive integer")
    kept = m.get("kept_features")
    _need(kept is None or (isinstance(kept, list) and all(_is_int(k) for k in kept)), "kept_features",
          "must be null or a list of integers")
    if kept:
        _need(n_orig is not None, "n_features_original", "must be given with 'kept_features'")
        bad = [k for k in kept if not 0 <= k < n_orig]
        _need(not bad, "kept_features", f"holds {bad[0]}, out of range for {n_orig} original features "
              f"(0..{n_orig - 1})" if bad else "")
        _need(len(set(kept)) == len(kept), "kept_features", "lists a feature twice")
        width = inputs[0]["shape"][-1]
        _need(len(inputs[0]["shape"]) != 2 or width is None or width == len(kept), "kept_features",
              f"lists {len(kept)} features, the input takes {width}")
    prov = m.get("provenance")
    _need(prov is None or isinstance(prov, dict), "provenance", "must be an object")
    if prov and prov.get("source_file") is not None:
        _relative_path(prov["source_file"], "provenance.source_file")
    req = m.get("requirements")
    _need(req is None or (isinstance(req, list) and all(isinstance(r, str) for r in req)), "requirements",
          "must be a list of strings")


# --------------------------------------------------------------------------------------------
# signatures (Ed25519 through `cryptography`, imported only when a key is involved)
# --------------------------------------------------------------------------------------------
def _crypto(purpose: str) -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise BundleError(f"{purpose} needs the 'cryptography' package "
                          "(pip install cryptography, or pip install 'edgeloop[sign]')") from None
    return serialization


def key_fingerprint(public_key: Any) -> str:
    """``SHA256:<base64>`` of the raw 32-byte Ed25519 public key (the form OpenSSH prints)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")


def load_public_key(path: "str | os.PathLike[str]") -> Any:
    """An Ed25519 public key from a PEM file (``edgeloop keys create``) or an OpenSSH ``ssh-ed25519`` line."""
    serialization = _crypto("--trust")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read the trusted public key ({e.strerror or e})") from None
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        what = "a private key, which stays with the signer" if b"PRIVATE KEY" in data else "not a public key file"
        raise BundleError(f"{path}: {what} ({type(e).__name__}); --trust takes the KEY.pub that "
                          "`edgeloop keys create KEY` wrote") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an Ed25519 public key (bundles are signed with Ed25519)")
    return key


def _check_signature(bundle: Path, data: bytes, trust: Any) -> Dict[str, Any]:
    key = load_public_key(trust) if isinstance(trust, (str, os.PathLike)) else trust
    from cryptography.exceptions import InvalidSignature

    fingerprint = key_fingerprint(key)
    sig_path = bundle / SIGNATURE
    try:
        doc = json.loads(sig_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{bundle}: the bundle is not signed (no {SIGNATURE}); --trust accepts only bundles "
                          f"signed with `edgeloop export --sign KEY`") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{sig_path}: cannot read the signature ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT or doc.get("algorithm") != "ed25519" \
            or not isinstance(doc.get("signature"), str):
        raise BundleError(f"{sig_path}: not an edgeloop Ed25519 signature (format must be '{SIGNATURE_FORMAT}')")
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
        key.verify(signature, data)
    except (InvalidSignature, ValueError):
        named = doc.get("key_fingerprint")  # what the signature file claims: a hint, never trusted
        why = (f"{MANIFEST} was changed after it was signed" if named == fingerprint else
               f"it names the key {named}: signed by another key, or changed" if isinstance(named, str) else
               "signed by another key, or changed")
        raise BundleError(f"{bundle}: the signature of {MANIFEST} does not verify with the trusted key "
                          f"{fingerprint} ({why})") from None
    return {"signature": "verified", "key_fingerprint": fingerprint}


def check_bundle(bundle: "str | os.PathLike[str]", trust: Any = None) -> Verified:
    """Verify a bundle: the signature (when ``trust`` is a public key file, or a loaded Ed25519 public
    key), the manifest, and every file.

    The manifest is read once, and the bytes whose signature was checked are the bytes parsed."""
    bundle = Path(bundle)
    data = _read_manifest_bytes(bundle)
    if trust is not None:
        signature = _check_signature(bundle, data, trust)
    else:
        signature = {"signature": "unsigned"}
        if (bundle / SIGNATURE).exists():
            signature["signature_note"] = f"{SIGNATURE} present but not checked (start with --trust KEY.pub)"
    manifest = _parse_manifest(bundle, data)
    _check_files(bundle, manifest)
    return Verified(manifest, signature)


def _check_files(bundle: Path, manifest: Dict[str, Any]) -> None:
    algorithm = manifest.get("hash", HASH)
    label = HASHES[algorithm]
    allowed = UNLISTED + tuple(manifest.get("unlisted_allowed", []))
    root = bundle.resolve()
    listed = manifest["files"]
    for rel, expected in sorted(listed.items()):
        p = bundle / rel
        try:
            p.resolve().relative_to(root)
        except ValueError:
            raise BundleError(f"{bundle}: manifest lists a file outside the bundle: {rel}") from None
        if p.is_symlink():
            raise BundleError(f"{bundle}: {rel} is a symbolic link; a bundle holds regular files only")
        if not p.is_file():
            raise BundleError(f"{bundle}: {rel} is missing (listed in the manifest)")
        actual = file_hash(p, algorithm)
        if actual != expected:
            raise BundleError(f"{bundle}: {rel} does not match its {label} in the manifest "
                              f"(tampered or corrupted; expected {expected[:12]}..., got {actual[:12]}...)")
    extra = [rel for rel in walk_files(bundle, allowed) if rel not in listed]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise BundleError(f"{bundle}: {extra[0]}{more} is not listed in the manifest (a bundle holds only the "
                          "files it was exported with: remove it, or export again)")


def verify_bundle(bundle: "str | os.PathLike[str]", trust: Any = None) -> Dict[str, Any]:
    """:func:`check_bundle`, returning the manifest only."""
    return check_bundle(bundle, trust).manifest
