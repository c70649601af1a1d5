"""core.train: learning on real CamVid frames, exact resume, cancel, budget, report."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from core.data import SegData
from core.jobs import Cancelled
from core.specs import RetrainConfig
from core.train import BEST_WEIGHTS, LAST_WEIGHTS, STATE_FILE, STATE_SUBDIR, poly_lr, train

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 11


class TinySeg(nn.Module):
    """A few convolutions at 1/2 resolution; enough to overfit six frames."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 2, dilation=2), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, NUM_CLASSES, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # half resolution: train upsamples to the target



def _model(seed: int = 0) -> TinySeg:
    torch.manual_seed(seed)
    return TinySeg()


def _cfg(**kw) -> RetrainConfig:
    base = dict(epochs=4, batch_size=2, lr=5e-3, crop_height=32, crop_width=48, scale_min=0.75, scale_max=1.25,
                eval_every=1, seed=1)
    return RetrainConfig(**{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_poly_lr() -> None:
    assert poly_lr(1.0, 0.0, 0.9) == 1.0 and poly_lr(1.0, 1.0, 0.9) == 0.0 and poly_lr(1.0, 2.0, 0.9) == 0.0
    assert poly_lr(2.0, 0.5, 1.0) == pytest.approx(1.0)


def test_resume_after_kill_equals_straight_run(tmp_path: Path, camvid_train: SegData, camvid_val: SegData) -> None:
    cfg = _cfg()
    straight = train(_model(), camvid_train, camvid_val, cfg, tmp_path / "a", "cpu")

    class Kill(Exception):
        pass

    def kill_after_epoch_2(event: dict) -> None:
        if event["epoch"] == 2 and "miou" in event["metrics"]:
            raise Kill

    with pytest.raises(Kill):
        train(_model(), camvid_train, camvid_val, cfg, tmp_path / "b", "cpu", progress=kill_after_epoch_2)
    assert (tmp_path / "b" / STATE_SUBDIR / STATE_FILE).is_file()
    events: list[dict] = []
    resumed = train(_model(seed=77), camvid_train, camvid_val, cfg, tmp_path / "b", "cpu", progress=events.append)
    assert resumed["resumed_from_epoch"] == 2 and straight["resumed_from_epoch"] is None
    assert [e["epoch"] for e in events if "miou" in e["metrics"]] == [3, 4]
    for name in (LAST_WEIGHTS, BEST_WEIGHTS):
        a, b = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    for key in ("best_miou", "last_miou", "best_epoch", "steps", "epochs_completed"):
        assert straight[key] == resumed[key], key
    assert straight["last"]["per_class_iou"] == resumed["last"]["per_class_iou"]
    # the per-epoch history survives the kill: epochs 1-2 from the saved state, 3-4 from the resumed run
    clock = "train_seconds"
    assert [{k: v for k, v in h.items() if k != clock} for h in resumed["history"]] == \
        [{k: v for k, v in h.items() if k != clock} for h in straight["history"]]
    assert [h["epoch"] for h in straight["history"]] == [1, 2, 3, 4]
    assert straight["last"]["confusion"] == resumed["last"]["confusion"]
    # A finished run called again trains nothing and reports the same.
    again = train(_model(seed=5), camvid_train, camvid_val, cfg, tmp_path / "b", "cpu")
    assert again["steps"] == straight["steps"] and again["last_miou"] == straight["last_miou"]
    # Other settings on the same workdir are refused, not silently mixed.
    with pytest.raises(ValueError, match="cfg.lr"):
        train(_model(), camvid_train, camvid_val, _cfg(lr=1e-3), tmp_path / "b", "cpu")


def test_learns_better_than_the_majority_class(tmp_path: Path, camvid_train: SegData) -> None:
    valid = camvid_train.masks[camvid_train.masks != camvid_train.ignore_index].long()
    counts = torch.bincount(valid, minlength=NUM_CLASSES)
    # Predicting the most frequent class everywhere: IoU = its share of pixels, 0 for every other
    # class present; the mean runs over the classes present in the ground truth.
    majority_miou = float(counts.max() / counts.sum()) / int((counts > 0).sum())
    cfg = _cfg(epochs=12, scale_min=1.0, scale_max=1.0, crop_height=0, crop_width=0, lr=1e-2, eval_every=4)
    report = train(_model(), camvid_train, camvid_train, cfg, tmp_path, "cpu")
    assert report["last_miou"] > majority_miou + 0.05, (report["last_miou"], majority_miou)
    assert report["best_miou"] >= report["last_miou"]
    assert report["last"]["pixel_acc"] > float(counts.max() / counts.sum())
    assert report["best"]["checkpoint"] == BEST_WEIGHTS and report["last"]["checkpoint"] == LAST_WEIGHTS
    assert report["last"]["epoch"] == 12 and report["best"]["epoch"] in (4, 8, 12)
    assert set(report["last"]["per_class_iou"]) == set(camvid_train.class_names)
    assert report["steps"] == 12 * 3 and report["images_per_s"] > 0 and report["train_seconds"] > 0
    assert report["stopped_by"] == "epochs"


def test_progress_events_and_cancel(tmp_path: Path, camvid_train: SegData, camvid_val: SegData) -> None:
    events: list[dict] = []
    train(_model(), camvid_train, camvid_val, _cfg(epochs=1, eval_every=1), tmp_path / "p", "cpu",
          progress=events.append)
    end = events[-1]
    assert end["phase"] == "train" and end["epoch"] == 1 and end["epochs"] == 1
    assert end["step"] == end["steps"] == 3 and set(end["metrics"]) == {"loss", "lr", "miou"}
    polls = iter([False, False, True])
    with pytest.raises(Cancelled):
        train(_model(), camvid_train, camvid_val, _cfg(), tmp_path / "c", "cpu", should_cancel=lambda: next(polls))
    assert not (tmp_path / "c" / STATE_SUBDIR / STATE_FILE).exists()


def test_time_budget_stops_training(tmp_path: Path, camvid_train: SegData, camvid_val: SegData) -> None:
    budget = 0.6
    report = train(_model(), camvid_train, camvid_val, _cfg(epochs=10_000, time_budget_s=budget), tmp_path, "cpu")
    assert report["stopped_by"] == "time_budget"
    assert report["epochs_completed"] < 10_000
    assert budget <= report["train_seconds"] < budget + 2.0
    assert report["last"]["epoch"] == report["epochs_completed"]


def test_retrain_reports_and_ships_the_last_epoch_not_the_best(tmp_path: Path, camvid_ref, monkeypatch) -> None:
    """The headline mIoU is the last epoch's on the eval split (no selection on it); the best is labelled."""
    import json

    import core.pipeline as pipeline
    import core.train as core_train
    from core.derive import random_genotype
    from core.jobs import run_retrain
    from core.ops import op_names
    from core.specs import NetworkConfig, RetrainJobSpec

    net = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                        low_level_channels=8, nodes=2)
    genotype = random_genotype(net, op_names(), torch.Generator().manual_seed(0))
    fake = iter([0.2, 0.6, 0.4])  # the best evaluated epoch (2) is not the last (3)
    real_evaluate = core_train.evaluate
    monkeypatch.setattr(core_train, "evaluate", lambda *a, **k: {**real_evaluate(*a, **k), "miou": next(fake)})
    monkeypatch.setattr(pipeline, "fps_report", lambda *a, **k: {"measured_fps": 1.0, "device": "cpu"})
    spec = RetrainJobSpec(dataset=camvid_ref, genotype=genotype.model_dump(mode="json"), height=48, width=64,
                          train=_cfg(epochs=3, eval_every=1), fps_iters=5)
    summary = run_retrain(spec, tmp_path)
    assert summary["miou"] == 0.4 and summary["miou_epoch"] == 3
    assert summary["best_miou"] == 0.6 and summary["best_epoch"] == 2
    assert summary["miou_split"] == "val" and summary["miou_selection"] == "last epoch"
    report = json.loads((tmp_path / "artifacts" / "report.json").read_text())
    assert report["miou"] == 0.4 and report["miou_split"] == "val" and report["miou_selection"] == "last epoch"
    assert report["best_miou"] == 0.6 and report["best_epoch"] == 2 and "best_note" in report
    # the page's curves and confusion matrix: one history entry per epoch, mIoU where evaluated
    hist = report["train"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and [h["miou"] for h in hist] == [0.2, 0.6, 0.4]
    assert all(h["loss"] > 0 for h in hist)
    conf = report["train"]["last"]["confusion"]
    assert len(conf) == camvid_ref.num_classes and sum(map(sum, conf)) == report["train"]["last"]["pixels"]
    # sample predictions: prediction over the image beside the ground truth, one PNG per eval image
    from PIL import Image

    samples = report["samples"]
    assert samples["files"] == [f"sample_{i}.png" for i in range(4)] and samples["split"] == "val"
    with Image.open(tmp_path / "artifacts" / "sample_0.png") as im:
        assert im.size == (2 * 64 + 4, 48) and im.mode == "RGB"
    shipped = _weights(tmp_path / "artifacts" / "checkpoint.safetensors")
    last, best = _weights(tmp_path / LAST_WEIGHTS), _weights(tmp_path / BEST_WEIGHTS)
    assert shipped.keys() == last.keys()
    assert all(torch.equal(shipped[k], last[k]) for k in last)
    assert not all(torch.equal(shipped[k], best[k]) for k in best)


def test_resume_refuses_the_state_of_a_network_that_differs_only_in_weight_free_ops(
        tmp_path: Path, camvid_train: SegData, camvid_val: SegData) -> None:
    """A skip <-> max_pool swap changes no parameter shape; the fingerprint still tells the networks apart."""
    from core.derive import random_genotype
    from core.genotype import Edge
    from core.network import DerivedNet
    from core.specs import NetworkConfig

    net = NetworkConfig(num_cells=2, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                        low_level_channels=8, nodes=2)
    ops = ["none", "skip_connect", "max_pool_3x3", "conv_3x3"]
    g = random_genotype(net, ops, torch.Generator().manual_seed(0))
    edge = g.cells[0].nodes[1][1]
    g.cells[0].nodes[1] = (g.cells[0].nodes[1][0], Edge(input=edge.input, op="skip_connect"))
    other = g.model_copy(deep=True)
    other.cells[0].nodes[1] = (g.cells[0].nodes[1][0], Edge(input=edge.input, op="max_pool_3x3"))
    cfg = _cfg(epochs=1)
    train(DerivedNet(g), camvid_train, camvid_val, cfg, tmp_path, "cpu")
    (tmp_path / LAST_WEIGHTS).unlink()  # only the state matters for resuming
    with pytest.raises(ValueError, match=r"different settings or data \(model\)"):
        train(DerivedNet(other), camvid_train, camvid_val, cfg, tmp_path, "cpu")
