"""The device catalogue and the hardware recommender.

The catalogue is a data file, ``catalogue.toml`` beside this module: one table
per target (a microcontroller, a Linux board or an accelerator) with its memory,
precisions, power, price, an effective MAC rate per precision, and a public
source for every figure. :func:`load_catalogue` reads and checks it;
:func:`recommend` matches a profiled model (the profiler's dict) against it.

Latency here is always an *estimate*::

    est_latency_ms = macs / macs_per_second[precision] * 1000 + overhead_ms

with rates calibrated against published measurements (see the comment at the top
of ``catalogue.toml`` and each target's ``sources.throughput``). Every output
that shows it carries ``latency_is_estimate = True``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from edgeloop.errors import EdgeloopError, UsageError

__all__ = [
    "KINDS",
    "PRECISIONS",
    "SOURCE_KEYS",
    "Target",
    "format_bytes",
    "get_target",
    "load_catalogue",
    "recommend",
]

KINDS = ("mcu", "linux", "accelerator")
PRECISIONS = ("int8", "float16", "float32")
MODEL_PRECISIONS = PRECISIONS + ("mixed",)
# Every figure in the catalogue must name its public source under these keys.
SOURCE_KEYS = ("ram", "flash", "clock", "power", "price", "throughput")

_CATALOGUE_FILE = "catalogue.toml"


@dataclass(frozen=True)
class Target:
    """One device of the catalogue. ``name`` is the human name; ``id`` is what users type."""

    id: str
    name: str
    kind: str
    arch: str
    core: str
    clock_mhz: float
    ram_bytes: int
    flash_bytes: int
    precisions: tuple[str, ...]
    power_w: float
    price_usd: float
    macs_per_second: dict[str, float]
    sources: dict[str, dict[str, str]]
    reserved_ram_bytes: int = 0
    overhead_ms: float = 0.0
    flash_kind: str = ""
    ram_is_cache: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def title(self) -> str:
        return self.name

    @property
    def usable_ram_bytes(self) -> int:
        """RAM left for the model once the OS/runtime reserve is taken off."""
        return max(0, self.ram_bytes - self.reserved_ram_bytes)

    def estimate_latency_ms(self, macs: int | float | None, precision: str) -> float | None:
        """Estimated milliseconds per inference, or None when this target has no rate for it.

        ``precision`` "mixed" uses the slowest float rate the target has (the float
        parts dominate). This is an estimate from published measurements, not a
        measurement of this model.
        """
        if macs is None:
            return None
        rate = self.macs_per_second.get(_rate_precision(self, precision) or "")
        if not rate:
            return None
        return float(macs) / rate * 1000.0 + self.overhead_ms


def _rate_precision(target: Target, precision: str) -> str | None:
    if precision == "mixed":
        for p in ("float32", "float16"):
            if p in target.macs_per_second:
                return p
        return None
    return precision if precision in target.macs_per_second else None


# --------------------------------------------------------------------------- loading

_REQUIRED: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "name": (str,),
    "kind": (str,),
    "arch": (str,),
    "core": (str,),
    "clock_mhz": (int, float),
    "ram_bytes": (int,),
    "flash_bytes": (int,),
    "precisions": (list,),
    "power_w": (int, float),
    "price_usd": (int, float),
    "macs_per_second": (dict,),
    "sources": (dict,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "reserved_ram_bytes": (int,),
    "overhead_ms": (int, float),
    "flash_kind": (str,),
    "ram_is_cache": (bool,),
    "notes": (list,),
}

_default_cache: list[Target] | None = None


def load_catalogue(path: str | Path | None = None) -> list[Target]:
    """Read and check a catalogue file (the packaged one by default).

    Raises :class:`EdgeloopError` naming the file and the target on any missing or
    invalid field.
    """
    global _default_cache
    if path is None:
        if _default_cache is None:
            ref = resources.files(__package__).joinpath(_CATALOGUE_FILE)
            with resources.as_file(ref) as real:
                _default_cache = _load(Path(real))
        return list(_default_cache)
    return _load(Path(path))


def _load(path: Path) -> list[Target]:
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EdgeloopError(f"cannot read the catalogue: {exc.strerror or exc}", where=where) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EdgeloopError(f"not a valid TOML catalogue: {exc}", where=where) from None
    entries = data.get("target")
    if not isinstance(entries, list) or not entries:
        raise EdgeloopError("no [[target]] tables in the catalogue", where=where)
    targets: list[Target] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        target = _parse_target(entry, index, where)
        if target.id in seen:
            raise EdgeloopError(f"target '{target.id}': duplicate id", where=where)
        seen.add(target.id)
        targets.append(target)
    return targets


def _parse_target(entry: Any, index: int, where: str) -> Target:
    label = f"target #{index + 1}"
    if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
        label = f"target '{entry['id']}'"

    def fail(message: str) -> EdgeloopError:
        return EdgeloopError(f"{label}: {message}", where=where)

    if not isinstance(entry, dict):
        raise fail("is not a table")
    for key, types in _REQUIRED.items():
        if key not in entry:
            raise fail(f"missing field '{key}'")
        _check_type(entry[key], types, key, fail)
    for key, types in _OPTIONAL.items():
        if key in entry:
            _check_type(entry[key], types, key, fail)
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise fail(f"unknown field(s) {', '.join(repr(k) for k in unknown)}")

    tid = entry["id"]
    if tid != tid.strip().lower() or " " in tid or not tid:
        raise fail("field 'id' must be a lowercase word without spaces")
    if entry["kind"] not in KINDS:
        raise fail(f"field 'kind' is {entry['kind']!r}; expected one of {', '.join(KINDS)}")
    for key in ("clock_mhz", "power_w", "price_usd"):
        if not entry[key] > 0:
            raise fail(f"field '{key}' must be positive")
    if entry["ram_bytes"] <= 0:
        raise fail("field 'ram_bytes' must be positive")
    if entry["flash_bytes"] < 0:
        raise fail("field 'flash_bytes' must not be negative (0 = no storage of its own)")
    reserved = entry.get("reserved_ram_bytes", 0)
    if reserved < 0 or reserved >= entry["ram_bytes"]:
        raise fail("field 'reserved_ram_bytes' must be between 0 and ram_bytes")
    if entry.get("overhead_ms", 0) < 0:
        raise fail("field 'overhead_ms' must not be negative")

    precisions = entry["precisions"]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        raise fail(f"field 'precisions' must list some of {', '.join(PRECISIONS)}; got {precisions!r}")
    if len(set(precisions)) != len(precisions):
        raise fail("field 'precisions' repeats a value")

    rates: dict[str, float] = {}
    for p, rate in entry["macs_per_second"].items():
        if p not in precisions:
            raise fail(f"macs_per_second has a rate for '{p}', which is not in precisions")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 or not math.isfinite(rate):
            raise fail(f"macs_per_second.{p} must be a positive number")
        rates[p] = float(rate)
    for p in precisions:
        if p not in rates:
            raise fail(f"macs_per_second has no rate for precision '{p}'")

    sources: dict[str, dict[str, str]] = {}
    for key in SOURCE_KEYS:
        src = entry["sources"].get(key)
        if src is None:
            raise fail(f"sources has no entry for '{key}' (every figure needs a public source)")
        if not isinstance(src, dict):
            raise fail(f"sources.{key} must be a table with 'title' and 'url'")
        for part in ("title", "url"):
            if not isinstance(src.get(part), str) or not src[part].strip():
                raise fail(f"sources.{key} is missing '{part}'")
        if not src["url"].startswith(("https://", "http://")):
            raise fail(f"sources.{key}.url is not a web address")
        sources[key] = {str(k): str(v) for k, v in src.items()}
    for key, src in entry["sources"].items():
        if key not in sources:
            if not isinstance(src, dict):
                raise fail(f"sources.{key} must be a table with 'title' and 'url'")
            sources[key] = {str(k): str(v) for k, v in src.items()}
    if "method" not in sources["throughput"]:
        raise fail("sources.throughput needs a 'method' saying how the rate was calibrated")

    notes = entry.get("notes", [])
    if any(not isinstance(n, str) for n in notes):
        raise fail("field 'notes' must be a list of strings")

    return Target(
        id=tid,
        name=entry["name"],
        kind=entry["kind"],
        arch=entry["arch"],
        core=entry["core"],
        clock_mhz=entry["clock_mhz"],
        ram_bytes=entry["ram_bytes"],
        flash_bytes=entry["flash_bytes"],
        precisions=tuple(precisions),
        power_w=float(entry["power_w"]),
        price_usd=float(entry["price_usd"]),
        macs_per_second=rates,
        sources=sources,
        reserved_ram_bytes=reserved,
        overhead_ms=float(entry.get("overhead_ms", 0.0)),
        flash_kind=entry.get("flash_kind", ""),
        ram_is_cache=entry.get("ram_is_cache", False),
        notes=tuple(notes),
    )


def _check_type(value: Any, types: tuple[type, ...], key: str, fail) -> None:
    # bool is an int subclass: never accept it for a number.
    if isinstance(value, bool) and bool not in types:
        raise fail(f"field '{key}' has the wrong type (bool)")
    if not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise fail(f"field '{key}' must be {expected}, got {type(value).__name__}")


def get_target(name: str, targets: Iterable[Target] | None = None) -> Target:
    """The target with this id (case-insensitive); :class:`UsageError` listing the known ids otherwise."""
    pool = list(targets) if targets is not None else load_catalogue()
    wanted = str(name).strip().lower()
    for t in pool:
        if t.id == wanted:
            return t
    known = ", ".join(t.id for t in pool)
    raise UsageError(f"unknown target '{name}'; known: {known}")


# --------------------------------------------------------------------------- recommending

def format_bytes(n: int | float | None) -> str:
    """Bytes for humans, binary units with one decimal: "512 B", "15.6 KB", "4.0 GB"."""
    if n is None:
        return "?"
    value = float(n)
    if abs(value) < 1024:
        return f"{int(value)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024.0
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _fmt_ms(ms: float) -> str:
    if ms >= 10:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.2g} ms"


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _precision_reason(target: Target, precision: str) -> tuple[str | None, str | None]:
    """(misfit reason or None, the precision the target would run the model at)."""
    have = target.precisions
    only = "/".join(have)
    if precision == "mixed":
        if "float32" in have or "float16" in have:
            return None, "mixed"
        return ("runs only int8; model mixes int8 and float layers "
                "(quantize it fully with edgeloop shrink)"), "int8"
    if precision in have:
        return None, precision
    if precision == "float32":
        if "float16" in have and "int8" not in have:
            return "runs float16 only; convert with edgeloop shrink (float16)", "float16"
        if have == ("int8",):
            return "runs only int8; model is float32 (quantize it with edgeloop shrink)", "int8"
        return f"runs {only} only; model is float32 (quantize it with edgeloop shrink)", have[0]
    if precision == "float16":
        if have == ("int8",):
            return "runs only int8; model is float16 (quantize it with edgeloop shrink)", "int8"
        return (f"runs {only} only; model is float16 "
                "(export it as float32, or quantize it with edgeloop shrink)"), (
                    "float32" if "float32" in have else have[0])
    # int8 model on a float-only target
    if "float16" in have and "float32" not in have:
        return ("runs float16 only; model is int8 "
                "(export the float model and convert with edgeloop shrink (float16))"), "float16"
    return f"runs {only} only; model is int8 (export the float model instead)", (
        "float16" if "float16" in have else have[0])


def _num(profile: dict, key: str) -> float | None:
    value = profile.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UsageError(f"profile field '{key}' must be a non-negative number, got {value!r}")
    return value


def _assess(target: Target, profile: dict | None, max_latency_ms, max_power_w, max_price_usd) -> dict:
    reasons: list[str] = []
    notes: list[str] = []
    est: float | None = None
    latency_precision: str | None = None
    ram_needed: float | None = None

    if profile is not None:
        macs = _num(profile, "macs")
        peak = _num(profile, "peak_ram_bytes") or 0
        flash_needed = _num(profile, "flash_bytes") or 0
        weights = _num(profile, "weight_bytes")
        if weights is None:
            weights = flash_needed  # the model file is mostly its weights
        precision = profile.get("precision")

        # RAM: an MCU keeps weights in flash, so only the activations (arena) count;
        # a Linux board loads the weights into RAM too; an accelerator holds both.
        if target.kind == "mcu":
            ram_needed = peak
        elif target.ram_is_cache:
            ram_needed = weights
        else:
            ram_needed = peak + weights
        usable = target.usable_ram_bytes
        if ram_needed > usable:
            if target.ram_is_cache:
                notes.append(
                    f"parameters ({format_bytes(ram_needed)}) exceed the {format_bytes(usable)} on-chip "
                    "parameter cache; the rest streams from host memory every inference, "
                    "so expect it slower than estimated")
            else:
                extra = ""
                if target.reserved_ram_bytes:
                    extra = (f" after {format_bytes(target.reserved_ram_bytes)} "
                             "reserved for the OS and runtime")
                reasons.append(f"needs {format_bytes(ram_needed)} RAM, has {format_bytes(usable)}{extra}")

        # Flash / storage.
        storage = "storage" if target.kind == "linux" else "flash"
        if target.flash_bytes == 0:
            if target.kind == "accelerator":
                notes.append("a coprocessor: needs a host computer, which keeps the model file; "
                             "the host's price and power are not included")
        elif flash_needed > target.flash_bytes:
            reasons.append(f"needs {format_bytes(flash_needed)} {storage}, "
                           f"has {format_bytes(target.flash_bytes)}")

        # Precision.
        if precision is None:
            notes.append("the profile gives no precision; precision not checked")
            latency_precision = "float32" if "float32" in target.precisions else target.precisions[0]
        elif precision not in MODEL_PRECISIONS:
            raise UsageError(f"profile precision {precision!r} is not one of {', '.join(MODEL_PRECISIONS)}")
        else:
            reason, latency_precision = _precision_reason(target, precision)
            if reason:
                reasons.append(reason)
                notes.append(f"latency estimated as if converted to {latency_precision}")

        pipeline = _num(profile, "pipeline_macs")
        if pipeline is not None and macs is not None:
            # a detector: resizing the frame, decoding the boxes and NMS run every frame too
            macs = pipeline
            notes.append("includes the detector's pre- and post-processing (resize, decode, NMS)")
        if macs is not None and latency_precision is not None:
            est = target.estimate_latency_ms(macs, latency_precision)
            if est is not None and max_latency_ms is not None and est > max_latency_ms:
                reasons.append(f"estimated {_fmt_ms(est)} > limit {_fmt_num(max_latency_ms)} ms")

    if max_power_w is not None and target.power_w > max_power_w:
        reasons.append(f"power {_fmt_num(target.power_w)} W > limit {_fmt_num(max_power_w)} W")
    if max_price_usd is not None and target.price_usd > max_price_usd:
        reasons.append(f"price ${_fmt_num(target.price_usd)} > limit ${_fmt_num(max_price_usd)}")

    return {
        "name": target.id,
        "title": target.name,
        "kind": target.kind,
        "arch": target.arch,
        "core": target.core,
        "clock_mhz": target.clock_mhz,
        "ram_bytes": target.ram_bytes,
        "usable_ram_bytes": target.usable_ram_bytes,
        "ram_needed_bytes": ram_needed,
        "flash_bytes": target.flash_bytes,
        "flash_kind": target.flash_kind,
        "power_w": target.power_w,
        "price_usd": target.price_usd,
        "precisions": list(target.precisions),
        "fits": (not reasons) if profile is not None else None,
        "reasons": reasons,
        "notes": notes,
        "est_latency_ms": est,
        "est_fps": (1000.0 / est) if est else None,
        "latency_precision": latency_precision if est is not None else None,
        "latency_is_estimate": True,
    }


def recommend(
    profile: dict | None,
    targets: Iterable[Target] | None = None,
    *,
    max_latency_ms: float | None = None,
    max_power_w: float | None = None,
    max_price_usd: float | None = None,
) -> list[dict]:
    """Match a profiled model against the catalogue; one dict per target.

    ``profile`` is the profiler's dict (``macs``, ``flash_bytes``,
    ``peak_ram_bytes``, ``precision`` in int8/float16/float32/mixed, optionally
    ``weight_bytes``). Each result has ``fits`` and one human-readable string in
    ``reasons`` per misfit; ``est_latency_ms`` is an estimate
    (``latency_is_estimate`` is always True). Fitting targets come first, cheapest
    (then fastest) first; misfits follow, fewest reasons first.

    Without a profile, ``fits`` and ``est_latency_ms`` are None and only the
    power/price limits produce reasons (targets without reasons listed first).
    """
    for label, limit in (("max_latency_ms", max_latency_ms), ("max_power_w", max_power_w),
                         ("max_price_usd", max_price_usd)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise UsageError(f"{label} must be a positive number, got {limit!r}")
    if profile is not None and not isinstance(profile, dict):
        raise UsageError("profile must be a dict (the profiler's output)")
    pool = list(targets) if targets is not None else load_catalogue()
    rows = [_assess(t, profile, max_latency_ms, max_power_w, max_price_usd) for t in pool]

    def key(row: dict):
        lat = row["est_latency_ms"] if row["est_latency_ms"] is not None else math.inf
        if row["fits"]:
            return (0, 0, row["price_usd"], lat, row["name"])
        if row["fits"] is None and not row["reasons"]:
            return (0, 0, row["price_usd"], lat, row["name"])
        return (1, len(row["reasons"]), row["price_usd"], lat, row["name"])

    rows.sort(key=key)
    return rows
