"""Make a small binary segmentation dataset that is not CamVid (docs/FIRST_HOUR.md).

Grayscale PNG images of textured noise with 1-3 brighter ellipses ("cells"), and masks stored the way
most binary datasets in the wild store them: 0 for background, 255 for the object (single-channel PNG).
Folder layout: ``<out>/<split>/images/<stem>.png`` and ``<out>/<split>/masks/<stem>.png``.

    python scripts/make_shapes_dataset.py cells/ [--train 48] [--val 16] [--size 128x96] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def sample(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    base = rng.normal(90, 25, (height, width)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base, mode="L").filter(ImageFilter.GaussianBlur(1.5))
    mask = Image.new("L", (width, height), 0)
    draw_i, draw_m = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        rx, ry = rng.integers(width // 12, width // 5), rng.integers(height // 12, height // 5)
        cx, cy = rng.integers(rx, width - rx), rng.integers(ry, height - ry)
        box = [int(cx - rx), int(cy - ry), int(cx + rx), int(cy + ry)]
        draw_i.ellipse(box, fill=int(rng.integers(150, 220)))
        draw_m.ellipse(box, fill=255)
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 12, (height, width))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), mode="L"), mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output directory (created)")
    ap.add_argument("--train", type=int, default=48, help="training images (default: 48)")
    ap.add_argument("--val", type=int, default=16, help="validation images (default: 16)")
    ap.add_argument("--size", default="128x96", help="WIDTHxHEIGHT (default: 128x96)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(args.seed)
    for split, n in (("train", args.train), ("val", args.val)):
        (args.out / split / "images").mkdir(parents=True, exist_ok=True)
        (args.out / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = sample(rng, width, height)
            img.save(args.out / split / "images" / f"cell_{i:04d}.png")
            mask.save(args.out / split / "masks" / f"cell_{i:04d}.png")
    print(f"{args.out}: {args.train} train + {args.val} val grayscale images, 0/255 masks, {width}x{height}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
