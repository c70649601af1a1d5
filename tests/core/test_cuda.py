"""CUDA paths (bf16 search step, channels_last, half-precision LUT, CUDA-graph FPS). They run only
where a GPU is present (the device machine; `bench/device_check.sh`); CI has none, so they skip there."""
import pytest
import torch

from core.fps import fps_report
from core.latency import LatencyModel, build_table
from core.latency_loss import LatencyPenalty
from core.network import DerivedNet, SuperNet
from core.derive import random_genotype
from core.search import Searcher
from core.specs import GGMConfig, LatencyConfig, NetworkConfig, SearchConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CFG = NetworkConfig(num_cells=4, reduction_cells=[1, 3], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=3)
DEV = torch.device("cuda")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_lut_on_cuda_at_each_precision(precision):
    table = build_table(CFG, SuperNet(CFG, GGMConfig()).ops, 96, 128, DEV, precision, 3, 10)
    assert table.context.precision == precision and table.context.channels_last
    assert table.context.cuda is not None and "cpu" not in table.context.device
    assert all(v.median_ms > 0 for v in table.entries.values())


def test_bf16_search_steps_on_cuda(camvid_train, tmp_path):
    net = SuperNet(CFG, GGMConfig())
    table = build_table(CFG, net.ops, 48, 64, DEV, "fp32", 2, 5)
    s = Searcher(net, LatencyModel(table, CFG, net.ops, 48, 64), LatencyPenalty(LatencyConfig(budget_ms=1.0)),
                 SearchConfig(epochs=2, warmup_epochs=1, batch_size=2), camvid_train, DEV, tmp_path,
                 lambda e: None, lambda: False)
    result = s.run()
    assert all(torch.isfinite(a).all() for a in result.alphas)
    assert next(net.parameters()).is_cuda and result.history[-1]["supernet_miou"] >= 0


def test_fps_report_on_cuda_has_optimised_and_half_paths():
    g = random_genotype(CFG, SuperNet(CFG, GGMConfig()).ops, torch.Generator().manual_seed(0))
    rep = fps_report(DerivedNet(g), 96, 128, DEV, 20, lut_prediction_ms=1.0, budget_ms=100.0)
    assert set(rep["measurements"]) >= {"fp32", "fp16"}
    assert rep["measurements"]["fp32"]["eager"]["fps"] > 0
    assert rep["optimised_path"]["status"] == "ok", rep["optimised_path"]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_search_steps_on_cuda(camvid_train, tmp_path, mode):
    """search.compile on a GPU (inductor, Triton; CUDA graphs for reduce-overhead): both steps run compiled, no
    fallback, no CUDA graph skipped, and the search ends near the eager one (dropout and Gumbel off, so both
    draw nothing inside the graph; bf16 autocast and fused kernels round differently, hence the tolerance)."""
    table = build_table(CFG, SuperNet(CFG, GGMConfig()).ops, 48, 64, DEV, "fp32", 2, 5)
    sc = SearchConfig(epochs=2, warmup_epochs=1, batch_size=2, steps_per_epoch=3, free_op_dropout=0.0, gumbel=False)
    out = {}
    for m in ("off", mode):
        torch.manual_seed(0)
        net = SuperNet(CFG, GGMConfig(), gumbel=False)
        s = Searcher(net, LatencyModel(table, CFG, net.ops, 48, 64), LatencyPenalty(LatencyConfig(budget_ms=1.0)),
                     sc.model_copy(update={"compile": m}), camvid_train, DEV, tmp_path / m, lambda e: None,
                     lambda: False)
        out[m] = s.run()
    c = out[mode].compile
    assert c["used"] == mode and c["fallback"] is None and c["graph_breaks"] == 0, c
    assert c["cudagraph_skips"] == 0, c
    if mode == "reduce-overhead":  # the skip counter can miss a graph never captured: graphs were recorded
        assert c["cuda_graphs_recorded"] is None or c["cuda_graphs_recorded"] >= 2, c
    for a, b in zip(out["off"].alphas, out[mode].alphas):
        torch.testing.assert_close(a, b, rtol=0.0, atol=5e-3)
