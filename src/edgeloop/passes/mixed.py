"""Mixed precision: int8 everywhere except the layers whose quantization costs the most.

The layers are chosen by measurement (:func:`rank_sensitivity`): each
quantizable layer is left float on its own and the metric on the validation
split is compared with the fully quantized model; the layers that win back the most
stay float. The pass itself replays a given list (``float_layers``), so a
recipe is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgeloop.errors import UsageError
from edgeloop.passes import PassData, register_pass
from edgeloop.passes.quantize import Int8Static, _unique_node_names, run_static

QUANTIZABLE = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass(frozen=True)
class MixedPrecision:
    NAME = "mixed_precision"
    float_layers: tuple[str, ...] = ()
    calibration: str = "minmax"
    per_channel: bool = True
    op_types: tuple[str, ...] = ()  # as Int8Static: () = the integer backends' operators


def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _unique_node_names(m)  # the names quantize_static will see
    return [n.name for n in m.graph.node if n.op_type in QUANTIZABLE]


def rank_sensitivity(model: onnx.ModelProto, data: PassData, calibration: str = "minmax",
                     max_layers: int = 8) -> list[tuple[str, float]]:
    """[(layer, metric gain on validation when that layer alone stays float)], best gain first."""
    from edgeloop.data.scoring import HIGHER_IS_BETTER, evaluate

    if data is None:
        raise UsageError("mixed precision needs a validation split to measure layer sensitivity")
    xv, yv = data.split("validation", "measuring layer sensitivity for mixed precision")
    sign = 1.0 if HIGHER_IS_BETTER[data.metric] else -1.0
    full = run_static(model, Int8Static(calibration=calibration), data)
    ref = evaluate(full, xv, yv, data.metric)
    layers = quantizable_layers(model)[:max_layers * 4]
    gains = []
    for name in layers[:max_layers] if len(layers) > max_layers else layers:
        q = run_static(model, Int8Static(calibration=calibration, exclude=(name,)), data)
        gains.append((name, sign * (evaluate(q, xv, yv, data.metric) - ref)))
    gains.sort(key=lambda t: -t[1])
    return gains


def run(model: onnx.ModelProto, config: MixedPrecision, data: PassData | None) -> onnx.ModelProto:
    from edgeloop.graph import set_metadata

    out = run_static(model, Int8Static(calibration=config.calibration, per_channel=config.per_channel,
                                       exclude=tuple(config.float_layers), op_types=tuple(config.op_types)),
                     data)
    set_metadata(out, float_layers=list(config.float_layers))
    return out


register_pass(MixedPrecision, run)
