"""Capture of uncertain inputs for continued improvement (numpy + sqlite3 only).

:class:`CapturePolicy` decides per prediction whether to keep the input and
why (low confidence, small top-2 margin, high entropy, or a random baseline),
under per-class quotas and a rate limit.  :class:`CaptureStore` keeps the
chosen samples in a local SQLite database in WAL mode: every ``add`` is one
committed transaction, so a crash loses at most the sample being written.
The store stays within a byte budget of real disk use (database file plus
WAL) by evicting the least informative samples first, reusing freed pages
(incremental auto-vacuum) and checkpointing the WAL; with ``privacy=True`` it
stores no raw input at all (only the prediction, its scores and the reason).

A capture is a side job of a prediction: :class:`Capturer` turns any storage
failure (disk full, read-only, corrupt) into a skipped capture, counts it and
reports the store as degraded until a later write succeeds.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import sqlite3
import stat
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
    nbytes INTEGER NOT NULL,
    detections TEXT
);
CREATE INDEX IF NOT EXISTS samples_score ON samples(score, id);
CREATE INDEX IF NOT EXISTS samples_class ON samples(predicted);
CREATE TABLE IF NOT EXISTS labels (
    sample_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    label TEXT,
    boxes TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    task TEXT,
    labels TEXT,
    PRIMARY KEY (name, version)
);
"""
# A person's verdict on a sample (edgeloop label): accepted as predicted, corrected, or discarded.
LABEL_STATUSES = ("accepted", "corrected", "discarded")
# labelled samples are a person's work: eviction and per-class quotas never delete them
UNLABELLED = "id NOT IN (SELECT sample_id FROM labels)"
ROW_OVERHEAD = 256  # bytes per row besides the raw input: columns, index entries, page slack
MIN_BUDGET = 64 * 1024  # an empty store (schema pages, WAL header) already takes ~20 KiB
WAL_SHARE = 4  # the WAL may grow to 1/4 of the budget before it is checkpointed and truncated
SCHEMA_RESERVE = 8 * 4096  # pages the schema and the B-tree interiors take whatever the rows
SQLITE_MAGIC = b"SQLite format 3\x00"


class CaptureError(Exception):
    """A capture store that cannot be used (not SQLite, read-only, a folder...): one line."""


def one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
    # detectors: a frame is uncertain when its best score falls in [low, high] (or boxes of
    # different classes overlap by more than ``overlap_iou``)
    score_band_low: Optional[float] = 0.3
    score_band_high: Optional[float] = 0.6
    overlap_iou: Optional[float] = 0.5

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

    def detection_reason(self, best: Optional[float], overlap: bool) -> Optional[str]:
        """Why a detector's frame is worth labelling: its best score (over every candidate, kept
        or not) is in the uncertain band, or boxes of different classes overlap; or None."""
        lo, hi = self.score_band_low, self.score_band_high
        if best is not None and lo is not None and hi is not None and lo <= best <= hi:
            return "uncertain_score"
        if overlap:
            return "class_overlap"
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


def _read_only(p: Path) -> bool:
    # os.access alone says "writable" to root whatever the mode bits; a store whose owner took
    # away every write bit is meant to be read-only, so both are checked (a read-only mount
    # fails os.access for root too).
    return not os.access(p, os.W_OK) or stat.S_IMODE(p.stat().st_mode) & 0o222 == 0


def _check_writable_store(path: Path) -> None:
    """Refuse, with one line, a --capture path the server could not write samples to."""
    if path.is_dir():
        raise CaptureError(f"{path}: is a folder; give the capture store's file name (e.g. {path / 'captures.db'})")
    if path.exists():
        if not path.is_file():
            raise CaptureError(f"{path}: not a regular file")
        if _read_only(path):
            raise CaptureError(f"{path}: the capture store is read-only")
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise CaptureError(f"{path}: not an SQLite file; give a new file or an existing capture store")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CaptureError(f"{path}: cannot create its folder ({e.strerror or e})") from None
    if _read_only(parent):  # SQLite creates STORE-wal and STORE-shm beside the store
        raise CaptureError(f"{path}: its folder is read-only; the capture store needs to write its WAL there")


def is_encoded_image(dtype: Any) -> bool:
    """A sample stored as the uploaded image bytes (a detector's frame): its dtype is a media type."""
    return isinstance(dtype, str) and dtype.startswith("image")


def encode_array(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


def decode_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class CaptureStore:
    """A SQLite (WAL) store of captured samples within ``budget_bytes``."""

    def __init__(self, path: "str | Path", *, budget_bytes: int = 100 * 2**20, privacy: bool = False,
                 readonly: bool = False, timeout: float = 10.0):
        self.path = Path(path)
        if not (isinstance(budget_bytes, (int, float)) and math.isfinite(budget_bytes)) or budget_bytes < MIN_BUDGET:
            raise CaptureError(f"capture budget of {budget_bytes} bytes is below the minimum of {MIN_BUDGET} "
                               "(64 KiB): an empty store already takes about 20 KiB")
        self.budget_bytes = int(budget_bytes)
        self.privacy = privacy
        self.readonly = readonly
        self._has_detections = True
        self._lock = threading.Lock()
        if not readonly:
            _check_writable_store(self.path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            if readonly:
                self.db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True,
                                          check_same_thread=False, isolation_level=None, timeout=timeout)
            else:
                self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                          timeout=timeout)
        except sqlite3.Error as e:
            raise CaptureError(f"{self.path}: cannot open the capture store ({one_line(e)})") from None
        try:
            self._setup(new)
        except sqlite3.Error as e:
            self.db.close()
            raise CaptureError(f"{self.path}: cannot use this file as a capture store: unreadable, locked or "
                               f"corrupt ({one_line(e)})") from None
        except CaptureError:
            self.db.close()
            raise
        self._total = int(self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM samples").fetchone()[0])
        self._page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        self._vacuums = int(self.db.execute("PRAGMA auto_vacuum").fetchone()[0]) != 0
        self._used = self._measure()
        # What the rows may take by their estimated size; lowered when the real disk use says the
        # estimate is optimistic (index entries, overflow-page slack).
        self._row_budget = max(0, self.budget_bytes - self.budget_bytes // WAL_SHARE - SCHEMA_RESERVE)

    def _setup(self, new: bool) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables - {"sqlite_sequence"} and "samples" not in tables:
            raise CaptureError(f"{self.path}: not a capture store (an SQLite file with other tables, "
                               f"e.g. '{sorted(tables)[0]}'); give a new file")
        if self.readonly:
            if "samples" not in tables:
                raise CaptureError(f"{self.path}: not a capture store (no 'samples' table)")
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(samples)")}
            self._has_detections = "detections" in cols
            return
        # checked before anything is written, so a corrupt file is left exactly as it was
        if not new and self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise CaptureError(f"{self.path}: the capture store is corrupt (PRAGMA quick_check failed)")
        if new:  # freed pages go back to the filesystem on `PRAGMA incremental_vacuum`
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise CaptureError(f"{self.path}: SQLite cannot use WAL mode here (got '{mode}')")
        # NORMAL in WAL mode: a committed transaction survives a process crash (SIGKILL);
        # only a power cut can lose the last few, never corrupt the database.
        self.db.execute("PRAGMA synchronous=NORMAL")
        page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        wal_bytes = self.budget_bytes // WAL_SHARE
        self.db.execute(f"PRAGMA wal_autocheckpoint={min(1000, max(4, wal_bytes // page))}")
        self.db.execute(f"PRAGMA journal_size_limit={wal_bytes}")
        self.db.executescript(SCHEMA)
        if "samples" in tables:  # a store written before detections were captured: add the column
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(samples)")}
            if "detections" not in cols:
                self.db.execute("ALTER TABLE samples ADD COLUMN detections TEXT")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> "CaptureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def used_bytes(self) -> int:
        """Real disk use: the database file plus its WAL (as measured after the last write; reading
        it never waits for a write in progress).  A store made before incremental auto-vacuum
        cannot give free pages back, so for it the free pages (which SQLite reuses) do not count."""
        return self._used

    def _measure(self) -> int:
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.stat(str(self.path) + suffix).st_size
            except OSError:
                pass
        if self._vacuums:
            return size
        try:
            free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        except sqlite3.Error:
            free = 0
        return max(0, size - free * self._page)

    @property
    def row_bytes(self) -> int:
        """The estimated bytes of the stored rows (what eviction counts)."""
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
            per_class_quota: Optional[int] = None, detections: Optional[List[Dict[str, Any]]] = None,
            image: Optional[bytes] = None, media_type: str = "image",
            informative: Optional[float] = None) -> Optional[int]:
        """Store one sample in its own transaction; return its id, or None if not kept.

        A detector's frame is stored as the uploaded ``image`` bytes (``dtype`` is its media type,
        ``shape`` its [height, width]) with its predicted ``detections``; ``x`` is then the input
        tensor, used only for its shape."""
        score = informativeness(confidence, margin, entropy) if informative is None else float(informative)
        if image is not None:
            blob = None if self.privacy else bytes(image)
        else:
            blob = None if self.privacy else encode_array(x)
        dtype, shape = (media_type, list(x.shape)) if image is not None else (str(x.dtype), list(x.shape))
        nbytes = (ROW_OVERHEAD + (len(blob) if blob is not None else 0)
                  + (len(json.dumps(detections)) if detections else 0))
        if nbytes > self._row_budget:
            return None
        pred = None if predicted is None else str(predicted)
        with self._lock:
            cur = self.db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                if per_class_quota is not None and pred is not None:
                    n = cur.execute("SELECT COUNT(*) FROM samples WHERE predicted = ?", (pred,)).fetchone()[0]
                    if n >= per_class_quota:
                        # full: replace this class's least informative sample if the new one beats it
                        row = cur.execute("SELECT id, score, nbytes FROM samples WHERE predicted = ? "
                                          f"AND {UNLABELLED} ORDER BY score, id LIMIT 1", (pred,)).fetchone()
                        if row is None or row[1] >= score:
                            self._abort()
                            return None
                        cur.execute("DELETE FROM samples WHERE id = ?", (row[0],))
                        self._total -= row[2]
                freed = self._evict(cur, self._total + nbytes - self._row_budget, score)
                if freed is None:
                    self._abort()
                    return None
                cur.execute(
                    "INSERT INTO samples (created, model_name, model_version, reason, score, predicted, "
                    "predicted_index, confidence, margin, entropy, probabilities, dtype, shape, input, nbytes, "
                    "detections) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (time.time(), model_name, str(model_version), reason, score, pred, predicted_index,
                     confidence, margin, entropy,
                     None if probabilities is None else json.dumps([round(float(p), 6) for p in probabilities]),
                     dtype, json.dumps(shape), blob, nbytes,
                     None if detections is None else json.dumps(detections)))
                rowid = int(cur.lastrowid)
                cur.execute("COMMIT")
            except BaseException:
                self._abort()
                self._used = self._measure()
                raise
            self._total += nbytes
            try:
                self._used = self._measure()
                if self._used > self.budget_bytes and not self._bound_disk(rowid):
                    return None
            finally:
                self._used = self._measure()
            return rowid

    def _abort(self) -> None:
        """Roll back if a transaction is still open and resync the byte count.

        SQLite rolls a transaction back by itself on some errors (SQLITE_FULL at COMMIT): a second
        ROLLBACK would then fail with 'no transaction is active' and hide the first error, so any
        failure here is dropped and the caller re-raises the original one."""
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        try:
            self._total = int(self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM samples").fetchone()[0])
        except sqlite3.Error:
            pass

    def _bound_disk(self, rowid: int) -> bool:
        """The database and its WAL are above the budget: checkpoint and truncate the WAL, then
        evict the least informative rows (10% below the budget, so this does not run on every
        add) and give their pages back.  Returns whether ``rowid`` is still stored."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for _ in range(16):
            used = self._measure()
            if used <= self.budget_bytes:
                break
            target = int(min(self._row_budget, self._total) * self.budget_bytes / used * 0.9)
            self._row_budget = max(0, target)
            cur = self.db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                need = self._total - self._row_budget
                doomed, freed = [], 0
                for rid, nbytes in cur.execute(f"SELECT id, nbytes FROM samples WHERE {UNLABELLED} "
                                               "ORDER BY score, id"):
                    if freed >= need:
                        break
                    doomed.append(rid)
                    freed += nbytes
                cur.executemany("DELETE FROM samples WHERE id = ?", [(r,) for r in doomed])
                cur.execute("COMMIT")
            except BaseException:
                self._abort()
                raise
            self._total -= freed
            self.db.execute("PRAGMA incremental_vacuum").fetchall()
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if not doomed:
                break
        return self.db.execute("SELECT 1 FROM samples WHERE id = ?", (rowid,)).fetchone() is not None

    def _evict(self, cur: sqlite3.Cursor, need: int, new_score: float) -> Optional[int]:
        """Delete least-informative rows until ``need`` bytes are free; None if the new sample is
        itself less informative than what would have to go."""
        freed = 0
        doomed: List[int] = []
        if need <= 0:
            return 0
        for rid, score, nbytes in cur.execute(f"SELECT id, score, nbytes FROM samples WHERE {UNLABELLED} "
                                              "ORDER BY score, id"):
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

    def rows(self, with_input: bool = False, ids: Optional[List[int]] = None) -> Iterator[Dict[str, Any]]:
        cols = ("id, created, model_name, model_version, reason, score, predicted, predicted_index, "
                "confidence, margin, entropy, probabilities, dtype, shape, nbytes, "
                + ("detections" if self._has_detections else "NULL AS detections")
                + (", input" if with_input else ", input IS NOT NULL"))
        with self._lock:
            if ids is None:
                fetched = self.db.execute(f"SELECT {cols} FROM samples ORDER BY id").fetchall()
            else:
                marks = ",".join("?" * len(ids))
                fetched = self.db.execute(f"SELECT {cols} FROM samples WHERE id IN ({marks}) ORDER BY id",
                                          [int(i) for i in ids]).fetchall()
        names = [c.strip().split(" AS ")[-1] for c in cols.split(",")]
        names[-1] = "input" if with_input else "has_input"
        for r in fetched:
            d = dict(zip(names, r))
            d["shape"] = json.loads(d["shape"]) if d["shape"] else None
            d["probabilities"] = json.loads(d["probabilities"]) if d["probabilities"] else None
            d["detections"] = json.loads(d["detections"]) if d["detections"] else None
            if with_input and is_encoded_image(d["dtype"]):
                d["input"] = bytes(d["input"]) if d["input"] is not None else None  # the frame as uploaded
            elif with_input:
                d["input"] = decode_array(d["input"]) if d["input"] is not None else None
            else:
                d["has_input"] = bool(d["has_input"])
            yield d

    # -- labels (edgeloop label) and the models that captured ------------------------------------
    def _has_table(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                               (name,)).fetchone() is not None

    def note_model(self, name: str, version: Any, task: Optional[str], labels: Optional[List[Any]]) -> None:
        """Remember a capturing model's label names (the classes a person picks from when labelling)."""
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO models (name, version, task, labels) VALUES (?, ?, ?, ?)",
                            (str(name), str(version), task,
                             None if labels is None else json.dumps([str(v) for v in labels])))

    def models(self) -> List[Dict[str, Any]]:
        with self._lock:
            if not self._has_table("models"):
                return []
            rows = self.db.execute("SELECT name, version, task, labels FROM models ORDER BY rowid").fetchall()
        return [{"name": n, "version": v, "task": t, "labels": json.loads(lab) if lab else None}
                for n, v, t, lab in rows]

    def set_label(self, sample_id: int, status: str, *, label: Optional[str] = None,
                  boxes: Optional[List[Dict[str, Any]]] = None) -> None:
        """Store a person's verdict on one sample in one transaction (replacing an earlier one):
        committed, it survives a crash.  KeyError if there is no such sample."""
        if status not in LABEL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(LABEL_STATUSES)}, got {status!r}")
        with self._lock:
            cur = self.db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                if cur.execute("SELECT 1 FROM samples WHERE id = ?", (int(sample_id),)).fetchone() is None:
                    raise KeyError(sample_id)
                cur.execute("INSERT OR REPLACE INTO labels (sample_id, status, label, boxes, updated) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (int(sample_id), status, label, None if boxes is None else json.dumps(boxes),
                             time.time()))
                cur.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def labels(self) -> Dict[int, Dict[str, Any]]:
        """{sample id: {"status", "label", "boxes", "updated"}} of every labelled sample."""
        with self._lock:
            if not self._has_table("labels"):
                return {}
            rows = self.db.execute("SELECT sample_id, status, label, boxes, updated FROM labels").fetchall()
        return {int(i): {"status": st, "label": lab, "boxes": json.loads(b) if b else None, "updated": u}
                for i, st, lab, b, u in rows}

    def sample(self, sample_id: int) -> Optional[Dict[str, Any]]:
        """One sample's row with its raw input (see :meth:`rows`), or None."""
        return next(self.rows(with_input=True, ids=[int(sample_id)]), None)

    def integrity_ok(self) -> bool:
        with self._lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


class Capturer:
    """Glue between a model's predictions and a store: applies the policy row by row.

    A storage failure never reaches the prediction: the sample is skipped (its id is None),
    ``errors`` counts it and ``degraded`` holds the reason until a later write succeeds."""

    def __init__(self, store: CaptureStore, policy: CapturePolicy):
        self.store = store
        self.policy = policy
        self.captured = 0
        self.skipped_rate = 0
        self.errors = 0
        self.degraded: Optional[str] = None
        self._lock = threading.Lock()
        self._noted: set = set()

    def _note(self, model: Any) -> None:
        """Record the capturing model's labels once per version (what `edgeloop label` offers)."""
        key = (str(getattr(model, "name", "")), str(getattr(model, "version", "")))
        if key in self._noted:
            return
        detector = getattr(model, "is_detector", False)
        task = "detection" if (detector() if callable(detector) else detector) else "classification"
        try:
            self.store.note_model(key[0], key[1], task, getattr(model, "labels", None))
        except (sqlite3.Error, OSError):
            return  # a side job of a side job: the next capture tries again
        self._noted.add(key)

    def status(self) -> Dict[str, Any]:
        return {"status": "degraded" if self.degraded else "ok", "reason": self.degraded,
                "errors": self.errors}

    def consider(self, model: Any, batch: np.ndarray, result: Dict[str, Any]) -> List[Optional[int]]:
        ids: List[Optional[int]] = []
        probs = result.get("probabilities")
        failed = False
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
                with self._lock:
                    self.skipped_rate += 1
                ids.append(None)
                continue
            if failed:  # one failed write per request: the rest of the batch would fail the same way
                with self._lock:
                    self.errors += 1
                ids.append(None)
                continue
            label = result["label"][i] if "label" in result else None
            try:
                rid = self.store.add(
                    batch[i], reason=why, model_name=model.name, model_version=model.version,
                    predicted=label, predicted_index=None if probs is None else int(result["index"][i]),
                    confidence=c, margin=m, entropy=e,
                    probabilities=None if probs is None else probs[i].tolist(),
                    per_class_quota=self.policy.per_class_quota)
            except (sqlite3.Error, OSError, CaptureError) as err:
                failed = True
                self._failed(err)
                ids.append(None)
                continue
            ids.append(self._stored(model, rid))
        return ids


    def consider_frame(self, model: Any, batch: np.ndarray, image: bytes, media_type: str,
                       candidates: List[Dict[str, Any]], detections: List[Dict[str, Any]]) -> Optional[int]:
        """A detector's frame: kept (the encoded image and its predicted boxes) when the best score of
        ``candidates`` (every box decoded down to the band's low end) is in the band, or when boxes of
        different classes overlap. Storage failures degrade as in :meth:`consider`."""
        best = max((float(d["score"]) for d in candidates), default=None)
        why = self.policy.detection_reason(best, classes_overlap(detections, self.policy.overlap_iou))
        if why is None:
            return None
        if not self.policy.allow():
            with self._lock:
                self.skipped_rate += 1
            return None
        top = detections[0]["label"] if detections else None
        # the closer the best score is to the band's middle, the more a label is worth
        lo, hi = self.policy.score_band_low or 0.0, self.policy.score_band_high or 1.0
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-6)
        score = 1.0 if why == "class_overlap" else (0.0 if best is None else max(0.0, 1.0 - abs(best - mid) / half))
        try:
            if callable(image):  # encoded only for a frame that is kept (the --source mode)
                image = image()
            rid = self.store.add(batch[0], reason=why, model_name=model.name, model_version=model.version,
                                 predicted=top, confidence=best, detections=detections, image=image,
                                 media_type=media_type, informative=score)
        except (sqlite3.Error, OSError, CaptureError) as err:
            self._failed(err)
            return None
        return self._stored(model, rid)

    def _failed(self, err: BaseException) -> None:
        """A storage failure: counted, and the capture side marked degraded (never the answer)."""
        with self._lock:
            self.errors += 1
            self.degraded = f"{self.store.path}: {one_line(err)}"

    def _stored(self, model: Any, rid: Optional[int]) -> Optional[int]:
        """A storage call that worked (``rid`` None when the policy declined): recovered, counted."""
        with self._lock:
            self.degraded = None
            if rid is not None:
                self.captured += 1
        if rid is not None:
            self._note(model)
        return rid


def classes_overlap(detections: List[Dict[str, Any]], iou: Optional[float]) -> bool:
    """Whether two boxes of different classes overlap by more than ``iou``."""
    if iou is None or len(detections) < 2:
        return False
    from .detect import box_iou

    labels = np.asarray([str(d["label"]) for d in detections])
    if len(set(labels.tolist())) < 2:
        return False
    m = box_iou(np.asarray([d["box"] for d in detections]), np.asarray([d["box"] for d in detections]))
    return bool(np.any((m > iou) & (labels[:, None] != labels[None, :])))


CSV_COLUMNS = ("id", "created", "model_name", "model_version", "reason", "score", "predicted",
               "confidence", "margin", "entropy", "has_input", "label")


def class_names(store: CaptureStore, rows: Optional[List[Dict[str, Any]]] = None,
                labels: Optional[Dict[int, Dict[str, Any]]] = None) -> List[str]:
    """The class names of a store's samples: the capturing models' labels (newest model first), then
    any other name that a prediction or a stored label uses (sorted)."""
    out: List[str] = []
    for m in reversed(store.models()):
        out += [str(v) for v in m["labels"] or [] if str(v) not in out]
    rows = list(store.rows()) if rows is None else rows
    labels = store.labels() if labels is None else labels
    seen: set = set()
    for r in rows:
        seen.update(str(d["label"]) for d in r.get("detections") or [])
        if r.get("detections") is None and not is_encoded_image(r["dtype"]) and r["predicted"] is not None:
            seen.add(str(r["predicted"]))
    for lab in labels.values():
        seen.update(str(b["label"]) for b in lab["boxes"] or [])
        if lab["label"] is not None:
            seen.add(str(lab["label"]))
    return out + sorted(seen - set(out))


def _image_size(data: bytes) -> Optional[tuple]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - a stored frame that does not decode is left out
        return None


def _write_detection_labels(out_dir: Path, frames: List[Dict[str, Any]], labels: Dict[int, Dict[str, Any]],
                            classes: List[str], coco: bool) -> Dict[str, Any]:
    """The labelled frames (accepted or corrected) as a YOLO folder: images/, labels/ID.txt (``class cx cy
    w h`` normalised to 0-1), classes.txt, data.yaml; with ``coco`` also annotations.json (COCO, boxes
    [x, y, w, h] in pixels, file names relative to images/). Unlabelled frames go to unlabelled/, so
    `edgeloop data import` of this folder sees only what a person labelled."""
    index, coco_images, coco_anns = [], [], []
    used: List[str] = []
    labelled = 0
    for r in frames:
        lab = labels.get(r["id"])
        status = lab["status"] if lab else None
        name = None
        if r["input"] is not None and status != "discarded":
            ext = {"image/png": "png", "image/jpeg": "jpg"}.get(r["dtype"], r["dtype"].split("/")[-1] or "img")
            keep = status in ("accepted", "corrected")
            size = _image_size(r["input"]) if keep else None
            if keep and size is None:
                keep = False  # no decodable frame: cannot be a labelled image
            folder = "images" if keep else "unlabelled"
            name = f"{folder}/{r['id']}.{ext}"
            (out_dir / folder).mkdir(exist_ok=True)
            (out_dir / name).write_bytes(r["input"])
            if keep:
                labelled += 1
                w, h = size
                (out_dir / "labels").mkdir(exist_ok=True)
                lines = []
                for b in lab["boxes"] or []:
                    x1, y1, x2, y2 = (float(v) for v in b["box"])
                    if b["label"] not in used:
                        used.append(b["label"])
                    k = classes.index(b["label"])
                    lines.append(f"{k} {(x1 + x2) / 2 / w:.10f} {(y1 + y2) / 2 / h:.10f} "
                                 f"{(x2 - x1) / w:.10f} {(y2 - y1) / h:.10f}")
                    coco_anns.append({"id": len(coco_anns) + 1, "image_id": r["id"], "category_id": k + 1,
                                      "bbox": [x1, y1, round(x2 - x1, 6), round(y2 - y1, 6)],
                                      "area": round((x2 - x1) * (y2 - y1), 6), "iscrowd": 0})
                (out_dir / "labels" / f"{r['id']}.txt").write_text("".join(line + "\n" for line in lines))
                coco_images.append({"id": r["id"], "file_name": f"{r['id']}.{ext}", "width": w, "height": h})
        index.append({"id": r["id"], "image": name, "reason": r["reason"], "model_version": r["model_version"],
                      "best_score": r["confidence"], "detections": r["detections"] or [], "label": status,
                      "boxes": lab["boxes"] if lab and status != "discarded" else None})
    (out_dir / "detections.json").write_text(json.dumps(index, indent=2) + "\n")
    if labelled:
        (out_dir / "classes.txt").write_text("".join(c + "\n" for c in classes))
        (out_dir / "data.yaml").write_text(
            "# YOLO dataset written by `edgeloop samples export` (the labelled frames)\n"
            "path: .\ntrain: images\nval: images\n"
            f"nc: {len(classes)}\nnames: {json.dumps(classes)}\n")
        if coco:
            doc = {"info": {"description": "labelled frames from an edgeloop capture store"},
                   "images": coco_images, "annotations": coco_anns,
                   "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}
            (out_dir / "annotations.json").write_text(json.dumps(doc, indent=1) + "\n")
    return {"labelled_frames": labelled, "coco": bool(coco and labelled)}


def export_dataset(store_path: "str | Path", out_dir: "str | Path", version: Any = None,
                   coco: bool = False) -> Dict[str, Any]:
    """Write ``samples.npz`` (``x``: the raw inputs, ``ids``) and ``samples.csv`` (one row per
    sample: prediction, scores, reason and the ``label`` a person gave in `edgeloop label`, empty
    until then) into ``out_dir``, which must not exist yet or be empty.  A detector's frames labelled
    in `edgeloop label` become a YOLO folder (and COCO ``annotations.json`` with ``coco``); every
    frame is listed in ``detections.json``.  ``version`` keeps only the samples one model version
    captured (needed when versions take inputs of different shapes).  Returns a summary."""
    import csv
    import datetime as dt

    store_path = Path(store_path)
    if not store_path.is_file():
        raise FileNotFoundError(f"{store_path}: no such capture store")
    out_dir = Path(out_dir)
    store = CaptureStore(store_path, budget_bytes=2**62, readonly=True)
    try:
        rows = list(store.rows(with_input=True))
        labels = store.labels()
        classes = class_names(store, rows, labels)
    finally:
        store.close()
    versions = sorted({str(r["model_version"]) for r in rows}, key=_version_key)
    if version is not None:
        rows = [r for r in rows if str(r["model_version"]) == str(version)]
        if not rows:
            raise ValueError(f"no samples from model version {version}; the store holds versions "
                             f"{', '.join(versions) or '(none)'}")
    frames = [r for r in rows if is_encoded_image(r["dtype"])]
    rows = [r for r in rows if not is_encoded_image(r["dtype"])]
    out_dir.mkdir(parents=True, exist_ok=True)
    det: Dict[str, Any] = {"labelled_frames": 0, "coco": False}
    if frames:  # a detector's frames: the images as uploaded, with the boxes predicted and labelled
        det = _write_detection_labels(out_dir, frames, labels, classes, coco)
    xs = [r["input"] for r in rows if r["input"] is not None]
    by_shape: Dict[tuple, set] = {}
    for r in rows:
        if r["input"] is not None:
            by_shape.setdefault(tuple(r["input"].shape), set()).add(str(r["model_version"]))
    if len(by_shape) > 1:
        what = "; ".join(f"shape {list(k)} from version {', '.join(sorted(v, key=_version_key))}"
                         for k, v in sorted(by_shape.items()))
        if version is None:
            raise ValueError(f"captured inputs have different shapes ({what}); pick one model version "
                             "with --version N")
        raise ValueError(f"version {version} captured inputs of different shapes ({what}); "
                         "they cannot go into one array")
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
                        int(r["input"] is not None), _csv_label(labels.get(r["id"]))])
    (out_dir / "README.txt").write_text(
        "Captured samples for labelling.\n"
        "samples.npz: x (the raw inputs, in the model's input layout) and ids (their ids).\n"
        "samples.csv: one row per sample with the model's prediction, its scores and why it was kept.\n"
        "Fill the 'label' column (use the model's label names; `edgeloop label` fills it), then run\n"
        "  edgeloop improve --bundle BUNDLE --data THIS_FOLDER -o NEW_BUNDLE\n"
        "Rows with has_input=0 were captured in privacy mode: no raw input was stored.\n"
        "A detector's frames: detections.json lists every frame with its predicted (and labelled) boxes;\n"
        "the frames labelled in `edgeloop label` are a YOLO folder (images/, labels/, classes.txt,\n"
        "data.yaml; annotations.json is COCO with --coco), the others are in unlabelled/.\n")
    every = rows + frames
    return {"samples": len(every), "with_input": int(len(ids)) + sum(1 for r in frames if r["input"] is not None),
            "frames": len(frames), "dir": str(out_dir), "version": version,
            "labelled": sum(1 for r in rows if _csv_label(labels.get(r["id"]))) + det["labelled_frames"],
            "labelled_frames": det["labelled_frames"], "coco": det["coco"],
            "reasons": {k: sum(1 for r in every if r["reason"] == k) for k in sorted({r["reason"] for r in every})}}


def _csv_label(lab: Optional[Dict[str, Any]]) -> str:
    return lab["label"] if lab and lab["status"] != "discarded" and lab["label"] is not None else ""


def _version_key(v: str) -> tuple:
    return (0, float(v), v) if v.replace(".", "", 1).isdigit() else (1, 0.0, v)
