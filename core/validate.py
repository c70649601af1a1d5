"""Dataset validation: every file read once, every problem reported file by file.

Checks: each named split is present and non-empty; every image decodes (grayscale accepted and
replicated to 3 channels, and counted); every image has a mask; every mask decodes, is
single-channel, has the image's size and holds only class ids or the ignore value (after the
layout's label map). Reports counts per split, image sizes, per-class pixel frequencies, RGB
channel mean/std (in [0, 1]) and the first ``max_bad_per_kind`` bad files of each kind.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import DECODE_WORKERS, MaskChannelsError, read_mask
from .layouts import Layout, OutsideRootError, get_layout

MAX_BAD_PER_KIND = 20
"""Bad files listed per kind of problem (all are counted)."""
GRAYSCALE_MODES = ("L", "I", "I;16", "F", "1", "LA")
"""PIL modes counted as grayscale images (accepted, used as 3 identical channels)."""


def _check_pair(args: tuple[str, Path, Path, int, int, np.ndarray | None]) -> dict:
    stem, img_path, mask_path, num_classes, ignore, label_map = args
    out: dict = {"stem": stem, "image": str(img_path), "mask": str(mask_path)}
    try:
        with Image.open(img_path) as im:
            im.load()
            out["gray"] = im.mode in GRAYSCALE_MODES
            rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return {**out, "problem": ("image_decode", f"image does not decode: {exc}", str(img_path))}
    out["size"] = (rgb.shape[1], rgb.shape[0])
    out["sum"] = rgb.reshape(-1, 3).sum(0)
    out["sumsq"] = np.square(rgb).reshape(-1, 3).sum(0)
    out["pixels"] = rgb.shape[0] * rgb.shape[1]
    if not mask_path.is_file():
        return {**out, "problem": ("missing_mask", "no mask for this image", str(img_path))}
    try:
        mask = read_mask(mask_path, label_map)
    except ValueError as exc:
        kind = "mask_channels" if isinstance(exc, MaskChannelsError) else "mask_values"
        return {**out, "problem": (kind, str(exc).replace(str(mask_path), "mask"), str(mask_path))}
    except (UnidentifiedImageError, OSError) as exc:
        return {**out, "problem": ("mask_decode", f"mask does not decode: {exc}", str(mask_path))}
    if mask.size != out["size"]:
        return {**out, "problem": ("size_mismatch", f"image is {out['size'][0]}x{out['size'][1]} but mask is "
                                   f"{mask.size[0]}x{mask.size[1]}", str(mask_path))}
    values = np.asarray(mask).astype(np.int64).ravel()
    bad = ((values >= num_classes) & (values != ignore)) | (values < 0)
    if bad.any():
        vals = sorted(np.unique(values[bad]).tolist())[:5]
        return {**out, "problem": ("mask_values", f"mask values {vals} are neither class ids 0..{num_classes - 1} "
                                   f"nor the ignore value {ignore}", str(mask_path))}
    out["counts"] = np.bincount(values[values != ignore], minlength=num_classes)
    out["ignored"] = int((values == ignore).sum())
    return out


def validate_dataset(root: str | Path, layout: str | Layout, num_classes: int, ignore_index: int,
                     splits: list[str] | None = None, class_names: list[str] | None = None,
                     max_bad_per_kind: int = MAX_BAD_PER_KIND) -> dict:
    root = Path(root)
    lay = layout if isinstance(layout, Layout) else get_layout(layout)
    names = class_names or list(lay.class_names or []) or [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    wanted = splits or lay.splits(root)
    bad: dict[str, list[dict]] = defaultdict(list)
    bad_counts: Counter = Counter()
    per_split: dict[str, dict] = {}
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    ignored = 0
    csum, csumsq, npix = np.zeros(3), np.zeros(3), 0

    def report(kind: str, file: str, reason: str) -> None:
        bad_counts[kind] += 1
        if len(bad[kind]) < max_bad_per_kind:
            rel = str(Path(file).relative_to(root)) if Path(file).is_relative_to(root) else file
            # reasons name files relative to the dataset root, never the server's absolute layout
            bad[kind].append({"file": rel, "reason": reason.replace(str(root) + "/", "")})

    if not wanted:
        report("missing_split", str(root), f"no split found; expected {lay.expected}")
    for split in wanted:
        if not lay.has_split(root, split):
            report("missing_split", split, f"split {split!r} is not present ({lay.expected})")
            continue
        try:
            pairs = lay.list_split(root, split, False)
        except ValueError as exc:
            kind = "outside_root" if isinstance(exc, OutsideRootError) else "empty_split"
            report(kind, split, str(exc).replace(str(root) + "/", ""))
            continue
        jobs = [(stem, ip, mp, num_classes, ignore_index, lay.label_map) for stem, ip, mp in pairs]
        with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
            results = list(pool.map(_check_pair, jobs))
        sizes: Counter = Counter()
        good = gray = 0
        for r in results:
            if "size" in r:
                sizes[f"{r['size'][0]}x{r['size'][1]}"] += 1
                csum += r["sum"]
                csumsq += r["sumsq"]
                npix += r["pixels"]
                gray += int(r["gray"])
            if "problem" in r:
                report(r["problem"][0], r["problem"][2], r["problem"][1])
                continue
            good += 1
            class_pixels += r["counts"]
            ignored += r["ignored"]
        per_split[split] = {"images": len(results), "valid": good, "grayscale_images": gray, "sizes": dict(sizes)}
    labelled = int(class_pixels.sum())
    mean = csum / max(npix, 1)
    std = np.sqrt(np.maximum(csumsq / max(npix, 1) - mean ** 2, 0.0))
    return {
        "ok": not bad_counts,
        "layout": lay.name, "num_classes": num_classes, "ignore_index": ignore_index, "class_names": names,
        "splits": per_split,
        "class_pixels": {n: int(c) for n, c in zip(names, class_pixels)},
        "class_frequency": {n: (float(c) / labelled if labelled else 0.0) for n, c in zip(names, class_pixels)},
        "ignored_pixels": ignored,
        "channel_mean": [round(float(v), 5) for v in mean], "channel_std": [round(float(v), 5) for v in std],
        "grayscale": "grayscale images are accepted and used as 3 identical channels",
        "bad_counts": dict(bad_counts), "bad_files": dict(bad),
    }
