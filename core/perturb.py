"""Perturbation-based scores of ops and edges (the ``pt`` derivation) [ours, after DARTS-PT].

Wang et al. (ICLR 2021, "Rethinking architecture selection in differentiable NAS") showed that the
magnitude of α does not tell how much the supernet relies on an op, and that removing the op and
measuring the supernet's loss does. This is what attempts 1–3 of docs/SEARCH_QUALITY.md measured on
CamVid: α' stays near uniform (entropy 0.98–0.999) and its argmax is no better than chance.

On the trained supernet, in eval mode, with the mixing weights softmax(α') of the search (so α', the
GGM and the latency loss still shape what is scored), on a fixed set of D_α images:

- ``op[k][e, o]``  = L(op o removed from edge e of cell k) − L(supernet): the loss the supernet
  loses without that op (its mixing weight set to 0, the others unchanged, as in DARTS-PT);
- ``edge[k][e]``   = L(edge e of cell k removed) − L(supernet).

L is the mean segmentation cross-entropy. Every perturbation is scored on the same images (a paired
difference, far less noisy than two independent losses), and the cells before k are computed once.
Unlike DARTS-PT there is no fine-tuning between decisions (a one-shot score): that is what a search's
budget affords. With shared cells (one α per cell type) the scores are averaged over the cells of a
type, so that every cell of a type gets the same architecture, as the ablation means.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from .derive import Preference
from .network import SuperNet
from .ops import OPS
from .search import SearchCancelled
from .train import autocast_for, segmentation_loss

Batch = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def perturbation_preference(model: SuperNet, batches: list[Batch], ignore_index: int,
                            progress: Callable[[dict], None] | None = None,
                            should_cancel: Callable[[], bool] | None = None) -> tuple[Preference, dict]:
    """Scores (see the module) and a report: evaluations, images, base loss, wall time, per-cell op means."""
    if not batches:
        raise ValueError("perturbation scores need at least one batch of images")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        weights = [w.detach() for w in model.op_weights(model.alpha_prime())]
        device = weights[0].device
        cached = []  # per batch: (size, target, stem, the (s0, s1) each cell receives)
        for x, y in batches:
            with autocast_for(device):
                stem = model.stem(x)
                s0 = s1 = stem
                inputs = []
                for cell, w in zip(model.cells, weights):
                    inputs.append((s0, s1))
                    s0, s1 = s1, cell(s0, s1, w)
            cached.append((x.shape[-2:], y, stem, inputs))
        pixels = [float((y != ignore_index).sum().clamp(min=1)) for _, y, _, _ in cached]

        def loss_with(k: int, wk: torch.Tensor) -> float:
            """Mean CE (pixel-weighted over the batches) with cell k mixed by ``wk``."""
            total = 0.0
            for (size, y, stem, inputs), n in zip(cached, pixels):
                s0, s1 = inputs[k]
                with autocast_for(device):
                    for j in range(k, len(model.cells)):
                        s0, s1 = s1, model.cells[j](s0, s1, wk if j == k else weights[j])
                    logits = model.head(s1, stem, size)
                total += float(segmentation_loss(logits, y, ignore_index)) * n
            return total / sum(pixels)

        base = loss_with(0, weights[0])
        kept = [o for o, name in enumerate(model.ops) if not OPS[name].zero]
        op_scores, edge_scores, evals = [], [], 1
        for k, w in enumerate(weights):
            if should_cancel is not None and should_cancel():
                raise SearchCancelled(f"cancelled while scoring cell {k} by perturbation")
            n_edges = w.shape[0]
            ops_k = torch.full(w.shape, -float("inf"))
            edge_k = torch.empty(n_edges)
            for e in range(n_edges):
                for o in kept:
                    wk = w.clone()
                    wk[e, o] = 0.0
                    ops_k[e, o] = loss_with(k, wk) - base
                wk = w.clone()
                wk[e] = 0.0
                edge_k[e] = loss_with(k, wk) - base
                evals += len(kept) + 1
            op_scores.append(ops_k)
            edge_scores.append(edge_k)
            if progress is not None:
                progress({"phase": "derive", "message": f"perturbation scores: cell {k + 1}/{len(weights)}",
                          "cell": k + 1, "cells": len(weights)})
    finally:
        model.train(was_training)
    if model.shared_cells:
        for red in (False, True):
            same = [k for k, p in enumerate(model.plans) if p.reduction == red]
            if same:
                op_mean = torch.stack([op_scores[k] for k in same]).mean(0)
                edge_mean = torch.stack([edge_scores[k] for k in same]).mean(0)
                for k in same:
                    op_scores[k], edge_scores[k] = op_mean.clone(), edge_mean.clone()
    report = {"images": sum(int(x.shape[0]) for x, _ in batches), "evaluations": evals,
              "base_loss": round(base, 5), "wall_s": round(time.perf_counter() - t0, 2),
              "shared_cells_averaged": model.shared_cells,
              "op_mean_loss_increase": [{model.ops[o]: round(float(s[:, o].mean()), 5) for o in kept}
                                        for s in op_scores]}
    return Preference(op_scores, edge_scores, "perturbation"), report


def scoring_batches(loader, images: int, batch_size: int) -> list[Batch]:
    """The first ``images`` images of ``loader`` in order (no augmentation, no randomness), in batches."""
    out, n = [], 0
    for x, y in loader.ordered(batch_size):
        take = min(images - n, int(x.shape[0]))
        out.append((x[:take], y[:take]))
        n += take
        if n >= images:
            break
    return out
