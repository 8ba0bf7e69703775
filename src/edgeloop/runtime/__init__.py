"""The on-device runtime: verify a bundle, serve it, capture uncertain samples.

Imports only the standard library, numpy, onnxruntime and (for the server)
starlette + uvicorn, so that a device needs nothing else; Pillow is used only
for image uploads and imported there.  Every module imports its siblings
relatively: a bundle carries a copy of this package as ``edgeloop_runtime/``
and runs it with ``python -m edgeloop_runtime BUNDLE``.
"""

from __future__ import annotations

from .bundle import BundleError, read_manifest, verify_bundle

__all__ = ["BundleError", "read_manifest", "verify_bundle"]
