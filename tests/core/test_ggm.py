"""The GGM guides α instead of replacing it (issue: the GGM swamped α with one global op preference).

Reproduced on the pre-fix code (docs/SEARCH_QUALITY.md): with the GGM's weights in α's Adam group and
its coupled L2, the weights without a loss gradient decayed (θ, φ of the similarity graph 0.09 ->
0.009), the graph went uniform and every edge of a cell got the same message, larger than α's own
spread.
"""
from __future__ import annotations

import pytest
import torch

from core.cell import cell_edges
from core.latency import LatencyModel, build_table
from core.latency_loss import LatencyPenalty
from core.network import SuperNet
from core.search import Searcher
from core.specs import GGMConfig, LatencyConfig, NetworkConfig, SearchConfig

CFG = NetworkConfig(num_cells=4, reduction_cells=[2], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=3)


def test_ggm_has_no_bias_by_default():
    net = SuperNet(CFG, GGMConfig())
    assert not [n for n, _ in net.ggm.named_parameters() if n.endswith("bias")]


@pytest.mark.parametrize("adjacency", ["similarity", "topology"])
def test_message_is_edge_centred_and_bounded(adjacency):
    torch.manual_seed(0)
    x = torch.randn(len(cell_edges(CFG.nodes)), 8) * 5
    for bound in (0.0, 0.7):
        net = SuperNet(CFG, GGMConfig(adjacency=adjacency, message_bound=bound))
        torch.manual_seed(1)
        for p in net.ggm.parameters():
            torch.nn.init.normal_(p, std=1.0)  # a GGM that has grown large
        with torch.no_grad():
            m = net.ggm(x)
        if bound:
            assert float(m.abs().max()) <= bound + 1e-6
        else:  # centred: no op preference shared by every edge of the cell, but edges still differ
            assert float(m.mean(0).abs().max()) < 1e-4 * float(m.abs().max())
            assert float(m.std(0).mean()) > 0.1


def test_recursive_chain_uses_the_previous_alpha_prime():
    net = SuperNet(CFG, GGMConfig(recursive=True, message_bound=0.0))  # unbounded: no tanh saturation
    torch.manual_seed(0)
    with torch.no_grad():
        for p in [*net.ggm.parameters(), *net.alphas]:
            p.copy_(torch.randn_like(p))
    ap = net.alpha_prime()
    for k in range(1, CFG.num_cells):
        torch.testing.assert_close(ap[k], net.alphas[k] + net.ggm_cfg.gamma * net.ggm(ap[k - 1]))
    one_hop = SuperNet(CFG, GGMConfig(message_bound=0.0))
    one_hop.load_state_dict(net.state_dict())
    assert not torch.allclose(one_hop.alpha_prime()[2], ap[2])


def _searcher(camvid_train, tmp_path, epochs: int = 2, **ggm) -> Searcher:
    torch.manual_seed(0)
    net = SuperNet(CFG, GGMConfig(**ggm))
    table = build_table(CFG, net.ops, 48, 64, torch.device("cpu"), "fp32", 1, 3)
    lat = LatencyModel(table, CFG, net.ops, 48, 64)
    sc = SearchConfig(epochs=epochs, warmup_epochs=0, steps_per_epoch=6, batch_size=2, seed=0)
    return Searcher(net, lat, LatencyPenalty(LatencyConfig(budget_ms=1e4)), sc, camvid_train, torch.device("cpu"),
                    tmp_path, lambda e: None, lambda: False)


def test_ggm_weights_are_not_decayed_by_the_architecture_optimizer(camvid_train, tmp_path):
    """With Φ = 0 nothing upstream of Φ has a loss gradient on the first step; only a decay would move it."""
    s = _searcher(camvid_train, tmp_path)
    before = {n: p.detach().clone() for n, p in s.model.ggm.named_parameters() if not n.startswith("phi.")}
    s.arch_step(*s.loader_a.next_batch())
    for n, p in s.model.ggm.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"ggm.{n} moved without a loss gradient"
    groups = s.a_opt.param_groups
    ggm_ids = {id(p) for p in s.model.ggm_parameters()}
    ggm_group = [g for g in groups if {id(p) for p in g["params"]} == ggm_ids]
    assert len(ggm_group) == 1 and ggm_group[0]["weight_decay"] == 0.0 and ggm_group[0]["lr"] == GGMConfig().lr


def test_epoch_history_and_progress_log_ggm_shift_and_op_entropy(camvid_train, tmp_path):
    events: list[dict] = []
    s = _searcher(camvid_train, tmp_path)
    s.progress = events.append
    result = s.run()
    for h in result.history:
        assert len(h["ggm_shift"]) == len(h["op_entropy"]) == CFG.num_cells
        assert h["ggm_shift"][0] == 0.0  # α'_1 = α_1
        assert all(0.0 < e <= 1.0 for e in h["op_entropy"])
        assert {"a_ce", "w_loss", "latency_penalty"} <= set(h["mean"])
    ends = [e for e in events if "op_entropy" in e]
    assert len(ends) == 2 and ends[-1]["ggm_shift"] == result.history[-1]["ggm_shift"]
    assert result.steps == {"steps_per_epoch": 6, "warmup_steps": 0, "arch_steps": 12, "weight_steps": 12,
                            "batch_size": 2, "crop": [48, 64]}


def test_ggm_stays_a_bounded_correction_after_a_real_search(camvid_train, tmp_path):
    """After 60 arch steps on CamVid the GGM moves α by at most γ·b per logit and no cell collapses to one
    op on every edge (the pre-fix GGM made every cell follow one global preference)."""
    s = _searcher(camvid_train, tmp_path, epochs=10)
    s.run()
    cfg, net = s.model.ggm_cfg, s.model
    with torch.no_grad():
        ap = net.alpha_prime()
        for k in range(1, CFG.num_cells):
            assert float((ap[k] - net.raw_alpha(k)).abs().max()) <= cfg.gamma * cfg.message_bound + 1e-6
            assert len(set(ap[k].argmax(-1).tolist())) > 1, f"cell {k} collapsed to one op"


@pytest.mark.parametrize("adjacency", ["similarity", "topology"])
def test_message_and_phi_gradient_do_not_depend_on_alphas_scale(adjacency):
    """α starts at 1e-3 noise: on raw α the similarity graph is uniform there, the centred message is
    zero and Φ gets no gradient, so the GGM never moves (ggm_shift 0.0 in six CamVid searches)."""
    torch.manual_seed(0)
    direction = torch.randn(len(cell_edges(CFG.nodes)), 8)
    net = SuperNet(CFG, GGMConfig(adjacency=adjacency, message_bound=0.0))
    torch.manual_seed(1)
    torch.nn.init.normal_(net.ggm.phi.weight, std=0.1)
    target = torch.randn(len(cell_edges(CFG.nodes)), 8)
    messages, grads = [], []
    for scale in (1e-3, 1.0):
        net.ggm.zero_grad()
        m = net.ggm(scale * direction)
        (m * target).sum().backward()
        messages.append(m.detach())
        grads.append(net.ggm.phi.weight.grad.clone())
    assert float(messages[1].abs().max()) > 1e-2
    torch.testing.assert_close(messages[0], messages[1], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)


def test_ggm_moves_alpha_in_a_real_search(camvid_train, tmp_path):
    """The GGM must do something: after 60 arch steps on CamVid it shifts every cell k ≥ 1 (α'_1 = α_1)."""
    result = _searcher(camvid_train, tmp_path, epochs=10).run()
    shift = result.history[-1]["ggm_shift"]
    assert shift[0] == 0.0 and min(shift[1:]) > 0.01, shift
