"""Dataset validation: every file read once, every problem reported file by file.

Checks: each named split is present and non-empty; every image decodes (grayscale accepted and
replicated to 3 channels, and counted); every image has a mask; every mask decodes, is
single-channel (or RGB / palette with a colour label map), has the image's size and holds only class
ids or the ignore value (after the dataset's label map, :mod:`core.labelmap`, or the layout's).
Reports counts per split, image sizes, per-class pixel frequencies, RGB channel mean/std (in
[0, 1]), the most frequent raw mask values, warnings about setups that validate but cannot train
well (issue 13), a suggested label map when one would make failing masks valid, and the first
``max_bad_per_kind`` bad files of each kind.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import DECODE_WORKERS, MaskChannelsError, mask_values
from .labelmap import CompiledLabelMap, compile_label_map, format_raw, suggest_label_map
from .layouts import Layout, OutsideRootError, get_layout
from .specs import LabelMap

MAX_BAD_PER_KIND = 20
"""Bad files listed per kind of problem (all are counted)."""
GRAYSCALE_MODES = ("L", "I", "I;16", "F", "1", "LA")
"""PIL modes counted as grayscale images (accepted, used as 3 identical channels)."""
RAW_VALUES_PER_MASK = 4096
"""Distinct raw mask values counted per mask for the report's histogram (more are only counted)."""
RAW_VALUES_REPORTED = 64
"""Most frequent raw mask values listed in the report (raw_values)."""
MOSTLY_IGNORED_FRACTION = 0.9
"""A split with at least this fraction of ignored pixels gets a ``mostly_ignored`` warning."""
GREY_RAMP_MIN_VALUES = 32
"""Distinct raw mask values from which masks look like grey images (``grey_ramp`` warning; also 2*classes+2)."""


def _raw_mask(mask_path: Path, label_map: object) -> np.ndarray:
    """The mask's raw values (colours as the label map's keys when it maps colours)."""
    if isinstance(label_map, CompiledLabelMap):
        return mask_values(mask_path, CompiledLabelMap(label_map.kind, label_map.keys, label_map.targets, True,
                                                       label_map.ignore_index))[0]
    return mask_values(mask_path, None)[0]


def _map_mask(raw: np.ndarray, label_map: object) -> np.ndarray:
    """Raw mask values -> class ids: the dataset's compiled label map, a layout's lookup array, or as they are."""
    if isinstance(label_map, CompiledLabelMap):
        return label_map.apply(raw)
    if label_map is not None:
        if raw.min() < 0 or raw.max() >= len(label_map):
            raise ValueError(f"holds label ids outside 0..{len(label_map) - 1}")
        return label_map[raw].astype(np.int64)
    return raw


def _check_pair(args: tuple[str, Path, Path, int, int, object]) -> dict:
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
        return {**out, "problem": ("missing_mask", f"no mask for image {img_path.name}: expected at this path", str(mask_path))}
    try:
        # the raw values only (the map is applied below, so unlisted values are reported as mask_values)
        raw = _raw_mask(mask_path, label_map)
    except MaskChannelsError as exc:
        return {**out, "problem": ("mask_channels", str(exc).replace(str(mask_path), "mask"), str(mask_path))}
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return {**out, "problem": ("mask_decode", f"mask does not decode: {exc}", str(mask_path))}
    uniq, cnt = np.unique(raw, return_counts=True)
    out["raw"] = dict(zip(uniq[:RAW_VALUES_PER_MASK].tolist(), cnt[:RAW_VALUES_PER_MASK].tolist()))
    out["raw_distinct"] = int(uniq.size)
    if (raw.shape[1], raw.shape[0]) != out["size"]:
        return {**out, "problem": ("size_mismatch", f"image is {out['size'][0]}x{out['size'][1]} but mask is "
                                   f"{raw.shape[1]}x{raw.shape[0]}", str(mask_path))}
    try:
        mapped = _map_mask(raw, label_map)
    except ValueError as exc:
        return {**out, "problem": ("mask_values", f"mask {exc}", str(mask_path))}
    values = mapped.ravel()
    bad = ((values >= num_classes) & (values != ignore)) | (values < 0)
    if bad.any():
        vals = sorted(np.unique(values[bad]).tolist())[:5]
        return {**out, "problem": ("mask_values", f"mask values {vals} are neither class ids 0..{num_classes - 1} "
                                   f"nor the ignore value {ignore}; give the dataset a label_map (raw value -> "
                                   f"class id; the report's suggested_label_map when it has one) or another "
                                   f"ignore_index", str(mask_path))}
    out["counts"] = np.bincount(values[values != ignore], minlength=num_classes)
    out["ignored"] = int((values == ignore).sum())
    return out


def _warnings(per_split_pixels: dict[str, np.ndarray], per_split_ignored: dict[str, int], names: list[str],
              raw_hist: Counter, raw_distinct_max: int, num_classes: int, ignore_index: int,
              label_map: CompiledLabelMap | None, train_split: str, mapped_by_layout: bool = False) -> list[dict]:
    """Setups that validate but cannot train well (issue 13): the dataset stays usable."""
    out: list[dict] = []
    train = per_split_pixels.get(train_split)
    if train is not None:
        empty = [i for i in range(num_classes) if train[i] == 0]
        if empty:
            shown = ", ".join(f"{i} ({names[i]})" for i in empty[:10])
            out.append({"kind": "empty_class", "split": train_split, "classes": empty,
                        "message": f"class(es) {shown} have no pixels in the {train_split} split: the model cannot "
                                   f"learn them. Check num_classes, ignore_index and the label map (a 0/255 mask with "
                                   f"ignore_index 255 ignores every foreground pixel)."})
    for split, pix in per_split_pixels.items():
        total = int(pix.sum()) + per_split_ignored.get(split, 0)
        if total and per_split_ignored.get(split, 0) / total >= MOSTLY_IGNORED_FRACTION:
            frac = per_split_ignored[split] / total
            out.append({"kind": "mostly_ignored", "split": split, "ignored_fraction": round(frac, 4),
                        "message": f"{frac:.1%} of the pixels of the {split} split are the ignore value "
                                   f"{ignore_index}: losses and metrics see almost nothing. Check ignore_index and "
                                   f"the label map."})
    distinct = max(len(raw_hist), raw_distinct_max)
    colour = label_map is not None and label_map.kind == "color"
    if distinct >= max(GREY_RAMP_MIN_VALUES, 2 * num_classes + 2):
        out.append({"kind": "grey_ramp", "distinct_values": distinct,
                    "message": f"the masks hold {distinct} distinct raw values for {num_classes} classes: they look "
                               f"like grey images or anti-aliased / JPEG-saved masks rather than label maps. Save masks "
                               f"as PNG with exact label values (nearest-neighbour resizing)."})
    elif not colour and label_map is None and not mapped_by_layout and len(raw_hist) > 2:
        vals = sorted(raw_hist)
        outside = [v for v in vals if v >= num_classes and v != ignore_index]
        if len(outside) * 2 > len(vals):
            shown = ", ".join(str(v) for v in vals[:12])
            out.append({"kind": "palette_like", "values": vals[:64],
                        "message": f"the masks hold the values {shown}{', ...' if len(vals) > 12 else ''}: most are "
                                   f"not class ids 0..{num_classes - 1}, like colours or a palette converted to grey. "
                                   f"Give the dataset a label_map (raw value -> class id)."})
    return out


def validate_dataset(root: str | Path, layout: str | Layout, num_classes: int, ignore_index: int,
                     splits: list[str] | None = None, class_names: list[str] | None = None,
                     max_bad_per_kind: int = MAX_BAD_PER_KIND, label_map: LabelMap | dict | None = None,
                     train_split: str = "train") -> dict:
    """Check every file; the report also carries ``raw_values`` (the most frequent raw mask values),
    ``warnings`` (setups that validate but cannot train well: an empty class in ``train_split``, a
    split almost all ignored, grey-ramp or palette-looking masks) and, when masks fail on their values
    and a label map would fix them, ``suggested_label_map``."""
    root = Path(root)
    lay = layout if isinstance(layout, Layout) else get_layout(layout)
    compiled = compile_label_map(label_map, num_classes, ignore_index) if label_map is not None else None
    lookup = compiled if compiled is not None else lay.label_map
    raw_hist: Counter = Counter()
    raw_distinct_max = 0
    per_split_pixels: dict[str, np.ndarray] = {}
    per_split_ignored: dict[str, int] = {}
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
        jobs = [(stem, ip, mp, num_classes, ignore_index, lookup) for stem, ip, mp in pairs]
        with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
            results = list(pool.map(_check_pair, jobs))
        sizes: Counter = Counter()
        good = gray = split_ignored = 0
        split_pixels = np.zeros(num_classes, dtype=np.int64)
        for r in results:
            if "raw" in r:
                if len(raw_hist) < RAW_VALUES_PER_MASK:
                    raw_hist.update(r["raw"])
                raw_distinct_max = max(raw_distinct_max, r["raw_distinct"])
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
            split_pixels += r["counts"]
            split_ignored += r["ignored"]
        if good:  # warnings speak of splits whose masks were read
            per_split_pixels[split], per_split_ignored[split] = split_pixels, split_ignored
        per_split[split] = {"images": len(results), "valid": good, "grayscale_images": gray, "sizes": dict(sizes)}
    labelled = int(class_pixels.sum())
    mean = csum / max(npix, 1)
    std = np.sqrt(np.maximum(csumsq / max(npix, 1) - mean ** 2, 0.0))
    warnings = _warnings(per_split_pixels, per_split_ignored, names, raw_hist, raw_distinct_max, num_classes,
                         ignore_index, compiled, train_split, mapped_by_layout=lay.label_map is not None)
    kind = compiled.kind if compiled is not None else "value"
    suggested = None
    if bad_counts.get("mask_values") and compiled is None and lay.label_map is None:
        suggested = suggest_label_map(sorted(raw_hist), num_classes, ignore_index)
        if suggested is not None:
            pairs_txt = ",".join(f"{k}={v}" for k, v in suggested["values"].items())
            warnings.append({"kind": "suggested_label_map", "label_map": suggested,
                             "message": f"the masks hold exactly the raw values {', '.join(map(str, sorted(raw_hist)))}: "
                                        f"declare label_map {json.dumps(suggested)} (CLI: --label-map {pairs_txt}) "
                                        f"to map them to classes 0..{len(suggested['values']) - 1}"})
    return {
        "ok": not bad_counts,
        "label_map": LabelMap.model_validate(label_map).model_dump(mode="json") if label_map is not None else None,
        "raw_values": {format_raw(kind, int(v)): int(c) for v, c in raw_hist.most_common(RAW_VALUES_REPORTED)},
        "warnings": warnings, "suggested_label_map": suggested,
        "layout": lay.name, "num_classes": num_classes, "ignore_index": ignore_index, "class_names": names,
        "splits": per_split,
        "class_pixels": {n: int(c) for n, c in zip(names, class_pixels)},
        "class_frequency": {n: (float(c) / labelled if labelled else 0.0) for n, c in zip(names, class_pixels)},
        "ignored_pixels": ignored,
        "channel_mean": [round(float(v), 5) for v in mean], "channel_std": [round(float(v), 5) for v in std],
        "grayscale": "grayscale images are accepted and used as 3 identical channels",
        "bad_counts": dict(bad_counts), "bad_files": dict(bad),
    }


DATASET_SAMPLE_WIDTH = 320
"""Width (pixels) a dataset sample's image is scaled down to, at most (the mask with nearest neighbours)."""
DATASET_SAMPLE_NAME = "sample_{i}.png"
"""Artifact name of the validation job's i-th sample (0-based)."""


def save_dataset_samples(root: str | Path, layout: str | Layout, num_classes: int, ignore_index: int,
                         palette: list[list[int]], out_dir: Path, n: int, split: str = "train",
                         label_map: LabelMap | dict | None = None) -> dict:
    """The first ``n`` valid pairs of ``split`` as PNGs (the image beside the image with its mask's class
    colours over it, at most :data:`DATASET_SAMPLE_WIDTH` wide): what a user looks at to see that the
    masks mean what the classes say. Returns ``{"files", "images", "split"}``."""
    from .overlay import overlay, side_by_side

    root = Path(root)
    lay = layout if isinstance(layout, Layout) else get_layout(layout)
    compiled = compile_label_map(label_map, num_classes, ignore_index) if label_map is not None else None
    lookup = compiled if compiled is not None else lay.label_map
    files: list[str] = []
    stems: list[str] = []
    if n <= 0 or not lay.has_split(root, split):
        return {"files": files, "images": stems, "split": split}
    try:
        pairs = lay.list_split(root, split, False)
    except ValueError:
        return {"files": files, "images": stems, "split": split}
    for stem, ip, mp in pairs:
        if len(files) >= n:
            break
        try:
            with Image.open(ip) as im:
                img = im.convert("RGB")
            mask = _map_mask(_raw_mask(mp, lookup), lookup)
        except (UnidentifiedImageError, OSError, ValueError):
            continue  # a bad pair is the report's business; samples show good ones
        if (mask.shape[1], mask.shape[0]) != img.size or (((mask >= num_classes) | (mask < 0)) & (mask != ignore_index)).any():
            continue
        w, h = img.size
        if w > DATASET_SAMPLE_WIDTH:
            size = (DATASET_SAMPLE_WIDTH, max(1, round(h * DATASET_SAMPLE_WIDTH / w)))
            img = img.resize(size, Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(size, Image.NEAREST))
        arr = np.asarray(img, dtype=np.uint8)
        name = DATASET_SAMPLE_NAME.format(i=len(files))
        Image.fromarray(side_by_side(arr, overlay(arr, mask, palette, ignore_index))).save(out_dir / name, optimize=True)
        files.append(name)
        stems.append(stem)
    return {"files": files, "images": stems, "split": split}
