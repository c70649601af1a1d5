"""core.metrics: confusion matrix, IoU conventions, pixel accuracy."""
from __future__ import annotations

import math

import pytest
import torch

from core.metrics import ConfusionMeter, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy, summarize

IGN = 255


def test_confusion_counts_and_ignores() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, IGN, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 2]])
    conf = confusion_matrix(pred, target, 3, IGN)
    expect = torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    assert conf.dtype == torch.int64 and torch.equal(conf, expect)
    assert int(conf.sum()) == 7  # the ignored pixel counts nowhere, whatever was predicted there


def test_iou_values_by_hand() -> None:
    conf = torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    iou, present = iou_per_class(conf)
    # class0: tp1 / (2 + 2 - 1); class1: 2 / (3 + 3 - 2); class2: 1 / (2 + 2 - 1)
    assert torch.allclose(iou, torch.tensor([1 / 3, 2 / 4, 1 / 3], dtype=torch.float64))
    assert bool(present.all())
    assert mean_iou(conf) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert pixel_accuracy(conf) == pytest.approx(4 / 7)


def test_absent_class_is_none_and_left_out_of_mean() -> None:
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    conf = confusion_matrix(pred, target, 3, IGN)  # class 2 neither in target nor pred
    s = summarize(conf, ["a", "b", "c"])
    assert s["per_class_iou"]["c"] is None
    assert s["per_class_iou"]["a"] == pytest.approx(2 / 3) and s["per_class_iou"]["b"] == pytest.approx(1 / 2)
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2) and not math.isnan(s["miou"])
    # A class predicted but absent from the ground truth is present (IoU 0) and counts in the mean.
    conf2 = confusion_matrix(torch.tensor([2, 0]), torch.tensor([0, 0]), 3, IGN)
    assert summarize(conf2)["per_class_iou"]["class_2"] == 0.0
    assert mean_iou(conf2) == pytest.approx(0.25)
    assert mean_iou(torch.zeros(3, 3, dtype=torch.int64)) == 0.0
    assert pixel_accuracy(torch.zeros(3, 3, dtype=torch.int64)) == 0.0


def test_meter_accumulates_batches_and_takes_logits() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 5, 7), generator=g)
    target[0, 0] = 3  # ignore index below num_classes: class 3 is ignored here
    logits = torch.randn(6, 4, 5, 7, generator=g)
    meter = ConfusionMeter(4, 3)
    for i in range(0, 6, 2):
        meter.update(logits[i:i + 2], target[i:i + 2])
    whole = confusion_matrix(logits.argmax(1), target, 4, 3)
    assert torch.equal(meter.conf, whole)
    assert int(whole[3].sum()) == 0
    meter.reset()
    assert int(meter.conf.sum()) == 0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 2, IGN)


def test_trivial_baseline_by_hand() -> None:
    """Predicting the most frequent class everywhere: class 1 (3 of 7 pixels) -> IoU 3/7 for it, 0 for the
    two other present classes: mIoU 1/7, pixel accuracy 3/7; frequencies 2/7, 3/7, 2/7."""
    conf = torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    base = summarize(conf, ["a", "b", "c"])["trivial_baseline"]
    assert base["most_frequent_class"] == "b"
    assert base["miou"] == pytest.approx(1 / 7) and base["pixel_acc"] == pytest.approx(3 / 7)
    assert base["class_frequency"] == pytest.approx({"a": 2 / 7, "b": 3 / 7, "c": 2 / 7})
    # a model that does exactly the trivial thing scores exactly the baseline
    const = torch.tensor([[0, 2, 0], [0, 3, 0], [0, 2, 0]])
    s = summarize(const, ["a", "b", "c"])
    assert s["miou"] == pytest.approx(s["trivial_baseline"]["miou"])
