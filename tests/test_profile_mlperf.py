"""The planner on real MLPerf Tiny int8 models, against TFLite Micro's planned activations.

TFLite Micro's recording allocator plans 16,000 bytes of activations for the
KWS DS-CNN and 768 bytes for the AD autoencoder (../shared/mlperf-tiny/README.md).
The int8 QDQ kernels must be planned as integer tensors for these to hold.
"""

from __future__ import annotations

import pytest

import edgeloop
from edgeloop.profile import profile_model
from edgeloop.profile.memory import plan_model


@pytest.fixture(scope="module")
def kws(mlperf_dir):
    return edgeloop.load(mlperf_dir / "kws_ref_model.tflite")


@pytest.fixture(scope="module")
def ad(mlperf_dir):
    return edgeloop.load(mlperf_dir / "ad01_int8.tflite")


def test_kws_planned_peak_matches_tflite_micro(kws):
    p = plan_model(kws)
    assert p.peak_bytes <= 16000
    # without in-place execution, as TFLite Micro: two 25x5x64 int8 feature maps at once
    assert plan_model(kws, inplace=False).peak_bytes == 2 * 25 * 5 * 64
    # in place: the input and the first conv's output; every later conv overwrites its input
    assert p.peak_bytes == 49 * 10 + 25 * 5 * 64
    # every activation is int8 (an in-place conv's scratch holds int16 input values)
    assert all(b.dtype == "int8" for b in p.buffers if "#scratch" not in b.name)


def test_ad_planned_peak_matches_tflite_micro(ad):
    p = plan_model(ad)
    assert p.peak_bytes <= 768
    assert p.peak_bytes == 640 + 128  # the input and the first hidden layer


def test_kws_profile_numbers(kws):
    r = profile_model(kws, latency=False)
    assert r["precision"] == "int8"
    # conv 10x4 (320,000) + 4 x (depthwise 3x3 72,000 + pointwise 512,000) + FC 64x12,
    # plus the 25x5x64 average pool and the 12-way softmax
    convs = 1 * 64 * 25 * 5 * 10 * 4 + 4 * (64 * 25 * 5 * 9 + 64 * 25 * 5 * 64) + 64 * 12
    assert r["macs"] == convs + 25 * 5 * 64 + 12
    assert r["weight_bytes_by_dtype"]["int8"] >= (64 * 10 * 4 + 4 * (64 * 9 + 64 * 64) + 64 * 12)


def test_ad_profile_numbers(ad):
    r = profile_model(ad, latency=False)
    assert r["precision"] == "int8"
    dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    assert r["macs"] == sum(a * b for a, b in zip(dims, dims[1:]))
    assert r["params"] == sum(a * b + b for a, b in zip(dims, dims[1:]))
