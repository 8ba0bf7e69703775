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
