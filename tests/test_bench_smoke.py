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
    subprocess.run([sys.executable, str(REPO / "bench" / "search_step_cost.py"), "--smoke", "--out", str(tmp_path)],
                   check=True, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "search_step_cost_smoke.json").read_text())
    plain, batched = res["variants"]["plain"], res["variants"]["batched"]
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
