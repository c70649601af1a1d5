"""Hostile checkpoints: a pickle payload planted as a job's ``state/search.pt`` or
``state/train_state.pt`` (its unpickling would create a marker file) is refused by
``core.checkpoint.load_state`` and by resuming a search or a retrain, and its code never runs."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from core import checkpoint as ck
from core.latency import LatencyModel, build_table
from core.latency_loss import LatencyPenalty
from core.network import SuperNet
from core.search import STATE_FILE as SEARCH_STATE, Searcher
from core.specs import GGMConfig, LatencyConfig, NetworkConfig, RetrainConfig, SearchConfig
from core.train import STATE_FILE as TRAIN_STATE, STATE_SUBDIR, train

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file appears iff the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"version": 1, "epoch": 3, "model": {}, "evil": Payload(marker)}, path)
    assert not marker.exists()


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path):
    """Sanity: the pickle inside the planted file really runs code when unpickled by plain pickle
    (so its absence below means something)."""
    import zipfile

    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    plant(evil, marker)
    with zipfile.ZipFile(evil) as zf:
        inner = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        pickle.loads(zf.read(inner))  # the payload holds no tensors, so no persistent ids to resolve
    assert marker.exists()


@pytest.mark.parametrize("name", [SEARCH_STATE, TRAIN_STATE])
def test_load_state_refuses_a_planted_payload(tmp_path, name):
    marker, evil = tmp_path / "pwned", tmp_path / "job" / "state" / name
    plant(evil, marker)
    with pytest.raises(pickle.UnpicklingError):
        ck.load_state(evil)
    with pytest.raises(pickle.UnpicklingError):
        ck.load_training_state(evil, nn.Linear(2, 2))
    assert not marker.exists()


def test_resuming_a_search_refuses_a_planted_state(tmp_path, camvid_train):
    cfg = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                        low_level_channels=8, nodes=2)
    net = SuperNet(cfg, GGMConfig())
    table = build_table(cfg, net.ops, 48, 64, torch.device("cpu"), "fp32", 1, 1)
    state_dir = tmp_path / "job" / "state"
    marker = tmp_path / "pwned"
    plant(state_dir / SEARCH_STATE, marker)
    searcher = Searcher(net, LatencyModel(table, cfg, net.ops, 48, 64), LatencyPenalty(LatencyConfig(budget_ms=1.0)),
                        SearchConfig(epochs=2, warmup_epochs=1, batch_size=2, seed=0), camvid_train,
                        torch.device("cpu"), state_dir, lambda e: None, lambda: False)
    with pytest.raises(pickle.UnpicklingError):
        searcher.run()
    assert not marker.exists()


def test_resuming_a_retrain_refuses_a_planted_state(tmp_path, camvid_train, camvid_val):
    workdir = tmp_path / "job"
    marker = tmp_path / "pwned"
    plant(workdir / STATE_SUBDIR / TRAIN_STATE, marker)
    model = nn.Sequential(nn.Conv2d(3, 11, 3, 1, 1))
    with pytest.raises(pickle.UnpicklingError):
        train(model, camvid_train, camvid_val, RetrainConfig(epochs=1, batch_size=2), workdir, "cpu")
    assert not marker.exists()
