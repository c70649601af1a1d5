"""The search-quality benchmark runs end to end (toy sizes, CPU), so a GPU lease is not wasted on a crash.

Its numbers mean nothing; the benchmark itself is run by hand (docs/SEARCH_QUALITY.md).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("GAS_SHARED", REPO.parent / "shared")) / "datasets" / "camvid"


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_search_quality_smoke_writes_every_arm(profile, tmp_path):
    if not CAMVID.is_dir():
        pytest.fail(f"CamVid not found at {CAMVID} (set GAS_SHARED)")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    seeds = 2 if profile == "cpu" else 1  # the cpu run also checks --retrain-seeds (an arm's score: the mean)
    subprocess.run([sys.executable, str(REPO / "bench" / "search_quality.py"), "--profile", profile, "--smoke",
                    "--data", str(CAMVID), "--out", str(tmp_path / "out"), "--peer-script", str(tmp_path / "absent.py"),
                    "--retrain-seeds", str(seeds)],
                   check=True, env=env, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "out" / f"search_quality_{profile}_smoke.json").read_text())
    assert {"gas_s0", "random_0", "random_1", "no_ggm"} <= set(res["arms"])
    for arm in res["arms"].values():
        assert arm["measured_ms"] > 0 and len(arm["measured_rounds_ms"]) == 5 and "test_miou" in arm
        assert list(arm["test_miou_by_seed"]) == [str(s) for s in range(seeds)]
        assert arm["test_miou"] == pytest.approx(sum(arm["test_miou_by_seed"].values()) / seeds)
    assert res["device"] and res["threads"]["intra_op"] >= 1 and "summary" in res
    assert (tmp_path / "out" / f"search_quality_{profile}_smoke.md").read_text().startswith("**Smoke run")


def test_search_step_cost_smoke(tmp_path):
    """bench/search_step_cost.py end to end at toy sizes: both variants counted, ratios written."""
    subprocess.run([sys.executable, str(REPO / "bench" / "search_step_cost.py"), "--smoke", "--out", str(tmp_path),
                    "--compile", "cpu", "--backend", "aot_eager"], check=True, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "search_step_cost_smoke.json").read_text())
    plain, batched = res["variants"]["plain"], res["variants"]["batched"]
    comp = res["compiled_cpu"]["batched+default"]  # the compiled variant ran compiled, in the same run
    assert comp["compile"]["used"] == "default" and comp["compile"]["fallback"] is None
    assert comp["compile"]["graphs"] == 2 and comp["median_ms"] > 0 and res["compiled_cpu"]["step_time_vs_batched_eager"] > 0
    assert batched["aten_calls"]["search_step"]["kernels"] < plain["aten_calls"]["search_step"]["kernels"]
    assert batched["saved_bytes_per_image"] < plain["saved_bytes_per_image"]
    assert batched["weight_parameters"] == plain["weight_parameters"]


@pytest.mark.slow
def test_latency_trust_smoke_writes_both_conditions(tmp_path):
    """bench/latency_trust.py at toy sizes (it starts two CPU hogs for a few seconds)."""
    subprocess.run([sys.executable, str(REPO / "bench" / "latency_trust.py"), "--smoke", "--out", str(tmp_path),
                    "--runtimes", "torch-eager,onnxruntime"], check=True, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "latency_trust_smoke.json").read_text())
    assert res["device"] and res["runtimes"] == ["torch-eager", "onnxruntime"] and len(res["runs"]) == 4
    assert [r["runtime"] for r in res["runs"]] == ["torch-eager"] * 2 + ["onnxruntime"] * 2
    for run in res["runs"]:
        assert [c["condition"] for c in run["conditions"]] == ["quiet", "hogs"]
        assert {"lut_vs_quiet", "measured_vs_quiet", "flagged"} <= set(run["silent"])
        for c in run["conditions"]:
            assert len(c["networks"]) == 3 and "median_rel_error" in c and "trusted" in c["table"]
        quiet = run["conditions"][0]
        assert all(r["retest_ms"] > 0 for r in quiet["networks"]) and quiet["retest"]["spread_max_over_min"] >= 1.0
    md = (tmp_path / "latency_trust_smoke.md").read_text()
    assert md.startswith("**Smoke run") and "ρ measured vs retest" in md


def test_retrain_seeds_smoke_retrains_recorded_genotypes(tmp_path):
    """bench/retrain_seeds.py at toy sizes on the genotypes attempt 9 recorded: each gets a second score."""
    if not CAMVID.is_dir():
        pytest.fail(f"CamVid not found at {CAMVID} (set GAS_SHARED)")
    subprocess.run([sys.executable, str(REPO / "bench" / "retrain_seeds.py"), "--smoke", "--data", str(CAMVID),
                    "--results", str(REPO / "bench" / "results" / "search_quality_cpu_attempt9.json"),
                    "--out", str(tmp_path), "--work", str(tmp_path / "work")], check=True, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "retrain_seeds_cpu_smoke.json").read_text())
    assert [a["kind"] for a in res["arms"].values()] == ["gas", "random"]  # interleaved by kind
    for arm in res["arms"].values():
        assert set(arm["scores"]) == {"0", "1"} and arm["genotype"]["format"] == "gas-genotype"
    assert res["analysis"]["with_repeats"] == 2 and res["analysis"]["within_genotype_sd_points"] is not None
    assert (tmp_path / "retrain_seeds_cpu_smoke.md").read_text().startswith("**Smoke run")


def test_retrain_seeds_icc_tells_a_ranking_protocol_from_noise():
    """The analysis of bench/retrain_seeds.py on made-up scores: seeds that agree give ICC 1, seeds that
    only add noise to equal genotypes give ICC 0, and GAS minus random is computed on the seed means."""
    sys.path.insert(0, str(REPO / "bench"))
    from retrain_seeds import analyse

    def arms(scores: list[tuple[str, float, float]]) -> dict:
        return {f"g{i}": {"kind": k, "scores": {"0": a, "1": b}} for i, (k, a, b) in enumerate(scores)}

    ranked = analyse(arms([("gas", 0.40, 0.40), ("gas", 0.38, 0.38), ("random", 0.34, 0.34), ("random", 0.36, 0.36)]))
    assert ranked["icc_single_retrain"] == 1.0 and ranked["within_genotype_sd_points"] == 0.0
    assert ranked["gas_minus_random_points"] == 4.0 and ranked["gas_above_random_permutation_p"] < 0.2
    noise = analyse(arms([("gas", 0.34, 0.36), ("gas", 0.36, 0.34), ("random", 0.34, 0.36), ("random", 0.36, 0.34)]))
    assert noise["icc_single_retrain"] == 0.0 and noise["gas_minus_random_points"] == 0.0
    assert noise["within_genotype_sd_points"] > 1.0


def test_supernet_ranking_smoke_scores_every_genotype_on_every_supernet(tmp_path):
    """bench/supernet_ranking.py at toy sizes: a search per seed, three scores per genotype, the analysis."""
    if not CAMVID.is_dir():
        pytest.fail(f"CamVid not found at {CAMVID} (set GAS_SHARED)")
    subprocess.run([sys.executable, str(REPO / "bench" / "supernet_ranking.py"), "--smoke", "--data", str(CAMVID),
                    "--seeds", "0", "1", "--bn-images", "4", "--out", str(tmp_path), "--work", str(tmp_path / "work")],
                   check=True, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "supernet_ranking_cpu_smoke.json").read_text())
    assert len(res["arms"]) == 3 and set(res["scores"]) == {"0", "1"}
    for scores in res["scores"].values():
        for s in scores.values():
            assert s["alpha"] < 0 and 0.0 <= s["oneshot"] <= 1.0  # log-probabilities; an IoU
    an = res["analysis"]
    assert {"alpha_s0", "pt_s1", "oneshot_mean"} <= set(an["scores"]) and set(an["supernet_agreement"]) == {"alpha", "pt", "oneshot"}
    assert (tmp_path / "supernet_ranking_cpu_smoke.md").read_text().startswith("**Smoke run")
    # the sampled-path warm-up (SPOS-style): every warm-up weight step trained one random path
    subprocess.run([sys.executable, str(REPO / "bench" / "supernet_ranking.py"), "--smoke", "--data", str(CAMVID),
                    "--seeds", "0", "--bn-images", "4", "--warmup-paths", "sampled", "--tag", "sampled",
                    "--out", str(tmp_path), "--work", str(tmp_path / "work_sampled")], check=True, timeout=600, capture_output=True)
    sampled = json.loads((tmp_path / "supernet_ranking_cpu_sampled_smoke.json").read_text())["searches"]["0"]
    assert sampled["sampled_steps"] == sampled["steps"]["warmup_steps"] > 0


def test_supernet_ranking_path_is_the_supernet_and_one_hot_is_the_genotype():
    """The one-shot path runs the supernet's own forward (with softmax(α') it gives SuperNet's output), and a
    genotype's one-hot weights switch on exactly its kept (edge, op) pairs; the rank statistics and the
    ceiling behave as defined."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from supernet_ranking import analyse, kendall_tau, one_hot

    from core.cell import cell_edges
    from core.derive import random_genotype
    from core.network import SuperNet
    from core.specs import GGMConfig, NetworkConfig

    torch.manual_seed(0)
    net = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, nodes=3,
                        head_channels=16, low_level_channels=8)
    model = SuperNet(net, GGMConfig()).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(model.forward_mixed(x, model.op_weights(model.alpha_prime())), model(x), atol=1e-6)
    g = random_genotype(net, model.ops, torch.Generator().manual_seed(3))
    edges = cell_edges(net.nodes)
    for w, cell in zip(one_hot(g, model.ops, net.nodes, len(edges)), g.cells):
        assert w.sum() == 2 * net.nodes and (w.sum(1) <= 1).all()
        on = {(edges[e], model.ops[o]) for e, o in w.nonzero().tolist()}
        assert on == {((e.input, i), e.op) for i, pair in enumerate(cell.nodes) for e in pair}
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0 and kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    arms = {f"g{i}": {"mean": m, "weight_free_normal": f} for i, (m, f) in enumerate([(0.30, 1), (0.32, 2), (0.35, 3), (0.37, 4)])}
    perfect = {h: {"alpha": v["mean"], "pt": -v["mean"], "oneshot": v["mean"]} for h, v in arms.items()}
    an = analyse(arms, {"0": perfect}, icc=0.37, k=3)
    assert an["scores"]["alpha_s0"]["vs_retrained"]["spearman"] == 1.0
    assert an["scores"]["pt_s0"]["vs_retrained"]["spearman"] == -1.0
    assert an["scores"]["pt_s0"]["vs_retrained"]["p_spearman_positive"] > 0.9
    assert an["ceiling_vs_k_seed_mean"] == round((3 * 0.37 / (1 + 2 * 0.37)) ** 0.5, 3)
