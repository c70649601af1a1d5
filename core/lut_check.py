"""LUT validation (GAS.md §4, issue 11): random derived networks, LUT-predicted vs measured end to end.

A table *passes* when its median relative error is at most ``max_error``, its Spearman ρ at least
``min_rank_corr`` (``accurate``), and no end-to-end measurement stayed noisy (a noisy check proves
nothing either way). :mod:`core.lut_trust` re-measures a table that fails and caches only one that passes.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable

import torch

from .derive import random_genotype
from .fps import measure_latency
from .latency import LatencyModel
from .network import DerivedNet
from .noise import NoisePolicy
from .threads import Threads


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's ρ (Pearson correlation of ranks; ties get distinct ranks in input order)."""
    if len(a) < 2:
        return float("nan")
    ra = torch.empty(len(a)).index_put_((torch.tensor(a).argsort(),), torch.arange(len(a), dtype=torch.float))
    rb = torch.empty(len(b)).index_put_((torch.tensor(b).argsort(),), torch.arange(len(b), dtype=torch.float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float(((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12)).clamp(-1.0, 1.0))  # float32 rounding


def verdict(median_rel_error: float | None, rho: float | None, noisy: int, max_error: float | None,
            min_rank_corr: float | None) -> list[str]:
    """Why a validation fails (empty: it passes)."""
    reasons = []
    if noisy:
        reasons.append(f"{noisy} end-to-end measurement(s) stayed noisy")
    if median_rel_error is None:
        reasons.append("no network measured")
    elif max_error is not None and median_rel_error > max_error:
        reasons.append(f"median relative error {median_rel_error:.2f} > {max_error}")
    if rho is not None and min_rank_corr is not None and rho < min_rank_corr:
        reasons.append(f"rank correlation {rho:.2f} < {min_rank_corr}")
    return reasons


def validate_table(latency: LatencyModel, samples: int, device: torch.device, precision: str, warmup: int,
                   repeats: int, seed: int, should_cancel: Callable[[], bool] = lambda: False, *,
                   noise: NoisePolicy | None = None, threads: Threads | None = None, max_error: float | None = None,
                   min_rank_corr: float | None = None, runtime: str = "torch-eager") -> dict:
    """Measure ``samples`` random networks of the search space end to end against the LUT sum."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(samples):
        if should_cancel():
            break
        g = random_genotype(latency.cfg, latency.ops, gen)
        m = measure_latency(DerivedNet(g), latency.height, latency.width, device, precision, warmup, repeats,
                            noise=noise, threads=threads, runtime=runtime)
        rows.append({"genotype_hash": g.arch_hash(), "predicted_ms": latency.genotype_ms(g),
                     "measured_ms": float(m["median_ms"]), "min_ms": m["min_ms"], "p90_ms": m["p90_ms"],
                     "noisy": m["noisy"], "attempts": m["attempts"]})
    pred = [r["predicted_ms"] for r in rows]
    meas = [r["measured_ms"] for r in rows]
    errors = [abs(p - m) / m for p, m in zip(pred, meas) if m > 0]
    rho = rank_correlation(pred, meas)
    rho = None if math.isnan(rho) else rho
    med = statistics.median(errors) if errors else None
    noisy = sum(r["noisy"] for r in rows)
    reasons = verdict(med, rho, noisy, max_error, min_rank_corr)
    accurate = not verdict(med, rho, 0, max_error, min_rank_corr)
    return {"samples": len(rows), "median_rel_error": med, "rank_correlation": rho, "accurate": accurate,
            "mean_signed_error": statistics.fmean((p - m) / m for p, m in zip(pred, meas) if m > 0) if errors else None,
            "noisy_networks": noisy, "passed": not reasons, "reasons": reasons,
            "thresholds": {"max_error": max_error, "min_rank_corr": min_rank_corr}, "networks": rows}
