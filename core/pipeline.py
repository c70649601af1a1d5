"""Whole jobs: search -> derive -> measure -> repair; retrain -> evaluate -> FPS; benchmark.

Called through :mod:`core.jobs`. Every phase reports progress; everything a job hands back is
written atomically into ``workdir/artifacts``; state for resuming lives in ``workdir/state``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import load_weights, save_json, save_weights
from .data import load_split, normalize
from .derive import Preference, derive, preference_source, repair_to_budget
from .device_lock import DeviceLock, default_lock_dir
from .drift import Reference, corrected, drift_note, read_with_reference, reference_drift
from .estimate import estimate_search, fit_search
from .fps import fps_report, measure_latency, reference_measurement, runtime_key
from .export import export_checked, model_metadata
from .genotype import Genotype, Provenance, parse_genotype
from .jobs import Cancelled
from .latency import LatencyModel
from .latency_loss import LatencyPenalty
from .layouts import palette_for
from .lut_check import validate_table
from .lut_trust import trusted_table
from .redact import job_roots, redact
from .network import DerivedNet, SuperNet
from .noise import Measurement, NoisePolicy
from .samples import save_samples
from .perturb import perturbation_preference, scoring_batches
from .preprocess import Preprocessing
from .search import EVAL_BATCH, Searcher, SearchCancelled, search_crop
from .specs import BenchmarkJobSpec, LatencyConfig, RetrainJobSpec, SearchConfig, SearchJobSpec
from .threads import Threads, apply_inter_op, effective
from .runtimes import check_runtime
from .timing import set_cudnn_benchmark
from .verdict import Timed, latency_verdict
from .train import train

ARTIFACTS, STATE = "artifacts", "state"
ONNX_NAME = "model.onnx"
"""The exported model every retrain publishes (after its parity check) next to the checkpoint."""
MIOU_SELECTION = "last epoch"
"""How a retrain's headline mIoU (and its shipped checkpoint) is chosen: the last epoch, never the
best evaluated one, which would select on the eval split (the test split in the CamVid protocol)."""
BEST_NOTE = ("best_miou/best_epoch: the best evaluated epoch on the same split, for information only; "
             "choosing it would select on that split")
PRIVATE_SETTINGS = {"dataset": {"root"}}
"""Left out of the settings a report repeats: a tenant reads reports, and the dataset root is a server path."""
Progress = Callable[[dict], None]
CancelCheck = Callable[[], bool]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def settings_hash(spec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def save_report(art: Path, report: dict, spec, workdir: Path) -> None:
    """Write ``report.json`` with no server path in it (core.redact: the work dir becomes relative,
    the dataset root ``<dataset>``, any other absolute path its last component)."""
    save_json(art / "report.json", redact(report, job_roots(spec, workdir)))


def _dirs(workdir: Path) -> tuple[Path, Path]:
    art, state = workdir / ARTIFACTS, workdir / STATE
    art.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    return art, state


def _check(should_cancel: CancelCheck, where: str) -> None:
    if should_cancel():
        raise Cancelled(f"cancelled {where}")


def job_threads(lat: LatencyConfig) -> Threads:
    """The job's timing threads (issue 11): inter-op set now if the process still allows it."""
    return Threads(lat.intra_op_threads, apply_inter_op(lat.inter_op_threads))


class NoiseLog:
    """Noise warnings of a job: each goes to the progress stream at once and into the report."""

    def __init__(self, progress: Progress):
        self.progress, self.messages = progress, []

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self.progress({"phase": "noise", "noisy": True, "message": message})


def end_to_end(genotype: Genotype, lat: LatencyConfig, device: torch.device, noise: NoisePolicy,
               threads: Threads) -> dict:
    """measure_latency of the derived network at the budget's resolution and precision."""
    return measure_latency(DerivedNet(genotype), lat.height, lat.width, device, lat.precision, lat.warmup_runs,
                           lat.e2e_repeats, noise=noise, threads=threads, runtime=lat.runtime)


def _noisy_note(what: str, m: dict, noise: NoisePolicy) -> str:
    return (f"{what} stayed noisy after {m['attempts']} attempt(s): p90/min {m['p90_ms'] / m['min_ms']:.2f} "
            f"(limit {noise.max_ratio}), median/min {m['median_ms'] / m['min_ms']:.2f} (limit {noise.max_median_ratio}) "
            f"(median {m['median_ms']:.3f} ms, min {m['min_ms']:.3f} ms); not acted on. Other work "
            f"shares this device: run the job where nothing else runs beside it (one job per worker), or allow more "
            f"retries (advanced.latency.noise_retries, noise_retry_pause_s)")


def plan_memory(spec: SearchJobSpec, net_cfg, height: int, width: int, device: torch.device,
                progress: Progress) -> tuple[SearchConfig, dict]:
    """Estimate the search's memory before it starts (core/estimate.py); on CUDA, fall back to a smaller
    batch, then a smaller crop, when the free device memory is short, and say so in the progress and the report."""
    crop = search_crop(spec.search, height, width)
    est = estimate_search(net_cfg, spec.ggm, spec.search, crop)
    doc = {"estimate": est.as_dict(), "batch": spec.search.batch_size, "crop": list(crop), "fallback": None}
    search_cfg = spec.search
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        doc["device_free_bytes"] = int(free)
        fit = fit_search(net_cfg, spec.ggm, spec.search, crop, int(free))
        if fit.reason:
            search_cfg = spec.search.model_copy(update={"batch_size": fit.batch, "crop_height": fit.crop[0],
                                                        "crop_width": fit.crop[1]})
            doc.update(batch=fit.batch, crop=list(fit.crop), fallback=fit.reason, estimate_used=fit.estimate.as_dict())
    progress({"phase": "memory", "message": doc["fallback"] or
              f"estimated {est.peak_bytes(search_cfg.batch_size) / 2**30:.2f} GiB at batch {search_cfg.batch_size}",
              "memory": doc})
    return search_cfg, doc


def search_pipeline(spec: SearchJobSpec, workdir: Path, progress: Progress, should_cancel: CancelCheck,
                    lut_dir: str | Path | None, data_cache_dir: str | Path | None = None) -> dict:
    art, state = _dirs(workdir)
    device = pick_device()
    set_cudnn_benchmark()  # before the LUT: its identity records the flag
    lat_cfg, net_cfg = spec.latency, spec.network.model_copy(update={"num_classes": spec.dataset.num_classes})
    check_runtime(lat_cfg.runtime, device, lat_cfg.precision)  # fail now, not after the data and the table
    t0 = time.perf_counter()
    torch.manual_seed(spec.search.seed)
    progress({"phase": "data", "message": "loading and caching the training split"})
    data = load_split(spec.dataset, spec.train_split, spec.data_height or lat_cfg.height,
                      spec.data_width or lat_cfg.width, Path(data_cache_dir) if data_cache_dir else workdir / "cache")
    model = SuperNet(net_cfg, spec.ggm, spec.search.ops, spec.search.shared_cells, spec.search.gumbel,
                     spec.search.gumbel_tau, spec.search.batched_cells)
    _check(should_cancel, "before the latency table")

    noise, threads, warn = NoisePolicy.from_config(lat_cfg), job_threads(lat_cfg), NoiseLog(progress)
    lut_dir = lut_dir or workdir / "lut"
    lock = DeviceLock.for_device(device, default_lock_dir(lut_dir), progress, should_cancel)
    # the table's measurements build networks (their initialisation draws from the global RNG) only when the table is
    # not cached and trusted: without the fork, the same spec and seed searched a different network on a warm cache
    with lock.hold("latency_table"), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        table, trust = trusted_table(net_cfg, model.ops, lat_cfg, device, lut_dir, spec.search.seed, progress,
                                     should_cancel)
    _check(should_cancel, "while measuring the latency table")
    if not trust.trusted:
        warn.messages.append(f"latency table {table.id} not trusted (not cached): {'; '.join(trust.reasons)}")
    latency = LatencyModel(table, net_cfg, model.ops, lat_cfg.height, lat_cfg.width,
                           scale=None if lat_cfg.lut_calibrate else 1.0)
    search_cfg, memory = plan_memory(spec, net_cfg, data.height, data.width, device, progress)
    searcher = Searcher(model, latency, LatencyPenalty(lat_cfg), search_cfg, data, device, state, progress,
                        should_cancel)
    scoring = None
    try:
        result = searcher.run()
        pref = Preference.from_alphas(result.alphas, model.ops)
        if preference_source(lat_cfg.derivation) == "perturbation":
            progress({"phase": "derive", "message": f"scoring every op and edge by perturbation on {lat_cfg.pt_images} images"})
            pref, scoring = perturbation_preference(
                searcher.model, scoring_batches(searcher.loader_a, lat_cfg.pt_images, EVAL_BATCH), data.ignore_index,
                progress, should_cancel)
    except SearchCancelled as exc:
        raise Cancelled(str(exc)) from None

    latency = latency.cpu()
    provenance = Provenance(lut_id=table.id, budget_ms=lat_cfg.budget_ms, settings_hash=settings_hash(spec),
                            seed=spec.search.seed, source="search")
    genotype, derivation = derive(lat_cfg.derivation, pref, model.ops, net_cfg, latency, lat_cfg.budget_ms,
                                  provenance)
    if scoring is not None:
        derivation["perturbation"] = scoring
    progress({"phase": "measure", "message": "measuring the derived network end to end"})

    reference = Reference.of(trust.validation)
    ref_net = parse_genotype(reference.genotype) if reference else None

    def measure(g: Genotype) -> dict:
        _check(should_cancel, "while measuring")
        with lock.hold("end_to_end"):
            m = read_with_reference(lambda: end_to_end(g, lat_cfg, device, noise, threads),
                                    (lambda: end_to_end(ref_net, lat_cfg, device, noise, threads)) if ref_net else None,
                                    reference.measured_ms if reference else None, lat_cfg.drift_max, noise,
                                    correct=lat_cfg.drift_correct)
        what = f"end-to-end measurement of {g.arch_hash()[:12]}"
        if m["drifted"]:
            warn(drift_note(what, m, lat_cfg.drift_max))
        elif m["noisy"]:
            warn(_noisy_note(what, m, noise))
        return m

    if lat_cfg.repair:
        genotype, repair = repair_to_budget(genotype, pref, latency, measure, lat_cfg.budget_ms,
                                            lat_cfg.repair_rounds, lat_cfg.repair_steps_per_round,
                                            lat_cfg.repair_max_fraction, lat_cfg.repair_max_disagreement)
        repair_doc = repair.as_dict()
        if repair.stopped in ("noisy", "disagree", "edge limit"):
            warn(f"repair stopped ({repair.stopped}): {repair_doc['stop_reason']}; "
                 f"{len(repair.edges_changed)} edge change(s) kept")
    else:
        m = measure(genotype)
        repair_doc = {"repaired": False, "measured_before_ms": m["median_ms"], "measured_after_ms": m["median_ms"],
                      "budget_met": m["median_ms"] <= lat_cfg.budget_ms, "budget_ms": lat_cfg.budget_ms,
                      "trusted": not m["noisy"], "measurements": [{"round": 0, **Measurement.of(m).as_dict()}]}
    validation = None
    _check(should_cancel, "after the end-to-end measurement")
    if spec.validate_lut_samples:
        progress({"phase": "validate_lut", "message": f"measuring {spec.validate_lut_samples} random networks"})
        with lock.hold("validate_lut"):
            # other networks than the table's own check (seed + 1): the calibrated prediction out of sample
            validation = validate_table(latency, spec.validate_lut_samples, device, lat_cfg.precision,
                                        lat_cfg.warmup_runs, lat_cfg.e2e_repeats, spec.search.seed + 1, should_cancel,
                                        noise=noise, threads=threads, max_error=lat_cfg.lut_max_error,
                                        min_rank_corr=lat_cfg.lut_min_rank_corr, runtime=lat_cfg.runtime)
    _check(should_cancel, "before the FPS report")
    progress({"phase": "fps", "message": "FPS report"})
    with lock.hold("fps"):
        fps = fps_report(DerivedNet(genotype), lat_cfg.height, lat_cfg.width, device, spec.fps_iters,
                         lut_prediction_ms=latency.genotype_ms(genotype), budget_ms=lat_cfg.budget_ms,
                         precision=lat_cfg.precision, noise=noise, threads=threads, runtime=lat_cfg.runtime)
        ref = reference_measurement(fps)
        if ref_net is not None and lat_cfg.drift_max > 0:  # the host's drift just after it, as for every reading
            ref = {**ref, **reference_drift(lambda: end_to_end(ref_net, lat_cfg, device, noise, threads),
                                            reference.measured_ms, lat_cfg.drift_max)}
    if ref.get("drifted"):
        ref["noisy"] = True
        warn(drift_note("FPS measurement", ref, lat_cfg.drift_max))
    else:
        if ref["noisy"]:
            warn(_noisy_note("FPS measurement", ref, noise))
        if lat_cfg.drift_correct:  # as the end-to-end readings: a noisy one is corrected too, and not acted on
            ref = corrected(ref)
    fps["verdict_reading"] = {k: ref.get(k) for k in ("median_ms", "min_ms", "p90_ms", "noisy", "drift", "drifted",
                                                      "drift_corrected", "raw_median_ms", "reference_ms")}
    verdict = latency_verdict([Timed.of("end_to_end", repair_doc["measurements"][-1]), Timed.of(f"fps_{runtime_key(lat_cfg.runtime)}", ref)],
                              lat_cfg.budget_ms)
    if not verdict["agree"] or not verdict["trusted"]:
        warn(f"latency verdict: {verdict['reason']}")
    fps["budget_met_eager"], fps["budget_met"] = fps["budget_met"], verdict["budget_met"]
    fps["verdict_source"] = verdict["source"]
    lock_doc = lock.as_dict()
    shared = lock_doc.get("gpu_shared_phases")
    if shared:
        warn.messages.append(f"other processes were on the GPU while these phases measured: {', '.join(shared)}")
    if lock_doc.get("gpu_unchecked_phases"):
        warn.messages.append("the GPU's other processes could not be listed (no pynvml, no nvidia-smi): "
                             "whether it was idle while measuring is unknown")
    trusted = trust.trusted and verdict["trusted"] and repair_doc.get("trusted", True) and not shared
    genotype.save(art / "genotype.json")
    report = {
        "kind": "search", "genotype_hash": genotype.arch_hash(), "budget_ms": lat_cfg.budget_ms,
        "resolution": [lat_cfg.height, lat_cfg.width], "precision": lat_cfg.precision, "runtime": lat_cfg.runtime,
        "batch": 1,
        "device": table.context.device, "lut": {"id": table.id, "entries": len(table.entries),
                                                 "context": table.context.__dict__, "trust": trust.as_dict(),
                                                 "calibration_scale": latency.scale},
        "expected_latency_ms": result.expected_latency_ms, "predicted_latency_ms": latency.genotype_ms(genotype),
        "measured_latency_ms": verdict["measured_latency_ms"], "budget_met": verdict["budget_met"],
        "measurements_trusted": trusted, "noise_warnings": warn.messages, "latency_verdict": verdict,
        "threads": effective(threads).as_dict(), "noise_policy": noise.as_dict(), "device_lock": lock.as_dict(),
        "derivation": derivation, "repair": repair_doc, "lut_validation": validation, "fps": fps, "history": result.history,
        "search_steps": result.steps, "memory": memory, "compile": result.compile, "resumed_from_epoch": result.resumed_from_epoch,
        "wall_s": round(time.perf_counter() - t0, 2), "settings": spec.model_dump(mode="json", exclude=PRIVATE_SETTINGS),
    }
    save_report(art, report, spec, workdir)
    return {"genotype_hash": genotype.arch_hash(), "expected_latency_ms": round(result.expected_latency_ms, 4),
            "predicted_latency_ms": round(report["predicted_latency_ms"], 4),
            "measured_latency_ms": round(report["measured_latency_ms"], 4), "budget_ms": lat_cfg.budget_ms,
            "runtime": lat_cfg.runtime,
            "budget_met": report["budget_met"], "repaired": repair_doc["repaired"], "lut_id": table.id,
            "device": table.context.device, "supernet_miou": result.history[-1]["supernet_miou"] if result.history else None,
            "fps": verdict["fps"], "measurements_trusted": trusted, "noise_warnings": len(warn.messages),
            "latency_source": verdict["source"]}


def retrain_pipeline(spec: RetrainJobSpec, workdir: Path, progress: Progress, should_cancel: CancelCheck,
                     data_cache_dir: str | Path | None = None, lut_dir: str | Path | None = None) -> dict:
    art, _ = _dirs(workdir)
    device = pick_device()
    set_cudnn_benchmark()
    genotype = parse_genotype(spec.genotype)
    if genotype.network.num_classes != spec.dataset.num_classes:
        raise ValueError(f"genotype network.num_classes {genotype.network.num_classes} != dataset num_classes "
                         f"{spec.dataset.num_classes}")
    cache = Path(data_cache_dir) if data_cache_dir else workdir / "cache"
    progress({"phase": "data", "message": "loading and caching the data"})
    train_data = load_split(spec.dataset, "+".join(spec.train.train_splits), spec.height, spec.width, cache)
    eval_data = load_split(spec.dataset, spec.train.eval_split, spec.height, spec.width, cache)
    torch.manual_seed(spec.train.seed)
    model = DerivedNet(genotype)
    norm = spec.normalization
    pre = Preprocessing.for_model(norm, spec.height, spec.width)
    class_names = list(train_data.class_names)
    palette = palette_for(spec.dataset.layout, spec.dataset.num_classes)
    result = train(model, train_data, eval_data, spec.train, workdir, device, progress, should_cancel,
                   normalization=norm)
    # The shipped checkpoint is the last epoch's (the one "miou" refers to, see MIOU_SELECTION); weights only.
    last, best = result["last"], result["best"]
    load_weights(model, result["checkpoints"]["last"])
    save_weights(model, art / "checkpoint.safetensors",
                 metadata={"checkpoint": "last", "epoch": str(last["epoch"]), "miou": repr(last["miou"]),
                           "miou_split": spec.train.eval_split,
                           **model_metadata(genotype, pre, class_names, palette)})
    samples = save_samples(model, eval_data, norm, palette, art, spec.sample_images, device)
    _check(should_cancel, "before the ONNX export")
    progress({"phase": "export", "message": f"exporting {ONNX_NAME} and checking parity with PyTorch"})
    export = spec.export
    # exported into state/ and moved into artifacts/ only once parity holds: a failed check publishes nothing
    parity_x = normalize(eval_data.images[: export.parity_images], norm)
    export_doc = export_checked(model, workdir / STATE / ONNX_NAME, genotype, pre, class_names, palette, parity_x,
                                export.opset, export.dynamic_shape, export.parity_rtol,
                                export.parity_min_argmax_agreement)
    export_doc["parity"]["split"] = spec.train.eval_split
    export_doc["parity"]["stems"] = eval_data.stems[: export.parity_images]
    os.replace(workdir / STATE / ONNX_NAME, art / ONNX_NAME)
    progress({"phase": "fps", "message": "FPS report"})
    lock = DeviceLock.for_device(device, default_lock_dir(lut_dir), progress, should_cancel)
    with lock.hold("fps"):
        fps = fps_report(model, spec.height, spec.width, device, spec.fps_iters,
                         budget_ms=genotype.provenance.budget_ms, threads=job_threads(LatencyConfig()))
    genotype.save(art / "genotype.json")
    base = last.get("trivial_baseline") or {}
    headline = {"miou": last["miou"], "miou_epoch": last["epoch"], "miou_split": spec.train.eval_split,
                "miou_selection": MIOU_SELECTION, "best_miou": best["miou"], "best_epoch": best["epoch"],
                "trivial_baseline_miou": base.get("miou"),
                "beats_trivial_baseline": base.get("miou") is None or last["miou"] > base["miou"]}
    # names only: a tenant reads this report, and the work dir is a server path
    train_doc = {**result, "checkpoints": {k: Path(v).name for k, v in result["checkpoints"].items()}}
    report = {"kind": "retrain", "genotype_hash": genotype.arch_hash(), **headline, "best_note": BEST_NOTE,
              "train": train_doc, "fps": fps, "device_lock": lock.as_dict(), "resolution": [spec.height, spec.width],
              "preprocessing": pre.model_dump(mode="json"), "class_names": class_names, "palette": palette,
              "export": export_doc, "samples": {"files": samples, "split": spec.train.eval_split,
                                                "images": eval_data.stems[: len(samples)],
                                                "panels": "prediction over the image (left), ground truth (right)"},
              "settings": spec.model_dump(mode="json", exclude={"genotype": True, **PRIVATE_SETTINGS})}
    save_report(art, report, spec, workdir)
    par = export_doc["parity"]
    return {"genotype_hash": genotype.arch_hash(), **headline, "fps": fps.get("measured_fps"),
            "device": fps.get("device"), "onnx_parity": {"max_abs_logit_diff": par["max_abs_logit_diff"],
                                                          "argmax_agreement": par["argmax_agreement"]},
            "measurements_trusted": not fps.get("measured_noisy", False)}


def benchmark_pipeline(spec: BenchmarkJobSpec, workdir: Path, progress: Progress, should_cancel: CancelCheck,
                       lut_dir: str | Path | None = None) -> dict:
    art, _ = _dirs(workdir)
    device = pick_device()
    set_cudnn_benchmark()
    genotype = parse_genotype(spec.genotype)
    _check(should_cancel, "before measuring")
    progress({"phase": "fps", "message": f"measuring at {spec.height}x{spec.width}"})
    lock = DeviceLock.for_device(device, default_lock_dir(lut_dir), progress, should_cancel)
    with lock.hold("fps"):
        fps = fps_report(DerivedNet(genotype), spec.height, spec.width, device, spec.iters, budget_ms=spec.budget_ms,
                         threads=job_threads(LatencyConfig()))
    save_report(art, {"kind": "benchmark", "genotype_hash": genotype.arch_hash(), "fps": fps,
                      "device_lock": lock.as_dict()}, spec, workdir)
    return {"genotype_hash": genotype.arch_hash(), "fps": fps.get("measured_fps"), "device": fps.get("device"),
            "measurements_trusted": not fps.get("measured_noisy", False)}
