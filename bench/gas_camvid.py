"""GAS on CamVid against torchvision's real-time peers, in one run on one machine (a benchmark, not a test).

Steps: build the LUT at the deployment resolution -> search with a latency budget -> derive (+repair)
-> retrain for a fixed wall-clock budget on train+val -> test mIoU and batch-1 FPS -> LUT validation on
random networks -> a random architecture of the same LUT latency, trained with the same budget ->
the supernet's peak GPU memory at batch 8 -> ../shared/bench/peer_camvid.py's peers with the same budget.
Writes ``OUT/gas_camvid.json`` and ``OUT/gas_camvid.md``.

usage: python bench/gas_camvid.py DATA_DIR OUT_DIR [--budget-ms 4.5] [--train-budget-s 120] [--smoke]
``--smoke`` runs every step at toy size on the CPU to check the script, and its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.derive import random_genotype  # noqa: E402
from core.genotype import load_genotype  # noqa: E402
from core.jobs import run_retrain, run_search  # noqa: E402
from core.latency import LatencyModel, LatencyTable  # noqa: E402
from core.network import SuperNet  # noqa: E402
from core.specs import (DatasetRef, GGMConfig, LatencyConfig, NetworkConfig, RetrainConfig, RetrainJobSpec,  # noqa: E402
                        SearchConfig, SearchJobSpec)
from core.timing import device_name  # noqa: E402
from core.train import autocast_for, segmentation_loss  # noqa: E402

RANDOM_CANDIDATES = 200  # random genotypes sampled to find one at the searched net's LUT latency
MEMORY_BATCH = 8  # batch of the supernet peak-memory probe (issue: must fit in 16 GiB at 360x480)


def supernet_peak_memory(net_cfg: NetworkConfig, h: int, w: int, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    net = SuperNet(net_cfg, GGMConfig()).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(MEMORY_BATCH, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, net_cfg.num_classes, (MEMORY_BATCH, h, w), device=device)
    with autocast_for(device):
        out = net(x)
    segmentation_loss(out, y, 255).backward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    del net, x, y, out
    torch.cuda.empty_cache()
    return round(peak, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget-ms", type=float, default=4.5, help="latency budget at 360x480, fp32, batch 1")
    ap.add_argument("--train-budget-s", type=float, default=120.0)
    ap.add_argument("--search-epochs", type=int, default=10)
    ap.add_argument("--warmup-epochs", type=int, default=3)
    ap.add_argument("--lut-samples", type=int, default=10)
    ap.add_argument("--peers", default="lraspp_mbv3,deeplabv3_mbv3")
    ap.add_argument("--peer-script", type=Path, default=REPO.parent / "shared" / "bench" / "peer_camvid.py")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU: checks the script only")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    h, w = (48, 64) if a.smoke else (360, 480)
    limit = 8 if a.smoke else None
    net = (NetworkConfig(num_cells=3, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                         low_level_channels=8) if a.smoke else NetworkConfig())
    ref = DatasetRef(root=str(a.data), layout="camvid", limit=limit)
    lat = LatencyConfig(budget_ms=a.budget_ms, height=h, width=w, precision="fp32",
                        repeats=5 if a.smoke else 30, e2e_repeats=5 if a.smoke else 50)
    t_all = time.perf_counter()
    res: dict = {"device": device_name(device),
                 "torch": torch.__version__, "resolution": [h, w], "precision_budget": "fp32", "batch_fps": 1,
                 "budget_ms": a.budget_ms, "train_budget_s": a.train_budget_s, "smoke": a.smoke}
    res["supernet_peak_gib_batch8"] = supernet_peak_memory(net, h, w, device)

    t0 = time.perf_counter()
    sspec = SearchJobSpec(dataset=ref, network=net, latency=lat,
                          search=SearchConfig(epochs=1 if a.smoke else a.search_epochs,
                                              warmup_epochs=0 if a.smoke else a.warmup_epochs, batch_size=8,
                                              seed=0),
                          validate_lut_samples=2 if a.smoke else a.lut_samples, fps_iters=10 if a.smoke else 200)
    search = run_search(sspec, a.out / "search", lut_dir=a.out / "luts")
    res["search"] = {**search, "wall_s": round(time.perf_counter() - t0, 1)}
    report = json.loads((a.out / "search" / "artifacts" / "report.json").read_text())
    res["lut_validation"] = {k: report["lut_validation"][k] for k in ("samples", "median_rel_error", "rank_correlation")}
    genotype = load_genotype(a.out / "search" / "artifacts" / "genotype.json")

    def retrain(g: dict, name: str) -> dict:
        t = time.perf_counter()
        spec = RetrainJobSpec(dataset=ref, genotype=g, height=h, width=w, fps_iters=10 if a.smoke else 200,
                              train=RetrainConfig(epochs=2 if a.smoke else 10_000, batch_size=16, lr=2e-3,
                                                  time_budget_s=0 if a.smoke else a.train_budget_s,
                                                  train_splits=["train", "val"], eval_split="test" if not a.smoke else "val",
                                                  eval_every=10_000, scale_min=0.75, scale_max=1.5))
        r = run_retrain(spec, a.out / name)
        rep = json.loads((a.out / name / "artifacts" / "report.json").read_text())
        fps = rep["fps"]
        return {"test_mIoU": r["miou"], "per_class_iou": rep["train"]["last"]["per_class_iou"],
                "steps": rep["train"]["steps"], "train_img_per_s": rep["train"]["images_per_s"],
                "fps_fp32": fps["measurements"]["fp32"]["eager"]["fps"],
                "fps_fp16": fps["measurements"].get("fp16", {}).get("eager", {}).get("fps"),
                "fps_fp32_optimised": (fps["measurements"]["fp32"].get("optimised") or {}).get("fps"),
                "measured_ms_fp32": fps["measured_ms"], "lut_prediction_ms": fps.get("lut_prediction_ms"),
                "wall_s": round(time.perf_counter() - t, 1)}

    res["searched"] = retrain(genotype.model_dump(mode="json"), "retrain_searched")
    res["searched"]["lut_prediction_ms"] = search["predicted_latency_ms"]

    if not a.skip_random:
        table = LatencyTable.load(next((a.out / "luts").glob("lut-*.json")))
        latm = LatencyModel(table, genotype.network, genotype.ops, h, w)
        gen = torch.Generator().manual_seed(1)
        target = latm.genotype_ms(genotype)
        cands = [random_genotype(genotype.network, genotype.ops, gen) for _ in range(RANDOM_CANDIDATES)]
        rnd = min(cands, key=lambda g: abs(latm.genotype_ms(g) - target))
        res["random"] = retrain(rnd.model_dump(mode="json"), "retrain_random")
        res["random"]["lut_prediction_ms"] = latm.genotype_ms(rnd)

    if a.peers and a.peer_script.exists():
        peer_out = a.out / "peers.json"
        cmd = [sys.executable, str(a.peer_script), str(a.data), str(peer_out), "--budget-s",
               str(5 if a.smoke else a.train_budget_s), "--models", "tiny" if a.smoke else a.peers]
        if a.smoke:
            cmd += ["--limit", "8", "--fps-iters", "5"]
        subprocess.run(cmd, check=True)
        res["peers"] = json.loads(peer_out.read_text())["models"]
    res["wall_s"] = round(time.perf_counter() - t_all, 1)
    (a.out / "gas_camvid.json").write_text(json.dumps(res, indent=1))
    (a.out / "gas_camvid.md").write_text(table_md(res))
    print(table_md(res))


def table_md(res: dict) -> str:
    rows = [f"Device: {res['device']}, torch {res['torch']}; CamVid test mIoU after {res['train_budget_s']:.0f} s of "
            f"training on train+val; FPS at {res['resolution'][0]}x{res['resolution'][1]}, batch 1, eager.",
            "", "| model | test mIoU | FPS fp32 | FPS fp16 | LUT ms | measured ms (fp32) |", "|---|---|---|---|---|---|"]
    for name in ("searched", "random"):
        if name in res:
            r = res[name]
            rows.append(f"| GAS {name} | {100 * r['test_mIoU']:.1f} | {r['fps_fp32']:.0f} | {r['fps_fp16'] or '-'} | "
                        f"{r['lut_prediction_ms']:.2f} | {r['measured_ms_fp32']:.2f} |")
    for name, p in (res.get("peers") or {}).items():
        rows.append(f"| {name} (peer) | {100 * p['test_mIoU']:.1f} | {p.get('fps_360x480_fp32', '-')} | "
                    f"{p.get('fps_360x480_fp16', '-')} | - | - |")
    v = res.get("lut_validation") or {}
    rows += ["", f"Budget {res['budget_ms']} ms: search measured {res['search']['measured_latency_ms']:.2f} ms, "
             f"budget met: {res['search']['budget_met']}, repaired: {res['search']['repaired']}.",
             f"LUT validation on {v.get('samples')} random nets: median relative error {v.get('median_rel_error')}, "
             f"rank correlation {v.get('rank_correlation')}.",
             f"Supernet peak GPU memory at batch {MEMORY_BATCH}: {res['supernet_peak_gib_batch8']} GiB."]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
