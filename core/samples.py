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
from .specs import Normalization
from .train import forward_logits

OVERLAY_ALPHA = 0.55
"""Weight of the class colour over the image in both panels."""
PANEL_GAP = 4
"""White pixels between the two panels."""
SAMPLE_NAME = "sample_{i}.png"
"""Artifact name of the i-th sample (0-based)."""


def _overlay(img: np.ndarray, mask: np.ndarray, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    colored = palette[np.clip(mask, 0, len(palette) - 1)]
    keep = (mask != ignore_index) & (mask < len(palette))
    out = img.astype(np.float32)
    out[keep] = (1 - OVERLAY_ALPHA) * out[keep] + OVERLAY_ALPHA * colored[keep]
    return out.clip(0, 255).astype(np.uint8)


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
    pal = np.asarray(palette, dtype=np.float32)
    names = []
    for i in range(n):
        img = data.images[i].permute(1, 2, 0).numpy()
        gt = data.masks[i].numpy().astype(np.int64)
        left = _overlay(img, pred[i].astype(np.int64), pal, data.ignore_index)
        right = _overlay(img, gt, pal, data.ignore_index)
        gap = np.full((img.shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
        name = SAMPLE_NAME.format(i=i)
        Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(out_dir / name, optimize=True)
        names.append(name)
    return names
