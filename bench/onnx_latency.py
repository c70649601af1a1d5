"""PyTorch eager against onnxruntime for exported GAS networks (issue "a model the user can deploy").

Three genotypes of one network configuration (a searched one read from ``--searched``, a uniformly random
one, and a fixed hand-designed one: ``sep_conv_3x3`` on the two cell inputs of every node), each at two
resolutions: the model is exported with :func:`core.export.export_onnx` (the retrain's own path), parity is
checked with :func:`core.export.check_parity` on ``--parity-images`` random normalised inputs, and batch-1
latency is measured in both runtimes, interleaved, with the same thread count.

Weights are freshly initialised (latency does not depend on them; parity on a trained network is checked by
every retrain and by tests/core/test_export.py).

usage: python bench/onnx_latency.py --searched genotype.json [--resolutions 96x128,360x480] [--threads 1] [--out DIR]
Writes ``OUT/onnx_latency.json`` and ``.md``. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.derive import random_genotype  # noqa: E402
from core.export import INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx  # noqa: E402
from core.timing import cpu_model_name  # noqa: E402
from core.genotype import Cell, Edge, Genotype, Provenance, load_genotype  # noqa: E402
from core.network import DerivedNet  # noqa: E402


def hand_designed(g: Genotype) -> Genotype:
    cells = [Cell(reduction=c.reduction, nodes=[(Edge(input=0, op="sep_conv_3x3"), Edge(input=1, op="sep_conv_3x3"))
                                                for _ in c.nodes]) for c in g.cells]
    return Genotype(ops=list(g.ops), network=g.network, cells=cells, provenance=Provenance(source="hand"))


def time_both(model: torch.nn.Module, onnx_path: Path, h: int, w: int, threads: int, rounds: int, iters: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, h, w)
    xn = x.numpy()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {"torch_eager": [], "onnxruntime": []}
    try:
        with torch.no_grad():
            for _ in range(3):
                model(x), sess.run([OUTPUT_NAME], {INPUT_NAME: xn})
            for _ in range(rounds):
                for name in times:
                    t = time.perf_counter()
                    for _ in range(iters):
                        model(x) if name == "torch_eager" else sess.run([OUTPUT_NAME], {INPUT_NAME: xn})
                    times[name].append((time.perf_counter() - t) / iters * 1000)
    finally:
        torch.set_num_threads(prev)
    out = {k: {"median_ms": round(statistics.median(v), 3), "min_ms": round(min(v), 3)} for k, v in times.items()}
    out["ort_over_torch"] = round(out["onnxruntime"]["median_ms"] / out["torch_eager"]["median_ms"], 3)
    out["onnxruntime_version"] = ort.__version__
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--searched", type=Path, required=True, help="genotype.json of a search")
    ap.add_argument("--resolutions", default="96x128,360x480")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--parity-images", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    a = ap.parse_args()
    searched = load_genotype(a.searched)
    genotypes = {"searched": searched,
                 "random": random_genotype(searched.network, list(searched.ops), torch.Generator().manual_seed(0)),
                 "hand (sep_conv_3x3 on both cell inputs)": hand_designed(searched)}
    res: dict = {"benchmark": "onnx_latency", "device": cpu_model_name(), "torch": torch.__version__,
                 "threads": {"intra_op": a.threads, "inter_op": 1}, "precision": "fp32", "batch": 1,
                 "runtimes": ["torch eager (CPU)", "onnxruntime CPUExecutionProvider"],
                 "network": searched.network.model_dump(mode="json"), "rows": []}
    with tempfile.TemporaryDirectory(prefix="onnx_latency_") as tmp:
        for name, g in genotypes.items():
            torch.manual_seed(0)
            model = DerivedNet(g).eval()
            for hw in a.resolutions.split(","):
                h, w = (int(v) for v in hw.split("x"))
                path = export_onnx(model, Path(tmp) / f"{g.arch_hash()}_{h}x{w}.onnx", h, w, {"gas.bench": "1"})
                parity = check_parity(path, model, torch.randn(a.parity_images, 3, h, w), raise_on_fail=False)
                row = {"genotype": name, "genotype_hash": g.arch_hash(), "resolution": [h, w],
                       "parity": {k: parity[k] for k in ("max_abs_logit_diff", "relative_diff", "argmax_agreement", "ok")},
                       **time_both(model, path, h, w, a.threads, a.rounds, a.iters)}
                res["rows"].append(row)
                print(json.dumps(row))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "onnx_latency.json").write_text(json.dumps(res, indent=1))
    lines = [f"Device: {res['device']}, torch {res['torch']}, {a.threads} intra-op thread(s), fp32, batch 1; "
             f"onnxruntime {res['rows'][0]['onnxruntime_version']} CPUExecutionProvider; freshly initialised weights; parity on random normalised inputs.", "",
             "| genotype | resolution | torch eager ms | onnxruntime ms | ort / torch | max abs logit diff | argmax agreement |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['genotype']} | {r['resolution'][0]}x{r['resolution'][1]} | {r['torch_eager']['median_ms']} | "
                     f"{r['onnxruntime']['median_ms']} | {r['ort_over_torch']} | {r['parity']['max_abs_logit_diff']:.2e} | "
                     f"{r['parity']['argmax_agreement']:.5f} |")
    (a.out / "onnx_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
