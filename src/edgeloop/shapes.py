"""Fixed input shapes: ``--input-shape NAME=DIMS`` for models with symbolic dimensions.

Exporters often leave a model's input dimensions symbolic (``[batch, 3, h, w]``);
a microcontroller needs every buffer sized. ``fix_input_shapes`` pins the
named inputs to the dimensions the user gives, then folds the subgraphs that
computed shapes at run time (Shape -> Gather -> Concat -> Reshape and the
like) into constants with onnxruntime's own graph optimizer (basic level: the
constant folding and the redundant-node eliminations, all standard ONNX ops),
and records the shapes in the model's metadata (``edgeloop.input_shapes``).

Commands take the option through :func:`cli_option` and apply it with
:func:`using_input_shapes`: every model file loaded inside that block
(``edgeloop.frontends.load_file``) gets the shapes, so a backend that loads
the file itself sees the fixed model too.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Optional

import onnx

from edgeloop.errors import EdgeloopError, UsageError

META_KEY = "input_shapes"  # stored as edgeloop.input_shapes: {"x": [1, 3, 48, 192]}
HELP = ("Fix a symbolic input shape, e.g. x=1x3x48x192 (repeat for several inputs); "
        "shape-computing subgraphs are folded once the shape is known.")

# onnxruntime's basic level, less the transformers that rewrite int8 QDQ graphs (moving or
# duplicating Q/DQ nodes, sharing and merging nodes): an edgeloop int8 graph keeps its form.
_KEEP_QDQ = ["QDQPropagationTransformer", "EnsureUniqueDQForNodeUnit", "QDQS8ToU8Transformer",
             "CommonSubexpressionElimination", "ConstantSharing"]

_active: contextvars.ContextVar[Optional[dict[str, list[int]]]] = contextvars.ContextVar(
    "edgeloop_input_shapes", default=None)

_SPEC = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+(?:\s*[xX,]\s*\d+)*)\s*$")


def parse_input_shapes(specs: Optional[list[str]]) -> dict[str, list[int]]:
    """``["x=1x3x48x192", ...]`` -> ``{"x": [1, 3, 48, 192]}``; UsageError naming a bad spec."""
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        m = _SPEC.match(spec)
        if m is None:
            raise UsageError(f"--input-shape '{spec}': expected NAME=DIMS with DIMS like 1x3x48x192")
        name = m.group(1)
        dims = [int(d) for d in re.split(r"\s*[xX,]\s*", m.group(2))]
        if any(d <= 0 for d in dims):
            raise UsageError(f"--input-shape '{spec}': every dimension must be a positive integer")
        if name in shapes:
            raise UsageError(f"--input-shape: input '{name}' is given twice")
        shapes[name] = dims
    return shapes


def cli_option():
    """The typer option every command declares (one place for its name and help)."""
    import typer

    return typer.Option(None, "--input-shape", help=HELP, metavar="NAME=DIMS")


@contextlib.contextmanager
def using_input_shapes(specs: Optional[list[str]]) -> Iterator[dict[str, list[int]]]:
    """Parse ``--input-shape`` values and apply them to every model loaded inside the block."""
    shapes = parse_input_shapes(specs)
    token = _active.set(shapes or None)
    try:
        yield shapes
    finally:
        _active.reset(token)


def active_input_shapes() -> Optional[dict[str, list[int]]]:
    """The shapes set by the innermost :func:`using_input_shapes`, if any."""
    return _active.get()


def _dims(vi: onnx.ValueInfoProto) -> list[Optional[int]] | None:
    t = vi.type.tensor_type
    if vi.type.WhichOneof("value") != "tensor_type" or not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


def fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, list[int]]) -> onnx.ModelProto:
    """A copy of ``model`` with the named inputs fixed and its shape computations folded.

    Raises EdgeloopError naming the input when a name is unknown, the rank differs, or a
    dimension the model already fixes is given another value.
    """
    if not shapes:
        return model
    init = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in init}
    changed = False
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_name = {vi.name: vi for vi in m.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise EdgeloopError(f"--input-shape: the model has no input '{name}' (its inputs: "
                                + ", ".join(f"'{n}'" for n in inputs) + ")")
        have = _dims(inputs[name])
        if have is not None and len(have) != len(dims):
            raise EdgeloopError(f"--input-shape: input '{name}' has {len(have)} dimensions, "
                                f"{'x'.join(map(str, dims))} gives {len(dims)}")
        for axis, (old, new) in enumerate(zip(have or [], dims)):
            if old is not None and old != new:
                raise EdgeloopError(f"--input-shape: input '{name}' has dimension {old} at position "
                                    f"{axis}, {'x'.join(map(str, dims))} gives {new}")
        if have is None or any(d is None for d in have):
            changed = True
            t = by_name[name].type.tensor_type
            t.ClearField("shape")
            for d in dims:
                t.shape.dim.add().dim_value = d
    if changed:
        m = _fold(m)
    from edgeloop.graph import get_metadata, set_metadata

    recorded = dict(get_metadata(m).get(META_KEY) or {})
    recorded.update({k: list(v) for k, v in shapes.items()})
    set_metadata(m, **{META_KEY: recorded})
    return m


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold with onnxruntime's basic-level optimizer and read the saved result back."""
    import onnxruntime as ort

    from edgeloop.graph import reinfer_shapes

    # Stale intermediate shapes (symbolic ones from the exporter) would contradict the fixed input.
    del model.graph.value_info[:]
    for vi in model.graph.output:
        if vi.type.WhichOneof("value") == "tensor_type":
            vi.type.tensor_type.ClearField("shape")
    with tempfile.TemporaryDirectory(prefix="edgeloop-shape-") as tmp:
        out = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=_KEEP_QDQ)
        except Exception as e:  # onnxruntime refuses the graph under the new shape
            text = str(e).strip().splitlines()
            raise EdgeloopError("--input-shape: onnxruntime cannot run the model with this shape: "
                                + (text[0] if text else type(e).__name__)[:300]) from None
        folded = onnx.load(str(out))
    # onnxruntime writes the graph only; the model-level fields stay the original's.
    del folded.metadata_props[:]
    folded.metadata_props.extend(model.metadata_props)
    folded.producer_name, folded.producer_version = model.producer_name, model.producer_version
    folded.doc_string = model.doc_string
    return reinfer_shapes(folded)


def apply_active_input_shapes(load):
    """Decorate a file loader: the model it returns gets the active ``--input-shape`` values."""
    import functools

    @functools.wraps(load)
    def wrapper(path, *args, **kwargs):
        model = load(path, *args, **kwargs)
        shapes = _active.get()
        if not shapes:
            return model
        try:
            return fix_input_shapes(model, shapes)
        except EdgeloopError as e:
            raise e.with_where(str(path))
    return wrapper
