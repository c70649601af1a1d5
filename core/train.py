"""Retraining a network from scratch (GAS.md §8), resumable from ``workdir/state``.

Poly learning rate over the total steps, or, with ``time_budget_s > 0``, over the elapsed fraction
of the wall-clock training budget (training then stops at the budget; evaluation time is not
counted). Cross-entropy ignores ``ignore_index``. Flips, scale jitter and crops come from
:class:`core.data.DeviceLoader`. On CUDA: bf16 autocast (when the GPU supports bf16) and
channels_last; on CPU: plain fp32.

Files in ``workdir``: ``best.safetensors`` (weights of the best evaluated epoch),
``last.safetensors`` (weights at the last finished epoch), ``state/train_state.pt`` (model,
optimizer, epoch, RNG and loader state, written atomically at each epoch end). A second call with
the same ``workdir`` and settings resumes from that state and ends exactly where an uninterrupted
run would have (bit-identical on CPU with the same seed).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_training_state, save_training_state, save_weights
from .data import Augment, DeviceLoader, SegData
from .jobs import Cancelled
from .metrics import ConfusionMeter
from .specs import Normalization, RetrainConfig
from .timing import device_name, set_cudnn_benchmark

STATE_SUBDIR = "state"
"""Directory of ``workdir`` holding the resumable training state."""
STATE_FILE = "train_state.pt"
"""File name of the training state inside :data:`STATE_SUBDIR`."""
BEST_WEIGHTS = "best.safetensors"
"""Weights of the epoch with the best evaluation mIoU."""
LAST_WEIGHTS = "last.safetensors"
"""Weights at the end of the last finished epoch."""
EVAL_BATCH_SIZE = 8
"""Batch size of evaluation passes (no gradients; only memory matters)."""
SGD_MOMENTUM = 0.9
"""Momentum of the SGD optimizer (``cfg.optimizer == "sgd"``)."""
PROGRESS_EVERY_STEPS = 10
"""A step-level progress event every this many steps (each costs one device sync for the loss)."""
RESUME_FREE_FIELDS = frozenset({"eval_every"})
"""RetrainConfig fields that may change between a run and its resumption."""


def _noop(_event: dict[str, Any]) -> None:
    return None


def _never() -> bool:
    return False


def poly_lr(base_lr: float, fraction: float, power: float) -> float:
    """``base_lr * (1 - fraction) ** power`` with ``fraction`` clamped to [0, 1]."""
    return base_lr * (1.0 - min(max(fraction, 0.0), 1.0)) ** power


def make_optimizer(model: nn.Module, cfg: RetrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=SGD_MOMENTUM, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA GPUs that support it, nothing elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model logits at the input's resolution (dict outputs use ``"out"``; smaller maps are upsampled)."""
    out = model(x)
    if isinstance(out, dict):
        out = out["out"]
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels (0, not NaN, when a batch has none)."""
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


@torch.no_grad()
def evaluate(model: nn.Module, data: SegData | DeviceLoader, device: torch.device | str,
             batch_size: int = EVAL_BATCH_SIZE, normalization: Normalization | None = None) -> dict:
    """mIoU, pixel accuracy and named per-class IoU (see :mod:`core.metrics`) over ``data``
    (a SegData is normalised with ``normalization``, default CamVid's)."""
    device = torch.device(device)
    loader = data if isinstance(data, DeviceLoader) else DeviceLoader(data, batch_size, device, shuffle=False,
                                                                       drop_last=False, normalization=normalization)
    meter = ConfusionMeter(loader.num_classes, loader.ignore_index, device)
    was_training = model.training
    model.eval()
    try:
        for x, y in loader.ordered(batch_size):
            with autocast_for(device):
                logits = forward_logits(model, x)
            meter.update(logits.argmax(1), y)
    finally:
        model.train(was_training)
    return meter.summary(loader.class_names or None)


def _digest(items: Any) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def _model_digest(model: nn.Module) -> str:
    """The architecture: the genotype's hash where the model has one (weight-free ops and edge inputs have no
    parameters), plus the names and shapes of its tensors."""
    arch = getattr(getattr(model, "genotype", None), "arch_hash", lambda: None)()
    return _digest([arch, [[k, list(v.shape)] for k, v in model.state_dict().items()]])


def _fingerprint(cfg: RetrainConfig, train_data: SegData, eval_data: SegData, steps_per_epoch: int,
                 model: nn.Module, normalization: Normalization | None = None) -> dict:
    norm = normalization or Normalization()
    return {
        "normalization": [list(norm.mean), list(norm.std)],
        "cfg": {k: v for k, v in cfg.model_dump().items() if k not in RESUME_FREE_FIELDS},
        "model": _model_digest(model),
        "train": _digest([train_data.stems, list(train_data.images.shape)]),
        "eval": _digest([eval_data.stems, list(eval_data.images.shape)]),
        "steps_per_epoch": steps_per_epoch,
    }


def _check_fingerprint(saved: str, current: dict, path: Path) -> None:
    old = json.loads(saved)
    for key in ("model", "normalization"):  # states written before these were part of the fingerprint
        if key not in old:
            current = {k: v for k, v in current.items() if k != key}
    if old == json.loads(json.dumps(current)):
        return
    diff = sorted({k for k in set(old) | set(current) if old.get(k) != json.loads(json.dumps(current.get(k)))})
    if "cfg" in diff:
        diff.remove("cfg")
        diff += [f"cfg.{k}" for k in sorted(set(old["cfg"]) | set(current["cfg"]))
                 if old["cfg"].get(k) != json.loads(json.dumps(current["cfg"].get(k)))]
    raise ValueError(f"{path} was written by a run with different settings or data ({', '.join(diff)}); "
                     "use a fresh workdir or the original settings")


def _batches(loader: DeviceLoader, should_cancel: Callable[[], bool]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _ in range(len(loader)):
        if should_cancel():
            raise Cancelled("training cancelled")
        yield loader.next_batch()


def train(model: nn.Module, train_data: SegData, eval_data: SegData, cfg: RetrainConfig, workdir: Path,
          device: torch.device | str, progress: Callable[[dict], None] = _noop,
          should_cancel: Callable[[], bool] = _never, normalization: Normalization | None = None) -> dict:
    """Train ``model`` (freshly initialised by the caller) and return a JSON-able report.

    Inputs are normalised with ``normalization`` (default: CamVid's statistics); it is part of the
    resume fingerprint.

    The report holds ``best`` and ``last`` (mIoU, pixel accuracy, named per-class IoU, epoch and the
    checkpoint file each refers to), ``steps``, ``images_per_s``, ``train_seconds`` (training steps
    only, summed over resumptions) and ``stopped_by`` (``"epochs"`` or ``"time_budget"``).
    ``should_cancel()`` is polled before every step; True raises :class:`core.jobs.Cancelled`.
    """
    device = torch.device(device)
    workdir = Path(workdir)
    state_path = workdir / STATE_SUBDIR / STATE_FILE
    if train_data.num_classes != eval_data.num_classes or train_data.ignore_index != eval_data.ignore_index:
        raise ValueError("train and eval data disagree on num_classes / ignore_index")
    is_cuda = device.type == "cuda"
    model.to(device)
    if is_cuda:
        model.to(memory_format=torch.channels_last)
        set_cudnn_benchmark()

    augment = Augment(flip=cfg.flip, scale_min=cfg.scale_min, scale_max=cfg.scale_max,
                      crop_height=cfg.crop_height, crop_width=cfg.crop_width)
    loader = DeviceLoader(train_data, cfg.batch_size, device, augment=augment, seed=cfg.seed,
                          normalization=normalization)
    eval_loader = DeviceLoader(eval_data, EVAL_BATCH_SIZE, device, shuffle=False, drop_last=False,
                               normalization=normalization)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    budget = float(cfg.time_budget_s)
    fingerprint = _fingerprint(cfg, train_data, eval_data, steps_per_epoch, model, normalization)

    epoch, step, images, train_seconds = 0, 0, 0, 0.0
    best: dict | None = None
    last: dict | None = None
    stopped_by = "epochs"
    resumed_from: int | None = None
    history: list[dict] = []  # one entry per epoch: mean train loss, lr, and mIoU/pixel accuracy when evaluated
    if state_path.is_file():
        # The fingerprint (settings, data, network) is checked before anything is restored.
        info = load_training_state(state_path, model, optimizer, None, loader, check_extra=lambda extra:
                                   _check_fingerprint(extra["fingerprint"], fingerprint, state_path))
        extra = info["extra"]
        epoch, resumed_from = info["epoch"], info["epoch"]
        step, images, train_seconds = int(extra["step"]), int(extra["images"]), float(extra["train_seconds"])
        best, last = json.loads(extra["best"]), json.loads(extra["last"])
        stopped_by = str(extra["stopped_by"])
        history = json.loads(extra.get("history") or "[]")
    else:
        torch.manual_seed(cfg.seed)

    def record(eval_now: bool, entry: dict | None = None) -> None:
        nonlocal best, last
        if eval_now:
            summary = evaluate(model, eval_loader, device)
            last = {**summary, "epoch": epoch, "checkpoint": LAST_WEIGHTS}
            if best is None or summary["miou"] > best["miou"]:
                best = {**summary, "epoch": epoch, "checkpoint": BEST_WEIGHTS}
                save_weights(model, workdir / BEST_WEIGHTS, {"epoch": str(epoch), "miou": repr(summary["miou"])})
        if entry is not None:
            history.append(entry)
        if eval_now and history and history[-1]["epoch"] == epoch:
            history[-1].update(miou=last["miou"], pixel_acc=last["pixel_acc"])
        save_weights(model, workdir / LAST_WEIGHTS, {"epoch": str(epoch)})
        save_training_state(state_path, model, optimizer, None, epoch, loader, extra={
            "fingerprint": json.dumps(fingerprint), "step": step, "images": images,
            "train_seconds": train_seconds, "best": json.dumps(best), "last": json.dumps(last),
            "stopped_by": stopped_by, "history": json.dumps(history)})

    lr = poly_lr(cfg.lr, step / max(total_steps, 1), cfg.poly_power)
    model.train()
    while epoch < cfg.epochs and stopped_by == "epochs":
        if budget > 0 and train_seconds >= budget:
            stopped_by = "time_budget"
            break
        loss_sum = torch.zeros((), device=device)
        loss_count = 0
        t0 = time.perf_counter()
        for x, y in _batches(loader, should_cancel):
            if budget > 0:
                fraction = (train_seconds + time.perf_counter() - t0) / budget
                if fraction >= 1.0:
                    stopped_by = "time_budget"
                    break
            else:
                fraction = step / max(total_steps, 1)
            lr = poly_lr(cfg.lr, fraction, cfg.poly_power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast_for(device):
                logits = forward_logits(model, x)
            loss = segmentation_loss(logits, y, train_data.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            images += int(x.shape[0])
            loss_sum += loss.detach()
            loss_count += 1
            if step % PROGRESS_EVERY_STEPS == 0:
                progress({"phase": "train", "epoch": epoch, "epochs": cfg.epochs, "step": step, "steps": total_steps,
                          "metrics": {"loss": float(loss.detach()), "lr": lr}})
        if is_cuda:
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t0
        epoch += 1
        finished = epoch >= cfg.epochs or stopped_by == "time_budget"
        mean_loss = float(loss_sum) / max(loss_count, 1)
        record(eval_now=finished or epoch % cfg.eval_every == 0,
               entry={"epoch": epoch, "loss": mean_loss, "lr": lr, "train_seconds": round(train_seconds, 3)})
        metrics: dict[str, float] = {"loss": mean_loss, "lr": lr}
        if last is not None and last["epoch"] == epoch:
            metrics["miou"] = last["miou"]
        progress({"phase": "train", "epoch": epoch, "epochs": cfg.epochs, "step": step, "steps": total_steps,
                  "metrics": metrics})
    if last is None or last["epoch"] != epoch:  # e.g. the budget ran out exactly at an epoch boundary
        record(eval_now=True)
    assert best is not None and last is not None
    return {
        "best": best, "last": last, "history": history,
        "best_miou": best["miou"], "last_miou": last["miou"],
        "best_epoch": best["epoch"], "last_epoch": last["epoch"],
        "epochs_completed": epoch, "epochs": cfg.epochs, "steps": step, "steps_per_epoch": steps_per_epoch,
        "images_per_s": images / train_seconds if train_seconds > 0 else 0.0,
        "train_seconds": train_seconds, "stopped_by": stopped_by, "resumed_from_epoch": resumed_from,
        "train_images": len(train_data), "eval_images": len(eval_data),
        "device": device_name(device), "precision": "bf16-autocast" if is_cuda and torch.cuda.is_bf16_supported() else "fp32",
        "checkpoints": {"best": str(workdir / BEST_WEIGHTS), "last": str(workdir / LAST_WEIGHTS)},
    }
