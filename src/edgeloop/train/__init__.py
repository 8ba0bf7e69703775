"""Smallest-first training: from a dataset folder to the smallest model that is good enough.

``train_dataset(dataset, output, target=None, metric=None, min_score=None, ...)``
fits the candidates of :mod:`edgeloop.train.candidates` (linear, tree, forest,
MLP, a small CNN for images; per-channel statistics + linear/tree/forest for
time series) smallest first, by their estimated weight bytes on this data's
shape and number of classes, scores each on the validation split,
profiles its ONNX graph (params, flash, peak RAM; estimated latency and fit on
``target``), and stops at the first that reaches ``min_score`` (and fits the
target, when one is given). Without ``min_score`` every candidate is tried and
the best kept. The chosen model is written as ``output`` (.onnx) with its source
beside it (``<stem>.skops`` for scikit-learn, which loads without running code from
the file, unlike a pickle; ``<stem>.pt2`` for the CNN), and
scored once on the test split through the ONNX graph that ships.

Splits by name (:mod:`edgeloop.data.splits`): candidates fit on ``train``, are
chosen on ``validation``, and only the chosen one meets ``test``. Scores come
from the one scorer and the graph's predictions from the one predictor of
:mod:`edgeloop.data`.

A classification dataset needs two classes with training samples (one class is
a one-line error). A class too small to reach every split (one sample: it can
only be trained on) is reported in ``warnings``; a candidate that cannot be
fitted on such data (the MLP's stratified early-stopping split) is reported as
not trained, with the reason, and the others go on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.data.readers import DataError
from edgeloop.data.scoring import predict, score
from edgeloop.data.splits import FIT, REPORT, SELECT
from edgeloop.errors import UsageError
from edgeloop.train.candidates import CANDIDATES, Candidate, candidates_for, estimate_weight_bytes

METRICS = ("accuracy", "f1", "mae")

__all__ = ["train_dataset", "CANDIDATES", "Candidate", "candidates_for", "estimate_weight_bytes", "METRICS"]


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric == "mae" else a > b


def _reaches(metric: str, value: float, goal: float) -> bool:
    return value <= goal if metric == "mae" else value >= goal


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def _class_check(ds, where: str) -> list[str]:
    """One-line errors for data no classifier can learn; warnings for classes too small to split."""
    names = list(ds.classes)
    y_train = ds.split(FIT)[1]
    in_data = sorted(set(np.unique(ds.y).tolist()))
    if len(in_data) < 2:
        only = names[in_data[0]] if in_data else "none"
        raise DataError(f"every sample is of one class ('{only}'); a classifier needs samples of at least "
                        "two classes", where=where)
    in_train = sorted(set(np.unique(y_train).tolist()))
    if len(in_train) < 2:
        raise DataError(f"the train split holds one class only ('{names[in_train[0]]}'); a classifier needs "
                        "training samples of at least two classes (re-import with more data per class)",
                        where=where)
    notes: list[str] = []
    for c, name in enumerate(names):
        per = {s: int(np.sum(ds.split(s)[1] == c)) for s in (FIT, SELECT, REPORT)}
        missing = [s for s, n in per.items() if n == 0]
        if sum(per.values()) and missing:
            notes.append(f"class '{name}' has only {sum(per.values())} sample(s) "
                         f"({', '.join(f'{k} {v}' for k, v in per.items())}): too few for a stratified split, "
                         f"so the {' and '.join(missing)} split{'s do' if len(missing) > 1 else ' does'} not "
                         "measure it")
    return notes


def _profile_row(model, tgt) -> dict[str, Any]:
    from edgeloop.profile import profile_model

    prof = profile_model(model, latency=False)
    row = {k: prof[k] for k in ("params", "macs", "weight_bytes", "flash_bytes", "peak_ram_bytes", "precision")}
    row.update(est_latency_ms=None, fits=None, reasons=[])
    if tgt is not None:
        from edgeloop.hardware import recommend

        fit = recommend(prof, [tgt])[0]
        row.update(est_latency_ms=tgt.estimate_latency_ms(prof["macs"], prof["precision"]) or fit["est_latency_ms"],
                   fits=fit["fits"], reasons=fit["reasons"])
    return row


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def train_dataset(dataset: str | os.PathLike, output: str | os.PathLike, *, target: str | None = None,
                  metric: str | None = None, min_score: float | None = None, candidates: list[str] | None = None,
                  seed: int = 0, epochs: int | None = 4, progress: bool = False,
                  cnn_threads: int | None = None, size: str | tuple[int, int] | None = None) -> dict[str, Any]:
    """Train smallest first; write the chosen model; return the report (see the module docstring).

    A detection dataset (card kind "detection") goes to :func:`edgeloop.train.detect.train_detector`
    (``size``: the input WxH; ``epochs`` None = its own default, with early stopping)."""
    from edgeloop.data import load_dataset

    ds = load_dataset(dataset)  # checksums checked; a DetectionDataset for images with boxes
    if ds.kind == "detection":
        from edgeloop.train.detect import train_detector

        if metric is not None:
            raise UsageError("--metric does not apply to a detection dataset (detectors are scored by "
                             "centroid F1 or mAP@0.5)")
        return train_detector(ds, output, target=target, min_score=min_score, size=size,
                              candidates=candidates, seed=seed, epochs=epochs, progress=progress,
                              threads=cnn_threads)
    if size is not None:
        raise UsageError("--size applies to detection datasets only")
    epochs = 4 if epochs is None else epochs

    out = Path(output)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"the output must be an .onnx path, got '{out}'")
    tgt = None
    if target is not None:
        from edgeloop.hardware import get_target

        tgt = get_target(target)
    task = ds.task
    metric = metric or ("accuracy" if task == "classification" else "mae")
    if metric not in METRICS:
        raise UsageError(f"unknown metric '{metric}'; choose {', '.join(METRICS)}")
    if (metric == "mae") != (task == "regression"):
        raise UsageError(f"metric '{metric}' does not apply to a {task} dataset "
                         f"(use {'mae' if task == 'regression' else 'accuracy or f1'})")
    if min_score is not None and metric != "mae" and not 0 <= min_score <= 1:
        raise UsageError(f"--min-score for {metric} is a fraction between 0 and 1, got {min_score:g}")
    if epochs <= 0:
        raise UsageError("--epochs must be positive")
    pool = candidates_for(task, ds.kind, candidates)
    notes = _class_check(ds, str(dataset)) if task == "classification" else []
    xtr, ytr = ds.split(FIT)
    n_classes = len(ds.classes) if ds.classes is not None else 0
    shape = list(ds.card["sample_shape"])
    n_features = int(np.prod(shape))
    # smallest first: by each candidate's estimated weight bytes on this data (stable: the
    # family order linear, tree, forest, MLP, CNN breaks ties)
    estimates = {c.name: estimate_weight_bytes(c.name, n_features, n_classes, shape) for c in pool}
    pool = sorted(pool, key=lambda c: estimates[c.name])
    xva, yva = ds.split(SELECT)
    if len(yva) == 0 or len(ytr) == 0:
        raise UsageError(f"{dataset}: the dataset has an empty train or validation split")

    import edgeloop

    rows: list[dict[str, Any]] = []
    fitted: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix=".edgeloop-train-"))
    chosen: str | None = None
    try:
        with _progress(progress) as bar:
            job = bar.add_task("training", total=len(pool)) if bar is not None else None
            for i, cand in enumerate(pool):
                if bar is not None:
                    bar.update(job, description=f"training {cand.name} ({i + 1}/{len(pool)})")
                t0 = time.perf_counter()
                if cand.family == "torch":
                    from edgeloop.train.cnn import CNNClassifier

                    est = CNNClassifier(epochs=epochs, seed=seed, threads=cnn_threads)

                    def on_epoch(e: int, loss: float, _name=cand.name) -> None:
                        if bar is not None:
                            bar.update(job, description=f"training {_name}: epoch {e}/{epochs}, loss {loss:.3f}")

                    est.fit(xtr, ytr, n_classes, on_epoch=on_epoch)
                    converged = True
                    pred = est.predict(xva)
                    train_s = time.perf_counter() - t0
                    src = work / f"{cand.name}.pt2"
                    est.export(src)
                    model = edgeloop.load(str(src))
                    config = est.config()
                else:
                    est = cand.build(task, seed, channels=int(xtr.shape[1])) if ds.kind == "series" \
                        and cand.name.startswith("stats+") else cand.build(task, seed)
                    with warnings.catch_warnings(record=True) as caught:
                        # a solver stopping at its iteration cap is reported in the table, not as a warning
                        warnings.simplefilter("always")
                        try:
                            est.fit(_flat(xtr), ytr)
                        except ValueError as e:  # e.g. a class too small for the MLP's stratified split
                            reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
                            if "least populated" in reason:
                                reason = "a class has too few training samples for its stratified " \
                                         "early-stopping split"
                            rows.append({"name": cand.name, "description": cand.description,
                                         "estimated_bytes": estimates[cand.name],
                                         "skipped": f"not trained: {reason}"})
                            if bar is not None:
                                bar.advance(job)
                            continue
                    converged = not any(w.category.__name__ == "ConvergenceWarning" for w in caught)
                    pred = est.predict(_flat(xva))
                    train_s = time.perf_counter() - t0
                    src = work / f"{cand.name}.skops"
                    model = edgeloop.load(est)
                    config = {k: _plain(v) for k, v in est.get_params(deep=True).items()
                              if not hasattr(v, "get_params") and not isinstance(v, list)}
                val = score(metric, yva, pred)
                row = {"name": cand.name, "description": cand.description, "estimated_bytes": estimates[cand.name],
                       "score": val,
                       "train_seconds": train_s, "converged": converged, **_profile_row(model, tgt)}
                row["reached"] = min_score is not None and _reaches(metric, val, min_score) \
                    and row["fits"] is not False
                rows.append(row)
                fitted[cand.name] = (est, model, src, config, cand)
                if bar is not None:
                    bar.advance(job)
                if row["reached"]:
                    chosen = cand.name
                    break
        for cand in pool[len(rows):]:
            rows.append({"name": cand.name, "description": cand.description,
                         "estimated_bytes": estimates[cand.name], "skipped": f"not tried: {chosen} already reached {min_score:g}"})
        tried = [r for r in rows if "skipped" not in r]
        if not tried:
            raise DataError(f"no candidate could be trained ({rows[0]['name']}: "
                            f"{rows[0]['skipped'].removeprefix('not trained: ')})", where=str(dataset))
        if chosen is not None:
            summary = f"chose {chosen}: the smallest candidate reaching {metric} " \
                      f"{'<=' if metric == 'mae' else '>='} {min_score:g} on validation" \
                      + (f" that fits {tgt.id}" if tgt else "")
        else:
            pool_rows = [r for r in tried if r["fits"] is not False] or tried
            best = pool_rows[0]
            for r in pool_rows[1:]:
                if _better(metric, r["score"], best["score"]):
                    best = r
            chosen = best["name"]
            if min_score is not None:
                summary = f"no candidate reached {metric} {min_score:g}" + (f" while fitting {tgt.id}" if tgt else "") \
                          + f"; kept the best, {chosen} ({best['score']:.4f})"
            else:
                summary = f"no --min-score: tried every candidate and kept the best on validation, {chosen}"
            if tgt is not None and best["fits"] is False:
                summary += f" (it does not fit {tgt.id}: {'; '.join(best['reasons'])})"
        est, model, src, config, cand = fitted[chosen]
        xte, yte = ds.split(REPORT)
        onnx_pred = predict(model, xte)[0]  # the graph that ships, before its metadata names the labels
        test = score(metric, yte, onnx_pred)
        est_pred = est.predict(xte if cand.family == "torch" else _flat(xte))
        agreement = float(np.mean(np.asarray(est_pred).reshape(-1) == onnx_pred)) if task == "classification" \
            else float(np.max(np.abs(np.asarray(est_pred, dtype=np.float64).reshape(-1) - onnx_pred), initial=0.0))
        source_path = _write(out, est, model, src, cand, ds, metric, config,
                             next(r for r in rows if r["name"] == chosen)["score"], test, chosen)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "dataset": str(dataset), "dataset_checksum": ds.checksum, "task": task, "metric": metric,
        "min_score": min_score, "target": tgt.id if tgt else None, "candidates": rows, "chosen": chosen,
        "summary": summary, "warnings": notes, "test_score": test, "test_samples": int(len(yte)),
        "onnx_vs_source": ({"agreement": agreement} if task == "classification" else {"max_abs_diff": agreement}),
        "output": str(out), "source": str(source_path),
    }


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return repr(v)


def _write(out: Path, est, model, src: Path, cand: Candidate, ds, metric: str, config: dict, val: float,
           test: float, chosen: str) -> Path:
    """Write the source beside the graph, then the graph (each atomically); returns the source path."""
    from edgeloop.fsutil import write_bytes_atomic
    from edgeloop.graph import save, set_metadata

    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.with_suffix(".pt2" if cand.family == "torch" else ".skops")
    if cand.family == "torch":
        data = Path(src).read_bytes()
    else:
        from edgeloop.frontends.sklearn import dump_estimator

        data = dump_estimator(est, "skops")  # safe to load: no --trust-pickle needed downstream
    write_bytes_atomic(source, data)
    card = ds.card
    info = card.get("info") or {}
    names: dict[str, Any] = {}
    if ds.classes is not None:
        # `labels` keeps the frontends' meaning (what the label output emits, or what each score
        # column stands for): scikit-learn models were fitted on class indices, so their labels
        # stay 0..C-1 as skl2onnx emits them; the CNN's logit columns are named by the classes.
        # `class_names` gives the human name of class index i for both.
        names["class_names"] = list(ds.classes)
        if cand.family == "torch":
            names["labels"] = list(ds.classes)
    set_metadata(
        model,
        task=ds.task,
        **names,
        source=source.name,  # the source file beside this .onnx (relative to its folder)
        source_format="torch" if cand.family == "torch" else "sklearn",
        dataset=str(ds.path),
        dataset_checksum=ds.checksum,
        trainer={"name": chosen, "family": cand.family, "description": cand.description, "config": config},
        input={"sample_shape": card["sample_shape"], "layout": "NCHW" if cand.family == "torch" else "flattened",
               "scale": info.get("scale")},
        metrics={"metric": metric, "validation": val, "test": test},
    )
    save(model, out)
    return source
