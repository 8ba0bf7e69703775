"""Nothing runs that the user did not ask for: pickles are refused unless trusted (issue 9, item 1),
and the smaller defects of item 8 this touches (NaN/inf weights, huge dimensions, suffixless ONNX).

The malicious pickle's ``__reduce__`` calls ``os.system`` to create a marker file: every refusal
test checks that the marker does not exist afterwards, the exit code is non-zero and stderr is one
line that says why (the pickle runs code) and how (--trust-pickle / .skops).
"""

from __future__ import annotations

import json
import os
import pickle

import joblib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

import edgeloop
from edgeloop.cli import main
from edgeloop.errors import EdgeloopError
from edgeloop.frontends.sklearn import UntrustedSourceError, load_estimator
from edgeloop.graph import save, set_metadata


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return int(e.value.code or 0), cap.out, cap.err


def _assert_refused(code: int, err: str, marker) -> None:
    assert not os.path.exists(marker), "the pickle's code ran"
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "runs code" in lines[0] and "--trust-pickle" in lines[0], err


@pytest.fixture()
def evil(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    return path, marker


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def benign_joblib(tmp_path_factory, iris):
    x, y = iris
    path = tmp_path_factory.mktemp("benign") / "iris.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    return path


@pytest.mark.parametrize("argv", [
    ["profile", "{p}"],
    ["profile", "{p}", "--json"],
    ["targets", "{p}"],
    ["convert", "{p}", "-o", "{d}/out.onnx"],
    ["export", "{p}", "--target", "raspberry-pi-5", "-o", "{d}/bundle"],
    ["export", "{p}", "--target", "nrf52840", "-o", "{d}/c"],
    ["shrink", "{p}", "--data", "sklearn:digits", "-o", "{d}/shrunk"],
], ids=lambda a: " ".join(a[:1] + a[2:3]))
@pytest.mark.parametrize("suffix", [".pkl", ".joblib", ""])
def test_cli_refuses_a_malicious_pickle(capsys, tmp_path, evil, argv, suffix):
    path, marker = evil
    if suffix != ".pkl":  # .joblib, and a file without a suffix that is recognised by its first bytes
        path = path.rename(path.with_suffix(suffix))
    code, _, err = _run(capsys, *[a.format(p=path, d=tmp_path) for a in argv])
    _assert_refused(code, err, marker)
    assert str(path) in err
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "out.onnx").exists()


def test_python_load_refuses_a_malicious_pickle(evil):
    path, marker = evil
    with pytest.raises(UntrustedSourceError, match="trust_pickle=True"):
        edgeloop.load(str(path))
    with pytest.raises(EdgeloopError, match="runs code"):
        load_estimator(path)
    assert not marker.exists()


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz"])
def test_a_suffixless_compressed_joblib_is_still_a_pickle(tmp_path, compress):
    marker = tmp_path / "MARKER"
    path = tmp_path / "model"
    joblib.dump(_Evil(marker), path, compress=(compress, 3))
    with pytest.raises(UntrustedSourceError, match="runs code"):
        edgeloop.load(path)
    assert not marker.exists()


def test_a_benign_pickle_loads_with_trust(capsys, benign_joblib, iris):
    x, _ = iris
    with pytest.raises(UntrustedSourceError):
        edgeloop.load(benign_joblib)
    model = edgeloop.load(benign_joblib, trust_pickle=True)
    est = joblib.load(benign_joblib)
    from edgeloop.graph import run

    np.testing.assert_array_equal(run(model, x[:20])[0], est.predict(x[:20]))
    code, out, err = _run(capsys, "profile", str(benign_joblib), "--trust-pickle", "--no-latency", "--json")
    assert code == 0, err
    assert json.loads(out)["params"] == est.coef_.size + est.intercept_.size


def test_a_pt2_archive_with_a_malicious_pickle_inside_is_refused(tmp_path, capsys):
    """torch.export.load unpickles parts of a .pt2 and falls back to a full unpickle when the safe
    load fails: a sample-inputs entry replaced by a malicious pickle ran its code."""
    import io
    import zipfile

    import torch

    marker = tmp_path / "MARKER"
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 3)), (torch.zeros(1, 4),)), str(good))
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                buf = io.BytesIO()
                torch.save(_Evil(marker), buf)
                data = buf.getvalue()
            zout.writestr(item, data)
    code, _, err = _run(capsys, "profile", str(bad), "--no-latency")
    _assert_refused(code, err, marker)
    assert edgeloop.load(good).graph.node  # a plain archive needs no trust
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored after the load


def test_every_loading_command_has_the_flag(capsys):
    for cmd in ("profile", "targets", "convert", "export", "shrink", "improve"):
        code, out, _ = _run(capsys, cmd, "--help")
        assert code == 0 and "--trust-pickle" in out, cmd


def _bundle_with_source(tmp_path, capsys, iris, source_bytes: bytes, name: str):
    """Export an .onnx whose recorded source (copied into the bundle's source/) is ``source_bytes``."""
    x, y = iris
    folder = tmp_path / "model"
    folder.mkdir()
    model = edgeloop.load(LogisticRegression(max_iter=500).fit(x, y))
    set_metadata(model, source=name)
    save(model, folder / "iris.onnx")
    (folder / name).write_bytes(source_bytes)
    code, _, err = _run(capsys, "export", str(folder / "iris.onnx"), "--target", "raspberry-pi-5",
                        "-o", str(tmp_path / "v1"))
    assert code == 0, err  # copying a source into the bundle does not load it
    np.savez(tmp_path / "new.npz", x=x, y=y)
    return tmp_path / "v1"


def test_improve_refuses_a_bundle_whose_source_is_a_pickle(tmp_path, capsys, iris):
    marker = tmp_path / "MARKER"
    bundle = _bundle_with_source(tmp_path, capsys, iris, pickle.dumps(_Evil(marker)), "iris.joblib")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["provenance"]["source_file"] == "source/iris.joblib"
    assert manifest["provenance"]["source_needs_trust"] is True
    assert manifest["provenance"]["source_file_format"] == "pickle"
    code, _, err = _run(capsys, "improve", "--bundle", str(bundle), "--data", str(tmp_path / "new.npz"),
                        "-o", str(tmp_path / "v2"))
    _assert_refused(code, err, marker)
    assert "source/iris.joblib" in err and not (tmp_path / "v2").exists()


def test_improve_with_trust_refits_a_benign_pickle_source(tmp_path, capsys, iris, benign_joblib):
    bundle = _bundle_with_source(tmp_path, capsys, iris, benign_joblib.read_bytes(), "iris.joblib")
    code, _, err = _run(capsys, "improve", "--bundle", str(bundle), "--data", str(tmp_path / "new.npz"),
                        "-o", str(tmp_path / "v2"), "--trust-pickle", "--json")
    assert code == 0, err
    m2 = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert m2["version"] == 2 and m2["provenance"]["source_needs_trust"] is True  # still a pickle: ask again


def test_train_writes_skops_that_loads_without_trust(tmp_path, capsys):
    from edgeloop.data import import_data

    ds = import_data("sklearn:digits", tmp_path / "ds")
    out = tmp_path / "m" / "digits.onnx"
    # the tree holds sklearn.tree._tree.Tree, a type skops does not trust by default
    code, stdout, err = _run(capsys, "train", str(ds), "-o", str(out), "--candidates", "tree", "--json")
    assert code == 0, err
    source = out.with_suffix(".skops")
    assert json.loads(stdout)["source"] == str(source) and source.is_file()
    assert not out.with_suffix(".joblib").exists()
    est = load_estimator(source)  # no trust needed
    graph = edgeloop.load(str(source))
    x = np.load(ds / "x.npy")[:50].reshape(50, -1).astype(np.float32)
    from edgeloop.graph import run

    np.testing.assert_array_equal(run(graph, x)[0], est.predict(x))
    # the source is found beside the trained model; the bundle records that it needs no trust
    code, _, err = _run(capsys, "export", str(out), "--target", "raspberry-pi-5", "-o", str(tmp_path / "b"))
    assert code == 0, err
    prov = json.loads((tmp_path / "b" / "manifest.json").read_text())["provenance"]
    assert prov["source_file"] == "source/digits.skops"
    assert prov["source_needs_trust"] is False and prov["source_file_format"] == "skops"


def test_skops_with_an_untrusted_type_is_refused(tmp_path, capsys, iris):
    import skops.io as sio
    from sklearn.pipeline import make_pipeline

    x, y = iris
    est = make_pipeline(FunctionTransformer(func=os.getcwd), LogisticRegression(max_iter=500))
    est.steps[0][1].func = np.abs  # fit with a harmless function, then swap in one skops does not trust
    est.fit(x, y)
    est.steps[0][1].func = os.getcwd
    path = tmp_path / "sneaky.skops"
    sio.dump(est, path)
    untrusted = [t for t in sio.get_untrusted_types(file=path) if "getcwd" in t]
    assert untrusted
    with pytest.raises(UntrustedSourceError, match="getcwd"):
        load_estimator(path)
    code, _, err = _run(capsys, "profile", str(path), "--no-latency")
    assert code == 2 and len(err.strip().splitlines()) == 1 and untrusted[0] in err, err
    assert load_estimator(path, trust_pickle=True).steps[0][1].func is os.getcwd


def test_suffixless_skops_is_recognised(tmp_path, iris):
    import skops.io as sio

    x, y = iris
    path = tmp_path / "model"
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    assert edgeloop.load(path).graph.node


# --------------------------------------------------------------------------------------------
# item 8: NaN/inf weights, huge dimensions, suffixless ONNX
# --------------------------------------------------------------------------------------------
def _gemm(path, w: np.ndarray, in_dims=None):
    n_in, n_out = w.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims or [1, n_in])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])
    g = helper.make_graph([helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], name="fc")], "g", [x], [y],
                          initializer=[numpy_helper.from_array(w, "fc.weight"),
                                       numpy_helper.from_array(np.zeros(n_out, np.float32), "fc.bias")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.fixture()
def nan_model(tmp_path):
    w = np.ones((4, 3), np.float32)
    w[1, 2] = np.nan
    w[0, 0] = np.inf
    return _gemm(tmp_path / "nan.onnx", w)


@pytest.mark.parametrize("target", ["raspberry-pi-5", "nrf52840"])
def test_export_refuses_nan_weights_naming_the_tensor(tmp_path, capsys, nan_model, target):
    code, _, err = _run(capsys, "export", str(nan_model), "--target", target, "-o", str(tmp_path / "out"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'fc.weight'" in err and "1 NaN" in err and "1 inf" in err
    assert not (tmp_path / "out").exists()


def test_shrink_refuses_and_profile_warns_on_nan_weights(tmp_path, capsys, nan_model):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((40, 4), dtype=np.float32),
             y=np.arange(40) % 3)
    code, _, err = _run(capsys, "shrink", str(nan_model), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "s"))
    assert code == 2 and "'fc.weight'" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = _run(capsys, "profile", str(nan_model), "--no-latency", "--json")
    assert code == 0
    assert json.loads(out)["non_finite_weights"] == [{"tensor": "fc.weight", "node": None, "nan": 1, "inf": 1}]
    assert err.startswith("warning: ") and "'fc.weight'" in err


def test_finite_model_has_no_warning(tmp_path, capsys):
    code, out, err = _run(capsys, "profile", str(_gemm(tmp_path / "ok.onnx", np.ones((4, 3), np.float32))),
                          "--no-latency", "--json")
    assert code == 0 and err == "" and json.loads(out)["non_finite_weights"] == []


def test_profile_of_huge_dimensions_answers_without_running_it(tmp_path, capsys):
    n = 2 ** 31
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    code, out, err = _run(capsys, "profile", str(path), "--json")  # latency on: it must not try to run 8 GB
    assert code == 0, err
    p = json.loads(out)
    assert p["macs"] == n and p["peak_ram_bytes"] >= 4 * n
    assert p["latency_ms"] is None and "not measured" in p["latency_note"]
    code, out, err = _run(capsys, "profile", str(path))
    assert code == 0 and "not measured" in out, err


def test_suffixless_onnx_is_recognised_by_its_first_bytes(tmp_path, capsys):
    path = _gemm(tmp_path / "model", np.ones((4, 3), np.float32))
    code, out, err = _run(capsys, "profile", str(path), "--no-latency", "--json")
    assert code == 0, err
    assert json.loads(out)["params"] == 15
    odd = path.rename(tmp_path / "model.bin")  # an unknown suffix: the first bytes decide too
    assert edgeloop.load(odd).graph.node[0].op_type == "Gemm"
