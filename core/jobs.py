"""Entry points the worker (and the local CLI) call: one function per job kind.

Contract (stable; the service is built against it):

- ``run_search(spec, workdir, progress=..., should_cancel=..., lut_dir=...) -> dict``
- ``run_retrain(spec, workdir, progress=..., should_cancel=...) -> dict``
- ``run_benchmark(spec, workdir, progress=..., should_cancel=...) -> dict``
- ``run_validate(spec, workdir, progress=..., should_cancel=...) -> dict`` (dataset validation)
- ``run_feasibility(spec, workdir, progress=..., should_cancel=..., lut_dir=...) -> dict`` (what budgets are feasible)

``spec`` is the matching pydantic model of :mod:`core.specs` (or a plain dict of it).
``workdir`` is a directory owned by the job across attempts: checkpoints live in
``workdir/state`` and a second call with the same workdir resumes from the last checkpoint.
Finished artifacts are written atomically into ``workdir/artifacts``:
``lut_dir`` (search, feasibility; retrain and benchmark take it for the per-device measuring lock under
``<lut_dir>/locks``, core.device_lock) and ``data_cache_dir`` (search, retrain) are shared caches across jobs:
latency tables and prepared (decoded, resized uint8) datasets; default: inside ``workdir``.
``genotype.json`` and ``report.json`` (search), ``checkpoint.safetensors``, ``model.onnx`` (published
only after its parity check, :mod:`core.export`), ``genotype.json`` and ``report.json`` (retrain), ``report.json`` (benchmark, validate). The returned dict is a JSON-able result summary.

``progress(event: dict)`` receives ``{"phase", "epoch", "epochs", "step", "steps", "metrics",
"expected_latency_ms", "op_probs", "alphas", "ops"(search epoch ends only), "message"}`` (keys may be missing when not
applicable). Latency trust (issue 11): an event ``{"phase": "noise", "noisy": True, "message"}`` is sent
whenever a timing stays noisy after its retries, a latency table is not trusted, the repair stops on
bad data, or two measurements of the final network disagree; the search summary then has
``measurements_trusted: False`` and the count ``noise_warnings`` (the report lists them), and its
``measured_latency_ms``, ``fps`` and ``budget_met`` come from one verdict (``latency_source``).
While a job waits for its device (another job is timing on it, core.device_lock) it sends
``{"phase": "device_lock", "message"}`` once per wait; the report's ``device_lock`` lists every hold.
``should_cancel()`` is polled between steps; when it answers True the function
raises :class:`Cancelled` after writing nothing further.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .specs import BenchmarkJobSpec, FeasibilityJobSpec, RetrainJobSpec, SearchJobSpec, ValidateJobSpec

ProgressFn = Callable[[dict[str, Any]], None]
CancelFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised by an entry point when ``should_cancel()`` answered True."""


def _noop(_event: dict[str, Any]) -> None:
    return None


def _never() -> bool:
    return False


def run_search(spec: SearchJobSpec | dict, workdir: str | Path, *, progress: ProgressFn = _noop,
               should_cancel: CancelFn = _never, lut_dir: str | Path | None = None,
               data_cache_dir: str | Path | None = None) -> dict:
    from .pipeline import search_pipeline

    spec = SearchJobSpec.model_validate(spec)
    return search_pipeline(spec, Path(workdir), progress, should_cancel, lut_dir, data_cache_dir)


def run_retrain(spec: RetrainJobSpec | dict, workdir: str | Path, *, progress: ProgressFn = _noop,
                should_cancel: CancelFn = _never, data_cache_dir: str | Path | None = None,
                lut_dir: str | Path | None = None) -> dict:
    from .pipeline import retrain_pipeline

    spec = RetrainJobSpec.model_validate(spec)
    return retrain_pipeline(spec, Path(workdir), progress, should_cancel, data_cache_dir, lut_dir)


def run_benchmark(spec: BenchmarkJobSpec | dict, workdir: str | Path, *, progress: ProgressFn = _noop,
                  should_cancel: CancelFn = _never, lut_dir: str | Path | None = None) -> dict:
    from .pipeline import benchmark_pipeline

    spec = BenchmarkJobSpec.model_validate(spec)
    return benchmark_pipeline(spec, Path(workdir), progress, should_cancel, lut_dir)


def run_feasibility(spec: FeasibilityJobSpec | dict, workdir: str | Path, *, progress: ProgressFn = _noop,
                    should_cancel: CancelFn = _never, lut_dir: str | Path | None = None) -> dict:
    """What budgets are feasible (issue 11 section 6): the cheapest, a typical and the dearest network of
    the search space at the budget's resolution, from the cached validated table or a short measurement."""
    from .feasibility import feasibility_pipeline

    spec = FeasibilityJobSpec.model_validate(spec)
    return feasibility_pipeline(spec, Path(workdir), progress, should_cancel, lut_dir)


def run_validate(spec: ValidateJobSpec | dict, workdir: str | Path, *, progress: ProgressFn = _noop,
                 should_cancel: CancelFn = _never) -> dict:
    """Validate every file of a dataset (core.validate); the full report is ``artifacts/report.json``."""
    from .checkpoint import save_json
    from .redact import job_roots, redact
    from .layouts import palette_for
    from .validate import save_dataset_samples, validate_dataset

    spec = ValidateJobSpec.model_validate(spec)
    if should_cancel():
        raise Cancelled("cancelled before validation")
    ref = spec.dataset
    progress({"phase": "validate", "message": f"checking every image and mask of {ref.layout} dataset"})
    report = validate_dataset(ref.root, ref.layout, ref.num_classes, ref.ignore_index, spec.splits,
                              ref.class_names, spec.max_bad_per_kind, label_map=ref.label_map)
    splits = [k for k, v in report["splits"].items() if v.get("valid")]
    split = "train" if "train" in splits else (splits[0] if splits else "train")
    progress({"phase": "samples", "message": f"drawing {spec.sample_images} sample masks of split {split}"})
    art = Path(workdir) / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    report["samples"] = save_dataset_samples(ref.root, ref.layout, ref.num_classes, ref.ignore_index,
                                             palette_for(ref.layout, ref.num_classes), art, spec.sample_images,
                                             split, label_map=ref.label_map)
    save_json(art / "report.json", redact({"kind": "validate", **report}, job_roots(spec, workdir)))
    return {"ok": report["ok"], "bad_counts": report["bad_counts"], "warnings": len(report["warnings"]),
            "images": {k: v["images"] for k, v in report["splits"].items()}}
