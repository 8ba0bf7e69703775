"""Smallest-first training for detection datasets (images with labelled boxes).

``train_detector(dataset, output, target=None, min_score=None, size=(96, 96), ...)``
tries, smallest first:

1. ``fomo``: a centroid detector in the FOMO style. A truncated MobileNet-like
   backbone (depthwise-separable convolutions, thin in the first layers at 1/2 and
   1/4 resolution, which hold most of the MACs; :func:`fomo_widths`) ends at 1/8 of
   the input resolution in a per-cell softmax over background + classes, channels
   last (the ``NHWC`` heatmap the int8 C backend runs). The width multiplier is the
   largest whose int8 weights and activations fit the target with room to spare
   and, on a Cortex-M (the thin variant), whose estimated instructions per frame
   (:func:`estimate_instructions`, calibrated on the C backend under QEMU) run at 10
   fps on the target's clock (:func:`instruction_budget`). Trained with a weighted
   cross-entropy on cell targets (the cell holding a box's centre gets the box's
   class), then quantized to int8 (QDQ, per-channel weights, calibrated on train
   images, the project's :mod:`edgeloop.passes.quantize`) with the heatmap left int8.
   Scored by centroid F1 (:func:`edgeloop.detect.metrics.centroid_f1`). Head kind
   ``centroids``. Its estimated fps in the candidate table comes from those
   instructions and the target's cycles per instruction.
2. ``yolo``: a small anchor-free box detector (a few hundred thousand
   parameters; for Linux boards). One stride-8 level; each cell predicts a
   centre offset, a width and height and sigmoid class scores, decoded in the
   graph to ``[1, 4 + nc, N]`` (cx, cy, w, h in input pixels), the ``yolov8``
   head kind. Kept float32. Scored by mAP@0.5.

Both train with PyTorch on the CPU with augmentation (horizontal flips, random
crops, colour jitter), a progress bar per epoch (loss and validation score) and
early stopping on the validation score (the best epoch's weights are kept).
Each candidate is scored on ``validation`` through the ONNX graph that would
ship (the same preprocessing and decoding as ``edgeloop predict``); ``test``
is touched once, by the chosen model. Without ``--candidates``, the float box
detector is not trained for a target it cannot fit (its weights beyond the
flash, or its activations beyond the RAM). The model carries its head
(:func:`edgeloop.detect.attach_head`), so ``predict`` needs no head file; a
centroid model reports the box of the cells it found around each centre.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeloop.data.readers import DataError
from edgeloop.errors import UsageError
from edgeloop.train.detect_data import (  # noqa: F401  (re-exported: the fine-tuner imports them from here)
    STRIDE, _augment, _cell_targets, _head_spec, _object_weight, _Split)

CANDIDATE_NAMES = ("fomo", "yolo")
METRIC_OF = {"fomo": "centroid_f1", "yolo": "map50"}
ALPHAS = (0.25, 0.35, 0.5)
THIN_ALPHAS = (0.25, 0.35, 0.5, 0.75, 1.0)  # the thin variant, on microcontrollers
DEFAULT_SIZE = (96, 96)
DEFAULT_EPOCHS = 200


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'96x96' -> (96, 96); a one-line UsageError for anything else."""
    if text is None:
        return None
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--size must be WIDTHxHEIGHT in pixels (e.g. 96x96), got '{text}'") from None
    if w <= 0 or h <= 0 or w % STRIDE or h % STRIDE:
        raise UsageError(f"--size: width and height must be positive multiples of {STRIDE}, got '{text}'")
    return w, h


# ------------------------------------------------------------------ networks

def _ch(c: int, alpha: float) -> int:
    return max(4, int(round(c * alpha / 4)) * 4)


def _dw(cin: int, cout: int, stride: int):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _backbone(widths: tuple[int, ...]):
    """MobileNetV1's first blocks, truncated at stride 8: a strided 3x3 stem, then depthwise-separable
    blocks (the full-resolution block after the stem is left out: it costs the most MACs).
    ``widths`` (c0, c1, c2, c3[, c4]): stem, then the blocks at 1/4, 1/4, 1/8 and 1/8 resolution
    (the last block widens c3 to c4 when given)."""
    import torch.nn as nn

    c0, c1, c2, c3 = widths[:4]
    c4 = widths[4] if len(widths) > 4 else c3
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU()),
        _dw(c0, c1, 2), _dw(c1, c2, 1), _dw(c2, c3, 2), _dw(c3, c4, 1))


def fomo_widths(alpha: float, thin: bool = False) -> tuple[int, ...]:
    """Channel widths of the FOMO backbone at width multiplier ``alpha``: MobileNetV1's
    (32, 64, 128, 256) times ``alpha``. ``thin`` (the microcontroller variant, sized by
    instructions per frame): halved in the first three layers and three quarters in the last.
    The layers at 1/2 and 1/4 resolution hold most of the MACs and run at the most instructions
    per MAC on a Cortex-M4 (few channels per pixel), so they are kept thin; the stem keeps 8
    channels at least (fewer lose the colour and edge filters)."""
    if not thin:
        return tuple(_ch(c, alpha) for c in (32, 64, 128, 256))
    return (max(8, _ch(16, alpha)), max(8, _ch(32, alpha)), _ch(64, alpha), _ch(128, alpha), _ch(192, alpha))


def build_fomo(n_classes: int, alpha: float, head_width: int = 32, thin: bool = False):
    """Backbone at width ``alpha`` (:func:`fomo_widths`) -> 1x1 conv -> 1x1 conv to background +
    classes (logits, [B, 1 + classes, H/8, W/8])."""
    import torch.nn as nn

    widths = fomo_widths(alpha, thin)
    return nn.Sequential(_backbone(widths), nn.Conv2d(widths[-1], head_width, 1), nn.ReLU(),
                         nn.Conv2d(head_width, n_classes + 1, 1))


def _box_net_class():
    import torch
    import torch.nn as nn

    class BoxNet(nn.Module):
        """Anchor-free, one stride-8 level. ``raw`` gives boxes (xyxy, input pixels) and class
        logits per cell for the loss; ``forward`` the [B, 4 + nc, N] the ``yolov8`` head reads."""

        def __init__(self, n_classes: int, width: int, height: int, widths=(24, 48, 96, 192), head=96):
            super().__init__()
            self.n_classes, self.width, self.height = n_classes, width, height
            self.backbone = _backbone(widths)
            c = widths[-1]
            self.neck = nn.Sequential(_dw(c, c, 1), nn.Conv2d(c, head, 3, 1, 1), nn.ReLU())
            self.box = nn.Conv2d(head, 4, 1)
            self.cls = nn.Conv2d(head, n_classes, 1)
            nn.init.constant_(self.cls.bias, -4.0)  # rare positives: start near "nothing here"
            gh, gw = height // STRIDE, width // STRIDE
            gy, gx = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                    indexing="ij")
            self.register_buffer("gx", gx.reshape(1, 1, gh, gw), persistent=False)
            self.register_buffer("gy", gy.reshape(1, 1, gh, gw), persistent=False)

        def _parts(self, x):
            f = self.neck(self.backbone(x))
            r = torch.sigmoid(self.box(f))
            cx = (self.gx + r[:, 0:1] * 2 - 0.5) * STRIDE
            cy = (self.gy + r[:, 1:2] * 2 - 0.5) * STRIDE
            w = r[:, 2:3] * self.width
            h = r[:, 3:4] * self.height
            return torch.cat([cx, cy, w, h], 1), self.cls(f)

        def raw(self, x):
            cxcywh, logits = self._parts(x)
            b = cxcywh.flatten(2).transpose(1, 2)                         # [B, N, 4]
            xyxy = torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)
            return xyxy, logits.flatten(2).transpose(1, 2)                # [B, N, nc]

        def forward(self, x):
            cxcywh, logits = self._parts(x)
            return torch.cat([cxcywh, torch.sigmoid(logits)], 1).flatten(2)

    return BoxNet


def _fused(module):
    """A copy with every Conv2d + BatchNorm2d pair folded into one Conv2d (torch's own folding),
    so the graph holds only the convolutions the int8 backends run."""
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fuse(mod):
        if isinstance(mod, nn.Sequential):
            items, out, i = list(mod), [], 0
            while i < len(items):
                if isinstance(items[i], nn.Conv2d) and i + 1 < len(items) and isinstance(items[i + 1], nn.BatchNorm2d):
                    out.append(fuse_conv_bn_eval(items[i], items[i + 1]))
                    i += 2
                else:
                    out.append(fuse(items[i]))
                    i += 1
            return nn.Sequential(*out)
        for name, child in list(mod.named_children()):
            setattr(mod, name, fuse(child))
        return mod

    return fuse(copy.deepcopy(module).eval())


def _with_softmax(net):
    """The shipped centroid graph: logits [B, C, h, w] -> channels last -> softmax over the last
    axis ([B, h, w, C], the ``NHWC`` heatmap the head names). Channels last because the int8
    C backend runs Softmax over the last axis only."""
    import torch.nn as nn

    class ChannelsLastSoftmax(nn.Module):
        def forward(self, y):
            return y.permute(0, 2, 3, 1).softmax(dim=-1)

    return nn.Sequential(net, ChannelsLastSoftmax())


def arch_estimate(net, size: tuple[int, int]) -> tuple[int, int]:
    """(parameters, peak int8 activation bytes) of a sequential net at batch 1: the largest
    input + output of any leaf layer, one byte per value (what the int8 arena holds)."""
    peak = [0]

    def hook(mod, inp, out):
        peak[0] = max(peak[0], int(inp[0].numel() + out.numel()))

    _trace(net, size, [m for m in net.modules() if not list(m.children())], hook)
    return sum(p.numel() for p in net.parameters()), peak[0]


def _trace(net, size: tuple[int, int], modules, hook) -> None:
    """One batch-1 forward pass of zeros through ``net`` with ``hook`` on each of ``modules``."""
    import torch

    w, h = size
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, h, w))
    finally:
        for hd in handles:
            hd.remove()


# Instructions per frame of the int8 FOMO graph on the Cortex-M4 (the C backend's fast kernels):
# each kernel costs a part per MAC and a part per output value (loop and requantisation overhead,
# which is what makes thin layers dear per MAC). Fitted on the per-layer profile of
# `edgeloop export MODEL --target stm32l4r5 --verify --json` (QEMU mps2-an386) of the 64x64 FOMO
# that tests/test_detect_train.py trains (within 5% of its measured total, checked there); the
# refit also gives the 96x96 FOMO chosen for stm32f746 within 0.1% (10,401,312 estimated,
# 10,411,750 measured).
M4_INSTRUCTIONS = {  # refit when the kernels change
    "input_quantize": 46.5,          # per float input value (QuantizeLinear)
    "conv_per_mac": 1.6,             # full 3x3 convolution (the stem)
    "conv_per_pixel": 180.0,         # ... per output pixel (im2col of the patch)
    "pointwise_per_mac": 1.0,        # 1x1 convolution
    "pointwise_per_value": 17.2,     # ... per output value
    "depthwise_per_value": 33.0,     # depthwise 3x3, stride 1, per output value
    "depthwise_s2_per_value": 55.0,  # depthwise 3x3, stride 2
    "heatmap_per_value": 575.0,      # int8 Softmax + dequantisation, per heatmap value
    "per_frame": 30_000.0,           # the rest (layout change, calls): total minus the layers
}
# CMSIS-NN's instructions per MAC on MLPerf Tiny KWS on the Cortex-M4 (7,697,382 instructions for
# 2.66 M MACs, ../shared/mlperf-tiny/README.md): the catalogue's MAC rates come from that model's
# published latency, so (clock / MAC rate) / this = the target's cycles per instruction.
KWS_INSTRUCTIONS_PER_MAC = 7_697_382 / 2.66e6
AIM_FPS = 10.0  # the centroid detector's aim on a microcontroller (issue 12: 10+ fps)


def estimate_instructions(net, size: tuple[int, int]) -> int:
    """Estimated Cortex-M4 instructions per frame of ``net`` exported int8 (see M4_INSTRUCTIONS):
    every Conv2d by its kind, plus the input quantisation and the heatmap softmax."""
    import torch.nn as nn

    k = M4_INSTRUCTIONS
    w, h = size
    total = [3 * w * h * k["input_quantize"] + k["per_frame"]]
    last = [0]

    def hook(mod, inp, out):
        values = out.numel()
        pixels = values // mod.out_channels
        macs = values * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        if mod.groups > 1 and mod.groups == mod.in_channels:
            total[0] += values * (k["depthwise_s2_per_value"] if max(mod.stride) > 1 else k["depthwise_per_value"])
        elif mod.kernel_size == (1, 1):
            total[0] += macs * k["pointwise_per_mac"] + values * k["pointwise_per_value"]
        else:
            total[0] += macs * k["conv_per_mac"] + pixels * k["conv_per_pixel"]
        last[0] = values

    _trace(net, size, [m for m in net.modules() if isinstance(m, nn.Conv2d)], hook)
    return int(round(total[0] + last[0] * k["heatmap_per_value"]))


def cycles_per_instruction(tgt) -> float | None:
    """Cycles per (QEMU-counted) instruction on a microcontroller target, from its calibrated int8
    MAC rate (see KWS_INSTRUCTIONS_PER_MAC); None for a target without a clock or an int8 rate."""
    rate = (tgt.macs_per_second or {}).get("int8") if tgt is not None else None
    if tgt is None or not str(tgt.arch).startswith("cortex-m") or not rate or not tgt.clock_mhz:
        return None
    return tgt.clock_mhz * 1e6 / rate / KWS_INSTRUCTIONS_PER_MAC


def instruction_budget(tgt, fps: float = AIM_FPS) -> int | None:
    """Instructions per frame a microcontroller runs at ``fps``: its clock / fps / its cycles per
    instruction (a Cortex-M7 at 216 MHz needs about 1.9 cycles per instruction, so 10 fps leaves
    about 11 M instructions, not 21.6 M). None off microcontrollers."""
    cpi = cycles_per_instruction(tgt)
    return None if cpi is None else int(tgt.clock_mhz * 1e6 / fps / cpi)


def estimate_fps(tgt, instructions: float) -> float | None:
    """Frames per second on ``tgt`` for a graph of ``instructions`` (Cortex-M4 count) per frame."""
    cpi = cycles_per_instruction(tgt)
    return None if cpi is None or not instructions else tgt.clock_mhz * 1e6 / (instructions * cpi)


def choose_arch(tgt, n_classes: int, size: tuple[int, int]) -> dict[str, Any]:
    """``{"alpha", "thin"}`` of the FOMO backbone for ``tgt``. On a Cortex-M (an instruction budget,
    :func:`instruction_budget`): the widest thin variant (THIN_ALPHAS) whose estimated
    instructions per frame run at AIM_FPS, whose int8 arena takes at most half the usable RAM and
    whose int8 weights at most half the flash; the narrowest when none does. Elsewhere the widest
    of ALPHAS that fits RAM and flash so; 0.35 (FOMO's usual width) without a target."""
    import torch

    if tgt is None:
        return {"alpha": 0.35, "thin": False}
    budget = instruction_budget(tgt)
    thin = budget is not None
    ladder = THIN_ALPHAS if thin else ALPHAS
    for alpha in reversed(ladder):
        with torch.random.fork_rng():  # sizing nets must not move the seeded RNG the trained net draws from
            net = build_fomo(n_classes, alpha, thin=thin)
        params, peak = arch_estimate(net, size)
        flash_ok = tgt.flash_bytes == 0 or params <= tgt.flash_bytes / 2
        fast_ok = budget is None or estimate_instructions(net, size) <= budget
        if peak <= tgt.usable_ram_bytes / 2 and flash_ok and fast_ok:
            return {"alpha": alpha, "thin": thin}
    return {"alpha": ladder[0], "thin": thin}


def choose_alpha(tgt, n_classes: int, size: tuple[int, int]) -> float:
    """The width multiplier :func:`choose_arch` picks for ``tgt``."""
    return choose_arch(tgt, n_classes, size)["alpha"]


def _giou(a, b):
    """Generalised IoU of paired xyxy boxes [K, 4] (hand-written: torchvision is not a
    dependency of the project, and this is six lines)."""
    import torch

    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-7
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + 1e-7
    iou = inter / union
    return iou - (hull - union) / hull


def _box_loss(net, x, boxes: list[np.ndarray], radius: float = 1.5):
    """Centre sampling (cells within ``radius`` cells of a box centre and inside the box are its
    positives; the smallest box wins a shared cell): BCE on every cell's class scores (target 1
    for a positive's class), 1 - GIoU on the positives' boxes."""
    import torch
    import torch.nn.functional as F

    pred_xyxy, logits = net.raw(x)
    n, cells, nc = logits.shape
    gh, gw = net.height // STRIDE, net.width // STRIDE
    cx = (np.arange(gw) + 0.5) * STRIDE
    cy = (np.arange(gh) + 0.5) * STRIDE
    px, py = np.meshgrid(cx, cy)
    px, py = px.reshape(-1), py.reshape(-1)
    cls_t = torch.zeros(n, cells, nc)
    pos_img, pos_cell, pos_box = [], [], []
    for k, b in enumerate(boxes):
        if not len(b):
            continue
        bx, by = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        inside = (px[:, None] >= b[None, :, 0]) & (px[:, None] <= b[None, :, 2]) \
            & (py[:, None] >= b[None, :, 1]) & (py[:, None] <= b[None, :, 3])
        near = (np.abs(px[:, None] - bx[None]) <= radius * STRIDE) & (np.abs(py[:, None] - by[None]) <= radius * STRIDE)
        ok = inside & near
        centre = np.clip((by // STRIDE).astype(int), 0, gh - 1) * gw + np.clip((bx // STRIDE).astype(int), 0, gw - 1)
        ok[centre, np.arange(len(b))] = True  # a box always owns the cell holding its centre
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        cost = np.where(ok, area[None], np.inf)
        owner = cost.argmin(1)
        has = np.isfinite(cost.min(1))
        for cell in np.nonzero(has)[0]:
            j = owner[cell]
            cls_t[k, cell, int(b[j, 4])] = 1.0
            pos_img.append(k)
            pos_cell.append(int(cell))
            pos_box.append(b[j, :4])
    n_pos = max(1, len(pos_img))
    loss = F.binary_cross_entropy_with_logits(logits, cls_t, reduction="sum") / n_pos
    if pos_img:
        pb = pred_xyxy[torch.tensor(pos_img), torch.tensor(pos_cell)]
        tb = torch.from_numpy(np.asarray(pos_box, np.float32))
        loss = loss + 2.0 * (1 - _giou(pb, tb)).mean()
    return loss


# ------------------------------------------------------------------ training

def _predict_torch(kind: str, net, split: _Split, head: dict, min_score: float | None) -> list[list[dict]]:
    """Detections of the float net on a split, decoded by the runtime's own decoder."""
    import torch

    from edgeloop.runtime.detect import decode

    outs = []
    net.eval()
    run = _with_softmax(net) if kind == "centroids" else net
    with torch.no_grad():
        for s in range(0, len(split.x), 64):
            outs.append(run(torch.from_numpy(split.x[s:s + 64])).numpy())
    y = np.concatenate(outs) if outs else np.zeros((0,))
    return [decode(head, {"out": y[k:k + 1]}, split.letterboxes[k], min_score) for k in range(len(split.x))]


THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _best_threshold(net, split: _Split, head: dict) -> tuple[float, float]:
    """(threshold, centroid F1) of the heatmap threshold scoring best on this (validation) split;
    the smallest wins ties. The threshold goes into the head (its ``min_score``)."""
    import torch

    from edgeloop.detect.metrics import centroid_f1
    from edgeloop.runtime.detect import decode

    net.eval()
    with torch.no_grad():
        y = _with_softmax(net)(torch.from_numpy(split.x)).numpy()
    best = (THRESHOLDS[0], -1.0)
    for t in THRESHOLDS:
        preds = [decode(head, {"out": y[k:k + 1]}, split.letterboxes[k], t) for k in range(len(y))]
        f1 = centroid_f1(preds, split.truths)["f1"]
        if f1 > best[1] + 1e-9:
            best = (t, f1)
    return best


def _score(metric: str, preds: list[list[dict]], truths: list[list[dict]]) -> float:
    from edgeloop.detect.metrics import centroid_f1, map50

    return centroid_f1(preds, truths)["f1"] if metric == "centroid_f1" else map50(preds, truths)


def _fit(net, loss_of: Callable, validate: Callable[[], float], train: _Split, *, epochs: int, lr: float,
         batch_size: int, seed: int, patience: int, on_epoch: Callable[[int, float, float], None]) -> dict:
    """Adam with a cosine schedule; after each epoch the validation score; stops when it has not
    improved for ``patience`` epochs and restores the best epoch's weights."""
    import torch

    gen = np.random.default_rng(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * -(-len(train.x) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    xt = torch.from_numpy(train.x)
    best, best_state, best_epoch, since = -1.0, None, 0, 0
    history = []
    for epoch in range(1, epochs + 1):
        net.train()
        order = gen.permutation(len(xt))
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            xb, bb = _augment(xt[idx], [train.boxes[i] for i in idx], gen)
            opt.zero_grad()
            loss = loss_of(net, xb, bb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.item()) * len(idx)
        val = float(validate())
        history.append({"epoch": epoch, "loss": total / len(xt), "validation": val})
        on_epoch(epoch, total / len(xt), val)
        if val > best + 1e-6:
            best, best_state, best_epoch, since = val, copy.deepcopy(net.state_dict()), epoch, 0
        elif best > 0:  # patience runs from the first epoch that finds anything
            since += 1
            if since >= patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return {"epochs_run": len(history), "best_epoch": best_epoch, "best_validation": best, "history": history,
            "early_stopped": len(history) < epochs}


def _export_onnx(module, size: tuple[int, int], where: str):
    import torch

    from edgeloop.frontends.torch import from_torch

    w, h = size
    return from_torch(module.eval(), torch.zeros(1, 3, h, w), where=where)


def _int8(model, train: _Split):
    from edgeloop.passes import PassData
    from edgeloop.passes.quantize import Int8Static, run_static

    return run_static(model, Int8Static(calibration="minmax", per_channel=True, max_calib_samples=128),
                      PassData(x_calib=train.x))


def _int8_heatmap(model):
    """The int8 graph with its heatmap left int8: the trailing DequantizeLinear is dropped, so the
    output is the int8 softmax the C decoder reads directly (per-cell argmax over int8 scores);
    :func:`edgeloop.detect.attach_head` records its scale and zero point (``output_quant``), with
    which ``predict`` turns it into probabilities."""
    import onnx

    g = model.graph
    out = g.output[0]
    dq = next((n for n in g.node if n.op_type == "DequantizeLinear" and out.name in n.output), None)
    if dq is None or sum(dq.input[0] in n.input for n in g.node) != 1:
        return model
    q_name = dq.input[0]
    g.node.remove(dq)
    for n in g.node:
        for k, name in enumerate(n.output):
            if name == q_name:
                n.output[k] = out.name
    out.type.tensor_type.elem_type = onnx.TensorProto.INT8
    return model


def _score_graph(model, kind_metric: str, ds, indices: list[int], min_score: float | None = None) -> dict:
    """Run the shipped graph as ``predict`` does (Detector: preprocess, run, decode) on a split."""
    from edgeloop.detect import Detector
    from edgeloop.detect.metrics import centroid_f1, map50

    det = Detector(model)
    preds = [det.detect(ds.image(i), min_score) for i in indices]
    truths = [ds.truths(i) for i in indices]
    out = {"centroid_f1": centroid_f1(preds, truths)["f1"]}
    if kind_metric == "map50":
        low = [det.detect(ds.image(i), 0.01) for i in indices] if min_score is None else preds
        out["map50"] = map50(low, truths)
    return out


def _train_candidate(name: str, ds, train: _Split, val: _Split, size, tgt, *, epochs: int, seed: int,
                     on_epoch) -> dict:
    import torch

    from edgeloop.detect import attach_head
    from edgeloop.runtime.detect import parse_head

    torch.manual_seed(seed)
    nc = len(ds.labels)
    w, h = size
    gh, gw = h // STRIDE, w // STRIDE
    if name == "fomo":
        arch = choose_arch(tgt, nc, size)
        alpha = arch["alpha"]
        net = build_fomo(nc, alpha, thin=arch["thin"])
        weight = torch.ones(nc + 1)
        weight[1:] = _object_weight(train, gh, gw)
        ce = torch.nn.CrossEntropyLoss(weight=weight)
        head_kind, lr = "centroids", 1e-2
        config = {"builder": "edgeloop.train.detect.build_fomo", "arch": {"n_classes": nc, **arch},
                  "object_weight": float(weight[1])}

        def loss_of(m, xb, bb):
            return ce(m(xb), _cell_targets(bb, gh, gw))
    else:
        net = _box_net_class()(nc, w, h)
        head_kind, lr = "yolov8", 5e-3
        config = {"builder": "edgeloop.train.detect.BoxNet", "arch": {"n_classes": nc, "width": w, "height": h}}
        loss_of = _box_loss
    head = parse_head(_head_spec(head_kind, ds.labels, size))
    metric = METRIC_OF[name]
    val_min = None if name == "fomo" else 0.01  # mAP ranks every detection; F1 uses the head's threshold

    def validate() -> float:
        if name == "fomo":
            return _best_threshold(net, val, head)[1]
        return _score(metric, _predict_torch(head_kind, net, val, head, val_min), val.truths)

    t0 = time.perf_counter()
    fit = _fit(net, loss_of, validate, train, epochs=epochs, lr=lr, batch_size=16, seed=seed,
               patience=max(10, epochs // 4), on_epoch=on_epoch)
    train_s = time.perf_counter() - t0
    spec = _head_spec(head_kind, ds.labels, size)
    if name == "fomo":
        spec["min_score"] = _best_threshold(net, val, head)[0]
    ship = _with_softmax(_fused(net)) if name == "fomo" else _fused(net)
    model = _export_onnx(ship, size, f"<{name} detector>")
    precision = "float32"
    if name == "fomo":
        model = _int8_heatmap(_int8(model, train))
        precision = "int8"
    model = attach_head(model, spec, where=f"{name} head")
    scores = _score_graph(model, metric, ds, val.indices)
    config.update(min_score=spec.get("min_score"), epochs=epochs, lr=lr, batch_size=16, seed=seed, precision=precision,
                  augmentation=["hflip", "crop 0.7-1.0", "colour jitter 0.7-1.3"])
    return {"net": net, "ship": ship, "model": model, "score": scores[metric], "metric": metric,
            "float_score": fit["best_validation"], "train_seconds": train_s, "fit": fit, "config": config,
            "description": (f"FOMO centroids, MobileNet-like alpha {config['arch']['alpha']} (widths "
                            f"{'-'.join(map(str, fomo_widths(config['arch']['alpha'], config['arch']['thin'])))}), int8"
                            if name == "fomo" else "anchor-free boxes (YOLO-style head), float32")}


def train_detector(dataset: Any, output: str | os.PathLike, *, target: str | None = None,
                   min_score: float | None = None, size: tuple[int, int] | str | None = None,
                   candidates: list[str] | None = None, seed: int = 0, epochs: int | None = None,
                   progress: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Train detectors smallest first; write the chosen one; return the report (module docstring).

    ``dataset``: a detection dataset folder, or the DetectionDataset
    :func:`edgeloop.data.store.load_dataset` returned for one."""
    import torch

    from edgeloop.train.detect_data import load_detection

    out = Path(output)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"the output must be an .onnx path, got '{out}'")
    size = parse_size(size) if isinstance(size, str) else (tuple(size) if size else DEFAULT_SIZE)
    if size[0] % STRIDE or size[1] % STRIDE:
        raise UsageError(f"--size: width and height must be positive multiples of {STRIDE}, got {size}")
    if min_score is not None and not 0 <= min_score <= 1:
        raise UsageError(f"--min-score for a detector (centroid F1, mAP@0.5) is between 0 and 1, got {min_score:g}")
    epochs = DEFAULT_EPOCHS if epochs is None else int(epochs)
    if epochs <= 0:
        raise UsageError("--epochs must be positive")
    pool = list(CANDIDATE_NAMES)
    if candidates:
        unknown = [c for c in candidates if c not in CANDIDATE_NAMES]
        if unknown:
            raise UsageError(f"unknown detection candidate '{unknown[0]}'; choose from {', '.join(CANDIDATE_NAMES)}")
        pool = [c for c in CANDIDATE_NAMES if c in candidates]
    tgt = None
    if target is not None:
        from edgeloop.hardware import get_target

        tgt = get_target(target)
    # a DetectionDataset already loaded (train_dataset loads it once) or a folder to load
    ds = dataset if getattr(dataset, "kind", None) == "detection" and hasattr(dataset, "records") \
        else load_detection(dataset)
    dataset = str(ds.path)
    tr_idx, va_idx, te_idx = ds.split("train"), ds.split("validation"), ds.split("test")
    if not tr_idx or not va_idx:
        raise DataError("the dataset has an empty train or validation split", where=str(dataset))
    if not any(ds.truths(i) for i in tr_idx):
        raise DataError("no boxes in the train split: a detector needs labelled objects to learn", where=str(dataset))
    # one intra-op thread unless told: these nets are small, and on a shared or busy CPU torch's
    # thread pool spins against other processes (measured 30x slower per step with 2 threads
    # under load on 2 cores)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        return _train_detector(dataset, ds, out, tgt, min_score, size, pool, seed, epochs, progress,
                               explicit=bool(candidates))
    finally:
        torch.set_num_threads(previous_threads)


def _box_misfit(tgt, n_classes: int, size: tuple[int, int]) -> str | None:
    """Why the float32 box detector cannot fit ``tgt`` (its weights beyond the flash, or its
    largest layer's float activations beyond the RAM), or None: checked before training, so a
    microcontroller target does not spend minutes on a model it cannot hold."""
    from edgeloop.hardware import format_bytes

    if tgt is None:
        return None
    w, h = size
    params, peak = arch_estimate(_box_net_class()(n_classes, w, h), size)
    if tgt.flash_bytes and params * 4 > tgt.flash_bytes:
        return f"its float32 weights ({format_bytes(params * 4)}) exceed {tgt.id}'s {format_bytes(tgt.flash_bytes)} flash"
    if peak * 4 > tgt.usable_ram_bytes:
        return (f"its float32 activations ({format_bytes(peak * 4)} in one layer) exceed {tgt.id}'s "
                f"{format_bytes(tgt.usable_ram_bytes)} RAM")
    return None


def _train_detector(dataset, ds, out: Path, tgt, min_score, size, pool, seed: int, epochs: int,
                    progress: bool, explicit: bool = False) -> dict[str, Any]:
    from edgeloop.train import _profile_row, _progress

    tr_idx, va_idx, te_idx = ds.split("train"), ds.split("validation"), ds.split("test")
    train = _Split(ds, tr_idx, size)
    val = _Split(ds, va_idx, size)

    rows: list[dict[str, Any]] = []
    fitted: dict[str, dict] = {}
    chosen = None
    with _progress(progress) as bar:
        for i, name in enumerate(pool):
            misfit = _box_misfit(tgt, len(ds.labels), size) if name == "yolo" and not explicit else None
            if misfit:  # asked for by name (--candidates), it is trained anyway and shown as not fitting
                rows.append({"name": name, "description": "", "skipped": f"not tried: {misfit}"})
                continue
            job = bar.add_task(f"training {name}", total=epochs) if bar is not None else None

            def on_epoch(e: int, loss: float, score: float, _n=name, _job=job) -> None:
                if bar is not None:
                    bar.update(_job, completed=e, description=f"training {_n} ({i + 1}/{len(pool)}): epoch {e}/"
                               f"{epochs}, loss {loss:.3f}, val {METRIC_OF[_n]} {score:.3f}")

            res = _train_candidate(name, ds, train, val, size, tgt, epochs=epochs, seed=seed, on_epoch=on_epoch)
            if bar is not None:
                bar.update(job, completed=epochs)
            prof = _profile_row(res["model"], tgt)
            lat = prof.get("est_latency_ms")
            row = {"name": name, "description": res["description"], "metric": res["metric"], "score": res["score"],
                   "float_score": res["float_score"], "train_seconds": res["train_seconds"], "converged": True,
                   "epochs_run": res["fit"]["epochs_run"], "best_epoch": res["fit"]["best_epoch"],
                   "early_stopped": res["fit"]["early_stopped"], **prof,
                   "est_fps": (1000.0 / lat) if lat else None, "est_basis": "macs" if lat else None}
            if name == "fomo":
                # the int8 centroid graph on a Cortex-M: from its calibrated instructions per frame
                row["est_instructions"] = estimate_instructions(res["net"], size)
                fps = estimate_fps(tgt, row["est_instructions"])
                if fps:
                    row.update(est_fps=fps, est_latency_ms=1000.0 / fps, est_basis="instructions")
            row["reached"] = min_score is not None and res["score"] >= min_score and row["fits"] is not False
            rows.append(row)
            fitted[name] = res
            if row["reached"]:
                chosen = name
                break
    for name in pool[len(rows):]:
        rows.append({"name": name, "description": "", "skipped": f"not tried: {chosen} already reached {min_score:g}"})
    if chosen is not None:
        summary = (f"chose {chosen}: the smallest detector reaching {METRIC_OF[chosen]} >= {min_score:g} on "
                   "validation" + (f" that fits {tgt.id}" if tgt else ""))
    else:
        tried = [r for r in rows if "skipped" not in r]
        pool_rows = [r for r in tried if r["fits"] is not False] or tried
        best = max(pool_rows, key=lambda r: r["score"])  # first (smallest) wins ties
        chosen = best["name"]
        if min_score is not None:
            summary = (f"no detector reached {min_score:g}" + (f" while fitting {tgt.id}" if tgt else "")
                       + f"; kept the best, {chosen} ({best['metric']} {best['score']:.4f})")
        else:
            summary = ("no --min-score: tried every detector" + ("" if tried == [r for r in rows] else " that can fit")
                       + f" and kept the best on validation, {chosen}")
        if tgt is not None and best["fits"] is False:
            summary += f" (it does not fit {tgt.id}: {'; '.join(best['reasons'])})"
    res = fitted[chosen]
    metric = METRIC_OF[chosen]
    # the test split, touched once: the chosen graph as predict runs it
    test = _score_graph(res["model"], metric, ds, te_idx) if te_idx else {}
    val_score = next(r for r in rows if r["name"] == chosen)["score"]
    source = _write(out, res, chosen, ds, metric, val_score, test, size)
    notes = []
    if chosen == "fomo":
        notes.append("a centroid model finds object centres: predict reports the box of the heatmap cells "
                     f"({STRIDE}x{STRIDE} input pixels each) around each centre, not the object's extent")
    est = next((r for r in rows if r.get("est_basis") == "instructions"), None)
    estimate_note = None
    if est is not None:
        estimate_note = (f"* {est['name']}: estimated from its calibrated Cortex-M4 instructions per frame "
                         f"(~{est['est_instructions'] / 1e6:.1f} M; `edgeloop export --verify` measures them) and "
                         f"{tgt.id}'s cycles per instruction; other rows from MACs and the target's calibrated "
                         "throughput. Estimates, not measurements.")
    return {"dataset": str(dataset), "dataset_checksum": ds.checksum, "task": "detection", "metric": metric,
            "estimate_note": estimate_note,
            "min_score": min_score, "target": tgt.id if tgt else None, "size": list(size), "candidates": rows,
            "chosen": chosen, "summary": summary, "warnings": notes,
            "test_score": test.get(metric), "test_metrics": test, "test_samples": len(te_idx),
            "output": str(out), "source": str(source)}


def _write(out: Path, res: dict, chosen: str, ds, metric: str, val: float, test: dict, size) -> Path:
    """The source (.pt2 of the float net as exported) beside the graph, each written atomically."""
    import tempfile

    import torch

    from edgeloop.fsutil import write_bytes_atomic
    from edgeloop.graph import save, set_metadata

    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.with_suffix(".pt2")
    w, h = size
    program = torch.export.export(res["ship"].eval(), (torch.zeros(1, 3, h, w),))
    with tempfile.TemporaryDirectory(prefix=".edgeloop-det-") as d:
        tmp = Path(d) / "m.pt2"
        torch.export.save(program, str(tmp))
        write_bytes_atomic(source, tmp.read_bytes())
    model = res["model"]
    set_metadata(model, task="detection", class_names=list(ds.labels), source=source.name, source_format="torch",
                 dataset=str(ds.path), dataset_checksum=ds.checksum,
                 trainer={"name": chosen, "family": "torch", "description": res["description"],
                          "config": res["config"], "training": {k: v for k, v in res["fit"].items()}},
                 metrics={"metric": metric, "validation": val, "test": test.get(metric), "test_all": test})
    save(model, out)
    return source
