"""Search: resume after a kill equals an uninterrupted run; cancel; progress events."""
import pytest
import torch

from core.latency import LatencyModel, build_table
from core.latency_loss import LatencyPenalty
from core.network import SuperNet
from core.search import STATE_FILE, SearchCancelled, Searcher
from core.specs import GGMConfig, LatencyConfig, NetworkConfig, SearchConfig

CFG = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                    low_level_channels=8, nodes=2)
SC = SearchConfig(epochs=3, warmup_epochs=1, batch_size=2, seed=7)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def table():
    return build_table(CFG, SuperNet(CFG, GGMConfig()).ops, 48, 64, torch.device("cpu"), "fp32", 1, 3)


def make(table, data, state_dir, progress=lambda e: None, cancel=lambda: False):
    torch.manual_seed(SC.seed)
    net = SuperNet(CFG, GGMConfig())
    lat = LatencyModel(table, CFG, net.ops, 48, 64)
    return Searcher(net, lat, LatencyPenalty(LatencyConfig(budget_ms=1.0)), SC, data, torch.device("cpu"), state_dir,
                    progress, cancel)


def test_interrupted_and_resumed_equals_uninterrupted(table, camvid_train, tmp_path):
    events = []
    straight = make(table, camvid_train, tmp_path / "a", events.append)
    ref = straight.run()
    assert ref.resumed_from_epoch is None and len(ref.history) == SC.epochs

    def kill_after_epoch_2(ev):
        if ev.get("op_probs") is not None and ev["epoch"] == 2:
            raise Killed()

    with pytest.raises(Killed):
        make(table, camvid_train, tmp_path / "b", kill_after_epoch_2).run()
    assert (tmp_path / "b" / STATE_FILE).exists()
    resumed = make(table, camvid_train, tmp_path / "b").run()
    assert resumed.resumed_from_epoch == 2
    for a, b in zip(ref.alphas, resumed.alphas):
        assert torch.equal(a, b)
    sa = torch.load(tmp_path / "a" / STATE_FILE, weights_only=True)
    sb = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert sa["epoch"] == sb["epoch"] == SC.epochs
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert [h["supernet_miou"] for h in ref.history] == [h["supernet_miou"] for h in resumed.history]
    # progress events carried what a user watches
    phases = {e["phase"] for e in events}
    assert phases == {"warmup", "search"}
    search_steps = [e for e in events if e["phase"] == "search" and "a_loss" in e["metrics"]]
    assert search_steps and all(e["expected_latency_ms"] > 0 for e in search_steps)
    assert len(events[-1]["op_probs"]) == CFG.num_cells


def test_warmup_leaves_alphas_frozen(table, camvid_train, tmp_path):
    s = make(table, camvid_train, tmp_path)
    s.cfg = SC.model_copy(update={"epochs": 1, "warmup_epochs": 1})
    before = [a.detach().clone() for a in s.model.alphas]
    s.run()
    assert all(torch.equal(a, b) for a, b in zip(before, s.model.alphas))


def test_cancel_is_polled_between_steps(table, camvid_train, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(SearchCancelled, match="epoch"):
        make(table, camvid_train, tmp_path, cancel=cancel).run()
    assert len(calls) == 2


def test_default_schedule_can_move_alpha_on_camvid(table, tmp_path):
    """The shipped defaults on CamVid's 367 training frames: a warm-up of a third or more, and enough
    arch steps that Adam can move α by more than a logit and a half (lr x steps bounds its travel)."""
    from core.data import SegData

    n = 367
    data = SegData(torch.zeros(n, 3, 360, 480, dtype=torch.uint8), torch.zeros(n, 360, 480, dtype=torch.uint8),
                   [str(i) for i in range(n)], 11, 11)
    default = SearchConfig()
    net = SuperNet(CFG, GGMConfig())
    s = Searcher(net, LatencyModel(table, CFG, net.ops, 48, 64), LatencyPenalty(LatencyConfig()), default, data,
                 torch.device("cpu"), tmp_path, lambda e: None, lambda: False)
    steps = s.step_counts()
    assert steps["warmup_steps"] >= (steps["warmup_steps"] + steps["arch_steps"]) / 3
    assert default.a_lr * steps["arch_steps"] >= 1.5, steps
    assert steps["crop"][0] * steps["crop"][1] < 360 * 480  # the search trains on crops; the LUT does not


def test_history_records_softmax_alphas_per_cell_edge_op(table, camvid_train, tmp_path):
    """Each epoch's summary (and its epoch-end progress event) carries α' as probabilities per cell, edge, op:
    what the dashboard's heatmap draws; the last epoch's equals softmax of the α' derivation reads."""
    events = []
    s = make(table, camvid_train, tmp_path, events.append)
    s.cfg = SC.model_copy(update={"epochs": 2, "warmup_epochs": 1})
    res = s.run()
    n_edges = sum(2 + i for i in range(CFG.nodes))
    for h in res.history:
        a = h["alphas"]
        assert len(a) == CFG.num_cells and all(len(cell) == n_edges for cell in a)
        assert all(len(row) == len(s.model.ops) and abs(sum(row) - 1) < 2e-3 for cell in a for row in cell)
    last = torch.tensor(res.history[-1]["alphas"])
    want = torch.stack([torch.softmax(x.float(), -1) for x in res.alphas])
    assert torch.allclose(last, want, atol=1e-4)
    # warm-up leaves α at its init, the search epoch moves it
    assert res.history[0]["alphas"] != res.history[1]["alphas"]
    ends = [e for e in events if "alphas" in e]
    assert [e["epoch"] for e in ends] == [1, 2] and ends[-1]["alphas"] == res.history[-1]["alphas"]
