"""Writing outputs so that nobody ever sees them half-written.

Every command that writes a file or a folder goes through these two helpers:
the new content is built beside its destination and renamed into place only
once it is complete, and on any error the partial work is removed and the
previous output, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgeloop.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as e:
        raise UsageError(f"cannot write here ({e.strerror})", where=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_output_dir(out: str | os.PathLike, *, marker: str | None = None) -> None:
    """Fail early (before any long work) if ``staged_dir(out, marker=marker)`` would refuse ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if marker and out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise UsageError(f"{out} is a non-empty folder without {marker}; refusing to replace it "
                         "(choose another output folder)")


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; when the block ends without error it replaces ``out``.

    An existing ``out`` must be a folder; when ``marker`` is given, a non-empty
    ``out`` is replaced only if it holds that file (it is an earlier output of
    the same kind), so a user's own folder is never deleted by a typo.
    """
    out = Path(out)
    check_output_dir(out, marker=marker)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise UsageError(f"cannot write here ({e.strerror})", where=str(out)) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
