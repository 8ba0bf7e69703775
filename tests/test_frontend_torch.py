"""PyTorch importer: the ONNX graph must reproduce the module's outputs on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import edgeloop
from edgeloop.errors import ModelLoadError
from edgeloop.graph import get_metadata, run


class SmallNet(torch.nn.Module):
    """Conv + BN, a depthwise conv, a residual add, pooling and a classifier head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU())
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 8, 1)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = self.stem(x)
        y = y + torch.nn.functional.relu6(self.pw(self.dw(y)))  # residual branch
        y = self.pool(y)
        return torch.softmax(self.head(torch.flatten(y, 1)), dim=1)


@pytest.fixture(scope="module")
def digits_images():
    x, _ = load_digits(return_X_y=True)
    return (x[:64] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding it is really tested
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    return model


def _compare(onnx_model, module, images):
    sess_out = np.concatenate([run(onnx_model, images[i:i + 1])[0] for i in range(len(images))])
    with torch.no_grad():
        ref = module(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(sess_out, ref, rtol=1e-5, atol=1e-5)


def test_module_with_example_input(net, digits_images):
    model = edgeloop.load(net, torch.from_numpy(digits_images[:1]))
    assert get_metadata(model)["source_format"] == "torch"
    _compare(model, net, digits_images)
    assert not net.training  # the caller's mode is restored


def test_pt2_archive(tmp_path, net, digits_images):
    program = torch.export.export(net, (torch.from_numpy(digits_images[:1]),))
    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    model = edgeloop.load(path)
    _compare(model, net, digits_images)


def test_module_needs_example_input(net):
    with pytest.raises(ModelLoadError, match="example_input"):
        edgeloop.load(net)


def test_truncated_pt2_is_refused(tmp_path, net, digits_images):
    program = torch.export.export(net, (torch.from_numpy(digits_images[:1]),))
    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="torch.export archive"):
        edgeloop.load(path)


def test_module_of_an_exported_program(net, digits_images):
    # ExportedProgram.module() refuses eval()/train(); the importer must cope.
    program = torch.export.export(net, (torch.from_numpy(digits_images[:1]),))
    model = edgeloop.load(program.module(), torch.from_numpy(digits_images[:1]))
    _compare(model, net, digits_images)
