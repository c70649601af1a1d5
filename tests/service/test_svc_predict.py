"""Issue 12: `gas predict` against a real retrain job of the running test service (real core, PostgreSQL,
Redis, Celery worker): the ONNX model downloaded once into the user cache (sha256-named), masks of valid
class ids identical to the PyTorch model's argmax on the same images, overlays, the normalisation taken
from the dataset's validation report, and a process that never imports torch. Without the stack: a
corrupt or foreign ONNX file gives a clear error, and the client's import path does not import torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svc_helpers import PY, REPO

NET = {"num_cells": 3, "reduction_cells": [1], "nodes": 2, "init_channels": 8, "stem_channels": 8,
       "head_channels": 16, "num_classes": 11}
H, W = 64, 96

PREDICT_NO_TORCH = """
import sys
from client.cli import main
rc = main(sys.argv[1:])
assert "torch" not in sys.modules, "the client imported torch"
assert rc != 0 or "onnxruntime" in sys.modules
sys.exit(rc)
"""


def tiny_genotype(seed: int = 0) -> dict:
    import torch

    from core.derive import random_genotype
    from core.ops import op_names
    from core.specs import NetworkConfig

    g = random_genotype(NetworkConfig(**NET), op_names(None), torch.Generator().manual_seed(seed))
    return g.model_dump(mode="json")


def predict_cli(stack, cache: Path, *args) -> subprocess.CompletedProcess:
    env = {**stack.env, "GAS_CLIENT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([PY, "-c", PREDICT_NO_TORCH, "--url", stack.url, "--json", "predict", *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.services
def test_gas_predict_against_a_real_retrain_job(real_stack, datasets_root, tmp_path, monkeypatch):
    import torch

    from client import GasClient
    from core.data import load_split, normalize
    from core.export import load_model
    from core.specs import DatasetRef, Normalization

    stack = real_stack
    images = sorted((datasets_root / "camvid_tiny" / "val").glob("*.jpg"))[:3]
    with GasClient(stack.url, api_key=stack.api_key) as c:
        ds = c.register_dataset("predict-tiny", "camvid_tiny")
        assert ds["status"] == "ready", ds
        job = c.submit_retrain(ds["id"], genotype=tiny_genotype(), settings={
            "epochs": 2, "batch_size": 2, "dataset_limit": 8, "height": H, "width": W, "advanced": {"fps_iters": 5}})
        done = c.wait(job["id"], timeout=300, poll=0.5)
        assert done["status"] == "succeeded", (done, stack.log_tail("worker"))
        arts = {a["name"]: a for a in c.artifacts(job["id"])}
        assert {"model.onnx", "checkpoint.safetensors", "genotype.json", "report.json"} <= set(arts)
        assert arts["model.onnx"]["url"].endswith(f"/jobs/{job['id']}/artifacts/model.onnx")
        report = json.loads(c.download(job["id"], "report.json", tmp_path / "report.json").read_text())
        # normalisation is the dataset's: its validation report's channel statistics
        pre = report["preprocessing"]
        assert pre["source"] == f"dataset {ds['id']} validation report"
        assert list(pre["mean"]) == ds["report"]["channel_mean"] and list(pre["std"]) == ds["report"]["channel_std"]
        assert report["export"]["parity"]["ok"] and report["export"]["parity"]["argmax_agreement"] >= 0.999
        genotype = c.download(job["id"], "genotype.json", tmp_path / "genotype.json")
        ckpt = c.download(job["id"], "checkpoint.safetensors", tmp_path / "checkpoint.safetensors")
        # a job without a model: a clear error
        out = predict_cli(stack, tmp_path / "cache", ds["validation_job_id"], str(images[0]), "-o", str(tmp_path / "x"))
        assert out.returncode == 2 and "has no model.onnx" in out.stderr, out.stderr

    cache = tmp_path / "cache"
    out_dir = tmp_path / "masks"
    out = predict_cli(stack, cache, job["id"], *map(str, images), "-o", str(out_dir), "--overlay", "--mask-size", "model")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    cached = cache / "models" / f"{arts['model.onnx']['sha256']}.onnx"
    assert cached.is_file() and list((cache / "models").iterdir()) == [cached]
    first_download = cached.stat().st_mtime_ns

    torch.set_num_threads(1)
    model = load_model(genotype, ckpt)
    assert model.preprocessing.model_dump(mode="json") == pre
    # the reference input is the training pipeline's (decode, resize, normalise), not the client's code
    data = load_split(DatasetRef(root=str(datasets_root / "camvid_tiny"), layout="camvid"), "val", H, W)
    x_ref = normalize(data.images, Normalization(**{k: pre[k] for k in ("mean", "std", "source")}))
    for img, entry in zip(images, listed):
        with Image.open(entry["mask"]) as m:
            assert m.mode == "P" and m.size == (W, H)
            assert m.getpalette()[:33] == [v for c in report["palette"] for v in c]
            mask = np.asarray(m)
        with torch.no_grad():
            i = data.stems.index(img.stem)
            ref = model(x_ref[i:i + 1])[0].argmax(0).numpy()
        assert mask.max() < 11  # valid class ids
        assert np.array_equal(mask, ref), f"{img.name}: {(mask != ref).sum()} pixels differ from PyTorch"
        with Image.open(entry["overlay"]) as ov:
            assert ov.mode == "RGB" and ov.size == (W, H)

    # again, masks at the images' own size: the cached model is reused, not downloaded again
    out = predict_cli(stack, cache, job["id"], str(images[0]), "-o", str(tmp_path / "full"))
    assert out.returncode == 0, out.stderr
    assert cached.stat().st_mtime_ns == first_download
    with Image.open(images[0]) as src, Image.open(json.loads(out.stdout)[0]["mask"]) as m:
        assert m.size == src.size
        full = np.asarray(m)
    small = np.asarray(Image.open(listed[0]["mask"]))
    assert np.array_equal(full, np.asarray(Image.fromarray(small).resize(full.shape[::-1], Image.NEAREST)))

    # a damaged cache entry is noticed (sha256) and replaced
    cached.write_bytes(b"not a model")
    monkeypatch.setenv("GAS_CLIENT_CACHE_DIR", str(cache))
    with GasClient(stack.url, api_key=stack.api_key) as c:
        res = c.predict(job["id"], [images[1]], tmp_path / "sdk", mask_size="model")
    assert cached.read_bytes() != b"not a model"
    assert np.array_equal(np.asarray(Image.open(res[0]["mask"])), np.asarray(Image.open(listed[1]["mask"])))


def test_client_import_path_does_not_import_torch():
    code = ("import sys, client, client.sdk, client.cli, client.predict, core.preprocess\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
            "print('ok')")
    out = subprocess.run([PY, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.fixture
def foreign_and_gas_models(tmp_path):
    """A GAS-exported model (random weights), an ONNX model without GAS metadata, and a corrupt file."""
    import torch

    from core.export import export_onnx, onnx_metadata
    from core.genotype import parse_genotype
    from core.layouts import palette_for
    from core.network import DerivedNet
    from core.preprocess import Preprocessing
    from core.specs import Normalization

    g = parse_genotype(tiny_genotype())
    pre = Preprocessing.for_model(Normalization(), 32, 48)
    gas = export_onnx(DerivedNet(g).eval(), tmp_path / "gas.onnx", 32, 48,
                      onnx_metadata(g, pre, [f"c{i}" for i in range(11)], palette_for("camvid", 11)))
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 1).eval(), (torch.zeros(1, 3, 8, 8),), str(foreign), dynamo=False)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(gas.read_bytes()[: 2000])
    return {"gas": gas, "foreign": foreign, "corrupt": corrupt}


def test_corrupt_or_foreign_onnx_gives_a_clear_error(foreign_and_gas_models, datasets_root, tmp_path):
    img = sorted((datasets_root / "camvid_tiny" / "val").glob("*.jpg"))[0]
    code = ("import sys\nfrom client.predict import ModelError, load_model, predict_files\n"
            "for name in ('corrupt', 'foreign'):\n"
            "    try:\n        load_model(sys.argv[1].replace('gas.onnx', name + '.onnx'))\n"
            "    except ModelError as exc:\n        print(name, '->', exc)\n"
            "    else:\n        raise SystemExit(name + ' loaded')\n"
            "res = predict_files(load_model(sys.argv[1]), [sys.argv[2]], sys.argv[3], overlay=True)\n"
            "print(res[0]['height'], res[0]['width'])\n"
            "assert 'torch' not in sys.modules\n")
    out = subprocess.run([PY, "-c", code, str(foreign_and_gas_models["gas"]), str(img), str(tmp_path / "o")],
                         cwd=str(REPO), capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                                          "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("corrupt -> corrupt.onnx is not a loadable ONNX model")
    assert lines[1].startswith("foreign -> foreign.onnx is an ONNX model but not one exported by GAS")
    with Image.open(img) as src:
        assert lines[2] == f"{src.height} {src.width}"
