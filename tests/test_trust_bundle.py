"""Issue 9, items 2, 4 and 8 (manifest part): outputs owned by a marker, signed bundles, checked manifests.

From outside where it matters: the `edgeloop` CLI and the bundle's own `python -m edgeloop_runtime`
in subprocesses, a real server for SIGHUP, and the signature checked with `cryptography` directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from test_serve_fixtures import PY, copy_bundle, digits, digits_bundle, digits_joblib, http, server

MARKER = ".edgeloop-output.json"
NOT_LISTED = {"manifest.json", "manifest.sig", MARKER}


def _cli(*args, cwd=None, timeout=180):
    return subprocess.run([PY, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def _runtime(bundle, *args):
    """The bundle's own runtime, run from inside the bundle (no edgeloop on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([PY, "-m", "edgeloop_runtime", ".", *map(str, args)], cwd=bundle, capture_output=True,
                          text=True, timeout=60, env=env)


def _one_line_refusal(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from edgeloop.backends.bundle.signing import create_keys

    d = tmp_path_factory.mktemp("keys")
    for name in ("release", "other"):  # the CLI is tested below; here keys are only needed
        create_keys(d / name)
    return d


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    """A bundle exported with `--sign` through the CLI."""
    out = tmp_path_factory.mktemp("signed") / "bundle"
    r = _cli("export", "--trust-pickle", digits_joblib(tmp_path_factory), "--target", "raspberry-pi-4", "-o", out,
             "--sign", keys / "release", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["signed"].startswith("SHA256:")
    return out


# --------------------------------------------------------------------------------------------
# keys create
# --------------------------------------------------------------------------------------------
def test_keys_create_writes_a_0600_private_key_and_never_overwrites(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    old = os.umask(0)  # even with a permissive umask the private key is 0600
    try:
        r = _cli("keys", "create", tmp_path / "k", "--json")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    priv = serialization.load_pem_private_key((tmp_path / "k").read_bytes(), password=None)
    pub = serialization.load_pem_public_key((tmp_path / "k.pub").read_bytes())
    assert isinstance(priv, Ed25519PrivateKey) and isinstance(pub, Ed25519PublicKey)
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw
    assert info["key_fingerprint"] == "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    before = _files(tmp_path)
    _one_line_refusal(_cli("keys", "create", tmp_path / "k"), "exists", "refusing to overwrite")
    from edgeloop.backends.bundle.signing import create_keys
    from edgeloop.errors import UsageError

    (tmp_path / "lonely.pub").write_text("someone's public key")
    with pytest.raises(UsageError, match="lonely.pub exists"):
        create_keys(tmp_path / "lonely")
    assert not (tmp_path / "lonely").exists()  # no half a key pair
    assert {k: v for k, v in _files(tmp_path).items() if k != "lonely.pub"} == before


# --------------------------------------------------------------------------------------------
# export --sign
# --------------------------------------------------------------------------------------------
def test_signed_manifest_lists_every_file_with_its_hash(signed, keys, tmp_path_factory):
    from cryptography.hazmat.primitives import serialization

    m = json.loads((signed / "manifest.json").read_text())
    assert m["hash"] == "sha256"
    on_disk = {p.relative_to(signed).as_posix() for p in signed.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - NOT_LISTED
    for rel, digest in m["files"].items():
        assert hashlib.sha256((signed / rel).read_bytes()).hexdigest() == digest
    # a detached Ed25519 signature of the manifest's exact bytes, checked here without edgeloop's code
    sig = json.loads((signed / "manifest.sig").read_text())
    assert sig["algorithm"] == "ed25519"
    pub = serialization.load_pem_public_key((keys / "release.pub").read_bytes())
    pub.verify(base64.b64decode(sig["signature"]), (signed / "manifest.json").read_bytes())  # raises if wrong
    # cryptography is a requirement of the signed bundle only
    pins = (signed / "requirements.txt").read_text()
    assert "cryptography==" in pins and "cryptography==" in " ".join(m["requirements"])
    assert "cryptography" not in (digits_bundle(tmp_path_factory) / "requirements.txt").read_text()
    # Docker: the compose file mounts the trusted key from outside the bundle and starts with --trust
    import yaml

    service = yaml.safe_load((signed / "docker-compose.yml").read_text())["services"]["model"]
    assert service["command"][-2:] == ["--trust", "/trust/key.pub"]
    assert any(v.endswith(":/trust/key.pub:ro") for v in service["volumes"])
    assert (signed / ".dockerignore").read_text().splitlines()[-1] == "captures/"  # captures never in an image


def test_sign_needs_a_private_key_and_a_linux_target(tmp_path, keys, tmp_path_factory):
    src = digits_joblib(tmp_path_factory)
    _one_line_refusal(_cli("export", "--trust-pickle", src, "--target", "raspberry-pi-4", "-o", tmp_path / "b", "--sign",
                           keys / "release.pub"), "public key")
    _one_line_refusal(_cli("export", "--trust-pickle", src, "--target", "nrf52840", "-o", tmp_path / "c", "--sign",
                           keys / "release"), "--sign signs Linux bundles")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# --------------------------------------------------------------------------------------------
# serve --trust / python -m edgeloop_runtime --trust
# --------------------------------------------------------------------------------------------
def _tamper_and_rehash(b: Path) -> None:
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "model.onnx").write_bytes(bytes(data))
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["model.onnx"] = hashlib.sha256(bytes(data)).hexdigest()
    (b / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")


CASES = {
    # what was changed -> words of the one-line refusal
    "model swapped and its new SHA-256 pasted in": (_tamper_and_rehash, "signature"),
    "an unlisted file beside the model": (lambda b: (b / "extra.onnx").write_bytes(b"\x08\x01"),
                                          "extra.onnx is not listed"),
    "an unlisted module in the runtime": (lambda b: (b / "edgeloop_runtime" / "sitecustomize.py").write_text("x=1"),
                                          "edgeloop_runtime/sitecustomize.py is not listed"),
    "a listed file removed": (lambda b: (b / "Dockerfile").unlink(), "Dockerfile is missing"),
    "the signature removed": (lambda b: (b / "manifest.sig").unlink(), "not signed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trust_refuses_a_changed_bundle(case, signed, keys, tmp_path):
    """Exit 2 and one line at start; `edgeloop serve` and the bundle runtime take turns (both load alike)."""
    change, words = CASES[case]
    b = copy_bundle(signed, tmp_path / "b")
    change(b)
    if list(CASES).index(case) % 2 == 0:
        r = _cli("serve", b, "--trust", keys / "release.pub", "--port", "1")
    else:
        r = _runtime(b, "--trust", keys / "release.pub", "--port", "1")
    _one_line_refusal(r, words)


def test_without_trust_hashes_and_the_file_list_are_still_checked(signed, tmp_path):
    from edgeloop.runtime.bundle import BundleError, check_bundle

    for case, (change, words) in CASES.items():
        b = copy_bundle(signed, tmp_path / f"b{len(list(tmp_path.iterdir()))}")
        change(b)
        if case in ("model swapped and its new SHA-256 pasted in", "the signature removed"):
            assert check_bundle(b).signature["signature"] == "unsigned"  # only a signature can catch these
        else:
            with pytest.raises(BundleError, match=words):
                check_bundle(b)


def test_wrong_key_and_unsigned_bundle_are_refused(signed, keys, tmp_path_factory):
    line = _one_line_refusal(_cli("serve", signed, "--trust", keys / "other.pub", "--port", "1"),
                             "does not verify with the trusted key")
    assert "signed by another key" in line
    _one_line_refusal(_runtime(signed, "--trust", keys / "other.pub", "--port", "1"), "does not verify")
    _one_line_refusal(_cli("serve", digits_bundle(tmp_path_factory), "--trust", keys / "release.pub", "--port", "1"),
                      "not signed")
    _one_line_refusal(_cli("serve", signed, "--trust", keys / "release", "--port", "1"), "private key")


def test_good_signed_bundle_is_served_and_health_says_verified(signed, keys, tmp_path, tmp_path_factory):
    from starlette.testclient import TestClient

    from edgeloop.runtime.bundle import key_fingerprint, load_public_key
    from edgeloop.runtime.server import ServerConfig, create_app

    live = copy_bundle(signed, tmp_path / "live")
    fingerprint = key_fingerprint(load_public_key(keys / "release.pub"))
    _, x_te, _, _ = digits()
    # the bundle's own runtime, run from inside the bundle: it writes its byte-code cache there, and a
    # capture store in captures/ (both runtime-owned), which SIGHUP's re-verification accepts
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    with server(live, "--trust", str(keys / "release.pub"), "--capture", "captures/c.db", env=env) as proc:
        health = json.loads(http("GET", proc.url + "/health")[1])
        assert health["signature"] == "verified" and health["key_fingerprint"] == fingerprint
        status, body = http("POST", proc.url + "/predict", json.dumps({"inputs": x_te[:3].tolist()}).encode())
        assert status == 200 and len(json.loads(body)["label"]) == 3
        # SIGHUP with a tampered + re-hashed bundle in its place: refused and logged, version 1 keeps serving
        _tamper_and_rehash(live)
        proc.send_signal(signal.SIGHUP)
        _wait_for_log(proc, "SIGHUP reload refused")
        assert json.loads(http("GET", proc.url + "/health")[1])["version"] == 1
        assert http("POST", proc.url + "/predict", json.dumps({"input": x_te[0].tolist()}).encode())[0] == 200
    unsigned = TestClient(create_app(ServerConfig(bundle=str(digits_bundle(tmp_path_factory)))),
                          client=("127.0.0.1", 50000))
    assert unsigned.get("/health").json()["signature"] == "unsigned"


def _wait_for_log(proc, words, timeout=15.0):
    os.set_blocking(proc.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while words.encode() not in seen:
        assert time.monotonic() < deadline, seen.decode()
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    return seen.decode()


def test_reload_with_trust_takes_only_bundles_signed_by_the_key(signed, keys, tmp_path, tmp_path_factory):
    """/admin/reload's loader (State.reload, which the endpoint answers 409 from) checks like the start."""
    from edgeloop.backends.bundle import build_bundle
    from edgeloop.frontends import load_file
    from edgeloop.runtime.bundle import BundleError
    from edgeloop.runtime.server import ServerConfig, State

    state = State(ServerConfig(bundle=str(signed), trust=str(keys / "release.pub")))
    changed = copy_bundle(signed, tmp_path / "changed")
    _tamper_and_rehash(changed)
    for bad, words in ((digits_bundle(tmp_path_factory), "not signed"), (changed, "does not verify")):
        with pytest.raises(BundleError, match=words):
            state.reload(str(bad))
        assert state.model.path == signed and state.model.version == 1
    src = digits_joblib(tmp_path_factory)
    v2 = tmp_path / "v2"
    build_bundle(load_file(src, trust_pickle=True), v2, "raspberry-pi-4", version=2, source_path=str(src), sign=keys / "release")
    state.reload(str(v2))
    assert state.model.version == 2 and state.model.signature["signature"] == "verified"


def test_runtime_imports_cryptography_only_for_trust(signed, keys):
    code = ("import sys, edgeloop_runtime.server as s\n"
            "s.create_app(s.ServerConfig(bundle='.'))\n"
            "print('cryptography' in sys.modules)\n"
            "s.create_app(s.ServerConfig(bundle='.', trust=sys.argv[1]))\n"
            "print('cryptography' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([PY, "-c", code, str(keys / "release.pub")], cwd=signed, capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


# --------------------------------------------------------------------------------------------
# manifests with wrong types or ranges: one line at load (serve, the runtime, improve)
# --------------------------------------------------------------------------------------------
def _set(path, value):
    def change(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


BAD_MANIFESTS = [
    (_set(["version"], "2"), "'version'"),
    (_set(["inputs", 0, "shape"], "64"), "'inputs[0].shape'"),
    (_set(["inputs", 0, "dtype"], "complex128"), "'inputs[0].dtype'"),
    (_set(["inputs"], {"name": "input"}), "'inputs'"),
    (_set(["kept_features"], [0, 3, 64]), "'kept_features' holds 64, out of range for 64"),
    (_set(["kept_features"], [-1]), "'kept_features' holds -1"),
    (_set(["kept_features"], ["0"]), "'kept_features'"),
    (_set(["labels"], "0123456789"), "'labels'"),
    (_set(["labels"], [0, 1, 2]), "lists 3 labels"),
    (_set(["postprocess", "scores"], "nope"), "'postprocess.scores'"),
    (_set(["preprocessing"], {"type": "image", "channels": 3, "width": "8", "height": 8}), "'preprocessing.width'"),
    (_set(["hash"], "md5"), "'hash'"),
    (_set(["files"], ["model.onnx"]), "'files'"),
    (_set(["target"], "raspberry-pi-4"), "'target'"),
]


@pytest.mark.parametrize("change,words", BAD_MANIFESTS)
def test_manifest_values_of_the_wrong_type_are_refused_at_load(change, words, tmp_path, tmp_path_factory):
    from edgeloop.runtime.bundle import BundleError
    from edgeloop.runtime.model import BundleModel

    b = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    if "kept_features" in words:
        m["n_features_original"] = 64
    change(m)
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=words.replace("[", r"\[").replace("]", r"\]")):
        BundleModel(b)


def test_bad_manifest_is_one_line_from_serve_the_runtime_and_improve(tmp_path, tmp_path_factory):
    b = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["kept_features"], m["n_features_original"] = [0, 200], 64
    (b / "manifest.json").write_text(json.dumps(m))
    _one_line_refusal(_cli("serve", b, "--port", "1"), "kept_features", "out of range")
    _one_line_refusal(_runtime(b, "--port", "1"), "kept_features", "out of range")
    data = tmp_path / "d.npz"
    x_tr, _, y_tr, _ = digits()
    import numpy as np

    np.savez(data, x=x_tr[:40], y=y_tr[:40])
    _one_line_refusal(_cli("improve", "--bundle", b, "--data", data, "-o", tmp_path / "v2"), "kept_features")
    assert not (tmp_path / "v2").exists()


def test_runtime_dtype_names_match_the_model_loader():
    from edgeloop.runtime.bundle import DTYPE_NAMES
    from edgeloop.runtime.model import DTYPES

    assert set(DTYPE_NAMES) == set(DTYPES)


# --------------------------------------------------------------------------------------------
# output ownership (item 2), through the CLI
# --------------------------------------------------------------------------------------------
def test_export_refuses_a_folder_edgeloop_did_not_write(tmp_path, tmp_path_factory):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my page</h1>")
    (site / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    before = _files(site)
    src = digits_joblib(tmp_path_factory)
    for target in ("raspberry-pi-4", "nrf52840"):  # a bundle and a C export
        _one_line_refusal(_cli("export", "--trust-pickle", src, "--target", target, "-o", site), str(site), MARKER)
    assert _files(site) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no staging folder left


def test_export_refuses_an_output_of_another_kind(tmp_path, tmp_path_factory):
    from edgeloop.fsutil import staged_dir

    src = digits_joblib(tmp_path_factory)
    c = tmp_path / "c"
    with staged_dir(c, kind="c-export") as tmp:  # what `export --target <mcu>` writes, without compiling
        (tmp / "model.c").write_text("const int model_weights[1] = {0};\n")
    before = _files(c)
    _one_line_refusal(_cli("export", "--trust-pickle", src, "--target", "raspberry-pi-4", "-o", c), "C export, not a bundle")
    assert _files(c) == before


def test_re_export_over_a_bundle_keeps_captures_and_the_users_files(signed, keys, tmp_path, tmp_path_factory):
    from edgeloop.runtime.bundle import BundleError, check_bundle

    b = copy_bundle(signed, tmp_path / "b")
    (b / "captures").mkdir()
    (b / "captures" / "captures.db").write_bytes(b"SQLite format 3\x00 the device's samples")
    (b / "notes.txt").write_text("which board this is")
    old_model = (b / "model.onnx").read_bytes()
    # re-export a different model (fewer training samples) over it
    r = _cli("export", "--trust-pickle", digits_joblib(tmp_path_factory, n_train=60), "--target", "raspberry-pi-4", "-o", b,
             "--sign", keys / "release")
    assert r.returncode == 0, r.stderr
    assert "notes.txt" in r.stderr  # the user is told the runtime will refuse it
    assert (b / "captures" / "captures.db").read_bytes() == b"SQLite format 3\x00 the device's samples"
    assert (b / "notes.txt").read_text() == "which board this is"
    assert (b / "model.onnx").read_bytes() != old_model
    marker = json.loads((b / MARKER).read_text())
    assert marker["kind"] == "bundle" and "notes.txt" not in marker["files"] and "model.onnx" in marker["files"]
    assert not any(f.startswith("captures") for f in marker["files"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no staging leftovers
    with pytest.raises(BundleError, match="notes.txt is not listed"):
        check_bundle(b, keys / "release.pub")
    (b / "notes.txt").unlink()
    assert check_bundle(b, keys / "release.pub").signature["signature"] == "verified"  # captures/ is fine


def test_samples_export_and_data_import_are_owned_by_the_marker(tmp_path):
    """A folder with the file names a samples export writes (samples.csv) is still not edgeloop's."""
    import sqlite3

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "samples.csv").write_text("my,spreadsheet\n")
    (mine / "card.json").write_text("{}")
    store = tmp_path / "c.db"
    con = sqlite3.connect(store)
    con.execute("CREATE TABLE samples (id INTEGER)")
    con.commit()
    con.close()
    _one_line_refusal(_cli("samples", "export", store, "-o", mine), MARKER)
    x_tr, _, y_tr, _ = digits()
    import numpy as np

    np.savez(tmp_path / "d.npz", x=x_tr[:100], y=y_tr[:100])
    _one_line_refusal(_cli("data", "import", tmp_path / "d.npz", "-o", mine), MARKER)
    assert (mine / "samples.csv").read_text() == "my,spreadsheet\n" and (mine / "card.json").read_text() == "{}"
    assert sorted(p.name for p in mine.iterdir()) == ["card.json", "samples.csv"]
    shutil.rmtree(mine)
