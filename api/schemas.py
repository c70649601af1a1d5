"""Request and response schemas of the HTTP API (separate from the tables in storage.models)."""
from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, create_model, field_validator,
                      model_validator)

from core.specs import (FeasibilityJobSpec, GGMConfig, LabelMap, LatencyConfig, Layout, NetworkConfig, Precision,
                        RetrainConfig, RetrainJobSpec, RuntimeName, SearchConfig, SearchJobSpec)

GENOTYPE_MAX_BYTES = 256 * 1024
"""Largest inline genotype document (its compact JSON); a real one is a few kB."""
JSON_MAX_DEPTH = 16
"""Deepest nesting of a free-form JSON document a client sends (an inline genotype)."""


def _text_problem(v: Any) -> str | None:
    """Why a string a client sent (anywhere in ``v``) cannot be stored or used, or None."""
    if isinstance(v, str):
        if "\x00" in v:
            return "contains a NUL character (PostgreSQL cannot store it)"
        if any("\ud800" <= c <= "\udfff" for c in v):
            return "contains a lone UTF-16 surrogate (not valid Unicode)"
        return None
    if isinstance(v, dict):
        return next((p for k, x in v.items() if (p := _text_problem(k) or _text_problem(x))), None)
    if isinstance(v, (list, tuple)):
        return next((p for x in v if (p := _text_problem(x))), None)
    return None


class _In(BaseModel):
    # every model a client feeds: unknown fields are 422, and so are NaN and +-Infinity
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, v: Any) -> Any:
        # every string a client sends, nested ones included: no NUL (PostgreSQL text and jsonb
        # refuse it) and no lone surrogate (JSON's \ud800 escapes; nothing can encode it)
        if problem := _text_problem(v):
            raise ValueError(problem)
        return v


def _json_document(value: dict, *, max_bytes: int = GENOTYPE_MAX_BYTES) -> dict:
    """A free-form JSON object a client sends: finite numbers only, bounded depth and size."""

    def walk(v: Any, depth: int, where: str) -> None:
        if depth > JSON_MAX_DEPTH:
            raise ValueError(f"nested deeper than {JSON_MAX_DEPTH} levels at {where or '(top)'}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"non-finite number (NaN or Infinity) at {where or '(top)'}")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, depth + 1, f"{where}.{k}" if where else str(k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, depth + 1, f"{where}.{i}" if where else str(i))

    walk(value, 0, "")
    size = len(json.dumps(value, separators=(",", ":")))
    if size > max_bytes:
        raise ValueError(f"document is {size} bytes of JSON; at most {max_bytes}")
    return value


GenotypeDoc = Annotated[dict[str, Any], AfterValidator(_json_document)]
def exactly_one(a: str, b: str) -> ConfigDict:
    """The model config of an either-or rule, stated in the JSON schema too (``oneOf``): exactly one
    of the two fields is given and not null."""
    return ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in (a, b)]})


ClassName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


# ---------------------------------------------------------------------------- advanced settings
# ``settings.advanced`` is an ALLOW-LIST of the core's numeric/boolean knobs a tenant may tune,
# generated from core.specs (same bounds and descriptions). Everything the server owns (the
# dataset and its directory, the budget and resolution, num_classes, the genotype) is absent:
# naming it is a 422 that says where it is set instead (SERVER_OWNED).
def _tunable(model: type[BaseModel], name: str, *, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
             nested: dict[str, type[BaseModel]] | None = None, doc: str = "") -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for n, f in model.model_fields.items():
        if n in exclude or (only is not None and n not in only and n not in (nested or {})):
            continue
        if nested and n in nested:
            fields[n] = (nested[n] | None, Field(None, description=(nested[n].__doc__ or "").strip()))
            continue
        ann = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[n] = (ann | None, Field(None, description=f.description))
    return create_model(name, __base__=_In, __doc__=doc, **fields)


NetworkTunable = _tunable(NetworkConfig, "NetworkTunable", exclude=("num_classes",),
                          doc="core NetworkConfig (num_classes comes from the dataset).")
GGMTunable = _tunable(GGMConfig, "GGMTunable", doc="core GGMConfig.")
LatencyTunable = _tunable(LatencyConfig, "LatencyTunable", exclude=("budget_ms", "height", "width", "precision", "runtime"),
                          doc="core LatencyConfig (budget, resolution, precision and runtime are set with `budget`).")
SearchTunable = _tunable(SearchConfig, "SearchTunable", doc="core SearchConfig.")
SearchAdvancedIn = _tunable(
    SearchJobSpec, "SearchAdvancedIn", exclude=("dataset",),
    nested={"network": NetworkTunable, "ggm": GGMTunable, "latency": LatencyTunable, "search": SearchTunable},
    doc="Core knobs a tenant may tune for a search (an allow-list of core.specs.SearchJobSpec; the dataset, "
        "budget, resolution and num_classes are set by the service). train_split must be one of the dataset's splits.")
RetrainTunable = _tunable(RetrainConfig, "RetrainTunable", doc="core RetrainConfig.")
RetrainAdvancedIn = _tunable(
    RetrainJobSpec, "RetrainAdvancedIn", exclude=("dataset", "genotype", "height", "width"),
    nested={"train": RetrainTunable},
    doc="Core knobs a tenant may tune for a retrain (an allow-list of core.specs.RetrainJobSpec). "
        "train.train_splits and train.eval_split must be splits of the dataset.")
FeasibilityAdvancedIn = _tunable(
    FeasibilityJobSpec, "FeasibilityAdvancedIn", nested={"network": NetworkTunable, "latency": LatencyTunable},
    doc="Core knobs of a feasibility job (an allow-list of core.specs.FeasibilityJobSpec: the search space's network "
        "and ops, the latency table's measurement settings, measure, repeats, typical_samples, seed).")

SERVER_OWNED: dict[tuple[str, ...], str] = {
    ("dataset",): "set by the service from dataset_id (a job never names a directory); remove it",
    ("root",): "set by the service from dataset_id; remove it",
    ("num_classes",): "taken from the dataset; remove it",
    ("latency", "budget_ms"): "set with budget.latency_ms or budget.fps; remove it",
    ("latency", "height"): "set with budget.height; remove it",
    ("latency", "width"): "set with budget.width; remove it",
    ("latency", "precision"): "set with budget.precision; remove it",
    ("latency", "runtime"): "set with budget.runtime (feasibility: runtime); remove it",
    ("advanced", "height"): "set with settings.height; remove it",
    ("advanced", "width"): "set with settings.width; remove it",
    ("advanced", "genotype"): "give genotype or search_job_id at the top level of the body; remove it",
}
"""Hints of the 422 answered for a key a tenant cannot set (matched on the end of its location)."""
UNKNOWN_FIELD_HINT = ("not a field a client can set here; remove it (the settable fields and their bounds are in "
                      "the OpenAPI schema and docs/SERVICE.md)")


# ------------------------------------------------------------------------------------------ datasets
class _DatasetConvention(_In):
    """Name and label convention of a new dataset (shared by directory registration and uploads)."""

    name: str = Field(..., min_length=1, max_length=200, description="Display name.")
    layout: Layout | None = Field(None, description="Directory layout (core.layouts: camvid, folder, cityscapes); omitted = detected.")
    num_classes: int | None = Field(None, ge=2, le=1024, description="Classes; default: the layout's (11 for camvid, 19 for cityscapes).")
    class_names: list[ClassName] | None = Field(None, min_length=2, max_length=1024, description="Class names (index = class id, at least 2; repeat the query parameter for uploads); default: the layout's.")
    ignore_index: int | None = Field(None, ge=0, le=65535, description="Mask value ignored; default: the layout's, else num_classes.")

    @model_validator(mode="after")
    def _names(self) -> "_DatasetConvention":
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        return self


LABEL_MAP_DOC = ("How raw mask values become class ids (stored with the dataset): {\"values\": {RAW: CLASS}, "
                 "\"ignore\": [RAW], \"unlisted\": \"error\"|\"ignore\"}; RAW is a grey level / label id (\"255\") "
                 "or a colour (\"#rrggbb\"). Example for 0/255 binary masks: {\"values\": {\"0\": 0, \"255\": 1}}. "
                 "Default: the masks hold class ids.")


class DatasetCreate(_DatasetConvention):
    path: str = Field(..., min_length=1, max_length=4096,
                      description="Directory relative to the server's datasets root (GAS_DATASETS_ROOT).")
    label_map: LabelMap | None = Field(None, description=LABEL_MAP_DOC + " A string is read as JSON or the compact "
                                       "form RAW=CLASS,... (e.g. \"0=0,255=1\").")

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            from core.labelmap import parse_label_map_text

            try:
                return parse_label_map_text(v)
            except ValueError as exc:
                raise ValueError(str(exc).splitlines()[0]) from None
        return v

    def label_map_doc(self) -> LabelMap | None:
        return self.label_map


class DatasetUploadParams(_DatasetConvention):
    """Query parameters of an archive upload (the body is the archive itself)."""

    label_map: str | None = Field(None, min_length=1, max_length=65536,
                                  description=LABEL_MAP_DOC + " In the query string: that JSON, or the compact form "
                                  "RAW=CLASS,... (e.g. 0=0,255=1; RAW=ignore; *=ignore for every unlisted value).")

    @field_validator("label_map", mode="after")
    @classmethod
    def _parse_label_map(cls, v: str | None) -> str | None:
        if v is not None:
            from core.labelmap import parse_label_map_text

            try:
                parse_label_map_text(v)
            except ValueError as exc:  # LabelMapError or pydantic's: a 422 naming label_map
                raise ValueError(str(exc).splitlines()[0] if not hasattr(exc, "errors") else
                                 "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        return v

    def label_map_doc(self) -> LabelMap | None:
        from core.labelmap import parse_label_map_text

        return parse_label_map_text(self.label_map) if self.label_map is not None else None


class DatasetOut(BaseModel):
    id: str
    name: str
    layout: str
    path: str = Field(description="Path relative to the datasets root, or upload:<sha256> for an uploaded archive.")
    num_classes: int
    class_names: list[str] | None
    ignore_index: int
    label_map: dict[str, Any] | None = Field(None, description="Raw mask value -> class id map (null: the masks hold class ids).")
    stats: dict[str, Any]
    created_at: datetime
    status: Literal["validating", "ready", "invalid"] = Field(description="Jobs can use the dataset only when ready.")
    source: Literal["directory", "upload"]
    sha256: str | None = Field(None, description="sha256 of the uploaded archive (content address).")
    size_bytes: int | None = Field(None, description="Size of the uploaded archive.")
    validation_job_id: str | None = Field(None, description="The job that checks every file.")
    report: dict[str, Any] | None = Field(None, description="Validation report: counts per split, sizes, class "
                                          "frequencies, channel mean/std, raw mask values, warnings, a suggested "
                                          "label map when one would fix the masks, bad files with reasons.")
    warnings: list[str] = Field(default_factory=list, description="Setups that validate but cannot train well (an "
                                "empty class in the training split, a split almost all ignored, grey-ramp or palette "
                                "masks): the dataset stays usable; the report's warnings carry the details.")
    same_archive_as: list[str] | None = Field(None, description="Uploads: other datasets over the same stored archive "
                                              "(a re-upload with different parameters is a new dataset).")


class DatasetList(BaseModel):
    items: list[DatasetOut]
    limit: int
    offset: int
    next_offset: int | None


# -------------------------------------------------------------------------------------------- jobs
class BudgetIn(_In):
    """Give exactly one of latency_ms or fps."""

    model_config = exactly_one("latency_ms", "fps")
    latency_ms: float | None = Field(None, ge=0.1, le=60_000.0, description="Latency budget in ms at batch 1 (or give fps).")
    fps: float | None = Field(None, gt=0.0, le=10_000.0, description="Frames-per-second budget (converted to 1000/fps ms).")
    height: int = Field(360, ge=16, le=4096, description="Deployment input height.")
    width: int = Field(480, ge=16, le=4096, description="Deployment input width.")
    precision: Precision = Field("fp32", description="Deployment precision.")
    runtime: RuntimeName = Field("torch-eager", description="Deployment runtime: the latency table, the end-to-end measurements, the repair and the FPS verdict run in it (onnxruntime: CPU execution provider, fp32; torch-optimised: a CUDA graph on CUDA, a frozen jit trace on the CPU).")

    @model_validator(mode="after")
    def _one(self) -> "BudgetIn":
        if (self.latency_ms is None) == (self.fps is None):
            raise ValueError("give exactly one of latency_ms or fps")
        return self

    @property
    def budget_ms(self) -> float:
        return self.latency_ms if self.latency_ms is not None else 1000.0 / float(self.fps)


class SearchSettingsIn(_In):
    epochs: int | None = Field(None, ge=1, le=1000, description="Search epochs, warm-up included.")
    warmup_epochs: int | None = Field(None, ge=0, le=1000, description="Warm-up epochs (weights only).")
    cells: int | None = Field(None, ge=2, le=24, description="Number of cells K.")
    reduction_cells: list[Annotated[int, Field(ge=0, le=23)]] | None = Field(None, max_length=24, description="0-based indices of the reduction cells.")
    nodes: int | None = Field(None, ge=1, le=6, description="Intermediate nodes per cell.")
    init_channels: int | None = Field(None, ge=4, le=256, description="Channels of the first cell.")
    ggm: bool | None = Field(None, description="GCN-Guided Module on/off.")
    gamma: float | None = Field(None, ge=0.0, le=10.0, description="Weight of the GCN term.")
    lambda_: float | None = Field(None, alias="lambda", ge=0.0, le=100.0, description="Weight of the latency loss.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed.")
    batch_size: int | None = Field(None, ge=1, le=256, description="Batch size.")
    crop_height: int | None = Field(None, ge=0, le=4096, description="Training crop height (0 = full image).")
    crop_width: int | None = Field(None, ge=0, le=4096, description="Training crop width (0 = full image).")
    dataset_limit: int | None = Field(None, ge=1, le=10_000_000, description="Use at most this many images per split (demos, tests).")
    advanced: SearchAdvancedIn | None = Field(None, description="Core knobs (an allow-list: network, ggm, latency, search, train_split, data_height, ...) merged under the fields above; validated again by core.specs. Server-owned or unknown keys are 422.")  # type: ignore[valid-type]
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class SearchJobCreate(_In):
    dataset_id: str = Field(..., min_length=1, max_length=64)
    budget: BudgetIn
    settings: SearchSettingsIn = Field(default_factory=SearchSettingsIn)


class RetrainSettingsIn(_In):
    epochs: int | None = Field(None, ge=1, le=10_000, description="Training epochs.")
    time_budget_s: float | None = Field(None, ge=0.0, le=30 * 86400, description="Wall-clock training budget (0 = epochs only).")
    batch_size: int | None = Field(None, ge=1, le=512, description="Batch size.")
    lr: float | None = Field(None, gt=0.0, le=10.0, description="Peak learning rate.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed.")
    crop_height: int | None = Field(None, ge=0, le=4096, description="Crop height (0 = full image).")
    crop_width: int | None = Field(None, ge=0, le=4096, description="Crop width (0 = full image).")
    height: int | None = Field(None, ge=16, le=4096, description="Train/eval resolution height (default: the search budget's).")
    width: int | None = Field(None, ge=16, le=4096, description="Train/eval resolution width (default: the search budget's).")
    dataset_limit: int | None = Field(None, ge=1, le=10_000_000, description="Use at most this many images per split (demos, tests).")
    advanced: RetrainAdvancedIn | None = Field(None, description="Core knobs (an allow-list: train, fps_iters) merged under the fields above; validated again by core.specs. Server-owned or unknown keys are 422.")  # type: ignore[valid-type]


class RetrainJobCreate(_In):
    """Give exactly one of search_job_id or genotype."""

    model_config = exactly_one("search_job_id", "genotype")
    dataset_id: str = Field(..., min_length=1, max_length=64)
    search_job_id: str | None = Field(None, description="A succeeded search job whose genotype is retrained.")
    genotype: GenotypeDoc | None = Field(None, description="An inline genotype document instead of search_job_id (finite numbers, at most 256 KiB).")
    settings: RetrainSettingsIn = Field(default_factory=RetrainSettingsIn)

    @model_validator(mode="after")
    def _one(self) -> "RetrainJobCreate":
        if (self.search_job_id is None) == (self.genotype is None):
            raise ValueError("give exactly one of search_job_id or genotype")
        return self


class BenchmarkJobCreate(_In):
    """Give exactly one of job_id or genotype."""

    model_config = exactly_one("job_id", "genotype")
    job_id: str | None = Field(None, description="A succeeded search/retrain job whose genotype is measured.")
    genotype: GenotypeDoc | None = Field(None, description="An inline genotype document instead of job_id (finite numbers, at most 256 KiB).")
    height: int = Field(360, ge=16, le=4096)
    width: int = Field(480, ge=16, le=4096)
    iters: int = Field(100, ge=5, le=100_000, description="Timed iterations.")
    budget_ms: float | None = Field(None, ge=0.1, le=60_000.0, description="Budget to compare against.")

    @model_validator(mode="after")
    def _one(self) -> "BenchmarkJobCreate":
        if (self.job_id is None) == (self.genotype is None):
            raise ValueError("give exactly one of job_id or genotype")
        return self


class FeasibilitySettingsIn(_In):
    cells: int | None = Field(None, ge=2, le=24, description="Number of cells K (as the search's settings.cells).")
    reduction_cells: list[Annotated[int, Field(ge=0, le=23)]] | None = Field(None, max_length=24, description="0-based indices of the reduction cells.")
    nodes: int | None = Field(None, ge=1, le=6, description="Intermediate nodes per cell.")
    init_channels: int | None = Field(None, ge=4, le=256, description="Channels of the first cell.")
    advanced: FeasibilityAdvancedIn | None = Field(None, description="Core knobs (an allow-list: network, latency, ops, measure, repeats, typical_samples, seed); the resolution and precision are set at the top level.")  # type: ignore[valid-type]


class FeasibilityCreate(_In):
    """What budgets are feasible for a search space at a resolution, on the workers' device and runtime."""

    height: int = Field(360, ge=16, le=4096, description="Deployment input height (as budget.height of a search).")
    width: int = Field(480, ge=16, le=4096, description="Deployment input width.")
    precision: Precision = Field("fp32", description="Deployment precision.")
    runtime: RuntimeName = Field("torch-eager", description="Deployment runtime (as budget.runtime of a search).")
    dataset_id: str | None = Field(None, min_length=1, max_length=64, description="Take the number of classes from this dataset (or give num_classes; default 11).")
    num_classes: int | None = Field(None, ge=2, le=1024, description="Classes of the head (instead of dataset_id).")
    settings: FeasibilitySettingsIn = Field(default_factory=FeasibilitySettingsIn)

    @model_validator(mode="after")
    def _one(self) -> "FeasibilityCreate":
        if self.dataset_id is not None and self.num_classes is not None:
            raise ValueError("give dataset_id or num_classes, not both")
        return self


class LatencyTableOut(BaseModel):
    id: str = Field(description="The table's identity hash (device, runtime, precision, resolution, burst, threads, versions).")
    format_version: int | None = None
    device: str | None = None
    runtime: str | None = None
    precision: str | None = None
    height: int | None = None
    width: int | None = None
    batch: int | None = None
    burst: int | None = None
    threads: dict[str, int | None]
    versions: dict[str, str | None]
    cudnn_benchmark: bool | None = None
    channels_last: bool | None = None
    entries: int
    noisy_entries: int
    validations: list[dict[str, Any]] = Field(description="Per search space: LUT vs end-to-end check (median relative error, Spearman rho, passed).")
    validated: bool = Field(description="At least one passing validation is recorded.")
    size_bytes: int
    sha256: str
    updated_at: datetime


class LatencyTableDetail(LatencyTableOut):
    entry_list: list[dict[str, Any]] = Field(description="Every timed layer: key, shape, median/p10/p90/min ms, noise verdict.")


class LatencyTableList(BaseModel):
    items: list[LatencyTableOut]
    limit: int
    offset: int
    next_offset: int | None


class ProgressOut(BaseModel):
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    metrics: dict[str, Any] | None = None
    expected_latency_ms: float | None = None
    message: str | None = None
    attempt: int | None = None
    elapsed_s: float | None = Field(None, description="Seconds since the attempt started (updated every few seconds).")
    phase_elapsed_s: float | None = Field(None, description="Seconds in the current phase.")
    eta_s: float | None = Field(None, description="Estimated seconds left in the current phase (from its counters; "
                                "a retrain's time budget when that ends training sooner).")


class ResultSummary(BaseModel):
    miou: float | None = None
    latency_ms: float | None = Field(None, description="Measured end-to-end latency (batch 1).")
    fps: float | None = None
    expected_latency_ms: float | None = Field(None, description="LUT-predicted latency of the derived network.")
    budget_ms: float | None = None
    budget_met: bool | None = None
    measurements_trusted: bool | None = Field(
        None, description="False when the job's timings stayed noisy or its latency table failed validation: the "
                          "latency and budget_met are not to be relied on (the report's noise_warnings say why).")
    trivial_baseline_miou: float | None = Field(
        None, description="Retrain: mIoU of predicting the eval split's most frequent class everywhere (the report's "
                          "trivial_baseline has it with every class's pixel frequency).")
    beats_trivial_baseline: bool | None = Field(
        None, description="Retrain: false when the model's mIoU does not beat trivial_baseline_miou: it learned nothing usable.")
    miou_split: str | None = Field(None, description="Retrain: the split the mIoU was measured on.")
    miou_selection: str | None = Field(None, description="Retrain: how the reported mIoU (and the shipped checkpoint) "
                                       "was chosen, e.g. 'last epoch'.")
    device: str | None = None
    genotype_id: str | None = None
    feasibility: dict[str, Any] | None = Field(
        None, description="Feasibility jobs: latency of the cheapest, a typical and the dearest network of the space "
                          "(`networks.*.lut_ms`, `networks.*.measured.median`), the table used and its validation, advice.")


class JobLinks(BaseModel):
    self: str
    events: str
    artifacts: str
    cancel: str


class JobOut(BaseModel):
    id: str
    kind: Literal["search", "retrain", "benchmark", "feasibility"] | str
    status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"] | str
    progress: ProgressOut
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: str | None
    result: ResultSummary | None
    dataset_id: str | None
    parent_job_id: str | None
    budget: dict[str, Any] | None = Field(None, description="The requested budget (search jobs).")
    warnings: list[str] = Field(default_factory=list, description="Submission warnings: settings that cannot learn "
                                "(too few steps per epoch or architecture steps, a warm-up as long as the run, fewer "
                                "images than a batch), each naming the settings to change; also in the job's events.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks


class JobList(BaseModel):
    items: list[JobOut]
    limit: int
    offset: int
    next_offset: int | None


class EventOut(BaseModel):
    id: int
    ts: datetime
    attempt: int
    type: str
    message: str
    data: dict[str, Any]


class EventList(BaseModel):
    items: list[EventOut]
    next_after: int | None = Field(description="Pass as ?after= to read newer events.")


class ArtifactOut(BaseModel):
    name: str
    size: int
    sha256: str
    content_type: str
    created_at: datetime
    url: str


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
