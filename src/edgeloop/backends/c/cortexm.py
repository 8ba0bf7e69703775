"""Run generated C on an emulated Cortex-M core and measure it.

The model's C (``<prefix>.c``/``<prefix>.h`` from the C backend) is
cross-compiled with ``arm-none-eabi-gcc`` for the target's own core (see
:data:`CORES`: a Cortex-M7 on QEMU's ``mps2-an500``, a Cortex-M4F on
``mps2-an386``, a Cortex-M3 on ``mps2-an385``; :func:`core_for` picks it from a
catalogue target), linked with a small firmware (``firmware/``: vector table,
start-up code, a linker script for the board's memory map, and a generated
``main`` that embeds the inputs in flash) and run under ``qemu-system-arm``.
Outputs come back through semihosting as hex lines on QEMU's standard output.

Instruction counting: QEMU counts instructions, not cycles. The firmware runs
under ``-icount shift=0``, where QEMU's virtual clock advances exactly 1 ns per
executed guest instruction, and reads the board's CMSDK timer 0 (25 MHz in
virtual time, so one tick per 40 instructions) around each inference. Each
mark waits for a tick edge in a polling loop, then reads the timer in four
consecutive instructions across the next edge, which places the mark to the
instruction. The firmware calls the model and, for calibration, a
two-instruction stand-in through the same measuring function, so the count is
exactly the instructions of ``<prefix>_run`` from its entry to its return (as
TFLite Micro's published counts cover ``Invoke()``). The tests check it on
loops, on straight-line code and against a single-step execution trace. Chosen
over a TCG plugin because Debian's QEMU ships no plugins and no
``qemu-plugin.h`` to build one against, and over ``-d exec`` tracing because
that writes a log line per executed instruction (gigabytes for KWS).

Stack: before each inference the firmware paints the free stack below the
measuring function's frame and afterwards finds the deepest word that changed:
the model's stack high-water mark.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeloop.errors import EdgeloopError

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"



@dataclass(frozen=True)
class Core:
    """A Cortex-M core as QEMU emulates it: the board, QEMU's CPU model, the compiler flags."""

    name: str                  # the core the code is compiled for (-mcpu)
    board: str                 # QEMU machine (-M)
    qemu_cpu: str              # QEMU CPU model (-cpu): the core actually emulated
    flags: tuple[str, ...]     # arm-none-eabi-gcc flags
    fpu: str | None            # -mfpu, None: no FPU (soft float)
    dsp: bool                  # __ARM_FEATURE_DSP: the fast SMLAD kernels (EL_FAST) are on
    linker_script: str         # in firmware/
    # (origin, bytes) of the board's memory the firmware links into: the board's QEMU memory
    # map (`info mtree` in QEMU 7.2): ZBT SSRAM1 at 0 for code and constants, SSRAM2/3 for data
    flash: tuple[int, int] = (0x00000000, 4 << 20)
    ram: tuple[int, int] = (0x20000000, 4 << 20)
    note: str = ""

    @property
    def cpu_flags(self) -> list[str]:
        return list(self.flags)

    def describe(self) -> dict:
        """The report's description of what ran: the emulated core and board."""
        return {"core": self.qemu_cpu, "compiled_for": self.name, "board": self.board,
                "cpu": self.qemu_cpu, "cpu_flags": " ".join(self.flags), "fpu": self.fpu or "none",
                "float_abi": "hard" if self.fpu else "soft", "dsp": self.dsp, "el_fast": self.dsp,
                "data_ram_bytes": self.ram[1], "code_bytes": self.flash[1],
                **({"core_note": self.note} if self.note else {})}


def _m7(fpu: str) -> Core:
    return Core("cortex-m7", "mps2-an500", "cortex-m7",
                ("-mcpu=cortex-m7", "-mthumb", f"-mfpu={fpu}", "-mfloat-abi=hard"), fpu, True,
                "mps2_an500.ld")


# The cores QEMU has an MPS2 board for (`qemu-system-arm -machine help`: mps2-an385 Cortex-M3,
# mps2-an386 Cortex-M4, mps2-an500 Cortex-M7; each board accepts only its own CPU model).
CORES: dict[str, Core] = {
    "cortex-m4": Core("cortex-m4", "mps2-an386", "cortex-m4",
                      ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
                      "fpv4-sp-d16", True, "mps2_an386.ld"),
    "cortex-m7": _m7("fpv5-sp-d16"),       # single-precision FPU (STM32F7)
    "cortex-m7-dp": _m7("fpv5-d16"),       # double-precision FPU (STM32H7)
    "cortex-m3": Core("cortex-m3", "mps2-an385", "cortex-m3",
                      ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), None, False, "mps2_an385.ld"),
    # QEMU models no Cortex-M0+ on a board with this memory map and timer (its only M0 board,
    # microbit, has 16 KB of RAM and no CMSDK timer). The closest honest run: ARMv6-M code
    # (-mcpu=cortex-m0plus, what the device executes, instruction for instruction) on the
    # mps2-an385's Cortex-M3, a superset of ARMv6-M.
    "cortex-m0plus": Core("cortex-m0plus", "mps2-an385", "cortex-m3",
                          ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"), None, False,
                          "mps2_an385.ld",
                          note="ARMv6-M code compiled for the Cortex-M0+ runs on QEMU's Cortex-M3 "
                               "(mps2-an385): the same instructions execute, so the count is the "
                               "M0+ program's, but the emulated core is an M3 (QEMU has no M0+ "
                               "board with enough RAM)"),
}
DEFAULT_CORE = CORES["cortex-m4"]
# compatibility: the Cortex-M4 names other modules read
BOARD = DEFAULT_CORE.board
CPU = DEFAULT_CORE.qemu_cpu
CPU_FLAGS = DEFAULT_CORE.cpu_flags


def core_for(target) -> tuple[Core | None, str | None]:
    """The core to emulate for a catalogue target (its ``arch``), or ``(None, reason)``."""
    arch = str(getattr(target, "arch", target) or "").lower()
    tid = getattr(target, "id", arch)
    desc = str(getattr(target, "core", "") or "")
    if arch in ("cortex-m7", "cortex-m7f"):
        return (CORES["cortex-m7-dp"] if "double-precision" in desc.lower() else CORES["cortex-m7"]), None
    if arch in ("cortex-m4", "cortex-m4f"):
        return CORES["cortex-m4"], None
    if arch == "cortex-m3":
        return CORES["cortex-m3"], None
    if arch in ("cortex-m0plus", "cortex-m0+", "cortex-m0"):
        return CORES["cortex-m0plus"], None
    what = ("an Xtensa core" if arch.startswith("xtensa") else
            "a RISC-V core" if arch.startswith("riscv") or arch.startswith("rv32") else
            f"a {arch} core")
    return None, (f"target '{tid}' has {what} ({desc or arch}), which QEMU's Cortex-M boards do not "
                  "emulate: --verify runs only on Cortex-M0+/M3/M4/M7 targets")


# The model is compiled the way the issue promises it compiles (C99, warnings as
# errors); -O2 is what TFLite Micro uses for its kernels.
MODEL_CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections"]
HARNESS_CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections"]

APT_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
TOOLS = {
    "gcc": "arm-none-eabi-gcc",
    "size": "arm-none-eabi-size",
    "qemu": "qemu-system-arm",
}

# -icount shift=0: 1 ns of virtual time per instruction; the MPS2 system clock that
# drives the CMSDK timers is 25 MHz, so one timer tick is 40 instructions.
INSTRUCTIONS_PER_TICK = 40
INSTRUCTIONS_PER_POLL = 4  # el_mark's polling loop: ldr, adds, cmp, beq
NOTHING_INSTRUCTIONS = 2  # the calibration's stand-in for the model: movs r0, #0; bx lr
COUNT_RESOLUTION = 0  # exact: see el_mark in firmware/main.c.in
STACK_PAINT_BYTES = 64 * 1024
COUNT_NOTE = ("QEMU counts instructions, not cycles: the count is exact (QEMU -icount shift=0 "
              "and the board timer, from the entry of <prefix>_run to its return), but says "
              "nothing about wait states, pipeline stalls or bus contention")


def toolchain() -> dict:
    """Which of the cross compiler, ``size`` and QEMU are on PATH.

    Returns ``{"gcc": path|None, "size": ..., "qemu": ..., "tools": {tool name: path|None},
    "newlib": bool, "missing": [what is missing], "install": "apt-get install ..."}``.
    """
    found: dict = {key: shutil.which(name) for key, name in TOOLS.items()}
    found["tools"] = {name: found[key] for key, name in TOOLS.items()}
    missing = [name for name, path in found["tools"].items() if path is None]
    newlib = False
    if found["gcc"]:
        # libnewlib-arm-none-eabi is a separate package: without it there is no
        # rdimon.specs and the link fails much later with a confusing message.
        try:
            out = subprocess.run([found["gcc"], "-print-file-name=rdimon.specs"], capture_output=True,
                                 text=True, timeout=30).stdout.strip()
            newlib = bool(out) and os.path.isabs(out) and os.path.exists(out)
        except (OSError, subprocess.SubprocessError):
            newlib = False
        if not newlib:
            missing.append("newlib for arm-none-eabi (rdimon.specs)")
    found["newlib"] = newlib
    found["missing"] = missing
    found["install"] = f"apt-get install {APT_PACKAGES}"
    return found


def predefined_dsp(core: Core) -> bool:
    """Whether arm-none-eabi-gcc defines ``__ARM_FEATURE_DSP`` for ``core``'s flags: the
    condition under which the generated C builds its fast SMLAD kernels (``EL_FAST``)."""
    tools = _require_toolchain()
    proc = _run([tools["gcc"], *core.flags, "-dM", "-E", "-x", "c", os.devnull], "arm-none-eabi-gcc -dM -E")
    return re.search(r"^#define __ARM_FEATURE_DSP\b", proc.stdout, re.M) is not None


def _require_toolchain() -> dict:
    tools = toolchain()
    if tools["missing"]:
        raise EdgeloopError(
            f"Cortex-M verification needs {', '.join(tools['missing'])}; "
            f"install them with: apt-get install {APT_PACKAGES}")
    return tools


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EdgeloopError(f"{what} did not finish within {timeout:g} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "no message")
        raise EdgeloopError(f"{what} failed: {detail.strip()}")
    return proc


def _c_array(name: str, data: bytes) -> str:
    rows = []
    for start in range(0, len(data), 24):
        rows.append("    " + ", ".join(f"0x{b:02x}" for b in data[start:start + 24]) + ",")
    body = "\n".join(rows) if rows else "    0"
    return (f"static const unsigned char {name}[] __attribute__((aligned(16))) = {{\n{body}\n}};\n"
            f"typedef char {name}_has_input_size[(sizeof({name}) == EL_INPUT_SIZE) ? 1 : -1];\n")


def _header_macro(header: Path, name: str) -> int | None:
    """A macro's value from the generated header, when it is a plain integer."""
    try:
        text = header.read_text()
    except OSError:
        return None
    m = re.search(rf"^\s*#\s*define\s+{re.escape(name)}\s+\(?\s*(\d+)[uUlL]*\s*\)?\s*$", text, re.M)
    return int(m.group(1)) if m else None


def model_sources(c_dir: Path, prefix: str) -> list[Path]:
    """The model's C files: ``<prefix>.c`` and any ``<prefix>_*.c`` beside it."""
    c_dir = Path(c_dir)
    main = c_dir / f"{prefix}.c"
    if not main.is_file():
        raise EdgeloopError(f"no generated C file {main.name} in {c_dir}")
    extra = sorted(p for p in c_dir.glob(f"{prefix}_*.c") if p.is_file())
    return [main] + extra


def build_firmware(c_dir: Path, prefix: str, inputs: list[np.ndarray], work_dir: Path, *,
                   stack_paint_bytes: int = STACK_PAINT_BYTES, profile_layers: int = 0,
                   core: Core = DEFAULT_CORE, detect: bool = False) -> Path:
    """Cross-compile the model in ``c_dir`` for ``core`` with a main that runs it on ``inputs``.

    Each input is embedded as a ``static const`` byte array (flash) holding the
    array's raw bytes in C order: the model's own dtype and layout. The model's
    objects are left in ``work_dir/model/`` for :func:`model_size`. Returns the ELF.

    ``profile_layers``: the number of kernel calls of the model; when above 0 the model
    is compiled with ``-DEL_PROFILE_LAYERS`` (a mark between its kernel calls, see
    ``firmware/layers.c.in``) and :func:`run_firmware` returns per-layer counts.

    ``detect``: the model has a detection head; the firmware also runs ``<prefix>_detect``
    on each input, counts its instructions and prints its boxes (``firmware/detect.c.in``).
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix or ""):
        raise EdgeloopError(f"prefix '{prefix}' is not a valid C identifier")
    tools = _require_toolchain()
    c_dir, work_dir = Path(c_dir).resolve(), Path(work_dir).resolve()
    if not inputs:
        raise EdgeloopError("no inputs to run the firmware on")
    header = c_dir / f"{prefix}.h"
    if not header.is_file():
        raise EdgeloopError(f"no generated header {header.name} in {c_dir}")
    blobs = [np.ascontiguousarray(x).tobytes() for x in inputs]
    in_size = _header_macro(header, f"{prefix.upper()}_INPUT_SIZE")
    for i, blob in enumerate(blobs):
        if in_size is not None and len(blob) != in_size:
            raise EdgeloopError(f"input {i} has {len(blob)} bytes but {prefix}_run expects "
                                f"{prefix.upper()}_INPUT_SIZE = {in_size}")
    missing = [f for f in ("main.c.in", "layers.c.in", "layers_report.c.in", "detect.c.in", "startup.c",
                           "mps2_sections.ld", core.linker_script) if not (FIRMWARE_DIR / f).is_file()]
    if missing:
        raise EdgeloopError(f"edgeloop's firmware files are missing from {FIRMWARE_DIR}: {', '.join(missing)} "
                            "(a broken installation: reinstall edgeloop)")
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "model").mkdir(exist_ok=True)
    for stale in (work_dir / "model").glob("*.o"):
        stale.unlink()

    objects = []
    profile = ["-DEL_PROFILE_LAYERS"] if profile_layers > 0 else []
    for src in model_sources(c_dir, prefix):
        obj = work_dir / "model" / (src.stem + ".o")
        _run([tools["gcc"], *core.flags, *MODEL_CFLAGS, *profile, "-I", str(c_dir), "-c", str(src),
              "-o", str(obj)],
             f"arm-none-eabi-gcc on {src.name}")
        objects.append(obj)

    template = string.Template((FIRMWARE_DIR / "main.c.in").read_text())
    names = [f"el_input_{i}" for i in range(len(blobs))]
    layer_profile = layer_report = detect_code = detect_report = ""
    if profile_layers > 0:
        layer_profile = string.Template((FIRMWARE_DIR / "layers.c.in").read_text()).substitute(
            n_marks=int(profile_layers) + 1)
        layer_report = (FIRMWARE_DIR / "layers_report.c.in").read_text()
    if detect:
        detect_code, detect_report = _detect_parts(header, prefix)
    main_c = template.substitute(
        layer_profile=layer_profile, layer_report=layer_report, detect_code=detect_code,
        detect_report=detect_report, core=core.qemu_cpu, board=core.board,
        prefix=prefix, PREFIX=prefix.upper(), n_inputs=len(blobs), stack_paint_bytes=int(stack_paint_bytes),
        input_arrays="\n".join(_c_array(n, b) for n, b in zip(names, blobs)),
        input_names=", ".join(names))
    (work_dir / "el_main.c").write_text(main_c)

    elf = work_dir / f"{prefix}_firmware.elf"
    cmd = [tools["gcc"], *core.flags, *HARNESS_CFLAGS, "-I", str(c_dir), "--specs=rdimon.specs",
           "-L", str(FIRMWARE_DIR), "-T", str(FIRMWARE_DIR / core.linker_script), "-Wl,--gc-sections",
           str(work_dir / "el_main.c"), str(FIRMWARE_DIR / "startup.c"), *map(str, objects),
           "-lm", "-o", str(elf)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise EdgeloopError("linking the Cortex-M firmware did not finish within 300 s") from exc
    if proc.returncode != 0:
        over = re.search(r"region `(FLASH|RAM)' overflowed by (\d+) bytes", proc.stderr)
        if over:
            region, by = over.group(1), int(over.group(2))
            origin, size = core.flash if region == "FLASH" else core.ram
            what = "code and constant" if region == "FLASH" else "data (arena, buffers and stack)"
            raise EdgeloopError(
                f"the model does not fit QEMU's {core.board} ({core.qemu_cpu}): its {what} memory is "
                f"{size // 1024} KiB at 0x{origin:08x} and the firmware needs {by} bytes more")
        _run(cmd, "linking the Cortex-M firmware")   # the usual one-line error
    return elf


def _detect_parts(header: Path, prefix: str) -> tuple[str, str]:
    """The detection part of the firmware's main (``firmware/detect.c.in``)."""
    text = header.read_text() if header.is_file() else ""
    if f"int {prefix}_detect(" not in text:
        raise EdgeloopError(f"{header.name} declares no {prefix}_detect: the model has no detection head in C")
    parts = string.Template((FIRMWARE_DIR / "detect.c.in").read_text()).substitute(
        prefix=prefix, PREFIX=prefix.upper())
    code, _, report = parts.partition("/* ---- report */")
    return code, report


def model_size(work_dir: Path) -> dict:
    """Section sizes of the model's objects (from :func:`build_firmware`), via arm-none-eabi-size.

    ``flash_bytes`` is text plus rodata (code and ``static const`` weights);
    ``data_bytes`` initialised RAM (also stored in flash), ``bss_bytes`` zeroed RAM.
    """
    tools = _require_toolchain()
    objects = sorted((Path(work_dir) / "model").glob("*.o"))
    if not objects:
        raise EdgeloopError(f"no model objects in {work_dir}/model: run build_firmware first")
    sizes = {"text_bytes": 0, "rodata_bytes": 0, "data_bytes": 0, "bss_bytes": 0}
    proc = _run([tools["size"], "-A", "-d", *map(str, objects)], "arm-none-eabi-size")
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        name, size = parts[0], int(parts[1])
        for prefix, key in ((".text", "text_bytes"), (".rodata", "rodata_bytes"),
                            (".data", "data_bytes"), (".bss", "bss_bytes")):
            if name == prefix or name.startswith(prefix + "."):
                sizes[key] += size
    sizes["flash_bytes"] = sizes["text_bytes"] + sizes["rodata_bytes"] + sizes["data_bytes"]
    return sizes


class FirmwareRun(tuple):
    """``(outputs, instructions)`` like a tuple, with the rest as attributes."""

    def __new__(cls, outputs, instructions, **extra):
        self = tuple.__new__(cls, (outputs, instructions))
        return self

    def __init__(self, outputs, instructions, *, stack_bytes, return_codes, stack_paint_bytes,
                 layer_instructions=None, detect=None):
        self.outputs = outputs
        # a detect build: {"instructions", "counts", "boxes" (raw bytes of each box, per input),
        # "stack_bytes", "return_codes"}, else None
        self.detect = detect
        # per kernel call of the last inference (a profile_layers build), else None
        self.layer_instructions = layer_instructions
        self.instructions = instructions
        self.stack_bytes = stack_bytes
        self.return_codes = return_codes
        self.stack_paint_bytes = stack_paint_bytes

    @property
    def stack_high_water(self) -> int:
        return max(self.stack_bytes) if self.stack_bytes else 0


def qemu_command(elf: Path, qemu: str = "qemu-system-arm", core: Core = DEFAULT_CORE) -> list[str]:
    return [qemu, "-M", core.board, "-cpu", core.qemu_cpu, "-nodefaults", "-display", "none", "-monitor", "none",
            "-serial", "none", "-icount", "shift=0", "-semihosting-config", "enable=on,target=native",
            "-kernel", str(elf)]


def run_firmware(elf: Path, timeout: float = 120, *, stack_paint_bytes: int = STACK_PAINT_BYTES,
                 core: Core = DEFAULT_CORE) -> FirmwareRun:
    """Run a firmware from :func:`build_firmware` under QEMU.

    Returns ``(outputs, instructions)``: the raw output bytes of each inference
    and the instructions each inference executed; the result also carries
    ``stack_bytes`` (per inference) and ``return_codes``.
    """
    tools = _require_toolchain()
    cmd = qemu_command(Path(elf), tools["qemu"], core)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EdgeloopError(f"QEMU ({core.board}) did not finish within {timeout:g} s") from exc
    text = proc.stdout.decode("ascii", "replace")
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("EL:")]
    fault = [" ".join(ln) for ln in lines if ln[0] == "EL:FAULT"]
    if fault:
        raise EdgeloopError(f"the firmware faulted on the emulated {core.qemu_cpu}: {fault[0][9:]}")
    if not lines or lines[-1][0] != "EL:END":
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise EdgeloopError(f"QEMU ({core.board}) stopped before the firmware finished (exit code "
                            f"{proc.returncode}){': ' + err[-1] if err else ''}")

    def raw(v0, n0, o0, v1, n1, o1) -> int:
        # Instructions from the end of the first mark to the start of the second,
        # up to a constant that the calibration removes. Edges are 40 instructions
        # apart; a mark's phase after its edge is 3 - old; the second mark started
        # 4 instructions before each of its polls (see el_mark in main.c.in).
        del n0
        ticks = (int(v0) - int(v1)) & 0xFFFFFFFF
        return ticks * INSTRUCTIONS_PER_TICK + int(o0) - int(o1) - INSTRUCTIONS_PER_POLL * int(n1)

    cal = [raw(*ln[1:7]) for ln in lines if ln[0] == "EL:CAL"]
    if not cal or len(set(cal)) != 1:
        raise EdgeloopError(f"the instruction-count calibration is unstable ({cal}): is this QEMU "
                            "running with -icount?")
    overhead = cal[0]
    runs = {int(ln[1]): ln for ln in lines if ln[0] == "EL:RUN"}
    outs = {int(ln[1]): (ln[2] if len(ln) > 2 else "") for ln in lines if ln[0] == "EL:OUT"}
    n = len(runs)
    outputs, instructions, stacks, codes = [], [], [], []
    for i in range(n):
        _, _, rc, stack, *marks = runs[i]
        outputs.append(bytes.fromhex(outs[i]))
        instructions.append(raw(*marks) - overhead + NOTHING_INSTRUCTIONS)
        stacks.append(int(stack))
        codes.append(int(rc))
    layer_marks = {int(ln[1]): ln[2:5] for ln in lines if ln[0] == "EL:LMARK"}
    layer_instructions = None
    if layer_marks:
        lcal = [raw(*ln[1:7]) for ln in lines if ln[0] == "EL:LCAL"]
        if not lcal or len(set(lcal)) != 1:
            raise EdgeloopError(f"the per-layer calibration is unstable ({lcal})")
        k = len(layer_marks)
        layer_instructions = [raw(*layer_marks[i], *layer_marks[i + 1]) - lcal[0] for i in range(k - 1)]
    detect = None
    dets = {int(ln[1]): ln for ln in lines if ln[0] == "EL:DET"}
    if dets:
        dcal = [raw(*ln[1:7]) for ln in lines if ln[0] == "EL:DCAL"]
        if not dcal or len(set(dcal)) != 1:
            raise EdgeloopError(f"the detect calibration is unstable ({dcal})")
        boxes: dict[int, list[bytes]] = {i: [] for i in dets}
        for ln in lines:
            if ln[0] == "EL:BOX":
                boxes[int(ln[1])].append(bytes.fromhex(ln[2]))
        ical = [raw(*ln[1:7]) for ln in lines if ln[0] == "EL:ICAL"]
        infs = {int(ln[1]): ln for ln in lines if ln[0] == "EL:INF"}
        if not ical or len(set(ical)) != 1 or len(infs) != len(dets):
            raise EdgeloopError(f"the inference calibration of the detect build is unstable ({ical})")
        detect = {"instructions": [], "counts": [], "boxes": [], "stack_bytes": [], "return_codes": [],
                  "inference_instructions": [raw(*infs[i][3:9]) - ical[0] + NOTHING_INSTRUCTIONS
                                             for i in range(len(infs))]}
        for i in range(len(dets)):
            _, _, rc, count, stack, *marks = dets[i]
            detect["instructions"].append(raw(*marks) - dcal[0] + NOTHING_INSTRUCTIONS)
            detect["counts"].append(int(count))
            detect["boxes"].append(boxes[i])
            detect["stack_bytes"].append(int(stack))
            detect["return_codes"].append(int(rc))
    return FirmwareRun(outputs, instructions, stack_bytes=stacks, return_codes=codes,
                       stack_paint_bytes=stack_paint_bytes, layer_instructions=layer_instructions,
                       detect=detect)


def _compare(got: np.ndarray, exp: np.ndarray, rtol: float = 1e-5) -> tuple[bool, float]:
    """Bitwise for integers; for floats within ``rtol`` of each value, with an
    absolute floor of ``rtol`` times the largest magnitude in the expected output
    (values far below the output's scale carry only rounding noise)."""
    if got.shape != exp.shape:
        return False, float("inf")
    if not np.issubdtype(exp.dtype, np.floating):
        diff = np.abs(got.astype(np.int64) - exp.astype(np.int64))
        return bool(np.array_equal(got, exp)), float(diff.max()) if diff.size else 0.0
    g, e = got.astype(np.float64), exp.astype(np.float64)
    same_nan = np.isnan(g) == np.isnan(e)
    g, e = np.nan_to_num(g, nan=0.0), np.nan_to_num(e, nan=0.0)
    diff = np.abs(g - e)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    ok = bool(np.all(same_nan) and np.all(diff <= rtol * np.maximum(np.abs(e), scale)))
    return ok, float(diff.max()) if diff.size else 0.0


def verify(out_dir: Path, prefix: str, info: dict, inputs: list[np.ndarray], expected: list[np.ndarray], *,
           timeout: float = 300, work_dir: Path | None = None, profile_layers: bool = False,
           core: Core = DEFAULT_CORE, detect: list[dict] | None = None) -> dict:
    """Cross-compile the generated C in ``out_dir`` for ``core``, run it on QEMU's board
    for that core and compare its outputs with ``expected`` (bitwise for integers, 1e-5 relative for
    floats). Raises :class:`EdgeloopError` naming the packages to install when the
    tools are missing. Returns the report's Cortex-M section.

    ``profile_layers`` (needs ``info["layers"]`` from the generator): a second build
    with a mark between kernel calls, run on the first input, gives ``layers``:
    ``[{name, op, kernel, macs, instructions, instructions_per_mac}]``. The totals
    (``instructions_per_inference``) always come from the build without marks.

    ``detect`` (a model with a head in C): per input, the numpy decoder's detections in
    input-tensor pixels, ``{"xyxy", "scores", "classes", "keypoints"}`` (see
    :func:`edgeloop.runtime.detect.decode_raw`); the firmware also runs ``<prefix>_detect``
    and the report's ``detect`` section says whether its boxes equal them (bit for bit: the
    numpy float64 values rounded to the box struct's float32) and counts its instructions."""
    _require_toolchain()
    if len(inputs) != len(expected):
        raise EdgeloopError(f"{len(inputs)} inputs but {len(expected)} expected outputs")
    out_dir = Path(out_dir)
    if info.get("input_dtype") and len(info.get("inputs", [None])) == 1:
        # the model's own input dtype (e.g. float64 test data for a float32 model)
        inputs = [np.asarray(x, dtype=info["input_dtype"]) for x in inputs]
    with tempfile.TemporaryDirectory(prefix="edgeloop-cortexm-") as tmp:
        wd = Path(work_dir) if work_dir is not None else Path(tmp)
        elf = build_firmware(out_dir, prefix, inputs, wd, core=core, detect=detect is not None)
        sizes = model_size(wd)
        result = run_firmware(elf, timeout=timeout, core=core)
        layers = layers_error = None
        if profile_layers and info.get("layers"):
            # a failing profile build must not hide the measured run: it is reported beside it
            try:
                pdir = wd / "profile"
                pelf = build_firmware(out_dir, prefix, inputs[:1], pdir, profile_layers=len(info["layers"]),
                                      core=core)
                prun = run_firmware(pelf, timeout=timeout, core=core)
                layers = _layer_rows(info["layers"], prun.layer_instructions or [])
            except EdgeloopError as e:
                layers_error = f"the per-layer profile failed: {e}"
    if any(result.return_codes):
        raise EdgeloopError(f"{prefix}_run returned {result.return_codes} on the emulated {core.qemu_cpu}")
    matches, diffs = [], []
    for raw, exp in zip(result.outputs, expected):
        exp = np.asarray(exp)
        got = np.frombuffer(raw, dtype=exp.dtype)
        if got.size != exp.size:
            raise EdgeloopError(f"{prefix}_run wrote {len(raw)} bytes but the expected output has {exp.nbytes}")
        ok, d = _compare(got.reshape(exp.shape), exp)
        matches.append(ok)
        diffs.append(d)
    arena = info.get("arena_size", info.get("arena_bytes"))
    if arena is None:
        arena = _header_macro(out_dir / f"{prefix}.h", f"{prefix.upper()}_ARENA_SIZE") or 0
    stack = result.stack_high_water
    insns = result.instructions
    return {
        **core.describe(),
        # measured, not assumed: what the compiler says for these flags
        "dsp": (dsp := predefined_dsp(core)), "el_fast": dsp,
        "flash_bytes": sizes["flash_bytes"],
        "flash": sizes,
        "arena_bytes": int(arena),
        "stack_bytes": int(stack),
        # False when the stack went past the painted region: then ram_bytes is a lower bound.
        "stack_measured": stack < result.stack_paint_bytes,
        "ram_bytes": int(arena) + int(stack),
        # What the linker places in RAM for the model object (.bss + .data): the arena
        # rounded up to its alignment, plus any other static variable.
        "static_ram_bytes": sizes["bss_bytes"] + sizes["data_bytes"],
        "instructions_per_inference": int(round(float(np.median(insns)))) if insns else None,
        "instructions": insns,
        "instructions_min": min(insns) if insns else None,
        "instructions_max": max(insns) if insns else None,
        "instruction_count_note": COUNT_NOTE,
        "inputs": len(inputs),
        "outputs_match": all(matches),
        "matches": sum(matches),
        "max_abs_diff": max(diffs) if diffs else 0.0,
        **({"layers": layers} if layers is not None else {}),
        **({"layers_error": layers_error} if layers_error else {}),
        **({"detect": _detect_section(prefix, core, detect, result)} if detect is not None else {}),
    }


def box_dtype(keypoints: int = 0) -> np.dtype:
    """``<prefix>_box_t`` as numpy sees its bytes (detect.py's struct: five floats, the class
    id, then ``keypoints`` (x, y) float pairs when the head has them)."""
    fields = [("x1", "<f4"), ("y1", "<f4"), ("x2", "<f4"), ("y2", "<f4"), ("score", "<f4"),
              ("class_id", "<i4")]
    if keypoints:
        fields.append(("keypoints", "<f4", (int(keypoints), 2)))
    return np.dtype(fields)


def _same_boxes(raw: list[bytes], want: dict) -> tuple[bool, str | None]:
    """The device's boxes against the numpy decoder's: bit for bit after float32 rounding when
    ``want["exact"]`` (int8 heads, the default), else within float rounding (a float head's
    ``exp`` comes from the device's C library): 1e-4 relative, 0.01 pixel absolute."""
    kps = want.get("keypoints")
    k = int(kps.shape[1]) if kps is not None and np.ndim(kps) == 3 else 0
    dt = box_dtype(k)
    if any(len(b) != dt.itemsize for b in raw):
        return False, (f"a box is {len(raw[0])} bytes on the device but {dt.itemsize} for the head "
                       f"({k} keypoints)")
    got = np.frombuffer(b"".join(raw), dtype=dt)
    xyxy = np.asarray(want["xyxy"], np.float64).reshape(-1, 4)
    if len(got) != len(xyxy):
        return False, f"{len(got)} boxes on the device, {len(xyxy)} from numpy"
    checks = [("box", np.stack([got["x1"], got["y1"], got["x2"], got["y2"]], 1), xyxy.astype(np.float32)),
              ("score", got["score"], np.asarray(want["scores"], np.float64).astype(np.float32)),
              ("class", got["class_id"], np.asarray(want["classes"]).astype(np.int32))]
    if k:
        checks.append(("keypoints", got["keypoints"], np.asarray(kps, np.float64).astype(np.float32)))
    exact = want.get("exact", True)
    for name, g, w in checks:
        if g.shape != w.shape:
            return False, f"{name} values differ"
        if exact or name == "class":
            if g.tobytes() != w.tobytes():
                return False, f"{name} values differ"
        elif not np.allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-4,
                             atol=1e-5 if name == "score" else 0.01):
            return False, f"{name} values differ beyond float rounding"
    return True, None


def _detect_section(prefix: str, core: Core, expected: list[dict], result: FirmwareRun) -> dict:
    d = result.detect
    if d is None:
        raise EdgeloopError(f"the firmware printed no {prefix}_detect results on the emulated {core.qemu_cpu}")
    if any(d["return_codes"]):
        raise EdgeloopError(f"{prefix}_detect returned -1 on the emulated {core.qemu_cpu}")
    same, why = [], None
    for raw, want in zip(d["boxes"], expected):
        ok, reason = _same_boxes(raw, want)
        same.append(ok)
        why = why or reason
    total, infer = d["instructions"], d["inference_instructions"]
    decode = [t - r for t, r in zip(total, infer)]
    med = (lambda v: int(round(float(np.median(v)))) if v else None)
    return {
        "function": f"{prefix}_detect",
        "boxes_match": all(same) and len(same) == len(expected),
        "matches": sum(same),
        "boxes": d["counts"],
        **({"mismatch": why} if why else {}),
        "compared_with": "edgeloop.runtime.detect (numpy) on the host build's raw outputs, "
                         "boxes in input-tensor pixels, " + (
                             "float32 bit for bit" if all(w.get("exact", True) for w in expected)
                             else "within float rounding (a float head)"),
        "instructions_per_frame": med(total),
        "instructions": total,
        "inference_instructions_per_frame": med(infer),
        "inference_instructions": infer,
        "decode_instructions_per_frame": med(decode),
        "decode_instructions": decode,
        "decode_note": (f"{prefix}_detect (inference + decode + NMS) minus {prefix}_run_all with the "
                        "outputs left in the arena (as _detect calls it), both measured on the device on "
                        "the same input: the head's decode, NMS and the copy into the boxes"),
        "stack_bytes": max(d["stack_bytes"]) if d["stack_bytes"] else 0,
    }


def _layer_rows(layers: list[dict], counts: list[int]) -> list[dict]:
    if len(counts) != len(layers):
        raise EdgeloopError(f"the per-layer profile has {len(counts)} marks for {len(layers)} kernel calls")
    rows = []
    for spec, n in zip(layers, counts):
        macs = int(spec.get("macs") or 0)
        rows.append({"name": spec.get("name"), "op": spec.get("op"), "kernel": spec.get("kernel"),
                     "macs": macs, "instructions": int(n),
                     "instructions_per_mac": round(n / macs, 3) if macs else None})
    return rows
