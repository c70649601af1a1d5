"""The ``pt`` derivation's scores (core/perturb.py): exact, and able to find the op a task needs.

- The cached, per-cell evaluation is the supernet's own loss: the base loss and a perturbed loss equal
  a full forward of the supernet with the same mixing weights (fails on a wrong cached state, a wrong
  cell, or a perturbation that does not reach the forward).
- On the synthetic shift task of test_search_works.py, after weight training only (α frozen at
  uniform, where α's argmax carries no information), the scores rank the op the task needs first and
  the derived network carries it on most edges (fails on a flipped sign or on scores read from α).
- Shared cells get one architecture per cell type.
"""
from __future__ import annotations

import pytest
import torch

from core.cell import cell_edges
from core.derive import DERIVATIONS, Preference, derive, derive_genotype
from core.network import SuperNet
from core.ops import OPS as OP_SPECS
from core.perturb import perturbation_preference, scoring_batches
from core.specs import GGMConfig
from core.train import segmentation_loss
from test_search_works import IGNORE, NET, OPS, SEARCH, WINNER, make_searcher, shift_task
from test_search_works import table  # noqa: F401  (the module-scoped LUT fixture)


@pytest.fixture(scope="module")
def data():
    return shift_task(64, 0)


def _batches(data, n=16, bs=8):
    x = (data.images[:n].float() / 255.0 - 0.5) / 0.25
    y = data.masks[:n].long()
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]


def _full_loss(model: SuperNet, batches, cell: int | None = None, replace: torch.Tensor | None = None) -> float:
    """Pixel-weighted CE of a plain forward, cell ``cell`` mixed by ``replace`` through a pre-hook."""
    hook = None
    if cell is not None:
        hook = model.cells[cell].register_forward_pre_hook(lambda m, args: (args[0], args[1], replace))
    try:
        total, pixels = 0.0, 0.0
        with torch.no_grad():
            for x, y in batches:
                n = float((y != IGNORE).sum())
                total += float(segmentation_loss(model(x), y, IGNORE)) * n
                pixels += n
        return total / pixels
    finally:
        if hook is not None:
            hook.remove()


def test_scores_are_the_supernets_own_loss_differences(data):
    torch.manual_seed(0)
    model = SuperNet(NET, GGMConfig(), OPS).eval()
    with torch.no_grad():
        for a in model.alphas:
            a.copy_(torch.randn_like(a))  # away from uniform, so each cell's weights differ
    batches = _batches(data)
    pref, report = perturbation_preference(model, batches, IGNORE)
    base = _full_loss(model, batches)
    assert report["base_loss"] == pytest.approx(base, abs=1e-5)
    weights = [w.detach() for w in model.op_weights(model.alpha_prime())]
    o = model.ops.index(WINNER)
    for k, e in ((0, 1), (2, 3)):
        w = weights[k].clone()
        w[e, o] = 0.0
        assert float(pref.op[k][e, o]) == pytest.approx(_full_loss(model, batches, k, w) - base, abs=1e-5)
        w = weights[k].clone()
        w[e] = 0.0
        assert float(pref.edge[k][e]) == pytest.approx(_full_loss(model, batches, k, w) - base, abs=1e-5)
    none = [i for i, name in enumerate(model.ops) if OP_SPECS[name].zero]
    assert all(bool(torch.isinf(p[:, none]).all()) for p in pref.op)  # never chosen
    assert report["evaluations"] == 1 + NET.num_cells * len(cell_edges(NET.nodes)) * len(model.ops)
    assert model.training is False  # the caller's mode is restored


def test_pt_finds_the_op_the_task_needs_where_alpha_says_nothing(table, data, tmp_path):  # noqa: F811
    """Weights trained with α frozen (warm-up only): α' is uniform up to its init noise, so its argmax is
    arbitrary; the perturbation scores must still put the needed op first."""
    s = make_searcher(table, data, tmp_path, SEARCH.model_copy(update={"epochs": 6, "warmup_epochs": 6}))
    s.run()
    pref, report = perturbation_preference(s.model, scoring_batches(s.loader_a, 32, 8), IGNORE)
    firsts = [max(m, key=m.get) for m in report["op_mean_loss_increase"]]
    assert firsts.count(WINNER) >= 2, report["op_mean_loss_increase"]
    g = derive_genotype(pref, s.model.ops, NET)
    kept = [e.op for c in g.cells for pair in c.nodes for e in pair]
    assert kept.count(WINNER) >= len(kept) // 2, kept


def test_shared_cells_get_one_architecture_per_cell_type(data):
    torch.manual_seed(0)
    cfg = NET.model_copy(update={"num_cells": 4, "reduction_cells": [2]})
    model = SuperNet(cfg, GGMConfig(enabled=False), OPS, shared_cells=True).eval()
    pref, report = perturbation_preference(model, _batches(data, 8), IGNORE)
    assert report["shared_cells_averaged"] is True
    g = derive_genotype(pref, model.ops, cfg)
    normal = [c.nodes for c in g.cells if not c.reduction]
    assert len(normal) == 3 and all(n == normal[0] for n in normal)


def test_pt_derivation_reads_perturbation_scores_only(data):
    torch.manual_seed(0)
    model = SuperNet(NET, GGMConfig(), OPS).eval()
    alphas = [a.detach() for a in model.alpha_prime()]

    class FlatLUT:  # stands in for LatencyModel's two members the derivation uses: every op costs its index in ms
        ops = model.ops
        grid = torch.arange(len(model.ops), dtype=torch.float32).expand(NET.num_cells, len(cell_edges(NET.nodes)), -1)

        def genotype_ms(self, g):
            return sum(float(self.ops.index(e.op)) for c in g.cells for pair in c.nodes for e in pair)

    with pytest.raises(ValueError, match="perturbation"):
        derive("pt", alphas, model.ops, NET, FlatLUT(), 1e9)
    pref, _ = perturbation_preference(model, _batches(data, 8), IGNORE)
    g, doc = derive("pt", pref, model.ops, NET, FlatLUT(), 1e9)
    assert doc["preference"] == "perturbation" and not doc["edges_changed"]
    assert g == derive_genotype(pref, model.ops, NET)
    tight = FlatLUT().genotype_ms(g) - 3
    g2, doc2 = derive("pt", pref, model.ops, NET, FlatLUT(), tight)
    assert FlatLUT().genotype_ms(g2) <= tight and doc2["edges_changed"]
    assert "pt" in DERIVATIONS and isinstance(Preference.from_alphas(alphas, model.ops), Preference)
