"""Graph passes on a real digits CNN (torch -> edgeloop.load): quantization, pruning, layer removal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import torch  # noqa: E402


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), y


@pytest.fixture(scope="module")
def cnn():
    """A small CNN trained on the search's train split; returns (model, splits, data, net)."""
    import edgeloop
    from edgeloop.data import from_arrays, split_for_model
    from edgeloop.passes import PassData

    x, y = _digits()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(512, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    probe = edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8))
    splits = split_for_model(probe, from_arrays(x, y), "accuracy")
    xt = torch.tensor(splits.x("train"))
    yt = torch.tensor(splits.y("train"))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(15):
        net.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    model = edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8))
    return model, splits, PassData.from_splits(splits), net


def _acc(model, splits):
    from edgeloop.data import evaluate

    return evaluate(model, *splits["test"], "accuracy")


def _size(model):
    return len(model.SerializeToString())


def test_int8_static_is_3_5x_smaller_and_loses_at_most_one_point(cnn):
    from edgeloop.graph import get_metadata
    from edgeloop.passes import Int8Static, apply_pass

    model, splits, data, _ = cnn
    base = _acc(model, splits)
    assert base > 0.9
    for calib in ("minmax", "percentile", "entropy"):
        q = apply_pass(model, Int8Static(calibration=calib), data)
        assert _size(model) / _size(q) >= 3.5, calib
        assert base - _acc(q, splits) <= 0.01, calib
        # TFLite scheme: int8 weights per output channel (symmetric, zero point 0), int32 bias
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
        dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
        weights = [n for n in dq if inits[n.input[0]].ndim >= 2]
        assert weights and all(inits[n.input[0]].dtype == np.int8 for n in weights)
        assert all(inits[n.input[1]].size == inits[n.input[0]].shape[0] for n in weights)
        assert all(not inits[n.input[2]].any() for n in weights)
        assert any(inits[n.input[0]].dtype == np.int32 for n in dq)
        assert get_metadata(q)["recipe"] == [{"pass": "int8_static", "config": {
            "calibration": calib, "per_channel": True, "percentile": 99.999, "max_calib_samples": 256,
            "exclude": [], "op_types": [], "bias_correction": False,
            "weight_rounding": "nearest", "rounding_iters": 300, "rounding_seconds": 20.0, "choices": []}}]
    from edgeloop.profile import profile_model

    assert profile_model(q, latency=False)["precision"] == "int8"


def test_int8_dynamic_and_float16_shrink_and_agree(cnn):
    from edgeloop.graph import run
    from edgeloop.passes import Float16, Int8Dynamic, apply_pass

    model, splits, data, _ = cnn
    base = _acc(model, splits)
    d = apply_pass(model, Int8Dynamic(), data)
    assert _size(model) / _size(d) >= 3.5
    assert base - _acc(d, splits) <= 0.01
    h = apply_pass(model, Float16(), data)
    assert _size(model) / _size(h) >= 1.9
    x = splits.x("test")[:1]
    np.testing.assert_allclose(run(h, x)[0], run(model, x)[0], rtol=1e-2, atol=1e-2)
    assert _acc(h, splits) == pytest.approx(base, abs=0.004)


def test_mixed_precision_keeps_the_measured_layers_float_and_replays(cnn):
    from edgeloop.graph import get_metadata
    from edgeloop.passes import MixedPrecision, apply_pass, apply_recipe
    from edgeloop.passes.mixed import quantizable_layers, rank_sensitivity

    model, splits, data, _ = cnn
    layers = quantizable_layers(model)
    assert len(layers) == 4
    ranking = rank_sensitivity(model, data, "minmax", max_layers=4)
    assert sorted(n for n, _ in ranking) == sorted(layers)
    keep = (ranking[0][0],)
    m = apply_pass(model, MixedPrecision(float_layers=keep), data)
    # the shipped file has short node names: the kept layer is the one Conv/Gemm whose weight
    # is a float initializer, every other one reads its weight through DequantizeLinear
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    layers_out = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    float_ones = [n for n in layers_out if n.input[1] in inits and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT]
    assert len(float_ones) == 1
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in layers_out if n not in float_ones)
    meta = get_metadata(m)
    assert meta["float_layers"] == list(keep)
    again = apply_recipe(model, meta["recipe"], data)
    assert [onnx.numpy_helper.to_array(i).tobytes() for i in again.graph.initializer] == \
        [onnx.numpy_helper.to_array(i).tobytes() for i in m.graph.initializer]


def test_int8_static_without_calibration_data_is_a_usage_error(cnn):
    from edgeloop.errors import UsageError
    from edgeloop.passes import Int8Static, apply_pass

    with pytest.raises(UsageError, match="calibration"):
        apply_pass(cnn[0], Int8Static(), None)
    with pytest.raises(UsageError, match="calibration must be"):
        apply_pass(cnn[0], Int8Static(calibration="bogus"), cnn[2])


def test_channel_pruning_really_removes_channels(cnn):
    from edgeloop.graph import run
    from edgeloop.passes import ChannelPrune, Int8Static, apply_pass
    from edgeloop.passes.prune_structured import prunable_layers
    from edgeloop.profile import profile_model

    model, splits, data, _ = cnn
    assert len(prunable_layers(model)) == 3  # conv1, conv2 (through the Flatten) and fc1
    base = profile_model(model, latency=False)
    p = apply_pass(model, ChannelPrune(ratio=0.5), data)
    prof = profile_model(p, latency=False)
    assert _size(p) < 0.55 * _size(model)
    assert prof["macs"] < 0.55 * base["macs"]
    assert prof["peak_ram_bytes"] < base["peak_ram_bytes"]
    assert prof["params"] < 0.55 * base["params"]
    inits = {i.name: i for i in p.graph.initializer}  # shipped names are short: find weights by their Conv
    conv_out = [int(inits[n.input[1]].dims[0]) for n in p.graph.node if n.op_type == "Conv"]
    assert conv_out == [8, 16]
    assert run(p, splits.x("test")[:1])[0].shape == (1, 10)
    assert _acc(model, splits) - _acc(p, splits) <= 0.03  # least-squares refit of the next layer
    q = apply_pass(p, Int8Static(), data)
    assert _size(model) / _size(q) >= 8
    assert _acc(model, splits) - _acc(q, splits) <= 0.03
    # the history travels with the model, and replaying it gives the same weights
    from edgeloop.graph import get_metadata
    from edgeloop.passes import apply_recipe

    recipe = get_metadata(q)["recipe"]
    assert [r["pass"] for r in recipe] == ["channel_prune", "int8_static"]
    again = apply_recipe(model, recipe, data)
    assert [onnx.numpy_helper.to_array(i).tobytes() for i in again.graph.initializer] == \
        [onnx.numpy_helper.to_array(i).tobytes() for i in q.graph.initializer]


def test_magnitude_pruning_with_sparse_storage_shrinks_the_file_exactly(cnn):
    from edgeloop.graph import run
    from edgeloop.passes import Int8Static, MagnitudePrune, SparseStorage, apply_pass

    model, splits, data, _ = cnn
    p = apply_pass(model, MagnitudePrune(sparsity=0.7), data)
    ws = [onnx.numpy_helper.to_array(i) for i in p.graph.initializer if len(i.dims) >= 2 and
          np.prod(i.dims) >= 256]
    assert all(np.mean(w == 0) >= 0.69 for w in ws)
    q = apply_pass(p, Int8Static(), data)
    s = apply_pass(q, SparseStorage(), data)
    assert _size(s) < 0.75 * _size(q)
    x = splits.x("test")[:20]
    for i in range(len(x)):  # the stored form decodes to the same int8 weights: identical outputs
        np.testing.assert_array_equal(run(s, x[i:i + 1])[0], run(q, x[i:i + 1])[0])
    assert _acc(model, splits) - _acc(s, splits) <= 0.02


def test_layer_removal_drops_a_square_layer():
    import edgeloop
    from edgeloop.graph import run
    from edgeloop.passes import LayerRemoval, apply_pass
    from edgeloop.passes.layers import removable_layers
    from edgeloop.profile import profile_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    m = edgeloop.load(net, example_input=torch.zeros(1, 64))
    layers = removable_layers(m)
    assert len(layers) == 1
    r = apply_pass(m, LayerRemoval(layers=tuple(layers)))
    assert profile_model(r, latency=False)["params"] == profile_model(m, latency=False)["params"] - 32 * 33
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    with torch.no_grad():
        ref = net[4](net[1](net[0](torch.tensor(x)))).numpy()  # the network without its middle layer
    np.testing.assert_allclose(run(r, x)[0], ref, rtol=1e-5, atol=1e-5)


def test_channel_pruning_of_dead_channels_is_exact_through_depthwise_and_flatten():
    """Channels whose filters are all zero contribute nothing: removing them must not change the output."""
    import edgeloop
    from edgeloop.graph import run
    from edgeloop.passes import ChannelPrune, apply_pass

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 36, 5)).eval()
    with torch.no_grad():
        for c in (1, 3, 5, 7):
            net[0].weight[c] = 0
            net[0].bias[c] = 0
            net[2].bias[c] = 0
        for c in (0, 2, 4):
            net[4].weight[c] = 0
            net[4].bias[c] = 0
    m = edgeloop.load(net, example_input=torch.zeros(1, 1, 6, 6))
    p = apply_pass(m, ChannelPrune(ratio=0.5, refit=False))
    shapes = [tuple(i.dims) for i in p.graph.initializer if len(i.dims) >= 2]
    assert sorted(shapes) == sorted([(4, 1, 3, 3), (4, 1, 3, 3), (3, 4, 1, 1), (5, 3 * 36)])
    depthwise = next(n for n in p.graph.node if n.op_type == "Conv" and
                     any(a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 4
    x = np.random.default_rng(0).normal(size=(8, 1, 1, 6, 6)).astype(np.float32)
    for xi in x:
        with torch.no_grad():
            ref = net(torch.tensor(xi)).numpy()
        np.testing.assert_allclose(run(p, xi)[0], ref, rtol=1e-5, atol=1e-5)


def test_magnitude_pruning_fine_tunes_a_pytorch_source(cnn):
    import dataclasses

    from edgeloop.passes import MagnitudePrune, apply_pass

    model, splits, data, net = cnn
    with_source = dataclasses.replace(data, source=net)
    plain = apply_pass(model, MagnitudePrune(sparsity=0.9, refit=False), data)
    tuned = apply_pass(model, MagnitudePrune(sparsity=0.9, refit=False, finetune_epochs=2), with_source)
    ws = [onnx.numpy_helper.to_array(i) for i in tuned.graph.initializer if len(i.dims) >= 2 and
          np.prod(i.dims) >= 256]
    assert len(ws) == 3 and all(np.mean(w == 0) >= 0.89 for w in ws)  # the mask held through training
    assert _acc(tuned, splits) >= _acc(plain, splits)
    assert _acc(model, splits) - _acc(tuned, splits) <= 0.03
    assert float((net[7].weight == 0).float().mean()) < 0.5  # the source itself is not pruned
