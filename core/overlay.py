"""Class colours over an image, numpy only (the retrain's sample predictions, the dataset's sample masks)."""
from __future__ import annotations

import numpy as np

OVERLAY_ALPHA = 0.55
"""Weight of the class colour over the image."""
PANEL_GAP = 4
"""White pixels between two panels."""


def overlay(img: np.ndarray, mask: np.ndarray, palette, ignore_index: int) -> np.ndarray:
    """``img`` uint8 HxWx3 with ``mask``'s class colours blended in (ignored and unknown ids left as they are)."""
    pal = np.asarray(palette, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.int64)
    keep = (mask != ignore_index) & (mask >= 0) & (mask < len(pal))
    out = img.astype(np.float32)
    out[keep] = (1 - OVERLAY_ALPHA) * out[keep] + OVERLAY_ALPHA * pal[mask[keep]]
    return out.clip(0, 255).astype(np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    gap = np.full((left.shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)
