"""Local command line (no service needed): ``gas-local search|retrain|benchmark|settings``.

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

from .specs import (BenchmarkJobSpec, DatasetRef, GGMConfig, LatencyConfig, NetworkConfig, RetrainConfig,
                    RetrainJobSpec, SearchConfig, SearchJobSpec)


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


def _settings_table() -> str:
    rows = []
    for model in (NetworkConfig, GGMConfig, LatencyConfig, SearchConfig, RetrainConfig, DatasetRef):
        for name, f in model.model_fields.items():
            default = "required" if f.is_required() else json.dumps(f.default if not isinstance(f.default, BaseModel) else None)
            rows.append(f"| {model.__name__}.{name} | {default} | {f.description or ''} |")
    return "| setting | default | meaning |\n|---|---|---|\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gas-local", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("search", "retrain", "benchmark"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, type=Path, help="job folder (artifacts/, state/); reused to resume")
        p.add_argument("--config", help="JSON file with the job spec (see `gas-local settings`)")
        p.add_argument("--set", action="append", help="dotted override, e.g. latency.budget_ms=8")
        if name != "benchmark":
            p.add_argument("--data", help="dataset root (dataset.root)")
            p.add_argument("--layout", default=None, choices=["camvid", "folder"])
        if name != "search":
            p.add_argument("--genotype", type=Path, help="genotype.json to train or measure")
        p.add_argument("--lut-dir", type=Path, default=None, help="shared latency-table cache (search)")
    sub.add_parser("settings", help="print every setting with its default and meaning")
    args = ap.parse_args(argv)
    if args.cmd == "settings":
        print(_settings_table())
        return 0

    from .jobs import run_benchmark, run_retrain, run_search

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
            result = run_retrain(RetrainJobSpec.model_validate(doc), args.out, progress=bars)
        else:
            result = run_benchmark(BenchmarkJobSpec.model_validate(doc), args.out, progress=bars)
    finally:
        bars.close()
    json.dump(result, sys.stdout, indent=1)
    print(f"artifacts in {args.out / 'artifacts'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
