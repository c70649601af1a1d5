"""The preprocessing a model expects, as data: a typed, versioned record that travels with the model.

Torch-free (pydantic, numpy, Pillow): the ``gas`` client and any deployment read it from the ONNX
model's metadata (``gas.preprocessing``), the checkpoint's metadata (``preprocessing``) or the retrain
report (``preprocessing``) and apply it with :meth:`Preprocessing.apply`::

    from core.preprocess import Preprocessing
    pre = Preprocessing.model_validate_json(text)      # or load_model(...).preprocessing
    x = pre.apply("image.png")                          # float32 [1, 3, H, W], ready for the network

``apply`` computes exactly what training and evaluation fed the network (:mod:`core.data`): the
image converted to RGB (grayscale replicated to 3 channels, palette expanded, alpha dropped),
resized to the model's resolution with PIL's bilinear filter (as the data cache does), then
``(pixel - 255*mean) / (255*std)`` per channel in float32, in NCHW order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from .specs import Normalization

FORMAT = "gas-preprocessing"
VERSION = 1


class Preprocessing(BaseModel):
    """What a model expects as input. ``version`` changes whenever the meaning of a field changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["gas-preprocessing"] = FORMAT
    version: Literal[1] = VERSION
    height: int = Field(..., ge=1, description="Input height the model was trained at.")
    width: int = Field(..., ge=1, description="Input width the model was trained at.")
    resize: Literal["bilinear"] = Field("bilinear", description="How an image of another size is resized (PIL BILINEAR, corners not aligned).")
    channels: Literal["rgb"] = Field("rgb", description="Channel order of the input tensor.")
    grayscale: Literal["replicate"] = Field("replicate", description="Single-channel images are replicated to 3 channels; alpha is dropped.")
    scale: float = Field(255.0, description="Pixels are divided by this before (x - mean) / std.")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    source: str = Field("camvid-default", description="Where mean/std come from.")

    @classmethod
    def for_model(cls, norm: Normalization, height: int, width: int) -> "Preprocessing":
        return cls(height=height, width=width, mean=tuple(norm.mean), std=tuple(norm.std), source=norm.source)

    @property
    def normalization(self) -> Normalization:
        return Normalization(mean=self.mean, std=self.std, source=self.source)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    # -- applying it ------------------------------------------------------------------------
    def rgb(self, image: Any) -> Image.Image:
        """The image as RGB at the model's resolution (a path, a PIL image or an HxW / HxWxC uint8 array)."""
        img = open_image(image)
        img = img.convert("RGB")
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.BILINEAR)
        return img

    def apply(self, image: Any) -> np.ndarray:
        """One image -> float32 ``[1, 3, height, width]``, normalised as the model was trained."""
        x = np.asarray(self.rgb(image), dtype=np.uint8).transpose(2, 0, 1)[None].astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(self.scale)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(self.scale)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def open_image(image: Any) -> Image.Image:
    """A PIL image from a path, a PIL image or a uint8 array (HxW gray, HxWx3 RGB, HxWx4 RGBA)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8, got {image.dtype}")
        return Image.fromarray(image)
    with Image.open(Path(image)) as im:
        im.load()
        return im.copy()


def parse_preprocessing(doc: Any) -> Preprocessing:
    """A :class:`Preprocessing` from its JSON text or dict; the error names what is wrong."""
    if isinstance(doc, Preprocessing):
        return doc
    if isinstance(doc, (str, bytes)):
        doc = json.loads(doc)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} record")
    if doc.get("version") != VERSION:
        raise ValueError(f"{FORMAT} version {doc.get('version')!r}; this code reads version {VERSION}")
    return Preprocessing.model_validate(doc)
