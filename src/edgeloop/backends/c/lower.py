"""Lower an ONNX graph to a list of kernel calls over one planned arena.

The device steps come from the profiler's analysis (:mod:`edgeloop.profile.analysis`):
an int8 QDQ sandwich is one integer kernel, Reshape/Flatten/Squeeze/Unsqueeze are
aliases, every other node is one step. Buffers and offsets come from
:func:`edgeloop.profile.memory.plan_model`, so the arena the C declares is the peak the
profiler reports.

A call is ``Call(kernel, args)``; each arg is ``("in", tensor)``, ``("out", tensor)``,
``("const", ndarray)``, ``("null",)``, ``("int", v)``, ``("float", v)`` or ``("arena",
buffer, dtype)`` (a planned scratch buffer of an in-place step). The C emitter prints them;
:mod:`edgeloop.backends.c.reference` runs the same calls in numpy.

In-place steps (``Step.inplace_input``, decided once by the analysis) need no special
handling for element-wise kernels: the plan gives input and output one offset. In-place
convolutions use the ``*_pw_ip`` / ``*_grp_ip`` kernels with the step's scratch, and a
convolution fused with the residual Add after it ``conv_s8_res``.

Which method lowers which node is the operator registry's (:mod:`edgeloop.backends.c.
registry`); the methods live by job: :mod:`~edgeloop.backends.c.lower_base` (shared state,
:meth:`emit` binding calls by keyword against the C signatures),
:mod:`~edgeloop.backends.c.lower_float` (float ops and data movement),
:mod:`~edgeloop.backends.c.lower_ml` (ONNX-ML), :mod:`~edgeloop.backends.c.lower_int8`
(int8 QDQ kernels) and :mod:`~edgeloop.backends.c.fixedpoint` (TFLite's multipliers and
ranges).
"""


from __future__ import annotations

import onnx

from edgeloop.backends.c.fixedpoint import (act_range, logistic_params, quantize_multiplier,  # noqa: F401
                                            softmax_params)
from edgeloop.backends.c.lower_base import (CTYPES, Call, Lowered, LowererBase,  # noqa: F401
                                            broadcast_strides)
from edgeloop.backends.c.lower_float import FloatOps
from edgeloop.backends.c.lower_int8 import Int8Ops
from edgeloop.backends.c.lower_ml import MLOps


class Lowerer(LowererBase, FloatOps, MLOps, Int8Ops):
    """Every operator's lowering; which method lowers which node is the registry's."""


def lower(model: onnx.ModelProto) -> Lowered:
    return Lowerer(model).run()
