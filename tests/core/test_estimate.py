"""The memory estimate before a search (core/estimate.py): meta-device counts that agree with a real
forward, and the batch fallback (the GPU case is exercised with a given capacity: no GPU here)."""
from __future__ import annotations

import pytest
import torch

from core.estimate import CROP_STEP, MIN_BATCH, MIN_CROP, estimate_search, fit_batch, fit_search, saved_bytes
from core.network import SuperNet
from core.specs import GGMConfig, NetworkConfig, SearchConfig

NET = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=3)


def test_meta_estimate_equals_a_real_forwards_saved_bytes():
    est = estimate_search(NET, GGMConfig(), SearchConfig(batch_size=4), (48, 64))
    torch.manual_seed(0)
    real = SuperNet(NET, GGMConfig(), gumbel=True).train()
    assert est.saved_bytes_per_image == saved_bytes(real, torch.randn(1, 3, 48, 64))
    assert est.weight_params == sum(p.numel() for p in real.weight_parameters())
    assert est.arch_params == sum(p.numel() for p in real.arch_parameters())
    # activations grow with the pixels: 4x the pixels, about 4x the bytes (the head's fixed part aside)
    big = estimate_search(NET, GGMConfig(), SearchConfig(batch_size=4), (96, 128))
    assert 3.5 < big.saved_bytes_per_image / est.saved_bytes_per_image < 4.1
    assert est.peak_bytes(8) > est.peak_bytes(4) > est.state_bytes


def test_batched_cells_save_fewer_bytes_than_plain_ones():
    plain = estimate_search(NET, GGMConfig(), SearchConfig(batched_cells=False), (48, 64))
    batched = estimate_search(NET, GGMConfig(), SearchConfig(batched_cells=True), (48, 64))
    assert batched.saved_bytes_per_image < 0.85 * plain.saved_bytes_per_image
    assert batched.weight_params == plain.weight_params  # affine-free BNs have none: the same weights, batched


def test_fit_batch_halves_the_batch_to_the_capacity_and_says_so():
    est = estimate_search(NET, GGMConfig(), SearchConfig(batch_size=16), (48, 64))
    assert fit_batch(est, est.peak_bytes(16)) == (16, None)
    batch, reason = fit_batch(est, est.peak_bytes(5))
    assert batch == 4 and "batch 4" in reason and "batch 16" in reason
    with pytest.raises(MemoryError, match="crop_height"):
        fit_batch(est, est.peak_bytes(MIN_BATCH) - 1)


def test_fit_search_lowers_the_batch_then_the_crop_and_says_so():
    sc, crop = SearchConfig(batch_size=8), (256, 320)
    est = estimate_search(NET, GGMConfig(), sc, crop)
    fit = fit_search(NET, GGMConfig(), sc, crop, est.peak_bytes(8))
    assert (fit.batch, fit.crop, fit.reason) == (8, crop, None)
    fit = fit_search(NET, GGMConfig(), sc, crop, est.peak_bytes(MIN_BATCH))
    assert (fit.batch, fit.crop) == (MIN_BATCH, crop) and "batch 2" in fit.reason
    # half of what batch 2 needs at this crop: the crop shrinks, in steps of CROP_STEP, until batch 2 fits
    cap = est.peak_bytes(MIN_BATCH) // 2
    fit = fit_search(NET, GGMConfig(), sc, crop, cap)
    assert fit.batch == MIN_BATCH and fit.crop[0] < crop[0] and fit.crop[1] < crop[1]
    assert all(side % CROP_STEP == 0 and side >= MIN_CROP for side in fit.crop)
    assert fit.estimate == estimate_search(NET, GGMConfig(), sc, fit.crop)  # re-estimated at the crop it chose
    assert fit.estimate.peak_bytes(MIN_BATCH) <= cap
    # not smaller than it must be: one step more on either side would not fit
    for grown in ((fit.crop[0] + CROP_STEP, fit.crop[1]), (fit.crop[0], fit.crop[1] + CROP_STEP)):
        assert estimate_search(NET, GGMConfig(), sc, grown).peak_bytes(MIN_BATCH) > cap, grown
    assert f"crop {fit.crop[0]}x{fit.crop[1]}" in fit.reason and "crop 256x320" in fit.reason
    with pytest.raises(MemoryError, match="init_channels"):
        fit_search(NET, GGMConfig(), sc, crop, estimate_search(NET, GGMConfig(), sc, (MIN_CROP, MIN_CROP)).state_bytes)
