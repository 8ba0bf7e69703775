"""Structured channel pruning: output channels really leave the graph.

For each producer layer (Conv with group=1, Gemm or MatMul with constant
weights) whose output reaches exactly one consumer layer (Conv, Gemm or
MatMul) through per-channel operators only (Relu, Clip, pooling,
BatchNormalization, depthwise Conv, Flatten/Reshape, ...), the ``ratio`` of output channels
with the smallest L1 weight norm is removed: the producer's weight rows and
bias, the BatchNormalization parameters and depthwise filters on the way and the consumer's
matching input channels (blocks of H*W columns after a Flatten) are all
sliced. The saved file, the MACs and the activation sizes shrink.

With ``refit=True`` (the default) and data available, each Gemm/MatMul
consumer's weights are refitted by least squares so that its output on the
train split matches the unpruned model's (the channel-pruning reconstruction of
He et al., 2017): a cheap stand-in for fine-tuning that needs no source model.
This is written by hand because no library prunes ONNX graphs structurally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgeloop.passes import PassData, register_pass

PER_CHANNEL = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu",
               "Selu", "Softplus", "Identity", "Dropout", "MaxPool", "AveragePool",
               "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"}
FLATTEN = {"Flatten", "Reshape"}
LAYERS = {"Conv", "Gemm", "MatMul"}


@dataclass(frozen=True)
class ChannelPrune:
    NAME = "channel_prune"
    ratio: float = 0.5
    layers: tuple[str, ...] = ()  # producer node names; empty = every prunable layer
    refit: bool = True


@dataclass
class _Chain:
    producer: onnx.NodeProto
    path: list[onnx.NodeProto]  # per-channel / flatten nodes between producer and consumer
    consumer: onnx.NodeProto
    block: int  # consumer input columns per channel (H*W after a Flatten, else 1)
    flatten: onnx.NodeProto | None


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    from edgeloop.graph import reinfer_shapes, tensor_shape

    m = reinfer_shapes(model)
    return {vi.name: tensor_shape(vi) for vi in list(m.graph.value_info) + list(m.graph.input)
            + list(m.graph.output)}


def _weight_ok(node, inits) -> bool:
    if node.op_type == "Conv":
        return (len(node.input) > 1 and node.input[1] in inits and _attr(node, "group", 1) == 1
                and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits))
    if node.op_type == "Gemm":
        ok = len(node.input) > 1 and node.input[1] in inits and not _attr(node, "transA", 0)
        return ok and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits)
    if node.op_type == "MatMul":
        return len(node.input) > 1 and node.input[1] in inits and len(inits[node.input[1]].dims) == 2
    return False


def _is_depthwise(node, inits) -> bool:
    """A Conv with one [1, kh, kw] filter per channel (group == channels, multiplier 1)."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    dims = list(inits[node.input[1]].dims)
    g = _attr(node, "group", 1)
    return g > 1 and len(dims) == 4 and dims[0] == g and dims[1] == 1 and \
        (len(node.input) < 3 or not node.input[2] or node.input[2] in inits)


def _chains(model: onnx.ModelProto) -> list[_Chain]:
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    outputs = {o.name for o in g.output}
    shapes = None
    found = []
    for p in g.node:
        if p.op_type not in LAYERS or not _weight_ok(p, inits):
            continue
        t = p.output[0]
        path: list = []
        flatten = None
        block = 1
        consumer = None
        while True:
            if t in outputs:
                break
            cs = consumers.get(t, [])
            if len(cs) != 1:
                break
            c = cs[0]
            if c.input[0] != t:
                break
            if _is_depthwise(c, inits) and flatten is None:
                path.append(c)  # per-channel too: its channels go with the producer's
                t = c.output[0]
                continue
            if c.op_type in LAYERS:
                if _weight_ok(c, inits) and (c.op_type != "Conv" or flatten is None):
                    consumer = c
                break
            if c.op_type in PER_CHANNEL:
                if c.op_type == "BatchNormalization" and not all(x in inits for x in c.input[1:5]):
                    break
                if c.op_type == "Clip" and any(x and x not in inits for x in c.input[1:]):
                    break
                if c.op_type == "LeakyRelu" and flatten is not None:
                    pass
                path.append(c)
                t = c.output[0]
                continue
            if c.op_type in FLATTEN and flatten is None and p.op_type == "Conv":
                shapes = shapes if shapes is not None else _shapes(model)
                before = shapes.get(c.input[0])
                after = shapes.get(c.output[0])
                if not before or len(before) != 4 or not all(isinstance(d, int) for d in before[1:]) \
                        or not after or len(after) != 2:
                    break
                if c.op_type == "Flatten" and _attr(c, "axis", 1) != 1:
                    break
                if c.op_type == "Reshape" and c.input[1] not in inits:
                    break
                block = before[2] * before[3]
                flatten = c
                path.append(c)
                t = c.output[0]
                continue
            break
        if consumer is not None:
            found.append(_Chain(p, path, consumer, block, flatten))
    return found


def prunable_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the layers whose output channels this pass can remove."""
    return [c.producer.name or c.producer.output[0] for c in _chains(model)]


def _out_axis(node, w: np.ndarray) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return 1  # MatMul [K, N]


def _in_axis(node) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if _attr(node, "transB", 0) else 0
    return 0


def _capture(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Values of intermediate tensors on samples ``x`` (run with onnxruntime)."""
    from edgeloop.data.scoring import Predictor, feature_view

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    p = Predictor(m)
    xs = feature_view(model, x)
    outs = p._run(xs)
    idx = {o.name: i for i, o in enumerate(m.graph.output)}
    return {n: outs[idx[n]] for n in names}


def run(model: onnx.ModelProto, config: ChannelPrune, data: PassData | None) -> onnx.ModelProto:
    from edgeloop.errors import UsageError

    if not 0 < config.ratio < 1:
        raise UsageError(f"channel_prune: ratio must be between 0 and 1, got {config.ratio}")
    chains = _chains(model)
    if config.layers:
        chains = [c for c in chains if (c.producer.name or c.producer.output[0]) in config.layers]
    if not chains:
        raise UsageError("channel_prune: no layer whose output channels can be removed")
    original = onnx.ModelProto()
    original.CopyFrom(model)
    g = model.graph
    arrays = {i.name: numpy_helper.to_array(i).copy() for i in g.initializer}
    kept_record = {}
    for ch in chains:
        p = ch.producer
        w = arrays[p.input[1]]
        ax = _out_axis(p, w)
        n_out = w.shape[ax]
        keep_n = max(1, int(math.ceil(n_out * (1 - config.ratio))))
        norms = np.abs(np.moveaxis(w, ax, 0)).reshape(n_out, -1).sum(axis=1)
        keep = np.sort(np.argsort(-norms, kind="stable")[:keep_n])
        kept_record[p.name or p.output[0]] = [int(k) for k in keep]
        arrays[p.input[1]] = np.take(w, keep, axis=ax)
        if len(p.input) > 2 and p.input[2]:
            b = arrays[p.input[2]]
            if b.ndim >= 1 and b.shape[-1] == n_out:
                arrays[p.input[2]] = np.take(b, keep, axis=b.ndim - 1)
        for node in ch.path:
            if node.op_type == "BatchNormalization":
                for name in node.input[1:5]:
                    arrays[name] = arrays[name][keep]
            elif node.op_type == "Conv":  # depthwise: one filter per channel
                arrays[node.input[1]] = arrays[node.input[1]][keep]
                if len(node.input) > 2 and node.input[2]:
                    arrays[node.input[2]] = arrays[node.input[2]][keep]
                for a in node.attribute:
                    if a.name == "group":
                        a.i = int(keep_n)
        c = ch.consumer
        cw = arrays[c.input[1]]
        cols = (keep[:, None] * ch.block + np.arange(ch.block)[None, :]).reshape(-1)
        arrays[c.input[1]] = np.take(cw, cols, axis=_in_axis(c))
        if ch.flatten is not None and ch.flatten.op_type == "Reshape":
            shape = arrays[ch.flatten.input[1]].copy()
            if len(shape) == 2 and shape[1] > 0:
                shape[1] = keep_n * ch.block
            arrays[ch.flatten.input[1]] = shape
    for i, init in enumerate(g.initializer):
        g.initializer[i].CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    del g.value_info[:]
    if config.refit and data is not None and data.train is not None:
        _refit_consumers(original, model, chains, data, kept_record)
    from edgeloop.graph import set_metadata

    set_metadata(model, pruned_channels={k: len(v) for k, v in kept_record.items()})
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        pass
    return model


def _refit_consumers(original: onnx.ModelProto, pruned: onnx.ModelProto, chains: list[_Chain],
                     data: PassData, kept: dict[str, list[int]]) -> None:
    """Least-squares refit of each Gemm/MatMul consumer to reproduce the original pre-activation.

    Consumers are refitted in graph order, each on the inputs the already
    refitted layers before it produce.
    """
    order = {id(n): i for i, n in enumerate(pruned.graph.node)}
    targets = sorted((ch for ch in chains if ch.consumer.op_type in ("Gemm", "MatMul")),
                     key=lambda ch: order.get(id(ch.consumer), 0))
    if not targets:
        return
    x = data.train[0][:2048]
    ref = _capture(original, [ch.consumer.output[0] for ch in targets], x)
    inits = {i.name: i for i in pruned.graph.initializer}
    for ch in targets:
        c = ch.consumer
        got = _capture(pruned, [c.input[0]], x)
        xin = got[c.input[0]].reshape(len(x), -1).astype(np.float64)
        y = ref[c.output[0]].reshape(len(x), -1).astype(np.float64)
        own = kept.get(c.name or c.output[0])
        if own is not None:  # this consumer lost output channels too
            y = y[:, own]
        alpha = float(_attr(c, "alpha", 1.0)) if c.op_type == "Gemm" else 1.0
        has_bias = c.op_type == "Gemm" and len(c.input) > 2 and c.input[2]
        if has_bias:
            b = numpy_helper.to_array(inits[c.input[2]]).astype(np.float64) * float(_attr(c, "beta", 1.0))
            y = y - b
        a = np.concatenate([xin, np.ones((len(xin), 1))], axis=1) if not has_bias else xin
        lam = 1e-3 * np.trace(a.T @ a) / a.shape[1]
        sol = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y)  # ridge: [K(+1), N]
        if not has_bias:
            sol = sol[:-1]  # no bias input to put an intercept in: dropped
        wk = sol[: xin.shape[1]] / alpha  # [K, N]
        w_old = numpy_helper.to_array(inits[c.input[1]])
        w_new = wk.T if _in_axis(c) == 1 else wk
        if w_new.shape != w_old.shape:
            continue
        inits[c.input[1]].CopyFrom(numpy_helper.from_array(w_new.astype(w_old.dtype), c.input[1]))


register_pass(ChannelPrune, run)
