"""`edgeloop predict --source` and the bundle runtime's `--source` mode, on a video written here with
OpenCV from real photographs (scikit-image's), through a real MediaPipe face detector.

Every frame's JSON line must equal `edgeloop predict IMAGE` on the same frame decoded independently."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from test_detect import FACE_HEAD
from wheel_assets import mediapipe_model, photo

cv2 = pytest.importorskip("cv2")

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")  # one face, no face, a cat
N_FRAMES, FPS, SIZE = 9, 10, (320, 240)
STAGES = ("decode", "preprocess", "inference", "post-processing", "end-to-end")


def run(*args, check=True, cwd=None, module="edgeloop"):
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                       timeout=300, cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


def lines(stdout):
    return [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The face detector, its bundle, a 3-class colour classifier, and a video of the photographs
    with its frames decoded by OpenCV into PNG files (the independent decoding)."""
    d = tmp_path_factory.mktemp("source")
    (d / "head.json").write_text(json.dumps(FACE_HEAD))
    run("convert", mediapipe_model("face_detection/face_detection_short_range.tflite"),
        "--head", d / "head.json", "-o", d / "face.onnx")
    pictures = [np.asarray(Image.open(photo(p)).convert("RGB").resize(SIZE)) for p in PHOTOS]
    video = d / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    assert w.isOpened()
    for i in range(N_FRAMES):
        w.write(cv2.cvtColor(pictures[i % len(pictures)], cv2.COLOR_RGB2BGR))
    w.release()
    frames = d / "frames"
    frames.mkdir()
    cap = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        Image.fromarray(rgb).save(frames / f"{len(decoded)}.png")
        decoded.append(rgb)
    cap.release()
    assert len(decoded) == N_FRAMES
    _colour_classifier(d / "colours.onnx")
    return {"dir": d, "face": d / "face.onnx", "video": video, "frames": frames, "decoded": decoded,
            "colours": d / "colours.onnx"}


def _colour_classifier(path):
    """An image classifier nobody has to train: the dominant colour channel (mean over the pixels)."""
    from edgeloop.graph import set_metadata

    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    g = helper.make_graph(nodes, "colours", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 3])],
                          [numpy_helper.from_array(np.asarray([2, 3], np.int64), "axes"),
                           numpy_helper.from_array((np.eye(3) * 20).astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    set_metadata(m, labels=["red", "green", "blue"], task="classification")
    onnx.save(m, path)


@pytest.fixture(scope="module")
def video_lines(media):
    r = run("predict", media["face"], "--source", media["video"], "--json")
    return lines(r.stdout), r.stderr


def test_video_frames_equal_predict_on_each_frame_decoded(media, video_lines):
    got, stderr = video_lines
    assert [g["frame"] for g in got] == list(range(N_FRAMES))
    assert all(set(g) == {"frame", "time", "detections"} for g in got)
    assert [g["time"] for g in got] == pytest.approx([i / FPS for i in range(N_FRAMES)], abs=1e-3)
    images = [media["frames"] / f"{i}.png" for i in range(N_FRAMES)]
    want = json.loads(run("predict", media["face"], *images, "--json").stdout)
    assert [g["detections"] for g in got] == [w["detections"] for w in want]
    faces = [bool(g["detections"]) for g in got]
    assert faces == [i % 3 == 0 for i in range(N_FRAMES)]  # the astronaut's face, in every third frame
    # the numbers at the end, on stderr: frames, fps, and p50/p90/p99 of each stage
    assert f"{N_FRAMES} frames" in stderr and "fps" in stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in stderr.splitlines() if ln.split() and ln.split()[0] in STAGES}
    assert set(rows) == set(STAGES) and all(len(v) == 3 and float(v[0]) > 0 for v in rows.values())
    assert "p50" in stderr and "p90" in stderr and "p99" in stderr


def test_every_and_max_frames(media, video_lines):
    full = {g["frame"]: g for g in video_lines[0]}
    got = lines(run("predict", media["face"], "--source", media["video"], "--json", "--every", "3",
                    "--max-frames", "2").stdout)
    assert [g["frame"] for g in got] == [0, 3]
    assert got == [full[0], full[3]]
    r = run("predict", media["face"], "--source", media["video"], "--json", "--every", "2")
    assert [g["frame"] for g in lines(r.stdout)] == [0, 2, 4, 6, 8] and "5 frames" in r.stderr


def test_folder_source_for_a_classifier_equals_predict_on_the_images(media, tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    # natural order: 2 before 10; files that are not images are left alone
    names = {"shot-10.png": "rocket.jpg", "shot-2.png": "astronaut.png", "shot-3.jpg": "hubble_deep_field.jpg"}
    for name, src in names.items():
        Image.open(photo(src)).convert("RGB").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    got = lines(run("predict", media["colours"], "--source", folder, "--json").stdout)
    order = ["shot-2.png", "shot-3.jpg", "shot-10.png"]
    assert [g["frame"] for g in got] == [0, 1, 2]
    want = json.loads(run("predict", media["colours"], *[folder / n for n in order], "--json").stdout)
    assert [(g["label"], g["scores"]) for g in got] == [(w["label"], w["scores"]) for w in want]
    assert all(set(g) == {"frame", "time", "label", "scores"} for g in got)
    assert len({g["label"] for g in got}) > 1  # not one answer for everything


def test_draw_writes_frames_and_never_overwrites_a_foreign_file(media, video_lines, tmp_path):
    out = tmp_path / "drawn"
    run("predict", media["face"], "--source", media["video"], "--max-frames", "2", "--draw", out)
    drawn = sorted(p.name for p in out.iterdir())
    assert drawn == ["frame-000000.png", "frame-000001.png"]
    img = np.asarray(Image.open(out / "frame-000000.png").convert("RGB"))
    assert img.shape == (SIZE[1], SIZE[0], 3) and not np.array_equal(img, media["decoded"][0])  # boxes drawn
    run("predict", media["face"], "--source", media["video"], "--max-frames", "1", "--draw", out)  # ours: redrawn
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "frame-000000.png").write_bytes(b"my own file")
    r = run("predict", media["face"], "--source", media["video"], "--draw", mine, check=False)
    assert r.returncode == 2 and "not drawn by edgeloop" in r.stderr and r.stdout == ""
    assert (mine / "frame-000000.png").read_bytes() == b"my own file"


@pytest.mark.parametrize("case", ["missing", "not-a-video", "empty-folder", "camera-device", "camera-index",
                                  "scheme", "both"])
def test_bad_sources_are_one_line_errors(media, tmp_path, case):
    extra = []
    if case == "missing":
        src = tmp_path / "nope.mp4"
    elif case == "not-a-video":
        src = tmp_path / "notes.mp4"
        src.write_text("hello, not a video")
    elif case == "empty-folder":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "camera-device":
        src = "/dev/video-edgeloop-absent"
    elif case == "camera-index":
        src = "97"  # no machine has a 98th camera
    elif case == "scheme":
        src = "ftp://127.0.0.1/clip.avi"
    else:
        src, extra = media["video"], [media["frames"] / "0.png"]
    r = run("predict", media["face"], *extra, "--source", src, check=False)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    if case != "both":
        assert str(src) in err[0]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_live_stream_keeps_only_the_latest_frame(media):
    """An HTTP stream is live: a slow consumer gets the newest frame, the ones between are dropped."""
    import time

    from edgeloop.runtime.source import open_source

    handler = functools.partial(_Quiet, directory=str(media["dir"]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        src = open_source(f"http://127.0.0.1:{httpd.server_address[1]}/{media['video'].name}")
        assert src.live
        got = []
        for frame in src:
            got.append(frame.index)
            if len(got) == 1:
                time.sleep(1.0)  # the reader decodes the rest of the clip meanwhile
        src.close()
    finally:
        httpd.shutdown()
    assert got[0] == 0 and got[-1] == N_FRAMES - 1 and got == sorted(got)
    assert len(got) < N_FRAMES and len(got) + src.dropped == N_FRAMES


def test_runtime_source_mode_captures_uncertain_frames(media, video_lines, tmp_path):
    """The bundle's own runtime (its edgeloop_runtime copy, no edgeloop) on the video: no HTTP, the
    uncertain frames kept in the capture store with their boxes, as /predict keeps uploads."""
    bundle = tmp_path / "bundle"
    run("export", media["face"], "--target", "raspberry-pi-4", "-o", bundle)
    compose = (bundle / "docker-compose.yml").read_text()
    assert "/dev/video0:/dev/video0" in compose and "--source" in compose
    assert "opencv-python-headless" in (bundle / "README.md").read_text()
    best = max(d["score"] for g in video_lines[0] for d in g["detections"])
    store = tmp_path / "cap" / "captures.db"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the bundle's copy on the path
    r = subprocess.run([sys.executable, "-m", "edgeloop_runtime", ".", "--source", str(media["video"]), "--json",
                        "--capture", str(store), "--score-band-low", str(round(best - 0.05, 3)),
                        "--score-band-high", str(round(min(best + 0.05, 1.0), 3)), "--random-rate", "0",
                        "--max-captures-per-minute", "0", "--max-frames", "6"],
                       cwd=bundle, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = lines(r.stdout)
    assert [g["frame"] for g in got] == list(range(6))
    assert [g["detections"] for g in got] == [g["detections"] for g in video_lines[0][:6]]
    kept = [g["captured"] for g in got]
    assert all(isinstance(k, int) for k in kept[::3]) and all(k is None for i, k in enumerate(kept) if i % 3)
    assert "6 frames" in r.stderr and "captured 2 frames" in r.stderr
    from edgeloop.runtime.capture import CaptureStore

    with CaptureStore(store, budget_bytes=2**62, readonly=True) as st:
        rows = list(st.rows(with_input=True))
    assert [row["id"] for row in rows] == kept[::3]
    for row, i in zip(rows, (0, 3)):
        assert row["reason"] == "uncertain_score" and row["dtype"] == "image/png"
        assert row["detections"] == got[i]["detections"]
        frame = np.asarray(Image.open(__import__("io").BytesIO(row["input"])).convert("RGB"))
        assert np.array_equal(frame, media["decoded"][i])  # the frame the model saw, lossless


def test_runtime_source_mode_classifier_and_bad_source(media, tmp_path):
    bundle = tmp_path / "colours"
    run("export", media["colours"], "--target", "raspberry-pi-4", "-o", bundle)
    store = tmp_path / "c.db"
    r = run(bundle, "--source", media["frames"], "--json", "--capture", store, "--random-rate", "1",
            "--max-captures-per-minute", "0", "--every", "4", module="edgeloop_runtime", cwd=bundle)
    got = lines(r.stdout)
    assert [g["frame"] for g in got] == [0, 4, 8]
    assert all(g["label"] in ("red", "green", "blue") and len(g["scores"]) == 3 for g in got)
    assert all(isinstance(g["captured"], int) for g in got)  # random rate 1: every frame kept
    r = run(bundle, "--source", tmp_path / "missing.avi", module="edgeloop_runtime", cwd=bundle, check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "missing.avi" in r.stderr
    # the frames mode stays within the runtime's dependencies (OpenCV lazily, for videos only)
    code = ("import sys, edgeloop_runtime.__main__ as m\n"
            f"m.run_source(m.build_parser().parse_args(['.', '--source', {str(media['video'])!r}, '--max-frames', '2']))\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'edgeloop', 'onnx', 'torch', 'sklearn', "
            "'scipy', 'typer', 'rich'}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=bundle, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
