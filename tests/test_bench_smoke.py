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
    subprocess.run([sys.executable, str(REPO / "bench" / "search_quality.py"), "--profile", profile, "--smoke",
                    "--data", str(CAMVID), "--out", str(tmp_path / "out"), "--peer-script", str(tmp_path / "absent.py")],
                   check=True, env=env, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "out" / f"search_quality_{profile}_smoke.json").read_text())
    assert {"gas_s0", "random_0", "random_1", "no_ggm"} <= set(res["arms"])
    for arm in res["arms"].values():
        assert arm["measured_ms"] > 0 and len(arm["measured_rounds_ms"]) == 5 and "test_miou" in arm
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
    subprocess.run([sys.executable, str(REPO / "bench" / "latency_trust.py"), "--smoke", "--out", str(tmp_path)],
                   check=True, timeout=600, capture_output=True)
    res = json.loads((tmp_path / "latency_trust_smoke.json").read_text())
    assert res["device"] and res["runtime"] == "torch-eager" and len(res["runs"]) == 2
    for run in res["runs"]:
        assert [c["condition"] for c in run["conditions"]] == ["quiet", "hogs"]
        assert {"lut_vs_quiet", "measured_vs_quiet", "flagged"} <= set(run["silent"])
        for c in run["conditions"]:
            assert len(c["networks"]) == 3 and "median_rel_error" in c and "trusted" in c["table"]
        quiet = run["conditions"][0]
        assert all(r["retest_ms"] > 0 for r in quiet["networks"]) and quiet["retest"]["spread_max_over_min"] >= 1.0
    md = (tmp_path / "latency_trust_smoke.md").read_text()
    assert md.startswith("**Smoke run") and "ρ measured vs retest" in md
