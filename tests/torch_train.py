"""The few-epoch Adam loop the shrink tests train their small digits CNNs with."""

from __future__ import annotations

import torch


def fit(net: torch.nn.Module, xt: torch.Tensor, yt: torch.Tensor, epochs: int, lr: float = 1e-2,
        batch: int = 64) -> torch.nn.Module:
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[perm[i:i + batch]]), yt[perm[i:i + batch]]).backward()
            opt.step()
    return net


def digits_cnn(n_calib: int):
    """A two-conv digits CNN trained 5 epochs on the first 900 digits, imported with edgeloop;
    returns (model, the first ``n_calib`` images for calibration, 400 images it never saw)."""
    import numpy as np
    from sklearn.datasets import load_digits

    import edgeloop

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(512, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    fit(net, torch.tensor(x[:900]), torch.tensor(y[:900]), epochs=5)
    return edgeloop.load(net, example_input=torch.zeros(1, 1, 8, 8)), x[:n_calib], x[1000:1400]
