"""What a search needs before it starts (issue "search speed"): memory from a forward on the meta
device (no memory, no compute), and a batch fallback when a GPU is too small.

The estimate counts what training keeps: the weights with their gradients and SGD momentum, α and the
GGM with Adam's two moments, and the activations saved for backward (each storage once) at the search
crop, times the batch. It is an estimate of the dominant terms, not of the allocator's peak: workspace,
fragmentation and the data loader come on top (``OVERHEAD``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .network import SuperNet
from .specs import GGMConfig, NetworkConfig, SearchConfig

FP32 = 4
OVERHEAD = 1.25  # allocator, cuDNN workspaces, temporaries of the backward: on top of the counted terms
MIN_BATCH = 2  # BatchNorm in the supernet needs more than one sample per step


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors one forward of ``model`` saves for backward, each storage counted once."""
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
