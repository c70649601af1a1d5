"""Alembic is the only way the schema changes: upgrade an empty PostgreSQL database to head and
back to base, and check that the models and the migrations agree."""
from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from storage.migrate import downgrade, upgrade
from storage.models import Base

from svc_helpers import REPO

TABLES = {"datasets", "jobs", "job_events", "artifacts", "genotypes", "latency_tables", "fps_reports"}


@pytest.mark.services
def test_upgrade_head_and_back_to_base_on_postgres(empty_pg):
    engine = create_engine(empty_pg)
    with engine.connect() as c:
        assert set(inspect(c).get_table_names()) == set()
    upgrade(empty_pg)
    with engine.connect() as c:
        insp = inspect(c)
        assert TABLES <= set(insp.get_table_names())
        for t in TABLES:  # every row carries a tenant for the later auth issue
            assert "tenant_id" in {col["name"] for col in insp.get_columns(t)}, t
        assert {"tenants", "api_keys"} <= set(insp.get_table_names())  # 0003: tenants and hashed API keys
        assert {u["column_names"][0] for u in insp.get_unique_constraints("api_keys")} == {"prefix"}
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        assert c.exec_driver_sql("select version_num from alembic_version").scalar() is not None
    downgrade(empty_pg, "base")
    with engine.connect() as c:
        assert set(inspect(c).get_table_names()) == {"alembic_version"}
    engine.dispose()


def test_upgrade_head_and_back_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'gas.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as c:
        assert TABLES <= set(inspect(c).get_table_names())
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    downgrade(url, "base")
    with engine.connect() as c:
        assert set(inspect(c).get_table_names()) == {"alembic_version"}


def test_no_create_all_in_production_code():
    out = subprocess.run(["grep", "-rn", "create_all", "storage", "api", "worker", "migrations"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.stdout == "", out.stdout


def test_api_and_worker_parents_never_import_torch():
    code = ("import sys, api.app, api.embedded, worker.tasks, worker.sweeper, client.cli;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    # what the worker's parent does with a finished job's genotype (stamp it, hash it) stays torch-free too
    code = ("import sys, json, tempfile, pathlib; from worker import record; from storage.models import Job;"
            "d = pathlib.Path(tempfile.mkdtemp());"
            "(d / 'genotype.json').write_text(json.dumps({'format': 'gas-genotype', 'provenance': {'search_job': None}}));"
            "record.stamp_provenance(Job(id='j1', kind='search'), d);"
            "doc = json.loads((d / 'genotype.json').read_text());"
            "assert doc['provenance']['search_job'] == 'j1', doc;"
            "record.arch_hash_of(doc);"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    # api never imports worker and worker never imports api
    for pkg, other in (("api", "worker"), ("worker", "api")):
        out = subprocess.run(["grep", "-rnE", rf"^\s*(from|import) {other}(\.|\s|$)", pkg], cwd=REPO,
                             capture_output=True, text=True)
        assert out.stdout == "", f"{pkg} imports {other}: {out.stdout}"
