"""Tests that fail when the search is broken, not only when it crashes (issue: prove the search works).

- A synthetic task whose best op is known by construction: the label of a pixel is the class of the
  block SHIFT pixels to its right. Only ops that reach that far in one direction can produce it: at
  the supernet's 1/4 resolution two ``dil_sep_conv_3x3_r4`` in series do, a skip or a pooling cannot
  (pooling is symmetric and nonlinear), so a network needs the op on more than one edge of a path. The search, run through ``Searcher`` with the shipped
  defaults (Gumbel-softmax, GGM) and no latency term, must put that op on top, and the derived
  network must beat random genotypes of the same space when all are trained alike.
- Guards on the two classic "search = random" bugs, through ``arch_step``: the mixed-op weights are
  a distribution over the ops of each edge (softmax over the right dimension), and the α gradient of
  an arch step is the gradient of the architecture loss (the CE path to α is not cut).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from core.cell import cell_edges
from core.data import DeviceLoader, SegData
from core.derive import derive_genotype, random_genotype
from core.latency import LatencyModel, build_table
from core.latency_loss import LatencyPenalty
from core.network import DerivedNet, SuperNet
from core.search import Searcher
from core.specs import GGMConfig, LatencyConfig, NetworkConfig, SearchConfig
from core.train import evaluate, segmentation_loss

H, W = 64, 96
SHIFT, BLOCK = 32, 8  # SHIFT / 4 = 8: two dilation-4 3x3s in series at the supernet's 1/4 resolution
WINNER = "dil_sep_conv_3x3_r4"
OPS = ["skip_connect", "max_pool_3x3", WINNER]
IGNORE = 255
NET = NetworkConfig(num_cells=3, reduction_cells=[], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=2, num_classes=2)
# The shipped defaults (Gumbel-softmax, GGM, Adam settings), with a schedule sized for 64 images.
SEARCH = SearchConfig(epochs=30, warmup_epochs=10, steps_per_epoch=16, batch_size=8, flip=False, seed=0)
FIT_STEPS = 60  # short, so that how many edges carry the needed op shows in the score


def shift_task(n: int, seed: int) -> SegData:
    """Blocks of dark/bright pixels; the label at (h, w) is the class at (h, w + SHIFT)."""
    g = torch.Generator().manual_seed(seed)
    cls = (torch.rand(n, H // BLOCK, W // BLOCK, generator=g) < 0.5).long()
    cls = cls.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)
    img = (64 + 128 * cls + 10 * torch.randn(n, H, W, generator=g)).clamp(0, 255).to(torch.uint8)
    y = torch.full((n, H, W), IGNORE, dtype=torch.long)
    y[:, :, : W - SHIFT] = cls[:, :, SHIFT:]
    return SegData(img[:, None].expand(n, 3, H, W).contiguous(), y.to(torch.uint8), [str(i) for i in range(n)],
                   2, IGNORE, ["dark", "bright"])


@pytest.fixture(scope="module")
def task():
    return shift_task(64, 0), shift_task(32, 1)


@pytest.fixture(scope="module")
def table():
    return build_table(NET, SuperNet(NET, GGMConfig(), OPS).ops, H, W, torch.device("cpu"), "fp32", 1, 3)


def make_searcher(table, data, tmp_path, search: SearchConfig = SEARCH, ggm: GGMConfig | None = None) -> Searcher:
    torch.manual_seed(search.seed)
    net = SuperNet(NET, ggm or GGMConfig(), OPS, gumbel=search.gumbel, gumbel_tau=search.gumbel_tau)
    lat = LatencyModel(table, NET, net.ops, H, W)
    return Searcher(net, lat, LatencyPenalty(LatencyConfig(weight=0.0)), search, data, torch.device("cpu"), tmp_path,
                    lambda e: None, lambda: False)


def fit_and_score(genotype, train: SegData, test: SegData, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = DerivedNet(genotype)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    loader = DeviceLoader(train, 8, "cpu", seed=seed)
    model.train()
    for _ in range(FIT_STEPS):
        x, y = loader.next_batch()
        loss = segmentation_loss(model(x), y, IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return evaluate(model, DeviceLoader(test, 8, "cpu", shuffle=False, drop_last=False), torch.device("cpu"), 8)["miou"]


@pytest.mark.slow
def test_search_puts_the_op_the_task_needs_on_top_and_beats_random(table, task, tmp_path):
    train, test = task
    searcher = make_searcher(table, train, tmp_path)
    result = searcher.run()
    ops = searcher.model.ops
    w = ops.index(WINNER)
    non_none = [i for i, o in enumerate(ops) if o != "none"]
    tops = [ops[non_none[int(F.softmax(a, -1)[:, non_none].mean(0).argmax())]] for a in result.alphas]
    assert sum(t == WINNER for t in tops) >= 2, f"top op per cell {tops}"
    genotype = derive_genotype(result.alphas, ops, NET)
    kept = [e.op for c in genotype.cells for pair in c.nodes for e in pair]
    assert kept.count(WINNER) >= 2 * len(kept) // 3, f"kept ops {kept}"
    assert float(F.softmax(result.alphas[0], -1)[:, w].mean()) > 1 / len(ops)  # α moved toward the winner

    searched = fit_and_score(genotype, train, test)
    gen = torch.Generator().manual_seed(3)
    randoms = [fit_and_score(random_genotype(NET, ops, gen), train, test) for _ in range(3)]
    assert searched > sum(randoms) / len(randoms) + 0.03, (searched, randoms)


def test_mixed_op_weights_in_arch_step_are_a_distribution_over_each_edges_ops(table, task, tmp_path):
    """Fails when the softmax runs over the edges (or anything but the ops) of α'."""
    for gumbel in (False, True):
        s = make_searcher(table, task[0], tmp_path / str(gumbel), SEARCH.model_copy(update={"gumbel": gumbel}))
        seen: list[tuple[int, torch.Tensor]] = []  # (cell, [edges, ops] mixing weights) as each cell receives them
        hooks = [cell.register_forward_pre_hook(lambda mod, args, k=k: seen.append((k, args[2].detach().clone())))
                 for k, cell in enumerate(s.model.cells)]
        with torch.no_grad():
            for a in s.model.alphas:  # well away from uniform, so a wrong dimension cannot pass by accident
                a.copy_(torch.randn_like(a))
        alphas = [a.detach().clone() for a in s.model.alpha_prime()]  # α'_1 is α_1 itself: copy it
        s.arch_step(*s.loader_a.next_batch())
        for h in hooks:
            h.remove()
        assert [k for k, _ in seen] == list(range(NET.num_cells))
        for k, weights in seen:
            assert weights.shape == (len(cell_edges(NET.nodes)), len(s.model.ops))
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]), atol=1e-5, rtol=0)
            assert bool((weights > 0).all())
            if not gumbel:
                torch.testing.assert_close(weights, F.softmax(alphas[k], -1))


def test_arch_step_gradient_of_alpha_is_the_gradient_of_the_arch_loss(table, task, tmp_path):
    """Fails when the cross-entropy's path to α is cut in ``arch_step`` (e.g. a detached α')."""
    s = make_searcher(table, task[0], tmp_path, SEARCH.model_copy(update={"gumbel": False}))
    x, y = s.loader_a.next_batch()
    ref = copy.deepcopy(s.model)
    captured: list[torch.Tensor] = []
    step = s.a_opt.step

    def capture(*args, **kwargs):
        captured.extend(p.grad.detach().clone() for p in s.model.alpha_parameters())
        return step(*args, **kwargs)

    s.a_opt.step = capture
    s.arch_step(x, y)
    loss = segmentation_loss(ref(x, alphas=ref.alpha_prime()), y, IGNORE)  # λ = 0: the arch loss is the CE
    grads = torch.autograd.grad(loss, ref.alpha_parameters())
    assert len(captured) == len(grads) == NET.num_cells
    for got, want in zip(captured, grads):
        assert float(want.abs().sum()) > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
