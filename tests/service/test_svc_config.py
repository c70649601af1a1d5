"""Settings are named, defaulted and documented; deployment files only use real settings."""
from __future__ import annotations

import re

from storage.settings import ServiceSettings, settings_table
from svc_helpers import REPO


def test_every_setting_has_a_default_and_a_description():
    for name, field in ServiceSettings.model_fields.items():
        assert field.description and len(field.description) > 10, name
        assert not field.is_required(), name
    ServiceSettings(_env_file=None)  # constructible from defaults alone


def test_docs_list_every_setting():
    doc = (REPO / "docs" / "SERVICE.md").read_text()
    for name in ServiceSettings.model_fields:
        assert f"`GAS_{name.upper()}`" in doc, name
    assert settings_table().splitlines()[2] in doc


def test_compose_uses_only_real_settings():
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"\bGAS_([A-Z0-9_]+):", text))
    assert used, "no settings found in docker-compose.yml"
    unknown = {u for u in used if u.lower() not in ServiceSettings.model_fields}
    assert not unknown, unknown
    for service in ("postgres:", "redis:", "migrate:", "api:", "worker-gpu0:", "sweeper:"):
        assert f"\n  {service}" in text, service
