"""``python -m core.cost_fit [--configs N]``: refit ``core/cost_coef.json``, the activation
coefficients of :mod:`core.cost`, to :func:`core.estimate.estimate_search` on random supernet
configurations (the meta device: no memory, no compute; about 2 s per configuration).

Least squares on relative errors, one coefficient set for batched and one for per-edge cells;
prints the worst relative error of the fit and of a held-out set."""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from . import cost
from .estimate import estimate_search
from .specs import GGMConfig, NetworkConfig, SearchConfig

NON_ZERO_OPS = [o for o in cost.ALL_OPS if o != "none"]


def random_config(rng: random.Random, batched: bool) -> tuple[dict, tuple[int, int]]:
    cells = rng.randint(3, 12)
    reds = sorted(rng.sample(range(1, cells), rng.randint(0, min(3, cells - 1))))
    net = NetworkConfig(stem_channels=rng.choice([8, 16, 32, 48]), init_channels=rng.choice([4, 8, 12, 16, 24, 32]),
                        num_cells=cells, reduction_cells=reds, nodes=rng.randint(1, 5),
                        head_channels=rng.choice([16, 32, 64, 96]), low_level_skip=rng.random() < 0.7,
                        low_level_channels=rng.choice([8, 16, 24, 48]), num_classes=rng.choice([2, 11, 19, 40]))
    ops = None if rng.random() < 0.35 else sorted(rng.sample(NON_ZERO_OPS, rng.randint(1, len(NON_ZERO_OPS))))
    search = SearchConfig(ops=ops, batched_cells=batched, shared_cells=rng.random() < 0.2)
    crop = (rng.randint(24, 400), rng.randint(24, 400))
    return {"network": net.model_dump(), "ggm": GGMConfig().model_dump(), "search": search.model_dump()}, crop


def sample(rng: random.Random, n: int, batched: bool) -> list[tuple[dict, tuple[int, int], int, int, int]]:
    out = []
    for _ in range(n):
        spec, crop = random_config(rng, batched)
        est = estimate_search(NetworkConfig(**spec["network"]), GGMConfig(**spec["ggm"]),
                              SearchConfig(**spec["search"]), crop)
        out.append((spec, crop, est.saved_bytes_per_image, est.weight_params, est.arch_params))
    return out


def nnls(A: np.ndarray, b: np.ndarray, iters: int = 500) -> np.ndarray:
    """Non-negative least squares (Lawson-Hanson): every feature map costs bytes, never saves them."""
    n = A.shape[1]
    x, passive = np.zeros(n), np.zeros(n, dtype=bool)
    w = A.T @ (b - A @ x)
    for _ in range(iters):
        if passive.all() or (w[~passive] <= 1e-10).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
            x[~passive] = 0.0
        w = A.T @ (b - A @ x)
    return x


def fit(rows) -> dict[str, float]:
    X = np.array([[cost.features(r[0]["network"], cost.op_names(r[0]["search"]["ops"]), r[1])[2][k]
                   for k in cost.FEATURES] for r in rows], dtype=float)
    y = np.array([r[2] for r in rows], dtype=float)
    coef = nnls(X / y[:, None], np.ones(len(y)))  # least squares on relative errors
    return {k: round(float(v), 6) for k, v in zip(cost.FEATURES, coef)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="", help="cache of measured rows (JSON): reused when present, written otherwise")
    ap.add_argument("--extra-rows", default="", help="comma-separated caches of other runs (other seeds) added to the fit set")
    args = ap.parse_args()
    extra = [json.loads(Path(p).read_text()) for p in args.extra_rows.split(",") if p]
    cache = json.loads(Path(args.rows).read_text()) if args.rows and Path(args.rows).exists() else {}
    rng = random.Random(args.seed)
    out = {"fitted_to": "core.estimate.estimate_search (meta device)"}
    for name, batched in (("batched", True), ("per_edge", False)):
        if name in cache:
            rows, held = ([(r[0], tuple(r[1]), *r[2:]) for r in cache[name][k]] for k in ("fit", "held"))
        else:
            rows, held = sample(rng, args.configs, batched), sample(rng, max(8, args.configs // 4), batched)
            cache[name] = {"fit": rows, "held": held}
            if args.rows:
                Path(args.rows).write_text(json.dumps(cache))
        for more in extra:
            rows = rows + [(r[0], tuple(r[1]), *r[2:]) for k in ("fit", "held") for r in more.get(name, {}).get(k, [])]
        coef = fit(rows)
        out[name] = coef
        out[f"{name}_configs"] = len(rows)
        for label, rs in (("fit", rows), ("held-out", held)):
            errs = []
            for spec, crop, saved, wp, ap_ in rs:
                c = cost.features(spec["network"], cost.op_names(spec["search"]["ops"]), crop)
                pred = sum(coef[k] * v for k, v in c[2].items())
                errs.append(abs(pred - saved) / saved)
                assert c[0] == wp, (c[0], wp, spec)
                assert cost.arch_params(spec["network"], spec["ggm"], cost.op_names(spec["search"]["ops"]),
                                        spec["search"]["shared_cells"]) == ap_, spec
            print(f"{name} {label}: {len(errs)} configs, worst relative error {max(errs):.3f}, "
                  f"median {sorted(errs)[len(errs) // 2]:.3f}")
    cost.COEF_FILE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {cost.COEF_FILE.name}")


if __name__ == "__main__":
    main()
