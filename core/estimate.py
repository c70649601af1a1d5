"""What a search needs before it starts (issue "search speed"): memory from a forward on the meta
device (no memory, no compute), and a batch, then crop, fallback when a GPU is too small.

The estimate counts what training keeps: the weights with their gradients and SGD momentum, α and the
GGM with Adam's two moments, and the activations saved for backward (each storage once) at the search
crop, times the batch. It is an estimate of the dominant terms, not of the allocator's peak: workspace,
fragmentation and the data loader come on top (``OVERHEAD``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from .network import SuperNet
from .specs import GGMConfig, NetworkConfig, SearchConfig

FP32 = 4
OVERHEAD = 1.25  # allocator, cuDNN workspaces, temporaries of the backward: on top of the counted terms
MIN_BATCH = 2  # BatchNorm in the supernet needs more than one sample per step
CROP_STEP = 32  # a fallback crop's sides are multiples of this (the supernet's deepest stride at 3 reductions)
MIN_CROP = 64  # the smallest side a fallback crop goes to


def saved_bytes(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """Bytes of the tensors one forward of ``model`` (a module or any function of ``x``) saves for backward, each
    storage counted once."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st._cdata] = max(seen.get(st._cdata, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


@dataclass(frozen=True)
class SearchEstimate:
    weight_params: int
    arch_params: int
    saved_bytes_per_image: int  # at the search crop
    crop: tuple[int, int]
    batch: int

    @property
    def state_bytes(self) -> int:
        """Weights + gradients + SGD momentum; α/GGM + gradients + Adam's two moments."""
        return FP32 * (3 * self.weight_params + 4 * self.arch_params)

    def peak_bytes(self, batch: int | None = None) -> int:
        b = self.batch if batch is None else batch
        return int(OVERHEAD * (self.state_bytes + b * self.saved_bytes_per_image))

    def as_dict(self) -> dict:
        return {**asdict(self), "crop": list(self.crop), "state_bytes": self.state_bytes,
                "peak_bytes": self.peak_bytes(), "overhead_factor": OVERHEAD}


def estimate_search(net: NetworkConfig, ggm: GGMConfig, search: SearchConfig, crop: tuple[int, int]) -> SearchEstimate:
    """Build the supernet on the meta device and run one training forward at ``crop``, batch 1."""
    with torch.device("meta"):
        model = SuperNet(net, ggm, search.ops, search.shared_cells, search.gumbel, search.gumbel_tau,
                         search.batched_cells).train()
        x = torch.empty(1, 3, *crop)
    per_image = saved_bytes(model, x)
    return SearchEstimate(weight_params=sum(p.numel() for p in model.weight_parameters()),
                          arch_params=sum(p.numel() for p in model.arch_parameters()),
                          saved_bytes_per_image=per_image, crop=tuple(crop), batch=search.batch_size)


def fit_batch(est: SearchEstimate, capacity_bytes: int) -> tuple[int, str | None]:
    """The largest batch ≤ the requested one (halving, not below ``MIN_BATCH``) whose estimate fits
    ``capacity_bytes``; with the reason when it had to fall back. Raises when even ``MIN_BATCH`` does not fit."""
    batch = est.batch
    while batch > MIN_BATCH and est.peak_bytes(batch) > capacity_bytes:
        batch = max(MIN_BATCH, batch // 2)
    if est.peak_bytes(batch) > capacity_bytes:
        raise MemoryError(f"the search needs about {est.peak_bytes(batch) / 2**30:.1f} GiB at batch {batch} and "
                          f"crop {est.crop[0]}x{est.crop[1]}, the device has {capacity_bytes / 2**30:.1f} GiB free: "
                          "lower search.crop_height/crop_width or network.init_channels")
    if batch == est.batch:
        return batch, None
    return batch, (f"batch {est.batch} needs about {est.peak_bytes() / 2**30:.1f} GiB, the device has "
                   f"{capacity_bytes / 2**30:.1f} GiB free: searching with batch {batch} "
                   f"({est.peak_bytes(batch) / 2**30:.1f} GiB)")


@dataclass(frozen=True)
class Fit:
    """What the search runs with on a device of ``capacity_bytes``: the batch, the crop, the estimate at them."""
    batch: int
    crop: tuple[int, int]
    estimate: SearchEstimate
    reason: str | None  # None: as requested


def _smaller_crop(crop: tuple[int, int], scale: float) -> tuple[int, int]:
    """Both sides times ``scale``, down to a multiple of ``CROP_STEP`` and at least one step smaller (not
    below ``MIN_CROP``, nor above the side itself)."""
    return tuple(min(side, max(MIN_CROP, min(int(side * scale) // CROP_STEP * CROP_STEP, side - CROP_STEP)))
                 for side in crop)  # type: ignore[return-value]


def fit_search(net: NetworkConfig, ggm: GGMConfig, search: SearchConfig, crop: tuple[int, int],
               capacity_bytes: int) -> Fit:
    """The batch (halving to ``MIN_BATCH``, :func:`fit_batch`), then the crop (both sides shrunk to multiples of
    ``CROP_STEP``, not below ``MIN_CROP``, each re-estimated on the meta device) at which the search fits
    ``capacity_bytes``. Raises, naming the settings to lower, when the smallest crop at ``MIN_BATCH`` does not."""
    est = estimate_search(net, ggm, search, crop)
    if est.peak_bytes(min(est.batch, MIN_BATCH)) <= capacity_bytes:  # a smaller batch (or none) is enough
        batch, reason = fit_batch(est, capacity_bytes)
        return Fit(batch, tuple(crop), est, reason)
    first = est
    while True:
        acts = capacity_bytes / OVERHEAD - est.state_bytes  # what MIN_BATCH images may save
        need = MIN_BATCH * est.saved_bytes_per_image
        smaller = _smaller_crop(est.crop, (max(acts, 0.0) / need) ** 0.5 if need else 1.0)
        if smaller == est.crop:  # at MIN_CROP (or the data's own size) already
            raise MemoryError(f"the search needs about {est.peak_bytes(MIN_BATCH) / 2**30:.1f} GiB even at batch "
                              f"{MIN_BATCH} and crop {est.crop[0]}x{est.crop[1]}, the device has "
                              f"{capacity_bytes / 2**30:.1f} GiB free: lower network.init_channels, network.nodes "
                              f"or network.num_cells, or use a device with more memory")
        too_big, est = est.crop, estimate_search(net, ggm, search, smaller)
        if est.peak_bytes(MIN_BATCH) <= capacity_bytes:
            grew = True
            while grew:  # the estimate is not quite linear in the pixels: take back the steps that still fit
                grew = False
                for i in range(2):  # each side on its own: one may have room the other has not
                    if smaller[i] + CROP_STEP > too_big[i]:
                        continue
                    grown = (smaller[0] + CROP_STEP, smaller[1]) if i == 0 else (smaller[0], smaller[1] + CROP_STEP)
                    bigger = estimate_search(net, ggm, search, grown)
                    if bigger.peak_bytes(MIN_BATCH) <= capacity_bytes:
                        smaller, est, grew = grown, bigger, True
            return Fit(MIN_BATCH, smaller, est,
                       f"batch {first.batch} at crop {first.crop[0]}x{first.crop[1]} needs about "
                       f"{first.peak_bytes() / 2**30:.1f} GiB and batch {MIN_BATCH} about "
                       f"{first.peak_bytes(MIN_BATCH) / 2**30:.1f} GiB, the device has {capacity_bytes / 2**30:.1f} "
                       f"GiB free: searching with batch {MIN_BATCH} at crop {smaller[0]}x{smaller[1]} "
                       f"({est.peak_bytes(MIN_BATCH) / 2**30:.1f} GiB)")
