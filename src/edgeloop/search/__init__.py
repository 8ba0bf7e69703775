"""The shrink search: try pass combinations, measure each candidate, keep the Pareto front.

``run_search(model, splits, limits, source=None)`` takes named splits
(:class:`edgeloop.data.Splits`) and returns a :class:`SearchResult` with every
candidate (its recipe, parent, metrics, ``on_front``) and the chosen one: the
smallest (flash image on a microcontroller --target, model file otherwise)
that loses at most ``limits.max_drop`` of the metric (in the metric's own
units) and meets every limit.

Every fit a pass makes uses the ``train`` split; every choice (the calibration
method, the layers kept float, the features kept, and the candidate itself) is
made on the ``validation`` split, which is what ``metrics[metric]`` holds. The
``test`` split is touched once, after the choice: the baseline's and the
chosen candidate's metric on it are ``info["test"]``. The passes never see it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx

from edgeloop.errors import EdgeloopError, UsageError
from edgeloop.data.scoring import HIGHER_IS_BETTER, evaluate
from edgeloop.data.splits import REPORT, SELECT, Splits


class NoCandidateError(EdgeloopError):
    """No candidate meets the accuracy budget and the limits (exit code 3)."""

    exit_code = 3


@dataclass(frozen=True)
class Limits:
    max_drop: float = 0.01
    target: str | None = None
    max_ram_kb: float | None = None
    max_flash_kb: float | None = None
    max_latency_ms: float | None = None

    def check(self) -> None:
        """Reject nonsensical or contradictory limits (exit code 2)."""
        if self.max_drop is None or not math.isfinite(self.max_drop) or self.max_drop < 0:
            raise UsageError(f"--max-drop must be 0 or more (in the metric's units), got {self.max_drop}")
        for flag, v in (("--max-ram-kb", self.max_ram_kb), ("--max-flash-kb", self.max_flash_kb),
                        ("--max-latency-ms", self.max_latency_ms)):
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise UsageError(f"{flag} must be positive, got {v:g}")
        if self.target is not None:
            from edgeloop.hardware import get_target

            get_target(self.target)  # an unknown target fails here, before any work


@dataclass
class Candidate:
    id: str
    recipe: list[dict]
    parent: str | None
    model: onnx.ModelProto | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    error: str | None = None
    on_front: bool = False
    chosen: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"id": self.id, "passes": self.recipe, "parent": self.parent, "metrics": self.metrics,
                "meets_limits": self.error is None and not self.misses, "misses": self.misses,
                "on_front": self.on_front, "chosen": self.chosen, "error": self.error,
                "notes": self.notes}


@dataclass
class SearchResult:
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate | None
    metric: str
    limits: Limits
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "higher_is_better": HIGHER_IS_BETTER[self.metric],
            "limits": {k: getattr(self.limits, k) for k in ("max_drop", "target", "max_ram_kb",
                                                             "max_flash_kb", "max_latency_ms")},
            "baseline": self.baseline.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "chosen": self.chosen.id if self.chosen else None,
            **self.info,
        }


def measure(model: onnx.ModelProto, splits: Splits, target: Any = None, *,
            latency: bool = True) -> dict[str, Any]:
    """Every number a candidate is judged by. The metric is on the validation split (it chooses)."""
    from edgeloop.profile import profile_model

    m: dict[str, Any] = {}
    m[splits.metric] = evaluate(model, *splits[SELECT], splits.metric)
    m["file_bytes"] = len(model.SerializeToString())
    prof = profile_model(model, latency=latency, min_runs=20, min_seconds=0.1)
    for k in ("params", "macs", "weight_bytes", "flash_bytes", "peak_ram_bytes", "precision"):
        m[k] = prof[k]
    m["host_latency_ms"] = (prof.get("latency_ms") or {}).get("median")
    if target is not None:
        from edgeloop.hardware import recommend

        row = recommend(prof, [target])[0]
        m["target_latency_ms"] = row["est_latency_ms"]
        m["target_fits"] = bool(row["fits"])
        m["target_reasons"] = row["reasons"]
    return m


def _misses(m: dict, base: dict, metric: str, limits: Limits) -> list[str]:
    from edgeloop.hardware import format_bytes

    out = []
    hib = HIGHER_IS_BETTER[metric]
    drop = (base[metric] - m[metric]) if hib else (m[metric] - base[metric])
    if drop > limits.max_drop + 1e-12:
        out.append(f"{metric} drop {drop:.4g} > max-drop {limits.max_drop:g}")
    if limits.max_ram_kb is not None and m["peak_ram_bytes"] > limits.max_ram_kb * 1024:
        out.append(f"peak RAM {format_bytes(m['peak_ram_bytes'])} > {limits.max_ram_kb:g} KB")
    if limits.max_flash_kb is not None and m["flash_bytes"] > limits.max_flash_kb * 1024:
        out.append(f"flash {format_bytes(m['flash_bytes'])} > {limits.max_flash_kb:g} KB")
    if limits.max_latency_ms is not None:
        lat = m.get("target_latency_ms") if limits.target else m.get("host_latency_ms")
        where = f"on {limits.target} (estimated)" if limits.target else "on the host"
        if lat is None:
            out.append(f"no latency estimate {where}")
        elif lat > limits.max_latency_ms:
            out.append(f"latency {lat:.3g} ms {where} > {limits.max_latency_ms:g} ms")
    if limits.target and not m.get("target_fits", True):
        out.extend(f"{limits.target}: {r}" for r in m.get("target_reasons", []))
    return out


def pareto_front(points: list[tuple[float, ...]]) -> list[bool]:
    """Non-dominated flags; every coordinate is minimised."""
    flags = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if j != i and all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p)):
                dominated = True
                break
        flags.append(not dominated)
    return flags


class _Search:
    def __init__(self, model, splits, limits, source, progress):
        from edgeloop.passes import PassData

        self.base_model = model
        self.splits = splits
        self.limits = limits
        self.data = PassData.from_splits(splits, source)
        self.progress = progress or (lambda *a, **k: None)
        self.target = None
        if limits.target:
            from edgeloop.hardware import get_target

            self.target = get_target(limits.target)
        self.candidates: list[Candidate] = []
        self.baseline: Candidate | None = None
        self.info: dict[str, Any] = {}

    def add(self, parent: Candidate | None, config: Any, label: str | None = None) -> Candidate | None:
        from edgeloop.passes import apply_pass, config_to_dict

        cid = f"c{len(self.candidates) + 1}"
        base_recipe = parent.recipe if parent is not None else []
        recipe = base_recipe + [{"pass": config.NAME, "config": config_to_dict(config)}]
        self.progress(label or " + ".join(s["pass"] for s in recipe))
        cand = Candidate(cid, recipe, parent.id if parent else self.baseline.id)
        try:
            src = parent.model if parent is not None else self.base_model
            if src is None:
                return None
            cand.model = _keep_metadata(src, apply_pass(src, config, self.data))
            cand.metrics = measure(cand.model, self.splits, self.target)
            base_val = self.baseline.metrics[self.splits.metric]
            cand.metrics["drop"] = (base_val - cand.metrics[self.splits.metric]) * \
                (1 if HIGHER_IS_BETTER[self.splits.metric] else -1)
            cand.misses = _misses(cand.metrics, self.baseline.metrics, self.splits.metric, self.limits)
            if self.target is not None and self.target.kind != "linux" and \
                    any(st["pass"] == "int8_dynamic" for st in recipe):
                cand.misses.append(f"{self.target.id}: int8 dynamic quantization needs a run-time "
                                   "quantizer (onnxruntime on a Linux board); "
                                   f"{'microcontroller' if self.target.kind == 'mcu' else 'accelerator'} "
                                   "runtimes have none")
        except EdgeloopError as e:
            cand.error = str(e)
            cand.model = None
        except Exception as e:  # a pass that cannot handle this graph: record and go on
            cand.error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            cand.model = None
        self.candidates.append(cand)
        return cand if cand.error is None else None


def _keep_metadata(src: onnx.ModelProto, out: onnx.ModelProto) -> onnx.ModelProto:
    """Metadata the pass did not carry over (a detector's head, the labels) copied from its input, so
    every candidate decodes and scores like the original."""
    have = {p.key for p in out.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            out.metadata_props.add().CopyFrom(p)
    return out


def run_search(model: onnx.ModelProto, splits: Splits, limits: Limits, *, source: Any = None,
               progress: Callable[[str], None] | None = None, quick: bool = False) -> SearchResult:
    """Try the passes that apply to ``model`` and pick one (see module docstring)."""
    from edgeloop.search import plan as plan_mod

    limits.check()
    s = _Search(model, splits, limits, source, progress)
    t0 = time.perf_counter()
    s.progress("baseline")
    base = Candidate("baseline", [], None, model)
    base.metrics = measure(model, splits, s.target)
    base.metrics["drop"] = 0.0
    s.baseline = base
    base.misses = _misses(base.metrics, base.metrics, splits.metric, limits)
    plan_mod.explore(s, quick=quick)

    ok = [c for c in [base] + s.candidates if c.error is None and c.metrics]
    hib = HIGHER_IS_BETTER[splits.metric]
    pts = []
    for c in ok:
        lat = c.metrics.get("target_latency_ms") or c.metrics.get("host_latency_ms") or 0.0
        met = c.metrics[splits.metric]
        pts.append((c.metrics["file_bytes"], lat, -met if hib else met))
    for c, f in zip(ok, pareto_front(pts)):
        c.on_front = f
    meeting = [c for c in ok if not c.misses]
    chosen = None
    # "smallest": what the device stores. On a microcontroller that is the flash
    # image (weights + layer records); elsewhere the model file itself.
    size_key = "flash_bytes" if s.target is not None and s.target.kind == "mcu" else "file_bytes"
    if meeting:
        chosen = min(meeting, key=lambda c: (c.metrics[size_key],
                                             -c.metrics[splits.metric] if hib else c.metrics[splits.metric]))
        chosen.chosen = True
    res = SearchResult(base, s.candidates, chosen, splits.metric, limits)
    res.info["size_key"] = size_key
    # the test split, once, now that every choice is made
    x_test, y_test = splits[REPORT]
    res.info["test"] = {"split": REPORT, "samples": int(len(y_test)),
                        "baseline": evaluate(model, x_test, y_test, splits.metric),
                        "chosen": None if chosen is None else evaluate(chosen.model, x_test, y_test,
                                                                        splits.metric)}
    res.info["seconds"] = round(time.perf_counter() - t0, 2)
    res.info["splits"] = {**splits.sizes(), "calib": int(len(splits.x_calib)), "held_out": splits.held_out}
    res.info.update(s.info)
    return res


def closest(result: SearchResult, n: int = 3) -> list[Candidate]:
    """The candidates that miss the fewest limits (then the smallest), for the exit-3 message."""
    pool = [c for c in [result.baseline] + result.candidates if c.error is None and c.metrics]
    return sorted(pool, key=lambda c: (len(c.misses), c.metrics["file_bytes"]))[:n]
