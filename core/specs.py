"""Typed settings of the GAS core: every [likely]/[ours] value of GAS.md is a named field here.

This module imports only pydantic so that the API can validate requests with the same models
without importing torch. Each field's ``description`` is its line of documentation
(`python -m core settings` prints them all).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Precision = Literal["fp32", "fp16", "bf16"]
Adjacency = Literal["similarity", "topology"]
GGMInput = Literal["standardize", "raw"]
LatencyForm = Literal["budget", "paper"]
Derivation = Literal["argmax", "fill", "pt"]
Layout = Literal["camvid", "folder", "cityscapes"]
RuntimeName = Literal["torch-eager", "onnxruntime", "torch-optimised"]  # core/runtimes.py's registry

CAMVID_MEAN_RGB: tuple[float, float, float] = (0.39, 0.41, 0.43)
"""Per-channel RGB mean in [0, 1] of CamVid: the normalisation used where a dataset has no statistics."""
CAMVID_STD_RGB: tuple[float, float, float] = (0.30, 0.31, 0.30)
"""Per-channel RGB standard deviation in [0, 1] of CamVid (same source as :data:`CAMVID_MEAN_RGB`)."""
MIN_CHANNEL_STD = 1e-3
"""A dataset whose channel std is below this (constant images) keeps the CamVid default instead."""

SPLIT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""A split name is ONE path component: letters, digits, '_' and '-' (no '.', '/', '\\'), at most 64."""
SplitName = Annotated[str, StringConstraints(pattern=SPLIT_NAME_PATTERN)]
SplitExpr = Annotated[str, StringConstraints(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}(\+[A-Za-z0-9][A-Za-z0-9_-]{0,63}){0,7}$")]
"""One split name or up to 8 joined with '+' (e.g. ``train+val``)."""


class _Strict(BaseModel):
    # non-finite floats (NaN, inf) are refused everywhere: no setting has a meaning for them
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class NetworkConfig(_Strict):
    """Macro architecture (GAS.md §2, [ours, configurable])."""

    stem_channels: int = Field(32, ge=4, le=256, description="Channels of the stem's 3x3 convolutions (stem reduces to 1/4).")
    init_channels: int = Field(24, ge=4, le=256, description="Per-node channels C of the first cell; doubles at each reduction cell.")
    num_cells: int = Field(10, ge=2, le=24, description="Number of cells K.")
    reduction_cells: list[Annotated[int, Field(ge=0, le=23)]] = Field([3, 7], max_length=24, description="0-based indices of reduction cells (stride 2). Two give output stride 16.")
    nodes: int = Field(4, ge=1, le=6, description="Intermediate nodes B per cell (each has 2 inputs after derivation).")
    head_channels: int = Field(64, ge=8, le=512, description="Channels of the head's 1x1 conv-BN-ReLU.")
    low_level_skip: bool = Field(True, description="Head fuses the 1/4-resolution stem feature before the classifier [ours].")
    low_level_channels: int = Field(24, ge=4, le=256, description="Channels the stem feature is projected to for the head's fusion.")
    num_classes: int = Field(11, ge=2, le=1024, description="Segmentation classes (void is not a class).")

    @model_validator(mode="after")
    def _check(self) -> "NetworkConfig":
        bad = [r for r in self.reduction_cells if not 0 <= r < self.num_cells]
        if bad:
            raise ValueError(f"reduction_cells {bad} outside 0..{self.num_cells - 1}")
        if len(set(self.reduction_cells)) != len(self.reduction_cells):
            raise ValueError("reduction_cells has duplicates")
        self.reduction_cells = sorted(self.reduction_cells)
        return self


class GGMConfig(_Strict):
    """GCN-Guided Module (GAS.md §3)."""

    enabled: bool = Field(True, description="Use the GGM; off gives plain independent cells.")
    adjacency: Adjacency = Field("similarity", description="Graph over edges of cell k-1: learned 'similarity' or DAG 'topology'.")
    gamma: float = Field(0.5, ge=0.0, le=10.0, description="Weight γ of the GCN term in α'_k = α_k + γ·Φ(GCN(α_{k-1})).")
    hidden: int = Field(32, ge=4, le=512, description="Hidden width of the two graph-convolution layers.")
    embed: bool = Field(True, description="Embed the α rows with a linear layer before the GCN.")
    input_norm: GGMInput = Field("standardize", description="GCN input: 'standardize' (each α row less its mean, divided by the cell's std, so the GGM sees which ops an edge prefers at any α scale) or 'raw' α (with α near its 1e-3 initialisation the similarity graph is uniform, the centred message is exactly zero and Φ gets no gradient: the GGM never moves) [ours].")
    bias: bool = Field(False, description="Biases in the embedding and in Φ (off: no shared path that adds one vector to every edge) [ours].")
    center_message: bool = Field(True, description="Subtract the message's mean over a cell's edges, so the GGM cannot impose one global op preference [ours].")
    message_bound: float = Field(1.0, ge=0.0, le=100.0, description="Message is b·tanh(m/b), at most b logits before γ; 0 = unbounded [ours].")
    recursive: bool = Field(False, description="Chain α'_k = α_k + γ·GGM(α'_{k-1}) (sequential) instead of the one-hop GGM(α_{k-1}).")
    lr: float = Field(3e-4, gt=0.0, le=10.0, description="Adam learning rate of the GGM's weights (own group, no weight decay) [ours].")


class LatencyConfig(_Strict):
    """Latency budget and its loss (GAS.md §4)."""

    budget_ms: float = Field(10.0, gt=0.0, le=60_000.0, description="Latency budget T in milliseconds at batch 1.")
    height: int = Field(360, ge=16, le=4096, description="Deployment input height for LUT and FPS.")
    width: int = Field(480, ge=16, le=4096, description="Deployment input width for LUT and FPS.")
    precision: Precision = Field("fp32", description="Deployment precision of the LUT and the budget (fp16/bf16 on CUDA only).")
    runtime: RuntimeName = Field("torch-eager", description="Deployment runtime of the budget: the LUT entries, the end-to-end measurements (validation, repair) and the FPS report's reference timing run in it (onnxruntime: CPU execution provider, fp32; torch-optimised: a CUDA graph on CUDA, a frozen jit trace on the CPU).")
    weight: float = Field(0.5, ge=0.0, le=100.0, description="λ, the weight of the latency term in the architecture loss.")
    form: LatencyForm = Field("budget", description="'budget': λ·f(LAT/T) pulling toward T; 'paper': λ·LAT/T (plain, minimising).")
    under_budget_slope: float = Field(0.1, ge=0.0, le=1.0, description="Slope of f below the budget (f(r)=slope·(1-r) for r<1, r-1 above).")
    warmup_runs: int = Field(10, ge=1, le=1000, description="Untimed runs before each LUT measurement.")
    repeats: int = Field(30, ge=3, le=10_000, description="Timed runs per LUT entry; the median is kept, with p10/p90.")
    lut_burst: int = Field(10, ge=1, le=1000, description="Back-to-back calls per timed LUT sample, as ops queue inside a network [ours]; 1 = each call alone.")
    e2e_repeats: int = Field(50, ge=3, le=100_000, description="Timed runs of an end-to-end network measurement.")
    derivation: Derivation = Field("pt", description="'pt' [ours, after DARTS-PT; the default since attempt 4 of docs/SEARCH_QUALITY.md, where it beat the argmax of the same supernet by 2.4 mIoU]: ops and edges ranked by the trained supernet's loss increase when each is removed, then the LUT greedy down to T (core/perturb.py); 'argmax': the paper's strongest op of α' per kept edge; 'fill' [ours]: strongest parametric op of α' per kept edge, then the greedy down to T (measured worse: attempt 3).")
    pt_images: int = Field(32, ge=1, le=4096, description="Images of the architecture half D_α on which the 'pt' derivation scores every op and edge (one supernet evaluation per op and edge, cells before the perturbed one computed once).")
    repair: bool = Field(True, description="Step weak edges to cheaper ops when the derived net measures over budget.")
    repair_rounds: int = Field(4, ge=1, le=100, description="Measure-and-repair rounds before giving up.")
    repair_steps_per_round: int = Field(64, ge=1, le=10_000, description="Op changes allowed per repair round.")
    repair_max_fraction: float = Field(0.5, gt=0.0, le=1.0, description="Most of the network's edges a repair may change; a budget that needs more is reported as not met instead [ours].")
    repair_max_disagreement: float = Field(0.5, gt=0.0, le=100.0, description="A repair round stops when the measured latency after it differs from the LUT-scaled expectation by more than this fraction (the table and the clock disagree) [ours].")
    intra_op_threads: int = Field(1, ge=0, le=1024, description="torch intra-op threads while timing (LUT, end to end, FPS); part of the LUT identity. 1 stays stable on a shared host, where 2 threads on 2 busy cores stalled for seconds; 0 = torch's default [ours].")
    inter_op_threads: int = Field(1, ge=0, le=1024, description="torch inter-op threads, set at the job's start when the process still allows it; the value in force is recorded (0 = torch's default) [ours].")
    noise_max_ratio: float = Field(2.0, gt=1.0, le=1e9, description="A timing is noisy when its p90/min exceeds this (quiet CPU timings here stay <= 1.75; with two CPU hogs 2.7-58) [ours].")
    noise_max_median_ratio: float = Field(1.25, gt=1.0, le=1e9, description="An end-to-end timing (not a LUT entry) is noisy too when its median/min exceeds this: its median then lies more than this far above what the network costs uncontended (quiet CPU readings here stay <= 1.13; beside two CPU hogs one passed p90/min at 1.95 with its median 32 % slow: bench/results/latency_trust_spread_before_median_check.json) [ours].")
    noise_retries: int = Field(2, ge=0, le=100, description="Re-measurements of a noisy timing before it is kept and flagged as noisy.")
    drift_max: float = Field(0.25, ge=0.0, le=100.0, description="An end-to-end reading is drifted, re-taken and, if it stays so, not acted on when the table's reference network, read just before it, runs more than this fraction slower or faster than when the table was validated (the host's speed changed; core/drift.py); 0 = no check [ours].")
    drift_correct: bool = Field(True, description="Divide an end-to-end reading (and the FPS report's reading the verdict uses) by its reference network's drift, when within drift_max, before the repair and the budget verdict act on it: the latency at the host speed the table was validated at (attempts 8, 8b and 9 of docs/SEARCH_QUALITY.md, 17 readings: mean error against a quiet loop 5.9 % corrected, 10.3 % raw); the raw reading is kept beside it [ours].")
    noise_retry_pause_s: float = Field(0.2, ge=0.0, le=60.0, description="Pause before re-measuring a noisy timing.")
    lut_check_networks: int = Field(4, ge=0, le=1000, description="Random networks measured end to end to validate a LUT before it is trusted and cached (0 = no check; the table is then cached unchecked).")
    lut_max_error: float = Field(0.5, gt=0.0, le=100.0, description="A LUT fails validation when its median relative error against the end-to-end measurements exceeds this (quiet CPU tables here under-predict by 25-31 %) [ours].")
    lut_min_rank_corr: float = Field(0.0, ge=-1.0, le=1.0, description="A LUT fails validation when the Spearman rank correlation of its predictions with the measurements is below this (with few networks ρ is coarse, so the default only rejects inverted rankings) [ours].")
    lut_calibrate: bool = Field(True, description="Scale the LUT's predictions by the median measured/predicted ratio of its validation networks (ops timed one by one under-predict a whole network by 15-30 % on this CPU); the validation then judges the leave-one-out error of that scale [ours].")
    lut_max_scale: float = Field(2.0, ge=1.0, le=100.0, description="A calibration scale outside [1/this, this] fails the table's validation: a table that far off is re-measured, not corrected [ours].")
    lut_remeasure: int = Field(1, ge=0, le=10, description="Times a table that fails validation (or holds noisy entries) is measured again before the job goes on with it flagged and uncached.")


class SearchConfig(_Strict):
    """Search procedure (GAS.md §5, DARTS first-order)."""

    epochs: int = Field(40, ge=1, le=1000, description="Total search epochs, warm-up included.")
    warmup_epochs: int = Field(15, ge=0, le=1000, description="Epochs training weights only, α frozen (a third or more of the run, GAS.md §10).")
    steps_per_epoch: int = Field(0, ge=0, le=100_000, description="Steps per epoch; 0 means one pass over the weight half.")
    batch_size: int = Field(8, ge=1, le=256, description="Batch size of both the weight and the architecture steps.")
    crop_height: int = Field(240, ge=0, le=4096, description="Search crop height (never larger than the data; 0 = the full image); the LUT stays at the deployment resolution.")
    crop_width: int = Field(320, ge=0, le=4096, description="Search crop width (never larger than the data; 0 = the full image).")
    w_lr: float = Field(0.05, gt=0.0, le=10.0, description="SGD learning rate of the weights (cosine to w_lr_min).")
    w_lr_min: float = Field(0.001, ge=0.0, le=10.0, description="Final weight learning rate.")
    w_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum of the weights.")
    w_weight_decay: float = Field(3e-4, ge=0.0, le=1.0, description="Weight decay of the weights.")
    w_grad_clip: float = Field(5.0, gt=0.0, le=1000.0, description="Gradient-norm clip of the weight step.")
    a_lr: float = Field(3e-3, gt=0.0, le=10.0, description="Adam learning rate of α (the GGM's weights have their own, ggm.lr).")
    a_weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="Adam weight decay (coupled L2) of α; the GGM's weights have none. 0 by default (DARTS: 1e-3): the coupled decay holds α at |E[grad]|/wd, about 0.3 logit on CamVid, whatever a_lr (docs/SEARCH_QUALITY.md, attempts 8 and 8b) [ours].")
    a_betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field((0.5, 0.999), description="Adam betas of the architecture optimizer.")
    shared_cells: bool = Field(False, description="Ablation: one α for all normal cells and one for all reduction cells (DARTS).")
    gumbel: bool = Field(True, description="Gumbel-softmax relaxation of the mixed operation in training mode (off: plain softmax, which lets skip_connect win; docs/SEARCH_QUALITY.md).")
    gumbel_tau: float = Field(1.0, gt=0.0, le=100.0, description="Gumbel-softmax temperature.")
    free_op_dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout on weight-free ops' outputs (skip, pooling) in the supernet, decaying linearly to 0 over the run, against their early win (P-DARTS) [ours].")
    batched_cells: bool = Field(True, description="Compute each node's out-edges together (one ReLU, one kernel per op family; same function, fewer launches and saved bytes: docs/SEARCH_SPEED.md) [ours]; False = one module per edge.")
    compile: Literal["off", "default", "reduce-overhead"] = Field("off", description="torch.compile the supernet's training forward and backward (both steps): 'default' fuses kernels (inductor), 'reduce-overhead' also replays them as CUDA graphs (CUDA only; 'default' elsewhere). The first step of each kind compiles (minutes); a failure falls back to eager, said in progress and the report (docs/SEARCH_SPEED.md) [ours].")
    ops: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]] | None = Field(None, max_length=64, description="Subset of the op registry to search over (None = all 8).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of weights, data order and augmentation.")
    flip: bool = Field(True, description="Random horizontal flips during search.")


class Normalization(_Strict):
    """Input normalisation of a model: x = (pixel/255 - mean) / std per RGB channel (core.preprocess)."""

    mean: tuple[float, float, float] = Field(CAMVID_MEAN_RGB, description="Per-channel RGB mean in [0, 1] subtracted from pixel/255; default CamVid's (used where the dataset has no validation statistics).")
    std: tuple[float, float, float] = Field(CAMVID_STD_RGB, description="Per-channel RGB standard deviation in [0, 1] dividing (pixel/255 - mean); default CamVid's.")
    source: str = Field("camvid-default", max_length=200, description="Where mean/std come from: 'camvid-default' or the dataset validation report they were read from.")

    @model_validator(mode="after")
    def _check(self) -> "Normalization":
        if any(not 0.0 <= m <= 1.0 for m in self.mean):
            raise ValueError(f"mean {list(self.mean)} must lie in [0, 1]")
        if any(not MIN_CHANNEL_STD <= v <= 1.0 for v in self.std):
            raise ValueError(f"std {list(self.std)} must lie in [{MIN_CHANNEL_STD}, 1]")
        return self


def normalization_from_report(report: dict | None, source: str) -> Normalization:
    """The normalisation a dataset's validation report implies: its RGB ``channel_mean``/``channel_std``
    when present and usable (3 values, std >= :data:`MIN_CHANNEL_STD`), else the CamVid default."""
    if isinstance(report, dict):
        mean, std = report.get("channel_mean"), report.get("channel_std")
        if (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3
                and all(isinstance(v, (int, float)) for v in mean + std)):
            try:
                return Normalization(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                                     source=source)
            except ValueError:
                pass
    return Normalization()


class ExportConfig(_Strict):
    """ONNX export of a retrained model and its parity check against PyTorch (core.export)."""

    opset: int = Field(17, ge=13, le=20, description="ONNX opset of model.onnx (classic TorchScript exporter, torch.onnx.export(dynamo=False)).")
    dynamic_shape: bool = Field(True, description="Batch, height and width are dynamic axes of model.onnx (checked to match PyTorch at other sizes); off = fixed 1x3xHxW.")
    parity_images: int = Field(4, ge=1, le=64, description="Images of the eval split run through PyTorch and onnxruntime (CPU, fp32) before model.onnx is published.")
    parity_rtol: float = Field(1e-4, gt=0.0, le=1.0, description="Largest allowed absolute logit difference between onnxruntime and PyTorch, relative to max(1, largest absolute logit); above it the job fails.")
    parity_min_argmax_agreement: float = Field(0.999, ge=0.0, le=1.0, description="Smallest allowed fraction of pixels whose argmax class agrees between onnxruntime and PyTorch; below it the job fails.")


class RetrainConfig(_Strict):
    """Retraining from scratch (GAS.md §8)."""

    epochs: int = Field(100, ge=1, le=10_000, description="Training epochs (ignored when time_budget_s > 0 ends it first).")
    time_budget_s: float = Field(0.0, ge=0.0, le=30 * 86400, description="Wall-clock training budget in s; 0 = epochs only.")
    batch_size: int = Field(16, ge=1, le=512, description="Training batch size.")
    lr: float = Field(2e-3, gt=0.0, le=10.0, description="Peak learning rate (poly decay).")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="Weight decay.")
    poly_power: float = Field(0.9, ge=0.0, le=10.0, description="Exponent of the poly LR schedule.")
    crop_height: int = Field(0, ge=0, le=4096, description="Crop height after scale jitter; 0 = full image.")
    crop_width: int = Field(0, ge=0, le=4096, description="Crop width after scale jitter; 0 = full image.")
    scale_min: float = Field(0.75, gt=0.0, le=4.0, description="Lower bound of random scale jitter.")
    scale_max: float = Field(1.5, gt=0.0, le=4.0, description="Upper bound of random scale jitter.")
    flip: bool = Field(True, description="Random horizontal flips.")
    eval_every: int = Field(1, ge=1, le=10_000, description="Evaluate mIoU every this many epochs (and at the end).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed.")
    train_splits: list[SplitName] = Field(["train"], min_length=1, max_length=8, description="Splits to train on (CamVid protocol: train+val); each one path component.")
    eval_split: SplitName = Field("val", description="Split on which mIoU is reported.")


LabelMapKey = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class LabelMap(_Strict):
    """How raw mask values become class ids (core.labelmap): stored with the dataset as JSON."""

    values: dict[LabelMapKey, Annotated[int, Field(ge=0, le=1023)]] = Field(
        default_factory=dict, max_length=4096,
        description="Raw mask value -> class id. Keys: a grey level / label id (\"255\") or a colour (\"#rrggbb\" or \"r,g,b\").")
    ignore: list[LabelMapKey] = Field(default_factory=list, max_length=4096,
                                      description="Raw values (same key syntax) that become the dataset's ignore_index.")
    unlisted: Literal["error", "ignore"] = Field("error", description="Raw values in neither list: 'error' (the mask is invalid) or 'ignore'.")


class DatasetRef(_Strict):
    """Where a dataset lies and what it holds (resolved by the service, or given on the command line)."""

    root: str = Field(..., description="Directory of the dataset.")
    layout: Layout = Field("camvid", description="Directory layout.")
    num_classes: int = Field(11, ge=2, le=1024, description="Number of classes.")
    class_names: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(None, max_length=1024, description="Class names, index = class id.")
    ignore_index: int = Field(11, ge=0, le=65535, description="Mask value ignored by loss and metrics.")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="Use at most this many images per split (tests, demos).")
    label_map: LabelMap | None = Field(None, description="Raw mask values -> class ids (core.labelmap); None = the masks hold class ids (or the layout's own map).")


class SearchJobSpec(_Strict):
    dataset: DatasetRef
    network: NetworkConfig = NetworkConfig()
    ggm: GGMConfig = GGMConfig()
    latency: LatencyConfig = LatencyConfig()
    search: SearchConfig = SearchConfig()
    train_split: SplitExpr = Field("train", description="Split the search draws both halves from (one split name, or several joined with '+').")
    data_height: int = Field(0, ge=0, le=4096, description="Resolution the data is resized to for search; 0 = latency.height.")
    data_width: int = Field(0, ge=0, le=4096, description="Width the data is resized to for search; 0 = latency.width.")
    validate_lut_samples: int = Field(0, ge=0, le=1000, description="Random derived nets measured to validate the LUT (0 = skip).")
    fps_iters: int = Field(50, ge=5, le=100_000, description="Timed iterations of the final end-to-end measurement.")


class RetrainJobSpec(_Strict):
    dataset: DatasetRef
    genotype: dict = Field(..., description="Genotype JSON document (validated by core.genotype).")
    train: RetrainConfig = RetrainConfig()
    height: int = Field(360, ge=16, le=4096, description="Training/eval resolution height.")
    width: int = Field(480, ge=16, le=4096, description="Training/eval resolution width.")
    fps_iters: int = Field(50, ge=5, le=100_000, description="Timed iterations of the FPS report.")
    normalization: Normalization = Field(default_factory=Normalization, description="Input normalisation (the service fills it from the dataset's validation report).")
    export: ExportConfig = Field(default_factory=ExportConfig, description="ONNX export and parity check.")
    sample_images: int = Field(4, ge=0, le=16, description="Images of the eval split saved as sample_<i>.png artifacts: the trained model's prediction overlaid on the image beside the ground truth, in the dataset's class colours (0 = none).")


class BenchmarkJobSpec(_Strict):
    genotype: dict = Field(..., description="Genotype JSON document.")
    height: int = Field(360, ge=16, le=4096, description="Input height.")
    width: int = Field(480, ge=16, le=4096, description="Input width.")
    iters: int = Field(100, ge=5, le=100_000, description="Timed iterations.")
    budget_ms: float | None = Field(None, gt=0.0, le=60_000.0, description="Budget to compare against, if any.")


class ValidateJobSpec(_Strict):
    dataset: DatasetRef
    splits: list[SplitName] | None = Field(None, max_length=64, description="Splits that must be present; None = every split the layout finds.")
    max_bad_per_kind: int = Field(20, ge=1, le=10_000, description="Bad files listed per kind of problem (all are counted).")
    sample_images: int = Field(4, ge=0, le=16, description="Valid image/mask pairs of the training split (else the first split) saved as sample_<i>.png artifacts of the validation job: the image beside its mask's class colours over it (0 = none).")


class FeasibilityJobSpec(_Strict):
    """What budgets are feasible before a search (issue 11 section 6): the cheapest, a typical and the
    dearest network of the search space at the budget's resolution, device and runtime."""

    network: NetworkConfig = NetworkConfig()
    ops: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]] | None = Field(None, max_length=64, description="The search space's op subset (None = all 8), as SearchConfig.ops.")
    latency: LatencyConfig = LatencyConfig()
    measure: bool = Field(True, description="Also time the three networks end to end (the table's figures are its calibrated sums, off by the validation's error); off = the table's figures only.")
    repeats: int = Field(20, ge=3, le=10_000, description="Timed runs of each end-to-end measurement of a feasibility job.")
    typical_samples: int = Field(64, ge=1, le=10_000, description="Random networks of the space whose median LUT latency is the typical one (the one nearest the median is measured).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the random networks (the table's validation and the typical network).")
