import pytest
import torch

from core.cell import cell_edges
from core.derive import derive_genotype, repair_to_budget
from core.latency import LatencyModel, build_table
from core.ops import op_names
from core.specs import NetworkConfig

CFG = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=3)
OPS_ = op_names()
E = len(cell_edges(CFG.nodes))


def test_top2_edges_and_strongest_non_none_op():
    alphas = [torch.zeros(E, len(OPS_)) for _ in range(CFG.num_cells)]
    edges = cell_edges(CFG.nodes)
    # cell 0, node 2 (inputs 0..3): edge from node 3 strongest (conv), then node 0 (sep); 'none' is ignored
    for e, (src, node) in enumerate(edges):
        if node == 2:
            alphas[0][e, OPS_.index("none")] = 9.0  # never kept, whatever its weight
    alphas[0][edges.index((3, 2)), OPS_.index("conv_3x3")] = 5.0
    alphas[0][edges.index((0, 2)), OPS_.index("sep_conv_3x3")] = 3.0
    alphas[0][edges.index((1, 2)), OPS_.index("skip_connect")] = 1.0
    g = derive_genotype(alphas, OPS_, CFG)
    node2 = g.cells[0].nodes[2]
    assert [(e.input, e.op) for e in node2] == [(0, "sep_conv_3x3"), (3, "conv_3x3")]
    assert all(e.op != "none" for c in g.cells for n in c.nodes for e in n)
    assert [c.reduction for c in g.cells] == [False, True, False]


def test_cells_are_derived_independently():
    torch.manual_seed(0)
    alphas = [torch.randn(E, len(OPS_)) for _ in range(CFG.num_cells)]
    g = derive_genotype(alphas, OPS_, CFG)
    assert len({str(c.nodes) for c in g.cells}) == CFG.num_cells


@pytest.fixture(scope="module")
def lat():
    table = build_table(CFG, OPS_, 32, 48, torch.device("cpu"), "fp32", 1, 3)
    return LatencyModel(table, CFG, OPS_, 32, 48)


def test_repair_steps_down_to_the_budget(lat):
    alphas = [torch.zeros(E, len(OPS_)) for _ in range(CFG.num_cells)]
    for a in alphas:
        a[:, OPS_.index("dil_sep_conv_3x3_r8")] = 2.0  # the most expensive family everywhere
    g = derive_genotype(alphas, OPS_, CFG)
    before = lat.genotype_ms(g)
    budget = lat.const_ms + 0.6 * (before - lat.const_ms)
    # The measurement here is the LUT's own sum: this test is about the repair loop, not timing.
    repaired, report = repair_to_budget(g, alphas, lat, lat.genotype_ms, budget, max_rounds=5, max_steps=100)
    assert report.repaired and report.budget_met and report.measured_after_ms <= budget
    assert lat.genotype_ms(repaired) < before
    assert repaired.provenance.source == "repaired" and repaired.provenance.repaired_edges == len(report.edges_changed)
    assert all(ch["saved_ms"] > 0 for ch in report.edges_changed)


def test_repair_reports_an_unreachable_budget(lat):
    alphas = [torch.zeros(E, len(OPS_)) for _ in range(CFG.num_cells)]
    g = derive_genotype(alphas, OPS_, CFG)
    _, report = repair_to_budget(g, alphas, lat, lat.genotype_ms, budget_ms=lat.const_ms * 0.5, max_rounds=3, max_steps=500)
    assert not report.budget_met and report.as_dict()["budget_met"] is False


def test_within_budget_nothing_changes(lat):
    alphas = [torch.zeros(E, len(OPS_)) for _ in range(CFG.num_cells)]
    g = derive_genotype(alphas, OPS_, CFG)
    same, report = repair_to_budget(g, alphas, lat, lat.genotype_ms, budget_ms=1e6, max_rounds=3, max_steps=10)
    assert same == g and not report.repaired and report.rounds == 0


# --- the budget-filling derivation (latency.derivation = "fill") --------------------------------------

def _collapsed_alphas(seed: int = 0) -> list[torch.Tensor]:
    """α' as a collapsed search leaves it: skip strongest everywhere, parametric ops ranked below it."""
    g = torch.Generator().manual_seed(seed)
    alphas = [0.1 * torch.randn(E, len(OPS_), generator=g) for _ in range(CFG.num_cells)]
    for a in alphas:
        a[:, OPS_.index("skip_connect")] += 2.0
        a[:, OPS_.index("sep_conv_3x3")] += 1.0  # the best parametric op on every edge
    return alphas


def test_registry_covers_every_derivation_setting():
    from typing import get_args

    from core.derive import DERIVATIONS
    from core.specs import Derivation, LatencyConfig
    assert set(DERIVATIONS) == set(get_args(Derivation))
    assert LatencyConfig().derivation in DERIVATIONS


def test_fill_keeps_the_strongest_parametric_op_when_the_budget_allows(lat):
    from core.derive import derive
    alphas = _collapsed_alphas()
    argmax, _ = derive("argmax", alphas, OPS_, CFG, lat, budget_ms=1e6)
    filled, doc = derive("fill", alphas, OPS_, CFG, lat, budget_ms=1e6)
    ops_of = lambda g: [e.op for c in g.cells for n in c.nodes for e in n]  # noqa: E731
    assert set(ops_of(argmax)) == {"skip_connect"}
    assert set(ops_of(filled)) == {"sep_conv_3x3"}
    assert doc["edges_changed"] == [] and doc["predicted_ms"] == pytest.approx(lat.genotype_ms(filled), abs=1e-3)
    # the edges (inputs) are the same: fill changes ops, not which edges are kept
    assert [[[e.input for e in n] for n in c.nodes] for c in filled.cells] == \
           [[[e.input for e in n] for n in c.nodes] for c in argmax.cells]


def test_fill_steps_down_to_the_budget_where_alpha_prefers_weight_free_ops_most(lat):
    from core.derive import derive
    alphas = _collapsed_alphas(1)
    strong_skip = set()
    edges = cell_edges(CFG.nodes)
    for k, a in enumerate(alphas):  # α' prefers skip on the edges into node 0 only, sep_conv elsewhere
        for e, (src, node) in enumerate(edges):
            if node == 0:
                strong_skip.add((k, node, src))
            else:
                a[e, OPS_.index("skip_connect")] -= 2.0
    top, _ = derive("fill", alphas, OPS_, CFG, lat, budget_ms=1e6)
    low, _ = derive("argmax", alphas, OPS_, CFG, lat, budget_ms=1e6)
    hi_ms, lo_ms = lat.genotype_ms(top), lat.genotype_ms(low)
    assert lo_ms < hi_ms
    budget = lo_ms + 0.5 * (hi_ms - lo_ms)
    filled, doc = derive("fill", alphas, OPS_, CFG, lat, budget_ms=budget)
    got = lat.genotype_ms(filled)
    assert got <= budget
    largest_step = max(ch["saved_ms"] for ch in doc["edges_changed"])
    assert got >= budget - largest_step  # filled: no room left for the last step it took back
    changed = {(ch["cell"], ch["node"], filled.cells[ch["cell"]].nodes[ch["node"]][ch["slot"]].input)
               for ch in doc["edges_changed"]}
    assert changed and changed < strong_skip  # edges are given back only where α' prefers skip
    assert {ch["to"] for ch in doc["edges_changed"]} == {"skip_connect"}
    assert doc["predicted_start_ms"] == pytest.approx(hi_ms, abs=1e-3)


def test_unknown_derivation_is_refused(lat):
    from core.derive import derive
    with pytest.raises(ValueError, match="unknown derivation"):
        derive("best", _collapsed_alphas(), OPS_, CFG, lat, budget_ms=1.0)  # type: ignore[arg-type]
