"""float16: weights stored as float16 (half the file), optionally float16 compute.

``activations=False`` (the default) keeps compute in float32: each float
weight is stored as float16 and a Cast restores float32 when the model loads
(onnxruntime folds these casts at session creation), so it runs everywhere
and only the storage halves. ``activations=True`` converts the whole graph
with onnxruntime's own converter (onnxruntime.transformers.float16), inputs
and outputs kept float32, for targets that compute in float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgeloop.passes import PassData, register_pass

MIN_ELEMENTS = 16  # tiny constants (shapes, scalars) stay as they are


@dataclass(frozen=True)
class Float16:
    NAME = "float16"
    activations: bool = False


def _weights_only(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    graph_inputs = {i.name for i in g.input}
    new_inits = []
    casts = []
    for init in g.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.name in graph_inputs \
                or np.prod(init.dims) < MIN_ELEMENTS:
            new_inits.append(init)
            continue
        arr = numpy_helper.to_array(init)
        half = numpy_helper.from_array(np.clip(arr, -65504, 65504).astype(np.float16), init.name + "_fp16")
        new_inits.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=init.name + "_to_fp32"))
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    return model


def run(model: onnx.ModelProto, config: Float16, data: PassData | None) -> onnx.ModelProto:
    if not config.activations:
        return _weights_only(model)
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgeloop.passes.quantize import _keep_metadata, _quiet

    with _quiet():
        out = convert_float_to_float16(model, keep_io_types=True)
    return _keep_metadata(model, out)


register_pass(Float16, run)
