"""Segmentation metrics from a confusion matrix (rows = ground truth, columns = prediction).

Pixels whose target is ``ignore_index`` (or outside ``0..num_classes-1``) count nowhere.

Absent-class convention (NaN-free): a class with an empty union (absent from both the ground truth
and the predictions of everything evaluated) has an undefined IoU. It is reported as ``None`` in
:func:`summarize` and left out of the mean; :func:`iou_per_class` gives 0 for it together with a
``present`` mask. When no class is present at all, mIoU is 0.0.
"""
from __future__ import annotations

from typing import Sequence

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int) -> torch.Tensor:
    """int64 ``[C, C]`` counts of (target, pred) pairs, on the inputs' device (one bincount)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_per_class(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(IoU float64 ``[C]`` with 0 where undefined, ``present`` bool ``[C]`` = union > 0)."""
    c = conf.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    present = union > 0
    return torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp)), present


def mean_iou(conf: torch.Tensor) -> float:
    """Mean IoU over the present classes (see the module's absent-class convention)."""
    iou, present = iou_per_class(conf)
    return float(iou[present].mean()) if bool(present.any()) else 0.0


def pixel_accuracy(conf: torch.Tensor) -> float:
    """Correct / counted pixels (0.0 when nothing was counted)."""
    total = int(conf.sum())
    return float(conf.diag().sum()) / total if total else 0.0


def trivial_baseline(conf: torch.Tensor, names: Sequence[str]) -> dict:
    """What predicting the most frequent ground-truth class everywhere scores on the same pixels (its
    confusion matrix put through the same metrics), with every class's pixel frequency: the number a
    model must beat before its mIoU means anything."""
    gt = conf.sum(dim=1)
    total = int(gt.sum())
    top = int(gt.argmax())
    const = torch.zeros_like(conf)
    const[:, top] = gt
    return {"most_frequent_class": names[top], "miou": mean_iou(const), "pixel_acc": pixel_accuracy(const),
            "class_frequency": {name: (int(c) / total if total else 0.0) for name, c in zip(names, gt)}}


CONFUSION_MAX_CLASSES = 64
"""Up to this many classes an evaluation keeps its confusion matrix (rows: ground truth, columns: prediction,
pixel counts) in the report; past it the matrix would outgrow the report."""


def summarize(conf: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """JSON-able ``{"miou", "pixel_acc", "per_class_iou": {name: iou | None}, "pixels", "trivial_baseline",
    "confusion"}`` (:func:`trivial_baseline`; ``confusion`` only up to :data:`CONFUSION_MAX_CLASSES`)."""
    iou, present = iou_per_class(conf.cpu())
    n = conf.shape[0]
    names = list(class_names) if class_names else [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for {n} classes")
    return {
        "miou": mean_iou(conf.cpu()),
        "pixel_acc": pixel_accuracy(conf.cpu()),
        "per_class_iou": {name: (float(v) if bool(p) else None) for name, v, p in zip(names, iou, present)},
        "pixels": int(conf.sum()),
        "trivial_baseline": trivial_baseline(conf.cpu(), names),
        **({"confusion": conf.cpu().tolist()} if n <= CONFUSION_MAX_CLASSES else {}),
    }


class ConfusionMeter:
    """Accumulates a confusion matrix over batches on one device."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` class ids (or ``[N,C,H,W]`` logits, argmax taken) and ``target``."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        self.conf += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(self.conf.device)

    def reset(self) -> None:
        self.conf.zero_()

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        return summarize(self.conf, class_names)
