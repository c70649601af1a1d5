"""The local command line, run as a user would (a subprocess), and the LUT validation statistics."""
import json
import subprocess
import sys

import pytest

from core.lut_check import rank_correlation

TINY = ["--set", "network.num_cells=3", "--set", "network.reduction_cells=[1]", "--set", "network.init_channels=8",
        "--set", "network.stem_channels=8", "--set", "network.nodes=2", "--set", "latency.height=32",
        "--set", "latency.width=48", "--set", "latency.repeats=3", "--set", "latency.e2e_repeats=3",
        "--set", "search.epochs=2", "--set", "search.warmup_epochs=1", "--set", "search.batch_size=2",
        "--set", "fps_iters=5"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=600)


def test_settings_lists_every_setting_with_a_meaning():
    out = run("settings")
    assert out.returncode == 0
    rows = [r for r in out.stdout.splitlines() if r.startswith("| ") and not r.startswith("| setting")]
    assert any(r.startswith("| LatencyConfig.budget_ms | 10.0 |") for r in rows)
    assert all(r.rstrip(" |").split("|")[-1].strip() for r in rows), "a setting without documentation"


def test_search_then_benchmark_from_the_command_line(camvid_root, tmp_path):
    out = run("search", "--out", str(tmp_path / "s"), "--data", str(camvid_root), *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    genotype = tmp_path / "s" / "artifacts" / "genotype.json"
    assert genotype.exists() and summary["lut_id"]
    out = run("benchmark", "--out", str(tmp_path / "b"), "--genotype", str(genotype), "--set", "height=32",
              "--set", "width=48", "--set", "iters=5")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "b" / "artifacts" / "report.json").read_text())["fps"]["measured_fps"] > 0


def test_bad_settings_are_refused_with_the_field_named(tmp_path):
    out = run("search", "--out", str(tmp_path / "s"), "--data", str(tmp_path), "--set", "latency.budget_ms=-3")
    assert out.returncode != 0 and "budget_ms" in out.stderr


@pytest.mark.parametrize("a, b, rho", [([1, 2, 3, 4], [10, 20, 30, 40], 1.0), ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
                                       ([1, 2, 3, 4], [1, 3, 2, 4], 0.8)])
def test_rank_correlation(a, b, rho):
    assert rank_correlation(a, b) == pytest.approx(rho, abs=1e-6)


def test_settings_doc_is_the_generated_table():
    """docs/SETTINGS.md is `python -m core settings` under a fixed header: regenerate it when a spec changes."""
    from pathlib import Path

    from core.cli import _settings_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "SETTINGS.md").read_text()
    assert doc[doc.index("| setting |"):] == _settings_table() + "\n", "docs/SETTINGS.md is stale: regenerate it"
