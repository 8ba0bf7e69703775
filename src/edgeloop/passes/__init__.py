"""Passes: graph in, graph out, each with a small frozen config.

Every pass module defines a frozen dataclass config with a ``NAME`` class
attribute and a ``run(model, config, data) -> ModelProto`` function. Use them
through :func:`apply_pass` (one pass) or :func:`apply_recipe` (a list of
``{"pass": name, "config": {...}}`` steps, as recorded in a model's metadata
under ``recipe``), so that the history travels with the model and another
stage (``improve``) can replay it on a refitted model::

    from edgeloop.passes import apply_pass, apply_recipe, Int8Static
    small = apply_pass(model, Int8Static(calibration="percentile"), data)
    again = apply_recipe(other_model, get_metadata(small)["recipe"], data)

``data`` (:class:`PassData`) carries what some passes need, by split name
(:mod:`edgeloop.data.splits`): calibration samples, the ``train`` split for
every fit, the ``validation`` split for every choice, and the source model (a
scikit-learn estimator or its .joblib path) for refits. It has no place for a
``test`` split: the rows a caller reports on never reach a pass.

Passes:

========================  =====================================================
``int8_static``           int8 QDQ, calibrated (MinMax/Percentile/Entropy/MSE or per tensor), TFLite scheme
``int8_dynamic``          int8 weights, activations quantized at run time
``float16``               float16 weights (and optionally activations)
``mixed_precision``       int8 static with the named layers kept float
``channel_prune``         structured pruning: removes Conv/Gemm output channels
``magnitude_prune``       unstructured pruning: zeroes the smallest weights
``sparse_storage``        stores zero-heavy weights compactly (bitmask + values)
``feature_select``        keeps k input features, refits the scikit-learn source
``smaller_algorithm``     refits a simpler scikit-learn estimator
``layer_removal``         drops shape-preserving layers
========================  =====================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

from edgeloop.errors import UsageError


@dataclass
class PassData:
    """What data-hungry passes may use, by split name. Every field is optional.

    - ``train`` (x, y): the only rows any pass fits on: refits (feature_select,
      smaller_algorithm), the pruning passes' least-squares reconstruction,
      fine-tunes;
    - ``validation`` (x, y): the only rows that choose settings (layer
      sensitivity, permutation importance); never fitted on;
    - ``x_calib``: unlabelled samples for int8 calibration;
    - ``metric``: accuracy | f1 | auc | mae;
    - ``source``: a fitted scikit-learn estimator or its .skops path (a .joblib/.pkl
      pickle path only with ``trust_pickle=True``).

    ``x_fit``/``y_fit`` and ``x_tune``/``y_tune`` are accepted as older names of
    ``train`` and ``validation``.
    """

    train: Any = None  # (x, y)
    validation: Any = None  # (x, y)
    x_calib: np.ndarray | None = None
    metric: str = "accuracy"
    source: Any = None  # a fitted scikit-learn estimator or a path to its .skops (or .joblib/.pkl)
    trust_pickle: bool = False  # allow ``source`` to be a pickle file (unpickling runs code from it)
    x_fit: dataclasses.InitVar[Any] = None
    y_fit: dataclasses.InitVar[Any] = None
    x_tune: dataclasses.InitVar[Any] = None
    y_tune: dataclasses.InitVar[Any] = None

    def __post_init__(self, x_fit: Any, y_fit: Any, x_tune: Any, y_tune: Any) -> None:
        for name, (x, y) in (("train", (x_fit, y_fit)), ("validation", (x_tune, y_tune))):
            if x is not None and y is not None:
                if getattr(self, name) is not None:
                    raise UsageError(f"PassData: give the {name} split once")
                setattr(self, name, (x, y))
        for name in ("train", "validation"):
            pair = getattr(self, name)
            if pair is not None:
                x, y = pair
                if len(x) != len(y):
                    raise UsageError(f"PassData: the {name} split has {len(x)} samples but {len(y)} labels")
                setattr(self, name, (np.asarray(x), np.asarray(y)))

    def split(self, name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
        """The named split (``train`` or ``validation``), or a one-line error naming ``what`` needs it."""
        if name not in ("train", "validation"):
            raise UsageError(f"passes see only the train and validation splits, not {name!r}")
        pair = getattr(self, name)
        if pair is None or len(pair[1]) == 0:
            raise UsageError(f"{what} needs labelled data (a {name} split)")
        return pair

    @classmethod
    def from_splits(cls, splits: Any, source: Any = None) -> "PassData":
        """The train and validation splits of :class:`edgeloop.data.Splits` (never its test split)."""
        return cls(train=splits["train"], validation=splits["validation"], x_calib=splits.x_calib,
                   metric=splits.metric, source=source)

    def source_estimator(self) -> Any:
        """The scikit-learn source, loaded from its file if needed; None without one."""
        src = self.source
        if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
            import os

            from edgeloop.frontends.sklearn import SOURCE_SUFFIXES, load_estimator

            path = os.fspath(src)
            if not path.lower().endswith(SOURCE_SUFFIXES):
                return None
            src = load_estimator(path, trust_pickle=self.trust_pickle)  # a pickle only when trusted
            self.source = src
        if src is not None and hasattr(src, "get_params") and hasattr(src, "fit"):
            return src
        return None


_REGISTRY: dict[str, tuple[type, Callable]] = {}
_LOADED = False
_MODULES = ("quantize", "float16", "mixed", "prune_structured", "prune_magnitude", "sklearn_refit",
            "layers")


def register_pass(config_cls: type, fn: Callable) -> None:
    _REGISTRY[config_cls.NAME] = (config_cls, fn)


def _load_registry() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for module in _MODULES:
        importlib.import_module(f"edgeloop.passes.{module}")


def pass_names() -> list[str]:
    _load_registry()
    return sorted(_REGISTRY)


def config_from_dict(name: str, config: dict | None) -> Any:
    _load_registry()
    if name not in _REGISTRY:
        raise UsageError(f"unknown pass {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name][0]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in (config or {}).items():
        if k not in fields:
            raise UsageError(f"pass {name}: unknown setting {k!r}")
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict:
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def apply_pass(model: onnx.ModelProto, config: Any, data: PassData | None = None) -> onnx.ModelProto:
    """Run one pass (given by its config) on a copy of ``model`` and record it in the metadata."""
    from edgeloop.graph import get_metadata, set_metadata

    _load_registry()
    name = getattr(config, "NAME", None)
    if name not in _REGISTRY:
        raise UsageError(f"not a pass config: {config!r}")
    fn = _REGISTRY[name][1]
    src = onnx.ModelProto()
    src.CopyFrom(model)
    recipe = list(get_metadata(model).get("recipe") or [])
    out = fn(src, config, data)
    recipe.append({"pass": name, "config": _resolved_config(out, name) or config_to_dict(config)})
    strip_debug_info(out)
    compact_names(out)
    set_metadata(out, recipe=recipe)
    return out


_RESOLVED_KEY = "edgeloop.resolved_config"


def record_config(model: onnx.ModelProto, config: Any) -> None:
    """Record the config a pass resolved while running (e.g. the per-tensor calibration it chose) as the
    one :func:`apply_pass` writes into ``model``'s recipe instead of the config it was given (only for
    a step of that same pass; the note itself is removed)."""
    import json

    _resolved_config(model, "")  # one note at most
    p = model.metadata_props.add()
    p.key, p.value = _RESOLVED_KEY, json.dumps({"pass": config.NAME, "config": config_to_dict(config)})


def _resolved_config(model: onnx.ModelProto, name: str) -> dict | None:
    import json

    found = None
    for i in reversed(range(len(model.metadata_props))):
        if model.metadata_props[i].key == _RESOLVED_KEY:
            note = json.loads(model.metadata_props[i].value)
            found = note["config"] if note.get("pass") == name else found
            del model.metadata_props[i]
    return found


def compact_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Short stable names for every internal tensor and node; no value_info.

    Importers and quantizers name tensors after their source (a TFLite tensor name
    can be 200 characters, repeated in every quantize node added after it); on a
    small model that text outweighs the weights. The graph's inputs and outputs
    keep their names (they are the interface); internal tensors become ``t<i>``
    in order of first appearance (initializers, then node outputs), nodes
    ``n<i>``. value_info (shape annotations) is dropped: it is recomputed
    wherever shapes are needed. Graphs with subgraphs (If/Loop) keep their names,
    since a subgraph may refer to an outer tensor by name.
    """
    g = model.graph
    del g.value_info[:]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return model
    keep = {i.name for i in g.input} | {o.name for o in g.output} | {""}
    mapping: dict[str, str] = {}
    counter = iter(range(1 << 62))

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in mapping:
            new = f"t{next(counter)}"
            while new in keep:
                new = f"t{next(counter)}"
            mapping[name] = new
        return mapping[name]

    for init in g.initializer:
        init.name = short(init.name)
    for sp in g.sparse_initializer:
        sp.values.name = short(sp.values.name)
        sp.indices.name = ""
    for i, n in enumerate(g.node):
        for k, t in enumerate(n.input):
            n.input[k] = short(t)
        for k, t in enumerate(n.output):
            n.output[k] = short(t)
        n.name = f"n{i}"
    return model


def strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop per-node debugging text (doc strings, exporter stack traces and name scopes).

    The torch exporter attaches several hundred bytes of provenance to every
    node; on a small model that is a sizeable share of the file. Model-level
    metadata (edgeloop's, the labels, the recipe) is kept.
    """
    graphs = [model.graph]
    while graphs:  # iterative: subgraphs (If/Loop bodies) included without recursion
        g = graphs.pop()
        g.doc_string = ""
        for n in g.node:
            n.doc_string = ""
            del n.metadata_props[:]
            for a in n.attribute:
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            vi.doc_string = ""
            del vi.metadata_props[:]
        for init in g.initializer:
            init.doc_string = ""
            del init.metadata_props[:]
    return model


def apply_recipe(model: onnx.ModelProto, recipe: list[dict], data: PassData | None = None) -> onnx.ModelProto:
    """Replay ``recipe`` (a list of {"pass", "config"}) on ``model``."""
    for step in recipe:
        if not isinstance(step, dict) or "pass" not in step:
            raise UsageError(f"a recipe step must be {{'pass': name, 'config': {{...}}}}, got {step!r}")
        model = apply_pass(model, config_from_dict(step["pass"], step.get("config")), data)
    return model


def __getattr__(name: str) -> Any:  # lazy access to the config classes: edgeloop.passes.Int8Static
    if name.startswith("_") or name in _MODULES:
        raise AttributeError(name)
    _load_registry()
    for cls, _ in _REGISTRY.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(name)
