"""Issue 11 section 5: the runtime is part of the budget (core/runtimes.py).

A search for ``onnxruntime`` on the CPU times its table, its end-to-end measurements and its FPS verdict
in onnxruntime, and the network it hands back runs within its budget when this test exports it and
times it in onnxruntime itself (its own session and clock, not the core's)."""
from __future__ import annotations

import io
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

import core.runtimes as runtimes
from core.derive import random_genotype
from core.genotype import load_genotype
from core.jobs import run_feasibility, run_search
from core.latency import build_table
from core.network import DerivedNet
from core.ops import op_names
from core.specs import DatasetRef, LatencyConfig, NetworkConfig, SearchConfig, SearchJobSpec
from core.threads import Threads

CPU = torch.device("cpu")
NET = NetworkConfig(num_cells=3, reduction_cells=[1], nodes=2, init_channels=16, stem_channels=8, head_channels=16,
                    low_level_channels=8)
H, W = 128, 192  # large enough that the ops, not the per-call overhead, decide a network's latency
LENIENT = dict(height=H, width=W, warmup_runs=2, repeats=5, e2e_repeats=15, lut_check_networks=2,
               noise_max_ratio=1e9, noise_max_median_ratio=1e9, lut_max_error=100.0, lut_min_rank_corr=-1.0, noise_retry_pause_s=0.0)


def ort_median_ms(net: torch.nn.Module, iters: int = 40) -> float:
    """The test's own onnxruntime timing: export, one session (1 thread), median of ``iters`` runs."""
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, H, W),), buf, opset_version=17, input_names=["x"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.rand(1, 3, H, W).astype(np.float32)}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def test_onnxruntime_runs_the_module_and_prices_the_table_in_its_own_identity(monkeypatch):
    g = random_genotype(NET, op_names(), torch.Generator().manual_seed(0))
    net = DerivedNet(g).eval()
    x = torch.randn(1, 3, 32, 48)
    out = runtimes.callable_for("onnxruntime", net, [x], CPU, "fp32", Threads(1, 1))()[0]
    with torch.no_grad():
        assert np.abs(out - net(x).numpy()).max() < 1e-4  # it ran this network, in onnxruntime
    with pytest.raises(ValueError, match="fp32 only"):
        runtimes.check_runtime("onnxruntime", CPU, "fp16")
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes.check_runtime("tensorrt-9", CPU, "fp32")

    built = []
    real = runtimes.RUNTIMES["onnxruntime"]
    monkeypatch.setitem(runtimes.RUNTIMES, "onnxruntime", runtimes.Runtime(
        real.name, real.unsupported, lambda *a: built.append(1) or real.build(*a), real.version))
    ort_table = build_table(NET, op_names(), 32, 48, CPU, "fp32", 1, 3, burst=2, threads=Threads(1, 1),
                            runtime="onnxruntime")
    eager = build_table(NET, op_names(), 32, 48, CPU, "fp32", 1, 3, burst=2, threads=Threads(1, 1))
    assert len(built) == len(ort_table.entries) > 0  # every entry was timed through an onnxruntime session
    ctx = ort_table.context
    assert ctx.runtime == "onnxruntime" and ctx.runtime_version == ort.__version__
    assert eager.context.runtime == "torch-eager" and eager.context.runtime_version is None
    assert ort_table.id != eager.id and set(ort_table.entries) == set(eager.entries)


@pytest.mark.slow
def test_a_search_for_onnxruntime_yields_a_network_that_runs_within_its_budget_in_onnxruntime(camvid_root, tmp_path):
    lut_dir = tmp_path / "luts"
    lat = LatencyConfig(**LENIENT, runtime="onnxruntime")
    # choose the budget as a user would: from what is feasible in onnxruntime on this CPU
    for attempt in range(2):  # one reading of a 2 ms network on a shared host can miss by 40 %: read again once
        feas = run_feasibility({"network": NET.model_dump(), "latency": lat.model_dump(), "repeats": 15,
                                "typical_samples": 16}, tmp_path / f"feasibility{attempt}", lut_dir=lut_dir)["feasibility"]
        assert feas["runtime"] == "onnxruntime"
        cheap = feas["networks"]["cheapest"]["measured"]["median"]
        dear = feas["networks"]["dearest"]["measured"]["median"]
        if dear > 1.2 * cheap:
            break
    assert dear > 1.2 * cheap, feas["networks"]  # premise: the space spans budgets, so the search must choose
    budget = round(cheap + 0.5 * (dear - cheap), 3)  # a budget the dearest networks of the space miss
    spec = SearchJobSpec(dataset=DatasetRef(root=str(camvid_root), layout="camvid"), network=NET,
                         latency=lat.model_copy(update={"budget_ms": budget}),
                         search=SearchConfig(epochs=2, warmup_epochs=1, batch_size=2, seed=0, crop_height=0,
                                             crop_width=0), fps_iters=15)
    summary = run_search(spec, tmp_path / "search", lut_dir=lut_dir)
    art = tmp_path / "search" / "artifacts"
    report = json.loads((art / "report.json").read_text())
    assert summary["runtime"] == report["runtime"] == "onnxruntime"
    assert report["lut"]["context"]["runtime"] == "onnxruntime"  # the table was priced in onnxruntime
    assert report["fps"]["runtime"] == "onnxruntime" and "onnxruntime" in report["fps"]["measurements"]["fp32"]
    assert "eager" in report["fps"]["measurements"]["fp32"]  # torch eager side by side
    assert report["latency_verdict"]["source"] in ("end_to_end", "fps_onnxruntime")
    genotype = load_genotype(art / "genotype.json")
    measured = ort_median_ms(DerivedNet(genotype))
    print(f"budget {budget} ms (feasible {cheap}..{dear}); search says {summary['measured_latency_ms']} ms, "
          f"budget_met {summary['budget_met']}; this test measures {measured:.3f} ms in onnxruntime")
    if not summary["budget_met"]:  # only when the job could not trust its readings (drift or noise), and says so
        assert summary["measurements_trusted"] is False and summary["noise_warnings"] > 0, summary
    else:
        assert measured <= budget, (measured, budget, summary)


def test_torch_optimised_runs_a_captured_module_prices_its_own_table_and_never_falls_back(monkeypatch):
    g = random_genotype(NET, op_names(), torch.Generator().manual_seed(1))
    net = DerivedNet(g).eval()
    x = torch.randn(1, 3, 32, 48)
    fn = runtimes.callable_for("torch-optimised", net, [x], CPU, "fp32", Threads(1, 1))
    with torch.no_grad():
        assert torch.allclose(fn(), net(x), atol=1e-4)  # the frozen trace computes this network
    assert runtimes.OPTIMISED_METHOD["cpu"] == "jit_trace_freeze"

    built = []
    real = runtimes.RUNTIMES["torch-optimised"]
    monkeypatch.setitem(runtimes.RUNTIMES, "torch-optimised", runtimes.Runtime(
        real.name, real.unsupported, lambda *a: built.append(1) or real.build(*a), real.version))
    table = build_table(NET, op_names(), 32, 48, CPU, "fp32", 1, 3, burst=2, threads=Threads(1, 1),
                        runtime="torch-optimised")
    assert len(built) == len(table.entries) > 0 and table.context.runtime == "torch-optimised"

    # a capture that fails is the job's error, naming the method: never eager timings under this name
    import core.fps as fps

    def broken(_m, _xs):
        raise RuntimeError("cannot trace this")

    monkeypatch.setitem(fps.OPTIMISERS, "jit_trace_freeze", broken)
    with pytest.raises(ValueError, match=r"torch-optimised \(jit_trace_freeze\).*cannot trace this"):
        runtimes.callable_for("torch-optimised", net, [x], CPU, "fp32", Threads(1, 1))
