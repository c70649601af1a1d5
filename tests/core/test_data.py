"""core.data: decoding, layouts, cache, errors, on-device batching and its resumable randomness."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data as data_mod
from core.data import CAMVID_CLASSES, Augment, DeviceLoader, SegData, load_split, normalize
from core.specs import DatasetRef

TEST_H, TEST_W = 48, 64  # must match tests/core/conftest.py (checked by test_fixture_sizes)


def _synthetic(n: int = 10, h: int = 8, w: int = 12, ignore: int = 11) -> SegData:
    """Image i is filled with value i (so batches reveal their indices); mask = column index % 11."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    masks = (torch.arange(w) % 11).to(torch.uint8).view(1, 1, w).expand(n, h, w).contiguous()
    return SegData(images, masks, [f"s{i:02d}" for i in range(n)], 11, ignore, list(CAMVID_CLASSES))


def _ids(x: torch.Tensor) -> list[int]:
    """Recover the image values of a batch of synthetic images (unaugmented)."""
    mean = torch.tensor(data_mod.MEAN_RGB).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_mod.STD_RGB).view(1, 3, 1, 1) * 255
    raw = (x * std + mean)[:, 0, 0, 0]
    return [int(round(float(v))) for v in raw]


# ------------------------------------------------------------------------------ loading

def test_fixture_sizes(camvid_meta: dict) -> None:
    assert (camvid_meta["h"], camvid_meta["w"]) == (TEST_H, TEST_W)

def test_camvid_shapes_dtypes_and_labels(camvid_train: SegData, camvid_root: Path, camvid_meta: dict) -> None:
    d = camvid_train
    assert d.images.shape == (camvid_meta['train'], 3, TEST_H, TEST_W) and d.images.dtype == torch.uint8
    assert d.masks.shape == (camvid_meta['train'], TEST_H, TEST_W) and d.masks.dtype == torch.uint8
    assert d.stems == sorted(p.stem for p in (camvid_root / "train").glob("*.jpg"))
    assert d.class_names == list(CAMVID_CLASSES) and d.num_classes == 11 and d.ignore_index == 11
    assert int(d.masks.max()) <= 11
    # Nearest resizing never invents labels: every value is one of the full-resolution mask's values.
    full = np.asarray(Image.open(camvid_root / "trainannot" / f"{d.stems[0]}.png"))
    assert set(d.masks[0].unique().tolist()) <= set(np.unique(full).tolist())
    # Bilinear image resizing keeps the picture: compare with PIL's own resize.
    ref = np.asarray(Image.open(camvid_root / "train" / f"{d.stems[0]}.jpg").convert("RGB")
                     .resize((TEST_W, TEST_H), Image.BILINEAR))
    assert torch.equal(d.images[0], torch.from_numpy(ref.copy()).permute(2, 0, 1))


def test_limit_and_joined_splits(camvid_ref: DatasetRef, camvid_train: SegData, camvid_val: SegData,
                                 camvid_meta: dict) -> None:
    limited = load_split(camvid_ref.model_copy(update={"limit": 2}), "train+val", TEST_H, TEST_W)
    assert limited.stems == camvid_train.stems[:2] + camvid_val.stems[:2]
    both = load_split(camvid_ref, "train+val", TEST_H, TEST_W)
    assert len(both) == camvid_meta['train'] + camvid_meta['val']
    assert torch.equal(both.images[camvid_meta['train']:], camvid_val.images)
    assert torch.equal(both.masks[:camvid_meta['train']], camvid_train.masks)


def test_folder_layout_matches_camvid(tmp_path: Path, camvid_root: Path, camvid_val: SegData) -> None:
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "masks").mkdir(parents=True)
    for stem in camvid_val.stems:
        shutil.copy(camvid_root / "val" / f"{stem}.jpg", tmp_path / "val" / "images" / f"{stem}.jpg")
        shutil.copy(camvid_root / "valannot" / f"{stem}.png", tmp_path / "val" / "masks" / f"{stem}.png")
    ref = DatasetRef(root=str(tmp_path), layout="folder", class_names=[f"c{i}" for i in range(11)])
    d = load_split(ref, "val", TEST_H, TEST_W)
    assert d.stems == camvid_val.stems and d.class_names[0] == "c0"
    assert torch.equal(d.images, camvid_val.images) and torch.equal(d.masks, camvid_val.masks)


def test_missing_split_and_mask_are_clear_errors(tmp_path: Path, camvid_root: Path, camvid_ref: DatasetRef) -> None:
    with pytest.raises(ValueError, match="'test'"):
        load_split(camvid_ref, "test", TEST_H, TEST_W)
    root = tmp_path / "cv"
    shutil.copytree(camvid_root, root)
    victim = sorted((root / "valannot").glob("*.png"))[1]
    victim.unlink()
    with pytest.raises(ValueError, match=victim.name):
        load_split(DatasetRef(root=str(root)), "val", TEST_H, TEST_W)


def test_out_of_range_mask_values_are_rejected(tmp_path: Path, camvid_root: Path) -> None:
    root = tmp_path / "cv"
    shutil.copytree(camvid_root, root)
    victim = sorted((root / "valannot").glob("*.png"))[0]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = 42
    Image.fromarray(arr).save(victim)
    with pytest.raises(ValueError, match="42"):
        load_split(DatasetRef(root=str(root)), "val", TEST_H, TEST_W)


def test_cache_skips_decoding_and_tracks_changes(tmp_path: Path, camvid_root: Path, camvid_val: SegData,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cv"
    shutil.copytree(camvid_root, root)
    ref = DatasetRef(root=str(root))
    cache = tmp_path / "cache"
    first = load_split(ref, "val", TEST_H, TEST_W, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    def boom(*_a, **_k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data_mod, "_decode_pair", boom)
    second = load_split(ref, "val", TEST_H, TEST_W, cache_dir=cache)
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert second.stems == first.stems and torch.equal(second.images, camvid_val.images)
    # A changed file (new mtime) or another resolution must not hit the old entry.
    img = root / "val" / f"{first.stems[0]}.jpg"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        load_split(ref, "val", TEST_H, TEST_W, cache_dir=cache)
    with pytest.raises(AssertionError, match="decoded"):
        load_split(ref, "val", TEST_H // 2, TEST_W // 2, cache_dir=cache)


# ------------------------------------------------------------------------------ loader

def test_normalize_uses_named_constants() -> None:
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expect = (1.0 - torch.tensor(data_mod.MEAN_RGB)) / torch.tensor(data_mod.STD_RGB)
    assert torch.allclose(normalize(x)[0, :, 0, 0], expect)


def test_epoch_is_a_permutation_of_the_subset() -> None:
    d = _synthetic(10)
    subset = [1, 3, 4, 7, 8, 9]
    loader = DeviceLoader(d, 2, "cpu", indices=subset, seed=3)
    assert len(loader) == 3
    seen = []
    for x, y in loader.epoch():
        assert x.dtype == torch.float32 and x.shape == (2, 3, 8, 12)
        assert y.dtype == torch.int64 and y.shape == (2, 8, 12)
        seen += _ids(x)
    assert sorted(seen) == subset
    second = [i for x, _ in loader.epoch() for i in _ids(x)]
    assert sorted(second) == subset and second != seen  # reshuffled (fixed seed: deterministic)


def test_infinite_stream_reshuffles_each_pass_and_drop_last() -> None:
    loader = DeviceLoader(_synthetic(7), 3, "cpu", seed=0)
    it = loader.infinite()
    passes = [[i for _ in range(len(loader)) for i in _ids(next(it)[0])] for _ in range(3)]
    assert all(len(p) == 6 and len(set(p)) == 6 for p in passes)
    assert loader.passes == 3


def test_state_dict_resumes_identical_batches() -> None:
    aug = Augment(flip=True, scale_min=0.5, scale_max=1.7, crop_height=6, crop_width=10)
    a = DeviceLoader(_synthetic(9), 4, "cpu", augment=aug, seed=5)
    for _ in range(3):  # stop mid-pass
        a.next_batch()
    state = a.state_dict()
    expect = [a.next_batch() for _ in range(5)]
    b = DeviceLoader(_synthetic(9), 4, "cpu", augment=aug, seed=999)
    b.load_state_dict(state)
    got = [b.next_batch() for _ in range(5)]
    for (x1, y1), (x2, y2) in zip(expect, got):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError):
        DeviceLoader(_synthetic(5), 4, "cpu").load_state_dict(state)


def test_flip_flips_image_and_mask_together() -> None:
    d = _synthetic(8)
    d.images[:, :, :, 0] = 200  # mark the left column
    loader = DeviceLoader(d, 8, "cpu", augment=Augment(flip=True), seed=1)
    x, y = loader.next_batch()
    left_marked = x[:, 0, 0, 0] > x[:, 0, 0, 5]
    right_marked = x[:, 0, 0, -1] > x[:, 0, 0, 5]
    assert bool((left_marked ^ right_marked).all())
    assert 0 < int(right_marked.sum()) < 8  # some flipped, some not
    cols = torch.arange(12) % 11
    for i in range(8):
        assert torch.equal(y[i, 0], cols.flip(0) if right_marked[i] else cols)


def test_scale_jitter_and_crop_pad_with_ignore() -> None:
    d = _synthetic(6, h=16, w=20)
    aug = Augment(scale_min=0.4, scale_max=0.6, crop_height=12, crop_width=18)
    x, y = DeviceLoader(d, 6, "cpu", augment=aug, seed=2).next_batch()
    assert x.shape == (6, 3, 12, 18) and y.shape == (6, 12, 18)
    # Scaled to <= 0.6 * 16 < 12 rows: the bottom rows are padding, ignored in the mask and 0 (= mean) in x.
    assert bool((y[:, -1] == d.ignore_index).all()) and bool((x[:, :, -1] == 0).all())
    assert bool((y[:, 0, 0] != d.ignore_index).all())
    big = DeviceLoader(d, 6, "cpu", augment=Augment(scale_min=1.5, scale_max=2.0), seed=2).next_batch()[1]
    assert big.shape == (6, 16, 20) and not bool((big == d.ignore_index).any())  # crop 0 = full size
    assert set(big.unique().tolist()) <= set(range(11))


def test_ordered_walks_everything_without_randomness() -> None:
    loader = DeviceLoader(_synthetic(5), 2, "cpu", augment=Augment(flip=True), seed=0)
    before = loader.generator.get_state()
    ids = [i for x, _ in loader.ordered(2) for i in _ids(x)]
    assert ids == [0, 1, 2, 3, 4] and torch.equal(before, loader.generator.get_state())
