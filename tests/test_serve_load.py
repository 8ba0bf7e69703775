"""20 concurrent clients on loopback: a few thousand requests, zero errors, p50/p99 reported."""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np

from test_serve_fixtures import digits, digits_bundle, digits_estimator, server

CLIENTS = 20
PER_CLIENT = 150


def test_twenty_concurrent_clients_zero_errors(tmp_path_factory, capsys):
    _, x_te, _, _ = digits()
    want = digits_estimator().predict(x_te)
    bodies = [json.dumps({"input": x.tolist()}).encode() for x in x_te]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    with server(digits_bundle(tmp_path_factory)) as proc:
        port = int(proc.url.rsplit(":", 1)[1])

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # keep-alive
            mine = []
            try:
                for j in range(PER_CLIENT):
                    i = (k * PER_CLIENT + j) % len(bodies)
                    t0 = time.perf_counter()
                    conn.request("POST", "/predict", bodies[i], {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = r.read()
                    mine.append(time.perf_counter() - t0)
                    if r.status != 200 or json.loads(data)["label"] != [int(want[i])]:
                        errors.append(f"{r.status} {data[:200]!r}")
            except Exception as e:  # connection refused/reset counts as an error too
                errors.append(repr(e))
            finally:
                conn.close()
                with lock:
                    latencies.extend(mine)

        # one client first: a request must not wait on TCP delayed ACKs (Nagle) or anything like it
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        single = []
        for i in range(200):
            t0 = time.perf_counter()
            conn.request("POST", "/predict", bodies[i], {"Content-Type": "application/json"})
            conn.getresponse().read()
            single.append(time.perf_counter() - t0)
        conn.close()
        single_p50 = float(np.median(single) * 1000)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        wall = time.perf_counter() - t0
    assert not errors, errors[:3]
    assert len(latencies) == CLIENTS * PER_CLIENT
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    with capsys.disabled():
        print(f"\n[serve load] {len(latencies)} requests, {CLIENTS} clients: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
              f"{len(latencies) / wall:.0f} req/s, 0 errors; one client alone: p50 {single_p50:.2f} ms")
    assert p99 < 2000
    assert single_p50 < 20, f"one keep-alive client waits {single_p50:.1f} ms a request"
