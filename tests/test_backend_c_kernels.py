"""The C kernel library as files: each compiles on its own, for the host and for Cortex-M4,
with strict warnings; calls are checked against the declared signatures in Python."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from edgeloop.backends.c import kernel_lib
from edgeloop.errors import EdgeloopError

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
TOOLCHAINS = {
    "host": ["gcc"],
    "cortex-m4": ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard",
                  "-mfpu=fpv4-sp-d16"],
}


def _kernels():
    return sorted(n for n, f in kernel_lib.files().items() if f.path.suffix == ".c")


@pytest.mark.parametrize("toolchain", sorted(TOOLCHAINS))
def test_every_kernel_file_compiles_on_its_own(toolchain, tmp_path):
    cc = TOOLCHAINS[toolchain]
    if shutil.which(cc[0]) is None:
        pytest.skip(f"{cc[0]} is not installed")
    names = _kernels()
    assert len(names) >= 30
    failures = []
    for name in names:
        f = kernel_lib.files()[name]
        # the file itself, plus one reference to its kernel (a static function nobody calls
        # is a -Wunused-function error)
        tu = tmp_path / f"use_{name}.c"
        tu.write_text(f'#include "{f.path}"\nvoid el_use(void);\nvoid el_use(void) {{ (void)k_{name}; }}\n')
        r = subprocess.run([*cc, *STRICT, "-c", "-o", str(tmp_path / f"{name}.o"), str(tu)],
                           capture_output=True, text=True)
        if r.returncode:
            failures.append(f"{f.path.name}: {r.stderr.strip()[:400]}")
    assert not failures, failures


def test_every_helper_header_is_used_by_a_kernel():
    lib = kernel_lib.files()
    used = {d for n in _kernels() for d in kernel_lib.closure([n]) if d != n}
    headers = {n for n, f in lib.items() if f.path.suffix == ".h"}
    assert headers and headers <= used, headers - used
    assert lib["fx_dsp"].path.parent.name == "dsp"


def test_closure_orders_dependencies_first_and_reads_includes():
    order = kernel_lib.closure(["softmax_s8"])
    assert order[-1] == "softmax_s8"
    assert order.index("fx") < order.index("fx_exp") < order.index("fx_half_recip")
    assert "#include" not in kernel_lib.source("softmax_s8").split("k_softmax_s8")[0].replace(
        "#include <", "")
    assert "math.h" in kernel_lib.system_includes(["unary_f32"])
    assert "math.h" not in kernel_lib.system_includes(["conv_s8"])


def test_call_is_bound_by_keyword_against_the_c_signature():
    sig = [p.name for p in kernel_lib.signature("requant_s8")]
    assert sig == ["x", "y", "n", "same_q", "x_zp", "y_zp", "mult", "shift", "lo", "hi"]
    kw = {"x": ("in", "a"), "y": ("out", "b"), **{k: ("int", 0) for k in sig[2:]}}
    args = kernel_lib.bind("requant_s8", dict(reversed(list(kw.items()))))
    assert args[0] == ("in", "a") and args[1] == ("out", "b") and len(args) == len(sig)
    with pytest.raises(EdgeloopError, match="missing argument.*hi"):
        kernel_lib.bind("requant_s8", {k: v for k, v in kw.items() if k != "hi"})
    with pytest.raises(EdgeloopError, match="unknown argument.*bogus"):
        kernel_lib.bind("requant_s8", {**kw, "bogus": ("int", 1)})
    with pytest.raises(EdgeloopError, match="argument n is a number"):
        kernel_lib.bind("requant_s8", {**kw, "n": ("const", None)})
