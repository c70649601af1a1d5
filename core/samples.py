"""Sample predictions a user can judge by eye (issue 14, retrain page): a few images of the eval split,
each saved as one PNG with two panels, the model's prediction overlaid on the image (left) beside the
ground truth overlaid the same way (right), in the dataset's class colours. Ignored pixels are not
coloured. The images are the first ``n`` of the eval split (the split the report's mIoU is on).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data import SegData, normalize
from .overlay import overlay, side_by_side
from .specs import Normalization
from .train import forward_logits

SAMPLE_NAME = "sample_{i}.png"
"""Artifact name of the i-th sample (0-based)."""


@torch.no_grad()
def save_samples(model: nn.Module, data: SegData, norm: Normalization, palette: list[list[int]], out_dir: Path,
                 n: int, device: torch.device) -> list[str]:
    """Write ``n`` (at most the split's size) sample PNGs into ``out_dir``; returns their file names."""
    n = min(n, len(data))
    if n <= 0:
        return []
    model.eval()
    x = normalize(data.images[:n], norm).to(device)
    pred = torch.cat([forward_logits(model, x[i:i + 1]).argmax(1) for i in range(n)]).cpu().numpy()
    names = []
    for i in range(n):
        img = data.images[i].permute(1, 2, 0).numpy()
        gt = data.masks[i].numpy().astype(np.int64)
        panels = side_by_side(overlay(img, pred[i], palette, data.ignore_index), overlay(img, gt, palette, data.ignore_index))
        name = SAMPLE_NAME.format(i=i)
        Image.fromarray(panels).save(out_dir / name, optimize=True)
        names.append(name)
    return names
