"""Issue 9, runtime side: a full disk never fails a prediction, the admin API refuses what a web page
could send, image bombs are refused before decoding, slow requests do not stall /health, reloads do
not crowd the first version out of the history, captures of two widths export per version, and
nonsensical numbers or capture paths are one-line startup errors."""

from __future__ import annotations

import contextlib
import http.client as httpclient
import io
import json
import os
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_serve_fixtures import (PY, admin_headers, cnn_bundle, copy_bundle, digits, digits_bundle, free_port, http,
                                 server)


def _version_copy(bundle: Path, dest: Path, version: int) -> Path:
    copy_bundle(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["version"] = version  # the manifest itself is not in the hash list
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def _client(bundle: Path, **kw):
    from starlette.testclient import TestClient

    from edgeloop.runtime.server import ServerConfig, create_app

    return TestClient(create_app(ServerConfig(bundle=str(bundle), **kw)), client=("127.0.0.1", 50000))


def _health(url: str) -> dict:
    return json.loads(http("GET", url + "/health")[1])


def _metric(url: str, name: str) -> float:
    for line in http("GET", url + "/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# -- item 3: a full disk ---------------------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A real 2 MB tmpfs, so SQLite hits ENOSPC for real (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MB tmpfs to fill needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_never_fails_a_prediction_and_recovers(tiny_fs, tmp_path_factory):
    store = tiny_fs / "captures.db"
    _, x_te, _, _ = digits()
    body = json.dumps({"inputs": x_te[:8].tolist()}).encode()
    with server(digits_bundle(tmp_path_factory), "--capture", str(store), "--random-rate", "1",
                "--max-captures-per-minute", "0", launcher=[PY, "-m", "edgeloop", "serve"]) as proc:
        status, out = http("POST", proc.url + "/predict", body)
        assert status == 200 and all(i is not None for i in json.loads(out)["captured"])
        assert _health(proc.url)["capture"]["status"] == "ok"
        filler = _fill(tiny_fs)
        answers = [http("POST", proc.url + "/predict", body) for _ in range(10)]
        assert [s for s, _ in answers] == [200] * 10, answers[0]
        docs = [json.loads(o) for _, o in answers]
        assert all(len(d["label"]) == 8 for d in docs)  # the predictions are all there
        assert all(d["captured"] == [None] * 8 for d in docs)  # only the captures were skipped
        cap = _health(proc.url)["capture"]
        assert cap["status"] == "degraded" and "database or disk is full" in cap["reason"]
        assert "cannot rollback" not in cap["reason"]  # the first error, not the ROLLBACK's
        assert {"store", "privacy", "captured", "used_bytes", "budget_bytes"} <= set(cap)
        assert _metric(proc.url, "edgeloop_capture_errors_total") >= 10 * 8
        # space comes back: the next request captures again, with no restart
        filler.unlink()
        status, out = http("POST", proc.url + "/predict", body)
        assert status == 200 and all(i is not None for i in json.loads(out)["captured"])
        cap = _health(proc.url)["capture"]
        assert cap["status"] == "ok" and cap["reason"] is None
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 16
    db.close()


def test_budget_bounds_the_real_disk_use_on_a_small_filesystem(tiny_fs):
    """A 1 MB budget on a 2 MB filesystem: the store evicts instead of ever filling the disk."""
    from edgeloop.runtime.capture import CaptureStore

    rng = np.random.default_rng(1)
    budget = 1 << 20
    with CaptureStore(tiny_fs / "c.db", budget_bytes=budget) as s:
        for m in rng.random(600):  # ~2.5 MB of 4 KiB samples: more than the whole filesystem
            s.add(rng.random(1024).astype(np.float32), reason="small_margin", confidence=0.9, margin=float(m))
            on_disk = sum(p.stat().st_size for p in tiny_fs.iterdir() if p.name in ("c.db", "c.db-wal"))
            assert on_disk <= budget
        assert s.count() > 50


# -- item 3: bad capture paths and numbers at start --------------------------------------------------

def _one_line_exit_2(cmd, words, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 2, (cmd, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    for w in words:
        assert w.lower() in r.stderr.lower(), (w, r.stderr)
    return r.stderr


def _bad_store(tmp_path: Path, kind: str) -> Path:
    if kind == "folder":
        (tmp_path / "store").mkdir()
        return tmp_path / "store"
    path = tmp_path / "store.db"
    if kind == "text":
        path.write_text("name,score\nalice,3\n" * 50)
    elif kind == "read-only":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE samples (id INTEGER)")
        con.commit()
        con.close()
        path.chmod(0o444)
    elif kind == "read-only-folder":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "store.db"
    elif kind == "corrupt":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, body TEXT)")
        con.executemany("INSERT INTO samples (body) VALUES (?)", [("x" * 500,)] * 200)
        con.commit()
        con.close()
        data = bytearray(path.read_bytes())
        data[4096 * 2:4096 * 6] = os.urandom(4096 * 4)  # pages of the table, header intact
        path.write_bytes(bytes(data))
    elif kind == "other-app":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE invoices (id INTEGER)")
        con.commit()
        con.close()
    return path


@pytest.mark.parametrize("kind,words", [("folder", ["folder"]), ("text", ["not an SQLite file"]),
                                        ("read-only", ["read-only"]), ("read-only-folder", ["read-only"]),
                                        ("corrupt", ["corrupt"]), ("other-app", ["not a capture store"])])
def test_bad_capture_path_is_a_one_line_startup_error(tmp_path, tmp_path_factory, kind, words):
    bundle = digits_bundle(tmp_path_factory)
    path = _bad_store(tmp_path, kind)
    before = path.read_bytes() if path.is_file() else None
    launcher = [PY, "-m", "edgeloop", "serve"] if kind in ("folder", "read-only") else [PY, "-m", "edgeloop_runtime"]
    try:
        _one_line_exit_2(launcher + [str(bundle), "--port", str(free_port()), "--capture", str(path)],
                         ["--capture", str(path.name)] + words, cwd=bundle)
    finally:
        for p in (path, path.parent):
            if p.exists():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
    if before is not None:
        assert path.read_bytes() == before  # the user's file is left exactly as it was


NUMBERS = [
    (["--capture-budget-mb", "nan"], "--capture-budget-mb"), (["--capture-budget-mb", "-5"], "--capture-budget-mb"),
    (["--threads", "-2"], "--threads"), (["--threads", "0"], "--threads"),
    (["--per-class-quota", "-1"], "--per-class-quota"), (["--per-class-quota", "0"], "--per-class-quota"),
    (["--max-image-pixels", "0"], "--max-image-pixels"), (["--random-rate", "nan"], "--random-rate"),
    (["--max-captures-per-minute", "-3"], "--max-captures-per-minute"), (["--threads", "many"], "--threads"),
]


@pytest.mark.parametrize("cli", ["edgeloop serve", "edgeloop_runtime"])
def test_nonsensical_numbers_are_one_line_startup_errors(tmp_path, tmp_path_factory, cli):
    bundle = digits_bundle(tmp_path_factory)
    launcher = [PY, "-m", "edgeloop", "serve"] if cli == "edgeloop serve" else [PY, "-m", "edgeloop_runtime"]
    # both CLIs share check_config: the (slower to start) edgeloop CLI runs a few of the cases
    cases = NUMBERS if cli == "edgeloop_runtime" else [NUMBERS[i] for i in (0, 2, 4, 7)]
    for args, flag in cases:
        _one_line_exit_2(launcher + [str(bundle), "--port", str(free_port()), "--capture",
                                     str(tmp_path / "c.db"), *args], [flag], cwd=bundle)


# -- item 5: the admin API -------------------------------------------------------------------------

def _raw(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """A request with exactly these headers (Host included): what a browser or rebinding page sends."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_admin_api_refuses_cross_site_requests_over_a_real_socket(tmp_path, tmp_path_factory):
    bundles = tmp_path / "bundles"
    v1 = copy_bundle(digits_bundle(tmp_path_factory), bundles / "v1")
    v2 = _version_copy(v1, bundles / "v2", 2)
    outside = _version_copy(v1, tmp_path / "elsewhere" / "v3", 3)
    store = tmp_path / "state" / "captures.db"
    with server(v1, "--capture", str(store)) as proc:
        port = int(proc.url.rsplit(":", 1)[1])
        printed = proc.stdout.readline().decode() + proc.stdout.readline().decode()
        token_file = store.parent / "admin-token"
        assert str(token_file) in printed
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        own = f"127.0.0.1:{port}"
        good = {"Host": own, "Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        reload_v2 = json.dumps({"bundle": str(v2)}).encode()
        refusals = [
            # the attack of the issue: a web page's text/plain form POST, foreign Origin and Host
            ({"Host": f"evil.example:{port}", "Origin": "http://evil.example", "Content-Type": "text/plain"}, 403),
            ({**good, "Host": f"evil.example:{port}"}, 403),  # DNS rebinding: right socket, foreign name
            ({**good, "Origin": "http://evil.example"}, 403),
            ({**good, "Origin": "null"}, 403),
            ({**good, "Origin": f"http://127.0.0.1:{port + 1}"}, 403),
            ({k: v for k, v in good.items() if k != "Authorization"}, 401),
            ({**good, "Authorization": "Bearer " + "x" * len(token)}, 401),
            ({**good, "Content-Type": "text/plain"}, 415),
            ({**good, "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ]
        for headers, want in refusals:
            status, out = _raw(port, "POST", "/admin/reload", reload_v2, headers)
            assert status == want, (headers, status, out)
            assert set(json.loads(out)) == {"error"} and b"\n" not in out.strip()
            status, out = _raw(port, "POST", "/admin/rollback", b"{}", headers)
            assert status == want, (headers, status, out)
        status, out = _raw(port, "POST", "/admin/reload", json.dumps({"bundle": str(outside)}).encode(), good)
        assert status == 403 and "bundles folder" in json.loads(out)["error"]
        assert _health(proc.url)["version"] == 1  # nothing above switched the model
        status, out = _raw(port, "POST", "/admin/reload", reload_v2, {**good, "Origin": f"http://{own}"})
        assert status == 200 and json.loads(out)["version"] == 2
        status, out = _raw(port, "POST", "/admin/rollback", b"", {**good, "Host": f"localhost:{port}"})
        assert status == 200 and json.loads(out)["version"] == 1
        assert _health(proc.url)["version"] == 1


def test_admin_token_file_option_and_bundles_dir(tmp_path, tmp_path_factory):
    v1 = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "a" / "v1")
    v2 = _version_copy(v1, tmp_path / "b" / "v2", 2)
    token_file = tmp_path / "secret" / "token"
    c = _client(v1, admin_token_file=str(token_file), bundles_dir=str(tmp_path / "b"))
    assert token_file.read_text().strip() == c.app.state.admin_token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    r = c.post("/admin/reload", json={"bundle": str(v2)}, headers=admin_headers(c))
    assert r.status_code == 200 and r.json()["version"] == 2
    # the served bundle's own folder is not under --bundles-dir here, so it cannot be reloaded by path
    r = c.post("/admin/reload", json={"bundle": str(v1)}, headers=admin_headers(c))
    assert r.status_code == 403
    # a symlink inside the bundles folder pointing out of it does not get around the check
    (tmp_path / "b" / "link").symlink_to(v1)
    r = c.post("/admin/reload", json={"bundle": str(tmp_path / "b" / "link")}, headers=admin_headers(c))
    assert r.status_code == 403


# -- item 8: reload history ---------------------------------------------------------------------

def test_reloading_the_same_bundle_keeps_the_first_version_reachable(tmp_path, tmp_path_factory):
    v1 = copy_bundle(digits_bundle(tmp_path_factory), tmp_path / "v1")
    v2 = _version_copy(v1, tmp_path / "v2", 2)
    c = _client(v1)
    auth = admin_headers(c)
    r = c.post("/admin/reload", json={}, headers=auth)  # v1 again: nothing to switch
    assert r.status_code == 200 and r.json()["status"] == "unchanged"
    assert c.get("/health").json()["previous_versions"] == []
    for _ in range(6):
        assert c.post("/admin/reload", json={"bundle": str(v2)}, headers=auth).json()["version"] == 2
    assert c.get("/health").json()["previous_versions"] == [1]
    assert c.post("/admin/rollback", headers=auth).json()["version"] == 1
    # many distinct versions: the history stays bounded and still holds the first one
    for k in range(3, 9):
        vk = _version_copy(v1, tmp_path / f"v{k}", k)
        assert c.post("/admin/reload", json={"bundle": str(vk)}, headers=auth).json()["version"] == k
    prev = c.get("/health").json()["previous_versions"]
    assert len(prev) <= 3 and prev[0] == 1 and len(set(prev)) == len(prev)
    while c.post("/admin/rollback", headers=auth).status_code == 200:
        pass
    assert c.get("/health").json()["version"] == 1


# -- item 6: image bombs and the event loop -----------------------------------------------------

def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_image_bomb_is_refused_before_decoding(tmp_path_factory):
    bundle = cnn_bundle(tmp_path_factory)
    bomb = _png(9000, 9000)  # ~80 KB of PNG, 81 megapixels once decoded
    assert len(bomb) < 400_000
    small = _png(8, 8)
    with server(bundle) as proc:
        status, _ = http("POST", proc.url + "/predict", small, ctype="image/png")
        assert status == 200
        before = _peak_rss_kb(proc.pid)
        t0 = time.perf_counter()
        status, out = http("POST", proc.url + "/predict", bomb, ctype="image/png")
        took = time.perf_counter() - t0
        assert status == 413 and "81000000 pixels" in json.loads(out)["error"]
        assert took < 0.5, f"{took:.2f} s: decoded?"
        assert _peak_rss_kb(proc.pid) - before < 40_000  # decoding would add ~80 MB, then more
    with server(bundle, "--max-image-pixels", "100") as proc:
        status, out = http("POST", proc.url + "/predict", _png(12, 12), ctype="image/png")
        assert status == 413 and "12x12" in json.loads(out)["error"]
        assert http("POST", proc.url + "/predict", _png(10, 10), ctype="image/png")[0] == 200


@contextlib.contextmanager
def _inprocess_server(config):
    """uvicorn in a thread of this process, so a test can make the model slow."""
    import uvicorn

    from edgeloop.runtime.server import create_app

    app = create_app(config)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning",
                                        lifespan="off"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and t.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield app
    finally:
        srv.should_exit = True
        t.join(10)


def test_health_answers_while_a_slow_prediction_runs(tmp_path_factory, monkeypatch):
    from edgeloop.runtime.model import BundleModel
    from edgeloop.runtime.server import ServerConfig

    real = BundleModel.predict

    def slow(self, batch):  # a big model on a small board
        time.sleep(1.5)
        return real(self, batch)

    monkeypatch.setattr(BundleModel, "predict", slow)
    config = ServerConfig(bundle=str(digits_bundle(tmp_path_factory)), port=free_port())
    url = f"http://127.0.0.1:{config.port}"
    _, x_te, _, _ = digits()
    with _inprocess_server(config):
        result: dict = {}

        def predict():
            result["answer"] = http("POST", url + "/predict", json.dumps({"input": x_te[0].tolist()}).encode())

        t = threading.Thread(target=predict)
        t.start()
        time.sleep(0.3)  # the prediction is in flight
        t0 = time.perf_counter()
        status, _ = http("GET", url + "/health", timeout=5)
        took = time.perf_counter() - t0
        assert t.is_alive(), "the slow prediction should still be running"
        t.join(10)
    assert status == 200 and took < 0.5, f"/health took {took:.2f} s while a prediction ran"
    assert result["answer"][0] == 200


# -- item 8: captures of two input widths -------------------------------------------------------

def test_samples_export_picks_one_version_when_widths_differ(tmp_path):
    from edgeloop.runtime.capture import CaptureStore

    store = tmp_path / "c.db"
    rng = np.random.default_rng(0)
    wide = rng.random((5, 64)).astype(np.float32)
    narrow = rng.random((3, 20)).astype(np.float32)
    with CaptureStore(store) as s:
        for x in wide:
            s.add(x, reason="random", model_version=1, confidence=0.5, margin=0.1)
        for x in narrow:
            s.add(x, reason="random", model_version=2, confidence=0.5, margin=0.1)
    cmd = [PY, "-m", "edgeloop", "samples", "export", str(store), "-o"]
    err = _one_line_exit_2(cmd + [str(tmp_path / "all")], ["--version", "shape [64]", "shape [20]"])
    assert "version 1" in err and "version 2" in err
    assert not (tmp_path / "all").exists()
    for version, want in (("1", wide), ("2", narrow)):
        out = tmp_path / f"v{version}"
        r = subprocess.run(cmd + [str(out), "--version", version, "--json"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        with np.load(out / "samples.npz") as z:
            np.testing.assert_array_equal(z["x"], want)
        assert json.loads(r.stdout)["samples"] == len(want)
    _one_line_exit_2(cmd + [str(tmp_path / "v7"), "--version", "7"], ["no samples from model version 7", "1, 2"])
