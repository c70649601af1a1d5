"""A job's cost is bounded before it is accepted (issue 10, resources).

From the validated core spec (torch-free, :mod:`core.cost`): the supernet's parameters, the
training memory at the requested batch and crop (parameters, gradients, optimizer state, saved
activations, x1.25) and the compute as pixel passes (steps x batch x crop pixels). A job past
``GAS_JOB_MAX_MEMORY_BYTES`` or ``GAS_JOB_MAX_PIXEL_PASSES`` is 422 problem+json with the estimate
and the caps, naming the settings that lower it. A retrain is estimated as a supernet holding only
the genotype's ops on every edge: an upper bound of the derived network's memory.
"""
from __future__ import annotations

import math

from core import cost as cm
from storage.models import Dataset
from storage.settings import ServiceSettings

from .problems import Problem


def _split_images(ds: Dataset, names: list[str], limit: int | None) -> int:
    counts = (ds.stats or {}).get("images") or {}
    return sum(min(int(counts.get(n) or 0), limit) if limit else int(counts.get(n) or 0) for n in names)


def _refuse(settings: ServiceSettings, c: cm.Cost, what: str, fields: list[str], fix: str) -> None:
    mem, px = c.peak_bytes, c.image_pixels
    over = []
    if what in ("memory", "both"):
        over.append(f"training memory about {mem / 2**30:.1f} GiB at batch {c.batch} and crop {c.crop[0]}x{c.crop[1]} "
                    f"(cap {settings.job_max_memory_bytes / 2**30:.1f} GiB, GAS_JOB_MAX_MEMORY_BYTES)")
    if what in ("compute", "both"):
        over.append(f"compute about {px:.3g} pixel passes over {c.steps} steps "
                    f"(cap {settings.job_max_pixel_passes:.3g}, GAS_JOB_MAX_PIXEL_PASSES)")
    raise Problem(422, f"the job's estimated cost exceeds this service's caps: {'; '.join(over)}; {fix}",
                  type_="/problems/job-too-costly",
                  estimate={**c.as_dict(), "method": "core.cost (analytic; within "
                            f"{cm.TOLERANCE:.0%} of the meta-device estimate)"},
                  limits={"memory_bytes": settings.job_max_memory_bytes, "pixel_passes": settings.job_max_pixel_passes},
                  errors=[{"loc": ["body", *f.split(".")], "field": f, "msg": "estimated cost over the service's cap",
                           "type": "cost_cap"} for f in fields])


def _check(settings: ServiceSettings, c: cm.Cost, pixel_passes: int, mem_fields: list[str], px_fields: list[str],
           fix_mem: str, fix_px: str, check_memory: bool = True) -> None:
    mem_over = check_memory and c.peak_bytes > settings.job_max_memory_bytes
    px_over = pixel_passes > settings.job_max_pixel_passes
    if mem_over or px_over:
        what = "both" if mem_over and px_over else "memory" if mem_over else "compute"
        fields = (mem_fields if mem_over else []) + (px_fields if px_over else [])
        fix = "; ".join(x for x, on in ((fix_mem, mem_over), (fix_px, px_over)) if on)
        _refuse(settings, _with_passes(c, pixel_passes), what, fields, fix)


def _with_passes(c: cm.Cost, pixel_passes: int) -> cm.Cost:
    """A Cost whose ``image_pixels`` shows ``pixel_passes`` (steps scaled; for the message)."""
    per_step = max(c.batch * c.crop[0] * c.crop[1], 1)
    return cm.Cost(c.weight_params, c.arch_params, c.saved_bytes_per_image, c.crop, c.batch,
                   max(c.steps, math.ceil(pixel_passes / per_step)))


def check_search(settings: ServiceSettings, spec: dict, ds: Dataset) -> cm.Cost:
    lat, search = spec["latency"], spec["search"]
    height, width = spec.get("data_height") or lat["height"], spec.get("data_width") or lat["width"]
    crop = cm.search_crop(search, height, width)
    batch = search["batch_size"]
    n = _split_images(ds, spec["train_split"].split("+"), spec["dataset"].get("limit"))
    per_epoch = search["steps_per_epoch"] or max(1, math.ceil((n - n // 2) / batch))
    steps = search["epochs"] * per_epoch
    c = cm.search_cost(spec, crop, batch, steps)
    # weight steps every epoch, architecture steps after the warm-up
    passes = per_epoch * (2 * search["epochs"] - search["warmup_epochs"]) * batch * crop[0] * crop[1]
    _check(settings, c, passes, ["settings.batch_size", "settings.crop_height", "settings.crop_width"],
           ["settings.epochs"], "lower settings.batch_size, crop_height/crop_width or init_channels",
           "lower settings.epochs, dataset_limit or the crop")
    return c


def check_retrain(settings: ServiceSettings, spec: dict, ds: Dataset) -> cm.Cost:
    from core.specs import NetworkConfig

    train, genotype = spec["train"], spec["genotype"]
    net = NetworkConfig.model_validate(genotype.get("network") or {}).model_dump()
    used = sorted({e.get("op") for cell in genotype.get("cells") or [] for pair in cell.get("nodes") or []
                   for e in pair if isinstance(e, dict) and e.get("op") in cm.OP_PARAMS})
    crop = (min(train["crop_height"] or spec["height"], spec["height"]), min(train["crop_width"] or spec["width"], spec["width"]))
    batch = train["batch_size"]
    n = _split_images(ds, train["train_splits"], spec["dataset"].get("limit"))
    steps = train["epochs"] * max(1, math.ceil(n / batch))
    c = cm.search_cost({"network": net, "ggm": {"enabled": False}, "search": {"ops": used or None}}, crop, batch, steps)
    c = cm.Cost(c.weight_params, 0, c.saved_bytes_per_image, c.crop, c.batch, c.steps)
    _check(settings, c, steps * batch * crop[0] * crop[1], ["settings.batch_size", "settings.height", "settings.width"],
           ["settings.epochs"], "lower settings.batch_size, the crop or the resolution",
           "lower settings.epochs, dataset_limit or the resolution (or set time_budget_s)")
    return c


def check_benchmark(settings: ServiceSettings, spec: dict) -> None:
    h, w, iters = spec["height"], spec["width"], spec["iters"]
    passes = iters * h * w
    if passes > settings.job_max_pixel_passes:
        c = cm.Cost(0, 0, 0, (h, w), 1, iters)
        _refuse(settings, c, "compute", ["iters"], "lower iters or the resolution")
