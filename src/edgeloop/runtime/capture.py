"""Capture of uncertain inputs for continued improvement (numpy + sqlite3 only).

:class:`CapturePolicy` decides per prediction whether to keep the input and
why (low confidence, small top-2 margin, high entropy, or a random baseline),
under per-class quotas and a rate limit.  :class:`CaptureStore` keeps the
chosen samples in a local SQLite database in WAL mode: every ``add`` is one
committed transaction, so a crash loses at most the sample being written.
The store stays within a byte budget by evicting the least informative
samples first; with ``privacy=True`` it stores no raw input at all (only the
prediction, its scores and the reason).
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model_name TEXT,
    model_version TEXT,
    reason TEXT NOT NULL,
    score REAL NOT NULL,
    predicted TEXT,
    predicted_index INTEGER,
    confidence REAL,
    margin REAL,
    entropy REAL,
    probabilities TEXT,
    dtype TEXT,
    shape TEXT,
    input BLOB,
    nbytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_score ON samples(score, id);
CREATE INDEX IF NOT EXISTS samples_class ON samples(predicted);
"""
ROW_OVERHEAD = 256  # bytes per row besides the raw input: columns, index entries, page slack


@dataclass
class CapturePolicy:
    """When to keep an input.  Thresholds apply to the top-1 probability, the gap between the
    top two and the entropy normalised to [0, 1]; ``random_rate`` keeps an unbiased baseline."""

    confidence_below: Optional[float] = 0.6
    margin_below: Optional[float] = 0.2
    entropy_above: Optional[float] = 0.6
    random_rate: float = 0.01
    per_class_quota: Optional[int] = None
    max_per_minute: Optional[float] = 120.0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._tokens = float(self.max_per_minute or 0.0)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def reason(self, confidence: Optional[float], margin: Optional[float],
               entropy: Optional[float]) -> Optional[str]:
        """The first rule that fires, or None."""
        if confidence is not None:
            if self.confidence_below is not None and confidence < self.confidence_below:
                return "low_confidence"
            if self.margin_below is not None and margin is not None and margin < self.margin_below:
                return "small_margin"
            if self.entropy_above is not None and entropy is not None and entropy > self.entropy_above:
                return "high_entropy"
        if self.random_rate > 0 and self._rng.random() < self.random_rate:
            return "random"
        return None

    def allow(self) -> bool:
        """Token bucket: at most ``max_per_minute`` captures a minute, bursts up to that many."""
        if not self.max_per_minute:
            return True
        with self._lock:
            now = time.monotonic()
            rate = self.max_per_minute / 60.0
            self._tokens = min(float(self.max_per_minute), self._tokens + (now - self._last) * rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


def informativeness(confidence: Optional[float], margin: Optional[float],
                    entropy: Optional[float]) -> float:
    """Higher is more worth labelling: 1 - margin, or the normalised entropy if larger."""
    if confidence is None:
        return 0.0
    m = 1.0 - (margin if margin is not None else confidence)
    return float(max(m, entropy or 0.0))


def encode_array(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


def decode_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class CaptureStore:
    """A SQLite (WAL) store of captured samples within ``budget_bytes``."""

    def __init__(self, path: "str | Path", *, budget_bytes: int = 100 * 2**20, privacy: bool = False):
        self.path = Path(path)
        self.budget_bytes = int(budget_bytes)
        self.privacy = privacy
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                  timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a process crash (SIGKILL);
        # only a power cut can lose the last few, never corrupt the database.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._total = int(self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM samples").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> "CaptureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def used_bytes(self) -> int:
        return self._total

    def count(self, predicted: Optional[str] = None) -> int:
        with self._lock:
            if predicted is None:
                return int(self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            return int(self.db.execute("SELECT COUNT(*) FROM samples WHERE predicted = ?",
                                       (predicted,)).fetchone()[0])

    def add(self, x: np.ndarray, *, reason: str, model_name: str = "", model_version: Any = "",
            predicted: Any = None, predicted_index: Optional[int] = None,
            confidence: Optional[float] = None, margin: Optional[float] = None,
            entropy: Optional[float] = None, probabilities: Optional[List[float]] = None,
            per_class_quota: Optional[int] = None) -> Optional[int]:
        """Store one sample in its own transaction; return its id, or None if not kept."""
        score = informativeness(confidence, margin, entropy)
        blob = None if self.privacy else encode_array(x)
        nbytes = ROW_OVERHEAD + (len(blob) if blob is not None else 0)
        if nbytes > self.budget_bytes:
            return None
        pred = None if predicted is None else str(predicted)
        with self._lock:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if per_class_quota is not None and pred is not None:
                    n = cur.execute("SELECT COUNT(*) FROM samples WHERE predicted = ?", (pred,)).fetchone()[0]
                    if n >= per_class_quota:
                        # full: replace this class's least informative sample if the new one beats it
                        row = cur.execute("SELECT id, score, nbytes FROM samples WHERE predicted = ? "
                                          "ORDER BY score, id LIMIT 1", (pred,)).fetchone()
                        if row is None or row[1] >= score:
                            cur.execute("ROLLBACK")
                            return None
                        cur.execute("DELETE FROM samples WHERE id = ?", (row[0],))
                        self._total -= row[2]
                freed = self._evict(cur, self._total + nbytes - self.budget_bytes, score)
                if freed is None:
                    cur.execute("ROLLBACK")
                    self._total = int(self.db.execute(
                        "SELECT COALESCE(SUM(nbytes), 0) FROM samples").fetchone()[0])
                    return None
                cur.execute(
                    "INSERT INTO samples (created, model_name, model_version, reason, score, predicted, "
                    "predicted_index, confidence, margin, entropy, probabilities, dtype, shape, input, nbytes) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (time.time(), model_name, str(model_version), reason, score, pred, predicted_index,
                     confidence, margin, entropy,
                     None if probabilities is None else json.dumps([round(float(p), 6) for p in probabilities]),
                     str(x.dtype), json.dumps(list(x.shape)), blob, nbytes))
                rowid = cur.lastrowid
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                self._total = int(self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM samples").fetchone()[0])
                raise
            self._total += nbytes
            return int(rowid)

    def _evict(self, cur: sqlite3.Cursor, need: int, new_score: float) -> Optional[int]:
        """Delete least-informative rows until ``need`` bytes are free; None if the new sample is
        itself less informative than what would have to go."""
        freed = 0
        doomed: List[int] = []
        if need <= 0:
            return 0
        for rid, score, nbytes in cur.execute("SELECT id, score, nbytes FROM samples ORDER BY score, id"):
            if score > new_score:
                return None
            doomed.append(rid)
            freed += nbytes
            if freed >= need:
                break
        if freed < need:
            return None
        cur.executemany("DELETE FROM samples WHERE id = ?", [(r,) for r in doomed])
        self._total -= freed
        return freed

    def rows(self, with_input: bool = False) -> Iterator[Dict[str, Any]]:
        cols = ("id, created, model_name, model_version, reason, score, predicted, predicted_index, "
                "confidence, margin, entropy, probabilities, dtype, shape, nbytes"
                + (", input" if with_input else ", input IS NOT NULL"))
        with self._lock:
            fetched = self.db.execute(f"SELECT {cols} FROM samples ORDER BY id").fetchall()
        names = [c.strip() for c in cols.split(",")]
        names[-1] = "input" if with_input else "has_input"
        for r in fetched:
            d = dict(zip(names, r))
            d["shape"] = json.loads(d["shape"]) if d["shape"] else None
            d["probabilities"] = json.loads(d["probabilities"]) if d["probabilities"] else None
            if with_input:
                d["input"] = decode_array(d["input"]) if d["input"] is not None else None
            else:
                d["has_input"] = bool(d["has_input"])
            yield d

    def integrity_ok(self) -> bool:
        with self._lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


class Capturer:
    """Glue between a model's predictions and a store: applies the policy row by row."""

    def __init__(self, store: CaptureStore, policy: CapturePolicy):
        self.store = store
        self.policy = policy
        self.captured = 0
        self.skipped_rate = 0

    def consider(self, model: Any, batch: np.ndarray, result: Dict[str, Any]) -> List[Optional[int]]:
        ids: List[Optional[int]] = []
        probs = result.get("probabilities")
        for i in range(batch.shape[0]):
            if probs is not None:
                c, m, e = (float(result["confidence"][i]), float(result["margin"][i]),
                           float(result["entropy"][i]))
            else:
                c = m = e = None
            why = self.policy.reason(c, m, e)
            if why is None:
                ids.append(None)
                continue
            if not self.policy.allow():
                self.skipped_rate += 1
                ids.append(None)
                continue
            label = result["label"][i] if "label" in result else None
            rid = self.store.add(
                batch[i], reason=why, model_name=model.name, model_version=model.version,
                predicted=label, predicted_index=None if probs is None else int(result["index"][i]),
                confidence=c, margin=m, entropy=e,
                probabilities=None if probs is None else probs[i].tolist(),
                per_class_quota=self.policy.per_class_quota)
            if rid is not None:
                self.captured += 1
            ids.append(rid)
        return ids


CSV_COLUMNS = ("id", "created", "model_name", "model_version", "reason", "score", "predicted",
               "confidence", "margin", "entropy", "has_input", "label")


def export_dataset(store_path: "str | Path", out_dir: "str | Path") -> Dict[str, Any]:
    """Write ``samples.npz`` (``x``: the raw inputs, ``ids``) and ``samples.csv`` (one row per
    sample: prediction, scores, reason and an empty ``label`` column to fill) into ``out_dir``,
    which must not exist yet or be empty.  Returns a summary."""
    import csv
    import datetime as dt

    store_path = Path(store_path)
    if not store_path.is_file():
        raise FileNotFoundError(f"{store_path}: no such capture store")
    out_dir = Path(out_dir)
    store = CaptureStore(store_path, budget_bytes=2**62)
    try:
        rows = list(store.rows(with_input=True))
    finally:
        store.close()
    xs = [r["input"] for r in rows if r["input"] is not None]
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"captured inputs have different shapes {sorted(shapes)}; export per model version")
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = np.asarray([r["id"] for r in rows if r["input"] is not None], dtype=np.int64)
    x = np.stack(xs) if xs else np.zeros((0,), dtype=np.float32)
    np.savez(out_dir / "samples.npz", x=x, ids=ids)
    with open(out_dir / "samples.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            created = dt.datetime.fromtimestamp(r["created"], dt.timezone.utc).isoformat(timespec="seconds")
            w.writerow([r["id"], created, r["model_name"], r["model_version"], r["reason"],
                        f"{r['score']:.4f}", "" if r["predicted"] is None else r["predicted"],
                        "" if r["confidence"] is None else f"{r['confidence']:.4f}",
                        "" if r["margin"] is None else f"{r['margin']:.4f}",
                        "" if r["entropy"] is None else f"{r['entropy']:.4f}",
                        int(r["input"] is not None), ""])
    (out_dir / "README.txt").write_text(
        "Captured samples for labelling.\n"
        "samples.npz: x (the raw inputs, in the model's input layout) and ids (their ids).\n"
        "samples.csv: one row per sample with the model's prediction, its scores and why it was kept.\n"
        "Fill the 'label' column (use the model's label names), then run\n"
        "  edgeloop improve --bundle BUNDLE --data THIS_FOLDER -o NEW_BUNDLE\n"
        "Rows with has_input=0 were captured in privacy mode: no raw input was stored.\n")
    return {"samples": len(rows), "with_input": int(len(ids)), "dir": str(out_dir),
            "reasons": {k: sum(1 for r in rows if r["reason"] == k) for k in sorted({r["reason"] for r in rows})}}
