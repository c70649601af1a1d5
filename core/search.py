"""The search procedure (GAS.md §5): warm-up, then first-order alternation of α and w steps.

Checkpoints at every epoch end (weights, α, GGM, both optimizers, schedule, loaders, RNG) and
resumes from the last one when run again in the same state directory.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .checkpoint import load_state, rng_state, save_state, set_rng_state
from .compile import CompiledForward
from .data import Augment, DeviceLoader, SegData
from .latency import LatencyModel
from .latency_loss import LatencyPenalty
from .network import SuperNet
from .specs import SearchConfig
from .train import autocast_for, evaluate, segmentation_loss

STATE_FILE = "search.pt"
STATE_VERSION = 3  # 2: the architecture optimizer has two groups (α, GGM); 3: batched cells' parameter layout
EVAL_BATCH = 8  # batch size of the per-epoch supernet evaluation on D_α


class SearchCancelled(Exception):
    pass


@dataclass
class SearchResult:
    alphas: list[torch.Tensor]  # α' at the end (what derivation reads)
    expected_latency_ms: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    steps: dict[str, Any] = field(default_factory=dict)  # the schedule's step counts (Searcher.step_counts)
    compile: dict[str, Any] = field(default_factory=dict)  # what search.compile asked for and what ran (core/compile.py)


def split_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint halves D_w (weights) and D_α (architecture) of n training images."""
    if n < 2:
        raise ValueError(f"search needs at least 2 training images, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2:]


def op_probabilities(model: SuperNet, alphas: list[torch.Tensor]) -> list[dict[str, float]]:
    """Per cell: mean softmax probability of each op over the cell's edges."""
    return [{o: round(float(v), 4) for o, v in zip(model.ops, F.softmax(a.detach().float(), -1).mean(0))}
            for a in alphas]


def alpha_probabilities(alphas: list[torch.Tensor], digits: int = 4) -> list[list[list[float]]]:
    """Per cell, per edge (core.cell.cell_edges order), per op: softmax(α') rounded to ``digits``.

    What the dashboard's heatmap draws for one epoch (cells × edges × ops)."""
    return [[[round(float(v), digits) for v in row] for row in F.softmax(a.detach().float(), -1).cpu()]
            for a in alphas]


def op_entropy(alphas: list[torch.Tensor]) -> list[float]:
    """Per cell: mean over edges of the entropy of softmax(α'), divided by log|O| (1 = uniform, 0 = one op)."""
    out = []
    for a in alphas:
        p = F.softmax(a.detach().float(), -1)
        h = -(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(a.shape[-1])
        out.append(round(float(h), 4))
    return out


def ggm_shift(model: SuperNet, alphas: list[torch.Tensor]) -> list[float]:
    """Per cell: ‖α'_k − α_k‖ / ‖α_k‖, how much the GGM moved the architecture of cell k."""
    out = []
    for k, a in enumerate(alphas):
        raw = model.raw_alpha(k).detach().float()
        out.append(round(float((a.detach().float() - raw).norm() / raw.norm().clamp_min(1e-12)), 4))
    return out


@contextmanager
def frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """``params`` do not require gradients inside the block (restored after, also on an error)."""
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)


def search_crop(cfg: SearchConfig, height: int, width: int) -> tuple[int, int]:
    """The crop the search trains on: a crop larger than the data is the whole image (never padding)."""
    return min(cfg.crop_height or height, height), min(cfg.crop_width or width, width)


class Searcher:
    def __init__(self, model: SuperNet, latency: LatencyModel, penalty: LatencyPenalty, cfg: SearchConfig,
                 data: SegData, device: torch.device, state_dir: Path,
                 progress: Callable[[dict], None], should_cancel: Callable[[], bool]):
        self.model, self.latency, self.penalty, self.cfg = model.to(device), latency.to(device), penalty, cfg
        self.device, self.state_path = device, Path(state_dir) / STATE_FILE
        self.progress, self.should_cancel = progress, should_cancel
        self.num_classes, self.ignore = data.num_classes, data.ignore_index
        if device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        half_w, half_a = split_halves(len(data), cfg.seed)
        self.crop = search_crop(cfg, data.height, data.width)
        aug = Augment(flip=cfg.flip, crop_height=self.crop[0], crop_width=self.crop[1])
        self.loader_w = DeviceLoader(data, cfg.batch_size, device, indices=half_w, augment=aug, seed=cfg.seed)
        self.loader_a = DeviceLoader(data, cfg.batch_size, device, indices=half_a, augment=aug, seed=cfg.seed + 1)
        self.steps = cfg.steps_per_epoch or len(self.loader_w)
        self.w_opt = torch.optim.SGD(model.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                     weight_decay=cfg.w_weight_decay)
        # Two groups: α (coupled L2 as in DARTS) and the GGM (own lr, no decay; see core/ggm.py).
        groups = [{"params": model.alpha_parameters(), "lr": cfg.a_lr, "weight_decay": cfg.a_weight_decay}]
        if model.ggm_parameters():
            groups.append({"params": model.ggm_parameters(), "lr": model.ggm_cfg.lr, "weight_decay": 0.0})
        self.a_opt = torch.optim.Adam(groups, lr=cfg.a_lr, betas=cfg.a_betas)
        self.arch_params, self.weight_params = model.arch_parameters(), model.weight_parameters()
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=cfg.w_lr_min)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.phase: str | None = None  # "warmup" or "search" while run() runs
        # the steps' forward (mixed weights); its events during a step carry the step's phase, so they do not
        # start a new stage of the job's progress (its ETA)
        self.forward = CompiledForward(self.model, cfg.compile, device,
                                       lambda ev: progress({**ev, "phase": self.phase or ev["phase"]}))

    # -- the two-phase step -----------------------------------------------------------------
    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Adam on α and the GGM with L_arch = CE + λ·f(LAT(α')/T) on a D_α batch."""
        return self.forward.step("architecture", lambda: self._arch_step(x, y))

    def _arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.a_opt.zero_grad(set_to_none=True)
        alphas = self.model.alpha_prime()
        # Gradients of α and the GGM only: the weight gradients would be thrown away by the weight step. With the
        # weights frozen the forward saves nothing for them, and a compiled backward (which computes the gradient
        # of every input that requires one) does not compute them either.
        with frozen(self.weight_params):
            with autocast_for(self.device):
                logits = self.forward(x, self.model.op_weights(alphas))
            ce = segmentation_loss(logits, y, self.ignore)
            lat = self.latency(alphas)
            penalty = self.penalty(lat)
            loss = ce + penalty
            grads = torch.autograd.grad(loss, self.arch_params, allow_unused=True)
        for p, g in zip(self.arch_params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        self.a_opt.step()
        return {"a_ce": ce.item(), "a_loss": loss.item(), "latency_penalty": penalty.item(),
                "expected_latency_ms": lat.item()}

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """SGD on the weights with CE on a D_w batch, α' detached."""
        return self.forward.step("weight", lambda: self._weight_step(x, y))

    def _weight_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.w_opt.zero_grad(set_to_none=True)
        with autocast_for(self.device):
            logits = self.weight_logits(x)
        loss = segmentation_loss(logits, y, self.ignore)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.cfg.w_grad_clip)
        self.w_opt.step()
        return {"w_loss": loss.item()}

    def weight_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The weight step's forward: the supernet mixed by α' (detached). A subclass may train other paths
        (bench/supernet_ranking.py: one sampled genotype per warm-up step)."""
        return self.forward(x, self.model.op_weights([a.detach() for a in self.model.alpha_prime()]))

    # -- epochs ---------------------------------------------------------------------------
    def run(self) -> SearchResult:
        resumed = self._resume()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            warm = epoch < self.cfg.warmup_epochs
            phase = self.phase = "warmup" if warm else "search"
            self.model.train()
            self.model.set_free_op_dropout(self.free_op_dropout(epoch))
            sums: dict[str, float] = {}
            for step in range(self.steps):
                if self.should_cancel():
                    raise SearchCancelled(f"cancelled at epoch {epoch} step {step}")
                metrics = {} if warm else self.arch_step(*self.loader_a.next_batch())
                metrics.update(self.weight_step(*self.loader_w.next_batch()))
                for key, v in metrics.items():
                    sums[key] = sums.get(key, 0.0) + v
                self.progress({"phase": phase, "epoch": epoch + 1, "epochs": self.cfg.epochs, "step": step + 1,
                               "steps": self.steps, "metrics": metrics,
                               "expected_latency_ms": metrics.get("expected_latency_ms")})
            self.sched.step()
            summary = self._epoch_summary(epoch, phase)
            summary["mean"] = {key: round(v / self.steps, 5) for key, v in sums.items()}
            self.history.append(summary)
            self._save(epoch + 1)
            self.progress({"phase": phase, "epoch": epoch + 1, "epochs": self.cfg.epochs, "step": self.steps,
                           "steps": self.steps, "metrics": {"supernet_miou": summary["supernet_miou"], **summary["mean"]},
                           "expected_latency_ms": summary["expected_latency_ms"], "op_probs": summary["op_probs"],
                           "op_entropy": summary["op_entropy"], "ggm_shift": summary["ggm_shift"],
                           "alphas": summary["alphas"], "ops": list(self.model.ops), "message": f"epoch {epoch + 1}/{self.cfg.epochs} done"})
        with torch.no_grad():
            alphas = [a.detach().cpu() for a in self.model.alpha_prime()]
            lat = float(self.latency([a.to(self.device) for a in alphas]))
        return SearchResult(alphas, lat, self.history, resumed, self.step_counts(), self.forward.as_dict())

    @torch.no_grad()
    def _epoch_summary(self, epoch: int, phase: str) -> dict[str, Any]:
        miou = evaluate(self.model, self.loader_a, self.device, EVAL_BATCH)["miou"]
        alphas = self.model.alpha_prime()
        return {"epoch": epoch + 1, "phase": phase, "supernet_miou": round(miou, 4),
                "expected_latency_ms": round(float(self.latency(alphas)), 4),
                "w_lr": self.sched.get_last_lr()[0], "op_probs": op_probabilities(self.model, alphas),
                "op_entropy": op_entropy(alphas), "ggm_shift": ggm_shift(self.model, alphas),
                "alphas": alpha_probabilities(alphas), "free_op_dropout": round(self.free_op_dropout(epoch), 4)}

    def free_op_dropout(self, epoch: int) -> float:
        """Linear decay from ``free_op_dropout`` at the first epoch to 0 after the last."""
        return self.cfg.free_op_dropout * (1.0 - epoch / self.cfg.epochs)

    def step_counts(self) -> dict[str, int]:
        """Steps the schedule makes: weight-only warm-up steps, then arch + weight step pairs."""
        warm_epochs = min(self.cfg.warmup_epochs, self.cfg.epochs)
        warm, arch = warm_epochs * self.steps, (self.cfg.epochs - warm_epochs) * self.steps
        return {"steps_per_epoch": self.steps, "warmup_steps": warm, "arch_steps": arch, "weight_steps": warm + arch,
                "batch_size": self.loader_w.batch_size, "crop": list(self.crop)}

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self, epoch: int) -> None:
        save_state(self.state_path, {
            "version": STATE_VERSION, "epoch": epoch, "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(), "sched": self.sched.state_dict(),
            "loader_w": self.loader_w.state_dict(), "loader_a": self.loader_a.state_dict(),
            "rng": rng_state(), "history": self.history,
        })

    def _resume(self) -> int | None:
        if not self.state_path.exists():
            return None
        state = load_state(self.state_path, map_location=self.device)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_path}: search state version {state.get('version')}, expected {STATE_VERSION}")
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.sched.load_state_dict(state["sched"])
        self.loader_w.load_state_dict(state["loader_w"])
        self.loader_a.load_state_dict(state["loader_a"])
        set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        return self.start_epoch

