"""`edgeloop label`: the labelling page in a real browser (Debian's chromium driven by Playwright).

A capture store with a detector's frames: one sample is labelled with the keyboard (accept + next),
one with the mouse (move the model's box, draw a new one, pick its class, save), one by deleting the
model's box; the labels are in the store (and survive a SIGKILL of the page's server), and
`samples export` -> YOLO (and COCO) -> `data import` gives back the same boxes. A classifier store:
a class picked by number key. The JSON API refuses bad requests with a 4xx and a JSON error.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from test_serve_fixtures import PY, free_port, http

CHROMIUM = Path("/usr/bin/chromium")
CLASSES = ["coin", "key"]
N_FRAMES = 8
W, H = 96, 72


def _browser_or_skip():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright; it drives the system chromium)"
    if reason is None and not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


def _frame(k: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(k)
    img = (rng.random((H, W, 3)) * 80).astype(np.uint8)
    img[10:30, 8:28] = [220, 180, 40]  # the "coin" the model found
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _detector_store(path: Path) -> Path:
    from edgeloop.runtime.capture import CaptureStore

    with CaptureStore(path) as st:
        for k in range(N_FRAMES):
            st.add(np.zeros((3, 64, 64), np.float32), reason="uncertain_score" if k % 2 == 0 else "class_overlap",
                   model_name="coins", model_version=1, predicted="coin", confidence=0.45,
                   detections=[{"box": [8.0, 10.0, 28.0, 30.0], "score": 0.45, "label": "coin"}],
                   image=_frame(k), media_type="image/png", informative=1.0 - k / 10)
        st.note_model("coins", 1, "detection", CLASSES)
    return path


def _classifier_store(path: Path) -> Path:
    from edgeloop.runtime.capture import CaptureStore

    rng = np.random.default_rng(1)
    with CaptureStore(path) as st:
        for k in range(2):
            p = np.asarray([0.5, 0.3, 0.2]) if k == 0 else np.asarray([0.2, 0.45, 0.35])
            st.add(rng.random((1, 8, 8)).astype(np.float32), reason="small_margin", model_name="digits",
                   model_version=3, predicted="zero" if k == 0 else "one", predicted_index=int(p.argmax()),
                   confidence=float(p.max()), margin=0.2, entropy=0.9, probabilities=p.tolist())
        st.note_model("digits", 3, "classification", ["zero", "one", "two"])
    return path


class _LabelServer:
    def __init__(self, store: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([PY, "-m", "edgeloop", "label", str(store), "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"edgeloop label exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if http("GET", self.url + "/api/samples", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "edgeloop label did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for s in (self.proc.stdout, self.proc.stderr):
            s.close()


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


def _labels(store: Path) -> dict:
    from edgeloop.runtime.capture import CaptureStore

    with CaptureStore(store, budget_bytes=2**62, readonly=True) as st:
        return st.labels()


def _run(*args):
    r = subprocess.run([PY, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def _screen(page, x: float, y: float) -> tuple[float, float]:
    """Image pixels to page coordinates on the canvas."""
    bb = page.locator("#canvas").bounding_box()
    return bb["x"] + x * bb["width"] / W, bb["y"] + y * bb["height"] / H


def _drag(page, a, b):
    page.mouse.move(*_screen(page, *a))
    page.mouse.down()
    page.mouse.move(*_screen(page, *b), steps=5)
    page.mouse.up()


def _post(url: str, doc, **headers):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_label_detector_frames_in_the_browser_then_export_and_import(browser, tmp_path):
    store = _detector_store(tmp_path / "cap.db")
    srv = _LabelServer(store)
    try:
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.wait_for_selector('#canvas[data-ready="1"]')
        assert page.text_content("#progress") == f"labelled 0 / {N_FRAMES}"
        info = page.text_content("#info")
        assert "captured because: uncertain_score" in info and "best score 0.450" in info
        assert "coin 0.45" in page.text_content("#top")  # the model's prediction is shown
        assert [b.text_content() for b in page.query_selector_all("#classes button")] == ["1: coin", "2: key"]

        # sample 1, keyboard only: accept the model's box, go to the next
        page.keyboard.press("Enter")
        page.wait_for_selector('#canvas[data-ready="2"]')
        assert page.text_content("#progress") == f"labelled 1 / {N_FRAMES}"

        # sample 2, mouse: move the model's box by (+10, +6), draw a new box, make it a key, save
        _drag(page, (18, 20), (28, 26))
        _drag(page, (50, 30), (80, 60))
        page.click('#classes button[data-label="key"]')
        page.click("#save")
        page.wait_for_selector('#canvas[data-ready="3"]')
        assert page.text_content("#progress") == f"labelled 2 / {N_FRAMES}"

        # sample 3: select the model's box, delete it (no object here), save; then previous and back
        _drag(page, (18, 20), (18, 20))
        page.keyboard.press("Delete")
        assert page.query_selector_all("#boxes li") == []
        page.keyboard.press("a")
        page.wait_for_selector('#canvas[data-ready="4"]')
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector('#canvas[data-ready="3"]')
        assert "label: corrected" in page.text_content("#info")
        page.keyboard.press("ArrowRight")
        page.wait_for_selector('#canvas[data-ready="4"]')
        # sample 4: discard with the keyboard
        page.keyboard.press("x")
        page.wait_for_selector('#canvas[data-ready="5"]')
        page.close()

        labels = _labels(store)
        model_box = [{"label": "coin", "box": [8.0, 10.0, 28.0, 30.0]}]
        assert labels[1]["status"] == "accepted" and labels[1]["boxes"] == model_box
        assert labels[2]["status"] == "corrected"
        (moved,), (drawn,) = ([b for b in labels[2]["boxes"] if b["label"] == lab] for lab in ("coin", "key"))
        assert np.allclose(moved["box"], [18, 16, 38, 36], atol=1.0)
        assert np.allclose(drawn["box"], [50, 30, 80, 60], atol=1.0)
        assert labels[3]["status"] == "corrected" and labels[3]["boxes"] == []
        assert labels[4]["status"] == "discarded" and 5 not in labels

        # the API: the rest accepted by POST; bad requests are 4xx with a JSON error
        for sid in range(5, N_FRAMES + 1):
            status, doc = _post(f"{srv.url}/api/samples/{sid}/label", {"status": "accepted", "boxes": model_box})
            assert status == 200, doc
        assert doc["labelled"] == N_FRAMES and doc["total"] == N_FRAMES
        bad = [({"status": "maybe"}, {}, 400), ({"status": "accepted", "boxes": [{"label": "cat", "box": [1, 1, 5, 5]}]}, {}, 400),
               ({"status": "accepted", "boxes": [{"label": "coin", "box": [1, 1, 500, 5]}]}, {}, 400),
               ({"status": "accepted", "boxes": [{"label": "coin", "box": [9, 1, 5, 5]}]}, {}, 400),
               ({"status": "discarded"}, {"Origin": "http://attacker.example"}, 403),
               ({"status": "discarded"}, {"Host": "attacker.example"}, 403)]
        for body, headers, want in bad:
            status, doc = _post(f"{srv.url}/api/samples/5/label", body, **headers)
            assert status == want and isinstance(doc["error"], str) and "\n" not in doc["error"], (body, doc)
        assert _post(f"{srv.url}/api/samples/99/label", {"status": "discarded"})[0] == 404
        assert http("GET", f"{srv.url}/api/samples/99/image")[0] == 404
        assert http("POST", f"{srv.url}/api/samples/5/label", b"status=discarded", ctype="application/x-www-form-urlencoded")[0] == 415
    finally:
        srv.kill()  # SIGKILL: what was committed stays
    assert _labels(store)[2] == labels[2] and len(_labels(store)) == N_FRAMES

    # export -> YOLO folder -> data import: the same boxes
    from edgeloop.data.store import load_dataset

    out = tmp_path / "exported"
    _run("samples", "export", store, "-o", out, "--coco")
    assert (out / "classes.txt").read_text().split() == CLASSES
    assert {p.name for p in (out / "labels").iterdir()} == {f"{i}.txt" for i in range(1, N_FRAMES + 1) if i != 4}
    assert not (out / "images" / "4.png").exists()  # discarded
    want = {f"{i}.png": labels_i["boxes"] for i, labels_i in _labels(store).items() if labels_i["status"] != "discarded"}
    for args, name in (((out,), "yolo"), ((out / "annotations.json", "--images", out / "images"), "coco")):
        _run("data", "import", *args, "-o", tmp_path / name)
        ds = load_dataset(tmp_path / name)
        assert ds.labels == CLASSES
        got = {Path(r["file"]).name: ds.truths(i) for i, r in enumerate(ds.records)}
        assert set(got) == set(want)
        for f, boxes in want.items():
            key = lambda b: (b["label"], b["box"])  # noqa: E731
            assert sorted(got[f], key=key) == sorted(boxes, key=key), (name, f)


def test_label_a_classifier_sample_by_number_key(browser, tmp_path):
    store = _classifier_store(tmp_path / "cls.db")
    srv = _LabelServer(store)
    try:
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.wait_for_selector('#canvas[data-ready="1"]')  # the 8x8 input drawn as a picture
        assert "zero 0.500, one 0.300, two 0.200" in page.text_content("#top")
        page.keyboard.press("3")
        assert page.get_attribute('#classes button[data-label="two"]', "class") == "chosen"
        page.keyboard.press("Enter")
        page.wait_for_selector('#canvas[data-ready="2"]')
        page.keyboard.press("Enter")  # the second: accept the prediction
        page.wait_for_function("document.getElementById('progress').textContent === 'labelled 2 / 2'")
        page.close()
    finally:
        srv.kill()
    labels = _labels(store)
    assert (labels[1]["status"], labels[1]["label"]) == ("corrected", "two")
    assert (labels[2]["status"], labels[2]["label"]) == ("accepted", "one")
    out = tmp_path / "exported"
    _run("samples", "export", store, "-o", out)
    import csv

    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert [r["label"] for r in rows] == ["two", "one"]


def test_label_refuses_a_file_that_is_not_a_capture_store(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_text("hello")
    r = subprocess.run([PY, "-m", "edgeloop", "label", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a capture store" in r.stderr


def test_labelled_samples_outlive_eviction_and_the_capturing_models_labels_are_kept(tmp_path):
    """A person's labels are never evicted to make room; the capturer records the model's label names
    (what the page offers as classes)."""
    from types import SimpleNamespace

    from edgeloop.runtime.capture import Capturer, CapturePolicy, CaptureStore

    st = CaptureStore(tmp_path / "small.db", budget_bytes=256 * 1024)
    first = st.add(np.zeros(512, np.float32), reason="random", predicted="a", confidence=0.99, margin=0.98,
                   entropy=0.01)
    st.set_label(first, "accepted", label="a")
    model = SimpleNamespace(name="m", version=2, labels=["a", "b"], is_detector=False)
    cap = Capturer(st, CapturePolicy(random_rate=1.0, max_per_minute=None))
    rng = np.random.default_rng(0)
    for _ in range(40):
        batch = rng.random((10, 512)).astype(np.float32)
        probs = np.tile([0.55, 0.45], (10, 1))
        cap.consider(model, batch, {"probabilities": probs, "confidence": probs[:, 0], "margin": probs[:, 0] - probs[:, 1],
                                    "entropy": np.full(10, 0.99), "index": np.zeros(10, int), "label": ["a"] * 10})
    ids = [r["id"] for r in st.rows()]
    assert len(ids) < 401 and first in ids  # evicted others, not the labelled (least informative) one
    assert st.labels()[first]["label"] == "a"
    assert st.models() == [{"name": "m", "version": "2", "task": "classification", "labels": ["a", "b"]}]
    st.close()
