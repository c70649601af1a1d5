"""What one search step costs, in figures that do not depend on the machine (issue "search speed").

For the plain supernet (one module per edge) and the batched one (core/batched_cell.py), on the same
network and input:

- **aten calls** of one search step (the architecture step: forward + backward to α and the GGM;
  the weight step: forward + backward to the weights), counted with a ``TorchDispatchMode``: on a GPU
  each is at least one kernel launch, so this is the launch count that bounds a GPU step at these
  channel counts;
- **saved-for-backward bytes per image** of one forward (``saved_tensors_hooks``, each storage counted
  once), the activation memory of training;
- **CPU time per step** at a small resolution, both variants interleaved in one run (a ratio; the
  absolute figure is this machine's).

usage: python bench/search_step_cost.py [--height 360 --width 480] [--batch 2] [--time-hw 96x128] [--out DIR] [--smoke]
Writes ``OUT/search_step_cost.json`` and ``.md``. Run it alone: the timing part is disturbed by neighbours
(the counts are not).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from core.compile import CompiledForward  # noqa: E402
from core.estimate import saved_bytes  # noqa: E402
from core.network import SuperNet  # noqa: E402
from core.search import frozen  # noqa: E402
from core.specs import GGMConfig, NetworkConfig, SearchConfig  # noqa: E402
from core.timing import device_name  # noqa: E402
from core.train import autocast_for  # noqa: E402

VARIANTS = {"plain": False, "batched": True}


class AtenCounter(TorchDispatchMode):
    """Counts aten calls; ``kernels`` leaves out views (view, select, permute, detach…), which only
    change metadata and launch nothing on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.calls[name] += 1
        if func.is_view or name in METADATA_OPS:
            self.views[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> int:
        return sum(self.calls.values()) - sum(self.views.values())


# not flagged as views by their schema, but allocate or alias without computing
METADATA_OPS = {"aten.lift_fresh", "aten._unsafe_view", "aten.empty", "aten.unbind", "aten.split", "aten.chunk"}


def make(cfg: NetworkConfig, batched: bool, seed: int = 0) -> SuperNet:
    """The supernet as a search's first epoch has it: training mode, Gumbel on, free-op dropout at its start."""
    torch.manual_seed(seed)
    net = SuperNet(cfg, GGMConfig(), batched=batched, gumbel=True).train()
    net.set_free_op_dropout(SearchConfig().free_op_dropout)
    return net


def arch_step(net: SuperNet, x: torch.Tensor, y: torch.Tensor, fwd: CompiledForward | None = None) -> None:
    """As Searcher.arch_step: the weights frozen, gradients of α and the GGM only. ``fwd``: the search's
    (compiled) forward; eager ``SuperNet.forward_mixed`` without."""
    with frozen(net.weight_parameters()):
        logits = (fwd or net.forward_mixed)(x, net.op_weights(net.alpha_prime()))
        torch.autograd.grad(F.cross_entropy(logits.float(), y), net.arch_parameters(), allow_unused=True)


def weight_step(net: SuperNet, x: torch.Tensor, y: torch.Tensor, fwd: CompiledForward | None = None) -> None:
    """As Searcher.weight_step: α' detached, gradients of the weights."""
    logits = (fwd or net.forward_mixed)(x, net.op_weights([a.detach() for a in net.alpha_prime()]))
    torch.autograd.grad(F.cross_entropy(logits.float(), y), net.weight_parameters(), allow_unused=True)


def saved_bytes_per_step(net: SuperNet, x: torch.Tensor) -> dict[str, int]:
    """Saved-for-backward bytes per image of each step's forward as the search runs it: the architecture step with
    the weights frozen, the weight step with α' detached (``saved_bytes_per_image``: everything requiring grad)."""
    with frozen(net.weight_parameters()):
        arch = saved_bytes(lambda t: net.forward_mixed(t, net.op_weights(net.alpha_prime())), x)
    weight = saved_bytes(lambda t: net.forward_mixed(t, net.op_weights([a.detach() for a in net.alpha_prime()])), x)
    return {"architecture": arch // x.shape[0], "weight": weight // x.shape[0]}


def search_step(net: SuperNet, x: torch.Tensor, y: torch.Tensor, fwd: CompiledForward | None = None) -> None:
    """One architecture step and one weight step; through ``fwd.step`` when compiled (its guard and fallback)."""
    if fwd is None:
        arch_step(net, x, y), weight_step(net, x, y)
        return
    fwd.step("architecture", lambda: arch_step(net, x, y, fwd))
    fwd.step("weight", lambda: weight_step(net, x, y, fwd))


def count_calls(net: SuperNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    out = {}
    for name, step in (("arch_step", arch_step), ("weight_step", weight_step)):
        with AtenCounter() as c:
            step(net, x, y)
        out[name] = {"aten": sum(c.calls.values()), "kernels": c.kernels}
    with torch.no_grad(), AtenCounter() as c:
        net(x)
    out["forward"] = {"aten": sum(c.calls.values()), "kernels": c.kernels}
    out["search_step"] = {k: out["arch_step"][k] + out["weight_step"][k] for k in ("aten", "kernels")}
    return out


def step_time(nets: dict[str, SuperNet], x: torch.Tensor, y: torch.Tensor, rounds: int, reps: int,
              fwds: dict[str, CompiledForward] | None = None) -> dict:
    """CPU ms per search step, the variants interleaved round by round; a compiled variant's first steps
    (where it compiles) are timed apart, as ``compile_s``."""
    fwds = fwds or {}
    times: dict[str, list[float]] = {k: [] for k in nets}
    first: dict[str, float] = {}
    for k, net in nets.items():  # warm-up (a compiled variant compiles here)
        t = time.perf_counter()
        search_step(net, x, y, fwds.get(k))
        first[k] = time.perf_counter() - t
    for _ in range(rounds):
        for k, net in nets.items():
            t = time.perf_counter()
            for _ in range(reps):
                search_step(net, x, y, fwds.get(k))
            times[k].append((time.perf_counter() - t) / reps * 1000)
    out = {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2)} for k, v in times.items()}
    for k, f in fwds.items():
        out[k].update(compile_s=round(first[k], 1), compile=f.as_dict())
    return out


def cuda_steps(cfg: NetworkConfig, h: int, w: int, batch: int, reps: int = 10, compile_modes: tuple[str, ...] = (),
               into: dict | None = None, on_variant: Callable[[], object] = lambda: None) -> dict:
    """On a GPU: ms per search step (arch + weight, gradients only) and peak memory, as the search runs it
    (bf16 autocast where supported, channels_last, cudnn.benchmark): plain and batched cells eager, then the
    batched cells under each of ``compile_modes`` (search.compile), with the seconds their first step took."""
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, 3, h, w, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(cfg.num_classes, (batch, h, w), device=dev, generator=g)
    doc = into if into is not None else {}
    doc.update({"device": torch.cuda.get_device_name(dev), "resolution": [h, w], "batch": batch, "reps": reps,
                "precision": "bf16 autocast" if torch.cuda.is_bf16_supported() else "fp32",
                "runtime": "PyTorch, channels_last, cudnn.benchmark (as the search)", "variants": {}})
    out = doc["variants"]
    runs = [(k, b, "off") for k, b in VARIANTS.items()] + [(f"batched+{m}", True, m) for m in compile_modes]
    for k, b, mode in runs:
        net = make(cfg, b).to(dev).to(memory_format=torch.channels_last)
        fwd = None if mode == "off" else CompiledForward(net, mode, dev)
        t = time.perf_counter()
        with autocast_for(dev):
            search_step(net, x, y, fwd)
            torch.cuda.synchronize()
            first_s = time.perf_counter() - t
            for _ in range(2):
                search_step(net, x, y, fwd)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
            for _ in range(reps):
                search_step(net, x, y, fwd)
            ev[1].record()
            torch.cuda.synchronize()
        out[k] = {"ms_per_step": round(ev[0].elapsed_time(ev[1]) / reps, 2),
                  "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2), "first_step_s": round(first_s, 1)}
        if fwd is not None:
            out[k]["compile"] = fwd.as_dict()
        del net, fwd
        torch.cuda.empty_cache()
        on_variant()
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--time-hw", default="96x128", help="resolution of the CPU timing part")
    ap.add_argument("--time-batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--smoke", action="store_true", help="toy network and sizes: checks the script only")
    ap.add_argument("--cuda-batch", type=int, default=8, help="batch of the GPU part (run when CUDA is available)")
    ap.add_argument("--compile", default="", help="comma list of 'cpu', 'cuda': also time the batched supernet under "
                    "search.compile=default on the CPU (inductor: minutes per graph for the default network) and, on a "
                    "GPU, under default and reduce-overhead")
    ap.add_argument("--backend", default=None, help="torch.compile backend of --compile (default: core.compile.BACKEND)")
    ap.add_argument("--cuda-only", action="store_true", help="only the GPU part (the counts are machine-independent: "
                    "measured on the CPU already)")
    a = ap.parse_args()
    cfg = NetworkConfig()
    if a.smoke:
        cfg = NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, nodes=2,
                            head_channels=16, low_level_channels=8)
        a.height, a.width, a.time_hw, a.rounds = 32, 48, "32x48", 1
    th, tw = (int(v) for v in a.time_hw.split("x"))
    compile_on = {d for d in a.compile.split(",") if d}
    if compile_on - {"cpu", "cuda"}:
        ap.error(f"--compile takes cpu and/or cuda, got {a.compile}")
    if a.cuda_only and not torch.cuda.is_available():
        ap.error("--cuda-only needs a CUDA device")
    res: dict = {"benchmark": "search_step_cost", "device": "cpu (counts and bytes are machine-independent)",
                 "cpu": device_name("cpu"),  # the host of the CPU times
                 "torch": torch.__version__, "threads": {"intra_op": torch.get_num_threads(),
                                                         "inter_op": torch.get_num_interop_threads()},
                 "network": cfg.model_dump(mode="json"), "resolution": [a.height, a.width], "batch": a.batch,
                 "precision": "fp32", "runtime": "PyTorch eager", "smoke": a.smoke, "variants": {}}
    a.out.mkdir(parents=True, exist_ok=True)
    name = "search_step_cost" + ("_smoke" if a.smoke else "")

    def write() -> str:  # after every part, so a run stopped by its time limit keeps what it measured
        (a.out / f"{name}.json").write_text(json.dumps(res, indent=1))
        md = table_md(res)
        (a.out / f"{name}.md").write_text(md)
        return md

    if not a.cuda_only:
        cpu_part(res, cfg, a, th, tw, compile_on)
        write()
    if torch.cuda.is_available():
        res["device"] = torch.cuda.get_device_name(0)
        res["cuda"] = {}
        cuda_steps(cfg, a.height, a.width, 2 if a.smoke else a.cuda_batch,
                   compile_modes=("default", "reduce-overhead") if "cuda" in compile_on else (),
                   into=res["cuda"], on_variant=write)
    print(write())


def cpu_part(res: dict, cfg: NetworkConfig, a: argparse.Namespace, th: int, tw: int, compile_on: set[str]) -> None:
    """The machine-independent counts (aten calls, saved bytes) of both variants and their CPU step time, with
    the batched supernet compiled too when ``compile_on`` has "cpu"."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.height, a.width, generator=g)
    y = torch.randint(cfg.num_classes, (a.batch, a.height, a.width), generator=g)
    nets = {k: make(cfg, b) for k, b in VARIANTS.items()}
    for k, net in nets.items():
        with torch.device("meta"):  # saved bytes from a forward on the meta device (as core/estimate.py): no memory
            meta_net, meta_x = make(cfg, VARIANTS[k]), torch.empty(a.batch, 3, a.height, a.width)
        res["variants"][k] = {"aten_calls": count_calls(net, x, y),
                              "saved_bytes_per_image": saved_bytes(meta_net, meta_x) // a.batch,
                              "saved_bytes_per_image_by_step": saved_bytes_per_step(meta_net, meta_x),
                              "weight_parameters": sum(p.numel() for p in net.weight_parameters())}
        gc.collect()
    xt = torch.randn(a.time_batch, 3, th, tw, generator=g)
    yt = torch.randint(cfg.num_classes, (a.time_batch, th, tw), generator=g)
    timed, fwds = dict(nets), {}
    if "cpu" in compile_on:  # a copy of the batched supernet (same weights), compiled: the ratio is measured in this run
        timed["batched+default"] = make(cfg, True)
        fwds["batched+default"] = CompiledForward(timed["batched+default"], "default", torch.device("cpu"),
                                                  backend=a.backend)
    timing = step_time(timed, xt, yt, a.rounds, 1 if a.smoke else 3, fwds)
    for k in nets:
        res["variants"][k]["cpu_step"] = timing[k]
    if "cpu" in compile_on:
        res["compiled_cpu"] = {"batched+default": timing["batched+default"],
                               "step_time_vs_batched_eager": round(timing["batched+default"]["median_ms"]
                                                                   / timing["batched"]["median_ms"], 3)}
    p, b = res["variants"]["plain"], res["variants"]["batched"]
    res["ratios"] = {
        "aten_calls_per_search_step": round(b["aten_calls"]["search_step"]["aten"] / p["aten_calls"]["search_step"]["aten"], 3),
        "kernel_calls_per_search_step": round(b["aten_calls"]["search_step"]["kernels"]
                                              / p["aten_calls"]["search_step"]["kernels"], 3),
        "saved_bytes_per_image": round(b["saved_bytes_per_image"] / p["saved_bytes_per_image"], 3),
        "cpu_step_time": round(b["cpu_step"]["median_ms"] / p["cpu_step"]["median_ms"], 3)}
    res["timing"] = {"resolution": [th, tw], "batch": a.time_batch, "rounds": a.rounds,
                     "method": "arch step (weights frozen) + weight step (α' detached), gradients only, no optimizer, "
                               "free-op dropout at its first-epoch rate; interleaved rounds, median"}
    res["goals"] = {"kernel_calls_per_search_step": "<= 1/3 of plain", "saved_bytes_per_image": "<= 0.75 of plain"}


def table_md(res: dict) -> str:
    lines: list[str] = []
    if "ratios" in res:
        r = res["ratios"]
        lines += [f"Default network at {res['resolution'][0]}x{res['resolution'][1]}, batch {res['batch']}, fp32, "
                  f"torch {res['torch']} ({res['threads']['intra_op']} intra-op threads); CPU step time at "
                  f"{res['timing']['resolution'][0]}x{res['timing']['resolution'][1]}, batch {res['timing']['batch']}"
                  f" ({res.get('cpu', 'cpu')}). Free-op dropout at its first-epoch rate.", "",
                  "| variant | kernels (aten calls) arch step | weight step | search step | forward | saved MB / image "
                  "(all / arch step / weight step) | CPU ms / step |", "|---|---|---|---|---|---|---|"]
        for k, v in res["variants"].items():
            c = {n: f"{d['kernels']} ({d['aten']})" for n, d in v["aten_calls"].items()}
            by = v.get("saved_bytes_per_image_by_step", {})
            saved = " / ".join(f"{b / 2**20:.1f}" for b in (v["saved_bytes_per_image"], *by.values()))
            lines.append(f"| {k} | {c['arch_step']} | {c['weight_step']} | {c['search_step']} | {c['forward']} | "
                         f"{saved} | {v['cpu_step']['median_ms']} |")
        lines += ["", "Kernels: aten calls less views and other metadata-only calls (a GPU launches nothing for them).",
                  "", f"batched / plain: kernel calls per search step {r['kernel_calls_per_search_step']} (goal ≤ 0.333; "
                      f"all aten calls {r['aten_calls_per_search_step']}), saved bytes per image "
                      f"{r['saved_bytes_per_image']} (goal ≤ 0.75), CPU step time {r['cpu_step_time']}."]
    if "compiled_cpu" in res:
        cc = res["compiled_cpu"]["batched+default"]
        lines += ["", f"search.compile=default ({cc['compile']['backend']}) on the CPU: {cc['median_ms']} ms / step, "
                      f"{res['compiled_cpu']['step_time_vs_batched_eager']} of batched eager in the same run; its first "
                      f"step (compiling both graphs) took {cc['compile_s']} s; used: {cc['compile']['used']}, graphs "
                      f"{cc['compile']['graphs']}, graph breaks {cc['compile']['graph_breaks']}"
                      + (f", fallback: {cc['compile']['fallback']}" if cc['compile']['fallback'] else "") + "."]
    if res.get("cuda", {}).get("variants"):
        c = res["cuda"]
        lines += ["", f"GPU: {c['device']}, {c['resolution'][0]}x{c['resolution'][1]}, batch {c['batch']}, {c['precision']}, "
                      f"{c['runtime']}:", "", "| variant | ms / search step | peak GiB | first step s | compile used | "
                      "CUDA graphs recorded |", "|---|---|---|---|---|---|"]
        for k, v in c["variants"].items():
            comp = v.get("compile")
            used = "eager" if comp is None else comp["used"] + (" (fallback)" if comp["fallback"] else "")
            graphs = "-" if comp is None or comp.get("cuda_graphs_recorded") is None else comp["cuda_graphs_recorded"]
            lines.append(f"| {k} | {v['ms_per_step']} | {v['peak_gib']} | {v['first_step_s']} | {used} | {graphs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
