"""Dataset directory layouts: one registry entry per layout, with detection and label conventions.

- ``camvid``: ``<split>/<stem>.<img>`` + ``<split>annot/<stem>.png`` (SegNet CamVid, 11 classes, 11 = void)
- ``folder``: ``<split>/images/<stem>.<img>`` + ``<split>/masks/<stem>.png``
- ``cityscapes``: ``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` +
  ``gtFine/<split>/<city>/<id>_gtFine_labelIds.png``, label ids mapped to the 19 train ids, 255 ignored
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File name endings accepted as images (case-insensitive)."""
MASK_EXTENSION = ".png"
"""Masks are single-channel PNGs (8 or 16 bit, or palette indices)."""
KNOWN_SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names looked for by detection and validation."""

Pair = tuple[str, Path, Path]  # (stem, image path, mask path)


class OutsideRootError(ValueError):
    """A split directory, image or mask that resolves (symlinks followed) outside the dataset root."""


def confined(root: Path, path: Path, real_root: Path | None = None) -> Path:
    """``path`` if it resolves (symlinks included) to a place under the resolved ``root``, else
    :class:`OutsideRootError`. The message names the path relative to the root, never where a
    link points."""
    real_root = real_root or Path(root).resolve()
    real = Path(path).resolve()
    if real != real_root and real_root not in real.parents:
        try:
            shown = Path(path).relative_to(root)
        except ValueError:
            shown = Path(Path(path).name)
        raise OutsideRootError(f"{shown} resolves outside the dataset root (a link or '..'); refused")
    return path


class Confiner:
    """Every directory and file a layout opens goes through this first (one per listing): a
    directory is resolved once; a file in a confined directory is resolved only when it is itself
    a link (otherwise its real path is its directory's plus its name)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.real_root = self.root.resolve()
        self._dirs: set[Path] = set()

    def dir(self, d: Path) -> Path:
        if d not in self._dirs:
            confined(self.root, d, self.real_root)
            self._dirs.add(d)
        return d

    def file(self, p: Path) -> Path:
        self.dir(p.parent)
        if p.is_symlink():
            confined(self.root, p, self.real_root)
        return p


@dataclass(frozen=True)
class Layout:
    name: str
    expected: str  # what the layout looks like, for error messages
    list_split: Callable[[Path, str, bool], list[Pair]]  # (root, split, strict); strict raises on a missing mask
    has_split: Callable[[Path, str], bool]
    num_classes: int | None = None  # the layout's own convention, when it has one
    ignore_index: int | None = None
    class_names: tuple[str, ...] | None = None
    label_map: np.ndarray | None = None  # lookup table applied to raw mask values (e.g. Cityscapes ids)
    palette: tuple[tuple[int, int, int], ...] | None = None  # RGB colour per class id, for masks and overlays

    def splits(self, root: Path) -> list[str]:
        return [s for s in KNOWN_SPLITS if self.has_split(root, s)]


LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    if layout.name in LAYOUTS:
        raise ValueError(f"layout {layout.name!r} registered twice")
    LAYOUTS[layout.name] = layout
    return layout


def _images_in(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: p.name)


def _pairs_by_stem(root: Path, split: str, img_dir: Path, mask_dir: Path, strict: bool = True) -> list[Pair]:
    guard = Confiner(root)
    guard.dir(img_dir)
    guard.dir(mask_dir)
    if not img_dir.is_dir():
        raise ValueError(f"split {split!r}: image directory {img_dir} does not exist")
    images = _images_in(img_dir)
    if not images:
        raise ValueError(f"split {split!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {img_dir}")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"split {split!r}: several images share the stem(s) {dup[:5]} in {img_dir}")
    pairs = []
    for p in images:
        m = mask_dir / f"{p.stem}{MASK_EXTENSION}"
        guard.file(p)
        guard.file(m)
        if strict and not m.is_file():
            raise ValueError(f"split {split!r}: mask {m} for image {p} does not exist")
        pairs.append((p.stem, p, m))
    return pairs


CAMVID_CLASSES: tuple[str, ...] = ("sky", "building", "pole", "road", "pavement", "tree",
                                   "sign_symbol", "fence", "car", "pedestrian", "bicyclist")
"""Class names of the SegNet CamVid split, index = class id (11 = void is not a class)."""
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
"""The SegNet CamVid colours of :data:`CAMVID_CLASSES`, index = class id."""

register_layout(Layout(
    "camvid", "<split>/<stem>.jpg with <split>annot/<stem>.png",
    lambda root, split, strict=True: _pairs_by_stem(root, split, root / split, root / f"{split}annot", strict),
    lambda root, split: (root / split).is_dir() and (root / f"{split}annot").is_dir(),
    num_classes=11, ignore_index=11, class_names=CAMVID_CLASSES, palette=CAMVID_PALETTE))

register_layout(Layout(
    "folder", "<split>/images/<stem>.<ext> with <split>/masks/<stem>.png",
    lambda root, split, strict=True: _pairs_by_stem(root, split, root / split / "images", root / split / "masks", strict),
    lambda root, split: (root / split / "images").is_dir() and (root / split / "masks").is_dir()))


# -- Cityscapes ----------------------------------------------------------------------------------
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_TRAIN_IDS: dict[int, int] = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
"""Cityscapes label id -> train id (the 19 evaluated classes); every other id is ignored (255)."""
CITYSCAPES_IGNORE = 255
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))
"""The official Cityscapes colours of the 19 train ids."""
_IMG_SUFFIX, _MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, CITYSCAPES_IGNORE, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


def _cityscapes_pairs(root: Path, split: str, strict: bool = True) -> list[Pair]:
    img_root, mask_root = root / "leftImg8bit" / split, root / "gtFine" / split
    guard = Confiner(root)
    guard.dir(img_root)
    guard.dir(mask_root)
    if not img_root.is_dir():
        raise ValueError(f"split {split!r}: image directory {img_root} does not exist")
    images = sorted(img_root.glob(f"*/*{_IMG_SUFFIX}"))
    if not images:
        raise ValueError(f"split {split!r}: no <city>/*{_IMG_SUFFIX} under {img_root}")
    pairs = []
    for p in images:
        ident = p.name[: -len(_IMG_SUFFIX)]
        m = mask_root / p.parent.name / f"{ident}{_MASK_SUFFIX}"
        guard.file(p)
        guard.file(m)
        if strict and not m.is_file():
            raise ValueError(f"split {split!r}: mask {m} for image {p} does not exist")
        pairs.append((ident, p, m))
    return pairs


register_layout(Layout(
    "cityscapes", f"leftImg8bit/<split>/<city>/*{_IMG_SUFFIX} with gtFine/<split>/<city>/*{_MASK_SUFFIX}",
    _cityscapes_pairs,
    lambda root, split: (root / "leftImg8bit" / split).is_dir() and (root / "gtFine" / split).is_dir(),
    num_classes=len(CITYSCAPES_CLASSES), ignore_index=CITYSCAPES_IGNORE, class_names=CITYSCAPES_CLASSES,
    label_map=_cityscapes_lut(), palette=CITYSCAPES_PALETTE))


def default_palette(n: int) -> list[list[int]]:
    """``n`` distinct RGB colours (the PASCAL VOC bit-interleaved colour map; unique for n <= 256)."""
    out = []
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def palette_for(layout: str, num_classes: int) -> list[list[int]]:
    """RGB colour per class id: the layout's own palette when it has one for ``num_classes``, else
    :func:`default_palette`."""
    own = LAYOUTS[layout].palette if layout in LAYOUTS else None
    if own is not None and len(own) == num_classes:
        return [list(c) for c in own]
    return default_palette(num_classes)


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}") from None


def detect_layout(root: str | Path) -> Layout:
    """The layout whose structure ``root`` has (at least one known split), or a ValueError saying
    what each layout expects."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    found = [lay for lay in LAYOUTS.values() if lay.splits(root)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ValueError(f"{root} matches several layouts ({', '.join(lay.name for lay in found)}); name one")
    expected = "; ".join(f"{lay.name}: {lay.expected}" for lay in LAYOUTS.values())
    raise ValueError(f"no known layout under {root} (splits looked for: {', '.join(KNOWN_SPLITS)}). "
                     f"Expected one of: {expected}")
