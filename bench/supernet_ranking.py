"""Can the supernet tell a better architecture from a worse one? Search-side scores against retrained scores.

Issue 8: at the ``cpu`` profile's scale GAS does not beat random genotypes of the same latency
(docs/SEARCH_QUALITY.md). A search can only pick well if the trained supernet ranks architectures the way
their retraining does. This benchmark asks that question directly, on the genotypes whose retrained
quality is known best: those of ``bench/retrain_seeds.py`` (``--retrain-results``: each retrained with
several seeds; the target is their mean test mIoU).

For each search seed (``--seeds``) it runs the shipped search (``core.jobs.run_search``, the profile of
``bench/search_quality.py``, GAS as shipped) and, on the trained supernet, scores every genotype three ways:

- ``alpha``: Σ log softmax(α') over the genotype's kept (edge, op) pairs, non-``none`` ops: what the paper's
  argmax derivation maximises;
- ``pt``: Σ of the perturbation scores (``core.perturb``: the supernet's loss rise when that op is removed
  from that edge) over the genotype's kept pairs: what the shipped ``pt`` derivation maximises;
- ``oneshot``: the genotype run as a path of the supernet (one-hot mixing weights on its kept edges, every
  other edge off), BatchNorm statistics re-estimated on ``--bn-images`` training images, mean IoU on the
  ``--eval-split`` split (default ``val``: never seen by the search, not the test split the retrains report):
  the usual one-shot NAS evaluator.

Reported: Spearman ρ and Kendall τ of each score against the retrained means (one-sided permutation p,
ρ > 0), the same against the number of weight-free ops in normal cells (which predicted the retrained score,
r +0.58, in retrain_seeds), the agreement of the two supernets' scores (how repeatable the search-side
ranking is), and the ceiling any predictor has against a K-seed mean: √(K·ICC / (1 + (K−1)·ICC)).

usage: python bench/supernet_ranking.py [--retrain-results bench/results/retrain_seeds_cpu.json]
                                        [--seeds 0 1] [--bn-images 64] [--eval-split val] [--data DIR] [--smoke]
                                        [--epochs N --warmup-epochs M --tag NAME]
Writes ``OUT/supernet_ranking_<profile>.json`` and ``.md``. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from core.cell import cell_edges  # noqa: E402
from core.checkpoint import load_state  # noqa: E402
from core.data import DeviceLoader, load_split  # noqa: E402
from core.derive import random_genotype  # noqa: E402
from core.genotype import Genotype, parse_genotype  # noqa: E402
from core.jobs import run_search  # noqa: E402
from core.latency import LatencyModel  # noqa: E402
from core.lut_check import rank_correlation  # noqa: E402
from core.metrics import ConfusionMeter  # noqa: E402
from core.network import SuperNet  # noqa: E402
from core.ops import OPS  # noqa: E402
from core.perturb import perturbation_preference, scoring_batches  # noqa: E402
from core.latency_loss import LatencyPenalty  # noqa: E402
from core.search import STATE_FILE, Searcher, split_halves  # noqa: E402
from core.specs import DatasetRef, GGMConfig, LatencyConfig, SearchJobSpec  # noqa: E402
from core.timing import device_name, set_cudnn_benchmark  # noqa: E402
from search_quality import PROFILES, smoke, table_and_space  # noqa: E402

PERMUTATIONS = 20_000  # random permutations for the one-sided p of a rank correlation
SCORES = ("alpha", "pt", "oneshot")


# -- statistics ------------------------------------------------------------------------------
def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's τ-a (concordant minus discordant pairs over all pairs)."""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(math.copysign(1, a[i] - a[j]) * math.copysign(1, b[i] - b[j])) if a[i] != a[j] and b[i] != b[j] else 0
    return s / (n * (n - 1) / 2) if n > 1 else float("nan")


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for rank, i in enumerate(order):
        r[i] = float(rank)
    return r


def rank_p(a: list[float], b: list[float], seed: int = 0) -> float:
    """One-sided permutation p of Spearman's ρ(a, b) > 0 (``PERMUTATIONS`` random relabellings of b's ranks;
    the same ranks as :func:`core.lut_check.rank_correlation`: ties in input order)."""
    ra, rb = _ranks(a), _ranks(b)
    observed = sum(x * y for x, y in zip(ra, rb))  # ρ is a monotone function of Σ ra·rb for fixed ranks
    rng = random.Random(seed)
    hits = 0
    for _ in range(PERMUTATIONS):
        rng.shuffle(rb)
        hits += sum(x * y for x, y in zip(ra, rb)) >= observed - 1e-9
    return round((hits + 1) / (PERMUTATIONS + 1), 4)


def against(score: list[float], target: list[float]) -> dict:
    return {"spearman": round(rank_correlation(score, target), 3), "kendall": round(kendall_tau(score, target), 3),
            "p_spearman_positive": rank_p(score, target)}


# -- the genotypes ----------------------------------------------------------------------------
def weight_free_normal(g: Genotype) -> int:
    return sum(not OPS[e.op].parametric for c in g.cells if not c.reduction for pair in c.nodes for e in pair)


def kept_pairs(g: Genotype, n_nodes: int) -> list[list[tuple[int, str]]]:
    """Per cell: the (edge index, op) pairs the genotype keeps."""
    index = {edge: e for e, edge in enumerate(cell_edges(n_nodes))}
    return [[(index[(e.input, i)], e.op) for i, pair in enumerate(c.nodes) for e in pair] for c in g.cells]


def one_hot(g: Genotype, ops: list[str], n_nodes: int, n_edges: int) -> list[torch.Tensor]:
    out = []
    for pairs in kept_pairs(g, n_nodes):
        w = torch.zeros(n_edges, len(ops))
        for e, op in pairs:
            w[e, ops.index(op)] = 1.0
        out.append(w)
    return out


# -- scores on one supernet ------------------------------------------------------------------
@torch.no_grad()
def oneshot_miou(model: SuperNet, weights: list[torch.Tensor], bn_batches: list, eval_loader: DeviceLoader) -> float:
    """Mean IoU of one path of the supernet after re-estimating every BatchNorm's statistics on it."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the recalibration batches
        model.train()
        for x, _ in bn_batches:
            model.forward_mixed(x, weights)
        model.eval()
        meter = ConfusionMeter(eval_loader.num_classes, eval_loader.ignore_index)
        for x, y in eval_loader.ordered():
            meter.update(model.forward_mixed(x, weights).argmax(1), y)
        return float(meter.summary()["miou"])
    finally:
        for m, (mom, mean, var, nbt) in zip(bns, saved):
            m.momentum = mom
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(nbt)
        model.eval()


def score_genotypes(model: SuperNet, genotypes: dict[str, Genotype], pt_batches: list, bn_batches: list,
                    eval_loader: DeviceLoader, ignore_index: int) -> tuple[dict[str, dict[str, float]], dict]:
    model.eval()
    n_nodes, n_edges = model.cfg.nodes, len(cell_edges(model.cfg.nodes))
    keep = torch.tensor([not OPS[o].zero for o in model.ops])
    with torch.no_grad():
        logp = [F.log_softmax(a.detach().masked_fill(~keep, float("-inf")), dim=-1) for a in model.alpha_prime()]
    t = time.perf_counter()
    pref, pt_report = perturbation_preference(model, pt_batches, ignore_index)
    timing = {"pt_s": round(time.perf_counter() - t, 1)}
    out: dict[str, dict[str, float]] = {}
    t = time.perf_counter()
    for h, g in genotypes.items():
        pairs = kept_pairs(g, n_nodes)
        out[h] = {
            "alpha": sum(float(logp[k][e, model.ops.index(op)]) for k, ps in enumerate(pairs) for e, op in ps),
            "pt": sum(float(pref.op[k][e, model.ops.index(op)]) for k, ps in enumerate(pairs) for e, op in ps),
            "oneshot": oneshot_miou(model, one_hot(g, model.ops, n_nodes, n_edges), bn_batches, eval_loader)}
    timing["oneshot_s"] = round(time.perf_counter() - t, 1)
    return out, {"perturbation_base_loss": pt_report["base_loss"], **timing}


# -- a supernet whose warm-up trains sampled paths (--warmup-paths sampled) ---------------------------
class SampledWarmupSearcher(Searcher):
    """The shipped Searcher, except that each warm-up weight step trains one uniformly random genotype's path
    (one-hot mixing weights, as a derived network computes) instead of the softmax mixture: the single-path
    training of one-shot NAS (SPOS), so that a path of the supernet is something the supernet was trained as.
    The search phase (α, GGM, latency loss) is unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_gen = torch.Generator().manual_seed(self.cfg.seed + 7)
        self.sampled_steps = 0

    def weight_logits(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.history) >= self.cfg.warmup_epochs:  # no resume here: history holds every finished epoch
            return super().weight_logits(x)
        m = self.model
        g = random_genotype(m.cfg, m.ops, self.path_gen)
        self.sampled_steps += 1
        return m.forward_mixed(x, [w.to(self.device) for w in one_hot(g, m.ops, m.cfg.nodes, len(cell_edges(m.cfg.nodes)))])


def train_sampled_supernet(net, prof, seed: int, latm: LatencyModel, lat: LatencyConfig, data, device: torch.device,
                           state_dir: Path) -> tuple[SuperNet, dict]:
    cfg = prof.search.model_copy(update={"seed": seed})
    torch.manual_seed(seed)
    model = SuperNet(net, GGMConfig(), cfg.ops, cfg.shared_cells, cfg.gumbel, cfg.gumbel_tau, cfg.batched_cells)
    state_dir.mkdir(parents=True, exist_ok=True)
    searcher = SampledWarmupSearcher(model, latm, LatencyPenalty(lat), cfg, data, device, state_dir,
                                     lambda _: None, lambda: False)
    result = searcher.run()
    return searcher.model, {"supernet_miou": result.history[-1]["supernet_miou"], "sampled_steps": searcher.sampled_steps,
                            "steps": result.steps}


# -- report -----------------------------------------------------------------------------------
def analyse(arms: dict[str, dict], per_seed: dict[str, dict[str, dict[str, float]]], icc: float | None,
            k: int) -> dict:
    hashes = sorted(arms)
    target = [arms[h]["mean"] for h in hashes]
    free = [float(arms[h]["weight_free_normal"]) for h in hashes]
    out: dict = {"genotypes": len(hashes), "retrain_seeds_per_genotype": k,
                 "weight_free_normal_vs_retrained": against(free, target), "scores": {}}
    if icc is not None:
        out["icc_single_retrain"] = icc
        out["ceiling_vs_k_seed_mean"] = round(math.sqrt(k * icc / (1 + (k - 1) * icc)), 3)
    kinds = {h: arms[h].get("kind") for h in hashes}
    for seed, scores in per_seed.items():
        for s in SCORES:
            vals = [scores[h][s] for h in hashes]
            out["scores"][f"{s}_s{seed}"] = {"vs_retrained": against(vals, target),
                                             "vs_weight_free_normal": against(vals, free)}
            gas = [scores[h][s] for h in hashes if kinds[h] == "gas"]
            rnd = [scores[h][s] for h in hashes if kinds[h] == "random"]
            if gas and rnd:  # does this supernet prefer the genotypes other searches derived?
                out["scores"][f"{s}_s{seed}"]["gas_minus_random"] = round(statistics.mean(gas) - statistics.mean(rnd), 5)
    seeds = list(per_seed)
    if len(seeds) >= 2:
        a, b = per_seed[seeds[0]], per_seed[seeds[1]]
        out["supernet_agreement"] = {s: round(rank_correlation([a[h][s] for h in hashes], [b[h][s] for h in hashes]), 3)
                                     for s in SCORES}
        mean_scores = {s: [statistics.mean(per_seed[x][h][s] for x in seeds) for h in hashes] for s in SCORES}
        out["scores"].update({f"{s}_mean": {"vs_retrained": against(v, target), "vs_weight_free_normal": against(v, free)}
                              for s, v in mean_scores.items()})
    return out


def table_md(res: dict) -> str:
    an = res["analysis"]
    lines = ["**Smoke run: toy sizes and random genotypes; the numbers mean nothing.**", ""] if res["smoke"] else []
    lines += [f"Device: {res['device']}, torch {res['torch']}, {res['threads']} threads; {res['profile']} profile "
             f"({res['resolution'][0]}x{res['resolution'][1]}), GAS, {res['search']['epochs']} search epochs "
             f"({res['search']['warmup_epochs']} warm-up on {res.get('warmup_paths', 'mixed')} paths), "
             f"search seeds {res['seeds']}; "
             f"one-shot on {res['eval_split']} ({res['eval_images']} images, BN re-estimated on {res['bn_images']} "
             f"training images); target: mean test mIoU of {an['retrain_seeds_per_genotype']} retrains of "
             f"{an['genotypes']} genotypes ({res['retrain_results']}). Wall time {res['wall_s']:.0f} s.", "",
             "| score | ρ vs retrained | τ vs retrained | p (ρ > 0) | ρ vs weight-free ops in normal cells |",
             "|---|---|---|---|---|"]
    wf = an["weight_free_normal_vs_retrained"]
    lines.append(f"| weight-free ops in normal cells (a count, no supernet) | {wf['spearman']:+.2f} | {wf['kendall']:+.2f} "
                 f"| {wf['p_spearman_positive']} | — |")
    for name, v in an["scores"].items():
        r, f = v["vs_retrained"], v["vs_weight_free_normal"]
        lines.append(f"| {name} | {r['spearman']:+.2f} | {r['kendall']:+.2f} | {r['p_spearman_positive']} | {f['spearman']:+.2f} |")
    lines.append("")
    diffs = {k: v["gas_minus_random"] for k, v in an["scores"].items() if "gas_minus_random" in v}
    if diffs:
        lines.append("- mean score of the GAS genotypes minus the random ones (do the supernets prefer what searches "
                     "derived?): " + ", ".join(f"{k} {v:+.4g}" for k, v in diffs.items()))
    if "ceiling_vs_k_seed_mean" in an:
        lines.append(f"- ceiling of any predictor's correlation with a {an['retrain_seeds_per_genotype']}-seed mean "
                     f"(ICC of one retrain {an['icc_single_retrain']:.2f}): {an['ceiling_vs_k_seed_mean']:.2f}")
    if "supernet_agreement" in an:
        lines.append("- agreement of the two supernets' scores (Spearman ρ): "
                     + ", ".join(f"{k} {v:+.2f}" for k, v in an["supernet_agreement"].items()))
    lines += ["", "| genotype | kind | retrained mean | weight-free (normal) | "
              + " | ".join(f"{s} s{seed}" for seed in res["seeds"] for s in SCORES) + " |",
              "|---|---|---|---|" + "---|" * (len(SCORES) * len(res["seeds"]))]
    for h, arm in sorted(res["arms"].items(), key=lambda kv: -kv[1]["mean"]):
        cells = [f"{res['scores'][str(seed)][h][s]:.4g}" for seed in res["seeds"] for s in SCORES]
        lines.append(f"| {h} | {arm['kind']} | {100 * arm['mean']:.1f} | {arm['weight_free_normal']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain-results", type=Path, default=REPO / "bench" / "results" / "retrain_seeds_cpu.json")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="search seeds (one supernet each)")
    ap.add_argument("--bn-images", type=int, default=64, help="training images the BN statistics are re-estimated on")
    ap.add_argument("--eval-split", default="val", help="split the one-shot mIoU is measured on")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "camvid")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="search epochs (profile's default), e.g. a longer supernet")
    ap.add_argument("--warmup-epochs", type=int, default=None, help="warm-up epochs (profile's default)")
    ap.add_argument("--warmup-paths", choices=("mixed", "sampled"), default="mixed",
                    help="mixed: the shipped search (run_search); sampled: its warm-up trains one random path per step")
    ap.add_argument("--tag", default="", help="suffix of the output files' names (e.g. 'epochs60')")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, the first 3 genotypes: checks the script only")
    a = ap.parse_args()
    prof = smoke(PROFILES[a.profile]) if a.smoke else PROFILES[a.profile]
    upd = {k: v for k, v in (("epochs", a.epochs), ("warmup_epochs", a.warmup_epochs)) if v is not None}
    if upd:
        prof.search = prof.search.model_copy(update=upd)
    name = f"supernet_ranking_{a.profile}" + (f"_{a.tag}" if a.tag else "") + ("_smoke" if a.smoke else "")
    work = a.work or Path(os.environ.get("TMPDIR", "/tmp")) / name
    if prof.threads:
        torch.set_num_threads(prof.threads)
    set_cudnn_benchmark()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    h, w = prof.height, prof.width
    ref = DatasetRef(root=str(a.data), layout="camvid", limit=8 if a.smoke else None)
    net = prof.network.model_copy(update={"num_classes": ref.num_classes})
    ops = SuperNet(net, GGMConfig(enabled=False)).ops
    t_all = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)

    recorded = json.loads(a.retrain_results.read_text())
    arms: dict[str, dict] = {}
    for hsh, arm in recorded["arms"].items():
        g = parse_genotype(arm["genotype"])
        if a.smoke:  # the recorded genotypes belong to the profile's network; the smoke network gets random ones
            g = random_genotype(net, ops, torch.Generator().manual_seed(len(arms)))
        scores = list(arm["scores"].values())
        arms[g.arch_hash()] = {"kind": arm["kind"], "names": arm.get("names", []), "mean": statistics.mean(scores),
                               "scores": arm["scores"], "weight_free_normal": weight_free_normal(g),
                               "genotype": g.model_dump(mode="json")}
        if a.smoke and len(arms) == 3:
            break
    genotypes = {hsh: parse_genotype(v["genotype"]) for hsh, v in arms.items()}
    k = min(len(v["scores"]) for v in arms.values())

    lut_dir = work / "luts"
    lat0, table, _, latm, space = table_and_space(net, ops, prof, device, lut_dir, a.smoke)
    budget = round(statistics.median(space), 3)
    lat = lat0.model_copy(update={"budget_ms": budget, "derivation": prof.derivation, "pt_images": prof.pt_images})

    train = load_split(ref, "train", h, w, work / "data_cache")
    evals = load_split(ref, a.eval_split, h, w, work / "data_cache")
    eval_loader = DeviceLoader(evals, 16, device, shuffle=False, drop_last=False)
    res: dict = {"benchmark": "supernet_ranking", "profile": a.profile, "smoke": a.smoke, "device": device_name(device),
                 "torch": torch.__version__, "threads": torch.get_num_threads(), "resolution": [h, w],
                 "precision": "fp32", "seeds": a.seeds, "warmup_paths": a.warmup_paths, "budget_ms": budget, "lut_id": table.id,
                 "retrain_results": str(a.retrain_results.relative_to(REPO) if a.retrain_results.is_relative_to(REPO)
                                        else a.retrain_results.name),
                 "eval_split": a.eval_split, "eval_images": len(evals), "bn_images": a.bn_images,
                 "search": prof.search.model_dump(mode="json"), "arms": arms, "searches": {}, "scores": {}}
    for seed in a.seeds:
        t = time.perf_counter()
        sdir = work / f"gas_s{seed}" / "search"
        spec = SearchJobSpec(dataset=ref, network=net, ggm=GGMConfig(), latency=lat,
                             search=prof.search.model_copy(update={"seed": seed}), fps_iters=prof.e2e_repeats)
        if a.warmup_paths == "mixed":
            summary = run_search(spec, sdir, lut_dir=lut_dir, data_cache_dir=work / "data_cache")
            cfg = prof.search
            model = SuperNet(net, GGMConfig(), cfg.ops, cfg.shared_cells, cfg.gumbel, cfg.gumbel_tau, cfg.batched_cells)
            model.load_state_dict(load_state(sdir / "state" / STATE_FILE)["model"])
            model.to(device)
            info = {"genotype_hash": summary.get("genotype_hash"), "supernet_miou": summary.get("supernet_miou")}
        else:
            model, info = train_sampled_supernet(net, prof, seed, latm, lat, train, device, sdir / "state")
        search_s = round(time.perf_counter() - t, 1)
        # the search's own D_α half scores the perturbations, as its derivation did; BN is re-estimated on its D_w half
        half_w, half_a = split_halves(len(train), seed)
        pt_loader = DeviceLoader(train, 8, device, indices=half_a, shuffle=False)
        bn_loader = DeviceLoader(train, 8, device, indices=half_w, shuffle=False)
        pt_batches = scoring_batches(pt_loader, prof.pt_images, 8)
        bn_batches = scoring_batches(bn_loader, a.bn_images, 8)
        scores, timing = score_genotypes(model, genotypes, pt_batches, bn_batches, eval_loader, train.ignore_index)
        res["scores"][str(seed)] = scores
        res["searches"][str(seed)] = {"search_wall_s": search_s, **info, **timing}
        (a.out / f"{name}.json").write_text(json.dumps(res, indent=1))
    res["analysis"] = analyse(arms, res["scores"], recorded.get("analysis", {}).get("icc_single_retrain"), k)
    res["wall_s"] = round(time.perf_counter() - t_all, 1)
    (a.out / f"{name}.json").write_text(json.dumps(res, indent=1))
    (a.out / f"{name}.md").write_text(table_md(res))
    print(table_md(res))


if __name__ == "__main__":
    main()
