"""Schema fuzzing: the schemathesis CLI (``st run --checks all``) generates requests for EVERY operation
of the served OpenAPI document and sends them, with a valid API key, to the real API of the fake-core
stack: its examples, coverage (boundary values, missing and wrong-typed fields, undeclared methods),
fuzzing (positive and negative data) and stateful phases (links between operations: a created
dataset or job is fetched, listed, cancelled). Every check it has must pass: no 5xx; documented status
codes, content types, headers and bodies; schema-valid data accepted (schemathesis.toml names the
operations whose validity also depends on server state, where a 422 is allowed) and invalid data
refused; 405 with a right Allow for undeclared methods; no ignored auth.

Bounded: ``GAS_FUZZ_EXAMPLES`` examples per operation (default 10) and a fixed seed
(``GAS_FUZZ_SEED``), so that the run takes a couple of minutes on 2 cores. The long version
(docs/SERVICE.md, "Fuzzing"): ``GAS_FUZZ_EXAMPLES=300``. The fuzzing tenant owns a dataset and a
finished job, so that the list operations answer real rows and their bodies are checked too."""
from __future__ import annotations

import os
import re
import subprocess
import uuid

import pytest

from svc_helpers import PY, REPO, fake_search_body, register_tiny, wait_until

pytestmark = pytest.mark.services
EXAMPLES = int(os.environ.get("GAS_FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("GAS_FUZZ_SEED", "7"))


@pytest.fixture(scope="module")
def fuzz_tenant(fake_stack):
    key = fake_stack.create_key(f"fuzz-{uuid.uuid4().hex[:6]}")
    with fake_stack.client(key) as c:
        ds = register_tiny(c)
        r = c.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=1, steps=1))
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        wait_until(lambda: c.get(f"/api/v1/jobs/{job}").json()["status"] == "succeeded", 90, "the fuzzing job")
        assert c.get("/openapi.json", timeout=120).status_code == 200  # built once, before the CLI times it
    return fake_stack, key


def test_schemathesis_checks_all_pass(fuzz_tenant, tmp_path):
    stack, key = fuzz_tenant
    cmd = [PY, "-m", "schemathesis.cli", "--config-file", str(REPO / "schemathesis.toml"), "--no-color", "run",
           f"{stack.url}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", str(SEED),
           "--workers", "1", "--request-timeout", "60", "--header", f"Authorization: Bearer {key}", "--output-truncate", "true",
           "--report", "junit", "--report-dir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=1800)
    text = out.stdout + out.stderr
    counts = re.search(r"(\d+) generated, (\d+) (?:passed|found)", text)
    ops = re.search(r"Operations:\s+(\d+) selected", text)
    print(f"schemathesis --checks all: {counts.group(0) if counts else '?'} over {ops.group(1) if ops else '?'} "
          f"operations, {EXAMPLES} examples per operation, seed {SEED}")
    assert out.returncode == 0, text[-12000:]
    assert ops and int(ops.group(1)) >= 14, text[-3000:]
    assert counts and int(counts.group(1)) >= 14 * EXAMPLES, text[-3000:]
