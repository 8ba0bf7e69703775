"""`edgeloop improve`: retrain a bundle's model on newly labelled data and write the next version.

The source kept in the bundle (``source/*.skops``, a trusted ``source/*.joblib``, or ``source/*.pt2``) is refitted
(scikit-learn: ``clone`` and ``fit`` on base + new data) or fine-tuned (PyTorch:
``ExportedProgram.module()`` trained a few epochs, then exported again); the shrink
recipe recorded in the provenance is replayed with ``edgeloop.passes.apply_recipe``;
old and new are compared on held-out data the new model never saw.

The rows: the new data (and the base data, if given) is split once by the one
seeded, stratified splitter of :mod:`edgeloop.data` into a ``train`` part and a
held-out ``test`` part. Only ``train`` reaches the refit or fine-tune and the
recipe replay (its only split: the replay re-fits, it chooses nothing). Held-out
rows equal to a training row are dropped from the comparison, which says how
many rows it was measured on.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeloop.errors import EdgeloopError, MissingDependencyError, UsageError


def _map_labels(raw: list, labels: Optional[list]) -> np.ndarray:
    """CSV/npz labels to the model's label values (ints when the model's labels are ints)."""
    if labels:
        by_text = {str(v): v for v in labels}
        out = []
        for v in raw:
            key = str(v.item() if isinstance(v, np.generic) else v).strip()
            if key not in by_text:
                try:  # "3.0" for the label 3
                    key = str(int(float(key))) if float(key) == int(float(key)) else key
                except ValueError:
                    pass
            if key not in by_text:
                raise UsageError(f"label {v!r} is not one of the model's labels {labels[:12]}")
            out.append(by_text[key])
        return np.asarray(out)
    try:
        return np.asarray([int(float(v)) for v in raw], dtype=np.int64)
    except ValueError:
        raise UsageError("this model has no label names; labels must be class indices") from None


def load_labelled(path: "str | Path", labels: Optional[list]) -> tuple[np.ndarray, np.ndarray]:
    """A .npz with ``x``/``y`` (or ``X``/``y``), or a folder from ``edgeloop samples export`` whose
    samples.csv has its ``label`` column filled (rows left empty are skipped)."""
    p = Path(path)
    if p.is_dir():
        npz, table = p / "samples.npz", p / "samples.csv"
        if not npz.is_file() or not table.is_file():
            raise UsageError(f"{p}: expected samples.npz and samples.csv (from `edgeloop samples export`)")
        with np.load(npz, allow_pickle=False) as z:
            x_all, ids = z["x"], z["ids"]
        row_of = {int(i): k for k, i in enumerate(ids.tolist())}
        xs, ys = [], []
        with open(table, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                lab = (row.get("label") or "").strip()
                if not lab:
                    continue
                k = row_of.get(int(row["id"]))
                if k is None:
                    continue  # captured in privacy mode: no input to learn from
                xs.append(x_all[k])
                ys.append(lab)
        if not xs:
            raise UsageError(f"{table}: no labelled rows with an input (fill the 'label' column)")
        return np.stack(xs), _map_labels(ys, labels)
    if not p.is_file():
        raise UsageError(f"{p}: no such file or folder")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            xk = "x" if "x" in keys else "X" if "X" in keys else None
            if xk is None or "y" not in keys:
                raise UsageError(f"{p}: a .npz needs arrays 'x' and 'y' (has {sorted(keys)})")
            x, y = z[xk], z["y"]
    except (OSError, ValueError) as e:
        raise UsageError(f"{p}: not a readable .npz ({e})") from None
    if len(x) != len(y):
        raise UsageError(f"{p}: x has {len(x)} rows but y has {len(y)}")
    return x, _map_labels(list(y), labels)


def _split(x: np.ndarray, y: np.ndarray, holdout: float, seed: int, task: Optional[str]):
    """(x_train, x_held, y_train, y_held): the held-out rows are the comparison's, never trained on."""
    from edgeloop.data import holdout_split

    if holdout <= 0 or len(x) < 4:
        return x, x[:0], y, y[:0]
    keep, held = holdout_split(y, holdout, seed, classification=task != "regression")
    return x[keep], x[held], y[keep], y[held]


def _unseen(x: np.ndarray, y: np.ndarray, trained: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Held-out rows without the ones that equal a training row (a sample labelled twice); how many dropped."""
    seen = {np.ascontiguousarray(r, dtype=np.float32).tobytes() for r in trained}
    fresh = np.asarray([np.ascontiguousarray(r, dtype=np.float32).tobytes() not in seen for r in x], dtype=bool)
    return x[fresh], y[fresh], int(len(x) - fresh.sum())


def _evaluate(bundle_model: Any, x: np.ndarray, y: np.ndarray, task: Optional[str]) -> Optional[float]:
    """The bundle's metric on (x, y): predictions from the bundle runtime (what the device runs), scored
    by the one scorer (:func:`edgeloop.data.score`)."""
    from edgeloop.data import score

    if len(x) == 0:
        return None
    fixed = isinstance(bundle_model.input["shape"][0], int)
    step = 1 if fixed else 256
    preds: list = []
    for i in range(0, len(x), step):
        res = bundle_model.predict(np.ascontiguousarray(x[i:i + step], dtype=bundle_model.input_dtype))
        if "label" in res:
            preds.extend(res["label"])
        else:
            preds.extend(np.asarray(next(iter(res["outputs"].values()))).reshape(-1).tolist())
    return score("mae" if task == "regression" else "accuracy", np.asarray(y), np.asarray(preds))


def _refit_sklearn(src: Path, x: np.ndarray, y: np.ndarray, work: Path, trust_pickle: bool = False):
    try:
        from sklearn.base import clone
    except ImportError:
        raise MissingDependencyError("scikit-learn", "sklearn") from None
    from edgeloop.frontends.sklearn import dump_estimator, estimator_file_format, load_estimator

    fmt = estimator_file_format(src)
    est = load_estimator(src, trust_pickle=trust_pickle)  # hash-verified above; a pickle only when trusted
    n = getattr(est, "n_features_in_", None)
    if n is not None and x.reshape(len(x), -1).shape[1] != n:
        raise UsageError(f"the source estimator takes {n} features, the data has "
                         f"{x.reshape(len(x), -1).shape[1]}; improve refits the unreduced source, so "
                         "give it data with all the source's features")
    new = clone(est).fit(x.reshape(len(x), -1), y)
    out = work / src.name
    out.write_bytes(dump_estimator(new, fmt or "pickle"))  # the refit keeps the source's format
    from edgeloop.frontends.sklearn import from_sklearn

    return from_sklearn(new, where=str(src)), new, out


def _finetune_torch(src: Path, x: np.ndarray, y: np.ndarray, work: Path, sample_shape: list, *,
                    labels: Optional[list], epochs: int, lr: float, seed: int, trust_pickle: bool = False):
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch") from None

    torch.manual_seed(seed)
    from edgeloop.frontends.torch import load_program

    module = load_program(src, trust_pickle=trust_pickle).module()  # refuses pickled objects unless trusted
    params = [p for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise UsageError(f"{src}: the exported program has no parameters to fine-tune")
    idx = np.asarray([labels.index(v) for v in y.tolist()] if labels else y, dtype=np.int64)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(idx)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    batch = 32
    fixed_batch = sample_shape[0] if isinstance(sample_shape[0], int) else None
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            sel = order[i:i + batch]
            xb, yb = xt[sel], yt[sel]
            if fixed_batch:  # a graph exported with a fixed batch size: feed it chunks of that size
                losses = [torch.nn.functional.cross_entropy(module(xb[j:j + fixed_batch]), yb[j:j + fixed_batch])
                          for j in range(0, len(xb) - fixed_batch + 1, fixed_batch)]
                if not losses:
                    continue
                loss = torch.stack(losses).mean()
            else:
                loss = torch.nn.functional.cross_entropy(module(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    example = torch.zeros([d if isinstance(d, int) else 1 for d in sample_shape], dtype=torch.float32)
    with torch.no_grad():
        new_program = torch.export.export(module, (example,))
    out = work / src.name
    torch.export.save(new_program, str(out))
    from edgeloop.frontends.torch import load_pt2

    return load_pt2(out), None, out


def _replay(model: Any, recipe: Optional[list], data_of: Any, step: Any) -> tuple[Any, bool, str]:
    """Re-apply the bundle's shrink recipe (``data_of(PassData)`` gives the passes' data); returns the
    model, whether it was re-applied and a note saying so."""
    if not recipe:
        return model, False, "no shrink recipe recorded"
    try:
        from edgeloop.passes import PassData, apply_recipe
    except ImportError:
        return model, False, "edgeloop.passes.apply_recipe is not available: recipe NOT re-applied"
    step(f"re-applying the shrink recipe ({len(recipe)} passes)")
    return apply_recipe(model, recipe, data_of(PassData)), True, f"re-applied {len(recipe)} passes"


def _improve_detector(bundle: Path, manifest: dict, data: "str | Path", output: "str | Path", *,
                      base_data: "str | Path | None", holdout: float, seed: int, epochs: int, step: Any,
                      trust_pickle: bool) -> dict:
    """improve for a detector edgeloop trained (:mod:`edgeloop.train.detect_finetune`): fine-tune on the
    labelled frames plus the original dataset, replay int8 and the shrink recipe, compare old and new
    (centroid F1 for centroid models, mAP@0.5 for box models) on held-out frames neither saw."""
    import hashlib

    import onnx

    from edgeloop.graph import get_metadata, set_metadata
    from edgeloop.train import detect_finetune as ft

    prov = manifest.get("provenance") or {}
    head = manifest.get("head") or {}
    graph = onnx.load(str(bundle / "model.onnx"))
    trainer = ft.trainer_of(graph)
    src_rel = prov.get("source_file") or ""
    if trainer is None or not src_rel.endswith(".pt2") or not (bundle / src_rel).is_file():
        raise UsageError(f"this detector ({head.get('kind', '?')} head) was not trained by edgeloop, so improve "
                         "cannot fine-tune it (no trainer record and .pt2 source in the bundle), and a head-only "
                         "refit of an imported detector is not supported; train one with `edgeloop train "
                         "DATASET` to improve it", where=str(bundle))
    labels = [str(v) for v in head["labels"]]
    meta = get_metadata(graph)
    name = trainer["name"]
    metric = "centroid_f1" if head.get("kind") == "centroids" else "map50"
    step("loading labelled frames")
    new = ft.load_labelled_images(data, labels)
    if not len(new):
        raise UsageError("holds no labelled frames", where=str(data))
    base = ft.original_dataset(base_data, meta, labels)
    same_data = base.checksum == meta.get("dataset_checksum")
    keep, held = ft.holdout(len(new), holdout, seed)
    train = new.subset(keep) + ft.images_of(base, base.split("train"), labels)
    digest = lambda f: hashlib.sha256(Path(f).read_bytes()).hexdigest()  # noqa: E731
    seen = {digest(f) for f in train.files}
    # a held-out frame that equals a training image (a frame captured twice) is not held out
    fresh = [i for i in held if digest(new.files[i]) not in seen]
    held_new, held_base = new.subset(fresh), ft.images_of(base, base.split("test"), labels)
    with tempfile.TemporaryDirectory(prefix=".edgeloop-improve-", dir=Path(output).resolve().parent) as tmp:
        work = Path(tmp)
        step(f"fine-tuning {name} on {len(train)} images ({len(keep)} labelled captures)")
        res = ft.finetune_detector(bundle / src_rel, trainer, head, train, base, work, epochs=epochs, seed=seed,
                                   trust_pickle=trust_pickle, progress=step)
        recipe = prov.get("recipe")
        # as shrink gave it: the training images as input tensors (pruning refits reproduce activations
        # on them; their labels are not used), calibration from the same images
        x_fit = res["x_train"].astype(np.float32)
        y_fit = np.empty(len(x_fit), dtype=object)
        model, recipe_applied, recipe_note = _replay(
            res["model"], recipe, lambda PassData: PassData(train=(x_fit, y_fit), x_calib=x_fit[:512]), step)
        if name == "fomo":
            recipe_note = "int8 re-quantized as the trainer did; " + recipe_note
        old_version = int(manifest.get("version", 1))
        improve_doc = {"method": "fine-tune", "trained_on": len(train), "new_samples": len(new),
                       "new_trained_on": len(keep), "base_trained_on": len(train) - len(keep),
                       "epochs_run": res["fit"]["epochs_run"], "best_epoch": res["fit"]["best_epoch"],
                       "kept_shipped_weights": res["kept_shipped_weights"], "lr": res["lr"],
                       "recipe_applied": recipe_applied, "recipe_note": recipe_note}
        set_metadata(model, task="detection", class_names=labels, source=res["source"].name, source_format="torch",
                     dataset=str(base.path), dataset_checksum=base.checksum,
                     trainer={**trainer, "improve": {k: improve_doc[k] for k in ("trained_on", "epochs_run", "lr")}})
        provenance = {"parent": {"name": manifest.get("name"), "version": old_version,
                                 "model_sha256": manifest["files"]["model.onnx"]}, "improve": improve_doc}
        if recipe:
            provenance["recipe"] = recipe

        def compare(old_m: Any, new_m: Any) -> dict:
            from edgeloop.train.detect_finetune import score_bundle

            comp: dict = {"metric": metric, "old_version": old_version, "new_version": old_version + 1}
            for key, imgs, dropped in (("holdout_new", held_new, len(held) - len(fresh)), ("holdout_base", held_base, 0)):
                comp[key] = {"n": len(imgs), "old": score_bundle(old_m, imgs, metric),
                             "new": score_bundle(new_m, imgs, metric), "dropped_as_training_rows": dropped}
            n = len(held_new) + len(held_base)
            comp["holdout_note"] = (f"old and new compared on {len(held_new)} held-out labelled captures and the "
                                    f"{len(held_base)} test images of {base.path}, which neither the fine-tune "
                                    f"({len(train)} images) nor its validation choices saw" if n else
                                    "no held-out images: old and new were not compared")
            if not same_data:
                comp["holdout_note"] += ("; the original data differs from the dataset the model records "
                                         f"({meta.get('dataset')})")
            comp.update(method="fine-tune", trained_on=len(train), recipe_applied=recipe_applied,
                        recipe_note=recipe_note)
            return comp

        return _write_compared(model, work, bundle, output, manifest, res["source"], provenance, compare, step)


def _write_compared(model: Any, work: Path, bundle: Path, output: "str | Path", manifest: dict, new_src: Path,
                    provenance: dict, compare: Any, step: Any) -> dict:
    """Build version+1 as a trial, compare it with the old bundle (``compare(old, new)`` through the
    bundle runtime, what the device runs), then write it to ``output`` with the comparison in its
    provenance. Returns the comparison."""
    from edgeloop.runtime.model import BundleModel

    from . import build_bundle

    version = int(manifest.get("version", 1)) + 1
    kw = dict(name=manifest.get("name"), version=version, source_path=str(new_src),
              preprocessing=manifest.get("preprocessing"))
    step("building and evaluating the new bundle")
    trial = work / "trial"
    build_bundle(model, trial, manifest["target"]["id"], provenance=provenance, **kw)
    comparison = compare(BundleModel(bundle), BundleModel(trial))
    provenance["improve"]["comparison"] = comparison
    build_bundle(model, output, manifest["target"]["id"], provenance=provenance, **kw)
    shutil.rmtree(trial, ignore_errors=True)
    return comparison


def improve(bundle: "str | Path", data: "str | Path", output: "str | Path", *,
            base_data: "str | Path | None" = None, holdout: float = 0.25, seed: int = 0,
            epochs: int = 15, lr: float = 1e-3, progress: Any = None, trust_pickle: bool = False) -> dict:
    """Retrain from the bundle's source, replay the recipe, write version+1 to ``output``.

    A pickle source (``provenance.source_needs_trust``, or a .joblib/.pkl file) is refused
    unless ``trust_pickle``: unpickling runs code from the bundle's file."""
    from edgeloop.graph import set_metadata
    from edgeloop.runtime.bundle import BundleError, verify_bundle
    from edgeloop.runtime.model import BundleModel

    from . import build_bundle

    def step(msg: str) -> None:
        if progress is not None:
            progress(msg)

    bundle = Path(bundle)
    try:
        manifest = verify_bundle(bundle)
    except BundleError as e:
        raise EdgeloopError(str(e)) from None
    prov = manifest.get("provenance") or {}
    if manifest.get("task") == "detection" or manifest.get("head"):
        return _improve_detector(bundle, manifest, data, output, base_data=base_data, holdout=holdout, seed=seed,
                                 epochs=epochs, step=step, trust_pickle=trust_pickle)
    src_rel = prov.get("source_file")
    if not src_rel:
        raise UsageError(f"{bundle}: the bundle carries no trainable source (.skops/.joblib/.pt2); export it "
                         "from the source model file to use improve")
    src = bundle / src_rel
    from edgeloop.frontends.sklearn import PICKLE_REFUSAL, UntrustedSourceError, needs_trust

    if not trust_pickle and (prov.get("source_needs_trust") or (src.suffix.lower() != ".pt2" and needs_trust(src))):
        raise UntrustedSourceError(f"the bundle's source {src_rel} is a pickle: {PICKLE_REFUSAL}", where=str(bundle))
    labels = manifest.get("labels")
    task = manifest.get("task") or ("classification" if labels or (manifest.get("postprocess") or {}).get("scores") else None)
    step("loading labelled data")
    x_new, y_new = load_labelled(data, labels)
    sample_shape = manifest["inputs"][0]["shape"]
    want = sample_shape[1:]
    if manifest.get("kept_features") and isinstance(manifest.get("n_features_original"), int) and len(want) == 1:
        # a feature-reduced model: the source is refitted on every original feature (what the
        # server captures), then the recipe's feature selection is replayed
        want = [manifest["n_features_original"]]
    if x_new.ndim - 1 != len(want) or any(isinstance(d, int) and d != g for d, g in zip(want, x_new.shape[1:])):
        raise UsageError(f"labelled inputs have shape {list(x_new.shape[1:])} per sample, the model takes "
                         f"{want}")
    x_tr, x_te, y_tr, y_te = _split(x_new, y_new, holdout, seed, task)
    xb_te = yb_te = None
    if base_data is not None:
        x_base, y_base = load_labelled(base_data, labels)
        xb_tr, xb_te, yb_tr, yb_te = _split(x_base, y_base, holdout, seed, task)
        x_tr = np.concatenate([xb_tr.astype(np.float32), x_tr.astype(np.float32)])
        y_tr = np.concatenate([yb_tr, y_tr])
    # from here on x_tr/y_tr is the only training data: the held-out rows below never reach a fit
    x_te, y_te, dup_new = _unseen(x_te, y_te, x_tr)
    if xb_te is not None:
        xb_te, yb_te, dup_base = _unseen(xb_te, yb_te, x_tr)
    fmt = src.suffix.lower()
    with tempfile.TemporaryDirectory(prefix=".edgeloop-improve-", dir=Path(output).resolve().parent) as tmp:
        work = Path(tmp)
        if fmt in (".skops", ".joblib", ".pkl", ".pickle"):
            step(f"refitting {src.name} on {len(x_tr)} samples")
            method = "refit"
            model, est, new_src = _refit_sklearn(src, x_tr, y_tr, work, trust_pickle)
        elif fmt == ".pt2":
            step(f"fine-tuning {src.name} on {len(x_tr)} samples")
            method = "fine-tune"
            model, est, new_src = _finetune_torch(src, x_tr, y_tr, work, sample_shape, labels=labels,
                                                  epochs=epochs, lr=lr, seed=seed, trust_pickle=trust_pickle)
        else:
            raise UsageError(f"{src}: cannot retrain a '{fmt}' source")
        recipe = prov.get("recipe")
        # the replay re-fits on the training rows and chooses nothing: no validation split, and the
        # held-out rows stay out
        model, recipe_applied, recipe_note = _replay(
            model, recipe, lambda PassData: PassData(train=(x_tr, y_tr), x_calib=x_tr[:512].astype(np.float32),
                                                     source=est if est is not None else str(new_src)), step)
        set_metadata(model, source=str(src_rel), source_format=prov.get("source_format") or "",
                     **({"labels": labels} if labels is not None else {}))
        old_version = int(manifest.get("version", 1))
        provenance = {"parent": {"name": manifest.get("name"), "version": old_version,
                                 "model_sha256": manifest["files"]["model.onnx"]},
                      "improve": {"method": method, "trained_on": int(len(x_tr)), "new_samples": int(len(x_new)),
                                  "recipe_applied": recipe_applied, "recipe_note": recipe_note}}
        if recipe:
            provenance["recipe"] = recipe

        def _compare(old_m: Any, new_m: Any) -> dict:
            metric = "mae" if task == "regression" else "accuracy"
            comparison = {
                "metric": metric, "old_version": old_version, "new_version": old_version + 1,
                "holdout_new": {"n": int(len(x_te)), "old": _evaluate(old_m, x_te, y_te, task),
                                "new": _evaluate(new_m, x_te, y_te, task), "dropped_as_training_rows": dup_new},
            }
            if xb_te is not None:
                comparison["holdout_base"] = {"n": int(len(xb_te)), "old": _evaluate(old_m, xb_te, yb_te, task),
                                              "new": _evaluate(new_m, xb_te, yb_te, task),
                                              "dropped_as_training_rows": dup_base}
            n_held = int(len(x_te)) + (0 if xb_te is None else int(len(xb_te)))
            comparison["holdout_note"] = (f"old and new compared on {n_held} held-out rows that neither the "
                                          f"{method} ({len(x_tr)} rows) nor the recipe replay nor any selection saw"
                                          if n_held else "no held-out rows (--holdout 0 or too little data): "
                                          "old and new were not compared")
            comparison.update(method=method, trained_on=int(len(x_tr)), recipe_applied=recipe_applied,
                              recipe_note=recipe_note)
            return comparison

        comparison = _write_compared(model, work, bundle, output, manifest, new_src, provenance, _compare, step)
    return comparison
