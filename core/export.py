"""A model the user can deploy: load a genotype + checkpoint, export ONNX, check its parity.

- :func:`load_model` — one call from a genotype and a ``checkpoint.safetensors`` to a ready
  ``torch.nn.Module`` (eval mode) carrying its :class:`~core.preprocess.Preprocessing`, class names
  and palette (read from the checkpoint's metadata).
- :func:`export_onnx` — ``model.onnx`` through the classic TorchScript-based exporter
  (``torch.onnx.export(..., dynamo=False)``: on torch 2.13 the torch.export-based default needs
  onnxscript and is not what we test; the classic path is the one that works from torch 2.4 on).
  Opset :attr:`~core.specs.ExportConfig.opset` (17 by default). Batch, height and width are dynamic
  axes (the network interpolates to its input size; checked against PyTorch at other sizes, odd ones
  included); ``dynamic_shape=False`` gives a fixed ``1x3xHxW``. Everything a user needs to run it is in
  the model's ``metadata_props`` (:data:`META_KEYS`): the preprocessing record, class names, palette,
  the genotype (JSON) and its hash, the resolution.
- :func:`check_parity` — the same inputs through PyTorch and onnxruntime (CPU, fp32): the largest
  absolute logit difference and the argmax agreement; :class:`ParityError` with the figures when
  they miss the thresholds of :class:`~core.specs.ExportConfig`.
"""
from __future__ import annotations

import copy
import inspect
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write_bytes, load_weights
from .genotype import Genotype, load_genotype, parse_genotype
from .network import DerivedNet
from .preprocess import Preprocessing, parse_preprocessing

INPUT_NAME, OUTPUT_NAME = "image", "logits"
"""Names of the ONNX graph's input (float32 NCHW, normalised) and output (float32 N x classes x H x W)."""
META_PREFIX = "gas."
META_KEYS = ("gas.format", "gas.preprocessing", "gas.class_names", "gas.palette", "gas.genotype",
             "gas.genotype_hash", "gas.resolution", "gas.num_classes", "gas.input", "gas.output")
"""metadata_props of every exported model (all strings; JSON where structured)."""
MODEL_FORMAT = "gas-onnx-model/1"
"""Value of ``gas.format``: what a client checks before trusting the other keys."""
CHECKPOINT_META = ("preprocessing", "class_names", "palette", "resolution", "genotype_hash")
"""Keys :func:`model_metadata` adds to a shipped checkpoint's safetensors metadata."""


class ParityError(RuntimeError):
    """The exported model disagrees with PyTorch beyond the thresholds; ``figures`` holds the numbers."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def model_metadata(genotype: Genotype, preprocessing: Preprocessing, class_names: list[str],
                   palette: list[list[int]]) -> dict[str, str]:
    """String metadata of a shipped checkpoint (safetensors metadata is str -> str)."""
    return {"genotype_hash": genotype.arch_hash(), "preprocessing": preprocessing.to_json(),
            "class_names": json.dumps(list(class_names)), "palette": json.dumps(palette),
            "resolution": json.dumps([preprocessing.height, preprocessing.width])}


def load_model(genotype: Genotype | dict | str | Path, checkpoint: str | Path,
               device: str | torch.device = "cpu") -> DerivedNet:
    """A genotype (``genotype.json`` path, JSON text, dict or :class:`Genotype`) and a
    ``checkpoint.safetensors`` -> a :class:`DerivedNet` with the weights loaded, in eval mode, on
    ``device``. Its ``preprocessing`` (a :class:`Preprocessing`, or None for checkpoints written before
    it was recorded), ``class_names`` and ``palette`` come from the checkpoint's metadata::

        model = load_model("genotype.json", "checkpoint.safetensors")
        logits = model(torch.from_numpy(model.preprocessing.apply("image.png")))
    """
    if isinstance(genotype, Path) or (isinstance(genotype, str) and not genotype.lstrip().startswith("{")):
        genotype = load_genotype(genotype)
    genotype = parse_genotype(genotype)
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        want = (f.metadata() or {}).get("genotype_hash")
    if want and want != genotype.arch_hash():  # checked first: a clearer error than a state_dict mismatch
        raise ValueError(f"checkpoint {Path(checkpoint).name} was trained for genotype {want}, "
                         f"not {genotype.arch_hash()}")
    model = DerivedNet(genotype)
    meta = load_weights(model, checkpoint)
    model.preprocessing = parse_preprocessing(meta["preprocessing"]) if meta.get("preprocessing") else None
    model.class_names = json.loads(meta["class_names"]) if meta.get("class_names") else None
    model.palette = json.loads(meta["palette"]) if meta.get("palette") else None
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

def onnx_metadata(genotype: Genotype, preprocessing: Preprocessing, class_names: list[str],
                  palette: list[list[int]]) -> dict[str, str]:
    return {
        "gas.format": MODEL_FORMAT,
        "gas.preprocessing": preprocessing.to_json(),
        "gas.class_names": json.dumps(list(class_names)),
        "gas.palette": json.dumps(palette),
        "gas.genotype": genotype.to_json(),
        "gas.genotype_hash": genotype.arch_hash(),
        "gas.resolution": json.dumps([preprocessing.height, preprocessing.width]),
        "gas.num_classes": str(genotype.network.num_classes),
        "gas.input": json.dumps({"name": INPUT_NAME, "dtype": "float32", "shape": ["N", 3, "H", "W"],
                                 "what": "the image after gas.preprocessing"}),
        "gas.output": json.dumps({"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", "classes", "H", "W"],
                                  "what": "per-class logits at the input resolution; argmax over axis 1 = class id"}),
    }


def export_onnx(model: nn.Module, path: str | Path, height: int, width: int, metadata: dict[str, str],
                opset: int = 17, dynamic_shape: bool = True) -> Path:
    """Write ``model`` (a CPU fp32 copy of it, eval mode) as ONNX to ``path`` atomically, with
    ``metadata`` as the model's metadata_props."""
    import onnx

    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    net = net.to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, 3, height, width)
    kwargs: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset,
                              "do_constant_folding": True}
    if dynamic_shape:
        axes = {0: "batch", 2: "height", 3: "width"}
        kwargs["dynamic_axes"] = {INPUT_NAME: axes, OUTPUT_NAME: axes}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the classic TorchScript-based exporter (see the module docstring)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classic exporter's deprecation notices
        with torch.no_grad():
            torch.onnx.export(net, (x,), buf, **kwargs)
    proto = onnx.load_from_string(buf.getvalue())
    del proto.metadata_props[:]
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "gas-service"
    onnx.checker.check_model(proto)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict (without loading the weights into a session)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------

def check_parity(onnx_path: str | Path, model: nn.Module, inputs: torch.Tensor, rtol: float = 1e-4,
                 min_argmax_agreement: float = 0.999, raise_on_fail: bool = True) -> dict:
    """Run ``inputs`` (float32 NCHW, already normalised) one image at a time through a CPU fp32 copy of
    ``model`` and through onnxruntime (CPU, default graph optimisations, as a user runs it).

    Returns ``{"images", "max_abs_logit_diff", "max_abs_logit", "relative_diff", "argmax_agreement",
    "rtol", "min_argmax_agreement", "ok", "runtime"}``; with ``raise_on_fail`` a miss raises
    :class:`ParityError` whose message holds the figures. ``relative_diff`` = max |ORT - torch| /
    max(1, max |torch logit|): a float32 graph whose ops are merely reordered or fused stays near 1e-6.
    """
    import onnxruntime as ort

    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    x_all = inputs.detach().to("cpu", torch.float32).contiguous()
    max_diff, max_logit, agree, pixels = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for i in range(x_all.shape[0]):
            x = x_all[i:i + 1]
            ref = net(x).numpy()
            out = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if out.shape != ref.shape:
                raise ParityError(f"ONNX output shape {list(out.shape)} != PyTorch {list(ref.shape)}",
                                  {"onnx_shape": list(out.shape), "torch_shape": list(ref.shape)})
            diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
            max_diff = max(max_diff, float(np.nan_to_num(diff, nan=np.inf).max()))
            max_logit = max(max_logit, float(np.abs(ref).max()))
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            pixels += int(ref.shape[0] * ref.shape[2] * ref.shape[3])
    relative = max_diff / max(1.0, max_logit)
    agreement = agree / max(pixels, 1)
    figures = {"images": int(x_all.shape[0]), "height": int(x_all.shape[2]), "width": int(x_all.shape[3]),
               "max_abs_logit_diff": max_diff, "max_abs_logit": max_logit, "relative_diff": relative,
               "argmax_agreement": agreement, "rtol": rtol, "min_argmax_agreement": min_argmax_agreement,
               "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider vs torch {torch.__version__} cpu fp32"}
    figures["ok"] = bool(relative <= rtol and agreement >= min_argmax_agreement)
    if raise_on_fail and not figures["ok"]:
        raise ParityError(
            f"ONNX export parity failed on {figures['images']} image(s) at {figures['height']}x{figures['width']}: "
            f"largest |logit difference| {max_diff:.3g}, i.e. {relative:.3g} of max(1, largest |logit| {max_logit:.3g}) "
            f"(allowed <= {rtol:g}); argmax agreement {agreement:.6f} (allowed >= {min_argmax_agreement:g}); "
            f"the model was not published", figures)
    return figures


def export_checked(model: nn.Module, path: str | Path, genotype: Genotype, preprocessing: Preprocessing,
                   class_names: list[str], palette: list[list[int]], parity_inputs: torch.Tensor,
                   opset: int = 17, dynamic_shape: bool = True, rtol: float = 1e-4,
                   min_argmax_agreement: float = 0.999) -> dict:
    """Export to ``path``, then check parity on ``parity_inputs``; on a miss ``path`` is removed and
    :class:`ParityError` raised. Returns the export's description with the parity figures."""
    path = Path(path)
    export_onnx(model, path, preprocessing.height, preprocessing.width,
                onnx_metadata(genotype, preprocessing, class_names, palette), opset, dynamic_shape)
    try:
        parity = check_parity(path, model, parity_inputs, rtol, min_argmax_agreement)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {"file": path.name, "opset": opset, "dynamic_shape": dynamic_shape,
            "exporter": "torch.onnx.export(dynamo=False) (classic TorchScript-based)",
            "input": INPUT_NAME, "output": OUTPUT_NAME, "size_bytes": path.stat().st_size, "parity": parity}
