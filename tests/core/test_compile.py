"""search.compile (core/compile.py): a compiled search computes what the eager one does; a failure to compile
falls back to eager, undone and said; the free-op dropout's per-epoch change does not compile again.

The backend here is ``aot_eager``: the same dynamo tracing and AOTAutograd graphs as inductor, without its
C++ code generation (minutes per graph on this CPU for the default network; docs/SEARCH_SPEED.md). Its
ops run on the same generator as eager, so seeded runs match to float precision. CUDA graphs
(``reduce-overhead`` on a GPU) cannot run here; bench/search_step_cost.py measures them on a GPU.
"""
import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

import core.compile as cc
from core.latency import LatencyModel, build_table
from core.latency_loss import LatencyPenalty
from core.network import SuperNet
from core.search import Searcher
from core.specs import GGMConfig, LatencyConfig, NetworkConfig, SearchConfig

CFG = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=2)
SC = SearchConfig(epochs=3, warmup_epochs=1, batch_size=2, seed=5, steps_per_epoch=2)


@pytest.fixture(scope="module")
def table():
    return build_table(CFG, SuperNet(CFG, GGMConfig()).ops, 48, 64, torch.device("cpu"), "fp32", 1, 3)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def run_search(table, data, tmp_path, mode: str, backend=None, monkeypatch=None, sc: SearchConfig = SC):
    if backend is not None:
        monkeypatch.setattr(cc, "BACKEND", backend)
    torch.manual_seed(SC.seed)
    net = SuperNet(CFG, GGMConfig())
    events: list[dict] = []
    s = Searcher(net, LatencyModel(table, CFG, net.ops, 48, 64), LatencyPenalty(LatencyConfig(budget_ms=1.0)),
                 sc.model_copy(update={"compile": mode}), data, torch.device("cpu"), tmp_path / mode, events.append,
                 lambda: False)
    return s, s.run(), events


def assert_same_search(a, b):
    for x, y in zip(a.alphas, b.alphas):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert [h["supernet_miou"] for h in a.history] == pytest.approx([h["supernet_miou"] for h in b.history], abs=1e-3)


def test_compiled_search_equals_eager_and_compiles_once_per_step_kind(table, camvid_train, tmp_path, monkeypatch):
    """Both steps run compiled (two graphs: α' with and without gradients) and the search's α, weights and BN
    statistics are the eager search's. Free-op dropout off here: compiled, it draws its mask another way than
    F.dropout (the next test has it on)."""
    sc = SC.model_copy(update={"free_op_dropout": 0.0})
    eager_s, eager, _ = run_search(table, camvid_train, tmp_path, "off", sc=sc)
    assert eager.compile == {"requested": "off", "used": "eager", "backend": None, "note": None, "fallback": None,
                             "first_step_s": {}, "graphs": 0, "graph_breaks": 0, "cudagraph_skips": 0,
                             "cuda_graphs_recorded": None}
    comp_s, comp, events = run_search(table, camvid_train, tmp_path, "default", backend="aot_eager",
                                      monkeypatch=monkeypatch, sc=sc)
    assert comp.compile["used"] == "default" and comp.compile["fallback"] is None
    assert set(comp.compile["first_step_s"]) == {"architecture", "weight"}
    assert comp.compile["graphs"] == 2 and comp.compile["graph_breaks"] == 0
    assert_same_search(eager, comp)
    ref = eager_s.model.state_dict()
    for k, v in comp_s.model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-4, atol=1e-5, msg=k)
    # said before the search starts, and again as each step kind compiles (in that step's phase: no new stage)
    assert events[0]["phase"] == "compile" and "first architecture and weight steps compile" in events[0]["message"]
    said = {e["message"].split(" step compiled")[0]: e["phase"] for e in events if "step compiled" in e.get("message", "")}
    assert said == {"weight": "warmup", "architecture": "search"}
    # the architecture step froze the weights only while it ran
    assert all(p.requires_grad for p in comp_s.model.weight_parameters())


def test_the_dropout_rate_changing_every_epoch_compiles_nothing_more(table, camvid_train, tmp_path, monkeypatch):
    """Free-op dropout on (0.3, decaying every epoch): still one graph per step kind (a float rate: 5)."""
    _, comp, _ = run_search(table, camvid_train, tmp_path, "default", backend="aot_eager", monkeypatch=monkeypatch)
    assert [h["free_op_dropout"] for h in comp.history] == [0.3, 0.2, 0.1]
    assert comp.compile["used"] == "default" and comp.compile["graphs"] == 2 and comp.compile["graph_breaks"] == 0


def test_reduce_overhead_on_cpu_compiles_as_default_and_says_so(table, camvid_train, tmp_path, monkeypatch):
    _, res, _ = run_search(table, camvid_train, tmp_path, "reduce-overhead", backend="aot_eager", monkeypatch=monkeypatch)
    assert res.compile["used"] == "default" and "need CUDA" in res.compile["note"]


def _fails_in_backward():
    def bw(gm, example_inputs):
        raise RuntimeError("no backward compiler at /opt/secret/toolchain")
    return aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=bw)


def test_a_failed_compile_falls_back_to_eager_undone_and_said(table, camvid_train, tmp_path, monkeypatch):
    """The compiled forward runs (BN statistics move, the Gumbel sample and the dropout draw from the RNG), then its
    backward fails to compile: the step is undone and redone eagerly, so the whole search equals the eager one."""
    eager_s, eager, _ = run_search(table, camvid_train, tmp_path, "off")
    fb_s, fb, events = run_search(table, camvid_train, tmp_path, "default", backend=_fails_in_backward(), monkeypatch=monkeypatch)
    assert fb.compile["used"] == "eager"
    reason = fb.compile["fallback"]
    assert "no backward compiler" in reason and "/opt/secret" not in reason
    assert any(e["phase"] == "warmup" and "fell back to eager" in e["message"] for e in events)
    assert_same_search(eager, fb)
    ref = eager_s.model.state_dict()
    for k, v in fb_s.model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=k)


def test_free_op_dropout_eager_is_native_dropout_and_compiled_reads_the_buffer():
    """Eager: exactly torch.native_dropout (F.dropout's fused kernel on CUDA; a 1-byte mask saved on any device).
    Compiled: the rate from the buffer, so a new rate needs no new graph; it drops about that share and rescales
    the rest. Eval mode or rate 0: identity."""
    net = SuperNet(CFG, GGMConfig()).train()
    net.set_free_op_dropout(0.3)
    drops = [m for m in net.modules() if type(m).__name__ == "FreeOpDropout"]
    assert drops and all(abs(d.p - 0.3) < 1e-6 and d.active for d in drops)
    drop, y = drops[0], torch.ones(200_000)
    torch.manual_seed(1)
    ref = torch.native_dropout(y, 0.3, True)[0]
    torch.manual_seed(1)
    assert torch.equal(drop(y), ref)
    from torch._dynamo.utils import counters
    graphs0 = counters["stats"]["unique_graphs"]
    compiled = torch.compile(drop, backend="aot_eager")
    for p in (0.3, 0.1):
        net.set_free_op_dropout(p)
        out = compiled(y)
        assert abs(float((out == 0).float().mean()) - p) < 0.01
        torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)))
    assert counters["stats"]["unique_graphs"] - graphs0 == 1
    net.eval()
    assert torch.equal(drop(y), y)
    net.train().set_free_op_dropout(0.0)
    assert torch.equal(drop(y), y)
    assert not any("keep" in k for k in net.state_dict())  # checkpoints unchanged


def test_free_op_dropout_saves_a_one_byte_mask():
    """What a free op's dropout keeps for backward: the bool mask (F.dropout on a CPU keeps a float one)."""
    from core.estimate import saved_bytes
    drop = SuperNet(CFG, GGMConfig()).train()
    drop.set_free_op_dropout(0.3)
    m = next(x for x in drop.modules() if type(x).__name__ == "FreeOpDropout")
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    assert saved_bytes(lambda t: m(t) * 2.0, x) == x.numel()  # one byte per element
