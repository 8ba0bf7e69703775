"""Post-training int8 refinements: bias correction and AdaRound-style weight rounding each lower the
output error of a small CNN against its float self, on samples the calibration never saw."""

from __future__ import annotations

import numpy as np
import pytest
from torch_train import digits_cnn  # noqa: E402


@pytest.fixture(scope="module")
def cnn():
    return digits_cnn(64)


def _errors(model, calib, unseen, **config):
    from edgeloop.graph import get_metadata
    from edgeloop.passes import Int8Static, PassData, apply_pass
    from edgeloop.search.unlabelled import evaluate_unlabelled, outputs_flat

    ref = outputs_flat(model, unseen)
    plain = apply_pass(model, Int8Static(), PassData(x_calib=calib))
    refined = apply_pass(model, Int8Static(**config), PassData(x_calib=calib))
    return (evaluate_unlabelled(plain, unseen, ref, "fidelity"), evaluate_unlabelled(refined, unseen, ref, "fidelity"),
            get_metadata(refined))


def test_bias_correction_lowers_the_output_error(cnn):
    before, after, meta = _errors(*cnn, bias_correction=True)
    assert meta["int8_bias_correction"]["applied"] is True
    assert meta["int8_bias_correction"]["calib_error_after"] < meta["int8_bias_correction"]["calib_error_before"]
    assert after < before


def test_adaround_weight_rounding_lowers_the_output_error(cnn):
    before, after, meta = _errors(*cnn, weight_rounding="adaround", rounding_iters=80)
    assert meta["int8_weight_rounding"]["applied"] is True and meta["int8_weight_rounding"]["layers"] >= 3
    assert after < before


def test_bad_weight_rounding_is_a_usage_error(cnn):
    from edgeloop.errors import UsageError
    from edgeloop.passes import Int8Static, PassData, apply_pass

    with pytest.raises(UsageError, match="weight_rounding must be"):
        apply_pass(cnn[0], Int8Static(weight_rounding="up"), PassData(x_calib=cnn[1]))
