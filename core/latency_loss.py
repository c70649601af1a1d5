"""The latency term of the architecture loss (GAS.md §4): λ · f(LAT / T)."""
from __future__ import annotations

import torch
from torch import nn

from .specs import LatencyConfig


class LatencyPenalty(nn.Module):
    """``budget`` form [ours]: f(r) = (r - 1) above the budget, slope·(1 - r) below it, so the search
    is pulled toward the budget T (not to the cheapest network) and pushed hard when over it.
    ``paper`` form [likely]: λ · LAT / T, plain minimisation (dimensionless, on the budget form's scale)."""

    def __init__(self, cfg: LatencyConfig):
        super().__init__()
        self.budget_ms, self.weight, self.form, self.slope = cfg.budget_ms, cfg.weight, cfg.form, cfg.under_budget_slope

    def forward(self, latency_ms: torch.Tensor) -> torch.Tensor:
        r = latency_ms / self.budget_ms
        if self.form == "paper":
            return self.weight * r
        return self.weight * torch.where(r >= 1, r - 1, self.slope * (1 - r))
