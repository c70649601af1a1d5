"""Issue 12: a model the user can deploy. A tiny genotype retrained on real CamVid frames (48x64):
model.onnx exported with metadata and a parity check, the job failing on a corrupted export, the
normalisation record stored and round-tripped, load_model, `gas-local export`, and the two recipes of
docs/DEPLOY.md executed as written."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import export as export_mod
from core.data import load_split, normalize
from core.derive import random_genotype
from core.export import ParityError, check_parity, load_model, read_onnx_metadata
from core.jobs import run_retrain
from core.layouts import CAMVID_PALETTE
from core.ops import op_names
from core.preprocess import Preprocessing, parse_preprocessing
from core.specs import NetworkConfig, Normalization, normalization_from_report

REPO = Path(__file__).resolve().parents[2]
H, W = 48, 64
TINY_NET = NetworkConfig(num_cells=3, reduction_cells=[1], nodes=2, init_channels=8, stem_channels=8,
                         head_channels=16, num_classes=11)
# not CamVid's default: the record must carry what the job chose, not a constant
DATASET_NORM = Normalization(mean=(0.41, 0.42, 0.40), std=(0.28, 0.29, 0.31), source="test statistics")


def tiny_genotype(seed: int = 0):
    return random_genotype(TINY_NET, op_names(None), torch.Generator().manual_seed(seed))


def retrain_spec(camvid_ref, genotype, **over) -> dict:
    spec = {"dataset": camvid_ref.model_dump(), "genotype": genotype.model_dump(mode="json"),
            "train": {"epochs": 2, "batch_size": 3, "eval_split": "val", "seed": 0, "scale_min": 1.0, "scale_max": 1.0},
            "height": H, "width": W, "fps_iters": 5, "normalization": DATASET_NORM.model_dump()}
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def retrained(camvid_ref, tmp_path_factory):
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("retrain")
    genotype = tiny_genotype()
    result = run_retrain(retrain_spec(camvid_ref, genotype), work)
    art = work / "artifacts"
    return {"work": work, "art": art, "genotype": genotype, "result": result,
            "report": json.loads((art / "report.json").read_text())}


def val_images(camvid_root: Path, n: int = 4) -> list[Path]:
    return sorted((camvid_root / "val").glob("*.png"))[:n] or sorted((camvid_root / "val").glob("*.jpg"))[:n]


def test_retrain_publishes_parity_checked_onnx_with_metadata(retrained, camvid_root):
    art, report, genotype = retrained["art"], retrained["report"], retrained["genotype"]
    assert (art / "model.onnx").is_file() and not (retrained["work"] / "state" / "model.onnx").exists()
    ex = report["export"]
    assert ex["opset"] == 17 and ex["dynamic_shape"] is True and "dynamo=False" in ex["exporter"]
    par = ex["parity"]
    assert par["images"] == 4 and par["split"] == "val" and len(par["stems"]) == 4 and par["ok"] is True
    assert par["relative_diff"] <= 1e-4 and par["argmax_agreement"] >= 0.999
    assert 0 <= par["max_abs_logit_diff"] < 1e-3 and par["max_abs_logit"] > 0
    assert retrained["result"]["onnx_parity"]["argmax_agreement"] == par["argmax_agreement"]
    meta = read_onnx_metadata(art / "model.onnx")
    assert set(export_mod.META_KEYS) <= set(meta)
    pre = parse_preprocessing(meta["gas.preprocessing"])
    assert (pre.height, pre.width) == (H, W) and json.loads(meta["gas.resolution"]) == [H, W]
    assert pre.mean == DATASET_NORM.mean and pre.std == DATASET_NORM.std and pre.source == "test statistics"
    assert json.loads(meta["gas.class_names"])[0] == "sky" and len(json.loads(meta["gas.class_names"])) == 11
    assert json.loads(meta["gas.palette"]) == [list(c) for c in CAMVID_PALETTE]
    assert meta["gas.genotype_hash"] == genotype.arch_hash() == report["genotype_hash"]
    assert json.loads(meta["gas.genotype"]) == genotype.model_dump(mode="json")
    # no server path anywhere a tenant reads
    root = retrained["report"]["settings"]["dataset"]
    assert "root" not in root
    for text in ((art / "report.json").read_text(), json.dumps(meta)):
        assert str(retrained["work"]) not in text and str(camvid_root) not in text


def test_normalisation_is_stored_and_round_trips(retrained, camvid_ref, camvid_root):
    report = retrained["report"]
    pre = Preprocessing.model_validate(report["preprocessing"])
    assert pre.mean == DATASET_NORM.mean and report["settings"]["normalization"]["source"] == "test statistics"
    model = load_model(retrained["art"] / "genotype.json", retrained["art"] / "checkpoint.safetensors")
    assert not model.training and model.preprocessing == pre
    assert model.class_names == report["class_names"] and model.palette == report["palette"]
    assert parse_preprocessing(pre.to_json()) == pre
    # apply() on the image file == what training and evaluation fed the network (bit-identical)
    data = load_split(camvid_ref, "val", H, W)
    for i, path in enumerate(sorted((camvid_root / "val").iterdir())[:2]):
        assert path.stem == data.stems[i]
        x = pre.apply(path)
        assert x.dtype == np.float32 and x.shape == (1, 3, H, W)
        assert np.array_equal(x, normalize(data.images[i:i + 1], pre.normalization).numpy())
    # another record gives another tensor (the record is what is applied, not a constant)
    other = pre.model_copy(update={"mean": (0.39, 0.41, 0.43), "std": (0.30, 0.31, 0.30)})
    assert not np.array_equal(other.apply(path), x)
    # grayscale: replicated to 3 channels, resized like the data
    gray = Image.open(path).convert("L")
    assert pre.apply(gray).shape == (1, 3, H, W)
    rgb = np.asarray(pre.rgb(gray))
    assert rgb.shape == (H, W, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_normalization_from_validation_report():
    n = normalization_from_report({"channel_mean": [0.5, 0.4, 0.3], "channel_std": [0.2, 0.25, 0.3]}, "dataset d1")
    assert n.mean == (0.5, 0.4, 0.3) and n.std == (0.2, 0.25, 0.3) and n.source == "dataset d1"
    assert normalization_from_report(None, "x") == Normalization()  # no statistics: CamVid's
    assert normalization_from_report({"channel_mean": [0.5] * 3, "channel_std": [0.0] * 3}, "x") == Normalization()
    assert Normalization().source == "camvid-default"


def test_pytorch_and_onnxruntime_agree_on_real_images_and_other_sizes(retrained, camvid_root):
    import onnxruntime as ort

    art = retrained["art"]
    model = load_model(art / "genotype.json", art / "checkpoint.safetensors")
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    for path in val_images(camvid_root, 2):
        x = model.preprocessing.apply(path)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = sess.run(None, {"image": x})[0]
        assert np.abs(out - ref).max() < 1e-3 and (out.argmax(1) == ref.argmax(1)).mean() >= 0.999
    # dynamic axes: batch 2 and a size it was not exported at (odd at 1/4 and 1/8)
    x = torch.randn(2, 3, 72, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == ref.shape == (2, 11, 72, 100) and np.abs(out - ref).max() < 1e-3


def _corrupt(path: Path, scale: float) -> None:
    """Multiply the classifier's weights in an ONNX file by ``scale`` (a wrong export)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    hits = [t for t in proto.graph.initializer if "classifier.weight" in t.name]
    assert hits, [t.name for t in proto.graph.initializer][:20]
    arr = numpy_helper.to_array(hits[0]) * np.float32(scale)
    hits[0].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), hits[0].name))
    onnx.save(proto, str(path))


def test_parity_check_fails_on_a_corrupted_model(retrained, tmp_path):
    art = retrained["art"]
    model = load_model(art / "genotype.json", art / "checkpoint.safetensors")
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    good = check_parity(art / "model.onnx", model, x)
    assert good["ok"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((art / "model.onnx").read_bytes())
    _corrupt(bad, 1.01)  # a 1 % error in one layer already fails
    with pytest.raises(ParityError) as err:
        check_parity(bad, model, x)
    assert err.value.figures["relative_diff"] > 1e-4 and "largest |logit difference|" in str(err.value)
    # a foreign model (another genotype's export) fails too
    other = load_model(art / "genotype.json", art / "checkpoint.safetensors")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
    with pytest.raises(ParityError):
        check_parity(art / "model.onnx", other, x)


def test_retrain_fails_with_figures_when_the_export_is_broken(camvid_ref, tmp_path, monkeypatch):
    real_export = export_mod.export_onnx

    def broken_export(*args, **kwargs):
        path = real_export(*args, **kwargs)
        _corrupt(Path(path), 1.5)
        return path

    monkeypatch.setattr(export_mod, "export_onnx", broken_export)
    torch.set_num_threads(1)
    spec = retrain_spec(camvid_ref, tiny_genotype(), train={"epochs": 1, "batch_size": 3, "eval_split": "val"})
    with pytest.raises(ParityError) as err:
        run_retrain(spec, tmp_path)
    msg = str(err.value)
    assert "argmax agreement" in msg and "not published" in msg
    assert re.search(r"largest \|logit difference\| [0-9.e+-]+", msg)
    assert not (tmp_path / "artifacts" / "model.onnx").exists() and not (tmp_path / "state" / "model.onnx").exists()
    assert not (tmp_path / "artifacts" / "report.json").exists()


def test_load_model_refuses_a_checkpoint_of_another_genotype(retrained):
    art = retrained["art"]
    other = tiny_genotype(seed=5)
    assert other.arch_hash() != retrained["genotype"].arch_hash()
    with pytest.raises(ValueError, match="was trained for genotype"):
        load_model(other, art / "checkpoint.safetensors")


def test_gas_local_export(retrained, camvid_root, tmp_path, capsys):
    from core.cli import main

    art = retrained["art"]
    out = tmp_path / "exported.onnx"
    imgs = [str(p) for p in val_images(camvid_root, 2)]
    assert main(["export", "--genotype", str(art / "genotype.json"), "--checkpoint",
                 str(art / "checkpoint.safetensors"), "--out", str(out), "--images", *imgs,
                 "--set", "opset=18", "--set", "dynamic_shape=false"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["opset"] == 18 and doc["dynamic_shape"] is False and doc["parity"]["ok"] and doc["parity"]["images"] == 2
    meta = read_onnx_metadata(out)
    assert parse_preprocessing(meta["gas.preprocessing"]).model_dump(mode="json") == retrained["report"]["preprocessing"]
    import onnx

    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, H, W]
    # parity on the first images of a dataset split; dynamic axes by default
    assert main(["export", "--genotype", str(art / "genotype.json"), "--checkpoint", str(art / "checkpoint.safetensors"),
                 "--out", str(out), "--data", str(camvid_root), "--split", "val", "--set", "parity_images=3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["parity"]["images"] == 3 and doc["parity"]["ok"] and doc["dynamic_shape"] is True


def _recipes() -> dict[str, str]:
    doc = (REPO / "docs" / "DEPLOY.md").read_text()
    blocks = {}
    for title, code in re.findall(r"## (PyTorch|onnxruntime)[^\n]*\n.*?```python\n(.*?)```", doc, re.S):
        blocks[title] = code
    assert set(blocks) == {"PyTorch", "onnxruntime"}
    return blocks


def test_docs_recipes_run_as_written(retrained, camvid_root, tmp_path):
    """The two blocks of docs/DEPLOY.md, run as written in a folder holding the job's artifacts and an image;
    the onnxruntime one in a process that never imports torch; both give the same mask."""
    art = retrained["art"]
    for name in ("genotype.json", "checkpoint.safetensors", "model.onnx"):
        (tmp_path / name).write_bytes((art / name).read_bytes())
    src = val_images(camvid_root, 1)[0]
    Image.open(src).save(tmp_path / "image.png")  # full size: the recipes resize it themselves
    masks = {}
    for title, code in _recipes().items():
        lines = [ln for ln in code.strip().splitlines() if ln.strip()]
        assert len(lines) <= 7, (title, len(lines))
        script = code + ("\nimport sys, numpy\nnumpy.save('mask_%s.npy', numpy.asarray(mask))\n" % title +
                         "print('torch' in sys.modules)\n")
        out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                               "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == ("True" if title == "PyTorch" else "False")
        masks[title] = np.load(tmp_path / f"mask_{title}.npy")
    assert masks["PyTorch"].shape == masks["onnxruntime"].shape == (H, W)
    assert (masks["PyTorch"] == masks["onnxruntime"]).mean() >= 0.999
    assert masks["PyTorch"].min() >= 0 and masks["PyTorch"].max() < 11
