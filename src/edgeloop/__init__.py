"""edgeloop: embedded machine learning, from a trained model to a device and back.

The one model representation that flows between stages is an ONNX
``ModelProto`` (see ``edgeloop.graph``); ``load`` turns any supported source
into one.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgeloop.errors import EdgeloopError  # noqa: E402
from edgeloop.frontends import load  # noqa: E402

__all__ = ["load", "EdgeloopError", "__version__"]
