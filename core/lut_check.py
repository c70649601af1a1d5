"""LUT validation (GAS.md §4): random derived networks, LUT-predicted vs measured end to end."""
from __future__ import annotations

import statistics
from typing import Callable

import torch

from .derive import random_genotype
from .fps import measure_latency
from .latency import LatencyModel
from .network import DerivedNet


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's ρ (Pearson correlation of ranks; ties get distinct ranks in input order)."""
    if len(a) < 2:
        return float("nan")
    ra = torch.empty(len(a)).index_put_((torch.tensor(a).argsort(),), torch.arange(len(a), dtype=torch.float))
    rb = torch.empty(len(b)).index_put_((torch.tensor(b).argsort(),), torch.arange(len(b), dtype=torch.float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def validate_table(latency: LatencyModel, samples: int, device: torch.device, precision: str, warmup: int,
                   repeats: int, seed: int, should_cancel: Callable[[], bool] = lambda: False) -> dict:
    """Measure ``samples`` random networks of the search space end to end against the LUT sum."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(samples):
        if should_cancel():
            break
        g = random_genotype(latency.cfg, latency.ops, gen)
        measured = float(measure_latency(DerivedNet(g), latency.height, latency.width, device, precision, warmup,
                                         repeats)["median_ms"])
        rows.append({"genotype_hash": g.arch_hash(), "predicted_ms": latency.genotype_ms(g), "measured_ms": measured})
    pred = [r["predicted_ms"] for r in rows]
    meas = [r["measured_ms"] for r in rows]
    errors = [abs(p - m) / m for p, m in zip(pred, meas) if m > 0]
    return {"samples": len(rows), "median_rel_error": statistics.median(errors) if errors else None,
            "rank_correlation": rank_correlation(pred, meas), "networks": rows}
