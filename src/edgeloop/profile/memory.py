"""Activation memory planning by buffer lifetimes (the peak RAM a device needs).

The planner works like TensorFlow Lite Micro's greedy planner: every buffer
has a size and a lifetime ``[first_use, last_use]`` (inclusive step indices);
buffers are placed largest first, each at the lowest offset where it does not
overlap, in address, any already placed buffer whose lifetime intersects its
own. The arena size is the highest end of any buffer. The result is
deterministic (ties broken by first use, then by the order of ``add_buffer``).

The C backend lays out its arena with the same planner, so the number the
profiler reports *is* the arena the generated code declares::

    planner = GreedyPlanner(alignment=4)
    a = planner.add_buffer(490, 0, 0)
    b = planner.add_buffer(8000, 0, 1)
    offsets, arena_bytes = planner.plan()

:func:`plan_model` builds the buffers from an ONNX graph (see its docstring).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import onnx

from edgeloop.errors import EdgeloopError


def _align_up(x: int, alignment: int) -> int:
    return -(-x // alignment) * alignment


class GreedyPlanner:
    """Lifetime-based arena planner (largest buffer first, lowest free offset)."""

    def __init__(self, alignment: int = 1):
        if int(alignment) < 1:
            raise EdgeloopError(f"alignment must be a positive integer, not {alignment!r}")
        self.alignment = int(alignment)
        self._sizes: list[int] = []
        self._first: list[int] = []
        self._last: list[int] = []

    def add_buffer(self, size: int, first_use: int, last_use: int) -> int:
        """Register a buffer; returns its index (the position in ``plan()``'s offsets)."""
        size, first_use, last_use = int(size), int(first_use), int(last_use)
        if size < 0:
            raise EdgeloopError(f"buffer size must be >= 0, not {size}")
        if last_use < first_use:
            raise EdgeloopError(f"buffer last_use {last_use} is before first_use {first_use}")
        self._sizes.append(size)
        self._first.append(first_use)
        self._last.append(last_use)
        return len(self._sizes) - 1

    def plan(self) -> tuple[list[int], int]:
        """(offsets in add_buffer order, arena bytes = max over buffers of offset + size)."""
        sizes, first, last = self._sizes, self._first, self._last
        order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], first[i], i))
        offsets = [0] * len(sizes)
        placed: list[int] = []
        for i in order:
            if sizes[i] == 0:
                continue  # an empty buffer occupies no bytes; offset 0
            live = sorted((j for j in placed if first[j] <= last[i] and first[i] <= last[j]),
                          key=lambda j: (offsets[j], j))
            candidate = 0
            for j in live:
                # ``live`` is sorted by offset, so the first gap that fits is the lowest one
                if offsets[j] >= candidate + sizes[i]:
                    break
                candidate = max(candidate, _align_up(offsets[j] + sizes[j], self.alignment))
            offsets[i] = candidate
            placed.append(i)
        peak = max((offsets[i] + sizes[i] for i in range(len(sizes))), default=0)
        return offsets, peak


def plan(buffers: Iterable, alignment: int = 1) -> tuple[list[int], int]:
    """Plan ``buffers``: each a ``(size, first_use, last_use)`` tuple, a dict with
    those keys, or an object with those attributes. Returns (offsets, peak)."""
    planner = GreedyPlanner(alignment)
    for b in buffers:
        if isinstance(b, dict):
            planner.add_buffer(b["size"], b["first_use"], b["last_use"])
        elif isinstance(b, (tuple, list)):
            planner.add_buffer(*b)
        else:
            planner.add_buffer(b.size, b.first_use, b.last_use)
    return planner.plan()


def live_peak(buffers: Sequence) -> int:
    """Lower bound of any plan: the largest sum of sizes of buffers live at one step."""
    items = [(b["size"], b["first_use"], b["last_use"]) if isinstance(b, dict)
             else (b if isinstance(b, (tuple, list)) else (b.size, b.first_use, b.last_use))
             for b in buffers]
    steps = sorted({f for _, f, _ in items})
    return max((sum(s for s, f, l in items if f <= t <= l) for t in steps), default=0)


@dataclass
class Buffer:
    name: str            # the tensor that owns the buffer
    size: int            # bytes
    first_use: int       # step index that writes it (0 for graph inputs)
    last_use: int        # last step index that reads it (the last step for graph outputs)
    offset: int = 0      # bytes from the start of the arena
    dtype: str = ""


@dataclass
class MemoryPlan:
    """Arena layout of a model's activations.

    ``tensors`` maps every device tensor (including aliases such as a Reshape
    output) to the buffer that holds it; ``steps`` names the executing steps
    whose indices the lifetimes refer to.
    """

    buffers: list[Buffer]
    peak_bytes: int
    alignment: int = 1
    steps: list[str] = field(default_factory=list)
    tensors: dict[str, str] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)

    def buffer(self, tensor: str) -> Buffer:
        owner = self.tensors.get(tensor, tensor)
        for b in self.buffers:
            if b.name == owner:
                return b
        raise KeyError(tensor)

    def offset_of(self, tensor: str) -> int:
        return self.buffer(tensor).offset

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "alignment": self.alignment,
                "buffers": [asdict(b) for b in self.buffers]}


def plan_model(model: onnx.ModelProto, *, alignment: int = 1, inplace: bool = True,
               _analysis=None) -> MemoryPlan:
    """Plan the activation arena of ``model`` as a device runs it.

    Buffers are the graph inputs and every activation tensor that a device
    step writes; initializers, Constant nodes and anything computed only from
    constants or shapes (including DequantizeLinear of weights and biases)
    live in flash and take no RAM. A buffer lives from the step that writes it
    (step 0 for graph inputs) to the last step that reads it; graph outputs
    live to the last step. Steps follow the graph's topological order.

    int8 QDQ form: ``DequantizeLinear(x_q) -> op -> [bias Add] -> [Relu|Clip]
    -> QuantizeLinear`` is one kernel reading ``x_q`` and writing the
    QuantizeLinear output; its float tensors take no RAM. Reshape, Flatten,
    Squeeze, Unsqueeze, Identity (and ZipMap) outputs share their input's
    buffer, extending its lifetime. Sizes are element count times element
    size of the real (integer or float) tensor, with shapes for batch 1 (a
    symbolic leading input dimension is taken as 1).

    In-place execution (``inplace=True``, what the C backend runs): a step that
    :func:`edgeloop.profile.analysis.decide_inplace` marks writes its output
    into the buffer of an input that dies at that step, so the two tensors are
    one buffer (living from the input's first use to the output's last; its
    name is the first tensor of such a chain and ``tensors`` maps the others to
    it), and the scratch the in-place kernel needs is a buffer of its own,
    named ``<step>#scratch``, alive at that step only. A convolution followed by a
    residual Add is one such step (the analysis fuses them): its output is written over
    the skip tensor and the convolution's own int8 output takes no RAM.
    """
    from edgeloop.profile.analysis import analyze, dtype_name

    a = _analysis if _analysis is not None else analyze(model)
    n_steps = sum(1 for s in a.steps if s.kind != "alias")
    last_step = max(n_steps - 1, 0)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    order: list[str] = []
    # in-place: a written tensor's buffer is the buffer of the input it overwrites
    owner: dict[str, str] = {}

    def group(root: str) -> str:
        while root in owner:
            root = owner[root]
        return root

    if inplace:
        for s in a.steps:
            if s.kind != "alias" and s.inplace_input is not None:
                owner[a.root(s.writes[0])] = a.root(s.inplace_input)

    def touch(root: str, step: int, write: bool):
        if root in a.static:
            return
        root = group(root)
        if root not in first:
            first[root] = step
            last[root] = step
            order.append(root)
        if write:
            first[root] = min(first[root], step)
        last[root] = max(last[root], step)

    for name in a.graph_inputs:
        touch(name, 0, True)
    for s in a.steps:
        if s.kind == "alias":
            continue
        for t in s.reads:
            touch(a.root(t), s.index, False)
        for t in s.writes:
            touch(a.root(t), s.index, True)
    for name in a.graph_outputs:
        root = a.root(name)
        if root not in a.static:
            touch(root, last_step, False)

    members: dict[str, list[str]] = {}
    for t in set(owner) | set(owner.values()):
        members.setdefault(group(t), []).append(t)
    buffers = []
    for root in order:
        if root not in a.shapes or root not in a.elem_types:
            raise EdgeloopError(f"shape of tensor '{root}' is unknown; cannot plan its memory")
        size = max(a.tensor_bytes(t) for t in members.get(root, [root]))
        buffers.append(Buffer(root, size, first[root], last[root],
                              dtype=dtype_name(a.elem_types[root])))
    if inplace:
        for s in a.steps:
            if s.kind != "alias" and s.inplace_input is not None and s.scratch_bytes:
                buffers.append(Buffer(scratch_name(s), s.scratch_bytes, s.index, s.index,
                                      dtype=s.scratch_dtype))
    offsets, peak = plan(buffers, alignment)
    for b, off in zip(buffers, offsets):
        b.offset = off
    tensors = {t: group(a.root(t)) for t in a.alias_of}
    tensors.update({t: group(t) for t in owner})
    steps = [s.name for s in a.steps if s.kind != "alias"]
    return MemoryPlan(buffers, peak, alignment, steps, tensors, list(a.assumptions))


def scratch_name(step) -> str:
    """The planned buffer holding an in-place step's scratch."""
    return f"{step.name}#scratch{step.index}"
