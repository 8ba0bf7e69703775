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
    choices: tuple[str, ...] = ()  # as Int8Static (calibration="auto"): the per-tensor choices replayed
    bias_correction: bool = False

    @classmethod
    def from_int8(cls, q: Int8Static, float_layers) -> "MixedPrecision":
        """The int8 config ``q`` (its calibration, per-tensor choices, weights) with ``float_layers`` float."""
        return cls(float_layers=tuple(float_layers), calibration=q.calibration, per_channel=q.per_channel,
                   op_types=tuple(q.op_types), choices=tuple(q.choices), bias_correction=q.bias_correction)

    def int8(self, exclude: tuple[str, ...] = ()) -> Int8Static:
        return Int8Static(calibration=self.calibration, per_channel=self.per_channel,
                          exclude=tuple(self.float_layers) + tuple(exclude), op_types=tuple(self.op_types),
                          choices=tuple(self.choices), bias_correction=self.bias_correction)


def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _unique_node_names(m)  # the names quantize_static will see
    return [n.name for n in m.graph.node if n.op_type in QUANTIZABLE]


def head_layers(model: onnx.ModelProto) -> list[str]:
    """The quantizable layers nearest the outputs (no other quantizable layer lies between them and a
    graph output: a detector's box and score convolutions) and the nodes from them to the outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _unique_node_names(m)
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in m.graph.output}
    found: set[str] = set()
    for n in m.graph.node:
        if n.op_type not in QUANTIZABLE:
            continue
        todo, seen, reaches, path = list(n.output), set(), False, []
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            reaches = reaches or t in outputs
            for c in consumers.get(t, []):
                if c.op_type not in QUANTIZABLE:
                    path.append(c.name)
                    todo.extend(c.output)
        if reaches:
            found.add(n.name)
            found.update(path)  # the reshapes and concatenations between it and the outputs stay float too
    return [n.name for n in m.graph.node if n.name in found]


def last_layers(model: onnx.ModelProto, n: int, skip: tuple[str, ...] = ()) -> list[str]:
    """The last ``n`` quantizable layers in graph order, leaving out ``skip``."""
    return [name for name in quantizable_layers(model) if name not in skip][-n:] if n > 0 else []


def rank_sensitivity(model: onnx.ModelProto, data: PassData, calibration: str = "minmax",
                     max_layers: int = 8, layers: list[str] | None = None,
                     keep_float: tuple[str, ...] = (), int8: Int8Static | None = None) -> list[tuple[str, float]]:
    """[(layer, metric gain on validation when that layer alone stays float)], best gain first.

    ``layers``: the layers to measure (default: the first ``max_layers``); ``keep_float``: layers
    float in every measurement, including the reference (a detector's head)."""
    from edgeloop.data.scoring import HIGHER_IS_BETTER, evaluate

    if data is None:
        raise UsageError("mixed precision needs a validation split to measure layer sensitivity")
    xv, yv = data.split("validation", "measuring layer sensitivity for mixed precision")
    sign = 1.0 if HIGHER_IS_BETTER[data.metric] else -1.0
    keep = tuple(keep_float)
    import dataclasses

    q = int8 if int8 is not None else Int8Static(calibration=calibration)
    if q.calibration == "auto" and not q.choices:  # choose once, replay in every measurement
        q = dataclasses.replace(q, calibration="minmax")
    full = run_static(model, dataclasses.replace(q, exclude=keep), data)
    ref = evaluate(full, xv, yv, data.metric)
    if layers is None:
        layers = quantizable_layers(model)[:max_layers * 4]
    gains = []
    for name in layers[:max_layers] if len(layers) > max_layers else layers:
        one = run_static(model, dataclasses.replace(q, exclude=keep + (name,)), data)
        gains.append((name, sign * (evaluate(one, xv, yv, data.metric) - ref)))
    gains.sort(key=lambda t: -t[1])
    return gains


def run(model: onnx.ModelProto, config: MixedPrecision, data: PassData | None) -> onnx.ModelProto:
    from edgeloop.graph import set_metadata

    out = run_static(model, config.int8(), data)
    set_metadata(out, float_layers=list(config.float_layers))
    return out


register_pass(MixedPrecision, run)
