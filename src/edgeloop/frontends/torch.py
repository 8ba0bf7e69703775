"""PyTorch: an nn.Module with an example input, or a torch.export .pt2 archive.

Both go through ``torch.export`` and the dynamo ONNX exporter; the ONNX
program is taken in memory (never written with an external ``.data`` file).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx

from edgeloop.errors import MissingDependencyError, ModelLoadError
from edgeloop.graph import finalize


def _import_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch") from None
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise MissingDependencyError("onnxscript", "torch") from None
    return torch


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress chatter and warnings (e.g. about torchvision)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _export(obj: Any, args: tuple | None, where: str) -> onnx.ModelProto:
    torch = _import_torch()
    try:
        with _quiet():
            program = torch.onnx.export(obj, args, dynamo=True, optimize=True, verbose=False)
    except Exception as e:
        raise ModelLoadError(f"PyTorch export to ONNX failed: {_first_line(e)}", where=where) from None
    return program.model_proto


def from_torch(module: Any, example_input: Any = None, *, where: str = "<torch module>",
               **_: Any) -> onnx.ModelProto:
    """Export an ``nn.Module`` (in eval mode) or an ``ExportedProgram`` to ONNX.

    ``example_input`` is one tensor or a tuple of tensors; it fixes the input
    shapes (batch included) of the graph.
    """
    torch = _import_torch()
    if isinstance(module, torch.export.ExportedProgram):
        model = _export(module, None, where)
    else:
        if example_input is None:
            raise ModelLoadError("a torch module needs example_input= (a tensor or a tuple of tensors)",
                                 where=where)
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        was_training = getattr(module, "training", False)
        try:
            module.eval()
        except NotImplementedError:
            # ExportedProgram.module() is already in inference form and refuses eval()/train()
            was_training = None
        try:
            model = _export(module, args, where)
        finally:
            if was_training is not None:
                module.train(was_training)
    return finalize(model, source=where, source_format="torch")


@contextlib.contextmanager
def _weights_only_loads():
    """Make every ``torch.load`` inside ``torch.export.load`` a weights-only load.

    torch.export.load reads a .pt2's pickled payloads (sample inputs, tensor subclasses) with
    ``torch.load``, retrying with ``weights_only=False`` when the safe load fails, and that runs
    code from the file. TORCH_FORCE_WEIGHTS_ONLY_LOAD is torch's own switch that wins over the
    caller's argument; it is set only for the duration of the load and restored after.
    """
    import os

    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def load_program(path: "str | Path", *, trust_pickle: bool = False):
    """Read a ``torch.export.save`` archive (.pt2): the one place edgeloop does it.

    Without ``trust_pickle`` nothing in the archive may run code: plain tensors and
    the serialised graph load; Python objects pickled into it (torchbind or opaque
    constants, or pickles that torch's weights-only loader refuses) are refused.
    """
    import pickle
    import zipfile

    from edgeloop.frontends.sklearn import UntrustedSourceError

    torch = _import_torch()
    where = str(path)
    if not trust_pickle:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile) as e:
            raise ModelLoadError(f"not a valid torch.export archive: {_first_line(e)}", where=where) from None
        objects = [n for n in names if "/data/constants/" in f"/{n}"
                   and n.rsplit("/", 1)[-1].startswith(("custom_obj_", "opaque_obj_"))]
        if objects:
            raise UntrustedSourceError(
                f"the archive holds pickled Python objects ({objects[0].rsplit('/', 1)[-1]}): loading them runs code "
                "from the file; pass --trust-pickle (trust_pickle=True in Python) only if you trust it", where=where)
    try:
        with _quiet(), (contextlib.nullcontext() if trust_pickle else _weights_only_loads()):
            return torch.export.load(str(path))
    except pickle.UnpicklingError as e:
        if not trust_pickle and "weights only" in str(e).lower():
            raise UntrustedSourceError(
                "the archive holds pickled data that is not plain tensors: loading it runs code from the file; "
                "pass --trust-pickle (trust_pickle=True in Python) only if you trust it", where=where) from None
        raise ModelLoadError(f"not a valid torch.export archive: {_first_line(e)}", where=where) from None
    except Exception as e:  # bad zip, missing entries, version mismatch
        raise ModelLoadError(f"not a valid torch.export archive: {_first_line(e)}", where=where) from None


def load_pt2(path: Path, *, trust_pickle: bool = False, **_: Any) -> onnx.ModelProto:
    """Import a ``torch.export.save`` archive (.pt2)."""
    program = load_program(path, trust_pickle=trust_pickle)
    return from_torch(program, where=str(path))
