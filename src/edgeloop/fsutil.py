"""Writing outputs so that nobody ever sees them half-written, and nothing of the user's is lost.

Every command that writes a file or a folder goes through these helpers: the
new content is built beside its destination and renamed into place only once
it is complete, and on any error the partial work is removed and the previous
output, if any, is left as it was.

An output folder is edgeloop's only when it holds the marker edgeloop wrote
into it (``.edgeloop-output.json``: the output kind, a random id, the
edgeloop version and the list of files edgeloop wrote), never because of the
name of some file in it.  Writing over a folder:

- missing or empty: fine;
- holding a marker of the same kind: the files the marker lists are replaced
  by the new output; everything else in the folder (a bundle's ``captures/``,
  a user's notes) is kept, moved into the new folder before the swap;
- anything else (no marker, an unreadable marker, a marker of another kind):
  refused with one line naming the folder, before any work is done.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import uuid
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

from edgeloop.errors import UsageError
from edgeloop.runtime.bundle import MARKER  # one name, shared with the bundle runtime (which never hashes it)

MARKER_FORMAT = "edgeloop-output/1"
KIND_NAMES = {"bundle": "bundle", "c-export": "C export", "shrink": "shrink output", "dataset": "dataset",
              "samples": "samples export"}


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


def _kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def read_marker(folder: str | os.PathLike) -> Optional[dict]:
    """The marker of an edgeloop output folder, None when it has none; UsageError when it is unreadable."""
    folder = Path(folder)
    path = folder / MARKER
    if not path.exists() and not path.is_symlink():
        return None
    problem = "is not a regular file" if path.is_symlink() or not path.is_file() else None
    doc = None
    if problem is None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            problem = f"cannot be read ({type(e).__name__})"
    if problem is None and not (isinstance(doc, dict) and doc.get("format") == MARKER_FORMAT
                                and isinstance(doc.get("kind"), str) and isinstance(doc.get("files"), list)
                                and all(isinstance(f, str) for f in doc["files"])):
        problem = f"is not an edgeloop output marker (format must be '{MARKER_FORMAT}')"
    if problem is not None:
        raise UsageError(f"{path} {problem}; refusing to replace anything in {folder}")
    return doc


def check_output_dir(out: str | os.PathLike, *, kind: str) -> Optional[dict]:
    """Fail early (before any long work) if ``staged_dir(out, kind=kind)`` would refuse ``out``.

    Returns the marker of the earlier output of this kind, None when ``out`` is missing or empty."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    marker = read_marker(out)
    if marker is None:
        raise UsageError(f"{out} is a non-empty folder and not an edgeloop {_kind_name(kind)} (it has no {MARKER}); "
                         "refusing to replace anything in it: choose another output folder, or empty it")
    if marker["kind"] != kind:
        raise UsageError(f"{out} holds an edgeloop {_kind_name(marker['kind'])}, not a {_kind_name(kind)}; "
                         "refusing to replace it: choose another output folder")
    return marker


def _entries(root: Path) -> List[str]:
    """Every file (and symbolic link, not followed) under ``root``, as sorted POSIX relative paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        found += [(here / d).relative_to(root).as_posix() for d in dirnames if (here / d).is_symlink()]
        found += [(here / f).relative_to(root).as_posix() for f in filenames]
    return sorted(found)


def _foreign(root: Path, owned: set) -> List[str]:
    """The top-most entries under ``root`` that edgeloop did not write: kept on a re-export."""
    owned_dirs = {p.rsplit("/", i)[0] for p in owned for i in range(1, p.count("/") + 1)}
    found: List[str] = []
    pending = [""]
    while pending:  # no recursion: a deep tree cannot overflow the stack
        rel_dir = pending.pop()
        for entry in sorted(os.scandir(root / rel_dir) if rel_dir else os.scandir(root), key=lambda e: e.name):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if (rel in owned or rel == MARKER) and not is_dir:
                continue  # edgeloop wrote it: replaced by the new output
            if is_dir and rel in owned_dirs:
                pending.append(rel)  # a folder holding edgeloop's files and perhaps the user's
            else:
                found.append(rel)
    return sorted(found)


def _plan_moves(src: Path, dst: Path, entries: List[str], where: Path) -> List[str]:
    """Which entries of ``src`` to rename into ``dst`` (merging into folders the new output also has)."""
    plan: List[str] = []
    pending = list(entries)
    while pending:
        rel = pending.pop()
        target = dst / rel
        if not target.exists() and not target.is_symlink():
            for parent in Path(rel).parents:
                if parent != Path(".") and (dst / parent).exists() and not (dst / parent).is_dir():
                    raise UsageError(f"{where}: {rel} is not edgeloop's and the new output writes the file "
                                     f"{parent.as_posix()} in its way; move it elsewhere and try again")
            plan.append(rel)
        elif (target.is_dir() and not target.is_symlink() and (src / rel).is_dir()
              and not (src / rel).is_symlink()):
            pending += [f"{rel}/{e.name}" for e in os.scandir(src / rel)]
        else:
            raise UsageError(f"{where}: {rel} is not edgeloop's (not listed in {MARKER}) and the new output "
                             "writes a file of that name; move it elsewhere and try again")
    return sorted(plan)


class _KeepStaging(UsageError):
    """The staging folder holds the user's files: it must not be removed."""


def _write_marker(tmp: Path, kind: str) -> None:
    from edgeloop import __version__

    doc = {"format": MARKER_FORMAT, "kind": kind, "id": uuid.uuid4().hex, "edgeloop_version": __version__,
           "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
           "files": [f for f in _entries(tmp) if f != MARKER]}
    (tmp / MARKER).write_text(json.dumps(doc, indent=2) + "\n")


def _swap(out: Path, tmp: Path, previous: Optional[dict], kept: Optional[list]) -> None:
    """Move the user's entries of ``out`` into ``tmp``, then put ``tmp`` in the place of ``out``.

    On any error the entries go back and ``out`` is as it was; after the swap only the files the
    previous marker listed are deleted (anything else that turns up in the old folder is moved over)."""
    owned = set(previous["files"]) if previous else set()
    foreign = _foreign(out, owned)
    moves = _plan_moves(out, tmp, foreign, out)
    done: List[str] = []
    old: Optional[Path] = None
    swapped = False
    try:
        for rel in moves:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(out / rel, tmp / rel)
            done.append(rel)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)
            raise
        swapped = True
    finally:
        if not swapped:
            if old is not None and not (old / out.name).exists():  # else it holds the previous output
                shutil.rmtree(old, ignore_errors=True)
            stuck = []
            for rel in reversed(done):
                try:
                    os.rename(tmp / rel, out / rel)
                except OSError:
                    stuck.append(rel)
            if stuck:  # never delete them with the staging folder: say where they are
                raise _KeepStaging(f"{out}: writing failed and {stuck[0]} (and {len(stuck) - 1} more) could not "
                                   f"be moved back; they are in {tmp}")
    if kept is not None:
        kept += moves
    # Anything in the old folder that edgeloop did not write (created while we swapped) moves over too;
    # if one cannot, the old folder stays rather than lose it.
    stray = _foreign(old / out.name, owned)
    try:
        for rel in _plan_moves(old / out.name, out, stray, out):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(old / out.name / rel, out / rel)
    except (OSError, UsageError):
        return
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, kind: str, kept: Optional[list] = None) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; when the block ends without error it becomes ``out``.

    ``kind`` names the output ("bundle", "c-export", ...); the finished folder gets a marker of that
    kind listing every file the block wrote.  An existing ``out`` must be missing, empty, or an earlier
    output of the same kind (see the module docstring); the user's entries in it are kept, and their
    paths appended to ``kept`` when given.
    """
    out = Path(out)
    check_output_dir(out, kind=kind)
    real = Path(os.path.realpath(out))  # a symbolic link to the output folder stays a link
    parent = real.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.tmp-", dir=parent))
    except OSError as e:
        raise UsageError(f"cannot write here ({e.strerror})", where=str(out)) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        _write_marker(tmp, kind)
        if real.exists():
            # read the marker again: what edgeloop owns is what it owns now, not before the long work
            _swap(real, tmp, check_output_dir(real, kind=kind), kept)
        else:
            os.replace(tmp, real)
    except _KeepStaging:
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
