"""Segmentation data: decode once, cache uint8 tensors, batch and augment on the device.

Layouts (``DatasetRef.layout``): ``camvid``, ``folder`` and ``cityscapes``, registered in
:mod:`core.layouts` with their detection and label conventions.

:func:`load_split` returns a :class:`SegData` of uint8 images ``[N,3,H,W]`` and masks ``[N,H,W]``
resized to a fixed (H, W) (images bilinear, masks nearest). With ``cache_dir`` the prepared tensors
are stored as safetensors keyed by the dataset's files (paths, sizes, mtimes) and the resolution,
so a second load decodes nothing.

:class:`DeviceLoader` keeps those uint8 tensors on the training device and produces normalised
float batches with flips, scale jitter and crops computed there, drawing every random number from
a CPU ``torch.Generator`` it owns; ``state_dict()`` / ``load_state_dict()`` capture the generator,
the current permutation and the position in it, so a resumed run draws identical batches.

Normalisation is data (:class:`core.specs.Normalization`, issue 12): the loaders take the mean/std a
job chose (the service reads them from the dataset's validation report); without one they use the
CamVid RGB statistics (:data:`MEAN_RGB`, :data:`STD_RGB`, the same as ``shared/bench/peer_camvid.py``).
The record a model ships with (:class:`core.preprocess.Preprocessing`) applies exactly this
pipeline to one image: RGB conversion (grayscale replicated to 3 channels, alpha dropped), PIL
bilinear resize to the model's resolution, ``(pixel - 255*mean) / (255*std)`` in float32.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .labelmap import CompiledLabelMap, compile_label_map, pack_rgb
from .layouts import CAMVID_CLASSES, IMAGE_EXTENSIONS, MASK_EXTENSION, get_layout  # noqa: F401 (re-exported)
from .specs import CAMVID_MEAN_RGB, CAMVID_STD_RGB, DatasetRef, Normalization

SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
"""PIL modes accepted for masks: label values, not colours."""

MEAN_RGB: tuple[float, float, float] = CAMVID_MEAN_RGB
"""Per-channel RGB mean in [0, 1] used to normalise inputs where no :class:`Normalization` is given (CamVid)."""
STD_RGB: tuple[float, float, float] = CAMVID_STD_RGB
"""Per-channel RGB standard deviation in [0, 1] used where no :class:`Normalization` is given (CamVid)."""

SPLIT_JOIN = "+"
"""Separator of joined splits, e.g. ``"train+val"``."""
DECODE_WORKERS = max(1, min(8, os.cpu_count() or 1))
"""Threads decoding images in parallel (PIL releases the GIL while decoding)."""
CACHE_FORMAT_VERSION = 1
"""Bumped whenever the cached tensor layout changes, so stale caches are never read."""
FLIP_PROBABILITY = 0.5
"""Chance of a horizontal flip per image when flips are on."""


@dataclass
class SegData:
    """A prepared split: uint8 tensors at one resolution plus the label convention."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    masks: torch.Tensor  # uint8 [N, H, W] (int32 when ignore_index/num_classes exceed 255)
    stems: list[str]
    num_classes: int
    ignore_index: int
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[2])

    @property
    def width(self) -> int:
        return int(self.images.shape[3])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "SegData":
        """The images at ``indices`` (in that order), sharing the label convention."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return SegData(self.images[idx], self.masks[idx], [self.stems[int(i)] for i in idx],
                       self.num_classes, self.ignore_index, list(self.class_names))


# --------------------------------------------------------------------------------------------
# Listing and decoding
# --------------------------------------------------------------------------------------------

def _mask_dtype(num_classes: int, ignore_index: int) -> torch.dtype:
    return torch.uint8 if max(num_classes - 1, ignore_index) <= 255 else torch.int32


def _class_names(ref: DatasetRef) -> list[str]:
    if ref.class_names is not None:
        if len(ref.class_names) != ref.num_classes:
            raise ValueError(f"class_names has {len(ref.class_names)} names for {ref.num_classes} classes")
        return list(ref.class_names)
    layout = get_layout(ref.layout)
    if layout.class_names and ref.num_classes == len(layout.class_names):
        return list(layout.class_names)
    return [f"class_{i}" for i in range(ref.num_classes)]


def list_pairs(ref: DatasetRef, split: str) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) of one split (no '+'), sorted by stem, capped at ``ref.limit``.

    Raises ValueError when the split directory is missing or empty, or when an image has no mask.
    """
    pairs = sorted(get_layout(ref.layout).list_split(Path(ref.root), split), key=lambda t: t[0])
    return pairs[: ref.limit] if ref.limit is not None else pairs


class MaskChannelsError(ValueError):
    """A mask that is not a single-channel label image."""


def mask_values(mask_path: Path, label_map: np.ndarray | CompiledLabelMap | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(raw, mapped) int64 arrays [H, W] of one mask.

    ``raw`` holds the stored values (grey levels, label ids or palette indices; colours packed as
    0xRRGGBB when ``label_map`` is a colour map); ``mapped`` the class ids / ignore value after the
    dataset's label map (a :class:`core.labelmap.CompiledLabelMap`) or the layout's lookup table
    (an array, e.g. Cityscapes ids), or ``raw`` itself without one. Raises
    :class:`MaskChannelsError` for a colour mask without a colour map and ValueError for values
    the map does not cover."""
    colour = isinstance(label_map, CompiledLabelMap) and label_map.kind == "color"
    with Image.open(mask_path) as mk:
        if colour:
            if mk.mode not in SINGLE_CHANNEL_MODES + ("RGB", "RGBA", "LA"):
                raise MaskChannelsError(f"mask {mask_path} has mode {mk.mode}; expected an RGB or palette mask")
            raw = pack_rgb(np.asarray(mk.convert("RGB")))
        else:
            if mk.mode not in SINGLE_CHANNEL_MODES:
                raise MaskChannelsError(
                    f"mask {mask_path} has mode {mk.mode}; expected a single-channel label PNG. For colour-coded "
                    "masks give the dataset a label_map with colour keys, e.g. {\"values\": {\"#000000\": 0, "
                    "\"#ff0000\": 1}}")
            raw = np.asarray(mk).astype(np.int64)
    if label_map is None:
        return raw, raw
    if isinstance(label_map, CompiledLabelMap):
        try:
            return raw, label_map.apply(raw)
        except ValueError as exc:
            raise ValueError(f"mask {mask_path} {exc}") from None
    if raw.min() < 0 or raw.max() >= len(label_map):
        raise ValueError(f"mask {mask_path} holds label ids outside 0..{len(label_map) - 1}")
    return raw, label_map[raw].astype(np.int64)


def read_mask(mask_path: Path, label_map: np.ndarray | CompiledLabelMap | None = None) -> Image.Image:
    """A single-channel label image (palette indices kept), with the dataset's or layout's label map applied."""
    if label_map is None:
        with Image.open(mask_path) as mk:
            if mk.mode not in SINGLE_CHANNEL_MODES:
                mask_values(mask_path)  # raises the MaskChannelsError with its hint
            return mk.copy()
    _, mapped = mask_values(mask_path, label_map)
    return Image.fromarray(mapped.astype(np.int32), mode="I")


def label_lookup(ref: DatasetRef) -> np.ndarray | CompiledLabelMap | None:
    """The map applied to ``ref``'s masks: its own label map, else its layout's (Cityscapes ids), else none."""
    if ref.label_map is not None:
        return compile_label_map(ref.label_map, ref.num_classes, ref.ignore_index)
    return get_layout(ref.layout).label_map


def _decode_pair(args: tuple[Path, Path, int, int, int, int, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    img_path, mask_path, height, width, num_classes, ignore_index, label_map = args
    with Image.open(img_path) as im:
        img = im.convert("RGB")  # grayscale images are accepted and replicated to 3 channels
    mask = read_mask(mask_path, label_map)
    if img.size != mask.size:
        raise ValueError(f"image {img_path} is {img.size} but mask {mask_path} is {mask.size}")
    full = np.asarray(mask).astype(np.int64)  # checked at full resolution: resizing may hide a pixel
    bad = ((full >= num_classes) & (full != ignore_index)) | (full < 0)
    if bad.any():
        vals = sorted(set(np.unique(full[bad]).tolist()))[:5]
        raise ValueError(f"mask {mask_path} holds values {vals} outside 0..{num_classes - 1} "
                         f"and not the ignore_index {ignore_index}; give the dataset a label_map "
                         f"(raw value -> class id) or another ignore_index")
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
        mask = mask.resize((width, height), Image.NEAREST)
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    y = np.asarray(mask).astype(np.int64)
    return np.ascontiguousarray(x), y


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

def _cache_key(ref: DatasetRef, split: str, pairs: list[tuple[str, Path, Path]], height: int, width: int) -> str:
    h = hashlib.sha256()
    head = {"v": CACHE_FORMAT_VERSION, "root": os.path.realpath(ref.root), "layout": ref.layout, "split": split,
            "h": height, "w": width, "limit": ref.limit, "nc": ref.num_classes, "ig": ref.ignore_index,
            "lm": ref.label_map.model_dump(mode="json") if ref.label_map is not None else None}
    h.update(json.dumps(head, sort_keys=True).encode())
    for stem, ip, mp in pairs:
        for p in (ip, mp):
            st = p.stat()
            h.update(f"{stem}|{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_path(cache_dir: Path, split: str, height: int, width: int, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in split)
    return Path(cache_dir) / f"{safe}_{height}x{width}_{key[:20]}.safetensors"


def _load_cached(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            return f.get_tensor("images"), f.get_tensor("masks"), json.loads(meta["stems"])
    except Exception:  # a corrupt or foreign cache file is rebuilt, never trusted
        return None


def _save_cached(path: Path, key: str, images: torch.Tensor, masks: torch.Tensor, stems: list[str]) -> None:
    from safetensors.torch import save

    from .checkpoint import atomic_write_bytes

    blob = save({"images": images.contiguous(), "masks": masks.contiguous()},
                metadata={"key": key, "stems": json.dumps(stems)})
    atomic_write_bytes(path, blob)


def _load_one_split(ref: DatasetRef, split: str, height: int, width: int,
                    cache_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    pairs = list_pairs(ref, split)
    cache_path = key = None
    if cache_dir is not None:
        key = _cache_key(ref, split, pairs, height, width)
        cache_path = _cache_path(Path(cache_dir), split, height, width, key)
        if cache_path.is_file():
            hit = _load_cached(cache_path, key)
            if hit is not None:
                return hit
    label_map = label_lookup(ref)
    jobs = [(ip, mp, height, width, ref.num_classes, ref.ignore_index, label_map) for _, ip, mp in pairs]
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        decoded = list(pool.map(_decode_pair, jobs))
    images = torch.from_numpy(np.stack([x for x, _ in decoded]))
    masks = torch.from_numpy(np.stack([y for _, y in decoded])).to(_mask_dtype(ref.num_classes, ref.ignore_index))
    stems = [s for s, _, _ in pairs]
    if cache_path is not None and key is not None:
        _save_cached(cache_path, key, images, masks, stems)
    return images, masks, stems


def load_split(ref: DatasetRef, split: str, height: int, width: int, cache_dir: Path | None = None) -> SegData:
    """Decode a split (or '+'-joined splits, e.g. ``"train+val"``) at (height, width) into uint8 tensors.

    ``ref.limit`` keeps the first N sorted stems of each split. With ``cache_dir`` the prepared
    tensors are read from / written to a safetensors file keyed by the dataset root's real path, the
    file list with sizes and mtimes, the split, the resolution and the limit.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"resolution must be positive, got {height}x{width}")
    parts = [s.strip() for s in split.split(SPLIT_JOIN)]
    if not all(parts):
        raise ValueError(f"bad split expression {split!r}")
    loaded = [_load_one_split(ref, s, height, width, cache_dir) for s in parts]
    images = torch.cat([x for x, _, _ in loaded]) if len(loaded) > 1 else loaded[0][0]
    masks = torch.cat([y for _, y, _ in loaded]) if len(loaded) > 1 else loaded[0][1]
    stems = [s for _, _, st in loaded for s in st]
    return SegData(images, masks, stems, ref.num_classes, ref.ignore_index, _class_names(ref))


# --------------------------------------------------------------------------------------------
# Batching and augmentation on the device
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Augment:
    """On-device training augmentation; the defaults do nothing."""

    flip: bool = False
    scale_min: float = 1.0
    scale_max: float = 1.0
    crop_height: int = 0  # 0 = the data's full height
    crop_width: int = 0  # 0 = the data's full width

    def __post_init__(self) -> None:
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if self.crop_height < 0 or self.crop_width < 0:
            raise ValueError("crop sizes must be >= 0")

    @property
    def jitters(self) -> bool:
        return self.scale_min != 1.0 or self.scale_max != 1.0


def normalize(images: torch.Tensor, norm: Normalization | None = None) -> torch.Tensor:
    """uint8 NCHW RGB -> float32 ``(x - 255*mean) / (255*std)``, with ``norm`` (default: CamVid's
    :data:`MEAN_RGB` / :data:`STD_RGB`). :meth:`core.preprocess.Preprocessing.apply` computes the same
    float32 values for one image with numpy."""
    mean_v, std_v = (norm.mean, norm.std) if norm is not None else (MEAN_RGB, STD_RGB)
    mean = torch.tensor(mean_v, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(std_v, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() - mean) / std


class DeviceLoader:
    """Batches of ``(x float32 normalised NCHW, y int64 NHW)`` built on ``device``.

    The uint8 images/masks (of ``indices``, or all) are copied to ``device`` once. Batches are drawn
    from an endless stream of epoch permutations (a new one when a pass is used up; with
    ``drop_last`` a pass holds ``len(self)`` full batches). ``epoch()`` yields one pass,
    ``infinite()`` never ends, ``ordered()`` walks the data in order without randomness and
    without touching the stream. All random numbers come from ``self.generator`` (CPU).
    """

    def __init__(self, data: SegData, batch_size: int, device: torch.device | str, *,
                 indices: Sequence[int] | torch.Tensor | None = None, augment: Augment | None = None,
                 shuffle: bool = True, drop_last: bool = True, seed: int = 0,
                 normalization: Normalization | None = None) -> None:
        self.device = torch.device(device)
        self.normalization = normalization
        idx = torch.arange(len(data)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError("DeviceLoader needs at least one image")
        self.images = data.images[idx].to(self.device)
        self.masks = data.masks[idx].to(self.device)
        self.ignore_index = data.ignore_index
        self.num_classes = data.num_classes
        self.class_names = list(data.class_names)
        self.n = int(idx.numel())
        self.batch_size = min(int(batch_size), self.n)  # a subset smaller than a batch is one batch
        self.augment = augment or Augment()
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self.passes = 0  # permutations drawn so far
        self.channels_last = self.device.type == "cuda"

    def __len__(self) -> int:
        """Batches in one pass."""
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator state, current permutation and position: tensors only (weights_only-safe)."""
        perm = self._perm if self._perm is not None else torch.empty(0, dtype=torch.long)
        return {"generator": self.generator.get_state(), "perm": perm.clone(),
                "pos": torch.tensor(self._pos, dtype=torch.long), "passes": torch.tensor(self.passes, dtype=torch.long),
                "n": torch.tensor(self.n, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"loader state is for {int(state['n'])} images, this loader holds {self.n}")
        self.generator.set_state(state["generator"].to("cpu", torch.uint8))
        perm = state["perm"].to("cpu", torch.long)
        self._perm = perm if perm.numel() else None
        self._pos = int(state["pos"])
        self.passes = int(state["passes"])

    # -- iteration ------------------------------------------------------------------------
    def _next_indices(self) -> torch.Tensor:
        end_ok = self._perm is not None and (
            self._pos + self.batch_size <= self.n if self.drop_last else self._pos < self.n)
        if not end_ok:
            self._perm = (torch.randperm(self.n, generator=self.generator) if self.shuffle
                          else torch.arange(self.n))
            self._pos = 0
            self.passes += 1
        assert self._perm is not None
        sel = self._perm[self._pos: self._pos + self.batch_size]
        self._pos += int(sel.numel())
        return sel

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next augmented batch of the stream."""
        sel = self._next_indices()
        return self._augment(sel)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``len(self)`` batches: one full pass when the stream is at a pass boundary."""
        for _ in range(len(self)):
            yield self.next_batch()

    def infinite(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches, reshuffling at each pass (persistent across calls: state lives in self)."""
        while True:
            yield self.next_batch()

    def ordered(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """All images in order, unaugmented, last batch partial; draws no random numbers."""
        bs = batch_size or self.batch_size
        for i in range(0, self.n, bs):
            x = self._finish_x(normalize(self.images[i:i + bs], self.normalization))
            yield x, self.masks[i:i + bs].long()

    # -- augmentation ---------------------------------------------------------------------
    def _finish_x(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def _augment(self, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aug, b = self.augment, int(sel.numel())
        g = self.generator
        # Fixed number of draws per batch whatever the options, so the stream does not depend on them.
        flips = (torch.rand(b, generator=g) < FLIP_PROBABILITY) & aug.flip
        scales = torch.rand(b, generator=g) * (aug.scale_max - aug.scale_min) + aug.scale_min
        offsets = torch.rand(b, 2, generator=g)
        sel_d = sel.to(self.device)
        x = normalize(self.images.index_select(0, sel_d), self.normalization)
        y = self.masks.index_select(0, sel_d).long()
        if aug.flip:
            f = flips.to(self.device).view(b, 1, 1, 1)
            x = torch.where(f, x.flip(-1), x)
            y = torch.where(f.view(b, 1, 1), y.flip(-1), y)
        h, w = x.shape[-2:]
        ch, cw = aug.crop_height or h, aug.crop_width or w
        if not aug.jitters and (ch, cw) == (h, w):
            return self._finish_x(x), y
        xs, ys = [], []
        for i in range(b):
            xi, yi = x[i:i + 1], y[i:i + 1]
            if aug.jitters:
                s = float(scales[i])
                size = (max(1, round(h * s)), max(1, round(w * s)))
                xi = F.interpolate(xi, size=size, mode="bilinear", align_corners=False)
                yi = F.interpolate(yi[:, None].float(), size=size, mode="nearest")[:, 0].long()
            xi, yi = self._pad_crop(xi, yi, ch, cw, float(offsets[i, 0]), float(offsets[i, 1]))
            xs.append(xi)
            ys.append(yi)
        return self._finish_x(torch.cat(xs)), torch.cat(ys)

    def _pad_crop(self, x: torch.Tensor, y: torch.Tensor, ch: int, cw: int, uy: float,
                  ux: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad (image with 0 = the mean, mask with ignore) up to the crop, then crop at (uy, ux) in [0,1)."""
        h, w = x.shape[-2:]
        ph, pw = max(0, ch - h), max(0, cw - w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=self.ignore_index)
            h, w = x.shape[-2:]
        top = min(int(uy * (h - ch + 1)), h - ch)
        left = min(int(ux * (w - cw + 1)), w - cw)
        return x[..., top:top + ch, left:left + cw], y[..., top:top + ch, left:left + cw]
