"""Unstructured magnitude pruning, and compact storage of the zero-heavy weights it leaves.

``magnitude_prune`` zeroes, in every Conv/Gemm/MatMul weight, the ``sparsity``
fraction with the smallest magnitude (layer by layer). With data, each
Gemm/MatMul layer's surviving weights are then refitted by least squares so
its outputs on the train split match the unpruned layer's (row by row over the
kept inputs): a cheap stand-in for fine-tuning. Fine-tuning the PyTorch or
scikit-learn source itself is not done here.

Zeroed weights alone do not shrink an ONNX file. ``sparse_storage`` (the last
pass of a recipe, after quantization) stores each initializer that is mostly
zeros as its non-zero values plus a packed bitmask (1 bit per weight) and
rebuilds the dense tensor in the graph with standard operators::

    bits  = BitwiseAnd(BitShift(mask[:, None], [0..7], RIGHT), 1)   # unpack
    dense = Gather([0, values...], CumSum(bits) * bits)             # scatter

onnxruntime folds this constant subgraph once at session creation, so
inference runs on dense weights; an int8 weight at 70% sparsity takes 0.425
bytes per weight instead of 1. No ONNX library offers this (ONNX sparse
initializers use int64 indices, 8 bytes per non-zero), hence the hand-written
graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeloop.passes import PassData, register_pass

WEIGHT_SLOT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


@dataclass(frozen=True)
class MagnitudePrune:
    NAME = "magnitude_prune"
    sparsity: float = 0.7
    refit: bool = True
    min_elements: int = 256  # smaller weights (first layers, tiny heads) are left dense
    finetune_epochs: int = 0  # > 0 with a PyTorch source: prune and fine-tune the source, re-export
    finetune_lr: float = 1e-3


@dataclass(frozen=True)
class SparseStorage:
    NAME = "sparse_storage"
    min_zero_fraction: float = 0.4
    min_elements: int = 256


def _weights(model: onnx.ModelProto, min_elements: int) -> list[tuple[onnx.NodeProto, str]]:
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        slot = WEIGHT_SLOT.get(n.op_type)
        if slot is None or len(n.input) <= slot or n.input[slot] not in inits:
            continue
        w = inits[n.input[slot]]
        if w.data_type == TensorProto.FLOAT and len(w.dims) >= 2 and int(np.prod(w.dims)) >= min_elements:
            out.append((n, w.name))
    return out


def run_prune(model: onnx.ModelProto, config: MagnitudePrune, data: PassData | None) -> onnx.ModelProto:
    from edgeloop.errors import UsageError

    if not 0 < config.sparsity < 1:
        raise UsageError(f"magnitude_prune: sparsity must be between 0 and 1, got {config.sparsity}")
    if config.finetune_epochs > 0:
        return _finetune_torch(model, config, data)
    targets = _weights(model, config.min_elements)
    if not targets:
        raise UsageError("magnitude_prune: no Conv/Gemm/MatMul weight large enough to prune")
    original = onnx.ModelProto()
    original.CopyFrom(model)
    inits = {i.name: i for i in model.graph.initializer}
    for _, name in targets:
        w = numpy_helper.to_array(inits[name]).copy()
        k = int(round(w.size * config.sparsity))
        if k <= 0:
            continue
        thr = np.partition(np.abs(w).reshape(-1), k - 1)[k - 1]
        w[np.abs(w) <= thr] = 0
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
    if config.refit and data is not None and data.train is not None:
        _refit(original, model, [t for t in targets if t[0].op_type in ("Gemm", "MatMul")], data)
    return model


def _torch_source(data: PassData | None):
    """A trainable copy of the PyTorch source (an nn.Module, or the module of a .pt2 archive)."""
    import copy
    import os

    src = data.source if data is not None else None
    if src is None:
        return None
    if isinstance(src, (str, os.PathLike)):
        if not os.fspath(src).lower().endswith(".pt2"):
            return None
        from edgeloop.frontends.torch import load_program

        return load_program(os.fspath(src), trust_pickle=data.trust_pickle).module()
    if any(c.__module__.startswith("torch") for c in type(src).__mro__):
        return copy.deepcopy(src)
    return None


def _finetune_torch(model: onnx.ModelProto, config: MagnitudePrune, data: PassData | None) -> onnx.ModelProto:
    """Prune the PyTorch source's Conv/Linear weights by magnitude, fine-tune with the mask held, re-export.

    The source is trained at the batch size its graph was exported with (a
    .pt2 guards its input shapes); BatchNormalization keeps its running
    statistics (an exported module cannot switch to training mode). The
    exporter folds BatchNormalization into the convolution per output channel,
    so zeros stay zeros in the ONNX weights.
    """
    import torch

    from edgeloop.errors import UsageError
    from edgeloop.data.scoring import feature_view, input_info, model_task

    net = _torch_source(data)
    if net is None or data.train is None:
        raise UsageError("magnitude_prune with finetune_epochs needs the PyTorch source (.pt2) and "
                         "labelled training data")
    masks = {}
    for name, p in net.named_parameters():
        if p.dim() >= 2 and p.numel() >= config.min_elements:
            k = int(round(p.numel() * config.sparsity))
            thr = p.detach().abs().reshape(-1).kthvalue(max(k, 1)).values
            masks[name] = (p.detach().abs() > thr).to(p.dtype)
    if not masks:
        raise UsageError("magnitude_prune: no Conv/Linear weight large enough to prune")
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m)
    _, shape, _ = input_info(model)
    b = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else 32
    x_fit, y_fit = data.train
    x = torch.tensor(feature_view(model, x_fit))
    regression = model_task(model) == "regression"
    y = torch.tensor(y_fit, dtype=torch.float32 if regression else torch.int64)
    opt = torch.optim.Adam(net.parameters(), lr=config.finetune_lr)
    gen = torch.Generator().manual_seed(0)
    n = (len(x) // b) * b
    for _ in range(config.finetune_epochs):
        perm = torch.randperm(len(x), generator=gen)[:n]
        for i in range(0, n, b):
            idx = perm[i:i + b]
            out = net(x[idx])
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = (torch.nn.functional.mse_loss(out.reshape(-1), y[idx]) if regression
                    else torch.nn.functional.cross_entropy(out, y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for name, m in masks.items():
                    params[name].mul_(m)
    from edgeloop.frontends.torch import from_torch
    from edgeloop.graph import get_metadata, set_metadata

    program = torch.export.export(net, (torch.zeros((b, *x.shape[1:]), dtype=x.dtype),))
    new = from_torch(program, where=str(data.source))
    carried = {k: v for k, v in get_metadata(model).items() if k in ("source", "source_format", "recipe", "labels",
                                                                    "task")}
    set_metadata(new, **carried)
    return new


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def _refit(original, model, targets, data: PassData) -> None:
    from edgeloop.passes.prune_structured import _attr, _capture

    x = data.train[0][:2048]
    if not targets:
        return
    ref = _capture(original, [n.output[0] for n, _ in targets], x)
    inits = {i.name: i for i in model.graph.initializer}
    for node, name in targets:
        if node.op_type == "Gemm" and (_attr(node, "transA", 0) or float(_attr(node, "alpha", 1.0)) != 1.0):
            continue
        xin = _capture(model, [node.input[0]], x)[node.input[0]]
        xin = xin.reshape(-1, xin.shape[-1]).astype(np.float64)
        y = ref[node.output[0]].reshape(-1, ref[node.output[0]].shape[-1]).astype(np.float64)
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            y = y - numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) * float(_attr(node, "beta", 1.0))
        w = numpy_helper.to_array(inits[name])
        wt = w.T if (node.op_type == "Gemm" and _attr(node, "transB", 0)) else w  # [K, N]
        wt = wt.astype(np.float64).copy()
        gram = xin.T @ xin
        lam = 1e-3 * np.trace(gram) / len(gram)
        xty = xin.T @ y
        with _one_blas_thread():  # many small solves: threaded BLAS only adds overhead here
            for j in range(wt.shape[1]):
                keep = np.nonzero(wt[:, j])[0]
                if len(keep) == 0:
                    continue
                g = gram[np.ix_(keep, keep)] + lam * np.eye(len(keep))
                wt[keep, j] = np.linalg.solve(g, xty[keep, j])
        new = wt.T if (node.op_type == "Gemm" and _attr(node, "transB", 0)) else wt
        inits[name].CopyFrom(numpy_helper.from_array(new.astype(w.dtype), name))


def run_sparse(model: onnx.ModelProto, config: SparseStorage, data: PassData | None) -> onnx.ModelProto:
    ai = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if ai is not None and ai.version < 18:  # BitwiseAnd needs opset 18
        try:
            model = onnx.version_converter.convert_version(model, 18)
        except Exception:
            from edgeloop.errors import UnsupportedOperatorError

            raise UnsupportedOperatorError(f"sparse_storage needs opset 18; cannot convert from {ai.version}") from None
    g = model.graph
    keep_inits = []
    decode_nodes: list[onnx.NodeProto] = []
    shared_added = False
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if arr.size < config.min_elements or arr.dtype.kind not in "fiu" or arr.ndim < 1 \
                or np.mean(arr == 0) < config.min_zero_fraction:
            keep_inits.append(init)
            continue
        flat = arr.reshape(-1)
        nz = flat != 0
        stored = (np.count_nonzero(nz) + 1) * arr.itemsize + (arr.size + 7) // 8
        if stored >= arr.nbytes:
            keep_inits.append(init)
            continue
        if not shared_added:
            keep_inits.append(numpy_helper.from_array(np.arange(8, dtype=np.uint8), "edgeloop_sparse_shifts"))
            keep_inits.append(numpy_helper.from_array(np.array(1, dtype=np.uint8), "edgeloop_sparse_one"))
            keep_inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "edgeloop_sparse_m1"))
            keep_inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "edgeloop_sparse_ax1"))
            keep_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "edgeloop_sparse_ax0"))
            shared_added = True
        n = init.name
        p = f"{n}__sp"
        mask = np.packbits(nz, bitorder="little")
        keep_inits.append(numpy_helper.from_array(mask, p + "_mask"))
        keep_inits.append(numpy_helper.from_array(np.concatenate([np.zeros(1, arr.dtype), flat[nz]]),
                                                  p + "_values"))
        keep_inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), p + "_start"))
        keep_inits.append(numpy_helper.from_array(np.array([arr.size], dtype=np.int64), p + "_len"))
        keep_inits.append(numpy_helper.from_array(np.array(arr.shape, dtype=np.int64), p + "_shape"))
        decode_nodes += [
            helper.make_node("Unsqueeze", [p + "_mask", "edgeloop_sparse_ax1"], [p + "_m2"], name=p + "_unsq"),
            helper.make_node("BitShift", [p + "_m2", "edgeloop_sparse_shifts"], [p + "_sh"],
                             direction="RIGHT", name=p + "_shift"),
            helper.make_node("BitwiseAnd", [p + "_sh", "edgeloop_sparse_one"], [p + "_b8"], name=p + "_and"),
            helper.make_node("Reshape", [p + "_b8", "edgeloop_sparse_m1"], [p + "_bflat"], name=p + "_flat"),
            helper.make_node("Slice", [p + "_bflat", p + "_start", p + "_len"], [p + "_bits"], name=p + "_slice"),
            helper.make_node("Cast", [p + "_bits"], [p + "_bi"], to=TensorProto.INT64, name=p + "_cast"),
            helper.make_node("CumSum", [p + "_bi", "edgeloop_sparse_ax0"], [p + "_cs"], name=p + "_cumsum"),
            helper.make_node("Mul", [p + "_cs", p + "_bi"], [p + "_idx"], name=p + "_mul"),
            helper.make_node("Gather", [p + "_values", p + "_idx"], [p + "_dense"], axis=0, name=p + "_gather"),
            helper.make_node("Reshape", [p + "_dense", p + "_shape"], [n], name=p + "_reshape"),
        ]
    if not decode_nodes:
        return model
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(decode_nodes + nodes)
    del g.value_info[:]
    return model


register_pass(MagnitudePrune, run_prune)
register_pass(SparseStorage, run_sparse)
