"""The `gas` CLI against a real stack (fast fake search): register, search --watch, list, events,
artifacts, download, cancel of a finished job and a rejected budget (exit code 2 naming the field)."""
from __future__ import annotations

import json
import subprocess

import pytest

from svc_helpers import PY, REPO

pytestmark = pytest.mark.services


def gas(stack, *args) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "client.cli", "--url", stack.url, "--json", *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=120, env=stack.env)


def test_cli_story(fake_stack, tmp_path):
    out = gas(fake_stack, "datasets", "register", "cli-tiny", "camvid_tiny")
    assert out.returncode == 0, out.stderr
    ds = json.loads(out.stdout)["id"]
    out = gas(fake_stack, "search", ds, "--latency-ms", "50", "--height", "64", "--width", "96", "--epochs", "2",
              "--warmup-epochs", "0", "--batch-size", "1", "--advanced", '{"search": {"steps_per_epoch": 3}}', "--watch")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["result"]["latency_ms"] == 3.0
    assert "succeeded" in out.stderr and "accepted" in out.stderr  # the live bar and the acceptance line
    jid = job["id"]
    out = gas(fake_stack, "jobs", "list", "--kind", "search", "--status", "succeeded", "--limit", "200")
    assert jid in {j["id"] for j in json.loads(out.stdout)["items"]}
    out = gas(fake_stack, "events", jid)
    assert out.returncode == 0 and "claimed" in out.stdout and "succeeded" in out.stdout
    out = gas(fake_stack, "download", jid, "-o", str(tmp_path / "arts"))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "arts" / "genotype.json").read_text())["fake"] is True
    assert (tmp_path / "arts" / "report.json").is_file()
    out = gas(fake_stack, "cancel", jid)
    assert out.returncode == 2 and "already succeeded" in out.stderr
    out = gas(fake_stack, "search", ds, "--latency-ms", "-1")
    assert out.returncode == 2 and "budget.latency_ms" in out.stderr
    out = gas(fake_stack, "status", "no-such-job")
    assert out.returncode == 2 and "404" in out.stderr


def test_cli_takes_the_key_from_the_flag_or_the_environment(fake_stack):
    env = {k: v for k, v in fake_stack.env.items() if k != "GAS_API_KEY"}

    def run(*args, **extra):
        return subprocess.run([PY, "-m", "client.cli", "--url", fake_stack.url, *args], cwd=str(REPO),
                              capture_output=True, text=True, timeout=120, env=dict(env, **extra))
    out = run("jobs", "list")
    assert out.returncode == 2 and "401" in out.stderr and "API key" in out.stderr
    assert run("--api-key", fake_stack.api_key, "jobs", "list").returncode == 0
    assert run("jobs", "list", GAS_API_KEY=fake_stack.api_key).returncode == 0
    out = run("--api-key", "gas_000000000000_" + "x" * 43, "jobs", "list")
    assert out.returncode == 2 and "401" in out.stderr
