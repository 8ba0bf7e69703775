"""Microcontroller backend: dependency-free C99 from an imported ONNX graph.

- :func:`generate` writes ``<prefix>.c`` and ``<prefix>.h`` (only the kernels the
  model uses, ``static const`` weights, one static arena laid out by the profiler's
  memory planner so ``<PREFIX>_ARENA_SIZE`` equals ``profile_model(model)["peak_ram_bytes"]``).
- int8 QDQ sandwiches become TFLite-Micro-exact integer kernels (fixed-point
  requantization, no floating point); :mod:`edgeloop.backends.c.reference` is the
  numpy definition of those kernels.
- :func:`compile_shared` and :class:`CModel` build and call the C from Python.
- :func:`export_cli` is ``edgeloop export`` for microcontroller targets.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgeloop.errors import EdgeloopError, MissingDependencyError, UnsupportedOperatorError

__all__ = ["generate", "render", "compile_shared", "CModel", "export_cli",
           "UnsupportedOperatorError", "CFLAGS"]

CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]


def __getattr__(name):
    # the generator (onnx, the lowering) loads on first use: the profiler imports
    # edgeloop.backends.c.registry without it
    if name in ("generate", "render"):
        from edgeloop.backends.c import codegen
        return getattr(codegen, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _cc() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise MissingDependencyError("gcc", "c")
    return cc


def compile_shared(out_dir, prefix: str = "model", opt: str = "-O2", fast: bool = False) -> Path:
    """Build ``lib<prefix>.so`` from the generated source (strict warnings as errors);
    ``fast``: the fast kernels' portable C instead of the generic kernels (-DEL_FAST_KERNELS)."""
    out_dir = Path(out_dir)
    lib = out_dir / f"lib{prefix}.so"
    cmd = [_cc(), *CFLAGS, opt, *(["-DEL_FAST_KERNELS"] if fast else []), "-shared", "-fPIC", "-o", str(lib), str(out_dir / f"{prefix}.c"), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise EdgeloopError(f"the generated C did not compile: {r.stderr.strip()[:2000]}")
    return lib


def compile_check(out_dir, prefix: str = "model") -> None:
    """Compile the generated source once to an object file (``-c``), as a check."""
    out_dir = Path(out_dir)
    obj = out_dir / f".{prefix}.check.o"
    cmd = [_cc(), *CFLAGS, "-O1", "-c", "-o", str(obj), str(out_dir / f"{prefix}.c")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    obj.unlink(missing_ok=True)
    if r.returncode != 0:
        raise EdgeloopError(f"the generated C did not compile: {r.stderr.strip()[:2000]}")


class CModel:
    """The generated C, built as a shared library, called through ctypes.

    ``CModel(out_dir_or_lib, info)``; ``run(x)`` returns the primary output,
    ``run_all(*xs)`` every output. An input with a larger leading dimension than the
    model's (batch 1) is run row by row and the results stacked.
    """

    def __init__(self, out_dir_or_lib, info: dict):
        p = Path(out_dir_or_lib)
        self.info = info
        prefix = info["prefix"]
        if p.is_dir():
            lib = p / f"lib{prefix}.so"
            if not lib.exists():
                lib = compile_shared(p, prefix)
            p = lib
        self.lib = ctypes.CDLL(str(p))
        self._run_all = getattr(self.lib, f"{prefix}_run_all")
        self._run_all.restype = ctypes.c_int
        self._run_all.argtypes = [ctypes.c_void_p, ctypes.c_void_p]

    def _one(self, xs):
        ins = []
        for spec, x in zip(self.info["inputs"], xs):
            arr = np.ascontiguousarray(np.asarray(x, dtype=spec["dtype"]).reshape(spec["shape"]))
            ins.append(arr)
        outs = [np.empty(o["shape"], dtype=o["dtype"]) for o in self.info["outputs"]]
        in_ptrs = (ctypes.c_void_p * max(len(ins), 1))(*[a.ctypes.data for a in ins])
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[o.ctypes.data for o in outs])
        rc = self._run_all(in_ptrs, out_ptrs)
        if rc != 0:
            raise EdgeloopError(f"{self.info['prefix']}_run_all returned {rc}")
        return outs

    def run_all(self, *xs: np.ndarray) -> list[np.ndarray]:
        specs = self.info["inputs"]
        if len(xs) != len(specs):
            raise EdgeloopError(f"the model takes {len(specs)} input(s), got {len(xs)}")
        first = np.asarray(xs[0])
        shape = specs[0]["shape"]
        if (len(shape) >= 1 and shape[0] == 1 and first.ndim == len(shape)
                and first.shape[0] > 1 and list(first.shape[1:]) == list(shape[1:])):
            rows = [self._one([np.asarray(x)[i:i + 1] for x in xs]) for i in range(first.shape[0])]
            return [np.concatenate([r[k] for r in rows], axis=0) if np.ndim(rows[0][k]) else
                    np.stack([r[k] for r in rows]) for k in range(len(rows[0]))]
        return self._one(xs)

    def run(self, *xs: np.ndarray) -> np.ndarray:
        return self.run_all(*xs)[self.info["primary_output"]]


def export_cli(model_path, target, output, *, prefix: str = "model", verify: bool = False,
               as_json: bool = False) -> None:
    from edgeloop.backends.c.export import export_cli as _impl
    _impl(model_path, target, output, prefix=prefix, verify=verify, as_json=as_json)
