"""core.checkpoint: atomic writes, weights-only loads, safetensors export, training state."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from core import checkpoint as ck
from core.data import Augment, DeviceLoader, SegData


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # shared tensor
        self.bn = nn.BatchNorm1d(4)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_json_roundtrip_and_nan_refused(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "r.json"
    ck.save_json(p, {"a": [1, 2.5, None], "b": "x"})
    assert ck.load_json(p) == {"a": [1, 2.5, None], "b": "x"}
    with pytest.raises(ValueError):
        ck.save_json(p, {"a": float("nan")})
    assert ck.load_json(p)["b"] == "x"


def test_failing_writer_leaves_previous_file_intact(tmp_path: Path) -> None:
    p = tmp_path / "state.pt"
    ck.save_state(p, {"w": torch.arange(3)})
    before = p.read_bytes()

    def half_then_fail(f) -> None:
        f.write(b"partial garbage")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.atomic_write(p, half_then_fail)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind
    assert torch.equal(ck.load_state(p)["w"], torch.arange(3))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_state_is_weights_only(tmp_path: Path) -> None:
    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        ck.load_state(p)
    torch.save({"x": _Evil()}, p)
    with pytest.raises(pickle.UnpicklingError):
        ck.load_state(p)


def test_weights_roundtrip_with_tied_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = _Tied()
    m.bn.running_mean.add_(1.5)
    p = tmp_path / "w.safetensors"
    ck.save_weights(m, p, {"epoch": "3"})
    torch.manual_seed(1)
    m2 = _Tied()
    meta = ck.load_weights(m2, p)
    assert meta["epoch"] == "3"
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert m2.b.weight is m2.a.weight
    with pytest.raises(RuntimeError):
        ck.load_weights(nn.Linear(4, 4), p)


def test_training_state_restores_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    data = SegData(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), torch.zeros(5, 4, 4, dtype=torch.uint8),
                   list("abcde"), 2, 255, ["x", "y"])
    loader = DeviceLoader(data, 2, "cpu", augment=Augment(flip=True), seed=4)
    loader.next_batch()
    p = tmp_path / "state" / "t.pt"
    ck.save_training_state(p, model, opt, None, 7, loader, extra={"best": 0.5, "note": "hi"})
    expect_rand = torch.rand(3)
    expect_batch = loader.next_batch()[1]
    expect_w = model.weight.detach().clone()

    torch.manual_seed(123)
    model2 = nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    loader2 = DeviceLoader(data, 2, "cpu", augment=Augment(flip=True), seed=0)
    info = ck.load_training_state(p, model2, opt2, None, loader2)
    assert info == {"epoch": 7, "extra": {"best": 0.5, "note": "hi"}}
    assert torch.equal(torch.rand(3), expect_rand)
    assert torch.equal(loader2.next_batch()[1], expect_batch)
    assert torch.equal(model2.weight, expect_w)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
