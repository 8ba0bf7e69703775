"""Which candidates the search tries, in what order, built on which parents."""

from __future__ import annotations

from typing import Any

from edgeloop.data.scoring import HIGHER_IS_BETTER


def _best(cands: list, metric_key: str, higher: bool = True):
    """The candidate with the best validation metric (then the smallest file)."""
    ok = [c for c in cands if c is not None]
    if not ok:
        return None
    return max(ok, key=lambda c: (c.metrics[metric_key] if higher else -c.metrics[metric_key],
                                  -c.metrics["file_bytes"]))


def _is_float(model) -> bool:
    import onnx

    return any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2 for i in model.graph.initializer)


ADAROUND_MAX_WEIGHTS = 300_000


def _n_weights(model) -> int:
    import math

    return sum(math.prod(i.dims) for i in model.graph.initializer if len(i.dims) >= 2)


def _has_layers(model, ops=("Conv", "Gemm", "MatMul")) -> bool:
    return any(n.op_type in ops for n in model.graph.node)


def _over_budget(s: Any, cand) -> bool:
    """True if ``cand`` failed or already loses more than --max-drop: a candidate built on it (int8 on a
    pruned model, more pruning) would be dominated, so the search skips it."""
    if cand is None or cand.error is not None:
        return True
    return cand.metrics.get("drop", 0.0) > s.limits.max_drop + 1e-12


def int8_base(cand) -> Any:
    """The Int8Static config a candidate's last step ran with (its per-tensor choices included)."""
    from edgeloop.passes import config_from_dict

    step = cand.recipe[-1]
    return config_from_dict("int8_static", step["config"]) if step["pass"] == "int8_static" else None


def global_calibration(cand) -> str:
    """The global calibration method of an int8 candidate (the base of a per-tensor choice)."""
    if cand is None:
        return "minmax"
    cfg = cand.recipe[-1]["config"]
    if cfg.get("calibration") != "auto":
        return cfg.get("calibration", "minmax")
    return next((c.split("=", 1)[1] for c in cfg.get("choices", []) if c.startswith("*=")), "minmax")


def quantize_family(s: Any, parent, quick: bool = False) -> Any:
    """int8 static on ``parent``: min-max (onnxruntime's default), the calibration chosen per tensor by
    output error (from per-channel and, unless quick, per-tensor weights), then bias correction and
    learnt rounding on the best; returns the best by the validation metric."""
    import dataclasses

    from edgeloop.passes import Int8Static

    model = parent.model if parent is not None else s.base_model
    if not _has_layers(model):
        return None
    got = [s.add(parent, Int8Static(calibration="minmax")),
           s.add(parent, Int8Static(calibration="auto"), label="int8_static (calibration per tensor)")]
    if not quick:
        got.append(s.add(parent, Int8Static(calibration="auto", per_channel=False),
                         label="int8_static (calibration per tensor, per-tensor weights)"))
    hib = HIGHER_IS_BETTER[s.splits.metric]
    best = _best(got, s.splits.metric, higher=hib)
    if best is None:
        return None
    base = int8_base(best)
    extra = [s.add(parent, dataclasses.replace(base, bias_correction=True), label="int8_static + bias correction")]
    if not quick and _n_weights(model) <= ADAROUND_MAX_WEIGHTS:  # learnt rounding: seconds per layer, capped
        extra.append(s.add(parent, dataclasses.replace(base, weight_rounding="adaround", bias_correction=True),
                           label="int8_static + AdaRound"))
    return _best([best] + extra, s.splits.metric, higher=hib)


def detector_mixed(s: Any, best_q: Any, loss: float, quick: bool = False) -> None:
    """int8 for detectors: when full int8 loses more than --max-drop (in mAP on validation), keep the head
    (the layers feeding the box and score outputs) float, then the head and the last layers whose int8
    costs the most by measurement. The drop of each is in ``info["int8_drop"]``."""
    from edgeloop.passes.mixed import MixedPrecision, head_layers, last_layers, rank_sensitivity

    metric = s.splits.metric
    base_val = s.baseline.metrics[metric]
    calib = global_calibration(best_q)
    head = head_layers(s.base_model)
    report: dict = {"metric": metric, "split": "validation", "float": base_val, "int8": best_q.metrics[metric],
                    "drop": loss, "max_drop": s.limits.max_drop, "int8_candidate": best_q.id,
                    "calibration": calib, "head_layers": head, "mixed": []}
    s.info["int8_drop"] = report
    if loss <= s.limits.max_drop or not head:
        report["mixed_tried"] = False
        return
    report["mixed_tried"] = True
    tried = [s.add(None, MixedPrecision(float_layers=tuple(head), calibration=calib),
                   label="mixed precision: the head float")]
    tail = last_layers(s.base_model, 4 if quick else 8, skip=tuple(head))
    s.progress("measuring the last layers' sensitivity to int8 (mAP)")
    try:
        ranking = rank_sensitivity(s.base_model, s.data, calib, max_layers=len(tail), layers=tail,
                                   keep_float=tuple(head)) if tail else []
    except Exception as e:  # a failed measurement only removes these candidates
        s.info["layer_sensitivity_error"] = f"{type(e).__name__}: {e}"
        ranking = []
    s.info["layer_sensitivity"] = [{"layer": n, "gain": g} for n, g in ranking]
    helpful = [n for n, g in ranking if g > 0]
    for k in range(1, min(2 if quick else 3, len(helpful)) + 1):
        tried.append(s.add(None, MixedPrecision(float_layers=tuple(head + helpful[:k]), calibration=calib),
                           label=f"mixed precision: the head and {k} last layer(s) float"))
    for c in tried:
        if c is not None:
            report["mixed"].append({"id": c.id, "float_layers": list(c.recipe[-1]["config"]["float_layers"]),
                                    metric: c.metrics[metric], "drop": base_val - c.metrics[metric],
                                    "meets_limits": not c.misses})


def explore(s: Any, quick: bool = False) -> None:
    from edgeloop.passes import Float16, Int8Dynamic, pass_names

    hib = HIGHER_IS_BETTER[s.splits.metric]
    base = s.base_model
    names = set(pass_names())
    val_base = s.baseline.metrics[s.splits.metric]

    if _is_float(base):
        s.add(None, Float16())
        if s.target is not None and "float16" in s.target.precisions:
            s.add(None, Float16(activations=True))  # float16 compute, for targets that run it
        if _has_layers(base):
            s.add(None, Int8Dynamic())
        best_q = quantize_family(s, None, quick)
        s.info["calibration"] = best_q.recipe[-1]["config"]["calibration"] if best_q else None
        calib = global_calibration(best_q)  # what later int8 steps (on pruned models) use: one global method

        # mixed precision: layers whose int8 costs the most stay float, by measurement on validation
        if best_q is not None and "mixed_precision" in names:
            loss = (val_base - best_q.metrics[s.splits.metric]) * (1 if hib else -1)
            from edgeloop.passes.mixed import MixedPrecision, quantizable_layers, rank_sensitivity

            if s.splits.task == "detection":
                detector_mixed(s, best_q, loss, quick)
            elif loss > s.limits.max_drop and len(quantizable_layers(base)) > 1:
                # the best int8 (its per-tensor choices, weights, bias correction) with layers kept float
                q_cfg = int8_base(best_q)
                s.progress("measuring layer sensitivity to int8")
                try:
                    ranking = rank_sensitivity(base, s.data, max_layers=4 if quick else 12, int8=q_cfg)
                except Exception as e:  # a measurement that fails only removes these candidates
                    s.info["layer_sensitivity_error"] = f"{type(e).__name__}: {e}"
                    ranking = []
                s.info["layer_sensitivity"] = [{"layer": n, "gain": g} for n, g in ranking]
                helpful = [n for n, g in ranking if g > 0]
                for k in range(1, min(3, len(helpful)) + 1):
                    c = s.add(None, MixedPrecision.from_int8(q_cfg, helpful[:k]),
                              label=f"mixed precision: {k} layer(s) float")
                    if c is not None and not c.misses:
                        break  # more float layers: larger, and this one already meets the limits

        from edgeloop.passes import Int8Static

        # structured pruning, then int8
        if "channel_prune" in names:
            from edgeloop.passes.prune_structured import ChannelPrune, prunable_layers

            if prunable_layers(base):
                for ratio in ((0.5,) if quick else (0.25, 0.5, 0.75)):
                    p = s.add(None, ChannelPrune(ratio=ratio))
                    if _over_budget(s, p):
                        break  # dominated: int8 on top, and more pruning, only lose more
                    s.add(p, Int8Static(calibration=calib))

        # unstructured pruning, int8, compact storage
        if "magnitude_prune" in names and _has_layers(base):
            from edgeloop.passes.prune_magnitude import MagnitudePrune, SparseStorage

            settings = [MagnitudePrune(sparsity=sp) for sp in ((0.7,) if quick else (0.5, 0.7, 0.85))]
            from edgeloop.passes.prune_magnitude import _torch_source

            if not quick and _torch_source(s.data) is not None:  # a PyTorch source: fine-tune too
                settings += [MagnitudePrune(sparsity=sp, refit=False, finetune_epochs=2) for sp in (0.85, 0.9)]
            failed_refit = False
            for cfg in settings:
                if failed_refit and cfg.refit:
                    continue  # a lower sparsity already lost more than --max-drop
                p = s.add(None, cfg)
                if _over_budget(s, p):
                    failed_refit = failed_refit or cfg.refit
                    continue  # dominated: int8 and sparse storage on top only lose as much or more
                q = s.add(p, Int8Static(calibration=calib))
                # The compact form is decoded by onnxruntime when a session starts. A
                # microcontroller backend would have to store the decoded (dense) weights,
                # so the saving is only real off microcontrollers.
                if not _over_budget(s, q) and not (s.target is not None and s.target.kind == "mcu"):
                    s.add(q, SparseStorage())

        if "layer_removal" in names:
            from edgeloop.passes.layers import LayerRemoval, removable_layers

            for layer in removable_layers(base)[:2 if quick else 4]:
                r = s.add(None, LayerRemoval(layers=(layer,)))
                if not _over_budget(s, r):
                    s.add(r, Int8Static(calibration=calib))

    # refits of a scikit-learn source
    # (fidelity's reference is a whole output tensor: nothing a scikit-learn refit could fit)
    est = s.data.source_estimator() if s.data.source is not None and s.splits.metric != "fidelity" else None
    if est is not None and "feature_select" in names:
        from edgeloop.passes.sklearn_refit import FeatureSelect, SmallerAlgorithm, rank_features

        x_train = s.splits.x("train")
        n = x_train.reshape(len(x_train), -1).shape[1]
        if n >= 4:
            s.progress("ranking features by permutation importance")
            try:
                order = rank_features(est, s.data)
            except Exception as e:  # e.g. the source cannot predict on this data
                s.info["feature_ranking_error"] = f"{type(e).__name__}: {e}"
                order = []
            s.info["feature_ranking"] = [int(i) for i in order]
            for frac in (() if not order else (0.5,) if quick else (0.5, 0.35, 0.25)):
                k = max(1, int(round(n * frac)))
                fs = s.add(None, FeatureSelect(keep=tuple(sorted(int(i) for i in order[:k]))))
                if fs is not None and _is_float(fs.model) and _has_layers(fs.model):
                    s.add(fs, Int8Static(calibration="minmax"))
        for kind in (("logistic",) if quick else ("logistic", "tree")):
            if s.splits.task == "regression":
                kind = {"logistic": "linear"}.get(kind, kind)
            s.add(None, SmallerAlgorithm(kind=kind))
