"""Local command line (no service needed): ``gas-local search|retrain|benchmark|feasibility|export|settings``.

Each command writes genotype/checkpoint/report into ``--out`` (its ``artifacts/`` folder) and
resumes when run again with the same ``--out``. Settings are given as JSON files or dotted
``--set section.field=value`` overrides of :mod:`core.specs`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .specs import (BenchmarkJobSpec, DatasetRef, ExportConfig, FeasibilityJobSpec, GGMConfig, LabelMap, LatencyConfig, NetworkConfig,
                    Normalization, RetrainConfig, RetrainJobSpec, SearchConfig, SearchJobSpec, ValidateJobSpec)


def _set(doc: dict, dotted: str) -> None:
    key, _, raw = dotted.partition("=")
    if not _:
        raise SystemExit(f"--set needs section.field=value, got {dotted!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    parts = key.split(".")
    node = doc
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


class _Bars:
    """tqdm bars per phase, fed by the job's progress events."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.tqdm, self.bar, self.key = tqdm, None, None

    def __call__(self, ev: dict) -> None:
        key = (ev.get("phase"), ev.get("epoch"))
        if ev.get("steps") and key != self.key:
            if self.bar:
                self.bar.close()
            label = ev["phase"] + (f" {ev['epoch']}/{ev['epochs']}" if ev.get("epoch") else "")
            self.bar, self.key = self.tqdm(total=ev["steps"], desc=label, leave=False), key
        if self.bar and ev.get("step"):
            self.bar.n = ev["step"]
            shown = {k: round(v, 4) for k, v in (ev.get("metrics") or {}).items() if isinstance(v, (int, float))}
            self.bar.set_postfix(shown, refresh=True)
        if ev.get("message") and not ev.get("steps"):
            self.tqdm.write(f"[{ev.get('phase')}] {ev['message']}", file=sys.stderr)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _spec(args: argparse.Namespace, base: dict) -> dict:
    if args.config:
        base.update(json.loads(Path(args.config).read_text()))
    for s in args.set or []:
        _set(base, s)
    return base


JOB_SPECS = (SearchJobSpec, RetrainJobSpec, BenchmarkJobSpec, ValidateJobSpec, FeasibilityJobSpec)
"""Job specs whose own (non-nested) fields are settings too (fps_iters, sample_images, ...)."""


def _settings_table() -> str:
    rows = []
    for model in (NetworkConfig, GGMConfig, LatencyConfig, SearchConfig, RetrainConfig, Normalization, ExportConfig,
                  DatasetRef, LabelMap, *JOB_SPECS):
        for name, f in model.model_fields.items():
            if model in JOB_SPECS and isinstance(f.get_default(call_default_factory=True), BaseModel):
                continue  # a nested config, listed above by its own name
            if model in JOB_SPECS and name in ("dataset", "genotype"):
                continue  # the job's data, not a setting
            value = None if f.is_required() else f.get_default(call_default_factory=True)
            default = "required" if f.is_required() else json.dumps(value if not isinstance(value, BaseModel) else None)
            rows.append(f"| {model.__name__}.{name} | {default} | {f.description or ''} |")
    return "| setting | default | meaning |\n|---|---|---|\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gas-local", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("search", "retrain", "benchmark", "feasibility"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, type=Path, help="job folder (artifacts/, state/); reused to resume")
        p.add_argument("--config", help="JSON file with the job spec (see `gas-local settings`)")
        p.add_argument("--set", action="append", help="dotted override, e.g. latency.budget_ms=8")
        if name not in ("benchmark", "feasibility"):
            p.add_argument("--data", help="dataset root (dataset.root)")
            p.add_argument("--layout", default=None, choices=["camvid", "folder"])
        if name in ("retrain", "benchmark"):
            p.add_argument("--genotype", type=Path, help="genotype.json to train or measure")
        p.add_argument("--lut-dir", type=Path, default=None, help="shared latency-table cache (search, feasibility; its locks/ serialise timings per device)")
    ex = sub.add_parser("export", help="model.onnx from a genotype + checkpoint, parity-checked against PyTorch")
    ex.add_argument("--genotype", type=Path, required=True, help="genotype.json")
    ex.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.safetensors")
    ex.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    ex.add_argument("--images", type=Path, nargs="*", default=[], help="images for the parity check")
    ex.add_argument("--data", help="dataset root: parity on the first images of --split instead")
    ex.add_argument("--layout", default="camvid", choices=["camvid", "folder", "cityscapes"])
    ex.add_argument("--split", default="val")
    ex.add_argument("--height", type=int, help="resolution (default: the checkpoint's)")
    ex.add_argument("--width", type=int)
    ex.add_argument("--set", action="append", help="ExportConfig override, e.g. export.opset=18")
    sub.add_parser("settings", help="print every setting with its default and meaning")
    args = ap.parse_args(argv)
    if args.cmd == "settings":
        print(_settings_table())
        return 0
    if args.cmd == "export":
        return _export(args)

    from .jobs import run_benchmark, run_feasibility, run_retrain, run_search

    base: dict = {}
    if getattr(args, "data", None):
        base["dataset"] = {"root": args.data, **({"layout": args.layout} if args.layout else {})}
    if getattr(args, "genotype", None):
        base["genotype"] = json.loads(args.genotype.read_text())
    doc = _spec(args, base)
    bars = _Bars()
    try:
        if args.cmd == "search":
            result = run_search(SearchJobSpec.model_validate(doc), args.out, progress=bars, lut_dir=args.lut_dir)
        elif args.cmd == "retrain":
            result = run_retrain(RetrainJobSpec.model_validate(doc), args.out, progress=bars, lut_dir=args.lut_dir)
        elif args.cmd == "feasibility":
            result = run_feasibility(FeasibilityJobSpec.model_validate(doc), args.out, progress=bars,
                                     lut_dir=args.lut_dir)
        else:
            result = run_benchmark(BenchmarkJobSpec.model_validate(doc), args.out, progress=bars, lut_dir=args.lut_dir)
    finally:
        bars.close()
    json.dump(result, sys.stdout, indent=1)
    print(f"artifacts in {args.out / 'artifacts'}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    """``gas-local export``: the retrain's export and parity check for a genotype + checkpoint."""
    from .export import export_checked, load_model
    from .layouts import palette_for
    from .preprocess import Preprocessing
    from .specs import ExportConfig

    doc: dict = {}
    for s in args.set or []:
        _set(doc, s)
    cfg = ExportConfig.model_validate(doc.get("export", doc))
    model = load_model(args.genotype, args.checkpoint)
    genotype, pre = model.genotype, model.preprocessing
    n_cls = genotype.network.num_classes
    if pre is None:  # a checkpoint from before the record existed: CamVid's statistics, the resolution given
        if not (args.height and args.width):
            raise SystemExit("this checkpoint records no preprocessing: give --height and --width")
        pre = Preprocessing.for_model(Normalization(), args.height, args.width)
    elif args.height or args.width:
        pre = pre.model_copy(update={"height": args.height or pre.height, "width": args.width or pre.width})
    names = model.class_names or [f"class_{i}" for i in range(n_cls)]
    palette = model.palette or palette_for(args.layout, n_cls)
    images = list(args.images)
    if args.data:
        from .layouts import get_layout

        pairs = sorted(get_layout(args.layout).list_split(Path(args.data), args.split, False))
        images += [ip for _, ip, _ in pairs[: cfg.parity_images]]
    if images:
        import numpy as np
        import torch

        x = torch.from_numpy(np.concatenate([pre.apply(p) for p in images[: max(cfg.parity_images, len(args.images))]]))
        parity_on = f"{x.shape[0]} image(s)"
    else:
        import torch

        x = torch.randn(cfg.parity_images, 3, pre.height, pre.width, generator=torch.Generator().manual_seed(0))
        parity_on = f"{x.shape[0]} random input(s) (give --images or --data to check on real images)"
    from .export import ParityError

    try:
        doc_out = export_checked(model, args.out, genotype, pre, names, palette, x, cfg.opset, cfg.dynamic_shape,
                                 cfg.parity_rtol, cfg.parity_min_argmax_agreement)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    doc_out["parity"]["inputs"] = parity_on
    json.dump(doc_out, sys.stdout, indent=1)
    print(f"\nwrote {args.out} (parity on {parity_on})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
