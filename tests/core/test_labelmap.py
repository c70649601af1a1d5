"""Label maps (core.labelmap) applied by data loading and validation, and the validation warnings (issue 13)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import load_split
from core.labelmap import LabelMapError, compile_label_map, parse_label_map_text, suggest_label_map
from core.specs import DatasetRef, LabelMap
from core.validate import validate_dataset


def folder(root: Path, masks: dict[str, list[np.ndarray]], mode: str = "L") -> Path:
    rng = np.random.default_rng(0)
    for split, arrays in masks.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, m in enumerate(arrays):
            h, w = m.shape[:2]
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(m, mode=mode).save(root / split / "masks" / f"{i}.png")
    return root


def binary(h: int = 12, w: int = 16) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[: h // 2] = 255
    return m


def test_compact_and_json_forms_parse_to_the_same_map():
    a = parse_label_map_text("0=0, 255=1, 128=ignore")
    b = parse_label_map_text('{"values": {"0": 0, "255": 1}, "ignore": ["128"]}')
    assert a == b == LabelMap(values={"0": 0, "255": 1}, ignore=["128"])
    assert parse_label_map_text("#000000=0,#ff0000=1,*=ignore").unlisted == "ignore"
    for bad in ("0:0", "0=road", "{not json", "[1, 2]", "*=1", "zz=1"):
        with pytest.raises(ValueError):
            lm = parse_label_map_text(bad)
            compile_label_map(lm, 2, 2)


def test_compile_checks_class_ids_and_mixed_keys_and_applies():
    with pytest.raises(LabelMapError, match="not a class id 0..1"):
        compile_label_map({"values": {"0": 0, "255": 2}}, 2, 2)
    with pytest.raises(LabelMapError, match="mixes"):
        compile_label_map({"values": {"0": 0, "#ffffff": 1}}, 2, 2)
    cm = compile_label_map({"values": {"0": 0, "255": 1}, "ignore": ["128"]}, 2, 9)
    assert cm.apply(np.array([[0, 255, 128]])).tolist() == [[0, 1, 9]]
    with pytest.raises(ValueError, match=r"raw values \[7\].*label_map.values"):
        cm.apply(np.array([0, 7]))
    lenient = compile_label_map({"values": {"0": 0}, "unlisted": "ignore"}, 2, 9)
    assert lenient.apply(np.array([0, 7, 255])).tolist() == [0, 9, 9]


def test_suggestion_for_two_values_and_for_a_palette_of_num_classes_values():
    assert suggest_label_map([0, 255], 2, 2) == {"values": {"0": 0, "255": 1}}
    assert suggest_label_map([10, 20, 30], 3, 3) == {"values": {"10": 0, "20": 1, "30": 2}}
    assert suggest_label_map([10, 20, 30, 40], 3, 3) is None


def test_load_split_applies_a_grey_and_a_colour_map(tmp_path):
    root = folder(tmp_path / "grey", {"train": [binary(), binary()]})
    ref = DatasetRef(root=str(root), layout="folder", num_classes=2, ignore_index=2,
                     label_map=LabelMap(values={"0": 0, "255": 1}))
    data = load_split(ref, "train", 12, 16)
    assert sorted(np.unique(data.masks.numpy()).tolist()) == [0, 1] and int(data.masks[0, 0, 0]) == 1
    # without the map the 0/255 masks are refused with the way to fix it
    with pytest.raises(ValueError, match="label_map"):
        load_split(DatasetRef(root=str(root), layout="folder", num_classes=2, ignore_index=2), "train", 12, 16)
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[:6] = (128, 0, 0)
    rgb[6:, :4] = (255, 255, 255)
    root = folder(tmp_path / "rgb", {"train": [rgb, rgb]}, mode="RGB")
    ref = DatasetRef(root=str(root), layout="folder", num_classes=2, ignore_index=255,
                     label_map=LabelMap(values={"#000000": 0, "#800000": 1}, ignore=["#ffffff"]))
    data = load_split(ref, "train", 12, 16)
    m = data.masks[0].numpy()
    assert m[0, 0] == 1 and m[11, 0] == 255 and m[11, 15] == 0


def test_validation_report_suggests_a_map_and_warns(tmp_path):
    root = folder(tmp_path / "b", {"train": [binary()] * 2, "val": [binary()]})
    bad = validate_dataset(root, "folder", 2, 2)
    assert not bad["ok"] and bad["suggested_label_map"] == {"values": {"0": 0, "255": 1}}
    assert "label_map" in bad["bad_files"]["mask_values"][0]["reason"]
    good = validate_dataset(root, "folder", 2, 2, label_map={"values": {"0": 0, "255": 1}})
    assert good["ok"] and good["warnings"] == [] and good["class_pixels"]["class_1"] > 0
    # ignore_index 255 on 0/255 masks: valid, but the foreground is ignored -> class 1 is empty in train
    trap = validate_dataset(root, "folder", 2, 255)
    assert trap["ok"] and [w["kind"] for w in trap["warnings"]] == ["empty_class"]
    # a grey ramp (anti-aliased / JPEG masks)
    ramp = np.tile(np.arange(64, dtype=np.uint8).reshape(8, 8), (2, 2))[:12, :16]
    root = folder(tmp_path / "ramp", {"train": [ramp, ramp]})
    rep = validate_dataset(root, "folder", 2, 255, label_map={"values": {"0": 0, "1": 1}, "unlisted": "ignore"})
    kinds = {w["kind"] for w in rep["warnings"]}
    assert "grey_ramp" in kinds and "mostly_ignored" in kinds, rep["warnings"]
    # colours converted to grey: few values, most not class ids
    pal = np.array([0, 38, 75, 113], np.uint8)[np.arange(12 * 16).reshape(12, 16) % 4]
    root = folder(tmp_path / "pal", {"train": [pal, pal]})
    rep = validate_dataset(root, "folder", 4, 255)
    assert "palette_like" in {w["kind"] for w in rep["warnings"]}
    assert rep["suggested_label_map"] == {"values": {"0": 0, "38": 1, "75": 2, "113": 3}}
