"""``edgeloop export MODEL --target <microcontroller> -o OUT [--name P] [--verify] [--json]``.

Writes ``OUT/<prefix>.c``, ``OUT/<prefix>.h`` and ``OUT/report.json``. Everything is
built in a temporary folder beside OUT, compiled once with the host gcc as a check,
and only then renamed into place: an error leaves OUT as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeloop.errors import EdgeloopError, UsageError
from edgeloop.fsutil import check_output_dir, staged_dir


class VerificationError(EdgeloopError):
    """The emulated Cortex-M core gave other outputs (or boxes) than the host build."""

    exit_code = 3


def _section_sizes(obj: Path) -> dict | None:
    """text/rodata/data/bss bytes of an object file (binutils ``size -A``), or None."""
    size = shutil.which("size")
    if size is None:
        return None
    r = subprocess.run([size, "-A", str(obj)], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    out = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            name = parts[0]
            for key in out:
                if name == f".{key}" or name.startswith(f".{key}."):
                    out[key] += int(parts[1])
    return out


def _host_check(tmp: Path, prefix: str) -> dict | None:
    """Compile once with -Werror (a check) and measure the host object's sections."""
    from edgeloop.backends.c import CFLAGS, _cc

    obj = tmp.parent / f".{tmp.name}.{prefix}.o"
    try:
        r = subprocess.run([_cc(), *CFLAGS, "-Os", "-c", "-o", str(obj), str(tmp / f"{prefix}.c")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise EdgeloopError(f"the generated C did not compile with the host gcc: "
                                f"{r.stderr.strip().splitlines()[0] if r.stderr.strip() else r.returncode}")
        return _section_sizes(obj)
    finally:
        obj.unlink(missing_ok=True)


def _sample_inputs(info: dict, n: int = 3) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(n):
        xs = []
        for spec in info["inputs"]:
            dt = np.dtype(spec["dtype"])
            if dt.kind == "f":
                xs.append(rng.normal(0, 1, spec["shape"]).astype(dt))
            elif dt.kind in "iu":
                lo, hi = (max(np.iinfo(dt).min, -128), min(np.iinfo(dt).max, 127))
                xs.append(rng.integers(lo, hi + 1, spec["shape"]).astype(dt))
            else:
                xs.append(np.zeros(spec["shape"], dt))
        samples.append(xs)
    return samples


def _verify(tmp: Path, prefix: str, info: dict, target=None, head: dict | None = None) -> dict:
    """Host outputs on sample inputs, then the same inputs on QEMU's emulation of the
    target's own core (:func:`cortexm.core_for`). A model with a detection head in C also
    runs ``<prefix>_detect`` on the device, against the numpy decoder on the host's outputs.
    A target whose core QEMU lacks gets ``{"available": False, "skipped": True, "reason"}``."""
    try:
        from edgeloop.backends.c import cortexm
    except ImportError as e:
        return {"available": False, "error": f"Cortex-M verification is not available in this "
                                             f"build (edgeloop.backends.c.cortexm: {e})"}
    from edgeloop.backends.c import CModel, compile_shared

    core, reason = cortexm.core_for(target) if target is not None else (cortexm.DEFAULT_CORE, None)
    if core is None:
        return {"available": False, "skipped": True, "reason": reason, "error": reason,
                "core": None, "board": None}

    with tempfile.TemporaryDirectory(prefix="edgeloop-host-") as host:
        hdir = Path(host)
        for f in info["files"]:
            shutil.copy(tmp / f, hdir / f)
        cm = CModel(compile_shared(hdir, prefix), info)
        samples = _sample_inputs(info)
        if len(info["inputs"]) != 1:
            return {"available": False, "error": "Cortex-M verification supports one-input models"}
        inputs = [s[0] for s in samples]
        expected = [cm.run(*s) for s in samples]
        boxes = None
        if head is not None and info.get("detect"):
            from edgeloop.runtime import detect as rd

            names = [o["name"] for o in info["outputs"]]
            boxes = []
            for s in samples:
                xyxy, scores, classes, kps = rd.decode_raw(head, dict(zip(names, cm.run_all(*s))))
                boxes.append({"xyxy": xyxy, "scores": scores, "classes": classes,
                              "keypoints": kps if info["detect"].get("keypoints") else None,
                              # int8 heads bit for bit; float ones within float rounding
                              "exact": bool(info["detect"].get("bit_exact"))})
        try:
            result = cortexm.verify(tmp, prefix, info, inputs, expected, profile_layers=True,
                                    core=core, detect=boxes)
        except EdgeloopError as e:
            return {"available": False, "error": str(e), **core.describe()}
    result = dict(result)
    result["available"] = True
    return result


def export_cli(model_path, target, output, *, prefix: str = "model", verify: bool = False,
               as_json: bool = False, trust_pickle: bool = False) -> None:
    from edgeloop.backends.c.codegen import _c_ident, generate
    from edgeloop.frontends import load_file

    _c_ident(prefix)
    output = Path(output)
    check_output_dir(output, kind="c-export")  # before loading the model: a user's folder is refused at once
    model = load_file(model_path, trust_pickle=trust_pickle)
    from edgeloop.backends.c.cortexm import core_for

    core, _ = core_for(target)
    from edgeloop.profile.weights import check_finite
    check_finite(model, where=str(model_path))
    # OUT is replaced only when everything (generation, compile check, verify) succeeded,
    # and never if it is a non-empty folder that is not an earlier C export.
    with staged_dir(output, kind="c-export") as tmp:
        try:
            info = generate(model, tmp, prefix)
        except EdgeloopError as e:
            raise e.with_where(str(model_path))
        sections = _host_check(tmp, prefix)
        report = {
            "model": str(model_path),
            "target": getattr(target, "id", str(target)),
            "prefix": prefix,
            "files": info["files"] + ["report.json"],
            "precision": info["precision"],
            "arena_bytes": info["arena_size"],
            "weights_bytes": info["const_bytes"],
            # a few static work words outside the arena (tree ensembles' double sums)
            "scratch_bytes": info.get("scratch_bytes", 0),
            "flash_estimate_bytes": (sections["text"] + sections["rodata"] + sections["data"]
                                     if sections else info["const_bytes"]),
            "flash_estimate_note": ("host x86-64 object built with -Os: text + rodata + data; "
                                    f"--verify measures the {core.name if core else 'Cortex-M'} object"
                                    if sections else
                                    "constant data only (binutils 'size' not found)"),
            "inputs": info["inputs"], "outputs": info["outputs"],
            "primary_output": info["primary_output"],
            "input_quant": info["input_quant"], "output_quant": info["output_quant"],
            "kernels": info["kernels"],
            # feature reduction: which original inputs the model reads (also MODEL_KEPT_FEATURES in the header)
            "kept_features": info.get("kept_features"),
            "n_features_original": info.get("n_features_original"),
            # the detection head decoded in C (<prefix>_detect), or None
            "detect": info.get("detect"),
            "verify": None,
        }
        ram = getattr(target, "ram_bytes", None)
        flash = getattr(target, "flash_bytes", None)
        if ram:
            report["fits_ram"] = info["arena_size"] <= ram
        if flash:
            report["fits_flash"] = report["flash_estimate_bytes"] <= flash
        if verify:
            head = None
            if info.get("detect"):
                from edgeloop.detect import head_of
                head = head_of(model)
            report["verify"] = _verify(tmp, prefix, info, target, head)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _print(report, output, as_json)
    v = report["verify"]
    if v and v.get("skipped"):
        sys.stderr.write(f"verify skipped: {v.get('reason')}\n")   # one line, also beside --json
    if v and v.get("available") and not v.get("outputs_match", True):
        raise VerificationError(f"the emulated {v.get('core')} ({v.get('board')}) gave other outputs than "
                                f"the host build (max difference {v.get('max_abs_diff')})", where=str(output))
    det = (v or {}).get("detect") or {}
    if v and v.get("available") and det and not det.get("boxes_match", True):
        raise VerificationError(f"{report['prefix']}_detect on the emulated {v.get('core')} gave other boxes "
                                f"than the numpy decoder ({det.get('mismatch')})", where=str(output))


def _print(report: dict, output: Path, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    from edgeloop.hardware import format_bytes

    t = Table(title=f"C export for {report['target']} -> {output}", show_header=False)
    t.add_row("files", ", ".join(report["files"]))
    t.add_row("precision", report["precision"])
    t.add_row("arena (RAM)", f"{format_bytes(report['arena_bytes'])} ({report['arena_bytes']} B)")
    t.add_row("flash (estimate)", f"{format_bytes(report['flash_estimate_bytes'])} "
                                  f"({report['flash_estimate_note']})")
    if "fits_ram" in report:
        t.add_row("fits the target", f"RAM {'yes' if report['fits_ram'] else 'NO'}, flash "
                                     f"{'yes' if report.get('fits_flash') else 'NO'}")
    t.add_row("kernels", ", ".join(report["kernels"]))
    det = report.get("detect")
    if det:
        t.add_row("detection head", f"{det['kind']} decoded in C: {report['prefix']}_detect(), "
                                    f"at most {det['max_detections']} boxes")
    v = report["verify"]
    if v is not None:
        core = v.get("core")
        if v.get("skipped"):
            t.add_row("verify", f"skipped: {v.get('reason')}")
        elif not v.get("available"):
            t.add_row(f"{core or 'Cortex-M'} verify", f"not run: {v.get('error')}")
        else:
            t.add_row("emulated core", f"{core} on QEMU {v.get('board')} ({v.get('cpu_flags')}; "
                                       f"DSP kernels {'on' if v.get('el_fast') else 'off'})")
            if v.get("core_note"):
                t.add_row("note", v["core_note"])
            t.add_row(f"{core} verify", f"outputs {'match' if v.get('outputs_match') else 'DIFFER'}"
                                        f" on {v.get('inputs')} inputs")
            t.add_row(f"{core} flash", f"{v.get('flash_bytes')} B (text + rodata of the model)")
            t.add_row(f"{core} RAM", f"{v.get('ram_bytes')} B (arena + measured stack)")
            t.add_row("instructions/inference", f"{v.get('instructions_per_inference')} "
                                                "(QEMU counts instructions, not cycles)")
            d = v.get("detect")
            if d:
                t.add_row(f"{report['prefix']}_detect", f"boxes {'equal' if d.get('boxes_match') else 'DIFFER from'}"
                                                        f" the numpy decoder's ({sum(d.get('boxes') or [])} boxes "
                                                        f"on {len(d.get('boxes') or [])} inputs)")
                t.add_row("instructions/frame", f"{d.get('instructions_per_frame')}: inference "
                                                f"{d.get('inference_instructions_per_frame')}, decode + NMS "
                                                f"{d.get('decode_instructions_per_frame')}")
    Console().print(t)
    if v and v.get("layers"):
        from edgeloop.backends.c.fast import layer_profile_table
        Console().print(layer_profile_table(v["layers"]))
