"""Fault-injection suite (marker ``faults``): real PostgreSQL, Redis and Celery worker processes are
killed, restarted or starved, and every test asserts on the database afterwards. Each test records
what it injected and what became of its jobs; the totals are printed at the end of the run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from svc_helpers import copy_camvid_tiny, running_stack  # noqa: E402

LEDGER: list[dict] = []


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.services)


@pytest.fixture
def ledger(request):
    """``ledger(faults=..., jobs=..., finished=..., lost=..., note=...)`` records one test's figures."""
    def record(**fig):
        fig = {"test": request.node.name, **fig}
        LEDGER.append(fig)
        print("FAULTS " + json.dumps(fig))
    return record


def pytest_terminal_summary(terminalreporter):
    if not LEDGER:
        return
    tr = terminalreporter
    tr.section("fault injection")
    for f in LEDGER:
        extra = {k: v for k, v in f.items() if k not in ("test", "faults", "jobs", "lost")}
        tr.write_line(f"{f['test']}: faults injected {f.get('faults', 0)}, jobs {f.get('jobs', 0)}, "
                      f"lost {f.get('lost', 0)}  {json.dumps(extra) if extra else ''}")
    tr.write_line(f"TOTAL: faults injected {sum(f.get('faults', 0) for f in LEDGER)}, "
                  f"jobs {sum(f.get('jobs', 0) for f in LEDGER)}, jobs lost {sum(f.get('lost', 0) for f in LEDGER)}")


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """<root>/camvid_tiny: 8 frames per split copied from the shared read-only CamVid."""
    return copy_camvid_tiny(tmp_path_factory.mktemp("fault-datasets"))


@pytest.fixture(scope="session")
def fault_lut_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fault-luts")


@pytest.fixture(scope="module")
def fake_faults_stack(tmp_path_factory, datasets_root):
    """Fast fake search (tests/service/fake_core.py) on the machine's PostgreSQL and Redis."""
    overrides = json.dumps({"search": "tests.service.fake_core:fake_search",
                       "feasibility": "tests.service.fake_core:fake_feasibility"})
    yield from running_stack("ffault", tmp_path_factory, datasets_root, None, job_kind_overrides=overrides)


@pytest.fixture(scope="module")
def real_faults_stack(tmp_path_factory, datasets_root, fault_lut_dir):
    """The REAL core on the machine's PostgreSQL and Redis; 8 attempts per job."""
    yield from running_stack("rfault", tmp_path_factory, datasets_root, fault_lut_dir, max_attempts=8)
