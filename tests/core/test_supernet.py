"""Independent cells, shared-cells ablation and the GCN-Guided Module."""
import pytest
import torch

from core.ggm import topology_adjacency
from core.network import SuperNet
from core.specs import GGMConfig, NetworkConfig, SearchConfig

CFG = NetworkConfig(num_cells=4, reduction_cells=[1, 3], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=3)


def test_every_cell_has_its_own_registered_alpha():
    net = SuperNet(CFG, GGMConfig())
    keys = [k for k in net.state_dict() if k.startswith("alphas.")]
    assert len(keys) == CFG.num_cells
    assert all(net.state_dict()[k].shape == (9, 8) for k in keys)  # 9 edges for 3 nodes, 8 ops
    assert any(k.startswith("ggm.") for k in net.state_dict())
    # and they are distinct tensors, not views of one parameter
    assert len({net.raw_alpha(k).data_ptr() for k in range(CFG.num_cells)}) == CFG.num_cells


def test_shared_cells_mode_has_one_alpha_per_cell_type():
    net = SuperNet(CFG, GGMConfig(enabled=False), shared_cells=True)
    assert len(net.alphas) == 2
    assert net.raw_alpha(0) is net.raw_alpha(2) and net.raw_alpha(1) is net.raw_alpha(3)
    assert net.raw_alpha(0) is not net.raw_alpha(1)


@pytest.mark.parametrize("adjacency", ["similarity", "topology"])
def test_ggm_is_identity_at_initialisation(adjacency):
    net = SuperNet(CFG, GGMConfig(adjacency=adjacency))
    for a_prime, k in zip(net.alpha_prime(), range(CFG.num_cells)):
        assert torch.equal(a_prime, net.raw_alpha(k))


@pytest.mark.parametrize("adjacency", ["similarity", "topology"])
def test_gradients_reach_ggm_and_previous_alpha_through_arch_loss(adjacency):
    torch.manual_seed(0)
    net = SuperNet(CFG, GGMConfig(adjacency=adjacency))
    # At init Φ = 0, so only Φ itself gets a gradient; after that the GCN and α_{k-1} do too.
    loss = torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 32, 48)), torch.randint(0, 11, (2, 32, 48)))
    loss.backward()
    assert net.ggm.phi.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(net.ggm.phi.weight, std=0.1)
    net.zero_grad(set_to_none=True)
    # isolate the GGM path: the loss touches α'_2 only, so α_1 gets gradient only through the GGM
    a_prime = net.alpha_prime()
    (a_prime[2] * torch.randn_like(a_prime[2])).sum().backward()
    assert net.raw_alpha(1).grad is not None and net.raw_alpha(1).grad.abs().sum() > 0
    assert net.ggm.w1.weight.grad.abs().sum() > 0 and net.ggm.w2.weight.grad.abs().sum() > 0
    assert net.raw_alpha(0).grad is None  # two cells back: no path


def test_ggm_off_gives_plain_independent_cells():
    net = SuperNet(CFG, GGMConfig(enabled=False))
    assert net.ggm is None and not any(k.startswith("ggm.") for k in net.state_dict())
    with torch.no_grad():
        for a in net.alphas:
            a.normal_()
    assert all(torch.equal(a, net.raw_alpha(k)) for k, a in enumerate(net.alpha_prime()))


def test_weight_optimizer_never_holds_arch_parameters():


    net = SuperNet(CFG, GGMConfig())
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in net.parameters()}
    assert {id(p) for p in net.alphas} <= arch and {id(p) for p in net.ggm.parameters()} <= arch


def test_weight_step_leaves_alpha_and_ggm_untouched(camvid_train, tmp_path):
    from core.latency import build_table, LatencyModel
    from core.latency_loss import LatencyPenalty
    from core.search import Searcher
    from core.specs import LatencyConfig

    net = SuperNet(CFG, GGMConfig())
    table = build_table(CFG, net.ops, 48, 64, torch.device("cpu"), "fp32", 1, 3)
    s = Searcher(net, LatencyModel(table, CFG, net.ops, 48, 64), LatencyPenalty(LatencyConfig()),
                 SearchConfig(batch_size=2), camvid_train, torch.device("cpu"), tmp_path, lambda e: None, lambda: False)
    before = [p.detach().clone() for p in net.arch_parameters()]
    s.weight_step(*s.loader_w.next_batch())
    assert all(torch.equal(a, b) for a, b in zip(before, net.arch_parameters()))
    assert all(p.grad is None for p in net.arch_parameters())
    w_before = [p.detach().clone() for p in net.weight_parameters()]
    s.arch_step(*s.loader_a.next_batch())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.arch_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(w_before, net.weight_parameters()))


def test_topology_adjacency_is_symmetric_normalised():
    a = topology_adjacency(4)
    assert a.shape == (14, 14) and torch.allclose(a, a.t())
    assert (a.diagonal() > 0).all()
    assert torch.linalg.eigvalsh(a).max() <= 1.0 + 1e-5


@pytest.mark.parametrize("stride", [1, 2])
def test_search_pooling_is_followed_by_affine_free_bn_and_derived_pooling_is_bare(stride):
    """DARTS: pooling in the search mixed op gets BatchNorm2d(affine=False), to sit on the BN'd convs' scale."""
    from torch import nn

    from core.cell import DerivedCell, MixedOp
    from core.genotype import Cell, Edge
    from core.ops import op_names

    ops = op_names()
    mixed = MixedOp(ops, 8, stride).train()
    pool = mixed.ops[ops.index("max_pool_3x3")]
    y = pool(3.0 + 2.0 * torch.randn(4, 8, 13, 18))
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (y.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    assert list(pool.parameters()) == []  # affine-free
    assert type(mixed.ops[ops.index("conv_3x3")]).__name__ == "ReLUConvBN"  # other ops unchanged

    cell = DerivedCell(Cell(reduction=stride == 2, nodes=[(Edge(input=0, op="max_pool_3x3"),
                                                           Edge(input=1, op="max_pool_3x3"))]), 8, 8, 8, False)
    assert all(type(op) is nn.MaxPool2d for op in cell.ops)
