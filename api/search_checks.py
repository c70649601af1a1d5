"""Checks of a search request that the schema cannot make (issue 13): settings that cannot learn.

:func:`adapt_warmup` keeps a small ``epochs`` from failing on the warm-up default the user never set;
:func:`search_warnings` lists what a submitted search will do badly (the 202 body and the job's events
carry them), each naming the settings to change. The numbers mirror the core's schedule
(:meth:`core.search.Searcher.step_counts`: halves of the training split, ``drop_last`` batches).
"""
from __future__ import annotations

from typing import Any

from core.specs import SearchConfig

MIN_STEPS_PER_EPOCH = 5
"""Fewer weight steps per epoch than this gets a ``too few steps per epoch`` warning."""
MIN_ARCH_STEPS = 50
"""Fewer architecture steps in the whole search than this gets a warning: α barely moves from its start."""
WARMUP_SHARE = SearchConfig.model_fields["warmup_epochs"].default / SearchConfig.model_fields["epochs"].default
"""Share of the epochs the adapted warm-up takes when a user sets epochs but not warmup_epochs (the defaults' ratio)."""


def adapt_warmup(search: dict[str, Any], user_epochs: bool, user_warmup: bool) -> str | None:
    """When the user set ``epochs`` but not ``warmup_epochs``, scale the warm-up default to the run
    (``WARMUP_SHARE`` of it, never the whole run). Returns a note for the warnings, or None."""
    if not user_epochs or user_warmup:
        return None
    epochs = int(search["epochs"])
    default = SearchConfig.model_fields["warmup_epochs"].default
    if default < epochs:
        return None
    warm = min(default, int(epochs * WARMUP_SHARE))
    search["warmup_epochs"] = warm
    return (f"warmup_epochs was not given and its default ({default}) is not shorter than the {epochs} epoch(s) "
            f"asked for: using {warm} warm-up epoch(s) (set settings.warmup_epochs / --warmup-epochs to choose)")


COMPILE_WARNING = ("settings.advanced.search.compile={mode}: the first architecture and weight steps compile the "
                   "supernet's forward and backward before the search goes on (measured on a 2-core CPU for the default "
                   "network: about 10 minutes of compiling for a step 6–8 % faster, so on a CPU worker it costs more than it saves; "
                   "GPU figures are not measured yet: docs/SEARCH_SPEED.md); set it to \"off\" to search eagerly")
"""The warning a search with ``search.compile`` on gets (what it costs is not what a user expects of a switch)."""


def search_warnings(images: int, batch_size: int, steps_per_epoch: int, epochs: int, warmup_epochs: int,
                    compile_mode: str = "off") -> list[str]:
    """Why this search cannot learn much, or will spend long compiling, naming the settings to change (empty when
    neither)."""
    out: list[str] = [COMPILE_WARNING.format(mode=compile_mode)] if compile_mode != "off" else []
    half = images // 2  # the weight half (core.search.split_halves); the architecture half is the rest
    if half < batch_size:
        out.append(f"the weight half of the training split holds {half} image(s), fewer than a batch "
                   f"(settings.batch_size={batch_size}): every step sees the same images; lower settings.batch_size "
                   f"or use more images (settings.dataset_limit, a larger dataset)")
    batch = max(1, min(batch_size, half))
    steps = steps_per_epoch or max(1, half // batch)
    if steps < MIN_STEPS_PER_EPOCH:
        out.append(f"{steps} weight step(s) per epoch (fewer than {MIN_STEPS_PER_EPOCH}): raise "
                   f"settings.advanced.search.steps_per_epoch, lower settings.batch_size or use more images")
    warm = min(warmup_epochs, epochs)
    arch = (epochs - warm) * steps
    if warm >= epochs:
        out.append(f"the warm-up (settings.warmup_epochs={warmup_epochs}) covers the whole run of {epochs} epoch(s): "
                   f"the architecture is never trained and the genotype is derived from its initial values; "
                   f"lower settings.warmup_epochs or raise settings.epochs")
    elif arch < MIN_ARCH_STEPS:
        out.append(f"only {arch} architecture step(s) in the whole search ({epochs - warm} search epoch(s) x {steps} "
                   f"step(s)), fewer than {MIN_ARCH_STEPS}: the architecture barely moves from its start; raise "
                   f"settings.epochs, lower settings.warmup_epochs or raise settings.advanced.search.steps_per_epoch")
    return out
