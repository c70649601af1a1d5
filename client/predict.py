"""Running a job's exported model (``model.onnx``) on images: onnxruntime, numpy and Pillow only.

No torch: the client never imports it (a test runs ``gas predict`` in a process whose
``sys.modules`` is checked). The preprocessing comes from the model's own metadata
(``gas.preprocessing``, a :class:`core.preprocess.Preprocessing` record, whose module is torch-free),
so a mask here is what the trained network predicts on that image.

Masks are PNGs of class ids: palette PNGs (mode ``P``, the model's ``gas.palette``) for up to 256
classes, 16-bit grayscale PNGs beyond. ``mask_size="input"`` (default) resizes the mask back to the
image's own size (nearest neighbour); ``"model"`` keeps the model's resolution. Overlays blend the
palette colours over the image (``alpha``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from core.preprocess import Preprocessing, parse_preprocessing

MODEL_ARTIFACT = "model.onnx"
"""Name of the exported model among a retrain job's artifacts."""
MODEL_FORMAT = "gas-onnx-model/1"
"""``gas.format`` metadata value of a model this client can run (core.export.MODEL_FORMAT)."""
CACHE_ENV = "GAS_CLIENT_CACHE_DIR"
"""Environment variable naming the client's cache directory (default ``$XDG_CACHE_HOME/gas`` or ``~/.cache/gas``)."""
MASK_SIZES = ("input", "model")


class ModelError(ValueError):
    """A file that is not a model this client can run (corrupt, foreign, or missing GAS metadata)."""


def cache_dir() -> Path:
    """Where downloaded models are kept, one file per sha256 (``<cache>/models/<sha256>.onnx``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gas"


@dataclass
class GasModel:
    """An exported GAS model loaded into an onnxruntime session, with its metadata."""

    path: Path
    session: Any
    preprocessing: Preprocessing
    class_names: list[str]
    palette: list[list[int]]
    meta: dict[str, str] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def logits(self, image: Any) -> np.ndarray:
        """float32 ``[1, classes, H, W]`` at the model's resolution."""
        x = self.preprocessing.apply(image)
        return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]

    def predict(self, image: Any) -> np.ndarray:
        """Class id per pixel, ``[H, W]`` int64 at the model's resolution."""
        return self.logits(image)[0].argmax(0)


def load_model(path: str | Path, providers: Sequence[str] | None = None) -> GasModel:
    """Open ``model.onnx``; a file that is not ONNX, or an ONNX model without GAS metadata, raises
    :class:`ModelError` saying which."""
    import onnxruntime as ort

    path = Path(path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelError(f"{path.name} is not a loadable ONNX model: {str(exc).strip()[:300]}") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if meta.get("gas.format") != MODEL_FORMAT:
        raise ModelError(f"{path.name} is an ONNX model but not one exported by GAS "
                         f"(metadata gas.format is {meta.get('gas.format')!r}, expected {MODEL_FORMAT!r})")
    try:
        pre = parse_preprocessing(meta["gas.preprocessing"])
        names = json.loads(meta["gas.class_names"])
        palette = json.loads(meta["gas.palette"])
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{path.name}: unreadable GAS metadata ({exc})") from None
    if len(palette) != len(names):
        raise ModelError(f"{path.name}: {len(names)} class names but {len(palette)} palette colours")
    return GasModel(path, sess, pre, list(names), [list(map(int, c)) for c in palette], meta)


def mask_image(mask: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """A PNG-ready image of class ids: palette mode for up to 256 classes, else 16-bit grayscale."""
    if len(palette) <= 256:
        img = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette makes it P
        flat = [v for c in palette for v in c]
        img.putpalette(flat + [0] * (768 - len(flat)))
        return img
    return Image.fromarray(mask.astype(np.uint16))


def overlay_image(rgb: Image.Image, mask: np.ndarray, palette: list[list[int]], alpha: float) -> Image.Image:
    """The palette colours of ``mask`` blended over ``rgb`` (same size) with weight ``alpha``."""
    colours = np.asarray(palette, dtype=np.float32)[mask]
    base = np.asarray(rgb.convert("RGB"), dtype=np.float32)
    return Image.fromarray(np.clip((1 - alpha) * base + alpha * colours, 0, 255).round().astype(np.uint8))


def predict_files(model: GasModel, images: Sequence[str | Path], out_dir: str | Path, *, overlay: bool = False,
                  alpha: float = 0.5, mask_size: str = "input") -> list[dict]:
    """Masks (``<stem>.png``) and optional overlays (``<stem>_overlay.png``) of ``images`` in ``out_dir``;
    returns one ``{"image", "mask", "overlay", "height", "width", "classes_present"}`` per image."""
    if mask_size not in MASK_SIZES:
        raise ValueError(f"mask_size must be one of {MASK_SIZES}, got {mask_size!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    used: dict[str, int] = {}
    results = []
    for p in images:
        p = Path(p)
        with Image.open(p) as im:
            im.load()
            img = im.copy()
        mask = model.predict(img)
        if mask_size == "input" and (img.width, img.height) != (mask.shape[1], mask.shape[0]):
            mask = np.asarray(Image.fromarray(mask.astype(np.int32))
                              .resize((img.width, img.height), Image.NEAREST)).astype(np.int64)
        n = used.get(p.stem, 0)
        used[p.stem] = n + 1
        stem = p.stem if n == 0 else f"{p.stem}_{n}"
        mask_path = out / f"{stem}.png"
        mask_image(mask, model.palette).save(mask_path)
        entry = {"image": str(p), "mask": str(mask_path), "overlay": None, "height": int(mask.shape[0]),
                 "width": int(mask.shape[1]),
                 "classes_present": [model.class_names[int(c)] for c in np.unique(mask)]}
        if overlay:
            rgb = img.convert("RGB")
            if (rgb.width, rgb.height) != (mask.shape[1], mask.shape[0]):
                rgb = rgb.resize((mask.shape[1], mask.shape[0]), Image.BILINEAR)
            ov = out / f"{stem}_overlay.png"
            overlay_image(rgb, mask, model.palette, alpha).save(ov)
            entry["overlay"] = str(ov)
        results.append(entry)
    return results
