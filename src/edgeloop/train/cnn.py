"""A small image CNN trained with PyTorch on the CPU.

``build_cnn(**config["arch"])`` rebuilds the architecture from the config
recorded in the model's metadata (``trainer.config``), so ``improve`` can refit
it (the trained weights are in the .pt2 beside the model).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def build_cnn(in_channels: int, n_classes: int, height: int, width: int, widths: tuple[int, int] = (8, 16)):
    import torch.nn as nn

    c1, c2 = widths
    h, w = height // 4, width // 4  # two 2x2 max-pools
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * h * w, n_classes),
    )


class CNNClassifier:
    """scikit-learn-like wrapper: ``fit`` returns self, learned state ends in ``_``."""

    def __init__(self, epochs: int = 4, batch_size: int = 64, lr: float = 2e-3, widths: tuple[int, int] = (8, 16),
                 seed: int = 0, threads: int | None = None):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.widths = widths
        self.seed = seed
        self.threads = threads

    def config(self) -> dict[str, Any]:
        return {"builder": "edgeloop.train.cnn.build_cnn", "arch": dict(self.arch_), "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed}

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int,
            on_epoch: Callable[[int, float], None] | None = None) -> "CNNClassifier":
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        _, c, h, w = x.shape
        self.arch_ = {"in_channels": int(c), "n_classes": int(n_classes), "height": int(h), "width": int(w),
                      "widths": list(self.widths)}
        net = build_cnn(c, n_classes, h, w, tuple(self.widths))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs * -(-len(x) // self.batch_size)))
        loss_fn = torch.nn.CrossEntropyLoss()
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(y.astype(np.int64))
        gen = torch.Generator().manual_seed(self.seed)
        net.train()
        for epoch in range(self.epochs):
            order = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for start in range(0, len(xt), self.batch_size):
                idx = order[start:start + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            if on_epoch is not None:
                on_epoch(epoch + 1, total / len(xt))
        net.eval()
        self.net_ = net
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        import torch

        outs = []
        with torch.no_grad():
            for start in range(0, len(x), 1024):
                outs.append(self.net_(torch.from_numpy(np.ascontiguousarray(x[start:start + 1024],
                                                                           dtype=np.float32))).numpy())
        return np.concatenate(outs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decision_function(x).argmax(axis=1)

    def export(self, path) -> Any:
        """Save the net as a torch.export archive (.pt2) with a batch-1 input; returns the ExportedProgram."""
        import torch

        a = self.arch_
        example = torch.zeros(1, a["in_channels"], a["height"], a["width"])
        program = torch.export.export(self.net_.eval(), (example,))
        torch.export.save(program, str(path))
        return program
