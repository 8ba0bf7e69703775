"""The C kernel library: the files under ``backends/c/kernels/`` (DSP variants in ``dsp/``).

Each file is one unit: a kernel ``k_<name>`` in ``<name>.c`` or a helper (fixed-point
arithmetic, index maths) in ``<name>.h``. A file names what it needs with
``#include "other.h"`` (or ``"other.c"``); :func:`closure` follows those lines, and
:func:`source` gives a file's text with them removed, so a generated model carries each
kernel it uses once, dependencies first, and nothing else. System headers (``<math.h>``,
...) included at file level are collected by :func:`system_includes` and written once at
the top of the generated source.

:func:`signature` reads a kernel's C parameter list from its file: the lowering builds
each call by keyword against it (:func:`bind`), so a missing or extra argument fails in
Python with the kernel's name, not in the C compiler.

The integer helpers follow TFLite / gemmlowp: SaturatingRoundingDoublingHighMul,
RoundingDivideByPOT, MultiplyByQuantizedMultiplier (two roundings, as TFLite Micro's
reference kernels), and gemmlowp's fixed-point exp and reciprocal for the int8 softmax.
Written by hand because no library emits C for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edgeloop.errors import EdgeloopError

KERNEL_DIR = Path(__file__).with_name("kernels")
_SUBDIRS = ("", "dsp")
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_SYSTEM_INCLUDE = re.compile(r"^\s*#\s*include\s+<([^>]+)>\s*$")


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str          # the C type as written, e.g. "const int8_t *"

    @property
    def is_pointer(self) -> bool:
        return "*" in self.ctype


@dataclass(frozen=True)
class KernelFile:
    name: str                   # "conv_s8", "fx", "fx_dsp"
    path: Path
    deps: tuple[str, ...]       # names of the files it includes, in order
    system: tuple[str, ...]     # file-level system headers ("math.h", ...)
    body: str                   # the text without its file-level #include lines


@lru_cache(maxsize=None)
def files() -> dict[str, KernelFile]:
    """Every kernel and helper file by name."""
    out: dict[str, KernelFile] = {}
    for sub in _SUBDIRS:
        d = KERNEL_DIR / sub if sub else KERNEL_DIR
        for p in sorted(d.glob("*.[ch]")):
            if p.stem in out:
                raise EdgeloopError(f"two C kernel files are named '{p.stem}': "
                                    f"{out[p.stem].path} and {p}")
            out[p.stem] = _read(p)
    return out


def _read(p: Path) -> KernelFile:
    deps, system, kept = [], [], []
    depth = 0
    for line in p.read_text().splitlines():
        s = line.strip()
        if re.match(r"#\s*if", s):
            depth += 1
        elif re.match(r"#\s*endif", s):
            depth -= 1
        m = _LOCAL_INCLUDE.match(line)
        if m:
            deps.append(Path(m.group(1)).stem)
            continue
        m = _SYSTEM_INCLUDE.match(line)
        # conditional system headers (e.g. <arm_acle.h> under __ARM_FEATURE_DSP) stay put;
        # depth 1 is the file's include guard
        if m and depth <= 1:
            system.append(m.group(1))
            continue
        kept.append(line)
    body = "\n".join(kept).strip("\n") + "\n"
    return KernelFile(p.stem, p, tuple(deps), tuple(system), body)


# kernels written at export time (backends/c/fast.py's thin per-shape wrappers around a
# file's kernel, so the compiler specialises it): same shape as a file, no file of their own
_GENERATED: dict[str, KernelFile] = {}
_BASE: dict[str, str] = {}


def register(name: str, deps: tuple[str, ...], body: str, base: str = "") -> str:
    """Add a generated kernel unit ``name`` (its text ``body``, needing ``deps``), a copy of
    the file kernel ``base`` specialised at export (the operator registry names ``base``)."""
    if name in files():
        raise EdgeloopError(f"internal: generated C kernel '{name}' shadows a kernel file")
    if base:
        _BASE[name] = base
    if name not in _GENERATED:
        _GENERATED[name] = KernelFile(name, KERNEL_DIR / f"<generated {name}>", tuple(deps), (),
                                      body.strip("\n") + "\n")
    return name


def base(name: str) -> str:
    """The kernel file a generated unit specialises (``name`` itself for a file)."""
    return _BASE.get(name, name)


def _lib() -> dict[str, KernelFile]:
    return {**files(), **_GENERATED} if _GENERATED else files()


def closure(names) -> list[str]:
    """The files ``names`` need, dependencies first, each once."""
    lib = _lib()
    out: list[str] = []

    def add(n, chain=()):
        if n in out:
            return
        if n not in lib:
            raise EdgeloopError(f"no C kernel file '{n}' under {KERNEL_DIR}")
        if n in chain:
            raise EdgeloopError(f"C kernel files include each other: {' -> '.join(chain + (n,))}")
        for d in lib[n].deps:
            add(d, chain + (n,))
        out.append(n)

    for n in names:
        add(n)
    return out


def source(name: str) -> str:
    return _lib()[name].body


def system_includes(names) -> list[str]:
    """File-level system headers of ``names`` (with their dependencies), each once."""
    seen: list[str] = []
    for n in closure(names):
        for h in _lib()[n].system:
            if h not in seen:
                seen.append(h)
    return seen


def signature(name: str) -> tuple[Param, ...]:
    """The parameters of ``k_<name>`` as declared in its file."""
    return _signature(name, _lib().get(name))


@lru_cache(maxsize=None)
def _signature(name: str, f: KernelFile | None) -> tuple[Param, ...]:
    if f is None:
        raise EdgeloopError(f"no C kernel file '{name}' under {KERNEL_DIR}")
    m = re.search(r"\bk_%s\s*\(([^)]*)\)\s*\{" % re.escape(name), f.body)
    if m is None:
        raise EdgeloopError(f"{f.path.name} does not define k_{name}(...)")
    params = []
    for part in re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S).split(","):
        part = " ".join(part.split())
        pm = re.match(r"(.*?[\s*])([A-Za-z_][A-Za-z0-9_]*)$", part)
        if pm is None:
            raise EdgeloopError(f"cannot read parameter '{part}' of k_{name} in {f.path.name}")
        params.append(Param(pm.group(2), pm.group(1).strip()))
    return tuple(params)


def bind(name: str, kwargs: dict) -> list:
    """The positional argument list of a ``k_<name>`` call from keyword arguments; a
    missing or unknown argument is an error naming the kernel and the parameter."""
    params = signature(name)
    names = [p.name for p in params]
    extra = [k for k in kwargs if k not in names]
    missing = [n for n in names if n not in kwargs]
    if extra or missing:
        what = "; ".join(x for x in (
            f"unknown argument(s) {', '.join(extra)}" if extra else "",
            f"missing argument(s) {', '.join(missing)}" if missing else "") if x)
        raise EdgeloopError(f"internal: call of C kernel k_{name}: {what} "
                            f"(declared: {', '.join(names)})")
    out = []
    for p in params:
        v = kwargs[p.name]
        kind = v[0]
        if p.is_pointer != (kind in ("in", "out", "const", "null", "arena", "scratch")):
            raise EdgeloopError(f"internal: call of C kernel k_{name}: argument {p.name} is "
                                f"{'a pointer' if p.is_pointer else 'a number'} ({p.ctype}), "
                                f"got {kind!r}")
        out.append(v)
    return out


@lru_cache(maxsize=None)
def constants(name: str) -> dict[str, int]:
    """The ``enum { EL_X = 0, ... }`` constants a kernel file declares (e.g. which function
    a shared kernel computes): the lowering passes them by name, so the numbers live in the
    C file only."""
    out: dict[str, int] = {}
    for block in re.findall(r"\benum\s*\{([^}]*)\}", files()[name].body):
        nxt = 0
        for item in re.sub(r"/\*.*?\*/", "", block, flags=re.S).split(","):
            m = re.match(r"\s*([A-Za-z_]\w*)\s*(?:=\s*(-?\d+))?\s*$", item)
            if m is None:
                continue
            nxt = int(m.group(2)) if m.group(2) is not None else nxt
            out[m.group(1)] = nxt
            nxt += 1
    return out


def constant(name: str, const: str) -> int:
    values = constants(name)
    if const not in values:
        raise EdgeloopError(f"internal: C kernel file {files()[name].path.name} declares no "
                            f"constant {const}")
    return values[const]


def enum(name: str, prefix: str) -> dict[str, int]:
    """A file's constants starting with ``prefix``, by the rest of their name:
    ``enum("pad_nd", "EL_PAD_")`` -> ``{"CONSTANT": 0, "EDGE": 1, "REFLECT": 2}``."""
    return {k[len(prefix):]: v for k, v in constants(name).items() if k.startswith(prefix)}
