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
import os
import sys
from pathlib import Path

import httpx

from . import render
from .sdk import GasClient, GasError


EXIT_CODES = """exit codes:
  0  success (a watched job succeeded; a dataset is ready)
  1  a watched job ended failed or cancelled
  2  the service refused the request (4xx/5xx: the message names the field), or bad arguments
  3  a dataset failed validation (status invalid; `gas datasets show ID` lists why)
  4  the service could not be reached
  130  interrupted (Ctrl-C)
output: human-readable tables by default; --json prints the API's JSON documents (for scripts)."""


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _out(args, obj, human) -> None:
    """The API document as JSON (``--json``), else its human rendering ``human(obj)``."""
    if getattr(args, "json", False):
        _print(obj)
    else:
        print(human(obj))


def _settings(args, names: list[str]) -> dict:
    out = {}
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            out["lambda" if n == "lam" else n] = v
    if getattr(args, "advanced", None):
        out["advanced"] = json.loads(args.advanced)
    return out


SEARCH_FIELDS = ["epochs", "warmup_epochs", "cells", "reduction_cells", "nodes", "init_channels", "gamma", "lam", "seed",
                 "batch_size", "crop_height", "crop_width", "dataset_limit", "ggm"]
RUNTIMES = ["torch-eager", "onnxruntime", "torch-optimised"]
FEASIBILITY_FIELDS = ["cells", "nodes", "init_channels"]
RETRAIN_FIELDS = ["epochs", "time_budget_s", "batch_size", "lr", "seed", "crop_height", "crop_width", "height", "width",
                  "dataset_limit"]
FLAG_HELP = {
    "epochs": "epochs",
    "warmup_epochs": "warm-up epochs, weights only (default: the service's, capped to leave at least one "
                     "architecture epoch when --epochs is small)",
    "cells": "number of cells K", "reduction_cells": "comma-separated 0-based indices of the reduction cells",
    "nodes": "intermediate nodes per cell", "init_channels": "channels of the first cell",
    "gamma": "weight of the GCN term", "lam": "weight of the latency loss", "seed": "random seed",
    "batch_size": "batch size", "crop_height": "training crop height (0 = full image)",
    "crop_width": "training crop width (0 = full image)",
    "dataset_limit": "use at most this many images per split (demos, tests)",
    "time_budget_s": "wall-clock training budget in seconds (0 = epochs only)", "lr": "peak learning rate",
    "height": "train/eval height (default: the search budget's)", "width": "train/eval width (default: the search budget's)",
    "ggm": "GCN-Guided Module on/off",
}
JOB_KINDS = ["search", "retrain", "benchmark", "validate", "feasibility"]
JOB_STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unless its help names it) and keeps the epilog's layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if (not action.option_strings or "default" in h or action.default is argparse.SUPPRESS
                or isinstance(action, argparse._HelpAction) or (action.default is False and action.nargs == 0)):
            return h
        if action.default is None:
            return h + " (default: the service's, see docs/SETTINGS.md)"
        return h + " (default: %(default)s)"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON documents instead of tables (for scripts)")
    ap = argparse.ArgumentParser(prog="gas", description="GAS as a service: command line client",
                                 formatter_class=_Formatter, epilog=__doc__ + "\n" + EXIT_CODES, parents=[common])
    ap.add_argument("--url", default=None, help="service URL (default $GAS_URL or http://127.0.0.1:8000)")
    ap.add_argument("--api-key", default=None, help="API key (default $GAS_API_KEY)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def parser(parent, name: str, help_: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help_, description=help_, parents=[common], formatter_class=_Formatter,
                                 epilog=EXIT_CODES)

    dsp = parser(sub, "datasets", "register, upload, list, show or delete datasets")
    ds = dsp.add_subparsers(dest="dcmd", required=True, metavar="ACTION")
    for cmd, where, help_ in (("register", "path", "register a server-side directory under the datasets root"),
                              ("upload", "archive", "upload a zip/tar/tar.gz archive as a dataset")):
        p = parser(ds, cmd, help_)
        p.add_argument("name", help="display name of the dataset")
        p.add_argument(where, help="directory relative to the server's datasets root" if where == "path"
                       else "archive file on this machine (zip, tar or tar.gz)")
        p.add_argument("--layout", default=None, choices=["camvid", "folder", "cityscapes"],
                       help="directory layout (default: detected by the server)")
        p.add_argument("--num-classes", type=int, default=None,
                       help="number of classes (default: the layout's, or the number of --class-names)")
        p.add_argument("--class-names", default=None, help="comma-separated class names, index = class id (default: the layout's, else class_0, class_1, ...)")
        p.add_argument("--ignore-index", type=int, default=None,
                       help="class id ignored by loss and metrics after the label map (default: the layout's, else num_classes)")
        p.add_argument("--label-map", default=None,
                       help="how raw mask values become class ids: RAW=CLASS,... (e.g. 0=0,255=1 for 0/255 masks; "
                            "#rrggbb=CLASS for colour masks; RAW=ignore; *=ignore for every other value), "
                            "a JSON object, or @file.json (default: the masks hold class ids)")
        p.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for validation")
    p = parser(ds, "list", "list datasets")
    p.add_argument("--limit", type=int, default=None, help="page size (default: the server's)")
    p.add_argument("--offset", type=int, default=0, help="skip this many datasets")
    parser(ds, "show", "a dataset with its validation report and warnings").add_argument("dataset_id")
    parser(ds, "delete", "delete a dataset (refused while a job uses it)").add_argument("dataset_id")

    se = parser(sub, "search", "submit a search job")
    se.add_argument("dataset_id", help="a ready dataset")
    b = se.add_mutually_exclusive_group(required=True)
    b.add_argument("--latency-ms", type=float, default=None, help="latency budget in ms at batch 1")
    b.add_argument("--fps", type=float, default=None, help="frames-per-second budget (instead of --latency-ms)")
    se.add_argument("--height", type=int, default=360, help="deployment input height")
    se.add_argument("--width", type=int, default=480, help="deployment input width")
    se.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="deployment precision")
    se.add_argument("--runtime", default="torch-eager", choices=RUNTIMES, help="deployment runtime of the budget")
    for n in SEARCH_FIELDS:
        if n == "ggm":
            se.add_argument("--ggm", dest="ggm", action=argparse.BooleanOptionalAction, default=None, help=FLAG_HELP[n])
        elif n == "lam":
            se.add_argument("--lambda", dest="lam", type=float, default=None, help=FLAG_HELP[n])
        elif n == "reduction_cells":
            se.add_argument("--reduction-cells", dest=n, type=_ints, default=None, help=FLAG_HELP[n])
        else:
            se.add_argument("--" + n.replace("_", "-"), dest=n, type=float if n == "gamma" else int, default=None,
                            help=FLAG_HELP[n])
    se.add_argument("--advanced", default=None, help="JSON object of allow-listed core knobs (network, ggm, latency, search, train_split, ...; see docs/SERVICE.md)")
    se.add_argument("--idempotency-key", default=None, help="retrying with the same key returns the same job")
    se.add_argument("--watch", action="store_true", help="follow progress until the job ends")

    rt = parser(sub, "retrain", "submit a retrain job")
    rt.add_argument("dataset_id", help="a ready dataset")
    g = rt.add_mutually_exclusive_group(required=True)
    g.add_argument("--search-job", default=None, help="id of a succeeded search job")
    g.add_argument("--genotype", default=None, help="path of a genotype.json")
    for n in RETRAIN_FIELDS:
        rt.add_argument("--" + n.replace("_", "-"), dest=n, type=float if n in ("lr", "time_budget_s") else int,
                        default=None, help=FLAG_HELP[n])
    rt.add_argument("--advanced", default=None, help="JSON object of allow-listed core knobs (train, fps_iters; see docs/SERVICE.md)")
    rt.add_argument("--idempotency-key", default=None, help="retrying with the same key returns the same job")
    rt.add_argument("--watch", action="store_true", help="follow progress until the job ends")

    bm = parser(sub, "benchmark", "submit a benchmark job")
    g = bm.add_mutually_exclusive_group(required=True)
    g.add_argument("--job", default=None, help="id of a succeeded search/retrain job")
    g.add_argument("--genotype", default=None, help="path of a genotype.json")
    bm.add_argument("--height", type=int, default=360, help="input height")
    bm.add_argument("--width", type=int, default=480, help="input width")
    bm.add_argument("--iters", type=int, default=100, help="timed iterations")
    bm.add_argument("--budget-ms", type=float, default=None, help="budget to compare against")
    bm.add_argument("--watch", action="store_true", help="follow progress until the job ends")

    fe = parser(sub, "feasibility", "what budgets are feasible: latency of the cheapest, a typical and the dearest "
                                    "network of a search space at a resolution (waits for the answer)")
    fe.add_argument("--height", type=int, default=360, help="deployment input height")
    fe.add_argument("--width", type=int, default=480, help="deployment input width")
    fe.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="deployment precision")
    fe.add_argument("--runtime", default="torch-eager", choices=RUNTIMES, help="deployment runtime")
    fg = fe.add_mutually_exclusive_group()
    fg.add_argument("--dataset", dest="dataset_id", default=None, help="take the number of classes from this dataset")
    fg.add_argument("--num-classes", type=int, default=None, help="number of classes")
    for n in FEASIBILITY_FIELDS:
        fe.add_argument("--" + n.replace("_", "-"), dest=n, type=int, default=None, help=FLAG_HELP[n])
    fe.add_argument("--advanced", default=None, help="JSON object of allow-listed core knobs (network, latency, ops, measure, "
                                                    "repeats, typical_samples, seed; see docs/SERVICE.md)")
    fe.add_argument("--no-wait", action="store_true", help="print the job at once instead of waiting for the answer")

    lt = parser(sub, "luts", "latency tables of the workers' devices").add_subparsers(dest="lcmd", required=True,
                                                                                      metavar="ACTION")
    ll = parser(lt, "list", "list latency tables")
    ll.add_argument("--height", type=int, default=None, help="only tables at this height")
    ll.add_argument("--width", type=int, default=None, help="only tables at this width")
    parser(lt, "show", "one table with every entry and its validations").add_argument("table_id")
    parser(lt, "delete", "delete a table (operator tenants only); the next job re-measures it").add_argument("table_id")

    jb = parser(sub, "jobs", "list jobs").add_subparsers(dest="jcmd", required=True, metavar="ACTION")
    ls = parser(jb, "list", "list jobs, newest first")
    ls.add_argument("--kind", default=None, choices=JOB_KINDS, help="only jobs of this kind")
    ls.add_argument("--status", default=None, choices=JOB_STATUSES, help="only jobs in this status")
    ls.add_argument("--limit", type=int, default=None, help="page size (default: the server's)")
    ls.add_argument("--offset", type=int, default=0, help="skip this many jobs")
    for name, helptext in (("status", "show one job"), ("watch", "live progress bar until the job ends"),
                           ("cancel", "cancel a job (a running one stops at its next step)"),
                           ("events", "print the event log"), ("artifacts", "list a job's artifacts")):
        p = parser(sub, name, helptext)
        p.add_argument("job_id", help="job id")
    dl = parser(sub, "download", "download an artifact (resumes, verifies sha256)")
    dl.add_argument("job_id", help="job id")
    dl.add_argument("name", nargs="?", default=None, help="artifact name (default: all)")
    dl.add_argument("-o", "--output", default=".", help="directory or file")
    pr = parser(sub, "predict", "segment images with a retrain job's model.onnx (downloaded once, cached)")
    pr.add_argument("job_id", help="a succeeded retrain job")
    pr.add_argument("images", nargs="+", type=Path, help="image files")
    pr.add_argument("-o", "--output", default=".", help="directory for <stem>.png masks (and overlays)")
    pr.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
    pr.add_argument("--mask-size", choices=["input", "model"], default="input",
                    help="masks at each image's own size (nearest) or at the model's resolution")
    return ap


def _label_map_arg(text: str | None):
    """--label-map: RAW=CLASS,..., a JSON object, or @file.json (sent as given; the server parses it)."""
    if text is None:
        return None
    if text.startswith("@"):
        return json.loads(Path(text[1:]).read_text())
    return json.loads(text) if text.lstrip().startswith("{") else text


def _job_human(job: dict) -> str:
    return render.job_detail(job)


def _finish(c: GasClient, args, job: dict) -> int:
    if getattr(args, "json", False) or args.watch:  # the human rendering lists them; a watch prints it at the end
        for w in job.get("warnings") or []:
            print(f"warning: {w}", file=sys.stderr)
    if not args.watch:
        _out(args, job, _job_human)
        return 0
    print(f"job {job['id']} accepted", file=sys.stderr)
    final = c.watch(job["id"], file=sys.stderr)
    _out(args, final, _job_human)
    return 0 if final["status"] == "succeeded" else 1


def _dataset_done(args, ds: dict) -> int:
    """The dataset (its warnings are part of the human rendering; with --json they go to stderr too)."""
    _out(args, ds, render.dataset_detail)
    if getattr(args, "json", False):
        for w in ds.get("warnings") or []:
            print(f"warning: {w}", file=sys.stderr)
    return 3 if ds["status"] == "invalid" else 0


def _run(args, c: GasClient) -> int:
    if args.cmd == "datasets":
        if args.dcmd == "list":
            _out(args, c.datasets(args.limit, args.offset), render.datasets_table)
        elif args.dcmd == "show":
            return _dataset_done(args, c.dataset(args.dataset_id))
        elif args.dcmd == "delete":
            c.delete_dataset(args.dataset_id)
            if not getattr(args, "json", False):
                print(f"deleted dataset {args.dataset_id}")
        else:
            names = args.class_names.split(",") if args.class_names else None
            kw = dict(layout=args.layout, num_classes=args.num_classes, class_names=names,
                      ignore_index=args.ignore_index, label_map=_label_map_arg(args.label_map), wait=not args.no_wait)
            if args.dcmd == "upload":
                ds = c.upload_dataset(args.archive, args.name, **kw)
            else:
                ds = c.register_dataset(args.name, args.path, **kw)
            return _dataset_done(args, ds)
        return 0
    if args.cmd == "search":
        job = c.submit_search(args.dataset_id, latency_ms=args.latency_ms, fps=args.fps, height=args.height,
                              width=args.width, precision=args.precision, runtime=args.runtime,
                              settings=_settings(args, SEARCH_FIELDS), idempotency_key=args.idempotency_key)
        return _finish(c, args, job)
    if args.cmd == "retrain":
        genotype = json.loads(Path(args.genotype).read_text()) if args.genotype else None
        job = c.submit_retrain(args.dataset_id, search_job_id=args.search_job, genotype=genotype,
                               settings=_settings(args, RETRAIN_FIELDS), idempotency_key=args.idempotency_key)
        return _finish(c, args, job)
    if args.cmd == "benchmark":
        genotype = json.loads(Path(args.genotype).read_text()) if args.genotype else None
        job = c.submit_benchmark(job_id=args.job, genotype=genotype, height=args.height, width=args.width,
                                 iters=args.iters, budget_ms=args.budget_ms)
        return _finish(c, args, job)
    if args.cmd == "feasibility":
        kw = dict(height=args.height, width=args.width, precision=args.precision, runtime=args.runtime,
                  dataset_id=args.dataset_id, num_classes=args.num_classes, settings=_settings(args, FEASIBILITY_FIELDS))
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
        _out(args, c.jobs(args.kind, args.status, args.limit, args.offset), render.jobs_table)
        return 0
    if args.cmd == "status":
        _out(args, c.job(args.job_id), _job_human)
        return 0
    if args.cmd == "watch":
        final = c.watch(args.job_id, file=sys.stderr)
        _out(args, final, _job_human)
        return 0 if final["status"] == "succeeded" else 1
    if args.cmd == "cancel":
        _out(args, c.cancel(args.job_id), _job_human)
        return 0
    if args.cmd == "events":
        if getattr(args, "json", False):
            _print(list(c.iter_events(args.job_id)))
            return 0
        for ev in c.iter_events(args.job_id):
            print(f"{str(ev['ts'])[:23]}  #{ev['attempt']}  {ev['type']:<18} {ev['message']}")
        return 0
    if args.cmd == "artifacts":
        _out(args, c.artifacts(args.job_id), render.artifacts_table)
        return 0
    if args.cmd == "predict":
        from .predict import ModelError

        missing = [str(p) for p in args.images if not p.is_file()]
        if missing:
            print(f"error: no such image: {', '.join(missing)}", file=sys.stderr)
            return 2
        try:
            done = c.predict(args.job_id, args.images, args.output, overlay=args.overlay, alpha=args.alpha,
                             mask_size=args.mask_size)
        except ModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _out(args, done, lambda rows: render.table(rows, [(k, k.upper()) for k in (rows[0] if rows else {})]))
        return 0
    if args.cmd == "download":
        names = [args.name] if args.name else [a["name"] for a in c.artifacts(args.job_id)]
        out = Path(args.output)
        if len(names) > 1:
            out.mkdir(parents=True, exist_ok=True)
        for n in names:
            print(c.download(args.job_id, n, out))
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with GasClient(args.url, api_key=args.api_key) as c:
            return _run(args, c)
    except GasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        errors = exc.problem.get("errors") if isinstance(exc.problem, dict) else None
        for e in errors or []:
            print(f"  {e.get('field')}: {e.get('msg')}", file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"error: cannot reach the service at {args.url or os.environ.get('GAS_URL') or 'http://127.0.0.1:8000'}: "
              f"{type(exc).__name__}: {exc} (is it running? set --url or GAS_URL)", file=sys.stderr)
        return 4
    except (OSError, ValueError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry(argv: list[str] | None = None) -> int:
    """The console script: ``main`` that exits quietly when its reader closes the pipe (``gas jobs list | head``)."""
    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Python flushes stdout at exit: point it somewhere harmless
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(entry())
