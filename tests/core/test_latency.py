import pytest
import torch
import torch.nn.functional as F

from core.cell import cell_edges
from core.derive import random_genotype
from core.latency import (LatencyModel, LatencyTable, LutKey, MissingLatency, build_table, cell_shapes, glue_keys,
                          head_key, op_key, pre_keys, required_keys, stem_key)
from core.latency_loss import LatencyPenalty
from core.network import channel_plan
from core.ops import OPS, op_names
from core.specs import LatencyConfig, NetworkConfig

CFG = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=2)
H, W = 36, 50
OPS_ = op_names()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    cache = tmp_path_factory.mktemp("lut")
    return build_table(CFG, OPS_, H, W, torch.device("cpu"), "fp32", 1, 3, cache_dir=cache), cache


def test_table_holds_every_required_key_with_context(table):
    t, _ = table
    assert set(required_keys(CFG, OPS_, H, W)) <= set(t.entries)
    assert t.context.batch == 1 and (t.context.height, t.context.width) == (H, W)
    assert t.context.precision == "fp32" and t.context.torch == torch.__version__


def test_saved_table_is_reused_without_measuring(table):
    t, cache = table
    files = list(cache.glob("lut-*.json"))
    assert len(files) == 1 and t.id in files[0].name
    measured = []
    again = build_table(CFG, OPS_, H, W, torch.device("cpu"), "fp32", 1, 3, cache_dir=cache,
                        progress=lambda i, n, k: measured.append(k))
    assert measured == [] and again.entries == t.entries
    # a wider network needs new keys: only those are measured, and added to the same file
    wider = CFG.model_copy(update={"init_channels": 16})
    build_table(wider, OPS_, H, W, torch.device("cpu"), "fp32", 1, 3, cache_dir=cache,
                progress=lambda i, n, k: measured.append(k))
    assert measured and all(k.c_in in (16, 32) or k.part in ("pre", "head", "glue") for k in measured)
    assert len(LatencyTable.load(files[0]).entries) > len(t.entries)


def test_missing_key_raises_loudly(table):
    t, _ = table
    with pytest.raises(MissingLatency, match="op/conv_3x3/c999-999"):
        t.ms(LutKey("op", "conv_3x3", 999, 999, H, W, 1))
    with pytest.raises(MissingLatency):
        LatencyModel(t, CFG.model_copy(update={"init_channels": 12}), OPS_, H, W)


def test_expected_latency_equals_hand_computed_sum(table):
    t, _ = table
    lat = LatencyModel(t, CFG, OPS_, H, W)
    torch.manual_seed(0)
    alphas = [torch.randn(len(cell_edges(CFG.nodes)), len(OPS_), requires_grad=True) for _ in range(CFG.num_cells)]
    expected = lat(alphas)
    total = t.ms(stem_key(CFG, H, W)) + t.ms(head_key(CFG, H, W))
    total += sum(t.ms(a) + t.ms(b) for a, b in pre_keys(CFG, H, W)) + sum(t.ms(k) for k in glue_keys(CFG, H, W))
    keep = [o for o in OPS_ if not OPS[o].zero]
    for k, (plan, shapes) in enumerate(zip(channel_plan(CFG), cell_shapes(CFG, H, W))):
        for e, (src, node) in enumerate(cell_edges(CFG.nodes)):
            logits = torch.stack([alphas[k][e, OPS_.index(o)] for o in keep]).detach()
            probs = F.softmax(logits, 0)
            for p, o in zip(probs, keep):
                total += 2 / (2 + node) * float(p) * t.ms(op_key(o, plan.c, shapes, src, plan.reduction))
    assert float(expected) == pytest.approx(total, rel=1e-5)
    expected.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas)
    assert all(float(a.grad[:, OPS_.index("none")].abs().sum()) == 0 for a in alphas)


def test_genotype_prediction_is_the_sum_of_its_parts(table):
    t, _ = table
    lat = LatencyModel(t, CFG, OPS_, H, W)
    g = random_genotype(CFG, OPS_, torch.Generator().manual_seed(1))
    parts = lat.const_ms
    for k, (cell, plan, shapes) in enumerate(zip(g.cells, channel_plan(CFG), cell_shapes(CFG, H, W))):
        for pair in cell.nodes:
            for edge in pair:
                parts += t.ms(op_key(edge.op, plan.c, shapes, edge.input, plan.reduction))
    assert lat.genotype_ms(g) == pytest.approx(parts, rel=1e-5)


def test_half_precision_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        build_table(CFG, OPS_, H, W, torch.device("cpu"), "fp16", 1, 3)


@pytest.mark.parametrize("latency, sign", [(15.0, 1), (5.0, -1)])
def test_budget_penalty_pulls_toward_the_budget(latency, sign):
    pen = LatencyPenalty(LatencyConfig(budget_ms=10.0, weight=1.0, under_budget_slope=0.1))
    x = torch.tensor(latency, requires_grad=True)
    pen(x).backward()
    # above budget the gradient says "go down" (positive), below it says "go up" (negative, small)
    assert torch.sign(x.grad) == sign
    assert abs(float(x.grad)) == pytest.approx(0.1 if latency == 15.0 else 0.01)
    assert float(pen(torch.tensor(10.0))) == 0.0


def test_under_budget_slope_is_documented_as_the_code_computes_it():
    slope, weight = 0.1, 2.0
    pen = LatencyPenalty(LatencyConfig(budget_ms=10.0, weight=weight, under_budget_slope=slope))
    assert float(pen(torch.tensor(5.0))) == pytest.approx(weight * slope * (1 - 0.5))  # r = 0.5
    assert "slope·(1-r) for r<1" in LatencyConfig.model_fields["under_budget_slope"].description


def test_paper_form_is_weighted_latency_over_the_budget():
    pen = LatencyPenalty(LatencyConfig(form="paper", weight=0.3, budget_ms=10.0))
    assert float(pen(torch.tensor(20.0))) == pytest.approx(0.3 * 2)  # λ·LAT/T, dimensionless
    assert float(pen(torch.tensor(5.0))) == pytest.approx(0.3 * 0.5)
    x = torch.tensor(5.0, requires_grad=True)
    pen(x).backward()
    assert float(x.grad) == pytest.approx(0.3 / 10.0)  # plain minimisation: the same pull below T


def test_burst_is_part_of_the_table_identity(tmp_path):
    a = build_table(CFG, OPS_, H, W, torch.device("cpu"), "fp32", 1, 3, cache_dir=tmp_path, burst=1)
    b = build_table(CFG, OPS_, H, W, torch.device("cpu"), "fp32", 2, 3, cache_dir=tmp_path, burst=4)
    assert a.id != b.id and b.context.burst == 4 and len(list(tmp_path.glob("lut-*.json"))) == 2
    assert LatencyTable.load(next(p for p in tmp_path.glob("lut-*.json") if b.id in p.name)).context.burst == 4


# A default-like macro (4 nodes, two reduction cells) at a small odd resolution, so that every
# reduction halves an odd size (ceil matters): 50x66 -> stem 13x17 -> 7x9 -> 4x5.
HOOK_CFG = NetworkConfig(num_cells=6, reduction_cells=[2, 4], init_channels=8, stem_channels=8, head_channels=16,
                         low_level_channels=8)
HOOK_H, HOOK_W = 50, 66


def _numbered_table(cfg: NetworkConfig, ops: list[str], height: int, width: int) -> tuple[LatencyTable, dict]:
    """A table holding exactly ``required_keys``, each with a distinct latency (so a price names its key)."""
    from core.latency import current_context
    from core.timing import TimingStats

    keys = required_keys(cfg, ops, height, width)
    entries = {k: TimingStats(float(i + 1), float(i + 1), float(i + 1), 1) for i, k in enumerate(keys)}
    table = LatencyTable(current_context(torch.device("cpu"), "fp32", height, width), entries)
    return table, {v.median_ms: k for k, v in entries.items()}


def _observed_key(name: str, x: torch.Tensor, y: torch.Tensor) -> LutKey:
    """The LUT key of an op, read off the tensors it really saw (not from core.latency's helpers)."""
    _, c, h, w = x.shape
    stride = 2 if y.shape[-2] < h else 1
    return LutKey("op", name, c, c, h, w, stride)


def test_every_edge_is_priced_at_the_shape_it_sees_in_a_real_forward():
    from core.network import DerivedNet, SuperNet
    from core.specs import GGMConfig

    table, by_ms = _numbered_table(HOOK_CFG, OPS_, HOOK_H, HOOK_W)
    required = set(table.entries)
    lat = LatencyModel(table, HOOK_CFG, OPS_, HOOK_H, HOOK_W)
    x = torch.randn(1, 3, HOOK_H, HOOK_W)

    # The supernet: every MixedOp sees one input; all its ops share that key's shape and stride.
    net = SuperNet(HOOK_CFG, GGMConfig(enabled=False), OPS_, batched=False).eval()  # per-edge modules to hook;
    # the batched cells compute the same function on the same shapes (tests/core/test_batched_cell.py)
    seen: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [mixed.register_forward_hook(lambda m, a, y, k=k, e=e: seen.__setitem__((k, e), (a[0], y)))
             for k, cell in enumerate(net.cells) for e, mixed in enumerate(cell.edges)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    assert len(seen) == HOOK_CFG.num_cells * len(cell_edges(HOOK_CFG.nodes))
    wrong = []
    for (k, e), (xin, y) in sorted(seen.items()):
        for o, name in enumerate(OPS_):
            if OPS[name].zero:
                continue
            want = _observed_key(name, xin, y)
            assert want in required, f"cell {k} edge {e}: {want.as_str()} not in required_keys"
            used = by_ms[float(lat.grid[k, e, o])]
            if used != want:
                wrong.append(f"cell {k} edge {cell_edges(HOOK_CFG.nodes)[e]}: priced {used.as_str()}, sees {want.as_str()}")
    assert not wrong, "\n".join(wrong)

    # A derived network: genotype_ms (and repair, which reads the same grid) sums the keys its ops see.
    g = random_genotype(HOOK_CFG, OPS_, torch.Generator().manual_seed(3))
    dnet = DerivedNet(g).eval()
    keys: list[LutKey] = []
    hooks = [op.register_forward_hook(lambda m, a, y, k=k, j=j: keys.append(
                 _observed_key(g.cells[k].nodes[j // 2][j % 2].op, a[0], y)))
             for k, cell in enumerate(dnet.cells) for j, op in enumerate(cell.ops)]
    with torch.no_grad():
        dnet(x)
    for h in hooks:
        h.remove()
    assert len(keys) == HOOK_CFG.num_cells * HOOK_CFG.nodes * 2
    assert set(keys) <= required
    assert lat.genotype_ms(g) == pytest.approx(lat.const_ms + sum(table.ms(k) for k in keys), rel=1e-6)


def test_jobs_set_cudnn_benchmark_before_measuring_whatever_ran_before(tmp_path, camvid_ref, monkeypatch):
    """The flag is process-global: a worker's previous job must not change a LUT's identity or an FPS report."""
    import json

    import core.pipeline as pipeline
    from core.specs import BenchmarkJobSpec, SearchJobSpec
    from core.timing import CUDNN_BENCHMARK

    class Stop(Exception):
        pass

    tables = []
    real = pipeline.trusted_table

    def build_then_stop(*args, **kwargs):
        tables.append(real(*args, **kwargs)[0])
        raise Stop

    monkeypatch.setattr(pipeline, "trusted_table", build_then_stop)
    lat = LatencyConfig(height=H, width=W, repeats=3, warmup_runs=1, lut_burst=1, lut_check_networks=0)
    for before in (CUDNN_BENCHMARK, not CUDNN_BENCHMARK):
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
        spec = SearchJobSpec(dataset=camvid_ref, network=CFG, latency=lat)
        with pytest.raises(Stop):
            pipeline.search_pipeline(spec, tmp_path / f"s{before}", lambda e: None, lambda: False, tmp_path / "lut")
    assert [t.context.cudnn_benchmark for t in tables] == [CUDNN_BENCHMARK, CUDNN_BENCHMARK]
    assert tables[0].id == tables[1].id

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not CUDNN_BENCHMARK)
    g = random_genotype(CFG, OPS_, torch.Generator().manual_seed(0))
    spec = BenchmarkJobSpec(genotype=g.model_dump(mode="json"), height=H, width=W, iters=5)
    pipeline.benchmark_pipeline(spec, tmp_path / "b", lambda e: None, lambda: False)
    report = json.loads((tmp_path / "b" / "artifacts" / "report.json").read_text())
    assert report["fps"]["cudnn_benchmark"] is CUDNN_BENCHMARK
