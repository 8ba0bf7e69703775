"""Compatibility names: the search's data layer is :mod:`edgeloop.data` (one reader, one splitter,
one predictor, one scorer). Import from there; this module only re-exports."""

from __future__ import annotations

from edgeloop.data.scoring import (HIGHER_IS_BETTER, METRICS, Predictor, evaluate, feature_view, input_info,
                                    model_task, predict, score)
from edgeloop.data.readers import DataError
from edgeloop.data.splits import MAX_CALIB, Splits, split_for_model

__all__ = ["HIGHER_IS_BETTER", "METRICS", "Predictor", "evaluate", "feature_view", "input_info", "model_task",
           "predict", "score", "DataError", "MAX_CALIB", "Splits", "split_for_model"]
