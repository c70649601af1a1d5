"""The batched search cell computes what the plain one does (issue "search speed"): same outputs, same
gradients of weights, α and inputs, on the same weights, in training and evaluation mode."""
from __future__ import annotations

import copy

import pytest
import torch

from core.batched_cell import BatchedSearchCell
from core.cell import SearchCell, cell_edges
from core.network import SuperNet
from core.ops import op_names
from core.specs import GGMConfig, NetworkConfig

OPS_ = op_names()
E = len(cell_edges(3))


def _pair(reduction: bool, reduction_prev: bool, ops=OPS_, nodes=3, c=8):
    torch.manual_seed(0)
    plain = SearchCell(ops, nodes, 12, 10, c, reduction, reduction_prev)
    batched = BatchedSearchCell(ops, nodes, 12, 10, c, reduction, reduction_prev)
    # Give the BNs non-trivial running statistics first, so that eval mode is compared on real numbers.
    with torch.no_grad():
        for _ in range(2):
            h, w = (32, 40) if reduction_prev else (16, 20)
            plain(torch.randn(4, 12, h, w) + 1, torch.randn(4, 10, 16, 20) - 1,
                  torch.softmax(torch.randn(len(cell_edges(nodes)), len(ops)), -1))
    batched.load_plain_(plain, ops)
    return plain, batched


@pytest.mark.parametrize("reduction,reduction_prev", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("train", [True, False])
def test_batched_cell_equals_plain_cell(reduction, reduction_prev, train):
    plain, batched = _pair(reduction, reduction_prev)
    plain.train(train), batched.train(train)
    g = torch.Generator().manual_seed(1)
    h, w = (16, 20) if not reduction_prev else (32, 40)
    s0 = torch.randn(2, 12, h, w, generator=g, requires_grad=True)
    s1 = torch.randn(2, 10, 16, 20, generator=g, requires_grad=True)
    a = torch.randn(E, len(OPS_), generator=g, requires_grad=True)
    outs, grads = [], []
    for cell in (plain, batched):
        for t in (s0, s1, a):
            t.grad = None
        y = cell(s0, s1, torch.softmax(a, -1))
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([s0.grad.clone(), s1.grad.clone(), a.grad.clone()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for gb, gp, name in zip(grads[1], grads[0], ("s0", "s1", "alpha")):
        torch.testing.assert_close(gb, gp, rtol=1e-3, atol=1e-5, msg=f"gradient of {name} differs")
    if train:  # weight gradients: every batched parameter's gradient is the plain ones' gradients, stacked
        fresh = copy.deepcopy(batched)
        fresh.load_plain_(plain, OPS_)  # plain's weights carry the gradients accumulated above
        src = next(s for s in batched.sources if s.conv_idx)
        assert src.conv_w.grad is not None and src.conv_w.grad.abs().sum() > 0


def test_batched_cell_running_statistics_follow_the_plain_ones():
    plain, batched = _pair(False, False)
    plain.train(), batched.train()
    x0, x1, w = torch.randn(4, 12, 16, 20), torch.randn(4, 10, 16, 20), torch.softmax(torch.randn(E, len(OPS_)), -1)
    with torch.no_grad():
        plain(x0, x1, w), batched(x0, x1, w)
    check = copy.deepcopy(batched)
    check.load_plain_(plain, OPS_)  # what the batched BNs should hold now
    for (name, got), (_, want) in zip(batched.named_buffers(), check.named_buffers()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_batched_supernet_equals_plain_supernet_and_its_weight_gradients():
    cfg = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                        low_level_channels=8, nodes=3)
    torch.manual_seed(0)
    plain = SuperNet(cfg, GGMConfig(), batched=False).train()
    batched = SuperNet(cfg, GGMConfig(), batched=True).train()
    batched.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith("cells.")}, strict=False)
    for pc, bc in zip(plain.cells, batched.cells):
        bc.load_plain_(pc, plain.ops)
    x = torch.randn(2, 3, 64, 96)
    ys = []
    for net in (plain, batched):
        net.zero_grad()
        y = net(x)
        y.square().mean().backward()
        ys.append(y.detach())
    torch.testing.assert_close(ys[1], ys[0], rtol=1e-4, atol=1e-5)
    for pa, ba in zip(plain.alphas, batched.alphas):
        torch.testing.assert_close(ba.grad, pa.grad, rtol=1e-3, atol=1e-6)
    # a weight gradient: the batched conv_3x3 of cell 0, source 0, edge t is the plain edge's conv gradient
    rows = batched.cells[0].out_rows[0]
    src = batched.cells[0].sources[0]
    c = src.c
    for t, e in enumerate(rows):
        want = plain.cells[0].edges[e].ops[OPS_.index("conv_3x3")][1].weight.grad
        torch.testing.assert_close(src.conv_w.grad[t * c:(t + 1) * c], want, rtol=1e-3, atol=1e-6)
        s_ = src.sep_idx.index(OPS_.index("dil_sep_conv_3x3_r4"))
        want = plain.cells[0].edges[e].ops[OPS_.index("dil_sep_conv_3x3_r4")][1].weight.grad
        torch.testing.assert_close(src.dw_w[s_].grad[t * c:(t + 1) * c], want, rtol=1e-3, atol=1e-6)


def test_unknown_ops_fall_back_to_one_module_per_edge():
    from torch import nn

    from core.ops import OPS, register_op
    name = "test_avg_pool_3x3"
    if name not in OPS:
        register_op(name, parametric=False, search_bn=True)(lambda c, stride, affine: nn.AvgPool2d(3, stride, 1))
    try:
        ops = op_names(["skip_connect", "conv_3x3", name])
        plain, batched = _pair(False, False, ops=ops)
        x0, x1 = torch.randn(2, 12, 16, 20), torch.randn(2, 10, 16, 20)
        w = torch.softmax(torch.randn(E, len(ops)), -1)
        plain.eval(), batched.eval()
        torch.testing.assert_close(batched(x0, x1, w), plain(x0, x1, w), rtol=1e-4, atol=1e-5)
        assert len(batched.sources[0].others) == 1
    finally:
        OPS.pop(name, None)


def test_free_op_dropout_masks_are_independent_per_edge():
    _, batched = _pair(False, False, ops=op_names(["skip_connect", "max_pool_3x3"]))
    batched.train()
    batched.set_free_dropout(0.5)
    src = batched.sources[0]
    x = torch.randn(2, 8, 16, 20)
    w = torch.ones(src.m, len(op_names(["skip_connect", "max_pool_3x3"])))
    y = src(x, x.relu(), w)
    dropped = (y == 0)
    assert not torch.equal(dropped[:, 0], dropped[:, 1])  # edges do not share one mask
    assert 0.2 < float(dropped.float().mean()) < 0.4  # two ops each dropped with p = 0.5: both dropped 1/4
