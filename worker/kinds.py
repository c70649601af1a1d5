"""Registry: job kind -> 'module:function' of the entry point the child process calls.

The defaults are the core's contract (core/jobs.py). ``GAS_JOB_KIND_OVERRIDES`` (documented as for
tests only) can replace an entry, e.g. with a fast fake used by the fault-injection tests.
"""
from __future__ import annotations

import importlib
from typing import Callable

DEFAULT_KINDS: dict[str, str] = {
    "search": "core.jobs:run_search",
    "retrain": "core.jobs:run_retrain",
    "benchmark": "core.jobs:run_benchmark",
    "validate": "core.jobs:run_validate",
    "feasibility": "core.jobs:run_feasibility",
}
# Extra keyword arguments a kind's entry point accepts (beyond progress/should_cancel).
NEEDS_LUT_DIR = {"search", "feasibility", "retrain", "benchmark"}  # tables; <lut_dir>/locks: the measuring lock
NEEDS_DATA_CACHE = {"search", "retrain"}  # prepared data shared across jobs (per dataset and resolution)


def target_for(kind: str, overrides: dict[str, str] | None = None) -> str:
    table = {**DEFAULT_KINDS, **(overrides or {})}
    if kind not in table:
        raise KeyError(f"unknown job kind {kind!r}")
    return table[kind]


def resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
