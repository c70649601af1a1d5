"""core.fps: batch-1 latency statistics and the speed report (CPU paths; CUDA paths share the code)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import core.fps as fps
from core.fps import fps_report, latency_stats, measure_latency, measure_optimised

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 32, 48
ITERS = 7
WARMUP = 2



def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 11, 1))


def test_latency_stats_by_hand() -> None:
    s = latency_stats([4.0, 1.0, 3.0, 2.0, 10.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["count"] == 5
    assert s["p90_ms"] == pytest.approx(4.0 + 0.6 * 6.0)  # position 3.6 between 4 and 10
    assert s["fps"] == pytest.approx(1000 / 3)
    with pytest.raises(ValueError):
        latency_stats([])


def test_measure_latency_counts_and_leaves_model_alone() -> None:
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = measure_latency(net, H, W, "cpu", "fp32", warmup=WARMUP, iters=ITERS)
    assert r["count"] == ITERS and 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert (r["height"], r["width"], r["batch"], r["precision"]) == (H, W, 1, "fp32")
    assert net.training  # measured on an eval copy; BN statistics untouched
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="CUDA only"):
        measure_latency(net, H, W, "cpu", "fp16", warmup=1, iters=1)


def test_fps_report_cpu() -> None:
    r = fps_report(_net(), H, W, "cpu", iters=ITERS, lut_prediction_ms=1.5, budget_ms=1e6, warmup=WARMUP)
    assert r["precisions"] == ["fp32"] and "fp32 only" in r["precision_note"]
    assert r["device_type"] == "cpu" and r["device"] and r["torch"] == torch.__version__
    assert {"cuda", "cudnn", "cudnn_benchmark"} <= set(r)
    assert (r["height"], r["width"], r["batch"]) == (H, W, 1)
    eager = r["measurements"]["fp32"]["eager"]
    assert r["measured_ms"] == eager["median_ms"] and r["measured_fps"] == pytest.approx(1000 / eager["median_ms"])
    assert r["lut_prediction_ms"] == 1.5 and r["lut_error_pct"] == pytest.approx(
        100 * (1.5 - eager["median_ms"]) / eager["median_ms"])
    assert r["budget_met"] is True
    status = r["optimised_path"]["status"]
    assert status == "ok" or status.startswith("unavailable: ")
    if status == "ok":
        assert r["measurements"]["fp32"]["optimised"]["count"] == ITERS and r["optimised_ms"] > 0
    tight = fps_report(_net(), H, W, "cpu", iters=ITERS, budget_ms=1e-6, warmup=WARMUP, optimise=False)
    assert tight["budget_met"] is False and tight["optimised_path"]["status"] == "not requested"
    assert fps_report(_net(), H, W, "cpu", iters=ITERS, warmup=WARMUP, optimise=False)["budget_met"] is None


def test_failing_optimiser_is_reported_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_m, _x):
        raise RuntimeError("no compiler here")

    monkeypatch.setitem(fps.OPTIMISERS, "jit_trace_freeze", broken)
    r = measure_optimised(_net(), H, W, "cpu", warmup=WARMUP, iters=ITERS)
    assert r["method"] is None
    assert r["status"].startswith("unavailable: ") and "no compiler here" in r["status"]
    rep = fps_report(_net(), H, W, "cpu", iters=ITERS, warmup=WARMUP, budget_ms=1e6)
    assert "no compiler here" in rep["optimised_path"]["status"] and rep["optimised_ms"] is None
    assert rep["budget_met_optimised"] is None and rep["budget_met"] is True
