"""``gas``: command line of the GAS service (wraps :class:`client.sdk.GasClient`).

Examples::

    gas datasets register camvid camvid/            # a directory under the server's datasets root
    gas search DATASET_ID --latency-ms 20 --height 360 --width 480 --epochs 20 --watch
    gas retrain DATASET_ID --search-job JOB_ID --epochs 100 --watch
    gas feasibility --height 360 --width 480 --dataset DATASET_ID     # what budgets are feasible, before a search
    gas luts list ; gas luts show TABLE_ID ; gas luts delete TABLE_ID   # latency tables (delete: operators)
    gas jobs list --status running
    gas watch JOB_ID ; gas cancel JOB_ID ; gas events JOB_ID
    gas download JOB_ID checkpoint.safetensors -o ./out/
    gas predict JOB_ID street.png more.png -o masks/ --overlay   # onnxruntime on this machine, no torch
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .sdk import GasClient, GasError


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _settings(args, names: list[str]) -> dict:
    out = {}
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            out["lambda" if n == "lam" else n] = v
    if getattr(args, "advanced", None):
        out["advanced"] = json.loads(args.advanced)
    return out


SEARCH_FIELDS = ["epochs", "warmup_epochs", "cells", "nodes", "init_channels", "gamma", "lam", "seed", "batch_size",
                 "crop_height", "crop_width", "dataset_limit", "ggm"]
RUNTIMES = ["torch-eager", "onnxruntime"]
FEASIBILITY_FIELDS = ["cells", "nodes", "init_channels"]
RETRAIN_FIELDS = ["epochs", "time_budget_s", "batch_size", "lr", "seed", "crop_height", "crop_width", "height", "width",
                  "dataset_limit"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gas", description="GAS as a service: command line client",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--url", default=None, help="service URL (default $GAS_URL or http://127.0.0.1:8000)")
    ap.add_argument("--api-key", default=None, help="API key (default $GAS_API_KEY)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    ds = sub.add_parser("datasets", help="register or list datasets").add_subparsers(dest="dcmd", required=True)
    for cmd, where, help_ in (("register", "path", "register a server-side directory under the datasets root"),
                              ("upload", "archive", "upload a zip/tar/tar.gz archive as a dataset")):
        p = ds.add_parser(cmd, help=help_)
        p.add_argument("name")
        p.add_argument(where)
        p.add_argument("--layout", default=None, choices=["camvid", "folder", "cityscapes"],
                       help="directory layout (default: detected by the server)")
        p.add_argument("--num-classes", type=int)
        p.add_argument("--class-names", help="comma-separated")
        p.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for validation")
    ds.add_parser("list")
    ds.add_parser("show", help="a dataset with its validation report").add_argument("dataset_id")
    ds.add_parser("delete", help="delete a dataset (refused while a job uses it)").add_argument("dataset_id")

    se = sub.add_parser("search", help="submit a search job")
    se.add_argument("dataset_id")
    b = se.add_mutually_exclusive_group(required=True)
    b.add_argument("--latency-ms", type=float)
    b.add_argument("--fps", type=float)
    se.add_argument("--height", type=int, default=360)
    se.add_argument("--width", type=int, default=480)
    se.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    se.add_argument("--runtime", default="torch-eager", choices=RUNTIMES, help="deployment runtime of the budget")
    for n in SEARCH_FIELDS:
        if n == "ggm":
            se.add_argument("--ggm", dest="ggm", action=argparse.BooleanOptionalAction, default=None)
        elif n == "lam":
            se.add_argument("--lambda", dest="lam", type=float)
        else:
            se.add_argument("--" + n.replace("_", "-"), dest=n, type=float if n == "gamma" else int)
    se.add_argument("--advanced", help="JSON object of allow-listed core knobs (network, ggm, latency, search, train_split, ...; see docs/SERVICE.md)")
    se.add_argument("--idempotency-key")
    se.add_argument("--watch", action="store_true", help="follow progress until the job ends")

    rt = sub.add_parser("retrain", help="submit a retrain job")
    rt.add_argument("dataset_id")
    g = rt.add_mutually_exclusive_group(required=True)
    g.add_argument("--search-job", help="id of a succeeded search job")
    g.add_argument("--genotype", help="path of a genotype.json")
    for n in RETRAIN_FIELDS:
        rt.add_argument("--" + n.replace("_", "-"), dest=n, type=float if n in ("lr", "time_budget_s") else int)
    rt.add_argument("--advanced", help="JSON object of allow-listed core knobs (train, fps_iters; see docs/SERVICE.md)")
    rt.add_argument("--idempotency-key")
    rt.add_argument("--watch", action="store_true")

    bm = sub.add_parser("benchmark", help="submit a benchmark job")
    g = bm.add_mutually_exclusive_group(required=True)
    g.add_argument("--job", help="id of a succeeded search/retrain job")
    g.add_argument("--genotype", help="path of a genotype.json")
    bm.add_argument("--height", type=int, default=360)
    bm.add_argument("--width", type=int, default=480)
    bm.add_argument("--iters", type=int, default=100)
    bm.add_argument("--budget-ms", type=float)
    bm.add_argument("--watch", action="store_true")

    fe = sub.add_parser("feasibility", help="what budgets are feasible: latency of the cheapest, a typical and the "
                                            "dearest network of a search space at a resolution (waits for the answer)")
    fe.add_argument("--height", type=int, default=360)
    fe.add_argument("--width", type=int, default=480)
    fe.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    fe.add_argument("--runtime", default="torch-eager", choices=RUNTIMES)
    fg = fe.add_mutually_exclusive_group()
    fg.add_argument("--dataset", dest="dataset_id", help="take the number of classes from this dataset")
    fg.add_argument("--num-classes", type=int)
    for n in FEASIBILITY_FIELDS:
        fe.add_argument("--" + n.replace("_", "-"), dest=n, type=int)
    fe.add_argument("--advanced", help="JSON object of allow-listed core knobs (network, latency, ops, measure, repeats, "
                                       "typical_samples, seed; see docs/SERVICE.md)")
    fe.add_argument("--no-wait", action="store_true", help="print the job at once instead of waiting for the answer")

    lt = sub.add_parser("luts", help="latency tables of the workers' devices").add_subparsers(dest="lcmd", required=True)
    ll = lt.add_parser("list")
    ll.add_argument("--height", type=int)
    ll.add_argument("--width", type=int)
    lt.add_parser("show", help="one table with every entry and its validations").add_argument("table_id")
    lt.add_parser("delete", help="delete a table (operator tenants only); the next job re-measures it").add_argument("table_id")

    jb = sub.add_parser("jobs", help="list jobs").add_subparsers(dest="jcmd", required=True)
    ls = jb.add_parser("list")
    ls.add_argument("--kind")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int)
    ls.add_argument("--offset", type=int, default=0)
    for name, helptext in (("status", "show one job"), ("watch", "live progress bar until the job ends"),
                           ("cancel", "cancel a job"), ("events", "print the event log"),
                           ("artifacts", "list artifacts")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id")
    dl = sub.add_parser("download", help="download an artifact (resumes, verifies sha256)")
    dl.add_argument("job_id")
    dl.add_argument("name", nargs="?", help="artifact name (default: all)")
    dl.add_argument("-o", "--output", default=".", help="directory or file")
    pr = sub.add_parser("predict", help="segment images with a retrain job's model.onnx (downloaded once, cached)")
    pr.add_argument("job_id")
    pr.add_argument("images", nargs="+", type=Path)
    pr.add_argument("-o", "--output", default=".", help="directory for <stem>.png masks (and overlays)")
    pr.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
    pr.add_argument("--mask-size", choices=["input", "model"], default="input",
                    help="masks at each image's own size (nearest) or at the model's resolution")
    return ap


def _finish(c: GasClient, job: dict, watch: bool) -> int:
    if not watch:
        _print(job)
        return 0
    print(f"job {job['id']} accepted", file=sys.stderr)
    final = c.watch(job["id"], file=sys.stderr)
    _print(final)
    return 0 if final["status"] == "succeeded" else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with GasClient(args.url, api_key=args.api_key) as c:
            if args.cmd == "datasets":
                if args.dcmd == "list":
                    _print(c.datasets())
                elif args.dcmd == "show":
                    _print(c.dataset(args.dataset_id))
                elif args.dcmd == "delete":
                    c.delete_dataset(args.dataset_id)
                else:
                    names = args.class_names.split(",") if args.class_names else None
                    if args.dcmd == "upload":
                        ds = c.upload_dataset(args.archive, args.name, args.layout, args.num_classes, names,
                                              wait=not args.no_wait)
                    else:
                        ds = c.register_dataset(args.name, args.path, args.layout, args.num_classes, names,
                                                wait=not args.no_wait)
                    _print(ds)
                    return 0 if ds["status"] != "invalid" else 3
                return 0
            if args.cmd == "search":
                job = c.submit_search(args.dataset_id, latency_ms=args.latency_ms, fps=args.fps, height=args.height,
                                      width=args.width, precision=args.precision, runtime=args.runtime,
                                      settings=_settings(args, SEARCH_FIELDS), idempotency_key=args.idempotency_key)
                return _finish(c, job, args.watch)
            if args.cmd == "retrain":
                genotype = json.loads(Path(args.genotype).read_text()) if args.genotype else None
                job = c.submit_retrain(args.dataset_id, search_job_id=args.search_job, genotype=genotype,
                                       settings=_settings(args, RETRAIN_FIELDS), idempotency_key=args.idempotency_key)
                return _finish(c, job, args.watch)
            if args.cmd == "benchmark":
                genotype = json.loads(Path(args.genotype).read_text()) if args.genotype else None
                job = c.submit_benchmark(job_id=args.job, genotype=genotype, height=args.height, width=args.width,
                                         iters=args.iters, budget_ms=args.budget_ms)
                return _finish(c, job, args.watch)
            if args.cmd == "feasibility":
                kw = dict(height=args.height, width=args.width, precision=args.precision, runtime=args.runtime,
                          dataset_id=args.dataset_id,
                          num_classes=args.num_classes, settings=_settings(args, FEASIBILITY_FIELDS))
                if args.no_wait:
                    _print(c.submit_feasibility(**kw))
                    return 0
                try:
                    _print(c.feasibility(**kw))
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                return 0
            if args.cmd == "luts":
                if args.lcmd == "list":
                    _print(c.latency_tables(height=args.height, width=args.width))
                elif args.lcmd == "show":
                    _print(c.latency_table(args.table_id))
                else:
                    c.delete_latency_table(args.table_id)
                return 0
            if args.cmd == "jobs":
                _print(c.jobs(args.kind, args.status, args.limit, args.offset))
                return 0
            if args.cmd == "status":
                _print(c.job(args.job_id))
                return 0
            if args.cmd == "watch":
                final = c.watch(args.job_id, file=sys.stderr)
                _print(final)
                return 0 if final["status"] == "succeeded" else 1
            if args.cmd == "cancel":
                _print(c.cancel(args.job_id))
                return 0
            if args.cmd == "events":
                for ev in c.iter_events(args.job_id):
                    print(f"{ev['ts']}  #{ev['attempt']}  {ev['type']:<18} {ev['message']}")
                return 0
            if args.cmd == "artifacts":
                _print(c.artifacts(args.job_id))
                return 0
            if args.cmd == "predict":
                from .predict import ModelError

                missing = [str(p) for p in args.images if not p.is_file()]
                if missing:
                    print(f"error: no such image: {', '.join(missing)}", file=sys.stderr)
                    return 2
                try:
                    _print(c.predict(args.job_id, args.images, args.output, overlay=args.overlay, alpha=args.alpha,
                                     mask_size=args.mask_size))
                except ModelError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                return 0
            if args.cmd == "download":
                names = [args.name] if args.name else [a["name"] for a in c.artifacts(args.job_id)]
                out = Path(args.output)
                if len(names) > 1:
                    out.mkdir(parents=True, exist_ok=True)
                for n in names:
                    print(c.download(args.job_id, n, out))
                return 0
    except GasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        errors = exc.problem.get("errors") if isinstance(exc.problem, dict) else None
        for e in errors or []:
            print(f"  {e.get('field')}: {e.get('msg')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
