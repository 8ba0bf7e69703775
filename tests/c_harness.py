"""Run generated models' C as one host executable under AddressSanitizer and UBSan.

``run_sanitized(cases, tmp)``: ``cases`` is a list of (C source path, info, inputs) for
models generated with distinct prefixes; each runs once on its inputs from static buffers
(as on a device). Any sanitizer report fails the run. Returns every case's outputs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from edgeloop.backends.c import CFLAGS

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def _driver(cases, d: Path) -> str:
    lines = ["#include <stdio.h>", "#include <stdlib.h>"]
    for k, (_, info, _) in enumerate(cases):
        lines.append(f"int {info['prefix']}_run_all(const void *const *inputs, void *const *outputs);")
    lines += ["static void io(const char *path, void *buf, size_t n, int out)", "{",
              '    FILE *f = fopen(path, out ? "wb" : "rb");',
              "    if (!f || (out ? fwrite(buf, 1, n, f) : fread(buf, 1, n, f)) != n) {",
              '        fprintf(stderr, "cannot %s %s\\n", out ? "write" : "read", path);',
              "        exit(2);", "    }", "    fclose(f);", "}", "int main(void)", "{"]
    for k, (_, info, _) in enumerate(cases):
        ni, no = len(info["inputs"]), len(info["outputs"])
        lines.append("    {")
        for j, spec in enumerate(info["inputs"]):
            lines += [f"        static unsigned char i{j}[{max(spec['nbytes'], 1)}];",
                      f'        io("{d}/{k}_in{j}.bin", i{j}, {spec["nbytes"]}, 0);']
        for j, spec in enumerate(info["outputs"]):
            lines.append(f"        static unsigned char o{j}[{max(spec['nbytes'], 1)}];")
        lines += [f"        const void *ins[{max(ni, 1)}] = {{{', '.join(f'i{j}' for j in range(ni)) or '0'}}};",
                  f"        void *outs[{max(no, 1)}] = {{{', '.join(f'o{j}' for j in range(no)) or '0'}}};",
                  f"        if ({info['prefix']}_run_all(ins, outs)) return 1;"]
        for j, spec in enumerate(info["outputs"]):
            lines.append(f'        io("{d}/{k}_out{j}.bin", o{j}, {spec["nbytes"]}, 1);')
        lines.append("    }")
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def run_sanitized(cases, d: Path) -> list[list[np.ndarray]]:
    d = Path(d)
    for k, (_, info, inputs) in enumerate(cases):
        for j, (spec, x) in enumerate(zip(info["inputs"], inputs)):
            a = np.ascontiguousarray(np.asarray(x, dtype=spec["dtype"]).reshape(spec["shape"]))
            (d / f"{k}_in{j}.bin").write_bytes(a.tobytes())
    (d / "main.c").write_text(_driver(cases, d))
    exe = d / "sanitized"
    r = subprocess.run(["gcc", *CFLAGS, "-O1", "-g", *SANITIZE, "-o", str(exe), str(d / "main.c"),
                        *[str(src) for src, _, _ in cases], "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:3000]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600,
                       env={"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return [[np.frombuffer((d / f"{k}_out{j}.bin").read_bytes(), dtype=o["dtype"]).reshape(o["shape"])
             for j, o in enumerate(info["outputs"])] for k, (_, info, _) in enumerate(cases)]
