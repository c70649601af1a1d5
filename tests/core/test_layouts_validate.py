"""Layouts (camvid, folder, cityscapes), auto-detection, and file-by-file dataset validation."""
import shutil

import numpy as np
import pytest
from PIL import Image

from core.data import load_split
from core.layouts import CITYSCAPES_TRAIN_IDS, detect_layout
from core.specs import DatasetRef
from core.validate import validate_dataset


def make_folder_layout(camvid_root, dst):
    for split in ("train", "val"):
        (dst / split / "images").mkdir(parents=True)
        (dst / split / "masks").mkdir(parents=True)
        for img in sorted((camvid_root / split).glob("*.jpg")):
            shutil.copy(img, dst / split / "images" / img.name)
            shutil.copy(camvid_root / f"{split}annot" / f"{img.stem}.png", dst / split / "masks" / f"{img.stem}.png")
    return dst


def make_cityscapes(dst, n=3, size=(64, 32)):
    rng = np.random.default_rng(0)
    ids = np.array([0, 7, 8, 26, 33, 4])  # 0 and 4 are not evaluated -> 255
    for split in ("train", "val"):
        for i in range(n):
            city = "aachen" if i % 2 else "bonn"
            img_dir, gt_dir = dst / "leftImg8bit" / split / city, dst / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            ident = f"{city}_{i:06d}_000019"
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(img_dir / f"{ident}_leftImg8bit.png")
            lab = ids[rng.integers(0, len(ids), (size[1], size[0]))].astype(np.uint8)
            Image.fromarray(lab, mode="L").save(gt_dir / f"{ident}_gtFine_labelIds.png")
    return dst


def test_detects_each_layout(camvid_root, tmp_path):
    assert detect_layout(camvid_root).name == "camvid"
    assert detect_layout(make_folder_layout(camvid_root, tmp_path / "f")).name == "folder"
    assert detect_layout(make_cityscapes(tmp_path / "c")).name == "cityscapes"


def test_detection_failure_says_what_was_expected(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError) as err:
        detect_layout(tmp_path)
    for hint in ("camvid", "<split>annot", "folder", "<split>/images", "cityscapes", "gtFine"):
        assert hint in str(err.value)


def test_folder_layout_loads_like_camvid(camvid_root, tmp_path):
    folder = make_folder_layout(camvid_root, tmp_path / "f")
    a = load_split(DatasetRef(root=str(camvid_root), layout="camvid"), "train", 24, 32)
    b = load_split(DatasetRef(root=str(folder), layout="folder"), "train", 24, 32)
    assert a.stems == b.stems and (a.images == b.images).all() and (a.masks == b.masks).all()


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "c")
    ref = DatasetRef(root=str(root), layout="cityscapes", num_classes=19, ignore_index=255)
    data = load_split(ref, "train", 32, 64)
    raw = np.asarray(Image.open(next((root / "gtFine" / "train").glob("*/*labelIds.png")))).astype(int)
    values = set(np.unique(data.masks.numpy()).tolist())
    assert values <= {CITYSCAPES_TRAIN_IDS[7], CITYSCAPES_TRAIN_IDS[8], CITYSCAPES_TRAIN_IDS[26],
                      CITYSCAPES_TRAIN_IDS[33], 255}
    assert 255 in values and 0 in raw
    assert data.class_names[13] == "car"
    report = validate_dataset(root, "cityscapes", 19, 255)
    assert report["ok"] and report["splits"]["train"]["images"] == 3
    assert report["class_pixels"]["road"] > 0 and report["class_pixels"]["wall"] == 0


def test_validation_report_on_real_camvid(camvid_root, camvid_meta):
    r = validate_dataset(camvid_root, "camvid", 11, 11)
    assert r["ok"] and r["bad_counts"] == {}
    assert r["splits"]["train"]["images"] == camvid_meta["train"] and r["splits"]["val"]["valid"] == camvid_meta["val"]
    assert r["splits"]["train"]["sizes"] == {"480x360": camvid_meta["train"]}
    assert sum(r["class_frequency"].values()) == pytest.approx(1.0)
    assert r["class_frequency"]["road"] > r["class_frequency"]["bicyclist"]
    assert all(0.1 < m < 0.7 for m in r["channel_mean"]) and all(0.05 < s < 0.5 for s in r["channel_std"])


def test_bad_files_are_reported_one_by_one(camvid_root, tmp_path):
    root = tmp_path / "cv"
    shutil.copytree(camvid_root, root)
    imgs = sorted((root / "train").glob("*.jpg"))
    imgs[0].write_bytes(imgs[0].read_bytes()[:200])  # truncated JPEG
    Image.new("L", (100, 50)).save(root / "trainannot" / f"{imgs[1].stem}.png")  # wrong size
    bad_vals = np.zeros((360, 480), np.uint8)
    bad_vals[5, 5] = 42
    Image.fromarray(bad_vals, mode="L").save(root / "trainannot" / f"{imgs[2].stem}.png")  # out of range
    Image.new("RGB", (480, 360)).save(root / "trainannot" / f"{imgs[3].stem}.png")  # colour mask
    (root / "valannot" / f"{sorted((root / 'val').glob('*.jpg'))[0].stem}.png").unlink()  # missing mask
    gray = sorted((root / "val").glob("*.jpg"))[1]
    Image.open(gray).convert("L").save(gray, format="JPEG")  # grayscale image: accepted
    r = validate_dataset(root, "camvid", 11, 11, splits=["train", "val", "test"])
    assert not r["ok"]
    files = {k: [b["file"] for b in v] for k, v in r["bad_files"].items()}
    assert files["image_decode"] == [f"train/{imgs[0].name}"]
    assert files["size_mismatch"] == [f"trainannot/{imgs[1].stem}.png"]
    assert files["mask_values"] == [f"trainannot/{imgs[2].stem}.png"] and "42" in r["bad_files"]["mask_values"][0]["reason"]
    assert files["mask_channels"] == [f"trainannot/{imgs[3].stem}.png"]
    assert len(files["missing_mask"]) == 1
    assert files["missing_split"] == ["test"]
    assert r["splits"]["val"]["grayscale_images"] == 1
    assert r["splits"]["train"]["valid"] == len(imgs) - 4


def test_validation_caps_the_listing_but_counts_everything(camvid_root, tmp_path):
    root = tmp_path / "cv"
    shutil.copytree(camvid_root, root)
    for img in (root / "train").glob("*.jpg"):
        img.write_bytes(b"not an image")
    r = validate_dataset(root, "camvid", 11, 11, max_bad_per_kind=2)
    assert r["bad_counts"]["image_decode"] == len(list((root / "train").glob("*.jpg"))) > 2
    assert len(r["bad_files"]["image_decode"]) == 2


@pytest.mark.parametrize("layout", ["folder", "cityscapes"])
def test_links_out_of_the_dataset_are_refused_before_reading(camvid_root, tmp_path, layout):
    """A linked file, a linked directory (a city, a split) pointing outside the dataset root:
    listing, loading and validation refuse it (OutsideRootError), naming it relative to the root."""
    from core.layouts import OutsideRootError

    root = tmp_path / "ds"
    if layout == "folder":
        make_folder_layout(camvid_root, root)
        victim = sorted((root / "train" / "images").iterdir())[0]
        link_dir, outside = root / "val" / "masks", tmp_path / "outside_masks"
    else:
        make_cityscapes(root)
        victim = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[0]
        link_dir, outside = root / "gtFine" / "val" / "bonn", tmp_path / "outside_city"
    shutil.copy(victim, tmp_path / "secret.png")
    victim.unlink()
    victim.symlink_to(tmp_path / "secret.png")  # one file linked outside
    shutil.move(str(link_dir), str(outside))
    link_dir.symlink_to(outside, target_is_directory=True)  # one directory linked outside
    ref = DatasetRef(root=str(root), layout=layout, num_classes=19 if layout == "cityscapes" else 11,
                     ignore_index=255 if layout == "cityscapes" else 11)
    for split in ("train", "val"):
        with pytest.raises(OutsideRootError, match="outside the dataset root") as info:
            load_split(ref, split, 32, 32)
        assert str(tmp_path) not in str(info.value)
    report = validate_dataset(root, layout, ref.num_classes, ref.ignore_index, ["train", "val"])
    assert report["bad_counts"] == {"outside_root": 2}, report["bad_counts"]
    assert str(tmp_path) not in str(report)


def test_dataset_samples_show_each_image_beside_its_mapped_mask(tmp_path):
    """The validation job's sample_<i>.png: the image (left) beside it with the mask's class colours over
    it (right), after the layout's label map (Cityscapes label ids 7 -> road = class 0; 0 and 4 ignored)."""
    from core.layouts import palette_for
    from core.overlay import OVERLAY_ALPHA, PANEL_GAP
    from core.validate import save_dataset_samples

    root = make_cityscapes(tmp_path / "cs", n=3, size=(64, 32))
    out = tmp_path / "art"
    out.mkdir()
    palette = palette_for("cityscapes", 19)
    got = save_dataset_samples(root, "cityscapes", 19, 255, palette, out, n=2, split="train")
    assert got["files"] == ["sample_0.png", "sample_1.png"] and got["split"] == "train" and len(got["images"]) == 2
    from core.layouts import get_layout

    stem, img_path, mask_path = get_layout("cityscapes").list_split(root, "train", False)[0]
    assert got["images"][0] == stem
    raw = np.asarray(Image.open(img_path).convert("RGB"), dtype=np.float64)
    ids = np.asarray(Image.open(mask_path))
    panels = np.asarray(Image.open(out / "sample_0.png").convert("RGB"), dtype=np.float64)
    assert panels.shape == (32, 2 * 64 + PANEL_GAP, 3)
    left, right = panels[:, :64], panels[:, 64 + PANEL_GAP:]
    assert np.array_equal(left, raw)  # the image as it is
    road, ignored = ids == 7, (ids == 0) | (ids == 4)
    assert road.any() and ignored.any()
    expected = (1 - OVERLAY_ALPHA) * raw[road] + OVERLAY_ALPHA * np.asarray(palette[0], dtype=np.float64)
    assert np.abs(right[road] - expected).max() <= 1.0  # road pixels in road's colour
    assert np.array_equal(right[ignored], raw[ignored])  # ignored pixels are not coloured
    assert save_dataset_samples(root, "cityscapes", 19, 255, palette, out, n=0)["files"] == []
