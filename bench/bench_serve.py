"""Server overhead against calling onnxruntime directly, on the digits model (loopback).

    .venv/bin/python bench/bench_serve.py [--requests 2000] [--seconds 3]

Rows:
  onnxruntime direct      InferenceSession.run on one sample (1 thread), in this process
  bare Starlette+uvicorn  a POST endpoint that returns a constant (the framework's own floor)
  edgeloop serve          the bundle's server (python -m edgeloop_runtime), JSON in and out
Latency is one keep-alive client, batch 1; "added" is edgeloop serve minus onnxruntime direct.
Throughput: requests/s with 1, 4 and 20 concurrent keep-alive clients (threads in this process).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def predict(request):
    await request.body()
    return JSONResponse({"label": [0], "confidence": [1.0]})
app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", predict, methods=["GET"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-1000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def latencies(port: int, bodies: list[bytes], n: int) -> np.ndarray:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = np.empty(n)
    for i in range(n + 100):
        t0 = time.perf_counter()
        conn.request("POST", "/predict", bodies[i % len(bodies)], {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        if i >= 100:  # warm-up excluded
            out[i - 100] = time.perf_counter() - t0
    conn.close()
    return out


def throughput(port: int, bodies: list[bytes], clients: int, seconds: float) -> tuple[float, int]:
    counts = [0] * clients
    errors = [0]
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while time.monotonic() < stop:
            conn.request("POST", "/predict", bodies[i % len(bodies)], {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors[0] += 1
            counts[k] += 1
            i += clients
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), errors[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()

    import joblib
    import onnxruntime as ort
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeloop.backends.bundle import build_bundle
    from edgeloop.frontends import load_file

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    src = work / "digits.joblib"
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[:1200], y[:1200]), src)
    bundle = work / "bundle"
    build_bundle(load_file(src), bundle, "raspberry-pi-4", name="digits", source_path=str(src))
    test = x[1200:]
    bodies = [json.dumps({"input": row.tolist()}).encode() for row in test]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    direct = np.empty(args.requests)
    for i in range(args.requests + 100):
        t0 = time.perf_counter()
        sess.run(None, {"input": test[i % len(test)][None, :]})
        if i >= 100:
            direct[i - 100] = time.perf_counter() - t0

    servers = {
        "bare Starlette+uvicorn": lambda port: [sys.executable, "-c", BARE_APP, str(port)],
        "edgeloop serve": lambda port: [sys.executable, "-m", "edgeloop_runtime", str(bundle), "--port", str(port)],
    }
    results = {}
    for name, cmd in servers.items():
        port = free_port()
        proc = subprocess.Popen(cmd(port), cwd=bundle, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=dict(os.environ, PYTHONPATH=str(bundle)))
        try:
            wait_up(port, proc)
            lat = latencies(port, bodies, args.requests)
            rps = {c: throughput(port, bodies, c, args.seconds) for c in (1, 4, 20)}
        finally:
            proc.terminate()
            proc.wait(10)
        results[name] = (lat, rps)

    def ms(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q) * 1000)

    print(f"digits LogisticRegression bundle, batch 1, loopback, {args.requests} timed requests per row, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    head = f"{'':26s}{'p50 ms':>9s}{'p99 ms':>9s}{'rps x1':>9s}{'rps x4':>9s}{'rps x20':>9s}{'errors':>8s}"
    print(head)
    print("-" * len(head))
    print(f"{'onnxruntime direct':26s}{ms(direct, 50):9.3f}{ms(direct, 99):9.3f}{1 / np.mean(direct):9.0f}"
          f"{'-':>9s}{'-':>9s}{'-':>8s}")
    for name, (lat, rps) in results.items():
        errs = sum(e for _, e in rps.values())
        print(f"{name:26s}{ms(lat, 50):9.3f}{ms(lat, 99):9.3f}" + "".join(f"{rps[c][0]:9.0f}" for c in (1, 4, 20))
              + f"{errs:8d}")
    lat = results["edgeloop serve"][0]
    bare = results["bare Starlette+uvicorn"][0]
    print("-" * len(head))
    print(f"edgeloop serve adds {ms(lat, 50) - ms(direct, 50):.3f} ms at p50 and {ms(lat, 99) - ms(direct, 99):.3f} ms "
          f"at p99 over onnxruntime direct (aim: < 1 ms at p50); of that, the bare framework round trip is "
          f"{ms(bare, 50):.3f} ms at p50 ({ms(lat, 50) / ms(bare, 50):.2f}x the bare server's latency).")


if __name__ == "__main__":
    main()
