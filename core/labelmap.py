"""Label maps: how a dataset's raw mask values become class ids (issue 13).

A :class:`core.specs.LabelMap` is data (JSON stored with the dataset): ``values`` maps raw mask
values to class ids, ``ignore`` lists raw values that become the dataset's ``ignore_index``, and
``unlisted`` says what happens to any other raw value (``error``: the mask is invalid and the
message names the values; ``ignore``). Keys are either grey levels / label ids (``"255"``, for
single-channel masks, palette PNGs read as their indices) or colours (``"#800080"`` or
``"128,0,128"``, for RGB or palette-coloured masks). A map uses one kind of key only.

Examples::

    {"values": {"0": 0, "255": 1}}                                     # 0/255 binary masks
    {"values": {"#000000": 0, "#800000": 1}, "ignore": ["#ffffff"]}    # palette-coloured masks
    {"values": {"7": 0, "26": 1}, "unlisted": "ignore"}                # sparse ids

This module needs numpy and PIL only (no torch); :func:`compile_label_map` turns the document
into a :class:`CompiledLabelMap` that :func:`core.data.read_mask` applies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .specs import LabelMap

_COLOR_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")
_COLOR_TRIPLE = re.compile(r"^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$")
_INT = re.compile(r"^\s*(\d{1,5})\s*$")
MAX_RAW_VALUE = 65535
"""Largest raw grey level / label id a single-channel map may name (16-bit PNG)."""


class LabelMapError(ValueError):
    """A label map document that cannot be used; the message names the key."""


def parse_key(key: str | int) -> tuple[str, int]:
    """``("value", n)`` for a grey level / label id, ``("color", 0xRRGGBB)`` for a colour."""
    if isinstance(key, int):
        if not 0 <= key <= MAX_RAW_VALUE:
            raise LabelMapError(f"raw value {key} outside 0..{MAX_RAW_VALUE}")
        return "value", key
    if m := _INT.match(key):
        v = int(m.group(1))
        if v > MAX_RAW_VALUE:
            raise LabelMapError(f"raw value {key!r} outside 0..{MAX_RAW_VALUE}")
        return "value", v
    if m := _COLOR_HEX.match(key.strip()):
        return "color", int(m.group(1), 16)
    if m := _COLOR_TRIPLE.match(key):
        rgb = [int(g) for g in m.groups()]
        if any(c > 255 for c in rgb):
            raise LabelMapError(f"colour {key!r}: each channel must be 0..255")
        return "color", (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
    raise LabelMapError(f"key {key!r} is neither a raw value (e.g. \"255\") nor a colour (\"#rrggbb\" or \"r,g,b\")")


def format_raw(kind: str, v: int) -> str:
    return f"#{v:06x}" if kind == "color" else str(v)


@dataclass(frozen=True)
class CompiledLabelMap:
    """A label map resolved against a dataset's ``num_classes`` and ``ignore_index``."""

    kind: str  # "value" (single-channel masks) or "color" (RGB / palette-coloured masks)
    keys: np.ndarray  # sorted raw keys (int64)
    targets: np.ndarray  # class id or ignore_index per key
    unlisted_ignored: bool
    ignore_index: int

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw values (int64, colours packed as 0xRRGGBB) -> class ids / ignore_index (int64).

        Raises ValueError naming at most 5 unlisted raw values (when ``unlisted`` is ``error``)."""
        flat = raw.reshape(-1)
        pos = np.searchsorted(self.keys, flat)
        pos_c = np.minimum(pos, len(self.keys) - 1)
        hit = self.keys[pos_c] == flat
        out = np.where(hit, self.targets[pos_c], self.ignore_index)
        if not self.unlisted_ignored and not hit.all():
            missing = np.unique(flat[~hit])[:5].tolist()
            shown = ", ".join(format_raw(self.kind, int(v)) for v in missing)
            raise ValueError(f"holds raw values [{shown}] that the label map does not list; add them to "
                             f"label_map.values (a class) or label_map.ignore, or set label_map.unlisted to 'ignore'")
        return out.reshape(raw.shape)


def compile_label_map(lm: LabelMap | dict, num_classes: int, ignore_index: int) -> CompiledLabelMap:
    """Check a label map against the dataset's classes; raises :class:`LabelMapError` naming the problem."""
    lm = lm if isinstance(lm, LabelMap) else LabelMap.model_validate(lm)
    kinds: set[str] = set()
    pairs: dict[int, int] = {}
    for key, cls in lm.values.items():
        kind, raw = parse_key(key)
        kinds.add(kind)
        if not 0 <= cls < num_classes:
            raise LabelMapError(f"label_map.values[{key!r}] = {cls} is not a class id 0..{num_classes - 1}")
        if raw in pairs and pairs[raw] != cls:
            raise LabelMapError(f"raw value {key!r} is listed twice with different classes")
        pairs[raw] = cls
    for key in lm.ignore:
        kind, raw = parse_key(key)
        kinds.add(kind)
        if raw in pairs and pairs[raw] != ignore_index:
            raise LabelMapError(f"raw value {key!r} is both a class (label_map.values) and ignored (label_map.ignore)")
        pairs[raw] = ignore_index
    if len(kinds) > 1:
        raise LabelMapError("label_map mixes raw values and colours; use one kind of key")
    if not pairs:
        raise LabelMapError("label_map lists no raw value")
    keys = np.array(sorted(pairs), dtype=np.int64)
    targets = np.array([pairs[int(k)] for k in keys], dtype=np.int64)
    return CompiledLabelMap(kinds.pop(), keys, targets, lm.unlisted == "ignore", ignore_index)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int64 [H, W] of 0xRRGGBB."""
    a = rgb.astype(np.int64)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]


def suggest_label_map(raw_values: list[int], num_classes: int, ignore_index: int, kind: str = "value") -> dict | None:
    """A label map that would make masks holding exactly ``raw_values`` valid, or None.

    Two values (e.g. 0/255 binary masks): the lower is class 0, the higher class 1. Otherwise,
    when the number of distinct values equals ``num_classes`` (a palette or sparse ids), the
    values in increasing order become classes 0..num_classes-1."""
    vals = sorted(int(v) for v in raw_values if not (kind == "value" and v == ignore_index))
    if len(vals) == 2 or len(vals) == num_classes:
        if len(vals) > num_classes:
            return None
        return {"values": {format_raw(kind, v): i for i, v in enumerate(vals)}}
    return None


def parse_label_map_text(text: str) -> LabelMap:
    """A label map from the command line / an upload's query string: JSON (``{"values": {...}}``) or the
    compact form ``RAW=CLASS,...`` where CLASS may be ``ignore`` (e.g. ``0=0,255=1`` or
    ``#000000=0,#ff0000=1,#ffffff=ignore``; add ``*=ignore`` to ignore every unlisted value)."""
    import json

    text = text.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabelMapError(f"label map is not valid JSON: {exc.msg} at character {exc.pos}") from None
        except RecursionError:
            raise LabelMapError("label map JSON is nested too deeply") from None
        if not isinstance(doc, dict):
            raise LabelMapError("label map JSON must be an object: {\"values\": {RAW: CLASS}, ...}")
        return LabelMap.model_validate(doc)
    values: dict[str, int] = {}
    ignore: list[str] = []
    unlisted = "error"
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.count("=") != 1:
            raise LabelMapError(f"label map entry {part!r}: expected RAW=CLASS (e.g. 255=1) or RAW=ignore "
                                f"(colours as #rrggbb in this form)")
        raw, _, cls = part.rpartition("=")
        raw, cls = raw.strip(), cls.strip()
        if raw == "*":
            if cls != "ignore":
                raise LabelMapError("'*' can only be ignored ('*=ignore')")
            unlisted = "ignore"
            continue
        parse_key(raw)
        if cls == "ignore":
            ignore.append(raw)
        elif cls.isdigit():
            values[raw] = int(cls)
        else:
            raise LabelMapError(f"label map entry {part!r}: the class must be a class id or 'ignore'")
    return LabelMap(values=values, ignore=ignore, unlisted=unlisted)
