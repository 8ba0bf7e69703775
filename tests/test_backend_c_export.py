"""`edgeloop export --target <microcontroller>`: files, report, atomic output, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.backends.c import CModel, compile_shared

sys.path.insert(0, __import__("os").path.dirname(__file__))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True,
                          text=True, timeout=300)


def _model(op_after: str | None = None, path=None):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y" if op_after is None else "r"], name="act")]
    if op_after:
        nodes.append(helper.make_node(op_after, ["r"], ["y"], name="strange_node"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, path)
    return m


def test_export_kws_files_and_report(mlperf_dir, tmp_path):
    out = tmp_path / "kws_out"
    r = _cli("export", str(mlperf_dir / "kws_ref_model.tflite"), "--target", "stm32l4r5",
             "-o", str(out), "--name", "kws", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [".edgeloop-output.json", "kws.c", "kws.h", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert json.loads(r.stdout) == report
    # the input (490 B) and the first conv output (8,000 B); the rest runs in place
    assert report["arena_bytes"] == 490 + 8000 and report["precision"] == "int8"
    assert report["fits_ram"] is True and report["verify"] is None
    assert report["flash_estimate_bytes"] > report["weights_bytes"] > 20000
    # what was written builds and runs: the golden class from the README
    from test_frontend_tflite import kws_input

    info = {"prefix": "kws", "inputs": report["inputs"], "outputs": report["outputs"],
            "primary_output": report["primary_output"]}
    y = CModel(compile_shared(out, "kws", opt="-O1"), info).run(kws_input(mlperf_dir))
    assert int(np.argmax(y)) == 5 and y[0, 5] == 127


def test_export_replaces_output_only_on_success(tmp_path):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    _model(path=good)
    _model("Hardmax", path=bad)
    out = tmp_path / "out"
    r = _cli("export", str(good), "--target", "nrf52840", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "arena" in r.stdout
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {".edgeloop-output.json", "model.c", "model.h", "report.json"}
    # an unsupported operator: one line naming the node and the operator, exit 2,
    # OUT untouched, no temporary folder left beside it
    r = _cli("export", str(bad), "--target", "nrf52840", "-o", str(out))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "strange_node" in lines[0] and "Hardmax" in lines[0] and str(bad) in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "good.onnx", "out"]
    # a new export to a fresh folder that fails leaves nothing at all
    r = _cli("export", str(bad), "--target", "nrf52840", "-o", str(tmp_path / "fresh"))
    assert r.returncode == 2 and not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("args, needle", [
    (["--name", "9bad-name"], "not a valid C identifier"),
    (["--target", "no-such-board"], "no-such-board"),
])
def test_export_bad_options(tmp_path, args, needle):
    good = tmp_path / "good.onnx"
    _model(path=good)
    base = ["export", str(good), "-o", str(tmp_path / "o")]
    if "--target" not in args:
        base += ["--target", "nrf52840"]
    r = _cli(*base, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert needle in r.stderr
    assert not (tmp_path / "o").exists()


def test_unsupported_attribute_names_node(tmp_path):
    from edgeloop.backends.c import generate
    from edgeloop.errors import UnsupportedOperatorError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y"], name="pool3d",
                                            kernel_shape=[2, 2, 2])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(UnsupportedOperatorError) as e:
        generate(m, tmp_path / "o")
    assert e.value.node == "pool3d" and e.value.op == "MaxPool"
    assert not (tmp_path / "o").exists()


def test_export_verify_on_cortex_m4(mlperf_dir, tmp_path):
    """--verify: the emulated Cortex-M4 gives the host's outputs (or says clearly why not)."""
    out = tmp_path / "ad"
    r = _cli("export", str(mlperf_dir / "ad01_int8.tflite"), "--target", "stm32l4r5", "-o",
             str(out), "--name", "ad", "--verify", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads((out / "report.json").read_text())["verify"]
    if not v["available"]:
        assert "install" in v["error"] or "not available" in v["error"]
        import os

        if os.environ.get("CI"):
            pytest.fail(v["error"])  # CI installs the toolchain (.ci/run): never skip there
        pytest.skip(v["error"])
    assert v["outputs_match"] is True and v["arena_bytes"] == 768
    assert v["instructions_per_inference"] > 100000


def test_export_never_replaces_a_users_own_folder(tmp_path):
    import subprocess
    import sys

    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = tmp_path / "iris.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), model)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "edgeloop", "export", str(model), "--target", "nrf52840",
                           "-o", str(mine), "--trust-pickle"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "refusing to replace" in proc.stderr, proc.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_feature_reduced_model_says_which_inputs_it_reads(tmp_path):
    """The header and report of a feature-selected model name the original features it reads,
    in input order, and the C agrees with scikit-learn's refit on those columns."""
    import re

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import edgeloop
    from edgeloop.backends.c import generate
    from edgeloop.passes import PassData, apply_pass
    from edgeloop.passes.sklearn_refit import FeatureSelect

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    est = LogisticRegression(max_iter=3000).fit(x[:1200], y[:1200])
    keep = (50, 3, 17, 42, 9, 33, 60, 21, 12, 28, 36, 44, 19, 26, 53, 10)  # not sorted, on purpose
    small = apply_pass(edgeloop.load(est), FeatureSelect(keep=keep),
                       PassData(x_fit=x[:900], y_fit=y[:900], x_tune=x[900:1200], y_tune=y[900:1200], source=est))
    info = generate(small, tmp_path, "feat")
    header = (tmp_path / "feat.h").read_text()
    listed = [int(v) for v in re.search(r"#define FEAT_KEPT_FEATURES \{([^}]*)\}", header).group(1).split(",")]
    kept_meta = edgeloop.graph.get_metadata(small)["kept_features"]
    assert listed == list(kept_meta) == info["kept_features"]
    assert "#define FEAT_N_FEATURES_ORIGINAL 64" in header
    # an application gathers its full sensor vector with the macro; the C then matches the graph
    (tmp_path / "app.c").write_text(
        '#include "feat.h"\n'
        "int gather(const float *original, float *input) {\n"
        "    static const int kept[FEAT_N_KEPT_FEATURES] = FEAT_KEPT_FEATURES;\n"
        "    for (int i = 0; i < FEAT_N_KEPT_FEATURES; ++i) input[i] = original[kept[i]];\n"
        "    return FEAT_N_FEATURES_ORIGINAL;\n}\n")
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", "app.c", "-o", "app.o"],
                   cwd=tmp_path, check=True)
    cm = CModel(compile_shared(tmp_path, "feat"), info)
    x_new = x[1200:1400]
    ref = edgeloop.graph.run(small, x_new[:, listed])[1]
    np.testing.assert_allclose(cm.run(x_new[:, listed]), ref, rtol=1e-5, atol=1e-6)
