"""LUT validation (GAS.md §4, issue 11): random derived networks, LUT-predicted vs measured end to end.

A table *passes* when its median relative error is at most ``max_error``, its Spearman ρ at least
``min_rank_corr`` (``accurate``), and no end-to-end measurement stayed noisy (a noisy check proves
nothing either way). :mod:`core.lut_trust` re-measures a table that fails and caches only one that passes.

Calibration [ours]: a sum of operations timed one by one under-predicts a whole network by a nearly
constant factor (15-30 % on this CPU: dispatch between ops, caches that a lone op keeps warm), which
ranks networks correctly but puts the budget arithmetic of the derivation a quarter off. With
``calibrate``, the validation fits one scale (the median of measured/predicted) and judges the table by
its *leave-one-out* error: each network predicted with the scale fitted on the others, so the error a
job will see, not the error on the networks the scale was fitted to. A scale outside
[1/``max_scale``, ``max_scale``] fails the table: a table that far off is wrong, not miscalibrated.
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


def fit_scale(predicted: list[float], measured: list[float]) -> tuple[float, list[float]]:
    """The calibration scale (median of measured/predicted) and each network's leave-one-out relative error
    (predicted with the median ratio of the other networks; with one network, its own ratio)."""
    ratios = [m / p for p, m in zip(predicted, measured)]
    scale = statistics.median(ratios)
    errors = []
    for i, (p, m) in enumerate(zip(predicted, measured)):
        others = ratios[:i] + ratios[i + 1:] or ratios
        errors.append(abs(statistics.median(others) * p - m) / m)
    return scale, errors


def validate_table(latency: LatencyModel, samples: int, device: torch.device, precision: str, warmup: int,
                   repeats: int, seed: int, should_cancel: Callable[[], bool] = lambda: False, *,
                   noise: NoisePolicy | None = None, threads: Threads | None = None, max_error: float | None = None,
                   min_rank_corr: float | None = None, runtime: str = "torch-eager", calibrate: bool = False,
                   max_scale: float = 2.0) -> dict:
    """Measure ``samples`` random networks of the search space end to end against the LUT sum
    (``calibrate``: against the LUT sum times a fitted scale, judged by its leave-one-out error)."""
    gen = torch.Generator().manual_seed(seed)
    rows, genotypes = [], {}
    for _ in range(samples):
        if should_cancel():
            break
        g = random_genotype(latency.cfg, latency.ops, gen)
        m = measure_latency(DerivedNet(g), latency.height, latency.width, device, precision, warmup, repeats,
                            noise=noise, threads=threads, runtime=runtime)
        genotypes[g.arch_hash()] = g
        rows.append({"genotype_hash": g.arch_hash(), "predicted_ms": latency.genotype_ms(g),
                     "measured_ms": float(m["median_ms"]), "min_ms": m["min_ms"], "p90_ms": m["p90_ms"],
                     "noisy": m["noisy"], "attempts": m["attempts"]})
    rows = [r for r in rows if r["measured_ms"] > 0 and r["predicted_ms"] > 0]
    pred = [r["predicted_ms"] for r in rows]
    meas = [r["measured_ms"] for r in rows]
    errors = [abs(p - m) / m for p, m in zip(pred, meas)]
    rho = rank_correlation(pred, meas)
    rho = None if math.isnan(rho) else rho
    raw_med = statistics.median(errors) if errors else None
    med, calibration, scale_reasons = raw_med, None, []
    if calibrate and len(rows) >= 2:  # one network leaves nothing to check a scale against: judged raw
        scale, loo = fit_scale(pred, meas)
        med = statistics.median(loo)
        calibration = {"scale": scale, "fitted_on": len(rows), "method": "median of measured/predicted",
                       "error": "leave-one-out", "raw_median_rel_error": raw_med,
                       "raw_mean_signed_error": statistics.fmean((p - m) / m for p, m in zip(pred, meas))}
        for r, e in zip(rows, loo):
            r["loo_rel_error"] = e
        if not 1.0 / max_scale <= scale <= max_scale:
            scale_reasons = [f"calibration scale {scale:.2f} outside [{1 / max_scale:.2f}, {max_scale:.2f}]: "
                             f"the table is off by more than a calibration may correct; it is measured again (run the worker alone: a "
                             f"table timed under load or on another device is this far off)"]
    noisy = sum(r["noisy"] for r in rows)
    reasons = verdict(med, rho, noisy, max_error, min_rank_corr) + scale_reasons
    accurate = not (verdict(med, rho, 0, max_error, min_rank_corr) + scale_reasons)
    signed = [(p - m) / m for p, m in zip(pred, meas)]
    if calibration:
        signed = [(calibration["scale"] * p - m) / m for p, m in zip(pred, meas)]
    # the host-speed reference of later end-to-end readings (core/drift.py): the first quiet network
    quiet = [r for r in rows if not r["noisy"]]
    reference = ({"genotype": genotypes[quiet[0]["genotype_hash"]].model_dump(mode="json"),
                  "measured_ms": quiet[0]["measured_ms"]} if quiet else None)
    return {"samples": len(rows), "median_rel_error": med, "reference": reference, "rank_correlation": rho, "accurate": accurate,
            "mean_signed_error": statistics.fmean(signed) if signed else None,
            "calibration": calibration, "noisy_networks": noisy, "passed": not reasons, "reasons": reasons,
            "thresholds": {"max_error": max_error, "min_rank_corr": min_rank_corr,
                           "max_scale": max_scale if calibrate else None}, "networks": rows}
