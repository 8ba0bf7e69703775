"""Named splits: no row that a stage reports on (a dataset's test split, improve's holdout) is ever fitted on.

The fit paths are instrumented from outside: scikit-learn's ``fit`` methods record every row
they are given, ``apply_pass`` records what each pass is handed, and improve's comparison
records the rows it scores. Rows are compared by their bytes (the data sets used here have
no duplicate rows, which each test checks first).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import sklearn  # noqa: F401  (skips cleanly without scikit-learn)


def _rows(x) -> set[bytes]:
    x = np.asarray(x, dtype=np.float32)
    return {r.tobytes() for r in x.reshape(len(x), -1)}


@pytest.fixture
def fits(monkeypatch):
    """Every X a scikit-learn estimator is fitted on during the test, as float32 rows."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    seen: list[np.ndarray] = []
    depth = [0]  # only the outermost fit: a pipeline's last step sees transformed rows
    for cls in (Pipeline, LogisticRegression, Ridge, DecisionTreeClassifier, DecisionTreeRegressor, MLPClassifier):
        original = cls.fit

        def fit(self, X, y=None, *args, _original=original, **kwargs):
            if depth[0] == 0:
                seen.append(np.asarray(X, dtype=np.float32).reshape(len(X), -1).copy())
            depth[0] += 1
            try:
                return _original(self, X, y, *args, **kwargs)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(cls, "fit", fit)
    return seen


def _overlap(fitted: list[np.ndarray], rows: np.ndarray, keep: list[int] | None = None) -> int:
    """How many of ``rows`` appear in any fit (matching column-reduced fits on ``keep``)."""
    full = _rows(rows)
    reduced = _rows(rows[:, keep]) if keep is not None else set()
    hit = 0
    for x in fitted:
        ref = full if x.shape[1] == rows.shape[1] else reduced if keep and x.shape[1] == len(keep) else None
        assert ref is not None, f"a fit on {x.shape[1]} columns that this test does not know"
        hit += len(_rows(x) & ref)
    return hit


def _feature_reduced_bundle(tmp_path):
    """The issue's fixture: digits, a logistic regression reduced to 48 of 64 pixels, as a bundle."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import edgeloop
    from edgeloop.backends.bundle import build_bundle
    from edgeloop.graph import save
    from edgeloop.passes import PassData, apply_pass
    from edgeloop.passes.sklearn_refit import FeatureSelect

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    assert len(_rows(x)) == len(x)  # rows identify samples
    src = tmp_path / "digits.joblib"
    joblib.dump(LogisticRegression(max_iter=3000).fit(x[:600], y[:600]), src)
    keep = list(range(8, 56))
    small = apply_pass(edgeloop.load(src, trust_pickle=True), FeatureSelect(keep=tuple(keep)),
                       PassData(train=(x[:450], y[:450]), validation=(x[450:600], y[450:600]), source=str(src),
                                trust_pickle=True))
    save(small, tmp_path / "small.onnx")
    build_bundle(edgeloop.load(tmp_path / "small.onnx"), tmp_path / "v1", "raspberry-pi-4", source_path=str(src))
    return x, y, keep


def test_improve_compares_old_and_new_on_rows_no_fit_saw(tmp_path, fits, monkeypatch):
    """On today's code the recipe replay refitted on the holdout too: new 1.000 against old 0.913."""
    from edgeloop.backends.bundle import improve as improve_mod

    x, y, keep = _feature_reduced_bundle(tmp_path)
    np.savez(tmp_path / "new.npz", x=x[600:1200], y=y[600:1200])  # full 64-pixel vectors, as captured
    scored: list[np.ndarray] = []
    original = improve_mod._evaluate

    def evaluate(bundle_model, xs, ys, task):
        scored.append(np.asarray(xs, dtype=np.float32).copy())
        return original(bundle_model, xs, ys, task)

    monkeypatch.setattr(improve_mod, "_evaluate", evaluate)
    fits.clear()  # only the fits improve makes
    comparison = improve_mod.improve(tmp_path / "v1", tmp_path / "new.npz", tmp_path / "v2", trust_pickle=True)
    held = scored[0]
    assert all(np.array_equal(s, held) for s in scored)  # old and new on the same rows
    assert comparison["recipe_applied"] is True
    assert len(fits) >= 2  # the refit of the source and the replayed feature selection
    assert _overlap(fits, held, keep) == 0, "held-out rows were fitted on"
    n = comparison["holdout_new"]["n"]
    assert len(held) == n and abs(n - 150) <= 5  # a quarter of the 600 (rounded class by class)
    assert f"{n} held-out rows" in comparison["holdout_note"]  # and it says how many
    # every fitted row is one of the other 450 new rows
    trained = _rows(x[600:1200]) - _rows(held)
    assert all(_rows(f) <= trained for f in fits if f.shape[1] == 64)
    m2 = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert m2["provenance"]["improve"]["comparison"] == comparison


def test_improve_drops_held_out_rows_that_equal_a_training_row(tmp_path):
    """A sample labelled twice (a capture exported again) cannot be held out against its own twin."""
    from edgeloop.backends.bundle.improve import improve

    x, y, _ = _feature_reduced_bundle(tmp_path)
    xs, ys = np.concatenate([x[600:900], x[600:900]]), np.concatenate([y[600:900], y[600:900]])
    np.savez(tmp_path / "twice.npz", x=xs, y=ys)
    comparison = improve(tmp_path / "v1", tmp_path / "twice.npz", tmp_path / "v2", trust_pickle=True)
    h = comparison["holdout_new"]
    assert h["dropped_as_training_rows"] > 0 and abs(h["n"] + h["dropped_as_training_rows"] - 150) <= 5
    assert f"{h['n']} held-out rows" in comparison["holdout_note"]


@pytest.fixture(scope="module")
def wine_folder(tmp_path_factory):
    from edgeloop.data import import_data

    folder = import_data("sklearn:wine", tmp_path_factory.mktemp("wine") / "wine")
    parts = json.loads((folder / "splits.json").read_text())
    x = np.load(folder / "x.npy")
    assert len(_rows(x)) == len(x)
    return folder, x, np.load(folder / "y.npy"), {k: np.asarray(parts[k]) for k in ("train", "validation", "test")}


def test_train_fits_only_the_train_split(wine_folder, tmp_path, fits):
    from edgeloop.train import train_dataset

    folder, x, _, parts = wine_folder
    r = train_dataset(folder, tmp_path / "wine.onnx", candidates=["linear", "tree"])
    assert r["test_samples"] == len(parts["test"])
    assert fits and all(_rows(f) <= _rows(x[parts["train"]]) for f in fits)
    for name in ("validation", "test"):
        assert _overlap(fits, x[parts[name]]) == 0, f"{name} rows were fitted on"


def test_shrink_fits_and_passes_never_see_the_test_split(tmp_path, fits, monkeypatch):
    """Data without its own splits (a .npz): the one splitter fixes train/validation/test; refits fit on
    train only (validation chooses, test reports), and no pass is handed a test row."""
    import joblib
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import edgeloop
    import edgeloop.passes as passes
    from edgeloop.commands.shrink import shrink_files
    from edgeloop.data import from_arrays, split_for_model

    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    assert len(_rows(x)) == len(x)
    np.savez(tmp_path / "wine.npz", x=x, y=y)
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splits = split_for_model(edgeloop.load(est.fit(x[::3], y[::3])), from_arrays(x, y), "accuracy")
    est.fit(*splits["train"])
    joblib.dump(est, tmp_path / "wine.joblib")
    handed: list = []
    original = passes.apply_pass

    def apply_pass(model, config, data=None):
        handed.append(data)
        return original(model, config, data)

    monkeypatch.setattr(passes, "apply_pass", apply_pass)
    fits.clear()
    doc = shrink_files(str(tmp_path / "wine.joblib"), str(tmp_path / "wine.npz"), str(tmp_path / "out"),
                       max_drop=0.05, quick=True, trust_pickle=True)
    test, val = splits.x("test"), splits.x("validation")
    assert doc["test"]["samples"] == len(test) and doc["splits"]["validation"] == len(val)
    assert any(c["passes"][0]["pass"] == "feature_select" and not c["error"] for c in doc["candidates"])
    assert handed and fits
    for data in handed:
        assert not hasattr(data, "test")
        for part in (data.train[0], data.validation[0], data.x_calib):
            assert not _rows(part) & _rows(test), "a pass was handed test rows"
        assert not _rows(data.x_calib) & _rows(val)
    # refits (feature selection, smaller algorithms) fit train rows only, on all or the kept columns
    x_train = splits.x("train")
    keeps = [c["passes"][0]["config"]["keep"] for c in doc["candidates"] if c["passes"][0]["config"].get("keep")]
    for f in fits:
        if f.shape[1] == x.shape[1]:
            assert _rows(f) <= _rows(x_train)
        else:
            assert any(_rows(f) <= _rows(x_train[:, k]) for k in keeps if len(k) == f.shape[1])


def test_passes_have_no_place_for_a_test_split():
    from edgeloop.errors import UsageError
    from edgeloop.passes import PassData

    data = PassData(train=(np.zeros((4, 2)), np.zeros(4)))
    with pytest.raises(UsageError, match="only the train and validation"):
        data.split("test", "anything")
    with pytest.raises(UsageError, match="a validation split"):
        data.split("validation", "feature ranking")
    with pytest.raises(TypeError):
        PassData(test=(np.zeros((4, 2)), np.zeros(4)))  # type: ignore[call-arg]
