"""Per-channel summary statistics of a time series, as a scikit-learn transformer with an ONNX converter.

A window of accelerometer/gyroscope readings is hard for a small model to
classify from raw samples (the same movement starts at different times), and
easy from each channel's mean, standard deviation, minimum and maximum. The
transformer takes the flattened series [N, C*T] (as every scikit-learn candidate
does) and returns [N, 4*C] (all means, then stds, mins, maxes). Its ONNX
converter (registered with skl2onnx on import) computes the same statistics
inside the graph, so the device gets raw windows, like the training did.
scikit-learn has no such transformer and skl2onnx no such converter, hence
this module.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class SeriesStats(TransformerMixin, BaseEstimator):
    """[N, channels*length] -> [N, 4*channels]: mean, std, min, max of each channel."""

    def __init__(self, channels: int = 1):
        self.channels = channels

    def fit(self, X, y=None):
        X = np.asarray(X)
        if X.shape[1] % self.channels:
            raise ValueError(f"{X.shape[1]} features do not split into {self.channels} channels")
        self.n_features_in_ = X.shape[1]
        self.length_ = X.shape[1] // self.channels
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float32).reshape(len(X), self.channels, -1)
        mean = X.mean(axis=2)
        std = np.sqrt(((X - mean[:, :, None]) ** 2).mean(axis=2))
        return np.concatenate([mean, std, X.min(axis=2), X.max(axis=2)], axis=1).astype(np.float32)


def _shape(operator) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    n = operator.inputs[0].type.shape[0]
    operator.outputs[0].type = FloatTensorType([n, 4 * operator.raw_operator.channels])


def _convert(scope, operator, container) -> None:
    from onnx import TensorProto

    op = operator.raw_operator
    name = scope.get_unique_variable_name
    x = operator.inputs[0].full_name
    shape, axes = name("stats_shape"), name("stats_axes")
    container.add_initializer(shape, TensorProto.INT64, [3], [-1, op.channels, op.length_])
    container.add_initializer(axes, TensorProto.INT64, [1], [2])
    series = name("series")
    container.add_node("Reshape", [x, shape], [series], name=name("Reshape"))
    mean_k, mean, centred, sq, var, std, lo, hi = (name(s) for s in
                                                   ("mean_k", "mean", "centred", "sq", "var", "std", "min", "max"))
    container.add_node("ReduceMean", [series, axes], [mean_k], name=name("ReduceMean"), keepdims=1)
    container.add_node("ReduceMean", [series, axes], [mean], name=name("ReduceMean"), keepdims=0)
    container.add_node("Sub", [series, mean_k], [centred], name=name("Sub"))
    container.add_node("Mul", [centred, centred], [sq], name=name("Mul"))
    container.add_node("ReduceMean", [sq, axes], [var], name=name("ReduceMean"), keepdims=0)
    container.add_node("Sqrt", [var], [std], name=name("Sqrt"))
    container.add_node("ReduceMin", [series, axes], [lo], name=name("ReduceMin"), keepdims=0)
    container.add_node("ReduceMax", [series, axes], [hi], name=name("ReduceMax"), keepdims=0)
    container.add_node("Concat", [mean, std, lo, hi], [operator.outputs[0].full_name], name=name("Concat"), axis=1)


def _register() -> None:
    from skl2onnx import update_registered_converter

    update_registered_converter(SeriesStats, "EdgeloopSeriesStats", _shape, _convert)


_register()
