"""Layer removal: drop whole layers whose input and output shapes agree.

A removable layer is a Conv, Gemm or MatMul (with the per-channel activation
that follows it, e.g. Relu or BatchNormalization) whose output has exactly
the shape of its input, as in a residual block's inner layers or a square
hidden layer: the pass rewires its consumers to its input, so the layer's
weights, MACs and activation buffers disappear. Which layers to drop is a
search decision, measured on data (see edgeloop.search.plan); the pass
itself drops the named ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgeloop.errors import UsageError
from edgeloop.passes import PassData, register_pass
from edgeloop.passes.prune_structured import PER_CHANNEL, _shapes

LAYERS = {"Conv", "Gemm", "MatMul"}


@dataclass(frozen=True)
class LayerRemoval:
    NAME = "layer_removal"
    layers: tuple[str, ...] = ()


def _blocks(model: onnx.ModelProto) -> dict[str, tuple[list[onnx.NodeProto], str, str]]:
    """{layer name: (nodes, input tensor, output tensor)} for every removable layer."""
    g = model.graph
    shapes = _shapes(model)
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    outputs = {o.name for o in g.output}
    found = {}
    for i, n in enumerate(g.node):
        if n.op_type not in LAYERS:
            continue
        nodes = [n]
        t = n.output[0]
        while t not in outputs and len(consumers.get(t, [])) == 1 \
                and consumers[t][0].op_type in PER_CHANNEL and consumers[t][0].op_type not in (
                    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
            nodes.append(consumers[t][0])
            t = consumers[t][0].output[0]
        src = n.input[0]
        a, b = shapes.get(src), shapes.get(t)
        if a and b and a == b and all(isinstance(d, int) for d in a[1:]) and t not in outputs:
            found[n.name or f"{n.op_type}_{i}"] = (nodes, src, t)
    return found


def removable_layers(model: onnx.ModelProto) -> list[str]:
    return list(_blocks(model))


def run(model: onnx.ModelProto, config: LayerRemoval, data: PassData | None) -> onnx.ModelProto:
    blocks = _blocks(model)
    missing = [n for n in config.layers if n not in blocks]
    if missing or not config.layers:
        raise UsageError(f"layer_removal: cannot remove {', '.join(missing) or '(no layer named)'}; "
                         f"removable layers: {', '.join(blocks) or 'none'}")
    g = model.graph
    drop = set()
    for name in config.layers:
        nodes, src, out = blocks[name]
        drop.update(id(x) for x in nodes)
        for n in g.node:
            for k, t in enumerate(n.input):
                if t == out:
                    n.input[k] = src
    kept = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept)
    used = {t for n in g.node for t in n.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    return model


register_pass(LayerRemoval, run)
