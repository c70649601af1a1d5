"""Shared fixtures of the core tests: a tiny real CamVid subset copied out of the read-only share."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CAMVID = Path(os.environ.get("GAS_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "datasets" / "camvid"
TRAIN_STEMS = 6
VAL_STEMS = 4
TEST_H, TEST_W = 48, 64


@pytest.fixture(scope="session")
def camvid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable CamVid-layout copy with the first few train and val frames."""
    if not CAMVID.is_dir():
        pytest.fail(f"CamVid not found at {CAMVID} (set GAS_SHARED)")
    root = tmp_path_factory.mktemp("camvid")
    for split, n in (("train", TRAIN_STEMS), ("val", VAL_STEMS)):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for img in sorted((CAMVID / split).glob("*.jpg"))[:n]:
            shutil.copy(img, root / split / img.name)
            shutil.copy(CAMVID / f"{split}annot" / f"{img.stem}.png", root / f"{split}annot" / f"{img.stem}.png")
    return root


@pytest.fixture(scope="session")
def camvid_ref(camvid_root: Path):
    from core.specs import DatasetRef

    return DatasetRef(root=str(camvid_root), layout="camvid")


@pytest.fixture(scope="session")
def camvid_train(camvid_ref):
    from core.data import load_split

    return load_split(camvid_ref, "train", TEST_H, TEST_W)


@pytest.fixture(scope="session")
def camvid_val(camvid_ref):
    from core.data import load_split

    return load_split(camvid_ref, "val", TEST_H, TEST_W)


@pytest.fixture(scope="session")
def camvid_meta() -> dict:
    """Sizes of the CamVid subset: train/val image counts and the test resolution."""
    return {"train": TRAIN_STEMS, "val": VAL_STEMS, "h": TEST_H, "w": TEST_W}


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convolutions gain nothing from more, and lose a lot on a shared host."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
